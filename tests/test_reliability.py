"""Reliability: actionable errors, corruption, hostile files, interruption (docs/reliability.md).

Every failure must be one line `lmzip: error: ...` on stderr, exit status 1, no traceback, no
file left under the output name (nor a temp file beside it), and the input untouched. Most cases
run in-process through CliRunner; a few run `python -m lmzip` for real (signals, rlimits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmzip import api, container, stream
from lmzip.cli import main
from lmzip.errors import ChecksumError, FormatError, LmzipError, ModelMismatchError

TEXT = (
    b"The quick brown fox jumps over the lazy dog. A compressor is trusted with people's only "
    b"copy of their data: it must never write garbage as if it were the original.\n"
) * 3


# ------------------------------------------------------------------------------- helpers


def parse_lmz(blob: bytes) -> tuple[list, list, list]:
    """-> (header fields, [[chunk record fields, payload]], end record fields) of a valid .lmz."""
    head = list(stream.HEADER.unpack(blob[: stream.HEADER_SIZE]))
    pos, chunks = stream.HEADER_SIZE, []
    while True:
        rec = blob[pos : pos + stream.RECORD_SIZE]
        pos += stream.RECORD_SIZE
        if rec[0] == stream.TAG_END:
            return head, chunks, list(stream.END.unpack(rec))
        fields = list(stream.CHUNK.unpack(rec))  # tag method transform reserved raw tokens
        chunks.append([fields, blob[pos : pos + fields[6]]])  # payload_size crc payload_crc crc
        pos += fields[6]


def forge_lmz(head: list, chunks: list, end: list) -> bytes:
    """Re-emit a .lmz with every CRC recomputed, so mutated fields reach the deep checks
    (an attacker, unlike random damage, can always make the CRCs agree)."""

    def sealed(st: struct.Struct, fields: list) -> bytes:
        body = st.pack(*fields)[:-4]
        return body + struct.pack("<I", zlib.crc32(body))

    out = [sealed(stream.HEADER, head)]
    for fields, payload in chunks:
        fields = list(fields)
        fields[8] = zlib.crc32(payload)
        out += [sealed(stream.CHUNK, fields), payload]
    out.append(sealed(stream.END, end))
    return b"".join(out)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file in folder (temp files included) -> SHA-256: 'untouched' is an equality."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def run_cli(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_one_line_error(r, code: int = 1) -> str:
    """The CLI error convention; returns the message."""
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmzip: error: "), r.stderr
    assert "Traceback" not in r.output and "internal error" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def lmz(tiny_model_path, tmp_path_factory) -> dict:
    """A coded and a stored .lmz of the tiny model, and a second model with another id."""
    from conftest import random_model_file

    d = tmp_path_factory.mktemp("lmz")
    src = d / "text.txt"
    src.write_bytes(TEXT)
    opts = api.CodingOptions(threads=1, chunk_size=1024)
    api.compress_file(str(src), str(d / "text.lmz"), tiny_model_path, opts)
    rnd = d / "random.bin"
    rnd.write_bytes(os.urandom(3000))
    api.compress_file(str(rnd), str(d / "random.lmz"), tiny_model_path, opts)
    other = d / "other.lmzm"
    mf = container.load_model(tiny_model_path)
    container.save_model(random_model_file(mf.tokenizer, seed=7), other, compress=False)
    return {"coded": (d / "text.lmz").read_bytes(), "stored": (d / "random.lmz").read_bytes(),
            "text": TEXT, "random": rnd.read_bytes(), "other_model": str(other)}  # fmt: skip


@pytest.fixture
def work(tmp_path, lmz) -> Path:
    (tmp_path / "in.txt").write_bytes(TEXT)
    (tmp_path / "in.txt.lmz").write_bytes(lmz["coded"])
    (tmp_path / "keep.txt").write_bytes(b"an existing output: must survive\n")
    return tmp_path


# --------------------------------------------------------------- 1. errors users can act on


def test_missing_input(work, tiny_model_path):
    before = snapshot(work)
    msg = assert_one_line_error(run_cli("compress", "-m", tiny_model_path, work / "nope.txt"))
    assert "nope.txt" in msg and "no such file" in msg
    assert snapshot(work) == before


def test_directory_input(work, tiny_model_path):
    before = snapshot(work)
    msg = assert_one_line_error(run_cli("compress", "-m", tiny_model_path, work))
    assert "is a directory" in msg
    assert_one_line_error(run_cli("decompress", "-m", tiny_model_path, work, "-o", work / "x"))
    assert snapshot(work) == before


def test_unreadable_input(work, tiny_model_path, monkeypatch):
    # root reads a chmod 000 file anyway, so the refusal is simulated at open()
    real_open = open

    def deny(path, *a, **k):
        if str(path).endswith("in.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    before = snapshot(work)
    msg = assert_one_line_error(run_cli("compress", "-m", tiny_model_path, work / "in.txt"))
    assert "in.txt: Permission denied" in msg
    monkeypatch.undo()
    assert snapshot(work) == before


@pytest.mark.parametrize("cmd", ["compress", "decompress"])
def test_existing_output_needs_force(work, tiny_model_path, cmd):
    src = work / ("in.txt" if cmd == "compress" else "in.txt.lmz")
    before = snapshot(work)
    msg = assert_one_line_error(run_cli(cmd, "-m", tiny_model_path, src, "-o", work / "keep.txt"))
    assert "already exists" in msg and "-f" in msg
    assert snapshot(work) == before
    r = run_cli(cmd, "-m", tiny_model_path, "-q", "-f", src, "-o", work / "keep.txt")
    assert r.exit_code == 0, r.output
    assert (work / "keep.txt").read_bytes() != b"an existing output: must survive\n"


def test_output_directory_missing(work, tiny_model_path):
    before = snapshot(work)
    out = work / "no" / "such" / "dir" / "x.lmz"
    msg = assert_one_line_error(run_cli("compress", "-m", tiny_model_path, work / "in.txt",
                                        "-o", out))  # fmt: skip
    assert "output directory does not exist" in msg
    assert snapshot(work) == before


def test_output_is_input(work, tiny_model_path):
    before = snapshot(work)
    assert_one_line_error(run_cli("compress", "-f", "-m", tiny_model_path, work / "in.txt", "-o",
                                  work / "in.txt"))  # fmt: skip
    assert snapshot(work) == before


def test_disk_full_in_process(work, tiny_model_path, monkeypatch):
    """ENOSPC on the output: one line naming the cause, the temp file removed."""
    real = api.AtomicOutput.__init__

    class Full:  # the temp file, refusing every write that passes 100 bytes
        def __init__(self, f):
            self._f = f

        def __getattr__(self, name):
            return getattr(self._f, name)

        def write(self, b):
            if self._f.tell() + len(b) > 100:
                raise OSError(28, "No space left on device")
            return self._f.write(b)

    def init(self, path, force):
        real(self, path, force)
        self.f = Full(self.f)

    monkeypatch.setattr(api.AtomicOutput, "__init__", init)
    before = snapshot(work)
    for cmd, src in (("compress", "in.txt"), ("decompress", "in.txt.lmz")):
        msg = assert_one_line_error(run_cli(cmd, "-m", tiny_model_path, work / src, "-o",
                                            work / "out"))  # fmt: skip
        assert "No space left on device" in msg and "disk full" in msg
    assert snapshot(work) == before


def test_file_size_limit_subprocess(work, tiny_model_path):
    """A real write failure (RLIMIT_FSIZE: the kernel refuses past 1 KB, as a full disk would)."""
    import resource

    big = work / "big.bin"
    big.write_bytes(os.urandom(20_000))  # stored chunks: fast, and larger than the limit

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    before = snapshot(work)
    r = subprocess.run([sys.executable, "-m", "lmzip", "compress", "-q", "-m", tiny_model_path,
                        "--threads", "1", str(big), "-o", str(work / "big.lmz")],
                       capture_output=True, text=True, preexec_fn=limit, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("lmzip: error: "), r.stderr
    assert "File too large" in r.stderr
    assert snapshot(work) == before


def test_not_an_lmzip_file(work, tiny_model_path):
    before = snapshot(work)
    (work / "plain.lmz").write_bytes(b"just some text, not compressed\n")
    before = snapshot(work)
    for args in (["decompress", "-m", tiny_model_path, work / "plain.lmz"],
                 ["decompress", "-t", "-m", tiny_model_path, work / "plain.lmz"],
                 ["info", work / "plain.lmz"]):  # fmt: skip
        msg = assert_one_line_error(run_cli(*args))
        assert "plain.lmz" in msg and "magic" in msg
    msg = assert_one_line_error(run_cli("decompress", "-m", tiny_model_path, work / "in.txt"))
    assert "does not end in .lmz" in msg
    assert snapshot(work) == before


def test_unsupported_versions(work, tiny_model_path, lmz):
    head, chunks, end = parse_lmz(lmz["coded"])
    for field, value, expect in ((1, 3, "format version 3"), (3, 9, "numerics version 9")):
        h = list(head)
        h[field] = value
        blob = forge_lmz(h, chunks, end)
        if field == 1:  # the version comes before the CRC: no need to forge it
            blob = lmz["coded"][:8] + struct.pack("<H", value) + lmz["coded"][10:]
        (work / "v.lmz").write_bytes(blob)
        before = snapshot(work)
        msg = assert_one_line_error(run_cli("decompress", "-m", tiny_model_path, work / "v.lmz"))
        assert expect in msg, msg
        assert snapshot(work) == before


def test_other_model_names_both_ids(work, tiny_model_path, lmz):
    before = snapshot(work)
    r = run_cli("decompress", "-m", lmz["other_model"], work / "in.txt.lmz", "-o", work / "o")
    msg = assert_one_line_error(r)
    want = container.load_model(tiny_model_path).model_id[:12]
    have = container.load_model(lmz["other_model"]).model_id[:12]
    assert want in msg and have in msg and "-m" in msg, msg
    assert snapshot(work) == before


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "empty", "text"])
def test_corrupt_model_container(work, tiny_model_path, damage):
    blob = bytearray(Path(tiny_model_path).read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x10
    elif damage == "truncate":
        blob = blob[: len(blob) - 1000]
    elif damage == "append":
        blob += b"\0"
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(b"not a model\n")
    (work / "bad.lmzm").write_bytes(bytes(blob))
    before = snapshot(work)
    for cmd, src in (("compress", "in.txt"), ("decompress", "in.txt.lmz")):
        msg = assert_one_line_error(run_cli(cmd, "-m", work / "bad.lmzm", work / src, "-o",
                                            work / "out"))  # fmt: skip
        assert "bad.lmzm" in msg
    assert_one_line_error(run_cli("info", work / "bad.lmzm"))
    assert snapshot(work) == before


def test_missing_model(work):
    before = snapshot(work)
    msg = assert_one_line_error(run_cli("compress", "-m", work / "none.lmzm", work / "in.txt",
                                        "-o", work / "o"))  # fmt: skip
    assert "none.lmzm" in msg and "not found" in msg
    assert snapshot(work) == before


# -------------------------------------------------------------------------- 2. corruption


def _regions(blob: bytes) -> dict[str, int]:
    """An offset inside each structure of the file: every one is covered by a check."""
    _, chunks, _ = parse_lmz(blob)
    first_payload = stream.HEADER_SIZE + stream.RECORD_SIZE
    return {
        "magic": 1,
        "header": 20,
        "header_crc": stream.HEADER_SIZE - 1,
        "record": stream.HEADER_SIZE + 5,
        "payload": first_payload + len(chunks[0][1]) // 2,
        "end_record": len(blob) - 10,
    }


@pytest.mark.parametrize("region", ["magic", "header", "header_crc", "record", "payload",
                                    "end_record", "truncated", "appended"])  # fmt: skip
@pytest.mark.parametrize("test_only", [False, True])
def test_corrupt_lmz(work, tiny_model_path, lmz, region, test_only):
    blob = bytearray(lmz["coded"])
    if region == "truncated":
        blob = blob[:-1]
    elif region == "appended":
        blob += b"\x00garbage"
    else:
        blob[_regions(lmz["coded"])[region]] ^= 0x04
    (work / "bad.lmz").write_bytes(bytes(blob))
    before = snapshot(work)
    args = ["-t"] if test_only else []
    msg = assert_one_line_error(run_cli("decompress", *args, "-m", tiny_model_path,
                                        work / "bad.lmz"))  # fmt: skip
    assert "bad.lmz" in msg
    assert snapshot(work) == before  # no `bad` output, no temp file
    assert_one_line_error(run_cli("info", work / "bad.lmz"))


def test_forged_payload_is_caught_by_chunk_checksum(lmz, tiny_model_path):
    """A coded payload changed with consistent CRCs decodes to other bytes: the per-chunk
    checksum (and the content checksum) must refuse it; nothing reaches the writer."""
    head, chunks, end = parse_lmz(lmz["coded"])
    payload = bytearray(chunks[0][1])
    payload[len(payload) // 3] ^= 0x01
    chunks[0][1] = bytes(payload)
    blob = forge_lmz(head, chunks, end)
    written = []
    lm = api.load_model(tiny_model_path)
    with pytest.raises(ChecksumError):
        api.decompress_stream(io.BytesIO(blob), written.append, lm, api.CodingOptions(threads=1))
    assert written == []  # the damaged first chunk is never written


def test_mixed_chunk_without_mixer_in_worker(tmp_path, lmz, tiny_model_path):
    """An error raised inside a worker process keeps its type and message, becomes one line,
    and the pool is stopped at once (no waiting for the jobs in flight)."""
    head, chunks, end = parse_lmz(lmz["coded"])
    assert any(c[0][1] == stream.METHOD_MIXED for c in chunks)
    head[5], head[12] = 0, bytes(64)  # no mixer parameters in the header
    (tmp_path / "x.lmz").write_bytes(forge_lmz(head, chunks, end))
    t = time.monotonic()
    r = run_cli("decompress", "--threads", "2", "--batch-size", "1", "-m", tiny_model_path,
                tmp_path / "x.lmz")  # fmt: skip
    msg = assert_one_line_error(r)
    assert "mixed chunk" in msg and "x.lmz" in msg
    assert isinstance(r.exception, SystemExit)
    assert time.monotonic() - t < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.lmz"]


def test_intact_chunks_are_not_written(work, tiny_model_path, lmz):
    """Policy (docs/reliability.md): a damaged file yields no output at all, even when its
    first chunks are intact; salvage is a separate, explicit step (`lmzip info` names the
    chunk)."""
    blob = bytearray(lmz["stored"])
    blob[-40] ^= 0x01  # the last chunk's payload; earlier chunks are intact
    (work / "r.lmz").write_bytes(bytes(blob))
    before = snapshot(work)
    msg = assert_one_line_error(run_cli("decompress", "-m", tiny_model_path, work / "r.lmz"))
    assert "chunk 2" in msg
    assert snapshot(work) == before


# ---------------------------------------------------------------------- 3. hostile files


def test_hostile_lmz_declared_sizes(tmp_path, lmz):
    """Huge declared sizes fail before allocation and quickly, from a file or a pipe."""
    head, chunks, end = parse_lmz(lmz["stored"])
    cases = []
    h = list(head)
    h[9], h[11] = stream.MAX_ORIGINAL_SIZE, 1 << 30  # 256 TiB in a billion chunks
    cases.append(forge_lmz(h, chunks, end))
    c = [[list(f), p] for f, p in chunks]
    c[0][0][6] = (1 << 32) - 1  # payload_size 4 GiB
    cases.append(forge_lmz(head, [[c[0][0], chunks[0][1]]], end))
    c = [[list(f), p] for f, p in chunks]
    c[0][0][1], c[0][0][5] = stream.METHOD_LM, (1 << 32) - 1  # 4 G tokens
    cases.append(forge_lmz(head, c, end))
    h = list(head)
    h[7] = stream.MAX_CHUNK_SIZE + 1
    cases.append(forge_lmz(h, chunks, end))
    for blob in cases:
        t = time.monotonic()
        for src in (io.BytesIO(blob), io.BufferedReader(io.BytesIO(blob))):  # file, "pipe"
            with pytest.raises(FormatError):
                for _ in stream.StreamReader(src):
                    pass
        assert time.monotonic() - t < 2


def test_hostile_model_configs(tmp_path, tiny_model_path):
    """Configs with valid checksums and model_id but sizes or types that would make the engine
    allocate without bound or crash: a FormatError naming the file, in milliseconds."""
    mf = container.load_model(tiny_model_path)
    cases = [{"n_layer": 10**9}, {"n_layer": 3.0}, {"n_layer": True}, {"seq_len": 1 << 40},
             {"seq_len": "48"}, {"d_model": -64}, {"n_head": 0}, {"rope_base": "x"},
             {"mlp_mult": 10**6}, {"evil": 1}, {"vocab_size": [512]}]  # fmt: skip
    for i, over in enumerate(cases):
        path = tmp_path / f"h{i}.lmzm"
        container.save_model(dataclasses.replace(mf, config=dict(mf.config, **over)), path)
        t = time.monotonic()
        with pytest.raises(FormatError, match=f"h{i}.lmzm"):
            api.load_model(str(path))
        assert time.monotonic() - t < 2, over


def test_hostile_tokenizer(tmp_path, tiny_model_path):
    mf = container.load_model(tiny_model_path)
    path = tmp_path / "tok.lmzm"
    container.save_model(dataclasses.replace(mf, tokenizer=b"\x0a\xff\xff\xff\x0f" * 8), path)
    with pytest.raises(FormatError, match="tokenizer"):
        api.load_model(str(path))


def test_no_pickle_in_loaders():
    """Loading never unpickles: the format modules and the api do not even import pickle."""
    for mod in ("container", "stream", "api", "cli"):
        src = (Path(api.__file__).parent / f"{mod}.py").read_text()
        assert "import pickle" not in src and "torch.load" not in src and "eval(" not in src


def test_model_mismatch_is_checked_before_decoding(lmz, tiny_model_path):
    with pytest.raises(ModelMismatchError):
        api.decompress_stream(io.BytesIO(lmz["coded"]), None,
                              api.load_model(lmz["other_model"]), api.CodingOptions(threads=1))  # fmt: skip


# ------------------------------------------------------------------------ 5. interruption


def _interrupt(tmp_path, model, sig, threads):
    """Start a real compress, signal it once its temp file exists; -> (rc, stderr)."""
    big = tmp_path / "big.txt"
    # ~1 MB of text: far more model work than the second before the signal, however fast the
    # machine (100 KB finished inside that second once chunks were coded in groups)
    big.write_bytes(TEXT * 4000)
    before = snapshot(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "lmzip", "compress", "-q", "-m", model,
                          "--threads", str(threads), "--chunk-size", "4096", str(big)],
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(n.startswith(".lmzip-") for n in os.listdir(tmp_path)):
        assert p.poll() is None and time.monotonic() < deadline, "compress never started"
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the coding loop
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert snapshot(tmp_path) == before, "partial output or temp file left behind"
    return p.returncode, err


def test_sigterm_leaves_nothing(tmp_path, tiny_model_path):
    rc, err = _interrupt(tmp_path, tiny_model_path, signal.SIGTERM, threads=1)
    assert rc == 130 and err.strip() == "lmzip: interrupted; no output written", err


@pytest.mark.slow
def test_ctrl_c_with_workers_leaves_nothing(tmp_path, tiny_model_path):
    rc, err = _interrupt(tmp_path, tiny_model_path, signal.SIGINT, threads=2)
    assert rc == 130 and "Traceback" not in err, err
    assert err.strip().splitlines() == ["lmzip: interrupted; no output written"], err


def test_keyboard_interrupt_in_process(work, tiny_model_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "decompress_stream", boom)
    before = snapshot(work)
    r = run_cli("decompress", "-m", tiny_model_path, work / "in.txt.lmz", "-o", work / "o")
    assert r.exit_code == 130 and r.stderr.strip() == "lmzip: interrupted; no output written"
    assert snapshot(work) == before


def test_unexpected_exception_is_one_line(work, tiny_model_path, monkeypatch):
    """A bug still fails in one line (exit 1) and removes the temp output."""

    def bug(*a, **k):
        raise IndexError("list index out of range\nsecond line")

    monkeypatch.setattr(api, "compress_stream", bug)
    before = snapshot(work)
    r = run_cli("compress", "-m", tiny_model_path, work / "in.txt", "-o", work / "o.lmz")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "internal error (IndexError: list index out of range)" in r.stderr
    assert snapshot(work) == before


def test_errors_are_lmzip_errors():
    """Every error class the CLI turns into one line derives from LmzipError."""
    for cls in (FormatError, ChecksumError, ModelMismatchError):
        assert issubclass(cls, LmzipError)
