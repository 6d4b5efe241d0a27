"""Fuzzing the readers (mutated .lmz and model files) and the whole pipeline (docs/reliability.md).

CI runs a bounded number of cases (profile "lmzip-ci"); developers run the long campaign with
    HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py
Reader properties need no model: every bit flip, truncation or appended byte of a .lmz must be
refused by the reader alone (every byte is under a CRC). Forged mutations (CRCs recomputed) must
be refused by the decoder's checksums, never decoded into other bytes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability import TEXT, forge_lmz, parse_lmz

from lmzip import api, container, stream
from lmzip.errors import FormatError, LmzipError

_COMMON = {"deadline": None, "suppress_health_check": list(HealthCheck)}
settings.register_profile("lmzip-ci", max_examples=200, **_COMMON)
settings.register_profile("long", max_examples=20_000, **_COMMON)
# Only the long campaign is selected from outside; the CI numbers are fixed here.
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
READER = settings(settings.get_profile("long" if LONG else "lmzip-ci"))
PIPELINE = settings(READER, max_examples=2_000 if LONG else 12)
DECODE = settings(READER, max_examples=500 if LONG else 8)

VECTORS = Path(__file__).resolve().parent.parent / "format_spec" / "vectors"


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return api.load_model(tiny_model_path)


@pytest.fixture(scope="module")
def blobs(model) -> dict[str, bytes]:
    """Valid files: coded chunks (mixed), stored chunks, several chunks."""
    out = {}
    for name, data, chunk in (("coded", TEXT, 1024), ("stored", os.urandom(2500), 1024),
                              ("lm", TEXT[:300], 1024)):  # fmt: skip
        f = io.BytesIO()
        opts = api.CodingOptions(threads=1, chunk_size=chunk, lm_only=name == "lm")
        api.compress_stream(io.BytesIO(data), f, model, opts)
        out[name] = f.getvalue()
    return out


def _read_all(blob: bytes) -> None:
    for _ in stream.StreamReader(io.BytesIO(blob)):
        pass


@st.composite
def damage(draw, blob: bytes) -> bytes:
    """Random damage of the kinds a disk, a network or a careless user causes."""
    b = bytearray(blob)
    kind = draw(st.sampled_from(["flip", "flips", "truncate", "append", "overwrite", "insert"]))
    if kind in ("flip", "flips"):
        for _ in range(1 if kind == "flip" else draw(st.integers(2, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        b = b[: draw(st.integers(0, len(b) - 1))]
    elif kind == "append":
        b += draw(st.binary(min_size=1, max_size=64))
    elif kind == "overwrite":
        i = draw(st.integers(0, len(b) - 1))
        patch = draw(st.binary(min_size=1, max_size=32))
        b[i : i + len(patch)] = patch
    else:
        i = draw(st.integers(0, len(b)))
        b[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(b)


@pytest.mark.parametrize("which", ["coded", "stored"])
def test_damaged_lmz_is_refused_by_the_reader(blobs, which):
    @READER
    @given(st.data())
    def check(data):
        bad = data.draw(damage(blobs[which]))
        if bad == blobs[which]:  # an overwrite with the same bytes
            return
        with pytest.raises(FormatError):
            _read_all(bad)
        with pytest.raises(LmzipError):
            _info(bad)

    check()


def _info(blob: bytes) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".lmz") as f:
        f.write(blob)
        f.flush()
        api.info(f.name)


@st.composite
def forged(draw, blob: bytes) -> bytes:
    """A structurally plausible file: one field or payload changed, every CRC recomputed."""
    head, chunks, end = parse_lmz(blob)
    target = draw(st.sampled_from(["header", "record", "payload", "end", "drop", "dup"]))
    if target == "header":
        # numeric header fields (stream.HEADER) -> their largest value
        top = {1: 0xFFFF, 2: 0xFFFF, 3: 0xFFFF, 4: 0xFF, 5: 0xFF, 7: 0xFFFFFFFF, 8: 0xFFFFFFFF,
               9: (1 << 64) - 1, 11: 0xFFFFFFFF}  # fmt: skip
        i = draw(st.sampled_from(sorted(top)))
        v = head[i]
        head[i] = draw(st.sampled_from([0, 1, 2, 255, v + 1, max(0, v - 1), 1 << 31, top[i]]))
        head[i] = min(head[i], top[i])
    elif target == "record":
        c = draw(st.integers(0, len(chunks) - 1))
        # method, transform, reserved, raw_size, n_tokens, payload_size, checksum
        i = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7]))
        v = chunks[c][0][i]
        lim = (1 << 8) - 1 if i <= 3 else (1 << 32) - 1
        chunks[c][0][i] = min(lim, draw(st.sampled_from([0, 1, 2, v + 1, max(0, v - 1), lim])))
    elif target == "payload":
        c = draw(st.integers(0, len(chunks) - 1))
        p = bytearray(chunks[c][1])
        if p:
            p[draw(st.integers(0, len(p) - 1))] ^= 1 << draw(st.integers(0, 7))
        chunks[c][1] = bytes(p)
    elif target == "end":
        i = draw(st.sampled_from([3, 4]))
        end[i] += draw(st.sampled_from([-1, 1]))
        end[i] = max(0, end[i])
    elif target == "drop" and len(chunks) > 1:
        del chunks[draw(st.integers(0, len(chunks) - 1))]
    elif target == "dup":
        chunks.insert(0, chunks[-1])
    return forge_lmz(head, chunks, end)


@pytest.mark.parametrize("which", ["stored", "coded"])
def test_forged_lmz_never_decodes_to_other_bytes(blobs, model, which):
    """Forged files reach the decoder: it must raise, or (a no-op change) restore the input."""
    original = io.BytesIO()
    api.decompress_stream(io.BytesIO(blobs[which]), original.write, model,
                          api.CodingOptions(threads=1))  # fmt: skip
    budget = DECODE if which == "coded" else READER

    @budget
    @given(st.data())
    def check(data):
        bad = data.draw(forged(blobs[which]))
        out = io.BytesIO()
        try:
            api.decompress_stream(io.BytesIO(bad), out.write, model, api.CodingOptions(threads=1))
        except LmzipError:
            return
        assert out.getvalue() == original.getvalue()

    check()


def test_damaged_model_container_is_refused(tiny_model_path):
    valid = Path(tiny_model_path).read_bytes()
    tiny = (VECTORS / "container" / "valid_tiny.lmzm").read_bytes()

    @READER
    @given(st.data(), st.sampled_from(["tiny", "vector"]))
    def check(data, which):
        blob = valid if which == "tiny" else tiny
        bad = data.draw(damage(blob))
        if bad == blob:
            return
        with pytest.raises(FormatError):
            container.decode_model(bad)

    check()


def test_truncated_model_containers_info(tmp_path, tiny_model_path):
    """What `lmzip info` reads: every truncation point of the header region, and a sample of
    the rest, is an error."""
    valid = Path(tiny_model_path).read_bytes()
    cuts = list(range(600)) + list(range(600, len(valid), 997))
    path = tmp_path / "t.lmzm"
    for n in cuts:
        path.write_bytes(valid[:n])
        with pytest.raises(LmzipError):
            api.info(str(path))


@PIPELINE
@given(st.one_of(st.binary(max_size=400), st.text(max_size=200).map(str.encode),
                 st.sampled_from([b"", b"\x00", b"\r\n" * 50, TEXT[:333], bytes(range(256))])))  # fmt: skip
def test_pipeline_round_trip(model, data):
    f = io.BytesIO()
    opts = api.CodingOptions(threads=1, chunk_size=1024)
    api.compress_stream(io.BytesIO(data), f, model, opts)
    blob = f.getvalue()
    assert len(blob) <= len(data) + stream.HEADER_SIZE + stream.RECORD_SIZE * (
        2 + len(data) // 1024
    )
    out = io.BytesIO()
    api.decompress_stream(io.BytesIO(blob), out.write, model, opts)
    assert out.getvalue() == data
