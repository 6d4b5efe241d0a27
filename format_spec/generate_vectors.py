"""Regenerate the conformance vectors and the annotated hex dumps in the spec, deterministically.

    python format_spec/generate_vectors.py          # write vectors/, manifest.json, doc dumps
    python format_spec/generate_vectors.py --check  # exit 1 if any file would change (CI)

Every vector is built from fixed inputs (no clock, no RNG state, no model), so the output is
byte-identical on every machine. Must-fail vectors are assembled field by field with every
checksum made consistent except the one defect under test, so each one exercises one check.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import tempfile
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))  # run from a checkout without installing

from lmzip import coder, container, stream

VECTORS = ROOT / "vectors"
DOCS = {"container.md": "container/valid_tiny.lmzm", "stream.md": "stream/valid_stored.lmz"}


def lcg(n: int, seed: int, mod: int) -> list[int]:
    """Portable pseudo-random ints (no numpy RNG: its streams are not a spec)."""
    out, x = [], seed
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((x >> 33) % mod)
    return out


# ---------------------------------------------------------------- canonical descriptions


def describe_model(mf: container.ModelFile) -> dict:
    """The parsed canonical fields whose SHA-256 a valid container vector expects (README 4)."""
    tensors = []
    for name, t in mf.tensors.items():
        d = {"name": name, "kind": t.kind, "shape": list(t.shape)}
        d["values_sha256"] = hashlib.sha256(
            t.values.astype(t.values.dtype.newbyteorder("<")).tobytes()
        ).hexdigest()
        if t.scales is not None:
            d["scales_sha256"] = hashlib.sha256(t.scales.astype("<f2").tobytes()).hexdigest()
        tensors.append(d)
    return {
        "model_id": mf.model_id,
        "numerics_version": mf.numerics_version,
        "config": mf.config,
        "provenance": mf.provenance,
        "tokenizer_sha256": hashlib.sha256(mf.tokenizer).hexdigest(),
        "tensors": tensors,
    }


def describe_stream(f) -> dict:
    """The parsed fields whose SHA-256 a valid stream vector expects (README 4)."""
    r = stream.StreamReader(f)
    chunks = [dict(vars(rec), payload_sha256=hashlib.sha256(p).hexdigest()) for rec, p in r]
    return {"header": r.header.to_dict(), "chunks": chunks}


def sha_json(obj) -> str:
    return hashlib.sha256(container.canonical_json(obj)).hexdigest()


# ---------------------------------------------------------------- container vectors


def tiny_model() -> container.ModelFile:
    q6 = np.array([[-31, -1, 0, 31], [5, -7, 11, 2]], np.int8)  # 8 values: 2 full q6 groups
    q8 = np.array([[127, -127, 3]], np.int8)
    return container.ModelFile(
        config={"d_model": 4, "n_layer": 1, "vocab_size": 260},
        tokenizer=b"<spm>",  # opaque to the container; a real file holds a sentencepiece model
        tensors={
            "w": container.QTensor("q6", q6, np.array([0.5, 0.25], np.float16)),
            "emb": container.QTensor("q8", q8, np.array([1.0], np.float16)),
            "gain": container.QTensor("f16", np.array([1.5, -2.0], np.float16)),
            "ids": container.QTensor("i32", np.array([7], np.int32)),
        },
        provenance={"note": "conformance vector"},
        numerics_version=1,
    )


def save_bytes(mf: container.ModelFile, **kw) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        container.save_model(mf, Path(d) / "m.lmzm", **kw)
        return (Path(d) / "m.lmzm").read_bytes()


def split_container(blob: bytes) -> tuple[dict, dict]:
    h = dict(zip(HEADER_FIELDS, container.HEADER.unpack(blob[: container.HEADER_SIZE])))
    parts, pos = {}, container.HEADER_SIZE
    for key in ("config", "provenance", "index", "tokenizer", "data"):
        n = h[key + "_size"]
        parts[key], pos = blob[pos : pos + n], pos + n
    return h, parts


HEADER_FIELDS = [
    "magic",
    "format_version",
    "numerics_version",
    "flags",
    "tensor_codec",
    "reserved",
    "file_size",
    "data_size",
    "data_raw_size",
    "config_size",
    "provenance_size",
    "index_size",
    "tokenizer_size",
    "n_tensors",
    "model_id",
    "header_checksum",
]


def assemble_container(h: dict, parts: dict, fix_sizes: bool = True) -> bytes:
    """Header + sections + SHA-256 with consistent sizes and checksums (a defect goes in h)."""
    h = dict(h)
    if fix_sizes:
        for key in ("config", "provenance", "index", "tokenizer", "data"):
            h[key + "_size"] = len(parts[key])
        h["file_size"] = container.HEADER_SIZE + sum(map(len, parts.values())) + 32
    head = container.HEADER.pack(*[h[k] for k in HEADER_FIELDS])[:-4]
    body = head + struct.pack("<I", zlib.crc32(head)) + b"".join(parts.values())
    return body + hashlib.sha256(body).digest()


def container_vectors() -> list[tuple[str, bytes, str, dict]]:
    """-> [(id, file bytes, spec section, expect)]."""
    mf = tiny_model()
    tiny = save_bytes(mf, compress=False)
    z = save_bytes(mf, compress=True, zstd_level=3)
    valid = {"result": "valid", "model_id": mf.model_id, "sha256": sha_json(describe_model(mf))}
    h, parts = split_container(tiny)

    def err(cls: str, msg: str) -> dict:
        return {"result": "error", "error": cls, "message": msg}

    def edit(**kw) -> bytes:
        return assemble_container({**h, **kw}, parts)

    def edit_parts(**kw) -> bytes:
        return assemble_container(h, {**parts, **kw})

    flipped = bytearray(tiny)
    flipped[-40] ^= 1  # a byte of tensor data: only the trailer checksum can catch it
    bad_header = bytearray(tiny)
    bad_header[10] ^= 1  # numerics_version, without fixing the header CRC
    idx = parts["index"]  # first entry: len(1) "w"(1) kind(1) ndim(1) reserved(2) dims(8)
    unknown_kind = idx[:2] + b"\x09" + idx[3:]
    oversize = idx[:6] + struct.pack("<II", 1 << 16, 1 << 16) + idx[14:]
    q6_min = bytearray(parts["data"])
    q6_min[0] = (q6_min[0] & 0xC0) | 0x20  # first code -> -32 (invalid)
    return [
        ("container-valid-tiny", tiny, "container.md#2", valid),
        ("container-valid-zstd", z, "container.md#5", valid),
        (
            "container-bad-magic",
            b"\x89LMX" + tiny[4:],
            "container.md#2.1",
            err("FormatError", "magic"),
        ),
        (
            "container-unknown-version",
            edit(format_version=2),
            "container.md#2.2",
            err("VersionError", "version"),
        ),
        ("container-truncated", tiny[:-10], "container.md#2.6", err("FormatError", "truncated")),
        (
            "container-truncated-header",
            tiny[:50],
            "container.md#2",
            err("FormatError", "truncated header"),
        ),
        (
            "container-trailing-garbage",
            tiny + b"\x00",
            "container.md#2.6",
            err("FormatError", "trailing"),
        ),
        (
            "container-bad-header-checksum",
            bytes(bad_header),
            "container.md#2.9",
            err("ChecksumError", "header checksum"),
        ),
        (
            "container-bad-checksum",
            bytes(flipped),
            "container.md#3.6",
            err("ChecksumError", "file checksum"),
        ),
        (
            "container-reserved-flags",
            edit(flags=1),
            "container.md#2.4",
            err("FormatError", "reserved"),
        ),
        (
            "container-oversize-declared",
            assemble_container({**h, "tokenizer_size": 1 << 31}, parts, fix_sizes=False),
            "container.md#6",
            err("FormatError", "over the limit"),
        ),
        (
            "container-oversize-shape",
            edit_parts(index=oversize),
            "container.md#4",
            err("FormatError", "over the limit"),
        ),
        (
            "container-unknown-kind",
            edit_parts(index=unknown_kind),
            "container.md#4",
            err("FormatError", "unknown tensor kind"),
        ),
        (
            "container-bad-json",
            edit_parts(config=b'{"d_model":4,'),
            "container.md#3.1",
            err("FormatError", "not valid JSON"),
        ),
        (
            "container-noncanonical-json",
            edit_parts(config=b'{"d_model": 4, "n_layer": 1, "vocab_size": 260}'),
            "container.md#3.1",
            err("FormatError", "canonical"),
        ),
        (
            "container-q6-out-of-range",
            edit_parts(data=bytes(q6_min)),
            "container.md#4.2",
            err("FormatError", "out of range"),
        ),
        (
            "container-bad-model-id",
            edit(model_id=bytes(32)),
            "container.md#2.8",
            err("ChecksumError", "model_id"),
        ),
    ]


# ---------------------------------------------------------------- stream vectors

MODEL_ID = hashlib.sha256(b"lmzip conformance model").digest()
PARAMS = stream.StreamParams(MODEL_ID, 1, 16, 16, 1024, b"mix-v1", 0)
TEXT = b"Hello, lmzip!\nThe quick brown fox jumps over the lazy dog.\n"


def write_stream(chunks: list[tuple], params=PARAMS) -> bytes:
    """chunks: [(method, original bytes, n_tokens, payload[, transform])] -> a valid .lmz."""
    f, hasher, total = BytesIO(), stream.ContentHasher(), 0
    w = stream.StreamWriter(f, params)
    for method, data, n_tokens, payload, *tf in chunks:
        rec = stream.ChunkRecord(
            method, len(data), n_tokens, len(payload), stream.chunk_checksum(data), *tf
        )
        w.add_chunk(rec, payload)
        hasher.update(data)
        total += len(data)
    w.finish(total, hasher.digest())
    return f.getvalue()


def stored(data: bytes, size: int = 16) -> list[tuple[int, bytes, int, bytes]]:
    return [(0, data[i : i + size], 0, data[i : i + size]) for i in range(0, len(data), size)]


def order0_payload(data: bytes, precision: int = 16) -> tuple[bytes, int]:
    """A coded payload without a model: bytes coded with a fixed order-0 table (coder vectors)."""
    freqs = np.full(256, 1, np.int64)
    freqs[32:127] = 600  # printable ASCII; the total must be exactly 2^P
    freqs[ord("e")] += (1 << precision) - int(freqs.sum())
    cum = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    sym = np.frombuffer(data, np.uint8)
    return coder.encode_symbols(cum[sym], freqs[sym], precision).tobytes(), len(data)


def patch_record(blob: bytes, index: int, **fields) -> bytes:
    """Change fields of chunk record `index` and recompute its record CRC (one defect only)."""
    pos = stream.HEADER_SIZE
    for _ in range(index):
        size = struct.unpack_from("<I", blob, pos + 12)[0]
        pos += stream.RECORD_SIZE + size
    names = [
        "tag",
        "method",
        "transform",
        "reserved",
        "raw_size",
        "n_tokens",
        "payload_size",
        "checksum",
        "payload_checksum",
        "record_checksum",
    ]
    rec = dict(zip(names, stream.CHUNK.unpack_from(blob, pos)))
    rec.update(fields)
    body = stream.CHUNK.pack(*rec.values())[:-4]
    return (
        blob[:pos] + body + struct.pack("<I", zlib.crc32(body)) + blob[pos + stream.RECORD_SIZE :]
    )


def patch_header(blob: bytes, fix_crc: bool = True, **fields) -> bytes:
    names = [
        "magic",
        "format_version",
        "flags",
        "numerics_version",
        "precision",
        "mixer_size",
        "model_id",
        "chunk_size",
        "window",
        "original_size",
        "content_checksum",
        "n_chunks",
        "mixer",
        "header_checksum",
    ]
    h = dict(zip(names, stream.HEADER.unpack_from(blob)))
    h.update(fields)
    head = stream.HEADER.pack(*h.values())
    if fix_crc:
        head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    return head + blob[stream.HEADER_SIZE :]


def stream_vectors() -> list[tuple[str, bytes, str, dict]]:
    ok = write_stream(stored(TEXT))
    lm, n = order0_payload(TEXT[16:32])
    coded = write_stream([stored(TEXT)[0], (1, TEXT[16:32], n, lm), (2, TEXT[32:40], 8, lm[:5])])
    empty = write_stream([])
    # a CRLF chunk (transform 1): its payload codes the LF text TEXT[0:16] with the order-0 table
    crlf_raw = TEXT[:16].replace(b"\n", b"\r\n")
    lf_pay, lf_n = order0_payload(TEXT[:16])
    crlf = write_stream([(1, crlf_raw, lf_n, lf_pay, 1)], stream.StreamParams(**{
        **PARAMS.__dict__, "chunk_size": 17}))  # fmt: skip
    v1 = patch_header(ok, format_version=1)  # version 1 files (no transforms) still read

    def valid(blob: bytes, content: bytes | None) -> dict:
        d = {"result": "valid", "sha256": sha_json(describe_stream(BytesIO(blob)))}
        if content is not None:
            d["content_sha256"] = hashlib.sha256(content).hexdigest()
        return d

    def err(cls: str, msg: str, **kw) -> dict:
        return {"result": "error", "error": cls, "message": msg, **kw}

    end = len(ok) - stream.RECORD_SIZE
    bad_end = patch_header(ok, content_checksum=bytes(8))
    end_rec = stream.END.pack(stream.TAG_END, 0, 0, 4, len(TEXT), bytes(8), 0)[:-4]
    bad_content = bad_end[:end] + end_rec + struct.pack("<I", zlib.crc32(end_rec))
    bad_hcrc = bytearray(ok)
    bad_hcrc[20] ^= 0x10  # inside model_id, CRC left stale
    return [
        ("stream-valid-stored", ok, "stream.md#4", valid(ok, TEXT)),
        ("stream-valid-empty", empty, "stream.md#4", valid(empty, b"")),
        ("stream-valid-coded", coded, "stream.md#3.2", valid(coded, None)),
        ("stream-valid-crlf-transform", crlf, "stream.md#3.9", valid(crlf, None)),
        ("stream-valid-version-1", v1, "stream.md#2.2", valid(v1, TEXT)),
        (
            "stream-unknown-transform",
            patch_record(coded, 1, transform=5),
            "stream.md#3.9",
            err("FormatError", "unknown chunk transform"),
        ),
        (
            "stream-stored-transform",
            patch_record(ok, 0, transform=1),
            "stream.md#3.9",
            err("FormatError", "stored chunk with a transform"),
        ),
        (
            "stream-version-1-transform",
            patch_header(crlf, format_version=1),
            "stream.md#2.2",
            err("FormatError", "unknown chunk transform"),
        ),
        ("stream-bad-magic", b"\x89LMQ" + ok[4:], "stream.md#2.1", err("FormatError", "magic")),
        (
            "stream-unknown-version",
            patch_header(ok, format_version=3),
            "stream.md#2.2",
            err("VersionError", "version"),
        ),
        (
            "stream-reserved-flag",
            patch_header(ok, flags=0x8000),
            "stream.md#2.3",
            err("FormatError", "reserved flag"),
        ),
        (
            "stream-truncated-header",
            ok[:100],
            "stream.md#2",
            err("FormatError", "truncated header"),
        ),
        (
            "stream-truncated-payload",
            ok[: stream.HEADER_SIZE + stream.RECORD_SIZE + 5],
            "stream.md#3",
            err("FormatError", "truncated payload"),
        ),
        (
            "stream-bad-header-checksum",
            bytes(bad_hcrc),
            "stream.md#2.12",
            err("ChecksumError", "header checksum"),
        ),
        (
            "stream-bad-record-checksum",
            ok[:150] + bytes([ok[150] ^ 1]) + ok[151:],
            "stream.md#3.8",
            err("ChecksumError", "record checksum"),
        ),
        (
            "stream-bad-chunk-checksum",
            patch_record(ok, 1, checksum=12345),
            "stream.md#3.6",
            err("ChecksumError", "chunk checksum"),
        ),
        (
            "stream-bad-payload-checksum",
            patch_record(ok, 2, payload_checksum=0),
            "stream.md#3.7",
            err("ChecksumError", "payload checksum"),
        ),
        (
            "stream-bad-content-checksum",
            bad_content,
            "stream.md#2.10",
            err("ChecksumError", "content checksum"),
        ),
        (
            "stream-oversize-payload",
            patch_record(coded, 1, payload_size=0xFFFFFFFF),
            "stream.md#5",
            err("FormatError", "over the limit"),
        ),
        (
            "stream-oversize-chunk-size",
            patch_header(ok, chunk_size=1 << 31),
            "stream.md#5",
            err("FormatError", "chunk_size"),
        ),
        (
            "stream-oversize-raw-size",
            patch_record(ok, 0, raw_size=17),
            "stream.md#3.3",
            err("FormatError", "raw_size"),
        ),
        (
            "stream-unknown-method",
            patch_record(coded, 1, method=7),
            "stream.md#3.2",
            err("FormatError", "unknown chunk method"),
        ),
        (
            "stream-missing-chunk",
            patch_header(ok, n_chunks=5, original_size=len(TEXT) + 1),
            "stream.md#4",
            err("FormatError", "end record"),
        ),
        ("stream-trailing-garbage", ok + b"\x00", "stream.md#4", err("FormatError", "trailing")),
        (
            "stream-model-mismatch",
            ok,
            "stream.md#2.5",
            err("ModelMismatchError", "-m", model_id=hashlib.sha256(b"another model").hexdigest()),
        ),
    ]


# ---------------------------------------------------------------- coder vectors


def coder_vectors() -> list[tuple[str, bytes, str, dict]]:
    skewed = [1] * 256
    skewed[0] = (1 << 16) - 255
    cases = [
        ("coder-uniform-p8", 8, [64] * 4, lcg(64, 1, 4)),
        ("coder-binary-p1", 1, [1, 1], lcg(40, 2, 2)),
        ("coder-skewed-p16", 16, skewed, [0] * 100 + lcg(50, 3, 256)),
        ("coder-minfreq-p24", 24, [1, (1 << 24) - 2, 1], [0, 2, 1, 0, 0, 2] * 10),
        ("coder-empty-p16", 16, [1 << 15, 1 << 15], []),
    ]
    out = []
    for vid, p, freqs, syms in cases:
        f = np.array(freqs, np.int64)
        cum = np.concatenate([[0], np.cumsum(f)[:-1]])
        s = np.array(syms, np.int64)
        enc = coder.encode_symbols(cum[s], f[s], p).tobytes()
        doc = {"precision": p, "freqs": freqs, "symbols": syms, "encoded": enc.hex()}
        blob = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        out.append(
            (vid, blob, "coder.md", {"result": "valid", "sha256": hashlib.sha256(enc).hexdigest()})
        )
    return out


# ---------------------------------------------------------------- hex dumps for the docs


def hexdump(segments: list[tuple[str, bytes]]) -> str:
    lines, pos = ["offset  bytes                                            field"], 0
    for name, b in segments:
        for i in range(0, max(len(b), 1), 16):
            part = b[i : i + 16]
            label = name if i == 0 else "  ..."
            lines.append(f"{pos + i:06x}  {part.hex(' '):<48} {label}".rstrip())
        pos += len(b)
    return "\n".join(lines)


def container_segments(blob: bytes) -> list[tuple[str, bytes]]:
    h, parts = split_container(blob)
    sizes = [8, 2, 2, 2, 1, 1, 8, 8, 8, 4, 4, 4, 4, 4, 32, 4]
    segs, pos = [], 0
    for name, n in zip(HEADER_FIELDS, sizes):
        v = h[name]
        shown = "" if isinstance(v, bytes) else f" = {v}"
        segs.append((name + shown, blob[pos : pos + n]))
        pos += n
    for key, text in parts.items():
        segs.append((f"{key} section ({len(text)} bytes)", text))
    segs.append(("file_checksum (SHA-256)", blob[-32:]))
    return segs


def stream_segments(blob: bytes) -> list[tuple[str, bytes]]:
    names = [
        "magic",
        "format_version",
        "flags",
        "numerics_version",
        "precision",
        "mixer_size",
        "model_id",
        "chunk_size",
        "window",
        "original_size",
        "content_checksum",
        "n_chunks",
        "mixer",
        "header_checksum",
    ]
    sizes = [8, 2, 2, 2, 1, 1, 32, 4, 4, 8, 8, 4, 64, 4]
    vals = stream.HEADER.unpack_from(blob)
    segs, pos = [], 0
    for name, n, v in zip(names, sizes, vals):
        segs.append((name + ("" if isinstance(v, bytes) else f" = {v}"), blob[pos : pos + n]))
        pos += n
    rec_names = [
        "tag",
        "method",
        "transform",
        "reserved",
        "raw_size",
        "n_tokens",
        "payload_size",
        "checksum",
        "payload_checksum",
        "record_checksum",
    ]
    rec_sizes = [1, 1, 1, 1, 4, 4, 4, 4, 4, 4]
    i = 0
    while blob[pos] == stream.TAG_CHUNK:
        vals = stream.CHUNK.unpack_from(blob, pos)
        for name, n, v in zip(rec_names, rec_sizes, vals):
            segs.append(
                (
                    f"chunk {i} {name} = {v:#x}"
                    if name.endswith("checksum")
                    else f"chunk {i} {name} = {v}",
                    blob[pos : pos + n],
                )
            )
            pos += n
        segs.append((f"chunk {i} payload", blob[pos : pos + vals[6]]))
        pos, i = pos + vals[6], i + 1
    end_names = [
        "tag (end)",
        "reserved",
        "reserved",
        "n_chunks",
        "original_size",
        "content_checksum",
        "record_checksum",
    ]
    for name, n in zip(end_names, [1, 1, 2, 4, 8, 8, 4]):
        segs.append((f"end {name}", blob[pos : pos + n]))
        pos += n
    return segs


# ---------------------------------------------------------------- driver


def build() -> dict[Path, bytes]:
    """-> {path: bytes} of every generated file (vectors, manifest, docs with dumps)."""
    files, manifest = {}, []
    for kind, vecs, ext in [
        ("container", container_vectors(), "lmzm"),
        ("stream", stream_vectors(), "lmz"),
        ("coder", coder_vectors(), "json"),
    ]:
        for vid, blob, section, expect in vecs:
            rel = f"{kind}/{vid.split('-', 1)[1].replace('-', '_')}.{ext}"
            files[VECTORS / rel] = blob
            manifest.append(
                {
                    "id": vid,
                    "kind": kind,
                    "file": rel,
                    "spec_section": section,
                    "size": len(blob),
                    "expect": expect,
                }
            )
    files[VECTORS / "manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    dumps = {
        "container.md": hexdump(container_segments(files[VECTORS / DOCS["container.md"]])),
        "stream.md": hexdump(stream_segments(files[VECTORS / DOCS["stream.md"]])),
    }
    for doc, dump in dumps.items():
        path = ROOT / doc
        if path.exists():
            files[path] = splice(path.read_text(), dump).encode()
    return files


def splice(text: str, dump: str) -> str:
    """Replace the fenced block between the hexdump markers of a spec page."""
    begin, end = "<!-- hexdump: generated by generate_vectors.py -->", "<!-- /hexdump -->"
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{begin}\n```text\n{dump}\n```\n{end}{tail}"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale, files = [], build()
    for path, blob in sorted(files.items()):
        if not path.exists() or path.read_bytes() != blob:
            stale.append(path.relative_to(ROOT))
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blob)
    known = {p for p in VECTORS.rglob("*") if p.is_file()}
    extra = sorted(p.relative_to(ROOT) for p in known - set(files))
    for p in stale:
        print(f"{'stale' if check else 'wrote'}: {p}")
    for p in extra:
        print(f"not generated (delete it): {p}")
    return 1 if check and (stale or extra) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
