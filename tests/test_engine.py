"""The exact engine: identical tables on every path (format_spec/numerics.md)."""

from __future__ import annotations

import math
import subprocess
import sys
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch
from conftest import random_model_file

from lmzip import kernels, numerics
from lmzip.engine import Engine
from lmzip.errors import FormatError, VersionError
from lmzip.export import gpt_from_model_file


@pytest.fixture(scope="module")
def mf(tok_bytes):
    return random_model_file(tok_bytes, seed=1)


@pytest.fixture(scope="module")
def engine(mf):
    return Engine(mf)


def _windows(n, t, v, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(4, v, (n, t), generator=g)
    w[:, 0] = 1
    return w


def test_exp_constants_match_decimal():
    getcontext().prec = 50
    for c, x in [(numerics.EXP_C1, 1), (numerics.EXP_CA, Decimal(1) / 256),
                 (numerics.EXP_CB, Decimal(1) / 65536)]:  # fmt: skip
        exact = Decimal(2) ** 30 * (-Decimal(x)).exp()
        assert c == int(exact.to_integral_value())


def test_exp_q30_accuracy():
    x = torch.arange(0, 12 << 16, 331)
    got = numerics.exp_q30(x).double() / 2**30
    assert (got - torch.exp(-x.double() / 65536)).abs().max() < 2e-7
    assert numerics.exp_q30(torch.tensor([0]))[0] == 1 << 30
    assert numerics.exp_q30(torch.tensor([24 << 16]))[0] == 0


def test_isqrt_exact():
    n = torch.cat([torch.randint(0, 2**62, (20000,)), torch.arange(0, 5000),
                   torch.tensor([2**62 - 1, (2**31 - 1) ** 2, (2**31 - 1) ** 2 - 1])])  # fmt: skip
    r = numerics.isqrt(n)
    assert bool(((r * r <= n) & ((r + 1) * (r + 1) > n)).all())


def test_freq_table_total_and_floor():
    p = numerics.lm_probs(torch.randint(-(40 << 16), 40 << 16, (50, 512)))
    for prec in (10, 16, 24):
        f = numerics.freq_table(p, prec)
        assert bool((f.sum(-1) == 1 << prec).all()) and int(f.min()) >= 1
    with pytest.raises(ValueError):
        numerics.freq_table(p, 9)


def test_batched_equals_incremental(engine):
    """Thousands of positions: teacher-forced tables == KV-cache tables, bit for bit."""
    w = _windows(6, engine.window, engine.vocab_size)
    full = engine.forward(w)
    st = engine.new_state(6)
    inc = torch.stack([engine.step(st, w[:, i], torch.full((6,), i)) for i in range(w.size(1))], 1)
    assert torch.equal(full, inc)
    assert full.numel() // engine.vocab_size >= 6 * 48


def test_stream_alone_equals_in_batch_with_other_positions(engine):
    """A stream's tables do not depend on its batch-mates, their positions or their count."""
    w = _windows(3, engine.window, engine.vocab_size, seed=3)
    alone = engine.forward(w[1:2])
    st = engine.new_state(3)
    outs = []
    for i in range(w.size(1)):
        # stream 0 restarts every 7 steps, stream 2 lags by 5: all positions differ
        pos = torch.tensor([i % 7, i, max(0, i - 5)])
        toks = torch.stack([w[0, i % 7], w[1, i], w[2, max(0, i - 5)]])
        outs.append(engine.step(st, toks, pos)[1])
    assert torch.equal(torch.stack(outs), alone[0])
    # shorter windows and a different batch composition give the same prefix rows
    assert torch.equal(engine.forward(w[:, :20])[1], alone[0, :20])


def test_thread_count_does_not_change_tables(engine):
    w = _windows(4, engine.window, engine.vocab_size, seed=5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = engine.forward(w)
        torch.set_num_threads(2)
        two = engine.forward(w)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


@pytest.mark.parametrize("kernel", ["f32", "f64"])
def test_fallback_kernels_identical(mf, engine, kernel):
    w = _windows(2, engine.window, engine.vocab_size, seed=7)
    forced = Engine(mf, matmul=kernel)
    assert all(lay["mlp.up"].mm.kernel == kernel for lay in forced.layers)
    assert torch.equal(forced.forward(w), engine.forward(w))


def test_selftest_failure_falls_back(mf, engine, monkeypatch):
    """A kernel that fails its self-test (e.g. oneDNN's saturating AVX2 path) is never used."""
    monkeypatch.setattr(kernels, "kernel_ok", lambda *a: False)
    eng = Engine(mf, matmul="int_mm")
    assert all(lay["attn.q"].mm.kernel == "f64" for lay in eng.layers)
    w = _windows(2, engine.window, engine.vocab_size, seed=9)
    assert torch.equal(eng.forward(w), engine.forward(w))


def test_fused_linear_selftest_failure_falls_back(mf, engine, monkeypatch):
    """Where rowops.linear_i16 fails its start-up self-test (engine.fused_linear_ok), the engine
    codes with the self-tested torch products instead, with identical tables on both paths."""
    import lmzip.engine as E

    assert E.fused_linear_ok()  # passes on this machine
    monkeypatch.setattr(E, "fused_linear_ok", lambda: False)
    eng = Engine(mf)
    assert eng._stacked is None and all(lay["mlp.up"].w_rows is None for lay in eng.layers)
    w = _windows(2, engine.window, engine.vocab_size, seed=11)
    assert torch.equal(eng.forward(w), engine.forward(w))
    st_a, st_b = eng.new_state(2), engine.new_state(2)
    for i in range(6):
        toks, pos = w[:, i], torch.full((2,), i)
        assert torch.equal(eng.step(st_a, toks, pos), engine.step(st_b, toks, pos))


def test_selftest_detects_a_saturating_kernel(monkeypatch):
    def saturating(a, w, wmax):
        # oneDNN's AVX2 u8s8 path: activations shifted to u8 (a + 128), products summed in
        # pairs with int16 saturation (vpmaddubsw), the shift compensated afterwards
        prod = (a.long() + 128)[:, :, None] * w.long()[None]
        pairs = prod[:, 0::2] + prod[:, 1::2]
        return pairs.clamp(-32768, 32767).sum(1) - 128 * w.long().sum(0)[None]

    monkeypatch.setitem(kernels._IMPL, "int_mm", saturating)
    kernels.kernel_ok.cache_clear()
    try:
        assert not kernels.kernel_ok("int_mm", 64, 32, 127, "cpu")
        assert kernels.kernel_ok("int_mm", 64, 32, 31, "cpu")  # int6 weights are safe there
    finally:
        kernels.kernel_ok.cache_clear()


def test_tables_same_in_another_process(mf, engine, tmp_path):
    from lmzip.container import save_model

    path = tmp_path / "m.lmzm"
    save_model(mf, path, compress=False)
    w = _windows(2, engine.window, engine.vocab_size, seed=11)
    torch.save(w, tmp_path / "w.pt")
    code = (
        "import torch, sys; torch.set_num_threads(1)\n"
        "from lmzip.container import load_model; from lmzip.engine import Engine\n"
        f"e = Engine(load_model(r'{path}'), matmul='f32')\n"
        f"torch.save(e.forward(torch.load(r'{tmp_path / 'w.pt'}')), r'{tmp_path / 'o.pt'}')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert torch.equal(torch.load(tmp_path / "o.pt"), engine.forward(w))


def test_engine_close_to_float_reference(mf, engine):
    """Random weights are a hard case; trained models are checked by test_api (1 %)."""
    ref = gpt_from_model_file(mf)
    w = _windows(4, engine.window, engine.vocab_size, seed=13)
    with torch.no_grad():
        lf = torch.log_softmax(ref(w).double(), -1)
    f = numerics.freq_table(numerics.lm_probs(engine.forward(w)), 24).double() / 2**24
    tg = w[:, 1:, None]
    bits_ref = -lf[:, :-1].gather(-1, tg).sum() / np.log(2)
    bits_eng = -torch.log2(f[:, :-1].gather(-1, tg)).sum()
    assert abs(bits_eng / bits_ref - 1) < 0.01


def test_rejects_wrong_numerics_version(mf):
    import dataclasses

    with pytest.raises(VersionError):
        Engine(dataclasses.replace(mf, numerics_version=99))


def test_rejects_out_of_range_tensors(mf):
    import dataclasses

    from lmzip.container import QTensor

    t = dict(mf.tensors)
    q = t["blocks.0.mlp.up"]
    t["blocks.0.mlp.up"] = QTensor("q6", q.values, np.full_like(q.scales, 16.0))
    with pytest.raises(FormatError, match="range"):
        Engine(dataclasses.replace(mf, tensors=t))
    t = dict(mf.tensors)
    del t["skip_weights"]
    with pytest.raises(FormatError, match="missing"):
        Engine(dataclasses.replace(mf, tensors=t))


# Other head shapes for the fused attention: three query heads per KV head (a pair, then one
# alone), head_dim 20 (outputs past the last block of 16 of simd.rows_pv2) and a window that is
# not a multiple of 8 keys (rowops.key_cols); one query head per KV head, head_dim 48.
SHAPES = {
    "h3-kv1-e20-w45": {"d_model": 60, "n_head": 3, "n_kv_head": 1, "seq_len": 45},
    "h2-kv2-e48": {"d_model": 96, "n_head": 2, "n_kv_head": 2},
    # windows long enough for the passes' attention in AMX tiles (cpu_engine.TILES_ATT_MIN)
    "h2-kv1-e32-w80": {"d_model": 64, "n_head": 2, "n_kv_head": 1, "seq_len": 80},
}


@pytest.fixture(scope="module", params=["default", *SHAPES])
def shaped_mf(request, mf, tok_bytes):
    if request.param == "default":
        return mf
    return random_model_file(tok_bytes, seed=5, **SHAPES[request.param])


def test_fused_kernels_equal_torch_reference(shaped_mf):
    """The numba kernels (CPU default) compute exactly the torch reference's integers, for the
    test model and other head shapes."""
    mf = shaped_mf
    fused, ref = Engine(mf, fused=True), Engine(mf, fused=False)
    layered = Engine(mf, fused=True)
    layered._stacked = None  # steps layer by layer (batches over STEP_ALL_MAX_B streams)
    assert fused._stacked is not None  # steps run as one compiled call (rowops.step_all)
    w = _windows(3, fused.window, fused.vocab_size, seed=17)
    assert torch.equal(fused.forward(w), ref.forward(w))  # many rows: float32 GEMM halves
    assert torch.equal(fused.forward(w[:1, :12]), ref.forward(w[:1, :12]))  # few rows: linear_i16 on one thread
    sf, sr, sl = fused.new_state(3), ref.new_state(3), layered.new_state(3)
    for i in range(w.size(1)):
        pos = torch.tensor([i, i % 5, max(0, i - 9)])
        toks = torch.stack([w[0, i], w[1, i % 5], w[2, max(0, i - 9)]])
        want = ref.step(sr, toks, pos)
        assert torch.equal(fused.step(sf, toks, pos), want)
        assert torch.equal(layered.step(sl, toks, pos), want)


def test_fused_table_functions_equal_reference():
    g = torch.Generator().manual_seed(3)
    logits = torch.randint(-(60 << 16), 60 << 16, (40, 700), generator=g)
    logits[0] = 0  # all tied: the remainder goes to the lowest index
    for cap in (1, 30, 977):
        capped = numerics.softcap_q16(logits, cap)
        assert torch.equal(capped, numerics.softcap_reference(logits, cap))
    p = numerics.lm_probs(capped)
    assert torch.equal(p, numerics.lm_probs_reference(capped))
    for prec in (11, 16, 24):
        assert torch.equal(numerics.freq_table(p, prec), numerics.freq_table_reference(p, prec))


def test_softcap_rows_equal_reference_over_the_range():
    """rowops.softcap_rows (float64 quotients corrected to the exact floors, in loops that
    vectorize) gives numerics.softcap_reference's integers over the whole logit range the
    engine allows (|l| <= LOGIT_MAX), at 0 and +-1, and next to every multiple of the cap,
    where floor(2 |l| / cap) changes, for caps from 1 to 1000 (the config's bounds)."""
    from lmzip import cpu_engine, rowops

    rng = np.random.default_rng(11)
    lim = cpu_engine.LOGIT_MAX
    tables = numerics.exp_tables_np()
    for cap in (1, 2, 7, 30, 1000):
        near = (rng.integers(-lim // cap, lim // cap, 4000) * cap)[:, None] + np.arange(-2, 3)
        logits = np.concatenate([rng.integers(-lim, lim + 1, 30000), near.reshape(-1),
                                 rng.integers(-(40 << 16), 40 << 16, 30000),
                                 [0, 1, -1, lim, -lim]])  # fmt: skip
        logits = np.clip(logits, -lim, lim).reshape(-1, 5).astype(np.int64)
        want = numerics.softcap_reference(torch.from_numpy(logits), cap).numpy()
        assert np.array_equal(rowops.softcap_rows(logits, cap, *tables), want)
        assert np.array_equal(rowops.softcap_rows_par(logits, cap, *tables), want)
    # every value of exp30 the quotient can see: with cap 2, u = |l| runs over all of
    # 0 .. 24 * 2^16 (beyond, exp30 is 0), both signs
    u = np.arange(len(tables[0]) << 16, dtype=np.int64)
    logits = np.concatenate([u, -u]).reshape(-1, 1024)
    want = numerics.softcap_reference(torch.from_numpy(logits), 2).numpy()
    assert np.array_equal(rowops.softcap_rows(logits, 2, *tables), want)


def test_parallel_row_kernels_equal_serial():
    """The *_par row kernels (teacher-forced passes) give the serial kernels' integers."""
    from lmzip import rowops

    rng = np.random.default_rng(5)
    n = 2 * rowops.ROW_BLOCK + 3  # blocks of unequal length
    tables = numerics.exp_tables_np()
    logits = rng.integers(-(60 << 16), 60 << 16, (n, 300))
    for serial, par, args in (
        (rowops.softcap_rows, rowops.softcap_rows_par, (logits, 30, *tables)),
        (rowops.probs_rows, rowops.probs_rows_par, (logits, *tables)),
        (rowops.relu2_absquant, rowops.relu2_absquant_par, (logits >> 8, 0, 16383)),
    ):
        a, b = serial(*args), par(*args)
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert np.array_equal(x, y), serial.__name__
    y = rng.integers(-(1 << 24), 1 << 24, (n, 4 * 16))
    pos = rng.integers(0, 64, n)
    ang = rng.integers(-(1 << 30), 1 << 30, (64, 8))
    args = (y, pos, ang, ang[::-1].copy(), 1 << 12, 16)
    assert np.array_equal(rowops.qk_rows(*args), rowops.qk_rows_par(*args))


@pytest.mark.parametrize("k,qmax", [(1, 127), (7, 31), (192, 31), (1031, 127), (4226, 31)])
def test_linear_i16_exact_at_the_extremes(k, qmax):
    """rowops.linear_i16 and linear_i16_par (int32 multiply-adds of int16 values; every linear
    of the fused engine) give numerics.md "linear" exactly, computed here in int64 numpy, also
    where every product has the largest magnitude and one sign, i.e. where the int32 sums come
    closest to 2^31 (k = 1031 x 127 and 4226 x 31 are the largest k the engine accepts), for
    every row count (blocks of four rows, pairs, the odd row, several parallel blocks)."""
    from lmzip import engine, rowops

    assert k * engine.AQ * qmax < 1 << 31
    rng = np.random.default_rng(k)
    n = 37
    rows = [
        np.full(k, 16383),
        np.full(k, -16383),
        np.where(np.arange(k) % 2, 16383, -16383),
        np.full(k, 127),  # lo halves at their largest, hi = 0
        rng.integers(-16383, 16384, k),
    ]
    a = np.stack(rows * 15).astype(np.int64)  # 75 rows: three parallel blocks and an odd row
    w = rng.integers(-qmax, qmax + 1, (n, k)).astype(np.int8)
    w[0], w[1], w[2] = qmax, -qmax, np.where(np.arange(k) % 2, -qmax, qmax)
    a_scale = rng.integers(1, 1 << 24, len(a)).astype(np.int64)
    ws = rng.integers(0, 1 << 24, n).astype(np.int64)
    acc = a @ w.astype(np.int64).T
    assert np.abs(acc).max() == k * engine.AQ * qmax  # the largest sum this k allows

    def rs(v, s):
        return (v + (1 << (s - 1))) >> s

    for shift, lim in ((20, 1 << 62), (16, 1 << 20)):
        want = np.clip(rs(rs(acc * a_scale[:, None], 16) * ws[None, :], shift), -lim, lim)
        for m in (1, 2, 5, len(a)):
            got = rowops.linear_i16(a[:m], w, a_scale[:m], ws, shift, -lim, lim)
            assert np.array_equal(got, want[:m])
            got = rowops.linear_i16_par(a[:m], w, a_scale[:m], ws, shift, -lim, lim)
            assert np.array_equal(got, want[:m])


@pytest.mark.parametrize("k,qmax", [(2, 127), (192, 31), (1030, 127), (4226, 31)])
def test_linear_pairs_exact_at_the_extremes(k, qmax):
    """rowops.linear_pairs and linear_pairs_par (the passes' linears on AVX2 CPUs: weights
    as pairs along k, four rows against 32 outputs at a time) give linear_i16's integers, also
    where every product has the largest magnitude (one sign, alternating), for every row count
    (blocks of four, a last block padded with zero rows, parallel blocks) and several blocks of
    32 outputs."""
    from lmzip import cpu_engine, rowops, simd

    if not simd.HAS_AVX2:
        pytest.skip("the host CPU has no AVX2")
    assert cpu_engine.pairs_linear_ok()
    rng = np.random.default_rng(k + 1)
    rows = [np.full(k, 16383), np.full(k, -16383), np.where(np.arange(k) % 2, 16383, -16383),
            rng.integers(-16383, 16384, k)]  # fmt: skip
    a = np.stack(rows * 18 + rows[:3]).astype(np.int64)  # 75 rows: three parallel blocks
    _check_linear_layout(rng, a, qmax, rowops.pair_cols, rowops.linear_pairs,
                         rowops.linear_pairs_par, (1, 3, 4, 5, 23))  # fmt: skip


@pytest.mark.parametrize("k,qmax", [(1, 127), (7, 31), (192, 31), (1031, 127), (4226, 31)])
def test_linear_quads_exact_at_the_extremes(k, qmax):
    """rowops.linear_quads (the decoding step's linears on CPUs with AVX512-VNNI: each row as
    its low bytes and its high bytes plus 64, weights in groups of 16 outputs as quads along k,
    two rows at a time) gives linear_i16's integers, also where every product has the largest
    magnitude (one sign, alternating: the int32 combination of the two byte sums wraps there),
    where the low bytes are at their largest, for odd and even row counts and output counts
    of whole passes of 64 and single groups of 16 (96)."""
    from lmzip import cpu_engine, rowops, simd

    if not simd.HAS_VNNI512:
        pytest.skip("no AVX512-VNNI here (CPU or numba's target)")
    assert cpu_engine.quads_linear_ok()
    rng = np.random.default_rng(k + 3)
    rows = [np.full(k, 16383), np.full(k, -16383), np.where(np.arange(k) % 2, 16383, -16383),
            np.full(k, 255), np.full(k, -16129), rng.integers(-16383, 16384, k)]  # fmt: skip
    a = np.stack(rows).astype(np.int64)

    def quads(a, wq, *rest):
        return rowops.linear_quads(a, *wq, *rest)

    wq = _check_linear_layout(rng, a, qmax, rowops.quad_cols, quads, quads, (1, 2, 5))
    assert wq[0].shape == (6, -(-k // 4), 64) and wq[1].shape == (96,)


def test_quads_selftest_failure_falls_back(shaped_mf, monkeypatch):
    """Where rowops.linear_quads fails its self-test or the CPU lacks AVX512-VNNI
    (cpu_engine.quads_linear_ok), the decoding step uses linear_i16, with the same integers;
    where every output count is a multiple of 16 and the kernel passed, the step uses it."""
    from lmzip import cpu_engine

    tables = cpu_engine.build_tables(shaped_mf)
    cfg = tables.cfg
    w = _windows(2, cfg.seq_len, cfg.vocab_size, seed=41).numpy()

    def steps(cpu):
        state, out = cpu.new_state(2), []
        for i in range(w.shape[1]):
            pos = np.array([i, max(0, i - 3)])
            out.append(cpu.step_np(state, np.array([w[0, i], w[1, pos[1]]]), pos))
        return np.stack(out)

    cpu = cpu_engine.CpuEngine(tables)
    want = steps(cpu)
    sixteens = all(n % 16 == 0 for n in (cfg.d_model, cfg.n_kv_head * cfg.head_dim,
                                         cfg.vocab_size, tables.layers[0]["mlp.up"].w.shape[0]))  # fmt: skip
    assert cpu.step_all_args()[1][-1] == (cpu_engine.quads_linear_ok() and sixteens)
    monkeypatch.setattr(cpu_engine, "quads_linear_ok", lambda: False)
    cpu = cpu_engine.CpuEngine(tables)
    assert np.array_equal(steps(cpu), want)
    assert cpu.step_all_args()[1][-1] is False


def _check_linear_layout(rng, a, qmax, layout, kernel, kernel_par, counts):
    """kernel and kernel_par, on weights in another layout (layout(w)), give linear_i16's
    integers for the first m rows of a (m in counts, and all), with and without the output
    clamp: 96 weight rows, random and at +qmax, -qmax and alternating, so that every product
    reaches its largest magnitude. -> the weights in their layout."""
    from lmzip import engine, rowops

    k = a.shape[1]
    w = rng.integers(-qmax, qmax + 1, (96, k)).astype(np.int8)
    w[0], w[40], w[95] = qmax, -qmax, np.where(np.arange(k) % 2, -qmax, qmax)
    a_scale = rng.integers(1, 1 << 24, len(a)).astype(np.int64)
    ws = rng.integers(0, 1 << 24, len(w)).astype(np.int64)
    assert np.abs(a @ w.astype(np.int64).T).max() == k * engine.AQ * qmax
    wt = layout(w)
    for shift, lim in ((20, 1 << 62), (16, 1 << 20)):
        for m in (*counts, len(a)):
            want = rowops.linear_i16(a[:m], w, a_scale[:m], ws, shift, -lim, lim)
            got = kernel(a[:m], wt, a_scale[:m], ws, shift, -lim, lim)
            assert np.array_equal(got, want)
            got = kernel_par(a[:m], wt, a_scale[:m], ws, shift, -lim, lim)
            assert np.array_equal(got, want)
    return wt


def test_pairs_selftest_failure_falls_back(shaped_mf, monkeypatch):
    """Where rowops.linear_pairs fails its start-up self-test (cpu_engine.pairs_linear_ok), the
    CPU engine's passes use linear_i16, with the same integers."""
    from lmzip import cpu_engine

    tables = cpu_engine.build_tables(shaped_mf)
    w = _windows(2, tables.cfg.seq_len, tables.cfg.vocab_size, seed=29).numpy()
    want = cpu_engine.CpuEngine(tables).forward_np(w)
    monkeypatch.setattr(cpu_engine, "pairs_linear_ok", lambda: False)
    assert np.array_equal(cpu_engine.CpuEngine(tables).forward_np(w), want)


@pytest.mark.parametrize("k,qmax", [(2, 127), (192, 31), (1030, 127), (4226, 31)])
def test_linear_tiles_exact_at_the_extremes(k, qmax):
    """rowops.linear_tiles and linear_tiles_par (the passes' linears in AMX tiles: rows split
    into signed high and unsigned low bytes, weights padded to whole tiles of 64 along k) give
    linear_i16's integers, also where every product has the largest magnitude (one sign,
    alternating) and where the low bytes are at their largest, for row counts below, at and
    past blocks of 16 and parallel blocks, and several groups of 32 outputs."""
    from lmzip import cpu_engine, rowops

    if not cpu_engine.amx_ready():
        pytest.skip("no AMX tiles here (CPU, numba's target or the OS)")
    assert cpu_engine.tiles_linear_ok() and cpu_engine.tiles_par_ok()
    rng = np.random.default_rng(k + 2)
    rows = [np.full(k, 16383), np.full(k, -16383), np.where(np.arange(k) % 2, 16383, -16383),
            np.full(k, 255), np.full(k, -16129), rng.integers(-16383, 16384, k)]  # fmt: skip
    a = np.stack(rows * 12 + rows[:3]).astype(np.int64)  # 75 rows: three parallel blocks
    wt = _check_linear_layout(rng, a, qmax, rowops.tile_cols, rowops.linear_tiles,
                              rowops.linear_tiles_par, (1, 15, 16, 17, 33))  # fmt: skip
    assert wt.shape == (6, -(-k // 64), 16, 64)


@pytest.mark.parametrize("t_n,h,kv,e", [(64, 4, 2, 48), (100, 2, 2, 64), (130, 8, 4, 32)])
def test_attend_fwd_tiles_equals_attend_fwd(t_n, h, kv, e):
    """rowops.attend_fwd_tiles (the passes' attention in AMX tiles: q.k in tiles of 16 keys,
    P.V as six byte products) gives attend_fwd's integers: random and extreme value rows,
    flat queries (every key the same weight), sharp ones (one key with all of it, P = 2^16),
    windows of whole and partial blocks of 16 queries, several windows and threads."""
    from lmzip import cpu_engine, rowops
    from lmzip.tables import att_exp_np

    if not cpu_engine.amx_ready():
        pytest.skip("no AMX tiles here (CPU, numba's target or the OS)")
    rng = np.random.default_rng(t_n + e)
    att = att_exp_np().astype(np.float64)
    nw = 3
    q = rng.integers(-127, 128, (nw * t_n, h, e)).astype(np.int8)
    k = rng.integers(-127, 128, (nw * t_n, kv, e)).astype(np.int8)
    q[::4] = 0
    k[3::5] = q[3::5, :kv]
    v = rng.integers(-cpu_engine.V_MAX, cpu_engine.V_MAX + 1, (nw * t_n, kv * e)).astype(np.int64)
    v[::3, ::2], v[1::3, ::2] = cpu_engine.V_MAX, -cpu_engine.V_MAX
    gain = rng.integers(1 << 16, 1 << 30, h).astype(np.int64)
    gain[0] = 1 << 30
    want = rowops.attend_fwd(q, k, v, t_n, gain, att)
    assert np.array_equal(rowops.attend_fwd_tiles(q, k, v, t_n, gain, att), want)
    assert cpu_engine.tiles_attention_ok()


def test_att_row_equals_the_spec_in_python_integers():
    """rowops._att_row (a query's attention probabilities: the maximum logit from the largest
    or, for a negative gain, the smallest dot product, the ATT lookups in vector gathers, the
    corrected float64 quotients) against numerics.md's formulas in Python integers: gains of
    both signs and 0, dot products at the spec's bound 2^22, ties, keys past the table's end,
    one key, flat rows (quotients at and just below integers), and counts around the vector
    widths."""
    from numba import njit

    from lmzip import rowops
    from lmzip.tables import att_exp_np

    @njit(cache=False)
    def row(dots, n, g, att):
        lg = np.empty(n, np.float64)
        pj = np.full(n + 3, -1.0)
        rowops._att_row(dots, n, g, att, lg, pj)
        return pj

    table = att_exp_np()
    att = table.astype(np.float64)
    last = len(table) - 1
    rng = np.random.default_rng(29)
    for g in (1 << 30, -(1 << 30), 3 << 22, -12345, 1, 0):
        for n in (1, 2, 7, 8, 9, 16, 33, 300):
            for spread in (0, 1 << 8, 1 << 22):  # 0: every key the same weight, quotients
                dots = rng.integers(-spread, spread + 1, n)  # 2^16 / n, integers or just below
                dots[: n // 5] = dots[0]  # ties
                if n > 3 and spread:
                    dots[1], dots[2] = (1 << 22) - 1, -(1 << 22) + 1
                logit = [(int(d) * g + (1 << 15)) >> 16 for d in dots]
                m = max(logit)
                w = [int(table[min((m - lv) >> 8, last)]) for lv in logit]
                want = [(wj << 16) // sum(w) for wj in w]
                got = row(dots.astype(np.int32), n, g, att)
                assert got[:n].tolist() == want, (g, n, spread)
                assert (got[n:] == -1.0).all()
                if abs(g) >= 3 << 22 and spread == 1 << 22 and n > 3:
                    assert 0 < want.count(0) < n  # keys past the table's end, and kept ones


def test_floor_q_exact_next_to_integer_quotients():
    """rowops._floor_q (floor(n / d) as the floor of one product with 1 / d rounded up, or down
    for n < 0, no correction: the attention's probabilities, the quantizers, QK-norm, softcap)
    against Python integers where a float quotient is most likely to land on the wrong side:
    n = k d - 1, k d and k d + 1 for both signs, |n| up to 2^49 (the bound of its proof) and d
    up to 2^52; also 0 and random pairs. The same pairs with the plain inverse fl(1 / d) get
    some quotients wrong, so they test the rounding."""
    from numba import njit

    from lmzip import rowops

    @njit(cache=False)
    def quotients(n, d, plain):
        out = np.empty(n.shape[0], np.float64)
        for i in range(n.shape[0]):
            if plain:
                inv = 1.0 / d[i]
                out[i] = np.floor(n[i] * inv)
            else:
                out[i] = rowops._floor_q(n[i], rowops._inv_up(d[i]), rowops._inv_down(d[i]))
        return out

    rng = np.random.default_rng(31)
    ns, ds = [], []
    for bits in (2, 12, 24, 36, 48):  # bits of d; the quotients fill the rest up to 2^49
        for _ in range(500):
            d = int(rng.integers(1 << (bits - 1), 1 << bits)) | int(rng.integers(0, 2))
            k = int(rng.integers(0, max(1, ((1 << 49) - 1) // d)))
            for n in (k * d - 1, k * d, k * d + 1, -k * d - 1, -k * d, -k * d + 1):
                if abs(n) <= 1 << 49:
                    ns.append(n)
                    ds.append(d)
    for d in (1, 3, (1 << 52) - 1):
        ns += [0, 1 << 49, -(1 << 49), int(rng.integers(-(1 << 49), 1 << 49))]
        ds += [d] * 4
    n_f, d_f = np.array(ns, np.float64), np.array(ds, np.float64)
    want = [n // d for n, d in zip(ns, ds)]
    assert quotients(n_f, d_f, False).tolist() == want
    assert quotients(n_f, d_f, True).tolist() != want


def test_tile_cols_layout():
    """rowops.tile_cols: tile [nb, kb] row i holds w[16 nb + c, 64 kb + 4 i + j] at byte 4 c + j,
    zeros past K (the layout simd.tile_rows16 reads)."""
    from lmzip import rowops

    w = np.random.default_rng(3).integers(-127, 128, (64, 100)).astype(np.int8)
    t = rowops.tile_cols(w)
    assert t.shape == (4, 2, 16, 64) and t.dtype == np.int8
    for nb, kb, i, c, j in [(0, 0, 0, 0, 0), (1, 0, 3, 5, 2), (3, 1, 8, 15, 3), (2, 1, 15, 7, 1)]:
        kk = 64 * kb + 4 * i + j
        assert t[nb, kb, i, 4 * c + j] == (w[16 * nb + c, kk] if kk < 100 else 0)


def test_tiles_selftest_failure_falls_back(shaped_mf, monkeypatch):
    """Where rowops.linear_tiles fails its start-up self-test or the tiles cannot run
    (cpu_engine.tiles_linear_ok), the CPU engine's passes use the weight pairs or linear_i16,
    with the same integers; and attend_fwd where attend_fwd_tiles fails its own
    (tiles_attention_ok); and without the pairs too."""
    from lmzip import cpu_engine

    tables = cpu_engine.build_tables(shaped_mf)
    w = _windows(2, tables.cfg.seq_len, tables.cfg.vocab_size, seed=31).numpy()
    want = cpu_engine.CpuEngine(tables).forward_np(w)
    monkeypatch.setattr(cpu_engine, "tiles_linear_ok", lambda: False)
    assert np.array_equal(cpu_engine.CpuEngine(tables).forward_np(w), want)
    monkeypatch.setattr(cpu_engine, "tiles_attention_ok", lambda: False)
    assert np.array_equal(cpu_engine.CpuEngine(tables).forward_np(w), want)
    monkeypatch.setattr(cpu_engine, "pairs_linear_ok", lambda: False)
    assert np.array_equal(cpu_engine.CpuEngine(tables).forward_np(w), want)


@pytest.mark.parametrize("rows", [7, 64])
def test_blocks_equal_kernel_by_kernel(shaped_mf, monkeypatch, rows):
    """The passes in blocks of rows (lmzip.blocks: the kernels between two attentions fused over
    a block) give the integers of the same kernels run one at a time over all rows
    (CpuEngine.forward_kernels_np), for logits and probabilities: blocks of 7 rows (a partial
    last block in every window) and 64, serial and on two threads, with the linears in AMX
    tiles, weight pairs and linear_i16 (whichever this CPU has), and the rule for the rows."""
    import numba

    from lmzip import blocks, cpu_engine, rowops

    assert blocks.block_rows(330_000) == 64 and blocks.block_rows(1_840_000) == 128
    tables = cpu_engine.build_tables(shaped_mf)
    w = _windows(3, tables.cfg.seq_len, tables.cfg.vocab_size, seed=37).numpy()
    ref = cpu_engine.CpuEngine(tables)
    want, want_p = ref.forward_kernels_np(w), ref.probs_kernels_np(w)
    old = numba.get_num_threads()
    for off in (None, "tiles_linear_ok", "pairs_linear_ok"):
        if off:
            monkeypatch.setattr(cpu_engine, off, lambda: False)
        for threads in (1, 2):
            rowops.set_threads(threads)
            try:
                cpu = cpu_engine.CpuEngine(tables)
                cpu._block_rows = rows
                assert np.array_equal(cpu.forward_np(w), want)
                assert np.array_equal(cpu.probs_np(w), want_p)
                assert np.array_equal(cpu.forward_np(w[:1, :5]), want[:1, :5])  # one short block
            finally:
                rowops.set_threads(old)
        kinds = {lin[0] for lin in cpu._lins.values()}
        assert kinds <= {blocks.I16, blocks.PAIRS, blocks.TILES} and kinds
        if off == "pairs_linear_ok":
            assert kinds == {blocks.I16}


def test_decode_lm_row_decodes_what_the_table_rule_encoded():
    """rowops.decode_lm_row (frequency table + cumulative table + range decoder in one call, the
    --lm-only decoding loop) inverts coder.encode_symbols over numerics.freq_table's tables."""
    from lmzip import coder, rowops

    g = torch.Generator().manual_seed(5)
    capped = torch.randint(-(30 << 16), 30 << 16, (300, 257), generator=g)
    capped[3] = 0  # a flat row: the remainder goes to the first argmax
    p = numerics.lm_probs(capped)
    for prec in (12, 24):
        f = numerics.freq_table(p, prec)
        cum = f.cumsum(dim=-1) - f
        toks = torch.randint(0, 257, (300,), generator=g)
        toks[7] = int(f[7].argmin())  # a least likely symbol
        data = coder.encode_symbols(cum.gather(1, toks[:, None])[:, 0].numpy().astype(np.uint64),
                                    f.gather(1, toks[:, None])[:, 0].numpy().astype(np.uint64),
                                    np.uint64(prec))  # fmt: skip
        st, f, work = coder.dec_new(data), np.empty(257, np.int64), np.empty(258, np.uint64)
        out = [int(rowops.decode_lm_row(p[i].numpy(), prec, st, data, f, work))
               for i in range(300)]  # fmt: skip
        assert out == toks.tolist()
        assert coder.dec_overrun(st) == 0


def test_lm_symbols_and_freq_rows_equal_the_table_rule():
    """rowops.lm_symbols_rows (the compressor's LM-only symbols: the sums of the frequencies
    below and above each target, without the [N, V] tables) and freq_rows give
    numerics.freq_table_reference's integers: random rows, flat rows and rows with tied maxima
    (the remainder goes to the first argmax, before, at and after the target), one-hot rows, at
    the coder's precisions."""
    from lmzip import rowops

    g = torch.Generator().manual_seed(8)
    v = 300
    capped = torch.randint(-(30 << 16), 30 << 16, (64, v), generator=g)
    capped[0] = 0  # flat: every p is 2^30, the remainder to index 0
    capped[1, [5, 90, 200]] = 40 << 16  # three tied maxima
    capped[2, [0, 299]] = 40 << 16
    capped[3] = -(200 << 16)
    capped[3, 17] = 30 << 16  # one-hot: every other p underflows to 0
    p = numerics.lm_probs(capped)
    toks = torch.randint(0, v, (64,), generator=g)
    toks[0], toks[1], toks[2], toks[3] = 0, 90, 299, 16
    toks[4], toks[5] = int(p[4].argmax()), v - 1
    for prec in (11, 16, 24):
        f = numerics.freq_table_reference(p, prec)
        assert np.array_equal(rowops.freq_rows(p.numpy(), prec), f.numpy())
        cum, freq = np.empty(64, np.int64), np.empty(64, np.int64)
        for t in (toks, torch.roll(toks, 1)):
            rowops.lm_symbols_rows(p.numpy(), t.numpy().astype(np.int64), prec, cum, freq)
            want = f.cumsum(dim=-1) - f
            assert np.array_equal(cum, want.gather(1, t[:, None])[:, 0].numpy())
            assert np.array_equal(freq, f.gather(1, t[:, None])[:, 0].numpy())


def test_float_estimated_divisions_are_exact_floor_divisions():
    """rowops._fdiv / _rdiv_inv (a float estimate of the quotient corrected with integer
    products; the quantizers, QK-norm, softcap and frequency tables use them where one divisor
    serves a row) equal Python's floor division and _rdiv, also for negative numerators, exact
    multiples, and quotients beyond the float estimate's precision."""
    from lmzip import rowops

    rng = np.random.default_rng(11)
    cases = [(-7, 2), (7, 2), (-8, 2), (0, 5), ((1 << 60) - 1, 3), (-(1 << 60), 7),
             ((1 << 61) + 12345, 1), (-(1 << 61) - 1, 1), (1 << 46, (1 << 40) + 1)]  # fmt: skip
    cases += [(int(n), int(d)) for n, d in zip(rng.integers(-(1 << 61), 1 << 61, 2000),
                                               rng.integers(1, 1 << 40, 2000))]  # fmt: skip
    cases += [(int(q) * int(d) + int(r), int(d)) for q, d, r in
              zip(rng.integers(-(1 << 20), 1 << 20, 2000), rng.integers(1, 1 << 30, 2000),
                  rng.integers(-1, 2, 2000))]  # fmt: skip
    for n, d in cases:
        assert rowops._fdiv(np.int64(n), np.int64(d), 1.0 / d) == n // d, (n, d)
        if abs(n // d) < 1 << 50:  # _fdiv1's bound (one correction each way)
            assert rowops._fdiv1(np.int64(n), np.int64(d), 1.0 / d) == n // d, (n, d)
    for n, d in cases[:500]:
        n //= 4  # 2n + d must fit int64
        got = rowops._rdiv_inv(np.int64(n), np.int64(2 * d), 1.0 / (2 * d))
        assert got == rowops._rdiv(np.int64(n), np.int64(d)) == (2 * n + d) // (2 * d), (n, d)


def test_cpu_engine_equals_torch_engine(shaped_mf):
    """lmzip.cpu_engine.CpuEngine (numpy and the compiled kernels, no torch: what the compressor
    runs on CPU) gives the torch engine's integers on both paths, and the torch reference's."""
    from lmzip.cpu_engine import CpuEngine, build_tables

    mf = shaped_mf
    tables = build_tables(mf)
    assert CpuEngine.supports(tables)
    cpu, ref = CpuEngine(tables), Engine(mf, fused=False)
    from lmzip import cpu_engine, simd

    w = _windows(3, cpu.window, cpu.vocab_size, seed=23)
    want = ref.forward(w)
    assert np.array_equal(cpu.forward_np(w.numpy()), want.numpy())
    # the passes' linears in AMX tiles, else as weight pairs where the CPU allows it (every
    # shape here has some: the logit head, N = vocab 512 and K = d_model even)
    made = {tiles for (_, tiles), c in cpu._copies.items() if c is not None}
    assert made == ({True} if cpu_engine.amx_ready() else {False} if simd.HAS_AVX2 else set())
    assert np.array_equal(cpu.forward_np(w[:1, :12].numpy()), want[:1, :12].numpy())  # few rows
    assert np.array_equal(cpu.probs_np(w.numpy()), numerics.lm_probs_reference(want).numpy())
    sc, sr = cpu.new_state(3), ref.new_state(3)
    for i in range(w.size(1)):
        pos = torch.tensor([i, i % 5, max(0, i - 9)])
        toks = torch.stack([w[0, i], w[1, i % 5], w[2, max(0, i - 9)]])
        got = cpu.step_np(sc, toks.numpy(), pos.numpy())
        assert np.array_equal(got, ref.step(sr, toks, pos).numpy())


def test_numpy_tables_equal_torch_reference():
    """ATT and the exp tables (lmzip/tables.py, numpy) against numerics.exp_q30 (torch)."""
    from lmzip import tables

    idx = torch.arange(numerics.ATT_EXP_SIZE, dtype=torch.int64) << 8
    assert np.array_equal(tables.att_exp_np()[:-1], numerics.exp_q30(idx).numpy())
    assert tables.att_exp_np()[-1] == 0
    x = torch.randint(0, 30 << 16, (50000,), generator=torch.Generator().manual_seed(5))
    assert np.array_equal(tables.exp_q30_np(x.numpy()), numerics.exp_q30(x).numpy())


def _qk_reference(y, pos, cos, sin, sqe, e):
    """numerics.md "qk" in Python integers (int64 numpy: every value here fits)."""
    n = y.shape[0]
    y = np.clip(y, -(2**24 - 1), 2**24 - 1).reshape(n, -1, e)
    r = np.array([[math.isqrt(int((h * h).sum())) for h in row] for row in y], np.int64)
    d = 16 * r[:, :, None]
    num = y * sqe
    yn = np.where(d > 0, (2 * num + d) // np.maximum(2 * d, 1), 0)
    half = e // 2
    y1, y2 = yn[..., :half], yn[..., half:]
    c, s = cos[pos][:, None, :], sin[pos][:, None, :]
    r1 = (y1 * c + y2 * s + (1 << 29)) >> 30
    r2 = (y2 * c - y1 * s + (1 << 29)) >> 30
    out = (np.concatenate([r1, r2], axis=-1) + 128) >> 8
    return np.clip(out, -127, 127).astype(np.int8)


@pytest.mark.parametrize("e", [16, 48, 20])
def test_qk_rows_exact_at_the_extremes(e):
    """rowops.qk_rows (float64 over int32-converted inputs, exact by its bounds) equals the
    spec's integers for rows at the clamp (|y| = 2^24 - 1 everywhere: the largest sum of
    squares), beyond it, one nonzero element (the largest quotient, SQE / 16), zero heads, and
    RoPE tables at +-(2^31 - 1), the largest magnitude a model may have."""
    from lmzip import rowops

    rng = np.random.default_rng(11)
    n, heads, sqe = 12, 3, math.isqrt(e << 32)  # sqrt(E) in Q16, as the engine's
    y = rng.integers(-(1 << 26), 1 << 26, (n, heads * e))
    y[0] = (1 << 24) - 1
    y[1] = -(1 << 40)
    y[2] = 0
    y[3, :] = 0
    y[3, 0] = (1 << 24) - 1
    y[4, :] = 0
    y[4, e - 1] = -1
    y[5] = np.where(np.arange(heads * e) % 2, (1 << 24) - 1, -((1 << 24) - 1))
    w = 8
    cos = rng.integers(-(1 << 30), 1 << 30, (w, e // 2))
    sin = rng.integers(-(1 << 30), 1 << 30, (w, e // 2))
    cos[0], sin[0] = (1 << 31) - 1, -((1 << 31) - 1)
    cos[1], sin[1] = -((1 << 31) - 1), (1 << 31) - 1
    cos[2], sin[2] = 1 << 30, 0
    cos[3], sin[3] = 1 << 29, 0  # ties of rs(., 30) (odd n) and rs(., 8)
    pos = np.array([0, 1, 2, 0, 1, 0, 3, 4, 5, 6, 7, 1])
    want = _qk_reference(y, pos, cos, sin, sqe, e)
    assert np.array_equal(rowops.qk_rows(y, pos, cos, sin, sqe, e), want)
    assert np.array_equal(rowops.qk_rows_par(y, pos, cos, sin, sqe, e), want)
    assert (np.abs(want) == 127).any() and (want == 0).any()
    # exact quotients: one nonzero element y0 > 0 gives (2 y0 SQE + d) / 2d = (SQE + 8) / 16, an
    # integer where SQE = 8 mod 16, which the float estimate may round below (2^15 - 1: SQE
    # 524264); 255 (SQE 4072) with COS = 2^29, SIN = 0 puts r at a tie of both roundings
    m = 4000
    y1 = np.zeros((m, heads * e), np.int64)
    y1[np.arange(m), rng.integers(0, heads * e, m)] = rng.integers(-(1 << 24), 1 << 24, m)
    p1 = rng.integers(0, w, m)
    p1[: m // 2] = 3
    for sq in (454040, 8, 4072, 524264):
        want = _qk_reference(y1, p1, cos, sin, sq, e)
        assert np.array_equal(rowops.qk_rows(y1, p1, cos, sin, sq, e), want)


def test_rope_tables_out_of_range_are_rejected():
    """A rope tensor whose entries are not rotations (both parts at 2^30) makes the tables grow
    past 2^31 (where the engine's float64 RoPE would no longer be exact): the model is refused."""
    from lmzip.cpu_engine import _rope_tables

    good = np.zeros((9, 4, 2), np.int64)
    good[..., 0] = 1 << 30
    c, s = _rope_tables(good, 512, 8)
    assert (c == 1 << 30).all() and (s == 0).all()
    bad = np.full((9, 4, 2), 1 << 30, np.int64)
    with pytest.raises(FormatError, match="rope"):
        _rope_tables(bad, 512, 8)


def _quant_reference(rows, aq):
    """_rdiv(aq * v, amax) per row in int64 numpy (amax = max |v|; 0 where amax = 0)."""
    amax = np.abs(rows).max(axis=1, keepdims=True)
    return np.where(amax > 0, (2 * aq * rows + amax) // np.maximum(2 * amax, 1), 0), amax[:, 0]


@pytest.mark.parametrize("aq", [16383, 8192, 40000])
def test_quantizers_exact_at_the_extremes(aq):
    """normquant, absquant and relu2_absquant (float64 where every value is exact, int64 beyond:
    rows past 2^31, aq >= 2^15) equal the spec's integers: rows at +-(2^31 - 1) and at H_MAX =
    2^23 - 1 before relu, one nonzero element, and exact quotients (with aq = 2^13, amax =
    2^14 j and v = j (2q - 1), or hmax = 128 j and h = j s for odd s) that a float estimate may
    round below."""
    from lmzip import rowops

    rng = np.random.default_rng(aq)
    n, d = 40, 96
    x = rng.integers(-(1 << 31) + 1, 1 << 31, (n, d))
    x[0] = (1 << 31) - 1
    x[1] = np.where(np.arange(d) % 2, (1 << 31) - 1, -((1 << 31) - 1))
    x[2], x[3] = 0, 0
    x[3, 5] = -1
    x[4] = rng.integers(-(1 << 40), 1 << 40, d)  # past 2^31: the int64 path
    x[5:9] = rng.integers(-3, 4, (4, d))
    for r in range(9, n):  # exact quotients where aq = 2^13
        j = int(rng.integers(1, 1 << 17))
        x[r] = j * (2 * rng.integers(-(1 << 13), 1 << 13, d) + 1)
        x[r, 0] = j << 14
    want, amax = _quant_reference(x, aq)
    a, s = rowops.absquant(x, 14, aq)
    assert np.array_equal(a, want)
    assert np.array_equal(s, (2 * (amax << 14) + aq) // (2 * aq))
    assert np.array_equal(rowops.absquant_par(x, 14, aq)[0], want)
    assert np.array_equal(rowops.normquant(x, 1 << 16, aq)[0], want)
    assert np.array_equal(rowops.normquant_par(x, 1 << 16, aq)[0], want)
    h = rng.integers(-(1 << 23) + 1, 1 << 23, (n, d))
    h[0] = (1 << 23) - 1
    h[1] = np.where(np.arange(d) % 2, (1 << 23) - 1, -1)
    h[2] = -5
    h[3] = 0
    h[3, 7] = 1
    h[4] = rng.integers(-8, 8, d)
    for r in range(5, n):  # exact quotients where aq = 2^13
        j = int(rng.integers(1, 1 << 16))
        h[r] = j * (2 * rng.integers(0, 64, d) + 1)
        h[r, 0] = 128 * j
    want, amax = _quant_reference(np.maximum(h, 0) ** 2, aq)
    for kernel in (rowops.relu2_absquant, rowops.relu2_absquant_par):
        a, s = kernel(h, 3, aq)
        assert np.array_equal(a, want)
        assert np.array_equal(s, (2 * (amax << 3) + aq) // (2 * aq))
    assert (want == aq).any() and (want == 0).any()
