"""`lmzip info`: every header field, text and --json, and the CLI error convention."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmzip import container
from lmzip.cli import main

VECTORS = Path(__file__).resolve().parent.parent / "format_spec" / "vectors"
MODEL = VECTORS / "container" / "valid_tiny.lmzm"
STORED = VECTORS / "stream" / "valid_stored.lmz"
CODED = VECTORS / "stream" / "valid_coded.lmz"


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_model_json():
    r = _run("info", "--json", str(MODEL))
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["kind"] == "model" and d["format_version"] == 1 and d["numerics_version"] == 1
    assert d["size_bytes"] == MODEL.stat().st_size == d["file_size"]
    assert d["model_id"] == container.load_model(MODEL).model_id
    assert d["config"]["d_model"] == 4 and d["provenance"]["note"] == "conformance vector"
    assert d["tensors"][0] == {"name": "w", "kind": "q6", "shape": [2, 4]}
    assert d["n_params"] == 8 + 3 + 2 + 1
    assert d["tensor_kinds"] == {"q6": 1, "q8": 1, "f16": 1, "i32": 1}
    assert d["tensor_codec"] == "none"


def test_model_text():
    r = _run("info", str(MODEL))
    assert r.exit_code == 0
    assert "kind: model" in r.output and "model_id: " in r.output
    assert "  d_model: 4" in r.output and "tensors: 4" in r.output


def test_compressed_json():
    d = json.loads(_run("info", "--json", str(CODED)).output)
    assert d["kind"] == "compressed" and d["format_version"] == 2
    for key in ["model_id", "numerics_version", "precision", "chunk_size", "window", "mixer",
                "original_size", "n_chunks", "content_checksum", "flags", "size_bytes"]:  # fmt: skip
        assert key in d
    assert d["chunks"] == {"stored": 1, "lm": 1, "mixed": 1}
    assert d["chunk_transforms"] == {"none": 3, "crlf": 0}
    assert d["mixer"] == b"mix-v1".hex() and len(d["model_id"]) == 64
    assert d["ratio"] == round(d["original_size"] / d["size_bytes"], 4)


def test_compressed_text():
    r = _run("info", str(STORED))
    assert r.exit_code == 0
    assert "kind: compressed" in r.output and "stored: 4" in r.output


def test_bad_file_is_one_line_exit_1(tmp_path):
    for blob in [b"not an lmzip file at all", STORED.read_bytes()[:-3]]:
        bad = tmp_path / "bad.lmz"
        bad.write_bytes(blob)
        r = _run("info", str(bad))
        assert r.exit_code == 1
        assert r.output.startswith("lmzip: error: ") and r.output.count("\n") == 1
        assert "Traceback" not in r.output


def test_missing_default_model(monkeypatch, tmp_path):
    monkeypatch.setattr(container, "default_model_path", lambda: tmp_path / "none.lmzm")
    r = _run("info")
    assert r.exit_code == 1 and "no default model" in r.output


def test_usage_errors_exit_2(tmp_path):
    assert _run("info", str(tmp_path / "missing.lmz")).exit_code == 2
    assert _run("info", "--bogus").exit_code == 2


@pytest.mark.parametrize("args", [["--help"], ["info", "--help"]])
def test_help_ends_with_example(args):
    r = _run(*args)
    assert r.exit_code == 0
    tail = r.output.strip().splitlines()
    assert any(line.strip() == "Example:" for line in tail[-4:])
    assert tail[-1].strip().startswith("lmzip ")


def test_python_m_lmzip_subprocess():
    r = subprocess.run([sys.executable, "-m", "lmzip", "info", "--json", str(STORED)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_chunks"] == 4


def test_reader_that_stops_early_ends_quietly():
    """`lmzip info FILE | head`: when the reader of stdout has gone, lmzip ends with SIGPIPE's
    status (141) and no error message, as other command-line tools do."""
    p = subprocess.Popen([sys.executable, "-m", "lmzip", "info", str(MODEL)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    p.stdout.close()  # before the child writes anything: its first write fails with EPIPE
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141
    assert err == b""
