"""Conformance vectors: each file in format_spec/vectors behaves as manifest.json says."""

import hashlib
import importlib.util
import json
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from lmzip import coder, container, errors, stream

SPEC = Path(__file__).resolve().parent.parent / "format_spec"
MANIFEST = json.loads((SPEC / "vectors" / "manifest.json").read_text())


def _generator():
    spec = importlib.util.spec_from_file_location("generate_vectors", SPEC / "generate_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sha_json(obj) -> str:
    return hashlib.sha256(container.canonical_json(obj)).hexdigest()


def _run_container(path: Path, expect: dict) -> None:
    mf = container.load_model(path)
    assert mf.model_id == expect["model_id"]
    assert container.read_model_header(path)["model_id"] == expect["model_id"]
    assert _sha_json(_generator().describe_model(mf)) == expect["sha256"]


def _run_stream(path: Path, expect: dict) -> None:
    blob = path.read_bytes()
    reader = stream.StreamReader(BytesIO(blob))
    if "model_id" in expect:
        stream.check_model_id(reader.header, bytes.fromhex(expect["model_id"]))
    chunks = list(reader)  # validates every record, payload CRC, the end record and EOF
    if all(rec.method == stream.METHOD_STORED for rec, _ in chunks):
        out = []
        stream.decode_stream(stream.StreamReader(BytesIO(blob)), None, out.append)
        if "content_sha256" in expect:
            assert hashlib.sha256(b"".join(out)).hexdigest() == expect["content_sha256"]
    if expect["result"] == "valid":
        assert _sha_json(_generator().describe_stream(BytesIO(blob))) == expect["sha256"]


def _run_coder(path: Path, expect: dict) -> None:
    doc = json.loads(path.read_text())
    p, freqs, syms = doc["precision"], np.array(doc["freqs"]), np.array(doc["symbols"], np.int64)
    cum = np.concatenate([[0], np.cumsum(freqs)])
    enc = coder.Encoder(p)
    enc.encode_array(cum[:-1][syms], freqs[syms])
    data = enc.finish()
    assert data.hex() == doc["encoded"]
    assert hashlib.sha256(data).hexdigest() == expect["sha256"]
    dec = coder.Decoder(data, p)
    assert dec.decode_array(cum, len(syms)).tolist() == syms.tolist()
    assert dec.at_end()


RUN = {"container": _run_container, "stream": _run_stream, "coder": _run_coder}


@pytest.mark.parametrize("vec", MANIFEST, ids=[v["id"] for v in MANIFEST])
def test_vector(vec):
    path, expect = SPEC / "vectors" / vec["file"], vec["expect"]
    assert path.stat().st_size == vec["size"]
    if expect["result"] == "valid":
        RUN[vec["kind"]](path, expect)
        return
    with pytest.raises(errors.LmzipError) as info:
        RUN[vec["kind"]](path, expect)
    assert type(info.value).__name__ == expect["error"]
    assert expect["message"] in str(info.value)
    assert "\n" not in str(info.value)


def test_manifest_covers_every_file_and_required_cases():
    files = {p.relative_to(SPEC / "vectors").as_posix() for p in (SPEC / "vectors").rglob("*")}
    listed = {v["file"] for v in MANIFEST}
    assert files - {"manifest.json"} - {"coder", "container", "stream"} == listed
    ids = {v["id"] for v in MANIFEST}
    for need in ["stream-bad-magic", "stream-unknown-version", "stream-reserved-flag",
                 "stream-truncated-header", "stream-truncated-payload",
                 "stream-bad-header-checksum", "stream-bad-chunk-checksum",
                 "stream-bad-content-checksum", "stream-oversize-payload",
                 "stream-trailing-garbage", "stream-model-mismatch", "stream-unknown-method",
                 "container-truncated", "container-bad-checksum", "container-oversize-shape",
                 "container-bad-json", "container-unknown-kind"]:  # fmt: skip
        assert need in ids


def test_generator_check_passes():
    """A vector or spec hex dump changed without the generator fails here."""
    r = subprocess.run([sys.executable, str(SPEC / "generate_vectors.py"), "--check"],
                       check=False, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_doc_hexdumps_match_generator():
    gen = _generator()
    for doc, vector in gen.DOCS.items():
        blob = (SPEC / "vectors" / vector).read_bytes()
        segs = gen.container_segments(blob) if doc == "container.md" else gen.stream_segments(blob)
        assert gen.hexdump(segs) in (SPEC / doc).read_text()
