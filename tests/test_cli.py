"""`lmzip compress` / `lmzip decompress`: defaults, -o, -f, -q, '-' for stdin/stdout, --test,
round trips of awkward inputs, and settings that must never change the bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmzip import stream
from lmzip.cli import main

TEXT = b"Line one of a small text file.\nLine two, with more words in it.\n" * 4


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


@pytest.fixture
def m(tiny_model_path) -> list[str]:
    return ["-m", tiny_model_path]


def test_default_names_and_input_kept(tmp_path, m):
    src = tmp_path / "notes.txt"
    src.write_bytes(TEXT)
    r = run("compress", *m, src)
    assert r.exit_code == 0, r.output
    assert src.read_bytes() == TEXT  # the input is kept
    blob = (tmp_path / "notes.txt.lmz").read_bytes()
    assert blob.startswith(stream.MAGIC)
    src.unlink()
    r = run("decompress", *m, tmp_path / "notes.txt.lmz")
    assert r.exit_code == 0, r.output
    assert src.read_bytes() == TEXT
    assert (tmp_path / "notes.txt.lmz").read_bytes() == blob
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "notes.txt.lmz"]


def test_output_option_and_force(tmp_path, m):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    assert run("compress", *m, src, "-o", tmp_path / "x.bin").exit_code == 0
    r = run("compress", *m, src, "-o", tmp_path / "x.bin")
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert run("compress", *m, "-f", src, "-o", tmp_path / "x.bin").exit_code == 0
    assert run("decompress", *m, "-f", tmp_path / "x.bin", "-o", src).exit_code == 0
    assert src.read_bytes() == TEXT


def test_quiet_prints_nothing(tmp_path, m):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    r = run("compress", *m, "-q", src)
    assert r.exit_code == 0 and r.output == ""
    r = run("decompress", *m, "-q", "--test", tmp_path / "a.txt.lmz")
    assert r.exit_code == 0 and r.output == ""


def test_stdin_stdout(tmp_path, m):
    r = run("compress", *m, "-", input=TEXT)
    assert r.exit_code == 0, r.stderr
    blob = r.stdout_bytes
    assert blob.startswith(stream.MAGIC)
    r = run("decompress", *m, "-", input=blob)
    assert r.exit_code == 0 and r.stdout_bytes == TEXT
    r = run("decompress", *m, "-", "-o", tmp_path / "out", input=blob)
    assert (tmp_path / "out").read_bytes() == TEXT


def test_corrupt_stdin_writes_nothing_to_stdout(m):
    r = run("compress", *m, "-", input=TEXT)
    bad = r.stdout_bytes[:-3]
    r = run("decompress", *m, "-", input=bad)
    assert r.exit_code == 1 and r.stdout_bytes == b""
    assert r.stderr.startswith("lmzip: error: <stdin>: truncated")


def test_test_flag(tmp_path, m):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    run("compress", *m, src)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run("decompress", *m, "--test", tmp_path / "a.txt.lmz")
    assert r.exit_code == 0 and r.stderr.strip().endswith("a.txt.lmz: OK")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # writes nothing
    blob = bytearray((tmp_path / "a.txt.lmz").read_bytes())
    blob[-40] ^= 1
    (tmp_path / "a.txt.lmz").write_bytes(bytes(blob))
    r = run("decompress", *m, "--test", tmp_path / "a.txt.lmz")
    assert r.exit_code == 1 and "OK" not in r.output


ROUND_TRIPS = {
    "empty": b"",
    "one_byte": b"x",
    "invalid_utf8": b"caf\xc3\xa9 \xff\xfe\xc3( \xed\xa0\x80 tail\x00\x00",
    "crlf": b"first line\r\nsecond line\r\n\r\n  indented\r\n",
    "random": None,  # filled in the test: 20 KB of random bytes
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip(tmp_path, m, name):
    data = ROUND_TRIPS[name] if name != "random" else os.urandom(20_000)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    assert run("compress", *m, "--chunk-size", "8192", src).exit_code == 0
    blob = (tmp_path / "in.bin.lmz").read_bytes()
    n_chunks = -(-len(data) // 8192)
    overhead = stream.HEADER_SIZE + stream.RECORD_SIZE * (n_chunks + 1)
    if name == "random":  # stored chunks: never more than 0.1 % plus the framing
        assert len(blob) <= len(data) + len(data) // 1000 + overhead
    r = run("decompress", *m, "-f", tmp_path / "in.bin.lmz")
    assert r.exit_code == 0, r.output
    assert src.read_bytes() == data


def test_threads_and_batch_never_change_bytes(tmp_path, m):
    """Worker processes and batch sizes change speed only: identical files, and either
    setting decodes the other's file."""
    data = (TEXT * 8)[:2500]
    src = tmp_path / "a.txt"
    src.write_bytes(data)
    common = [*m, "-q", "--chunk-size", "1024", src]
    assert run("compress", "--threads", "1", "--batch-size", "1", *common, "-o",
               tmp_path / "one.lmz").exit_code == 0  # fmt: skip
    r = run("compress", "--threads", "2", "--batch-size", "64", *common, "-o",
            tmp_path / "two.lmz")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "one.lmz").read_bytes() == (tmp_path / "two.lmz").read_bytes()
    r = run("decompress", "--threads", "2", "--batch-size", "1", *m, tmp_path / "one.lmz",
            "-o", tmp_path / "one.out")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "one.out").read_bytes() == data


def test_real_process_round_trip_and_error(tmp_path, tiny_model_path):
    """The installed entry point, as a user runs it: exit codes and one-line errors."""
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    cmd = [sys.executable, "-m", "lmzip"]
    r = subprocess.run([*cmd, "compress", "-q", "-m", tiny_model_path, "--threads", "1",
                        str(src)], capture_output=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    r = subprocess.run([*cmd, "decompress", "-m", tiny_model_path, str(src) + ".lmz"],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    assert "Traceback" not in r.stderr
    assert Path(src).read_bytes() == TEXT


def test_help_and_usage_errors_do_not_load_torch():
    """`lmzip --help`, argument errors and `lmzip info` answer without importing torch (~1 s)."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from lmzip.cli import main\n"
        "r1 = CliRunner().invoke(main, ['--help'])\n"
        "r2 = CliRunner().invoke(main, ['compress', '--batch-size', '0', 'x'])\n"
        "r3 = CliRunner().invoke(main, ['info'])\n"
        "print(r1.exit_code, r2.exit_code, r3.exit_code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["0", "2", "0", "False"]
