"""The pipeline: compress/decompress/verify through lmzip.api, with tiny and shipped models."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lmzip import api, container, stream
from lmzip.errors import FormatError, ModelMismatchError
from lmzip.mixer import MixerParams

from conftest import random_model_file, read_corpus

TEXT = (
    b"The committee said on Tuesday that the bridge would reopen in March.\r\n"
    b"  Indented line with\ttabs, digits 12345 and \xe2\x80\x9cquotes\xe2\x80\x9d.\n"
)


@pytest.fixture(scope="module")
def lm(tiny_model_path):
    return api.load_model(tiny_model_path)


def _roundtrip(lm, data: bytes, opts: api.CodingOptions) -> bytes:
    buf = io.BytesIO()
    api.compress_stream(io.BytesIO(data), buf, lm, opts)
    out = io.BytesIO()
    api.decompress_stream(io.BytesIO(buf.getvalue()), out.write, lm, opts)
    assert out.getvalue() == data
    return buf.getvalue()


@pytest.mark.parametrize("lm_only", [False, True])
def test_roundtrip_many_chunks_and_windows(lm, lm_only):
    data = read_corpus("lee_news.txt.zst", 9000) + TEXT + bytes(range(256))
    opts = api.CodingOptions(threads=1, batch_size=3, chunk_size=2048, lm_only=lm_only)
    blob = _roundtrip(lm, data, opts)
    methods = [r.method for r, _ in stream.StreamReader(io.BytesIO(blob))]
    assert len(methods) == 5 and stream.METHOD_STORED not in methods[:4]
    if lm_only:
        assert stream.METHOD_MIXED not in methods


def test_batch_size_and_threads_do_not_change_bytes(lm):
    data = read_corpus("lee_news.txt.zst", 5000)
    a = _roundtrip(lm, data, api.CodingOptions(threads=1, batch_size=1, chunk_size=1024))
    b = _roundtrip(lm, data, api.CodingOptions(threads=2, batch_size=64, chunk_size=1024))
    assert a == b


@pytest.mark.parametrize("lm_only", [False, True])
def test_single_stream_slices_and_batched_loop_agree(lm, monkeypatch, lm_only):
    """A lone stream decodes in compiled slices (api._decode_single), a batch in the Python
    loop; both must give the input back, across LM windows and slice boundaries."""
    assert lm.engine.step_all_ok()
    monkeypatch.setattr(api, "DECODE_SLICE", 7)  # slices end inside windows, never aligned
    data = read_corpus("lee_news.txt.zst", 7000)
    buf = io.BytesIO()
    api.compress_stream(io.BytesIO(data), buf, lm,
                        api.CodingOptions(threads=1, chunk_size=2048, lm_only=lm_only))  # fmt: skip
    calls = []
    single = api._decode_single
    monkeypatch.setattr(api, "_decode_single", lambda *a: calls.append(1) or single(*a))
    for batch in (1, 4):
        out = io.BytesIO()
        api.decompress_stream(io.BytesIO(buf.getvalue()), out.write, lm,
                              api.CodingOptions(threads=1, batch_size=batch))  # fmt: skip
        assert out.getvalue() == data
        n_single = len(calls)
        calls.clear()
        assert n_single == (4 if batch == 1 else 0)  # 4 chunks: one at a time, or one batch


@pytest.mark.parametrize("data", [b"", b"x", b"\x00", b"\xff\xfe\xfd", TEXT])
def test_small_inputs(lm, data):
    _roundtrip(lm, data, api.CodingOptions(threads=1))


def test_random_bytes_are_stored_not_expanded(lm):
    data = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    blob = _roundtrip(lm, data, api.CodingOptions(threads=1, chunk_size=16384))
    assert len(blob) <= len(data) * 1.001 + 300
    assert all(r.method == stream.METHOD_STORED for r, _ in stream.StreamReader(io.BytesIO(blob)))


def test_lm_chunk_decodes_in_a_batch_with_mixed_chunks(lm):
    raws = [TEXT, b"short", read_corpus("lee_news.txt.zst", 3000)]
    mixer = MixerParams()
    items = []
    for raw in raws:
        c = api.encode_chunk(lm, raw, 24, mixer, 4)
        for method, payload in ((stream.METHOD_LM, c.lm_payload), (stream.METHOD_MIXED,
                                                                   c.mix_payload)):  # fmt: skip
            rec = stream.ChunkRecord(method, len(raw), len(c.tokens), len(payload), 0)
            items.append((rec, payload))
    assert api.decode_chunks(lm, items, 24, mixer) == [r for r in raws for _ in (0, 1)]


def test_other_model_is_refused(lm, tok_bytes, tmp_path):
    other = tmp_path / "other.lmzm"
    container.save_model(random_model_file(tok_bytes, seed=5), other, compress=False)
    buf = io.BytesIO()
    api.compress_stream(io.BytesIO(TEXT), buf, lm, api.CodingOptions(threads=1))
    with pytest.raises(ModelMismatchError, match="-m"):
        api.decompress_stream(io.BytesIO(buf.getvalue()), lambda b: None,
                              api.load_model(str(other)), api.CodingOptions(threads=1))  # fmt: skip


def test_corrupt_payload_is_detected(lm):
    data = read_corpus("lee_news.txt.zst", 4000)
    buf = io.BytesIO()
    api.compress_stream(io.BytesIO(data), buf, lm, api.CodingOptions(threads=1))
    blob = bytearray(buf.getvalue())
    blob[len(blob) // 2] ^= 0x10
    with pytest.raises(FormatError):
        api.decompress_stream(io.BytesIO(bytes(blob)), lambda b: None, lm,
                              api.CodingOptions(threads=1))  # fmt: skip


def test_crlf_chunks_are_coded_as_lf_text(lm):
    """A chunk whose every LF follows a CR is coded as LF text (transform CRLF) and decoded back
    byte for byte; a chunk with one bare LF is coded as it is. Chunk 0 of the CRLF file holds
    less text than chunk 0 of the LF file (its CRs count against the chunk size) and codes the
    same tokens for it, so its payload is no larger."""
    lf = read_corpus("lee_news.txt.zst", 5000)
    crlf = lf.replace(b"\n", b"\r\n")
    mixed_ends = crlf[:3000] + lf[3000:]  # chunk 0 all CRLF, chunk 1 has bare LFs
    opts = api.CodingOptions(threads=1, chunk_size=3000)
    for lm_only in (False, True):
        o = api.CodingOptions(threads=1, chunk_size=4096, lm_only=lm_only)
        a, b = _roundtrip(lm, lf, o), _roundtrip(lm, crlf, o)
        ra = [(r, p) for r, p in stream.StreamReader(io.BytesIO(a))]
        rb = [(r, p) for r, p in stream.StreamReader(io.BytesIO(b))]
        assert [r.transform for r, _ in rb] == [1, 1] and [r.transform for r, _ in ra] == [0, 0]
        # chunk 0 holds the same text in both files (4096 bytes of CRLF text have fewer lines)
        assert len(rb[0][1]) <= len(ra[0][1]) + 8
    blob = _roundtrip(lm, mixed_ends, opts)
    recs = [r for r, _ in stream.StreamReader(io.BytesIO(blob))]
    assert [r.transform for r in recs] == [1, 0]


def test_verify_measures_agree(tiny_model_path, tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(read_corpus("lee_news.txt.zst", 6000))
    r = api.verify([str(path)], tiny_model_path, api.CodingOptions(threads=1))
    row = r["files"][0]
    assert row["roundtrip_ok"] and r["total"]["roundtrip_ok"]
    assert row["engine_bpb"] <= 1.01 * row["model_bpb"]
    header = 144 + 2 * 28  # stream header, one chunk record, end record
    assert row["real_bpb_lm_only"] <= row["engine_bpb"] * 1.001 + 8 * (header + 16) / row["bytes"]
    assert row["real_bpb"] <= row["real_bpb_lm_only"]


def test_shipped_models_roundtrip_and_quality():
    """Every shipped model is real: it predicts English far better than 8 bits per byte, and
    carries its provenance."""
    shipped = container.shipped_models()
    if "default" not in shipped:
        pytest.skip("no default model in this checkout")
    data = read_corpus("enwiki_gensim.txt.zst", 1500)
    for name in shipped:
        lm = api.load_model(name)
        prov = lm.mf.provenance
        assert {"data", "preset", "steps", "val_bpb_quant"} <= set(prov), name
        assert prov["data"] == ["train_mix.txt.zst"], name  # never a dev set
        blob = _roundtrip(lm, data, api.CodingOptions(threads=1, lm_only=True))
        assert 8 * len(blob) / len(data) < 4.5, name


def test_auto_chunk_size_rule():
    mib = 1 << 20
    assert api.auto_chunk_size(None) == mib  # a pipe: size unknown
    assert api.auto_chunk_size(0) == api.auto_chunk_size(2 * mib) == mib
    assert api.auto_chunk_size(2 * mib + 1) == mib + (64 << 10)  # half, up to 64 KiB
    assert api.auto_chunk_size(5_052_230) == 2_555_904  # shakespeare: two chunks
    assert api.auto_chunk_size(10**9) == 4 * mib
    assert api.CodingOptions(chunk_size=8192).chunk_bytes(10**9) == 8192  # explicit wins


def test_mixer_memory_follows_the_chunk_length(lm, monkeypatch):
    bits = {n: api.mixer_params(n).hash_bits for n in (0, 3000, 100_000, 359_784, 1 << 20, 10**9)}
    assert bits == {0: 16, 3000: 16, 100_000: 20, 359_784: 22, 1 << 20: 22, 10**9: 22}
    assert api.mixer_params(1 << 20).memory_bytes(0) < 150_000_000
    data = read_corpus("lee_news.txt.zst", 6000)
    out = io.BytesIO()
    api.compress_stream(io.BytesIO(data), out, lm, api.CodingOptions(threads=1, chunk_size=1024))
    h = stream.StreamReader(io.BytesIO(out.getvalue())).header
    assert MixerParams.from_bytes(h.mixer).hash_bits == 16  # pipe: 1024-byte chunks -> 2^16
    # a decoding worker holds at most DECODE_MIXER_BUDGET of mixer state: fewer streams per
    # batch, the same bytes
    monkeypatch.setattr(api, "DECODE_MIXER_BUDGET", 3 * MixerParams.from_bytes(h.mixer)
                        .memory_bytes(0))  # fmt: skip
    dec = io.BytesIO()
    api.decompress_stream(io.BytesIO(out.getvalue()), dec.write, lm,
                          api.CodingOptions(threads=1, batch_size=16))  # fmt: skip
    assert dec.getvalue() == data


def test_auto_chunk_size_follows_the_file_size_not_the_reader(lm, tmp_path, monkeypatch):
    # scaled-down rule (1 KiB .. 4 KiB, 512-byte steps) so that a tiny model codes it fast
    monkeypatch.setattr(api, "DEFAULT_CHUNK_SIZE", 1024)
    monkeypatch.setattr(api, "MAX_AUTO_CHUNK_SIZE", 4096)
    monkeypatch.setattr(api, "AUTO_CHUNK_ALIGN", 512)
    data = read_corpus("lee_news.txt.zst", 5000)
    src = tmp_path / "in.txt"
    src.write_bytes(data)
    opts = api.CodingOptions(threads=1)
    blobs = {}
    for name in ("file", "pipe"):
        out = io.BytesIO()
        with open(src, "rb") as f:
            api.compress_stream(f if name == "file" else io.BytesIO(f.read()), out, lm, opts)
        blobs[name] = out.getvalue()
        dec = io.BytesIO()
        api.decompress_stream(io.BytesIO(blobs[name]), dec.write, lm, opts)
        assert dec.getvalue() == data
    sizes = {k: stream.StreamReader(io.BytesIO(b)).header.chunk_size for k, b in blobs.items()}
    assert sizes == {"file": 2560, "pipe": 1024}  # 5000 / 2 -> 2560; unknown size -> minimum
    n_chunks = {k: sum(1 for _ in stream.StreamReader(io.BytesIO(b))) for k, b in blobs.items()}
    assert n_chunks == {"file": 2, "pipe": 5}


def test_shipped_models_by_name_and_decompress_picks_the_files_model(
    tok_bytes, tmp_path, monkeypatch
):
    """-m NAME finds a shipped model; decompress without -m uses the shipped model whose id the
    file's header names (files made with any shipped model decode with no flags), and a file
    made with a model that is not shipped fails with the model-mismatch error."""
    models = tmp_path / "models"
    models.mkdir()
    for name, seed in (("default", 3), ("other", 4)):
        container.save_model(random_model_file(tok_bytes, seed=seed), models / f"{name}.lmzm")
    outside = tmp_path / "outside.lmzm"
    container.save_model(random_model_file(tok_bytes, seed=5), outside)
    monkeypatch.setattr(container, "default_model_path", lambda: models / "default.lmzm")
    assert set(container.shipped_models()) == {"default", "other"}
    assert api.resolve_model_path("other") == str(models / "other.lmzm")
    with pytest.raises(api.LmzipError, match="shipped models: default, other"):
        api.resolve_model_path("nosuch")
    src = tmp_path / "t.txt"
    src.write_bytes(TEXT * 3)
    opts = api.CodingOptions(threads=1)
    for model in ("other", "default", str(outside)):
        lmz, back = tmp_path / "t.lmz", tmp_path / "t.out"
        api.compress_file(str(src), str(lmz), model, opts, force=True)
        if model == str(outside):
            with pytest.raises(ModelMismatchError):
                api.decompress_file(str(lmz), str(back), None, opts, force=True)
            assert not back.exists()  # no partial output
            api.decompress_file(str(lmz), str(back), str(outside), opts, force=True)
        else:
            api.decompress_file(str(lmz), str(back), None, opts, force=True)
        assert back.read_bytes() == TEXT * 3
        back.unlink()
