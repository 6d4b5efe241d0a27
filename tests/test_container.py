"""Model container (.lmzm): round trips, model_id, limits, malformed input."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmzip import container
from lmzip.container import ModelFile, QTensor, load_model, read_model_header, save_model
from lmzip.errors import ChecksumError, FormatError, VersionError


def _model(seed: int = 0) -> ModelFile:
    rng = np.random.default_rng(seed)
    q6 = rng.integers(-31, 32, (5, 7)).astype(np.int8)  # 35 values: a padded last q6 group
    q8 = rng.integers(-127, 128, (3, 4)).astype(np.int8)
    return ModelFile(
        config={"d_model": 8, "rope_base": 10000.0},
        tokenizer=b"\x00spm\xff",
        tensors={
            "blocks.0.w": QTensor("q6", q6, rng.random(5).astype(np.float16)),
            "emb": QTensor("q8", q8, rng.random(3).astype(np.float16)),
            "gain": QTensor("f16", rng.normal(size=(2, 3)).astype(np.float16)),
            "table": QTensor("i32", np.arange(-3, 3, dtype=np.int32)),
        },
        provenance={"steps": 10, "bpb": 1.5},
        numerics_version=3,
    )


def _same(a: ModelFile, b: ModelFile) -> None:
    assert (a.config, a.tokenizer, a.provenance, a.numerics_version) == (
        b.config, b.tokenizer, b.provenance, b.numerics_version)  # fmt: skip
    assert list(a.tensors) == list(b.tensors)
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert t.kind == u.kind and t.values.dtype == u.values.dtype
        assert np.array_equal(t.values, u.values)
        assert (t.scales is None) == (u.scales is None)
        if t.scales is not None:
            assert np.array_equal(t.scales, u.scales)


@pytest.mark.parametrize("compress", [False, True, None])
def test_round_trip(tmp_path, compress):
    mf = _model()
    path = tmp_path / "m.lmzm"
    n = save_model(mf, path, compress=compress, zstd_level=3)
    assert n == path.stat().st_size
    back = load_model(path)
    _same(mf, back)
    assert back.model_id == mf.model_id
    assert [p.name for p in tmp_path.iterdir()] == ["m.lmzm"]  # temp file replaced
    # the id as verified at load (what the compressor writes), gone from a changed copy
    assert back.verified_id == mf.model_id and mf.verified_id is None
    assert dataclasses.replace(back, tensors={}).verified_id is None


def test_model_id_ignores_provenance_and_codec(tmp_path):
    mf = _model()
    save_model(mf, tmp_path / "a.lmzm", compress=False)
    mf2 = _model()
    mf2.provenance = {"other": True}
    save_model(mf2, tmp_path / "b.lmzm", compress=True, zstd_level=1)
    a, b = read_model_header(tmp_path / "a.lmzm"), read_model_header(tmp_path / "b.lmzm")
    assert a["model_id"] == b["model_id"] == mf.model_id
    assert len(mf.model_id) == 64


def test_model_id_changes_with_what_decodes():
    base = _model().model_id
    for change in ["config", "tokenizer", "numerics", "tensor", "order"]:
        mf = _model()
        if change == "config":
            mf.config = {**mf.config, "d_model": 9}
        elif change == "tokenizer":
            mf.tokenizer += b"x"
        elif change == "numerics":
            mf.numerics_version = 4
        elif change == "tensor":
            mf.tensors["table"] = QTensor("i32", np.arange(-3, 3, dtype=np.int32)[::-1].copy())
        else:
            mf.tensors = dict(reversed(mf.tensors.items()))
        assert mf.model_id != base, change


def test_header_reads_no_tensor_data(tmp_path):
    path = tmp_path / "m.lmzm"
    save_model(_model(), path, compress=False)
    h = read_model_header(path)
    assert h["format_version"] == 1 and h["numerics_version"] == 3 and h["n_tensors"] == 4
    assert h["tensors"][0] == {"name": "blocks.0.w", "kind": "q6", "shape": [5, 7]}
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 1  # tensor data: only the full load's file checksum sees it
    path.write_bytes(bytes(blob))
    assert read_model_header(path)["model_id"] == h["model_id"]
    with pytest.raises(ChecksumError, match="file checksum"):
        load_model(path)


def test_q6_packing_round_trip_and_density():
    v = np.arange(-31, 32, dtype=np.int8)
    packed = container.pack_q6(v)
    assert len(packed) == (63 + 3) // 4 * 3
    assert np.array_equal(container.unpack_q6(packed, 63), v)


def test_dequantize():
    t = QTensor("q8", np.array([[2, -4]], np.int8), np.array([0.5], np.float16))
    assert t.dequantize().dtype == np.float32
    assert t.dequantize().tolist() == [[1.0, -2.0]]


@pytest.mark.parametrize(
    "kind,values,scales",
    [
        ("q6", np.array([[32]], np.int8), np.ones(1, np.float16)),
        ("q8", np.array([[-128]], np.int8), np.ones(1, np.float16)),
        ("q6", np.zeros(4, np.int8), np.ones(1, np.float16)),
        ("q8", np.zeros((1, 2), np.int8), None),
        ("f16", np.zeros(2, np.float32), None),
        ("i64", np.zeros(2, np.int64), None),
        ("f16", np.array([np.nan], np.float16), None),
    ],
)
def test_qtensor_rejects_bad_input(kind, values, scales):
    with pytest.raises(ValueError):
        QTensor(kind, values, scales)


def test_save_rejects_bad_names(tmp_path):
    mf = _model()
    mf.tensors = {"9bad": mf.tensors["table"]}
    with pytest.raises(ValueError, match="ASCII identifier"):
        save_model(mf, tmp_path / "m.lmzm")


def test_version_checked_before_checksum(tmp_path):
    path = tmp_path / "m.lmzm"
    save_model(_model(), path, compress=False)
    blob = bytearray(path.read_bytes())
    blob[8] = 7  # header CRC now wrong too: the version error must win
    path.write_bytes(bytes(blob))
    with pytest.raises(VersionError, match="version 7"):
        read_model_header(path)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_corruption_raises_only_format_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("c") / "m.lmzm"
    save_model(_model(), path, compress=data.draw(st.booleans()), zstd_level=1)
    blob = bytearray(path.read_bytes())
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(blob))
    for fn in (load_model, read_model_header):
        try:
            fn(path)
        except FormatError as e:
            assert "\n" not in str(e)


def test_format_modules_do_not_import_torch():
    code = "import sys, lmzip.container, lmzip.stream; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_no_pickle_in_format_code():
    import inspect

    import lmzip.stream

    for mod in (container, lmzip.stream):
        assert "pickle" not in inspect.getsource(mod)
