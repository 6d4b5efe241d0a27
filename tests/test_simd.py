"""lmzip.simd: the vector multiply-adds under rowops' linear kernels, both forms of them."""

import numpy as np
import pytest
from numba import njit

from lmzip import simd


def _compile():
    """A fresh (uncached) caller: the intrinsics emit their code when a caller is compiled."""

    @njit(cache=False)
    def blocks(x0, x1, w, j, n16):
        return simd.dot2x2(x0, x1, w, j, n16), simd.dot1x4(x0, w, j, n16)

    @njit(cache=False)
    def block4(x0, x1, x2, x3, w, j, n16):
        return simd.dot4x2(x0, x1, x2, x3, w, j, n16)

    blocks.four = block4

    return blocks


def _cases():
    """Rows at the extremes the callers allow (|x| <= 16383, |w| <= 127, K * 16383 * 127 < 2^31):
    every product at its largest with one sign, alternating signs, and random rows."""
    rng = np.random.default_rng(3)
    for k in (16, 192, 208, 768, 1024):  # 208: an odd number of 16-element blocks
        x = np.stack([np.full(k, 16383), np.full(k, -16383),
                      np.where(np.arange(k) % 2, 16383, -16383),
                      rng.integers(-16383, 16384, k)]).astype(np.int16)  # fmt: skip
        w = rng.integers(-127, 128, (7, k)).astype(np.int8)
        w[0], w[1], w[2] = 127, -127, np.where(np.arange(k) % 3, 127, -127)
        yield x, w


FORMS = {"avx512-intrinsic": (True, True), "avx2-intrinsic": (True, False),
         "generic-ir": (False, False)}  # fmt: skip


@pytest.mark.parametrize("form", list(FORMS))
def test_dot_blocks_equal_int64_numpy(form, monkeypatch):
    """dot2x2, dot1x4 and dot4x2 give the exact int32 dot products, with the 512-bit x86 intrinsic (steps
    of 32 elements and a last one of 16 where n16 is odd; where the host has AVX512BW), the AVX2
    one (where it has AVX2), and the portable shuffle form that other CPUs compile; also over a
    prefix of the rows (n16 < K / 16: the callers add the tail)."""
    avx2, avx512 = FORMS[form]
    if (avx2 and not simd.HAS_AVX2) or (avx512 and not simd.HAS_AVX512BW):
        pytest.skip(f"the host CPU has no {form.split('-')[0].upper()}")
    monkeypatch.setattr(simd, "HAS_AVX2", avx2)
    monkeypatch.setattr(simd, "HAS_AVX512BW", avx512)
    blocks = _compile()
    for x, w in _cases():
        k = x.shape[1]
        want = x.astype(np.int64) @ w.astype(np.int64).T
        assert np.abs(want).max() == k * 16383 * 127
        for n16 in (k // 16, k // 32, k // 16 - 1):
            part = x[:, : 16 * n16].astype(np.int64) @ w[:, : 16 * n16].astype(np.int64).T
            for r0, r1 in ((0, 1), (2, 3), (1, 0)):
                for j in (0, 2, 3):
                    two, four = blocks(x[r0], x[r1], w, j, n16)
                    assert two == (part[r0, j], part[r0, j + 1], part[r1, j], part[r1, j + 1])
                    assert four == tuple(part[r0, j : j + 4])
                rows = (3, 0, 2, 1)
                for j in (0, 3, 5):
                    eight = blocks.four(*(x[r] for r in rows), w, j, n16)
                    assert eight == tuple(part[r, j + i] for r in rows for i in (0, 1))
        assert blocks(x[0], x[1], w, 0, k // 16)[0][0] == want[0, 0]
    ir = "".join(blocks.inspect_llvm().values()) + "".join(blocks.four.inspect_llvm().values())
    # the forms under test are the ones compiled (the 512-bit one ends odd counts with AVX2's)
    assert ("llvm.x86.avx2.pmadd.wd" in ir) == avx2
    assert ("llvm.x86.avx512.pmaddw.d.512" in ir) == avx512


@pytest.mark.parametrize("form", ["avx512-intrinsic", "avx2-intrinsic"])
def test_weight_pair_columns_equal_int64_numpy(form, monkeypatch):
    """cols_dot4 (weights as pairs along k: 32 outputs of four rows per call, no horizontal
    sums) gives the exact int32 sums in its 512-bit form (one pass of 16-output vectors) and its
    AVX2 form (two passes of 8-output vectors), at the extreme products, for blocks of outputs
    at several offsets and over a prefix of the pairs."""
    avx2, avx512 = FORMS[form]
    if (avx2 and not simd.HAS_AVX2) or (avx512 and not simd.HAS_AVX512BW):
        pytest.skip(f"the host CPU has no {form.split('-')[0].upper()}")
    monkeypatch.setattr(simd, "HAS_AVX512BW", avx512)

    @njit(cache=False)
    def cols(xs, wt, n0, kp_n, out):
        simd.cols_dot4(xs, wt, n0, kp_n, out)

    rng = np.random.default_rng(5)
    for k in (2, 192, 1030):
        x = np.stack([np.full(k, 16383), np.full(k, -16383),
                      np.where(np.arange(k) % 2, 16383, -16383),
                      rng.integers(-16383, 16384, k)]).astype(np.int16)  # fmt: skip
        w = rng.integers(-127, 128, (96, k)).astype(np.int8)
        w[0], w[33], w[95] = 127, -127, np.where(np.arange(k) % 2, -127, 127)
        wt = np.ascontiguousarray(w.reshape(96, k // 2, 2).transpose(1, 0, 2))
        for kp_n in (k // 2, k // 4):
            want = x[:, : 2 * kp_n].astype(np.int64) @ w[:, : 2 * kp_n].astype(np.int64).T
            out = np.full((4, 96), 7, np.int32)
            for n0 in (0, 32, 64):
                cols(x, wt, n0, kp_n, out)
            assert np.array_equal(out, want)
            if kp_n == k // 2:
                assert np.abs(want).max() == k * 16383 * 127
    ir = "".join(cols.inspect_llvm().values())
    assert ("llvm.x86.avx512.pmaddw.d.512" in ir) == avx512
    assert ("llvm.x86.avx2.pmadd.wd" in ir) == (not avx512)


def test_avx2_hosts_compile_the_multiply_add():
    """Where the host has AVX2, the linear kernels' dot products compile to vpmaddwd (the speed
    this module exists for; the scalar loop compiled to vpmulld)."""
    if not simd.HAS_AVX2:
        pytest.skip("the host CPU has no AVX2")
    blocks = _compile()
    x = np.zeros(32, np.int16)
    blocks(x, x, np.zeros((4, 32), np.int8), 0, 2)
    assert "vpmaddwd" in next(iter(blocks.inspect_asm().values()))


def test_rows_must_be_contiguous():
    """A strided row would be read as if contiguous: no signature matches it (a typing error at
    compile time, never a wrong sum)."""
    from numba.core.errors import TypingError

    blocks = _compile()
    x = np.zeros((2, 64), np.int16)
    with pytest.raises(TypingError):
        blocks(x[:, ::2][0], x[0, :32], np.zeros((4, 32), np.int8), 0, 2)


def _compile_keys():
    @njit(cache=False)
    def keys(qa, qb, kt, n8, e2, da, db, d1):
        simd.keys_dot2(qa, qb, kt, n8, e2, da, db)
        simd.keys_dot1(qb, kt, n8, e2, d1)

    return keys


@pytest.mark.parametrize("form", list(FORMS))
def test_key_blocks_equal_int64_numpy(form, monkeypatch):
    """keys_dot2 / keys_dot1 (the attention's q.k products, keys stored as element pairs) give
    the exact int32 products for every key of the first n8 blocks of 8, at the extremes (|q| <=
    16383, |k| <= 127) and at random, and write nothing past them: in blocks of 16 keys and a
    last one of 8 (AVX512BW), of 8 (AVX2), and in the portable form."""
    avx2, avx512 = FORMS[form]
    if (avx2 and not simd.HAS_AVX2) or (avx512 and not simd.HAS_AVX512BW):
        pytest.skip(f"the host CPU has no {form.split('-')[0].upper()}")
    monkeypatch.setattr(simd, "HAS_AVX2", avx2)
    monkeypatch.setattr(simd, "HAS_AVX512BW", avx512)
    keys = _compile_keys()
    rng = np.random.default_rng(5)
    for e in (2, 48, 64, 128):
        w = 40
        k = rng.integers(-127, 128, (w, e)).astype(np.int8)
        k[0], k[1], k[2] = 127, -127, np.where(np.arange(e) % 2, 127, -127)
        kt = np.ascontiguousarray(k.reshape(w, e // 2, 2).transpose(1, 0, 2))
        for i, (qa, qb) in enumerate(((np.full(e, 16383), np.full(e, -16383)),
                                      (rng.integers(-16383, 16384, e),
                                       np.where(np.arange(e) % 2, -16383, 16383)))):  # fmt: skip
            qa, qb = qa.astype(np.int16), qb.astype(np.int16)
            want_a, want_b = k.astype(np.int64) @ qa, k.astype(np.int64) @ qb
            if i == 0:  # the largest sums the bound allows, both signs
                assert np.abs(want_a).max() == e * 16383 * 127
            for n8 in (1, 2, 3, 4, 5):
                da, db, d1 = (np.full(w + 8, 7, np.int32) for _ in range(3))
                keys(qa, qb, kt, n8, e // 2, da, db, d1)
                m = 8 * n8
                assert (da[:m] == want_a[:m]).all() and (db[:m] == want_b[:m]).all()
                assert (d1[:m] == want_b[:m]).all()
                assert (da[m:] == 7).all() and (db[m:] == 7).all() and (d1[m:] == 7).all()
    ir = "".join(keys.inspect_llvm().values())
    assert ("llvm.x86.avx2.pmadd.wd" in ir) == avx2
    assert ("llvm.x86.avx512.pmaddw.d.512" in ir) == avx512


def test_key_blocks_reject_strided_keys():
    """Keys must be a C-contiguous int8 [E/2, W, 2] array (else no signature matches)."""
    from numba.core.errors import TypingError

    keys = _compile_keys()
    kt = np.zeros((4, 16, 4), np.int8)
    q, d = np.zeros(8, np.int16), np.zeros(16, np.int32)
    with pytest.raises(TypingError):
        keys(q, q, kt[:, :, ::2], 1, 4, d, d, d)


@pytest.mark.parametrize("avx512", [True, False])
def test_value_rows_pv_equal_int64_numpy(avx512, monkeypatch):
    """rows_pv2 / rows_pv1 (the attention's P.V sums over a list of value rows, float64) give the
    exact integer sums at the bound's extremes (P summing to 2^16 on one row or spread, values
    +-(2^22 - 1)), for int32 and float64 value rows, over the first 16 * e16 outputs only: in
    the AVX512 form's passes of up to four blocks of 16 (loops of full passes and every
    remainder) and in the AVX2 form's passes of one block."""
    if avx512 and not simd.HAS_AVX512BW:
        pytest.skip("the host CPU has no AVX512BW")
    monkeypatch.setattr(simd, "HAS_AVX512BW", avx512)

    @njit(cache=False)
    def pv(idx, m, pa, pb, v, e16, a, b, c):
        simd.rows_pv2(idx, m, pa, pb, v, e16, a, b)
        simd.rows_pv1(idx, m, pb, v, e16, c)

    rng = np.random.default_rng(7)
    vmax = (1 << 22) - 1
    for e in (16, 48, 20, 32, 64, 80, 144, 200):
        w = 64
        v = rng.integers(-vmax, vmax + 1, (w, e))
        v[3], v[5] = vmax, -vmax
        pa = np.zeros(w)
        pa[3] = 1 << 16  # all the mass on one row of the largest values
        pb = rng.multinomial(1 << 16, np.ones(w) / w).astype(np.float64)
        for vv in (v.astype(np.int32), v.astype(np.float64)):
            for idx in (np.arange(w), np.sort(rng.choice(w, 20, replace=False)), np.array([3, 5])):
                m = len(idx)
                idx = np.concatenate([idx, np.full(4, 10**6)])  # entries past m are not read
                a, b, c = (np.full(e, 0.5) for _ in range(3))
                pv(idx.astype(np.int64), m, pa, pb, vv, e // 16, a, b, c)
                rows = idx[:m]
                k = 16 * (e // 16)
                want_a = pa[rows].astype(np.int64) @ v[rows].astype(np.int64)
                want_b = pb[rows].astype(np.int64) @ v[rows].astype(np.int64)
                assert (a[:k] == want_a[:k]).all() and (b[:k] == want_b[:k]).all()
                assert (c[:k] == want_b[:k]).all()
                assert (a[k:] == 0.5).all() and (b[k:] == 0.5).all() and (c[k:] == 0.5).all()
                if 3 in rows:
                    assert want_a[0] == vmax << 16


@pytest.mark.parametrize("avx512", [True, False])
def test_att_weights_gather_the_table(avx512, monkeypatch):
    """att_weights (the attention weights of one query: each key's logit from its dot product,
    the table lookup with vector gathers) writes ATT[min(floor((m - l_j) / 256), last)], l_j =
    floor((dot_j G + 2^15) / 2^16), over every key and returns their sum, as exact integers:
    int32 and float32 dot products up to the spec's bound 2^22, gains of both signs up to 2^30,
    every count of keys around the vector width (the scalar tail), differences far past the
    table's end (clamped before the conversion to int32), in the AVX512 form (8 lanes) and the
    4-lane one."""
    from lmzip.tables import att_exp_np

    if avx512 and not simd.HAS_AVX512BW:
        pytest.skip("the host CPU has no AVX512BW")
    monkeypatch.setattr(simd, "HAS_AVX512BW", avx512)

    @njit(cache=False)
    def weights(dots, n, g, m, att, lg):
        return simd.att_weights(dots, n, np.float64(g), m, att, lg)

    att = att_exp_np().astype(np.float64)
    rng = np.random.default_rng(13)
    for dtype in (np.int32, np.float32):
        for g in ((1 << 30) - 1, 3 << 22, 77, 0, -(1 << 30)):
            for n in (0, 1, 3, 4, 5, 8, 9, 17, 300):
                dots = rng.integers(-(1 << 22) + 1, 1 << 22, n + 7)
                dots[: n // 4] = rng.choice([-(1 << 22) + 1, (1 << 22) - 1], n // 4)
                logit = (dots * g + (1 << 15)) >> 16  # python ints in int64: |d G| < 2^52
                m = int(logit[:n].max(initial=0))
                want = np.full(n + 7, 0.5)
                want[:n] = att[np.minimum((m - logit[:n]) >> 8, len(att) - 1)]
                got = np.full(n + 7, 0.5)
                total = weights(dots.astype(dtype), n, g, float(m), att, got)
                assert np.array_equal(got, want)  # the entries past n untouched
                if n == 300 and abs(g) > 1 << 20:  # both kinds of keys were there
                    assert 0 < (want[:n] == 0).sum() < n - 10
                assert total == want[:n].sum()
    ir = "".join(weights.inspect_llvm().values())
    assert f"llvm.masked.gather.v{8 if avx512 else 4}f64" in ir


def test_prefetch_is_a_hint_only():
    """prefetch emits llvm.prefetch for an element's address and changes nothing (the mixer's
    encoder hints its bucket groups with it; test_vectors checks the coded bytes)."""

    @njit(cache=False)
    def touch(a):
        for i in (0, a.shape[0] // 2, a.shape[0] - 1):
            simd.prefetch(a, i)
        return a.sum()

    a = np.arange(1 << 12, dtype=np.uint16)
    assert touch(a) == a.sum()
    assert np.array_equal(a, np.arange(1 << 12, dtype=np.uint16))
    assert "llvm.prefetch" in "".join(touch.inspect_llvm().values())
