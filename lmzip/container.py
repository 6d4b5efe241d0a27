"""The model container (`.lmzm`), format version 1: see format_spec/container.md.

Layout: a 96-byte header, then the sections config, provenance, tensor index, tokenizer, tensor
data, then a 32-byte SHA-256 of everything before it. The small sections come first so that
`read_model_header` (used by `lmzip info`) reads a few kilobytes, never the tensors.

Readers check every declared size against the limits below and against the real file size
before they allocate, and every defect raises a FormatError subclass with a one-line message.
No torch here: the format must be readable anywhere (a test enforces it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard

from lmzip.errors import ChecksumError, FormatError, VersionError

MAGIC = b"\x89LMM\r\n\x1a\n"  # PNG-style: catches text-mode and 7-bit transfer damage
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHHBBQQQIIIII32sI")  # container.md section 2
HEADER_SIZE = HEADER.size  # 96
TRAILER_SIZE = 32  # SHA-256 of all preceding bytes
ID_DOMAIN = b"lmzip-model-id-v1\x00"

CODEC_NONE, CODEC_ZSTD = 0, 1
KIND_CODES = {"q6": 1, "q8": 2, "f16": 3, "i32": 4}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
QMAX = {"q6": 31, "q8": 127}

# Limits (container.md section 6). Checked on read before any allocation, and on write.
MAX_FILE_SIZE = 1 << 30
MAX_TENSORS = 4096
MAX_DIMS = 4
MAX_ELEMENTS = 1 << 28
MAX_TOKENIZER = 16 << 20
MAX_JSON = 1 << 20
MAX_NAME = 255
MAX_INDEX = MAX_TENSORS * (1 + MAX_NAME + 4 + 4 * MAX_DIMS)
MAX_DATA = 1 << 30
NAME_RE = re.compile(rb"[A-Za-z_][A-Za-z0-9_.]*\Z")


def canonical_json(obj: dict) -> bytes:
    """The one byte form of a JSON object that model_id hashes (container.md section 3.1)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def default_model_path() -> Path:
    """Where the package ships its default model (may not exist in a source checkout)."""
    return Path(__file__).resolve().parent / "models" / "default.lmzm"


def shipped_models() -> dict[str, Path]:
    """Every model the package ships, by name: lmzip/models/NAME.lmzm -> {NAME: path}."""
    d = default_model_path().parent
    return {p.stem: p for p in sorted(d.glob("*.lmzm"))} if d.is_dir() else {}


@dataclass
class QTensor:
    """One stored tensor. q6/q8: int8 values [rows, cols] with float16 per-row scales [rows]."""

    kind: str
    values: np.ndarray
    scales: np.ndarray | None = None

    def __post_init__(self) -> None:
        v, s = self.values, self.scales
        want = {"q6": np.int8, "q8": np.int8, "f16": np.float16, "i32": np.int32}
        if self.kind not in want:
            raise ValueError(f"unknown tensor kind {self.kind!r}")
        if v.dtype != want[self.kind] or v.ndim > MAX_DIMS or v.size > MAX_ELEMENTS:
            raise ValueError(f"{self.kind} tensor needs {want[self.kind].__name__}, <= 4 dims")
        if self.kind in QMAX:
            q = QMAX[self.kind]
            if v.ndim != 2 or s is None or s.dtype != np.float16 or s.shape != (v.shape[0],):
                raise ValueError(f"{self.kind} needs values [rows, cols] and f16 scales [rows]")
            if v.size and int(np.abs(v.astype(np.int16)).max()) > q:
                raise ValueError(f"{self.kind} values must lie in [-{q}, {q}]")
            if not np.isfinite(s).all():
                raise ValueError("scales must be finite")
        elif s is not None:
            raise ValueError(f"{self.kind} tensors have no scales")
        elif self.kind == "f16" and not np.isfinite(v).all():
            raise ValueError("f16 values must be finite")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def dequantize(self) -> np.ndarray:
        x = self.values.astype(np.float32)
        if self.scales is not None:
            x *= self.scales.astype(np.float32)[:, None]
        return x


@dataclass
class ModelFile:
    config: dict
    tokenizer: bytes
    tensors: dict[str, QTensor]
    provenance: dict = field(default_factory=dict)
    numerics_version: int = 1
    # model_id as decode_model verified it against the content (None for a ModelFile built in
    # memory, and for a dataclasses.replace copy); model_id itself recomputes every time
    verified_id: str | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def model_id(self) -> str:
        """Hex SHA-256 of what affects decoding (not provenance, not the tensor codec).

        Recomputed from the content on each call (a pass over the tensors, ~10 ms per 16 MB).
        """
        index, raw = _pack_tensors(self.tensors)
        return _model_id(self.numerics_version, canonical_json(self.config), self.tokenizer,
                         index, raw).hex()  # fmt: skip


# ---------------------------------------------------------------- tensor packing (section 4)


def _nbytes(kind: str, shape: tuple[int, ...], dense: bool) -> int:
    n = int(np.prod(shape, dtype=np.int64))
    q6 = (n + 3) // 4 * 3 if dense else n
    values = {"q6": q6, "q8": n, "f16": 2 * n, "i32": 4 * n}[kind]
    return values + (2 * shape[0] if kind in QMAX else 0)


def pack_q6(v: np.ndarray) -> bytes:
    """4 six-bit two's-complement codes per 3 bytes, little-endian: a | b<<6 | c<<12 | d<<18."""
    c = np.zeros((v.size + 3) // 4 * 4, np.uint32)
    c[: v.size] = v.reshape(-1).astype(np.int32) & 63
    c = c.reshape(-1, 4)
    x = c[:, 0] | c[:, 1] << 6 | c[:, 2] << 12 | c[:, 3] << 18
    return x.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def unpack_q6(b: bytes, n: int) -> np.ndarray:
    g = np.frombuffer(b, np.uint8).reshape(-1, 3).astype(np.uint32)
    x = g[:, 0] | g[:, 1] << 8 | g[:, 2] << 16
    c = np.stack([(x >> s) & 63 for s in (0, 6, 12, 18)], axis=1).reshape(-1)
    if c[n:].any():
        raise FormatError("q6 padding codes are not zero")
    c = c[:n].astype(np.int8)
    c[c >= 32] -= 64
    if (c == -32).any():
        raise FormatError("q6 value -32 is out of range [-31, 31]")
    return c


def _pack_tensors(tensors: dict[str, QTensor], dense: bool = True) -> tuple[bytes, bytes]:
    """-> (tensor index, tensor data); dense=False stores q6 one int8 per value (codec 1)."""
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"more than {MAX_TENSORS} tensors")
    index, data = bytearray(), bytearray()
    for name, t in tensors.items():
        nb = name.encode("ascii")
        if not NAME_RE.match(nb) or len(nb) > MAX_NAME:
            raise ValueError(f"tensor name {name!r} is not an ASCII identifier of <= 255 bytes")
        index += struct.pack("<B", len(nb)) + nb
        index += struct.pack("<BBH", KIND_CODES[t.kind], t.values.ndim, 0)
        index += struct.pack(f"<{t.values.ndim}I", *t.shape)
        if t.kind == "q6" and dense:
            data += pack_q6(t.values)
        else:
            data += t.values.astype(t.values.dtype.newbyteorder("<")).tobytes()
        if t.scales is not None:
            data += t.scales.astype("<f2").tobytes()
    return bytes(index), bytes(data)


def _parse_index(
    index: bytes, n_tensors: int, dense: bool
) -> list[tuple[str, str, tuple[int, ...], int]]:
    """-> [(name, kind, shape, stored byte size)]; validates names, kinds, shapes, limits."""
    out, seen, pos = [], set(), 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(index):
            raise FormatError("tensor index is truncated")
        pos += n
        return index[pos - n : pos]

    for _ in range(n_tensors):
        name = take(take(1)[0])
        if not NAME_RE.match(name):
            raise FormatError(f"tensor name {name[:40]!r} is not an ASCII identifier")
        if name in seen:
            raise FormatError(f"duplicate tensor name {name.decode()!r}")
        seen.add(name)
        code, ndim, reserved = struct.unpack("<BBH", take(4))
        if code not in KIND_NAMES:
            raise FormatError(f"unknown tensor kind code {code} for {name.decode()!r}")
        kind = KIND_NAMES[code]
        if reserved:
            raise FormatError(f"reserved index bits set for {name.decode()!r}")
        if ndim > MAX_DIMS or (kind in QMAX and ndim != 2):
            raise FormatError(f"bad rank {ndim} for {kind} tensor {name.decode()!r}")
        shape = struct.unpack(f"<{ndim}I", take(4 * ndim))
        n = 1
        for d in shape:  # python ints: no overflow while checking
            n *= d
        if n > MAX_ELEMENTS or (kind in QMAX and shape[0] == 0):
            raise FormatError(f"tensor {name.decode()!r} shape {list(shape)} is over the limit")
        out.append((name.decode("ascii"), kind, shape, _nbytes(kind, shape, dense)))
    if pos != len(index):
        raise FormatError("tensor index has trailing bytes")
    return out


def _unpack_tensor(kind: str, shape: tuple[int, ...], b: bytes, dense: bool) -> QTensor:
    n = int(np.prod(shape, dtype=np.int64))
    scales = None
    if kind in QMAX:
        nv = len(b) - 2 * shape[0]
        scales = np.frombuffer(b, "<f2", offset=nv).astype(np.float16)
        if not np.isfinite(scales).all():
            raise FormatError("tensor scales are not finite")
        b = b[:nv]
    if kind == "q6" and dense:
        v = unpack_q6(b, n)
    else:
        v = np.frombuffer(b, {"q6": "i1", "q8": "i1", "f16": "<f2", "i32": "<i4"}[kind])
        v = v.astype({"q6": np.int8, "q8": np.int8, "f16": np.float16, "i32": np.int32}[kind])
        if kind in QMAX and int(np.abs(v.astype(np.int16)).max(initial=0)) > QMAX[kind]:
            raise FormatError(f"{kind} value out of range [-{QMAX[kind]}, {QMAX[kind]}]")
        if kind == "f16" and not np.isfinite(v).all():
            raise FormatError("f16 tensor values are not finite")
    return QTensor(kind, v.reshape(shape), scales)


def _model_id(numerics: int, config: bytes, tokenizer: bytes, index: bytes, raw: bytes) -> bytes:
    h = hashlib.sha256(ID_DOMAIN + struct.pack("<H", numerics))
    for part in (config, tokenizer, index, raw):  # length-prefixed: no ambiguous boundaries
        h.update(struct.pack("<Q", len(part)))
        h.update(part)
    return h.digest()


# ---------------------------------------------------------------- writing


def save_model(mf: ModelFile, path: str | os.PathLike, *, compress: bool | None = None,
               zstd_level: int = 19) -> int:  # fmt: skip
    """Write `mf` atomically (temp file + os.replace); returns the bytes written.

    compress=None stores the tensor data zstd-compressed only when that is smaller.
    """
    config, prov = canonical_json(mf.config), canonical_json(mf.provenance)
    if len(config) > MAX_JSON or len(prov) > MAX_JSON or len(mf.tokenizer) > MAX_TOKENIZER:
        raise ValueError("config, provenance or tokenizer over the limits of container.md")
    if not 0 <= mf.numerics_version <= 0xFFFF:
        raise ValueError("numerics_version must fit in u16")
    index, raw = _pack_tensors(mf.tensors)
    codec, data, raw_size = CODEC_NONE, raw, len(raw)
    if compress is not False and raw:
        # zstd's entropy stage models bytes: q6 one value per byte compresses better than the
        # dense packing (container.md section 5), so codec 1 compresses the unpacked form.
        loose = _pack_tensors(mf.tensors, dense=False)[1]
        z = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True).compress(loose)
        if compress or len(z) < len(raw):
            codec, data, raw_size = CODEC_ZSTD, z, len(loose)
    mid = _model_id(mf.numerics_version, config, mf.tokenizer, index, raw)
    size = HEADER_SIZE + len(config) + len(prov) + len(index) + len(mf.tokenizer) + len(data)
    size += TRAILER_SIZE
    if size > MAX_FILE_SIZE or raw_size > MAX_DATA:
        raise ValueError("model file would exceed the 1 GiB limit")
    head = HEADER.pack(MAGIC, FORMAT_VERSION, mf.numerics_version, 0, codec, 0, size,
                       len(data), raw_size, len(config), len(prov), len(index),
                       len(mf.tokenizer), len(mf.tensors), mid, 0)[:-4]  # fmt: skip
    body = b"".join([head, struct.pack("<I", zlib.crc32(head)), config, prov, index,
                     mf.tokenizer, data])  # fmt: skip
    blob = body + hashlib.sha256(body).digest()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".lmzm", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model file is not a secret
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(blob)


# ---------------------------------------------------------------- reading


def parse_header(head: bytes, file_size: int) -> dict:
    """Validate the 96-byte header against the limits and the real file size."""
    if len(head) < 10:
        raise FormatError(f"truncated header ({len(head)} of {HEADER_SIZE} bytes)")
    if head[:8] != MAGIC:
        raise FormatError("bad magic: not an lmzip model file")
    (version,) = struct.unpack_from("<H", head, 8)
    if version != FORMAT_VERSION:  # checked before the CRC: other versions may differ in layout
        raise VersionError(f"unsupported model format version {version} (this build reads 1)")
    if len(head) < HEADER_SIZE:
        raise FormatError(f"truncated header ({len(head)} of {HEADER_SIZE} bytes)")
    f = HEADER.unpack(head[:HEADER_SIZE])
    if zlib.crc32(head[: HEADER_SIZE - 4]) != f[-1]:
        raise ChecksumError("bad header checksum")
    h = dict(zip(["magic", "format_version", "numerics_version", "flags", "tensor_codec",
                  "reserved", "file_size", "data_size", "data_raw_size", "config_size",
                  "provenance_size", "index_size", "tokenizer_size", "n_tensors", "model_id",
                  "header_checksum"], f))  # fmt: skip
    if h["flags"] or h["reserved"]:
        raise FormatError(f"reserved header bits set (flags={h['flags']:#x})")
    if h["tensor_codec"] not in (CODEC_NONE, CODEC_ZSTD):
        raise FormatError(f"unknown tensor codec {h['tensor_codec']}")
    limits = [("config_size", MAX_JSON), ("provenance_size", MAX_JSON), ("index_size", MAX_INDEX),
              ("tokenizer_size", MAX_TOKENIZER), ("n_tensors", MAX_TENSORS),
              ("data_size", MAX_DATA), ("data_raw_size", MAX_DATA), ("file_size", MAX_FILE_SIZE)]  # fmt: skip
    for key, limit in limits:
        if h[key] > limit:
            raise FormatError(f"declared {key} {h[key]} is over the limit {limit}")
    parts = ("config_size", "provenance_size", "index_size", "tokenizer_size", "data_size")
    if HEADER_SIZE + sum(h[k] for k in parts) + TRAILER_SIZE != h["file_size"]:
        raise FormatError("section sizes do not add up to file_size")
    if h["file_size"] != file_size:
        what = "truncated" if file_size < h["file_size"] else "has trailing bytes"
        raise FormatError(f"file is {what} ({file_size} bytes, header says {h['file_size']})")
    if h["tensor_codec"] == CODEC_NONE and h["data_size"] != h["data_raw_size"]:
        raise FormatError("data_size != data_raw_size for uncompressed tensor data")
    return h


def _json_object(b: bytes, what: str, canonical: bool) -> dict:
    try:
        obj = json.loads(b.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{what} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} is not a JSON object")
    if canonical and canonical_json(obj) != b:
        raise FormatError(f"{what} JSON is not in canonical form")
    return obj


def _summary(h: dict, config: dict, prov: dict, entries: list) -> dict:
    out = {k: v for k, v in h.items() if k not in ("magic", "reserved")}
    out["model_id"] = h["model_id"].hex()
    out.update(config=config, provenance=prov)
    out["tensors"] = [{"name": n, "kind": k, "shape": list(s)} for n, k, s, _ in entries]
    return out


def read_model_header(path: str | os.PathLike) -> dict:
    """Header, config, provenance and tensor list; does not read or verify the tensor data."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h = parse_header(f.read(HEADER_SIZE), size)
            small = f.read(h["config_size"] + h["provenance_size"] + h["index_size"])
        return _parse_small(h, small)[0]
    except FormatError as e:
        raise type(e)(f"{path}: {e}") from None


def _parse_small(h: dict, b: bytes) -> tuple[dict, list]:
    c, p = h["config_size"], h["provenance_size"]
    config = _json_object(b[:c], "config", canonical=True)
    prov = _json_object(b[c : c + p], "provenance", canonical=False)
    entries = _parse_index(b[c + p :], h["n_tensors"], h["tensor_codec"] == CODEC_NONE)
    if sum(e[3] for e in entries) != h["data_raw_size"]:
        raise FormatError("tensor sizes do not add up to data_raw_size")
    return _summary(h, config, prov, entries), entries


def load_model(path: str | os.PathLike) -> ModelFile:
    """Read, verify (file checksum, model_id) and decode a whole model container."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            parse_header(f.read(HEADER_SIZE), size)  # bounds the size before the big read
            f.seek(0)
            blob = f.read(size)
        return decode_model(blob)
    except FormatError as e:
        raise type(e)(f"{path}: {e}") from None


def decode_model(blob: bytes) -> ModelFile:
    """Decode and verify a whole container held in memory (container.md sections 2-5)."""
    h = parse_header(blob[:HEADER_SIZE], len(blob))
    body = memoryview(blob)[HEADER_SIZE:-TRAILER_SIZE]
    if hashlib.sha256(blob[:-TRAILER_SIZE]).digest() != blob[-TRAILER_SIZE:]:
        raise ChecksumError("bad file checksum (SHA-256 trailer)")
    c, p, i, t = (h[k] for k in ("config_size", "provenance_size", "index_size", "tokenizer_size"))
    info, entries = _parse_small(h, bytes(body[: c + p + i]))
    tokenizer = bytes(body[c + p + i : c + p + i + t])
    data = bytes(body[c + p + i + t :])
    if h["tensor_codec"] == CODEC_ZSTD:
        data = _unzstd(data, h["data_raw_size"])
    dense = h["tensor_codec"] == CODEC_NONE
    tensors, pos = {}, 0
    for name, kind, shape, nb in entries:
        try:
            tensors[name] = _unpack_tensor(kind, shape, data[pos : pos + nb], dense)
        except ValueError as e:  # QTensor's own checks (e.g. non-finite scales)
            raise FormatError(f"tensor {name!r}: {e}") from None
        pos += nb
    mf = ModelFile(info["config"], tokenizer, tensors, info["provenance"], h["numerics_version"])
    if mf.model_id != h["model_id"].hex():  # the canonical (dense) form, whatever the codec
        raise ChecksumError("model_id does not match the content")
    mf.verified_id = h["model_id"].hex()
    return mf


def _unzstd(data: bytes, raw_size: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
        if declared != raw_size:  # checked first: the decompressor must not allocate more
            raise FormatError(f"zstd frame declares {declared} bytes, header {raw_size}")
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_size)
    except zstandard.ZstdError as e:
        raise FormatError(f"corrupt zstd tensor data ({e})") from None
    if len(out) != raw_size:
        raise FormatError("tensor data decompresses to the wrong size")
    return out
