"""The pipeline: compress/decompress/verify through lmzip.api, with tiny and shipped models."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lmzip import api, container, rowops, stream
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


def test_forward_passes_side_by_side_give_each_window_its_rows(lm):
    """api._lm_blocks on two threads (passes side by side) and on one give, position after
    position, every chunk's rows of its own window (None past its end), with chunks of uneven
    lengths, also an empty one."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    seg = lm.engine.window - 1
    rng = np.random.default_rng(5)
    toks = [rng.integers(0, lm.engine.vocab_size, n).astype(np.int64)
            for n in (3 * seg + 7, seg - 2, 0, 2 * seg)]  # fmt: skip
    want = []
    for k in range(4):
        row = []
        for t in toks:
            s = t[k * seg : (k + 1) * seg]
            row.append(lm.engine.probs_np(api._window_inputs(lm, [s]))[0, : len(s)]
                       if len(s) else None)  # fmt: skip
        want.append(row)
    try:
        for threads, batch in ((1, 64), (2, 1), (2, 64)):
            rowops.set_threads(threads)
            assert api._forward_threads(lm) == threads
            got = list(api._lm_blocks(lm, toks, batch))
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert [x is None for x in g] == [x is None for x in w]
                for x, y in zip(g, w):
                    assert x is None or np.array_equal(x, y)
    finally:
        rowops.set_threads(1)


@pytest.mark.parametrize("lm_only", [False, True])
def test_single_stream_slices_lockstep_and_batched_loop_agree(lm, monkeypatch, lm_only):
    """A lone stream decodes in compiled slices (api._decode_single), a group of mixed streams
    in compiled lock-step slices (api._decode_lockstep: its LM steps on 1 or 2 of numba's
    threads, or a thread per stream taking turns), any batch in the Python loop; all must give
    the input back, across LM windows and slices."""
    assert lm.engine.step_all_ok()
    monkeypatch.setattr(api, "DECODE_SLICE", 7)  # slices end inside windows, never aligned
    data = read_corpus("lee_news.txt.zst", 7000)
    buf = io.BytesIO()
    api.compress_stream(io.BytesIO(data), buf, lm,
                        api.CodingOptions(threads=1, chunk_size=2048, lm_only=lm_only))  # fmt: skip
    calls = {"single": 0, "lockstep": 0, "slice_turn": 0, "slice_batched": 0,
             "slice_lockstep": 0}  # fmt: skip
    for name in calls:
        fn = getattr(api, f"_decode_{name}")
        monkeypatch.setattr(api, f"_decode_{name}",
                            lambda *a, fn=fn, name=name: calls.update({name: calls[name] + 1})
                            or fn(*a))  # fmt: skip
    seen = []
    set_threads = rowops.set_threads
    monkeypatch.setattr(rowops, "set_threads", lambda n: None)  # the loop below chooses
    turn_threads = api._turn_threads
    # (batch, LOCKSTEP_MAX, numba threads, threads the streams may have): a group per batch
    # on one thread (the streams' steps as one batch) and on two (a thread per stream, taking
    # turns); two groups in one batch on one thread (one batch) and on two (numba's lock-step
    # slices) and with a thread per stream forced (four threads taking turns on this machine's
    # cores); the loop
    cases = ((1, 8, 1, None), (1, 8, 2, None), (4, 8, 1, None), (4, 8, 2, None), (4, 8, 2, 8),
             (4, 1, 1, None))  # fmt: skip
    for batch, lockstep_max, threads, turn_max in cases:
        monkeypatch.setattr(api, "LOCKSTEP_MAX", lockstep_max)
        monkeypatch.setattr(api, "_turn_threads", (lambda t=turn_max: t) if turn_max else turn_threads)
        set_threads(threads)
        out = io.BytesIO()
        api.decompress_stream(io.BytesIO(buf.getvalue()), out.write, lm,
                              api.CodingOptions(threads=1, batch_size=batch))  # fmt: skip
        assert out.getvalue() == data
        seen.append(dict(calls))
        calls.update({k: 0 for k in calls})
    set_threads(1)
    if lm_only:  # 4 chunks: one at a time, or one batch in the loop
        assert [c["single"] for c in seen] == [4, 4, 0, 0, 0, 0]
        assert not any(c["lockstep"] or c["slice_turn"] for c in seen)
    else:  # 2 groups of 2: a group per batch, or both in one batch, or the loop
        assert [c["lockstep"] for c in seen] == [2, 2, 1, 1, 1, 0]
        assert not any(c["single"] for c in seen)
        n_slices = -(-7000 // 2 // 4 // 7)  # at least this many slices of 7 positions per stream
        turned = [c["slice_turn"] for c in seen]  # one call per stream and slice
        assert turned[0] == turned[2] == turned[3] == turned[5] == 0
        assert turned[1] >= 2 * 2 * n_slices // 2 and turned[4] >= 4 * n_slices // 2
        assert [c["slice_batched"] > 0 for c in seen] == [True, False, True, False, False, False]
        assert [c["slice_lockstep"] > 0 for c in seen] == [False, False, False, True, False,
                                                           False]  # fmt: skip


def test_a_group_of_chunks_shares_its_table(lm, monkeypatch):
    """Chunks of a group (api.MIXER_GROUP, recorded in the header) share the mixer's bucket
    table: the file is smaller than with independent chunks, and decodes with any settings."""
    data = read_corpus("lee_news.txt.zst", 12000)
    opts = api.CodingOptions(threads=1, chunk_size=3072)
    blobs = {}
    for group in (1, 2):
        monkeypatch.setattr(api, "MIXER_GROUP", group)
        blobs[group] = _roundtrip(lm, data, opts)
        h = stream.StreamReader(io.BytesIO(blobs[group])).header
        assert MixerParams.from_bytes(h.mixer).group == group
        methods = [r.method for r, _ in stream.StreamReader(io.BytesIO(blobs[group]))]
        assert methods == [stream.METHOD_MIXED] * 4
    assert len(blobs[2]) < len(blobs[1])
    for threads, batch in ((2, 1), (1, 3), (2, 64)):  # odd batches still hold whole groups
        out = io.BytesIO()
        api.decompress_stream(io.BytesIO(blobs[2]), out.write, lm,
                              api.CodingOptions(threads=threads, batch_size=batch))  # fmt: skip
        assert out.getvalue() == data


def test_a_stored_chunk_leaves_its_group_table(lm):
    """A chunk whose best method is not MIXED must not have fed its group's table: the group is
    mixed again without it, so the text chunk's payload is the one it has alone."""
    text = read_corpus("lee_news.txt.zst", 3000)
    noise = np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    mixer = api.mixer_params(3000, 2)
    assert mixer.group == 2
    pair = api.encode_group(lm, [text, noise], 24, mixer, 4)
    assert [c.best()[0] for c in pair] == [stream.METHOD_MIXED, stream.METHOD_STORED]
    assert pair[1].mix_payload is None
    assert pair[0].mix_payload == api.encode_group(lm, [text], 24, mixer, 4)[0].mix_payload
    blob = _roundtrip(lm, text + noise, api.CodingOptions(threads=1, chunk_size=3000))
    methods = [r.method for r, _ in stream.StreamReader(io.BytesIO(blob))]
    assert methods == [stream.METHOD_MIXED, stream.METHOD_STORED]


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
    kib = 1 << 10
    assert api.auto_chunk_size(None) == mib  # a pipe: size unknown
    assert api.auto_chunk_size(0) == api.auto_chunk_size(32 * kib) == 32 * kib  # one chunk
    assert api.auto_chunk_size(32 * kib + 1) == 32 * kib  # two
    assert api.auto_chunk_size(65_000) == 32 * kib  # two halves (31.7 KiB, rounded up)
    assert api.auto_chunk_size(100_000) == 52 * kib  # not 64 KiB + 33.7 KiB
    assert api.auto_chunk_size(359_784) == 176 * kib  # lee_news: two chunks, half up to 4 KiB
    assert api.auto_chunk_size(152_089) == 76 * kib  # not 128 KiB + 20 KiB
    assert api.auto_chunk_size(2 * mib) == mib
    assert api.auto_chunk_size(2 * mib + 1) == mib + 64 * kib
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
    monkeypatch.setattr(api, "MIN_AUTO_CHUNK_SIZE", 1024)
    monkeypatch.setattr(api, "MAX_AUTO_CHUNK_SIZE", 4096)
    monkeypatch.setattr(api, "AUTO_CHUNK_ALIGN", 512)
    monkeypatch.setattr(api, "SMALL_CHUNK_ALIGN", 512)
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


def test_cpu_path_without_torch_and_its_fallback(tiny_model_path, monkeypatch):
    """On CPU the pipeline runs without importing torch (a second of start-up); where the fused
    linear fails its self-test, load_model takes the torch engine, and the bytes are the same."""
    import subprocess
    import sys

    code = (
        "import io, sys\n"
        "from lmzip import api\n"
        f"lm = api.load_model(r'{tiny_model_path}')\n"
        "buf, out = io.BytesIO(), io.BytesIO()\n"
        "api.compress_stream(io.BytesIO(b'no torch here, ' * 200), buf, lm, api.CodingOptions(threads=1))\n"
        "api.decompress_stream(io.BytesIO(buf.getvalue()), out.write, lm, api.CodingOptions(threads=1))\n"
        "assert out.getvalue() == b'no torch here, ' * 200\n"
        "print(type(lm.engine).__name__, 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["CpuEngine", "False"]

    from lmzip import cpu_engine
    from lmzip.engine import Engine

    data = read_corpus("lee_news.txt.zst", 3000)
    opts = api.CodingOptions(threads=1, chunk_size=1024)
    fast = api.load_model(tiny_model_path)
    assert isinstance(fast.engine, cpu_engine.CpuEngine)
    monkeypatch.setattr(cpu_engine, "fused_linear_ok", lambda: False)
    slow = api.load_model(tiny_model_path)
    assert isinstance(slow.engine, Engine)
    assert _roundtrip(fast, data, opts) == _roundtrip(slow, data, opts)
