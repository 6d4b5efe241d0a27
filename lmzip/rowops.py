"""Fused CPU kernels (numba) for the engine's row operations.

Each function computes exactly the integers that format_spec/numerics.md defines and that the
torch reference in lmzip/engine.py computes (tests compare them on every path); fusing turns a
dozen passes over int64 temporaries into one pass, and the attention kernel skips masked keys.
The serial kernels serve decoding steps (a parallel launch costs more than the work of a few
rows); their `_par` twins run the same block code on numba's threads for the teacher-forced
passes, so the split never changes an integer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lmzip.coder import dec_symbol
from lmzip.simd import (
    att_weights,
    cols_dot4,
    dot1x4,
    dot2x2,
    dot4x2,
    keys_dot1,
    keys_dot2,
    quads_dot1,
    quads_dot2,
    rows_pv1,
    rows_pv2,
    tile_dots,
    tile_pv,
    tile_pv_signed,
    tile_rows16,
)

PAR_ROWS = 16  # rows above which callers use the *_par kernels (same integers, numba's threads)
ROW_BLOCK = 64  # rows per parallel task of the *_par row kernels


@njit(cache=True, inline="always")
def _isqrt(n):
    r = np.int64(np.sqrt(np.float64(n)))
    for _ in range(2):
        if r * r > n:
            r -= 1
        if (r + 1) * (r + 1) <= n:
            r += 1
    return r


@njit(cache=True, inline="always")
def _rdiv(n, d):
    if d <= 0:
        return np.int64(0)
    return (2 * n + d) // (2 * d)


@njit(cache=True, inline="always")
def _fdiv(n, d, inv):
    """floor(n / d) for d > 0, inv = 1.0 / d, |n| + 2d < 2^63: the float estimate corrected with
    exact integer products until q * d <= n < (q + 1) * d. The estimate is within 1 of the
    quotient wherever |n / d| < 2^50 (float64 relative error < 2^-51), so the loops run at most
    once there; they make the result exact everywhere. A multiply instead of a division where
    one divisor serves a whole row."""
    q = np.int64(np.floor(np.float64(n) * inv))
    while q * d > n:
        q -= 1
    while (q + 1) * d <= n:
        q += 1
    return q


@njit(cache=True, inline="always")
def _fdiv1(n, d, inv):
    """_fdiv where the quotient is known to lie below 2^50 in magnitude (the estimate is then
    within 1 of it): one correction each way, no loops, so a row of them vectorizes."""
    q = np.int64(np.floor(np.float64(n) * inv))
    q = q - 1 if q * d > n else q
    return q + 1 if (q + 1) * d <= n else q


@njit(cache=True, inline="always")
def _rdiv_inv(n, d2, inv2):
    """_rdiv(n, d) for d > 0 with d2 = 2 d and inv2 = 1.0 / d2."""
    return _fdiv(2 * n + (d2 >> 1), d2, inv2)


@njit(cache=True, inline="always")
def _rs(v, s):
    return (v + (np.int64(1) << (s - 1))) >> s


@njit(cache=True, inline="always")
def _epilogue(acc, a_scale, w_scale, shift, lo, hi):
    """numerics.md "linear": clamp(rs(rs(acc * A, 16) * WS, shift), lo, hi)."""
    return min(max(_rs(_rs(acc * a_scale, 16) * w_scale, shift), lo), hi)


@njit(cache=True, nogil=True)
def att_probs(dot, gain, lim, att):
    """dot f32 [N, Tq, Tk] (exact integers), gain int64 [N], lim int64 [N, Tq] (key j allowed
    iff j <= lim), att float64 table (ATT) -> Q16 probabilities as float64 [N, Tq, Tk] (0 if
    masked)."""
    n, tq, tk = dot.shape
    out = np.zeros((n, tq, tk), np.float64)
    for r in prange(n * tq):
        b, i = r // tq, r % tq
        n_keys = min(lim[b, i], tk - 1) + 1
        _att_row(dot[b, i], n_keys, gain[b], att, np.empty(n_keys, np.float64), out[b, i])
    return out


@njit(cache=True, inline="always")
def _inv_up(d):
    """1 / d for d > 0 (float64), rounded up past its rounding errors: fl(fl(1 / d) (1 + 2^-50))
    (_floor_q)."""
    return (1.0 / d) * (1.0 + 2.0**-50)


@njit(cache=True, inline="always")
def _inv_down(d):
    """1 / d for d > 0 (float64), rounded down past its rounding errors: fl(fl(1 / d) (1 -
    2^-50)) (_floor_q)."""
    return (1.0 / d) * (1.0 - 2.0**-50)


@njit(cache=True, inline="always")
def _floor_q(n, up, down):
    """floor(n / d) exactly, for integers |n| <= 2^49 and 0 < d < 2^53 held in float64, with up =
    _inv_up(d) and down = _inv_down(d): the floor of one product, no correction.

    With u = 2^-53 and x = n / d: fl(1 / d) is within a factor 1 +- u of 1 / d, and so is each
    later rounding, so up lies in (1 + 5u, 1 + 11u) / d and down in (1 - 11u, 1 - 5u) / d, and
    the estimate e = fl(n up) (n >= 0) or fl(n down) (n < 0) lies in (x, x + 13u |x|) for n !=
    0 (e = 0 = x for n = 0): never below x, so floor(e) >= floor(x). Where x is an integer, e <
    x + 1. Where it is not, the next integer above x is at least 1 / d away, and 13u |x| = 13u
    |n| / d < 1 / d as |n| <= 2^49 < 1 / 13u: e stays below it. So floor(e) = floor(x)."""
    return np.floor(n * (up if n >= 0.0 else down))


@njit(cache=True, inline="always")
def _att_row(dots, n, gh, att, lg, pj):
    """Attention probabilities of one query (numerics.md "Attention"): dots [>= n] exact integer
    q.k products -> pj[j] = floor(ATT_j * 2^16 / sum ATT) for j < n (lg: float64 [>= n]
    scratch; att: the ATT table as float64).

    Every value is an integer below 2^53, so float64 holds it exactly and each step below is
    the spec's integer operation, in a form the compiler vectorizes: |dot| < 2^22 and |G| <= 2^30
    make dot * G exact, and rs(v, 16) = floor((v + 2^15) * 2^-16) (scaling by a power of two is
    exact); d >> 8 = floor(d * 2^-8) for d >= 0; sum ATT <= 2^20 * 2^30; the quotients of w 2^16
    <= 2^46 (w an ATT entry, at most 2^30) by the sum in _floor_q (all non-negative)."""
    g = np.float64(gh)
    # l(d) = floor((d G + 2^15) 2^-16) is monotone in d (non-decreasing for G >= 0, else
    # non-increasing), so max l is l of the largest dot (G >= 0) or the smallest: two integer
    # reductions, which vectorize (a float maximum does not: the compiler may not reorder it)
    dmax = dmin = dots[0]
    for j in range(n):
        dmax = max(dmax, dots[j])
        dmin = min(dmin, dots[j])
    m = np.floor((np.float64(dmax if gh >= 0 else dmin) * g + 32768.0) * (1.0 / 65536.0))
    s = att_weights(dots, n, g, m, att, lg)  # lg[j] = ATT[min((m - l_j) >> 8, last)]: gathers
    inv = _inv_up(s)
    for j in range(n):
        pj[j] = _floor_q(lg[j] * 65536.0, inv, inv)  # every numerator >= 0


AQ_F = 1 << 15  # the float64 quantizers below need aq < AQ_F (the engine's AQ is 16383)
SPLIT = 8388608.0  # 2^23


@njit(cache=True, inline="always")
def _quant_row(row, amax, aq, out):
    """out[c] = _rdiv(aq * row[c], amax): one row's 15-bit activations (0 where amax = 0).

    Where amax < 2^31 (every row of normquant and absquant in the engine: |x| <= RES_MAX,
    |y| <= V_MAX) the loop runs on integers held exactly in float64, which LLVM vectorizes
    (AVX2 has no int64 <-> float64 conversions, so values pass through int32, where they fit):
    |row| <= amax gives |2 aq row + amax| < 2^48, whose quotient by 2 amax _floor_q finds.
    Otherwise the int64 path."""
    if amax <= 0:
        out[:] = 0
        return
    if amax < (np.int64(1) << 31) and aq < AQ_F:
        d2 = 2.0 * np.float64(amax)
        up, down = _inv_up(d2), _inv_down(d2)
        a2 = 2.0 * np.float64(aq)
        am = np.float64(amax)
        for c in range(row.shape[0]):
            num = np.float64(np.int32(row[c])) * a2 + am
            out[c] = np.int64(np.int32(_floor_q(num, up, down)))
        return
    d2 = 2 * amax
    inv2 = 1.0 / np.float64(d2)
    for c in range(row.shape[0]):
        out[c] = _rdiv_inv(aq * row[c], d2, inv2)


@njit(cache=True, inline="always")
def _relu2_ok(k, vh, vl, ah, al, a2):
    """Whether 2 aq v - k amax >= 0, for v = vh 2^23 + vl and amax = ah 2^23 + al (halves held
    exactly in float64, each below 2^23) and an odd |k| < 2^16: both parts of the difference,
    a2 vh - k ah and a2 vl - k al (a2 = 2 aq), stay below 2^40 and are exact, and the comparison
    of 2^23 times the first with minus the second is exact too."""
    return (a2 * vh - k * ah) * SPLIT >= k * al - a2 * vl


@njit(cache=True, inline="always")
def _normquant_block(x, sqd, aq, a, scale, r0, r1):
    for r in range(r0, r1):
        amax = np.int64(0)
        for c in range(x.shape[1]):
            v = x[r, c]
            av = -v if v < 0 else v
            if av > amax:
                amax = av
        k = np.int64(0)
        while (amax >> (k + 24)) > 0:
            k += 1
        ss = np.int64(0)
        for c in range(x.shape[1]):
            v = x[r, c] >> k
            ss += v * v
        root = _isqrt(ss) << k
        _quant_row(x[r], amax, aq, a[r])
        scale[r] = _rdiv(amax * (sqd << 8), aq * root)


@njit(cache=True, nogil=True)
def normquant(x, sqd, aq):
    """Rows x int64 [N, D] Q12 -> (int64 [N, D] in [-aq, aq], Q24 scale [N]): RMSNorm + 15-bit
    quantization; squares of x >> k with k = max(0, bitlength(amax) - 24) (numerics.md)."""
    a = np.empty(x.shape, np.int64)
    scale = np.empty(x.shape[0], np.int64)
    _normquant_block(x, sqd, aq, a, scale, 0, x.shape[0])
    return a, scale


@njit(cache=True, parallel=True, nogil=True)
def normquant_par(x, sqd, aq):
    """normquant with blocks of ROW_BLOCK rows on numba's threads (the same integers)."""
    n = x.shape[0]
    a = np.empty(x.shape, np.int64)
    scale = np.empty(n, np.int64)
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        _normquant_block(x, sqd, aq, a, scale, b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK))
    return a, scale


@njit(cache=True, inline="always")
def _absquant_block(y, shift, aq, a, scale, r0, r1):
    for r in range(r0, r1):
        amax = np.int64(0)
        for c in range(y.shape[1]):
            v = y[r, c]
            av = -v if v < 0 else v
            if av > amax:
                amax = av
        _quant_row(y[r], amax, aq, a[r])
        scale[r] = _rdiv(amax << shift, np.int64(aq))


@njit(cache=True, nogil=True)
def absquant(y, shift, aq):
    """Rows y int64 [N, M] -> (int64 in [-aq, aq], Q24 scale = rdiv(amax << shift, aq))."""
    a = np.empty(y.shape, np.int64)
    scale = np.empty(y.shape[0], np.int64)
    _absquant_block(y, shift, aq, a, scale, 0, y.shape[0])
    return a, scale


@njit(cache=True, parallel=True, nogil=True)
def absquant_par(y, shift, aq):
    """absquant with blocks of ROW_BLOCK rows on numba's threads (the same integers)."""
    n = y.shape[0]
    a = np.empty(y.shape, np.int64)
    scale = np.empty(n, np.int64)
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        _absquant_block(y, shift, aq, a, scale, b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK))
    return a, scale


@njit(cache=True, inline="always")
def _dot1(x, w, j, k0, k):
    """int32 dot product of the int16 row x with row j of w over elements k0..k-1 (exact: the
    caller's bound)."""
    d = np.int32(0)
    for c in range(k0, k):
        d = np.int32(d + np.int32(x[c]) * np.int32(w[j, c]))
    return d


@njit(cache=True, inline="always")
def _dots2(x0, x1, w, n, b0, b1):
    """b0[j] = x0 . w[j] and b1[j] = x1 . w[j] for j < n, as int32 (x0, x1 int16 [K], w int8
    [>= n, K]; exact: the callers' bound). Two rows of w at a time in simd.dot2x2 (each loaded
    once for both x), its first 16 * (K // 16) elements; _dot1 adds the rest."""
    k = x0.shape[0]
    n16 = k // 16
    k16 = 16 * n16
    j = 0
    while j + 1 < n:
        a00, a01, a10, a11 = dot2x2(x0, x1, w, j, n16)
        b0[j] = np.int32(a00 + _dot1(x0, w, j, k16, k))
        b0[j + 1] = np.int32(a01 + _dot1(x0, w, j + 1, k16, k))
        b1[j] = np.int32(a10 + _dot1(x1, w, j, k16, k))
        b1[j + 1] = np.int32(a11 + _dot1(x1, w, j + 1, k16, k))
        j += 2
    if j < n:
        b0[j] = _dot1(x0, w, j, 0, k)
        b1[j] = _dot1(x1, w, j, 0, k)


@njit(cache=True, inline="always")
def _dots4(xs, w, n, bs):
    """bs[i, j] = xs[i] . w[j] for i < 4, j < n, as int32 (xs int16 [4, K], bs int32 [4, >= n]):
    two rows of w at a time in simd.dot4x2, each loaded once for the four rows of xs; _dot1
    adds the last K mod 16 elements."""
    k = xs.shape[1]
    n16 = k // 16
    k16 = 16 * n16
    x0, x1, x2, x3 = xs[0], xs[1], xs[2], xs[3]
    j = 0
    while j + 1 < n:
        s = dot4x2(x0, x1, x2, x3, w, j, n16)
        for i in range(4):
            bs[i, j] = np.int32(s[2 * i] + _dot1(xs[i], w, j, k16, k))
            bs[i, j + 1] = np.int32(s[2 * i + 1] + _dot1(xs[i], w, j + 1, k16, k))
        j += 2
    if j < n:
        for i in range(4):
            bs[i, j] = _dot1(xs[i], w, j, 0, k)


@njit(cache=True, inline="always")
def _dots1(x0, w, n, b0):
    """b0[j] = x0 . w[j] for j < n, four rows of w at a time in simd.dot1x4."""
    k = x0.shape[0]
    n16 = k // 16
    k16 = 16 * n16
    j = 0
    while j + 3 < n:
        a0, a1, a2, a3 = dot1x4(x0, w, j, n16)
        b0[j] = np.int32(a0 + _dot1(x0, w, j, k16, k))
        b0[j + 1] = np.int32(a1 + _dot1(x0, w, j + 1, k16, k))
        b0[j + 2] = np.int32(a2 + _dot1(x0, w, j + 2, k16, k))
        b0[j + 3] = np.int32(a3 + _dot1(x0, w, j + 3, k16, k))
        j += 4
    while j < n:
        b0[j] = _dot1(x0, w, j, 0, k)
        j += 1


@njit(cache=True, inline="always")
def _epilogue_row(acc, a_scale, ws, shift, lo, hi, out, r):
    """out[r, j] = _epilogue(acc[j], a_scale, ws[j], ...) for every j: a separate loop over the
    row, which LLVM vectorizes (in the dot-product loop each output paid it in scalar code)."""
    for j in range(acc.shape[0]):
        out[r, j] = _epilogue(np.int64(acc[j]), a_scale, ws[j], shift, lo, hi)


@njit(cache=True, inline="always")
def _linear_block(a, w, a_scale, ws, shift, lo, hi, out, r0, r1, xs, bs):
    """Rows r0..r1-1 of linear_i16 (scratch: xs int16 [4, K], bs int32 [4, N]): the int32 sums
    of a row (_dots4, _dots2, _dots1), then their rescaling (_epilogue_row)."""
    k = a.shape[1]
    n = w.shape[0]
    x0, x1, b0, b1 = xs[0], xs[1], bs[0], bs[1]
    r = r0
    while r + 3 < r1:  # four rows at a time: each weight row loaded once for the four
        for i in range(4):
            for c in range(k):
                xs[i, c] = a[r + i, c]
        _dots4(xs, w, n, bs)
        for i in range(4):
            _epilogue_row(bs[i], a_scale[r + i], ws, shift, lo, hi, out, r + i)
        r += 4
    while r + 1 < r1:  # two rows at a time: each weight row loaded once for both
        for c in range(k):
            x0[c] = a[r, c]
            x1[c] = a[r + 1, c]
        _dots2(x0, x1, w, n, b0, b1)
        _epilogue_row(b0, a_scale[r], ws, shift, lo, hi, out, r)
        _epilogue_row(b1, a_scale[r + 1], ws, shift, lo, hi, out, r + 1)
        r += 2
    if r < r1:  # the odd row (and every decoding step of one stream): four outputs per pass
        for c in range(k):
            x0[c] = a[r, c]
        _dots1(x0, w, n, b0)
        _epilogue_row(b0, a_scale[r], ws, shift, lo, hi, out, r)


@njit(cache=True, nogil=True)
def linear_i16(a, w, a_scale, ws, shift, lo, hi):
    """The fused exact linear, product and epilogue in one pass: a int64 [M, K] in
    [-16383, 16383], w int8 [N, K] -> clamp(rs(rs(acc * A, 16) * WS, shift), lo, hi) with
    acc = a . w_n (numerics.md "linear": the same integer as 128 * (hi . w) + (lo . w)).
    The caller guarantees K * 16383 * max|w| < 2^31, so the int32 sums are exact in any order.
    Activations are copied to int16 rows; the products run in lmzip.simd's pairwise
    multiply-adds (vpmaddwd on AVX2: 16 products per instruction, where LLVM's vectorizer made
    8 per vpmulld of the scalar loop), and each row's sums are rescaled in a loop of their own:
    1.6-1.8x the scalar kernel at the model's shapes on the AVX2 EPYC."""
    m, k = a.shape
    n = w.shape[0]
    out = np.empty((m, n), np.int64)
    xs = np.empty((4, k), np.int16)
    bs = np.empty((4, n), np.int32)
    _linear_block(a, w, a_scale, ws, shift, lo, hi, out, 0, m, xs, bs)
    return out


def pair_cols(w: np.ndarray) -> np.ndarray:
    """int8 weights [N, K] (K even) -> their pairs along k, [K/2, N, 2] (linear_pairs)."""
    n, k = w.shape
    return np.ascontiguousarray(w.reshape(n, k // 2, 2).transpose(1, 0, 2))


@njit(cache=True, inline="always")
def _pairs_block(a, wt, a_scale, ws, shift, lo, hi, out, r0, r1, xs, bs):
    """Rows r0..r1-1 of linear_pairs (scratch: xs int16 [4, K], bs int32 [4, N])."""
    k = a.shape[1]
    kp = wt.shape[0]
    n = wt.shape[1]
    for b0 in range(r0, r1, 4):
        rows = min(4, r1 - b0)
        for i in range(4):
            for c in range(k):
                xs[i, c] = a[b0 + i, c] if i < rows else 0
        for n0 in range(0, n, 32):
            cols_dot4(xs, wt, n0, kp, bs)
        for i in range(rows):
            _epilogue_row(bs[i], a_scale[b0 + i], ws, shift, lo, hi, out, b0 + i)


@njit(cache=True, nogil=True)
def linear_pairs(a, wt, a_scale, ws, shift, lo, hi):
    """linear_i16 with the weights as pairs along k (wt = pair_cols(w), int8 [K/2, N, 2], N a
    multiple of 32): blocks of four rows against 32 outputs at a time in simd.cols_dot4, whose
    sums need no horizontal additions (the dot products of linear_i16 end each row and weight
    row with one: a large share of the work at K = 192). CPUs with AVX2 only (the caller
    checks simd.HAS_AVX2); the same integers as linear_i16 (exact int32 sums, the same
    bound K * 16383 * max|w| < 2^31). A last block of fewer rows is padded with zero rows."""
    m, k = a.shape
    n = wt.shape[1]
    out = np.empty((m, n), np.int64)
    xs = np.zeros((4, k), np.int16)
    bs = np.empty((4, n), np.int32)
    _pairs_block(a, wt, a_scale, ws, shift, lo, hi, out, 0, m, xs, bs)
    return out


def quad_cols(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights [N, K] (N a multiple of 16) -> (their groups of 16 outputs as quads along k,
    [N/16, K4, 64] with zero columns from K on; the sums of each weight row, int64 [N]): the
    layout of linear_quads (simd.quads_dot1)."""
    n, k = w.shape
    k4 = -(-k // 4)
    wp = np.zeros((n, 4 * k4), np.int8)
    wp[:, :k] = w
    wq = wp.reshape(n // 16, 16, k4, 4).transpose(0, 2, 1, 3).reshape(n // 16, k4, 64)
    return np.ascontiguousarray(wq), w.astype(np.int64).sum(axis=1)


@njit(cache=True, nogil=True)
def linear_quads(a, wq, wsum, a_scale, ws, shift, lo, hi):
    """linear_i16 in byte dot products (simd.quads_dot2 and quads_dot1, HAS_VNNI512 CPUs: the
    caller checks; (wq, wsum) = quad_cols(w)), two rows at a time: the decoding step's
    linears, with no horizontal sums. Each row a (|a| <= 16383) splits into a low byte l and a
    high part h (a = 256 h + l, -64 <= h < 64), and a . w = 256 ((h + 64) . w) + l . w - 2^14
    sum(w): the two byte sums are exact int32 (below 255 * 127 * K < 2^31), and the exact
    result also fits int32 (the bound K * 16383 * max|w| < 2^31), so the int32 wrap of their
    combination is undone by reducing the int64 difference to int32. The same integers as
    linear_i16."""
    m, k = a.shape
    n16, k4n, _ = wq.shape
    n = 16 * n16
    out = np.empty((m, n), np.int64)
    xl = np.zeros((2, 4 * k4n), np.uint8)
    xh = np.zeros((2, 4 * k4n), np.uint8)  # padding 0: the padded weights are 0
    acc = np.empty((2, n), np.int32)
    for r0 in range(0, m, 2):
        rows = min(2, m - r0)
        for i in range(rows):
            for c in range(k):
                v = a[r0 + i, c]
                xl[i, c] = v & 255
                xh[i, c] = (v >> 8) + 64
        if rows == 2:
            quads_dot2(xl, xh, wq, acc)
        else:
            quads_dot1(xl, xh, wq, acc)
        for i in range(rows):
            s = a_scale[r0 + i]
            for j in range(n):
                t = np.int64(np.int32(np.int64(acc[i, j]) - (wsum[j] << 14)))
                out[r0 + i, j] = _epilogue(t, s, ws[j], shift, lo, hi)
    return out


def tile_cols(w: np.ndarray) -> np.ndarray:
    """int8 weights [N, K] (N a multiple of 32) -> AMX tiles [N/16, KP/64, 16, 64] (KP: K
    rounded up to 64, zero columns added), tile [nb, kb] row i holding w[16 nb + c, 64 kb + 4 i
    + j] at byte 4 c + j: the layout of simd.tile_rows16 (linear_tiles)."""
    n, k = w.shape
    kp = -(-k // 64) * 64
    wp = np.zeros((n, kp), np.int8)
    wp[:, :k] = w
    t = wp.reshape(n // 16, 16, kp // 64, 16, 4).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(t).reshape(n // 16, kp // 64, 16, 64)


@njit(cache=True, inline="always")
def _tiles_block(a, wt, a_scale, ws, shift, lo, hi, out, r0, r1, xh, xl, ch, cl):
    """Rows r0..r1-1 of linear_tiles, 16 at a time (scratch: xh int8 and xl uint8 [16, KP]
    with zero columns from K on, ch and cl int32 [16, N]): each row split into its signed high
    and unsigned low bytes (a = 256 hi + lo), the two tile products, then the rescaling of
    256 ch + cl. A last block of fewer rows is padded with zero rows."""
    k = a.shape[1]
    n = ch.shape[1]
    for b0 in range(r0, r1, 16):
        rows = min(16, r1 - b0)
        for i in range(16):
            if i < rows:
                for c in range(k):
                    v = a[b0 + i, c]
                    xh[i, c] = v >> 8
                    xl[i, c] = v & 255
            else:
                for c in range(k):
                    xh[i, c] = 0
                    xl[i, c] = 0
        tile_rows16(xh, xl, wt, ch, cl)
        for i in range(rows):
            for j in range(n):  # in int32: the exact sum is below 2^31 (wrapping partial terms)
                ch[i, j] = (ch[i, j] << 8) + cl[i, j]
            _epilogue_row(ch[i], a_scale[b0 + i], ws, shift, lo, hi, out, b0 + i)


@njit(cache=True, nogil=True)
def linear_tiles(a, wt, a_scale, ws, shift, lo, hi):
    """linear_i16 in AMX tiles (wt = tile_cols(w); CPUs where simd.HAS_AMX and the OS granted
    the tile state: the caller checks): the same integers (exact int32 sums, the same bound
    K * 16383 * max|w| < 2^31)."""
    m = a.shape[0]
    n = wt.shape[0] * 16
    kp = wt.shape[1] * 64
    out = np.empty((m, n), np.int64)
    xh = np.zeros((16, kp), np.int8)
    xl = np.zeros((16, kp), np.uint8)
    ch = np.empty((16, n), np.int32)
    cl = np.empty((16, n), np.int32)
    _tiles_block(a, wt, a_scale, ws, shift, lo, hi, out, 0, m, xh, xl, ch, cl)
    return out


LINEAR_BLOCK = 32  # rows per parallel task of linear_i16_par


@njit(cache=True, parallel=True, nogil=True)
def linear_i16_par(a, w, a_scale, ws, shift, lo, hi):
    """linear_i16 with blocks of LINEAR_BLOCK rows on numba's threads (set_threads); every
    output is computed by the same code whatever the split, so the result is identical."""
    m, k = a.shape
    out = np.empty((m, w.shape[0]), np.int64)
    nb = (m + LINEAR_BLOCK - 1) // LINEAR_BLOCK
    for b in prange(nb):
        xs = np.empty((4, k), np.int16)
        bs = np.empty((4, w.shape[0]), np.int32)
        r0 = b * LINEAR_BLOCK
        _linear_block(a, w, a_scale, ws, shift, lo, hi, out, r0, min(m, r0 + LINEAR_BLOCK), xs, bs)
    return out


@njit(cache=True, parallel=True, nogil=True)
def linear_pairs_par(a, wt, a_scale, ws, shift, lo, hi):
    """linear_pairs with blocks of LINEAR_BLOCK rows (a multiple of 4) on numba's threads; every
    output is computed by the same code whatever the split, so the result is identical."""
    m, k = a.shape
    n = wt.shape[1]
    out = np.empty((m, n), np.int64)
    nb = (m + LINEAR_BLOCK - 1) // LINEAR_BLOCK
    for b in prange(nb):
        xs = np.zeros((4, k), np.int16)
        bs = np.empty((4, n), np.int32)
        r0 = b * LINEAR_BLOCK
        _pairs_block(a, wt, a_scale, ws, shift, lo, hi, out, r0, min(m, r0 + LINEAR_BLOCK), xs, bs)
    return out


@njit(cache=True, parallel=True, nogil=True)
def linear_tiles_par(a, wt, a_scale, ws, shift, lo, hi):
    """linear_tiles with blocks of LINEAR_BLOCK rows (a multiple of 16) on numba's threads; every
    output is computed by the same code whatever the split, so the result is identical."""
    m = a.shape[0]
    n = wt.shape[0] * 16
    kp = wt.shape[1] * 64
    out = np.empty((m, n), np.int64)
    nb = (m + LINEAR_BLOCK - 1) // LINEAR_BLOCK
    for b in prange(nb):
        xh = np.zeros((16, kp), np.int8)
        xl = np.zeros((16, kp), np.uint8)
        ch = np.empty((16, n), np.int32)
        cl = np.empty((16, n), np.int32)
        r0 = b * LINEAR_BLOCK
        _tiles_block(a, wt, a_scale, ws, shift, lo, hi, out, r0, min(m, r0 + LINEAR_BLOCK),
                     xh, xl, ch, cl)  # fmt: skip
    return out


@njit(cache=True, nogil=True)
def rescale(acc, a_scale, ws, shift, lo, hi):
    """Linear epilogue: clamp(rs(rs(acc * A, 16) * WS, shift), lo, hi) for acc [N, M]."""
    n, m = acc.shape
    out = np.empty((n, m), np.int64)
    for r in prange(n):
        s = a_scale[r]
        for c in range(m):
            out[r, c] = _epilogue(np.int64(acc[r, c]), s, ws[c], shift, lo, hi)
    return out


@njit(cache=True, inline="always")
def _qk_block(y, pos, cos, sin, sqe, e, out, r0, r1):
    """Rows r0..r1-1 of qk_rows (numerics.md "qk"). After the int64 sum of squares and its
    isqrt, every step runs on integers held exactly in float64, in a loop LLVM vectorizes (AVX2
    has no int64 <-> float64 conversions; the inputs are converted through int32, where they
    fit): |y| < 2^24 and SQE < 2^20 make |2 y SQE + d| < 2^45, whose quotient by 2d (d = 16 R)
    _floor_q finds; the RoPE
    sums n COS +- n' SIN < 2^47 (|COS|, |SIN| < 2^31, which cpu_engine._rope_tables checks);
    rs(v, s) = floor((v + 2^(s-1)) * 2^-s) exactly (scaling by a power of two)."""
    heads = y.shape[1] // e
    half = e // 2
    lim = (1 << 24) - 1
    sq2 = 2.0 * np.float64(sqe)
    yf = np.empty(e, np.float64)
    for r in range(r0, r1):
        p = pos[r]
        for h in range(heads):
            base = h * e
            ss = np.int64(0)
            for c in range(e):
                v = np.int32(min(max(y[r, base + c], -lim), lim))
                yf[c] = np.float64(v)
                ss += np.int64(v) * np.int64(v)
            root = _isqrt(ss)
            if root == 0:  # an all-zero head: n = 0
                for c in range(e):
                    out[r, h, c] = 0
                continue
            d2 = 32.0 * np.float64(root)  # 2 d: rdiv(n, d) = floor((2 n + d) / 2 d)
            up, down = _inv_up(d2), _inv_down(d2)
            hd = 0.5 * d2
            for c in range(half):
                n1 = _floor_q(yf[c] * sq2 + hd, up, down)
                n2 = _floor_q(yf[c + half] * sq2 + hd, up, down)
                cc = np.float64(np.int32(cos[p, c]))
                sn = np.float64(np.int32(sin[p, c]))
                t1 = np.floor((n1 * cc + n2 * sn + 536870912.0) * (1.0 / 1073741824.0))
                t2 = np.floor((n2 * cc - n1 * sn + 536870912.0) * (1.0 / 1073741824.0))
                t1 = np.floor((t1 + 128.0) * (1.0 / 256.0))
                t2 = np.floor((t2 + 128.0) * (1.0 / 256.0))
                out[r, h, c] = np.int8(np.int32(min(max(t1, -127.0), 127.0)))
                out[r, h, c + half] = np.int8(np.int32(min(max(t2, -127.0), 127.0)))


@njit(cache=True, nogil=True)
def qk_rows(y, pos, cos, sin, sqe, e):
    """[N, n*E] Q12 rows at positions pos [N] -> QK-normed, rotated int8 [N, n, E]."""
    out = np.empty((y.shape[0], y.shape[1] // e, e), np.int8)
    _qk_block(y, pos, cos, sin, sqe, e, out, 0, y.shape[0])
    return out


@njit(cache=True, parallel=True, nogil=True)
def qk_rows_par(y, pos, cos, sin, sqe, e):
    """qk_rows with blocks of ROW_BLOCK rows on numba's threads (the same integers)."""
    n = y.shape[0]
    out = np.empty((n, y.shape[1] // e, e), np.int8)
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        _qk_block(y, pos, cos, sin, sqe, e, out, b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK))
    return out


@njit(cache=True, inline="always")
def _exp30(x, tn, ta, tb):
    """numerics.md section 2: 2^30 exp(-x / 2^16) for x >= 0."""
    n = x >> 16
    if n >= tn.shape[0]:
        return np.int64(0)
    v = _rs(tn[n] * ta[(x >> 8) & 255], 30)
    return _rs(v * tb[x & 255], 30)


@njit(cache=True, inline="always")
def _softcap_block(logits, cap, tn, ta, tb, out, r0, r1):
    """Rows r0..r1-1 of softcap_rows, each in three loops so that two of them vectorize (the
    callers compile with error_model="numpy": no zero-divisor check in the loop, which would
    stop LLVM's vectorizer; no divisor here is 0). (1) u = floor(2|l| / cap), in float64:
    2|l| < 2^27, _floor_q. (2) e = exp30(u), the table lookups
    (scalar: the loop vectorizer does not gather). (3) t = floor((2^30 - e) 2^30 / (2^30 + e)):
    the float64 quotient of those exact numbers is within 1 of it (below 2^31), and the int64
    remainder (|q d| < 2^62) corrects it each way; then rs(cap * t, 14) with the sign of l.
    (With the spec's tables and caps up to 1000 the float floor of (3) already comes out exact:
    its corrections never fire in the tests, which cover every exp30 value; they keep the
    result exact without that argument.)"""
    one = np.int64(1) << 30
    inv_cap = _inv_up(np.float64(cap))
    v_n = logits.shape[1]
    u = np.empty(v_n, np.int64)
    for r in range(r0, r1):
        for c in range(v_n):
            lv = logits[r, c]
            n2 = 2.0 * np.float64(np.int32(-lv if lv < 0 else lv))
            u[c] = np.int64(np.int32(_floor_q(n2, inv_cap, inv_cap)))  # n2 >= 0
        for c in range(v_n):
            u[c] = _exp30(u[c], tn, ta, tb)
        for c in range(v_n):
            e = u[c]
            den = one + e
            q = np.int64(np.int32(np.floor(np.float64(np.int32(one - e)) * 1073741824.0
                                           / np.float64(den))))  # fmt: skip
            rem = q * den - ((one - e) << 30)
            q = q - 1 if rem > 0 else q
            rem = rem - den if rem > 0 else rem
            q = q + 1 if rem + den <= 0 else q
            mag = _rs(cap * q, 14)
            lv = logits[r, c]
            out[r, c] = -mag if lv < 0 else mag


@njit(cache=True, nogil=True, error_model="numpy")
def softcap_rows(logits, cap, tn, ta, tb):
    """Q16 logits [N, V] -> cap * tanh(l / cap) in Q16 (numerics.md section 6)."""
    if cap <= 0:  # no cap (the callers skip this kernel then)
        return logits.copy()
    out = np.empty(logits.shape, np.int64)
    _softcap_block(logits, cap, tn, ta, tb, out, 0, logits.shape[0])
    return out


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def softcap_rows_par(logits, cap, tn, ta, tb):
    """softcap_rows with blocks of ROW_BLOCK rows on numba's threads (the same integers)."""
    if cap <= 0:
        return logits.copy()
    n = logits.shape[0]
    out = np.empty(logits.shape, np.int64)
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        _softcap_block(logits, cap, tn, ta, tb, out, b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK))
    return out


@njit(cache=True, inline="always")
def _probs_block(capped, tn, ta, tb, out, r0, r1):
    for r in range(r0, r1):
        m = capped[r, 0]
        for c in range(capped.shape[1]):
            m = max(m, capped[r, c])
        for c in range(capped.shape[1]):
            out[r, c] = _exp30(m - capped[r, c], tn, ta, tb)


@njit(cache=True, nogil=True)
def probs_rows(capped, tn, ta, tb):
    """Capped Q16 logits [N, V] -> Q30 probabilities exp30(max - capped)."""
    out = np.empty(capped.shape, np.int64)
    _probs_block(capped, tn, ta, tb, out, 0, capped.shape[0])
    return out


@njit(cache=True, parallel=True, nogil=True)
def probs_rows_par(capped, tn, ta, tb):
    """probs_rows with blocks of ROW_BLOCK rows on numba's threads (the same integers)."""
    n = capped.shape[0]
    out = np.empty(capped.shape, np.int64)
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        _probs_block(capped, tn, ta, tb, out, b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK))
    return out


@njit(cache=True, inline="always")
def _freq_row(p, precision, out):
    """One row of freq_rows: Q30 probabilities p [V] -> frequencies out [V] (numerics.md
    section 6): 1 + floor(p_i (2^P - V) / sum p), the remainder to the first argmax."""
    v = p.shape[0]
    total = np.int64(1) << precision
    s, top = _row_sum_top(p)
    acc = np.int64(0)
    inv = 1.0 / np.float64(s)
    for c in range(v):
        f = 1 + _fdiv1(p[c] * (total - v), s, inv)
        out[c] = f
        acc += f
    out[top] += total - acc


@njit(cache=True, inline="always")
def _row_sum_top(p):
    """(sum p, the first index of max p) of a row of probabilities (p >= 0): the sum and the
    maximum in loops that vectorize, then a scan for the first index that holds the maximum."""
    s = np.int64(0)
    m = np.int64(0)
    for c in range(p.shape[0]):
        s += p[c]
        m = max(m, p[c])
    top = 0
    while p[top] != m:
        top += 1
    return s, top


@njit(cache=True, inline="always")
def _freq_sum(p, c0, c1, k, s, inv):
    """sum of 1 + floor(p[c] k / s) for c0 <= c < c1 (_fdiv1: the quotients are at most
    k < 2^P <= 2^24, and p[c] k < 2^54)."""
    acc = np.int64(0)
    for c in range(c0, c1):
        acc += 1 + _fdiv1(p[c] * k, s, inv)
    return acc


@njit(cache=True, nogil=True)
def freq_rows(p, precision):
    """Q30 probabilities [N, V] -> frequency tables (numerics.md section 6)."""
    n, v = p.shape
    out = np.empty((n, v), np.int64)
    for r in prange(n):
        _freq_row(p[r], precision, out[r])
    return out


@njit(cache=True, nogil=True)  # api._code_group calls it on a thread of its own
def lm_symbols_rows(p, targets, precision, cum, freq):
    """The range coder's symbol of targets[r] under freq_rows' table of each row p[r] (Q30
    [N, V]): cum[r] = sum of the frequencies below the target, freq[r] = the target's
    frequency, computed row by row without the [N, V] tables: the sums of the frequencies
    below and above the target, whose loops vectorize."""
    n, v = p.shape
    total = np.int64(1) << precision
    k = total - v
    for r in range(n):
        row = p[r]
        s, top = _row_sum_top(row)
        inv = 1.0 / np.float64(s)
        t = targets[r]
        below = _freq_sum(row, 0, t, k, s, inv)
        ft = 1 + _fdiv1(row[t] * k, s, inv)
        rem = total - (below + ft + _freq_sum(row, t + 1, v, k, s, inv))
        if top == t:  # the remainder goes to the first argmax (_freq_row)
            ft += rem
        elif top < t:
            below += rem
        cum[r] = below
        freq[r] = ft


@njit(cache=True, nogil=True)
def add_clamp(x, y, lim):
    """clamp(x + y, -lim, lim) of int64 rows (the residual stream's updates)."""
    n, m = x.shape
    out = np.empty((n, m), np.int64)
    for r in range(n):
        for c in range(m):
            out[r, c] = min(max(x[r, c] + y[r, c], -lim), lim)
    return out


@njit(cache=True, inline="always")
def _relu2_block(h, shift, aq, a, scale, r0, r1):
    """Rows r0..r1-1 of relu2_absquant. Where max(h) < 2^23 (every row of the engine: |h| <=
    H_MAX) the quotients x = (2 aq v + amax) / 2 amax of v = max(h, 0)^2 (< 2^46) are found in
    float64: v and amax are exact there, the numerator (< 2^62) is within a factor (1 +- u)^2
    of its value (u = 2^-53, two roundings of non-negative terms), the inverse _inv_up(2 amax)
    within (1 + 5u, 1 + 11u) of 1 / 2 amax, so the estimate e of x (<= aq + 1 < 2^15) lies in
    (x, x + 15u x): floor(e) is floor(x) or floor(x) + 1. The floor is the largest q with 2 aq
    v - (2q - 1) amax >= 0, which _relu2_ok decides exactly on the numbers split at 2^23: one
    check, downward. Otherwise the int64 path."""
    row = np.empty(h.shape[1], np.int64)
    hf = np.empty(h.shape[1], np.float64)
    for r in range(r0, r1):
        hmax = np.int64(0)
        for c in range(h.shape[1]):
            hmax = max(hmax, h[r, c])
        if 0 < hmax < (np.int64(1) << 23) and aq < AQ_F:
            am = np.float64(hmax) * np.float64(hmax)
            ah = np.floor(am * (1.0 / SPLIT))
            al = am - ah * SPLIT
            inv2 = _inv_up(2.0 * am)
            a2 = 2.0 * np.float64(aq)
            for c in range(h.shape[1]):
                hf[c] = np.float64(np.int32(max(h[r, c], np.int64(0))))
            for c in range(h.shape[1]):
                v = hf[c] * hf[c]
                vh = np.floor(v * (1.0 / SPLIT))
                vl = v - vh * SPLIT
                q = np.floor((v * a2 + am) * inv2)  # floor(x) or floor(x) + 1 (docstring)
                q = q - 1.0 if not _relu2_ok(2.0 * q - 1.0, vh, vl, ah, al, a2) else q
                a[r, c] = np.int64(np.int32(q))
            scale[r] = _rdiv((hmax * hmax) << shift, np.int64(aq))
            continue
        amax = np.int64(0)
        for c in range(h.shape[1]):
            v = h[r, c]
            v = v * v if v > 0 else np.int64(0)
            row[c] = v
            if v > amax:
                amax = v
        _quant_row(row, amax, aq, a[r])
        scale[r] = _rdiv(amax << shift, np.int64(aq))


@njit(cache=True, nogil=True)
def relu2_absquant(h, shift, aq):
    """absquant of max(h, 0)^2 (the MLP's hidden activation), without the torch temporaries."""
    a = np.empty(h.shape, np.int64)
    scale = np.empty(h.shape[0], np.int64)
    _relu2_block(h, shift, aq, a, scale, 0, h.shape[0])
    return a, scale


@njit(cache=True, parallel=True, nogil=True)
def relu2_absquant_par(h, shift, aq):
    """relu2_absquant with blocks of ROW_BLOCK rows on numba's threads (the same integers)."""
    n = h.shape[0]
    a = np.empty(h.shape, np.int64)
    scale = np.empty(n, np.int64)
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        _relu2_block(h, shift, aq, a, scale, b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK))
    return a, scale


@njit(cache=True, nogil=True)
def decode_lm_row(p, precision, st, data, f, work):
    """Decode one token of an --lm-only stream from its Q30 probabilities p [V]: the frequency
    table of freq_rows (into f, int64 [V]), its cumulative table (work, uint64 [V + 1]), and
    coder.dec_symbol, in one call (the decoding loop paid ~300 us per token in separate torch
    and numpy calls). f and work are the caller's scratch, reused token after token."""
    v = p.shape[0]
    _freq_row(p, precision, f)
    acc = np.uint64(0)
    work[0] = acc
    for c in range(v):
        acc += np.uint64(f[c])
        work[c + 1] = acc
    return dec_symbol(st, data, work, np.uint64(precision))


@njit(cache=True, inline="always")
def _pv_tail(pj, idx, m, vals, c0, acc):
    """acc[c] = sum_{i < m} pj[idx[i]] * vals[idx[i], c] for c >= c0 (the outputs past the last
    block of 16 of simd.rows_pv2), in float64: exact integers (_attend_heads' bound)."""
    for c in range(c0, acc.shape[0]):
        t = 0.0
        for i in range(m):
            t += pj[idx[i]] * np.float64(vals[idx[i], c])
        acc[c] = t


@njit(cache=True, nogil=True)
def key_cols(w):
    """Positions a key cache holds: the window rounded up to blocks of 8 (simd.keys_dot2)."""
    return (w + 7) // 8 * 8


def cache_shapes(layers: int, batch: int, kv: int, window: int, e: int) -> tuple:
    """Shapes of the fused kernels' KV caches (attend_step, step_all): keys int8 as pairs of
    elements [L, B, K, E/2, key_cols(W), 2], values int32 rows [L, B, K, W, E]."""
    return ((layers, batch, kv, e // 2, key_cols(window), 2), (layers, batch, kv, window, e))


@njit(cache=True, inline="always")
def _attend_scratch(w, e):
    """Scratch of _attend_heads for windows of w positions and heads of E values: (qa, qb,
    da, db, lg, pa, pb, idx, acca, accb)."""
    w8 = key_cols(w)
    return (np.empty(e, np.int16), np.empty(e, np.int16), np.empty(w8, np.int32),
            np.empty(w8, np.int32), np.empty(w, np.float64), np.empty(w, np.float64),
            np.empty(w, np.float64), np.empty(w, np.int64), np.empty(e, np.float64),
            np.empty(e, np.float64))  # fmt: skip


@njit(cache=True, inline="always")
def _attend_heads(q, t, h0, pair, keys, vals, n, gain, att, qa, qb, da, db, lg, pa, pb, idx, acca,
                  accb, out, row):  # fmt: skip
    """Query heads h0 (and h0 + 1 if pair) of q[t] (int8 [.., H, E]) against keys 0..n-1 of
    keys (int8 [E/2, >= 8 ceil(n / 8), 2]: key j's elements 2 c2 and 2 c2 + 1 at keys[c2, j])
    and value rows vals[0:n] (int32 [W, E], Q10): out[row, h * E + c] = rs(sum_j P_j *
    v_j[c], 16), P in Q16 (numerics.md "Attention"). The dot products are exact int32 sums,
    computed for whole blocks of 8 keys (the ones past n are not read). The P.V sums skip the
    positions where every head's P_j is 0 (about half of them in the shipped model: Q16
    probabilities below 2^-16 floor to 0) and run over the rest in simd.rows_pv2, each value
    row loaded once for both heads; each P_j * v_j < 2^38 and their sum < 2^38 (sum P <= 2^16),
    so these float64 sums are exact integers in any order. qa, qb: int16 [E]; da, db: int32
    [>= 8 ceil(n / 8)]; lg, pa, pb: float64 [W]; idx: int64 [W]; acca, accb: float64 [E]."""
    e = qa.shape[0]
    e16 = e // 16
    n8 = (n + 7) // 8
    for c in range(e):
        qa[c] = q[t, h0, c]
    m = 0
    if pair:
        for c in range(e):
            qb[c] = q[t, h0 + 1, c]
        keys_dot2(qa, qb, keys, n8, e // 2, da, db)  # each block of keys loaded once for both
        _att_row(da, n, gain[h0], att, lg, pa)
        _att_row(db, n, gain[h0 + 1], att, lg, pb)
        for j in range(n):
            idx[m] = j
            m += (pa[j] != 0.0) | (pb[j] != 0.0)
        rows_pv2(idx, m, pa, pb, vals, e16, acca, accb)
        _pv_tail(pb, idx, m, vals, 16 * e16, accb)
        for c in range(e):
            out[row, (h0 + 1) * e + c] = _rs(np.int64(accb[c]), 16)
    else:
        keys_dot1(qa, keys, n8, e // 2, da)
        _att_row(da, n, gain[h0], att, lg, pa)
        for j in range(n):
            idx[m] = j
            m += pa[j] != 0.0
        rows_pv1(idx, m, pa, vals, e16, acca)
    _pv_tail(pa, idx, m, vals, 16 * e16, acca)
    for c in range(e):
        out[row, h0 * e + c] = _rs(np.int64(acca[c]), 16)


@njit(cache=True, inline="always")
def _attend_kv(q, t, kh, g, keys, vals, n, gain, att, scratch, out, row):
    """The g query heads of KV head kh for query t (_attend_heads two at a time, the last one
    alone when g is odd); scratch from _attend_scratch."""
    qa, qb, da, db, lg, pa, pb, idx, acca, accb = scratch
    h = kh * g
    while h < kh * g + g:
        two = h + 1 < kh * g + g
        _attend_heads(q, t, h, two, keys, vals, n, gain, att, qa, qb, da, db, lg, pa, pb, idx,
                      acca, accb, out, row)  # fmt: skip
        h += 2 if two else 1


@njit(cache=True, parallel=True, nogil=True)
def attend_fwd(q, k, v, t_n, gain, att):
    """Teacher-forced causal attention of whole windows: q int8 [N*T, H, E], k int8 [N*T, K, E],
    v Q10 int64 [N*T, K*E], rows grouped by window of t_n positions -> y Q10 int64 [N*T, H*E].
    Query t of a window sees keys 0..t of its window; masked keys are skipped, not computed.
    (window, KV head) pairs run on numba's threads (set_threads); each writes its own rows."""
    rows, h_n, e = q.shape
    kv_n = k.shape[1]
    g = h_n // kv_n
    out = np.empty((rows, h_n * e), np.int64)
    for pair in prange((rows // t_n) * kv_n):
        w, kh = pair // kv_n, pair % kv_n
        keys = np.zeros((e // 2, key_cols(t_n), 2), np.int8)
        vals = np.empty((t_n, e), np.int32)
        scratch = _attend_scratch(t_n, e)
        base = w * t_n
        for j in range(t_n):
            for c in range(e):
                keys[c >> 1, j, c & 1] = k[base + j, kh, c]
                vals[j, c] = np.int32(v[base + j, kh * e + c])
        for t in range(t_n):
            _attend_kv(q, base + t, kh, g, keys, vals, t + 1, gain, att, scratch, out, base + t)
    return out


@njit(cache=True, inline="always")
def _tile_att_query_block(q, v, base, t0, rows, h, kh, e, gain, att, kt, vt0, vt1, vt2, qp, dots,
                          lg, pj, p0, p1, s6, out):  # fmt: skip
    """Queries t0 .. t0 + rows - 1 (rows <= 16) of head h in the window at row `base`
    (attend_fwd_tiles' scratch): their q.k products in tiles, each query's probabilities
    (_att_row), split into low and high bytes, and the six byte products of P.V in tiles."""
    for i in range(rows):
        for c in range(e):
            qp[i, c] = q[base + t0 + i, h, c]
    n_g = (t0 + rows + 15) // 16  # key groups of 16 the block sees
    n_kt = (t0 + rows + 63) // 64  # key tiles of 64
    tile_dots(qp, kt, n_g, dots)
    special = np.full(16, -1, np.int64)
    for i in range(rows):
        n = t0 + i + 1
        _att_row(dots[i], n, gain[h], att, lg, pj)
        top = np.int64(0)
        for j in range(n):
            pv = np.int64(pj[j])
            p0[i, j] = pv & 255
            p1[i, j] = (pv >> 8) & 255
            top = max(top, pv)
        for j in range(n, 64 * n_kt):
            p0[i, j] = 0
            p1[i, j] = 0
        if top == 65536:  # one key has all the weight (the others 0): its bytes are 0 above
            for j in range(n):
                if pj[j] == 65536.0:
                    special[i] = j
    tile_pv(p0, p1, vt0, n_kt, s6[0], s6[1])
    tile_pv(p0, p1, vt1, n_kt, s6[2], s6[3])
    tile_pv_signed(p0, p1, vt2, n_kt, s6[4], s6[5])
    for i in range(rows):
        o = out[base + t0 + i, h * e : (h + 1) * e]
        if special[i] >= 0:  # rs(2^16 v, 16) = v
            o[:] = v[base + special[i], kh * e : (kh + 1) * e]
            continue
        a0, a1, a2, a3, a4, a5 = s6[0, i], s6[1, i], s6[2, i], s6[3, i], s6[4, i], s6[5, i]
        for c in range(e):
            acc = (np.int64(a0[c]) + ((np.int64(a2[c]) + np.int64(a1[c])) << 8)
                   + ((np.int64(a3[c]) + np.int64(a4[c])) << 16)
                   + (np.int64(a5[c]) << 24))  # fmt: skip
            o[c] = _rs(acc, 16)


@njit(cache=True, parallel=True, nogil=True)
def attend_fwd_tiles(q, k, v, t_n, gain, att):
    """attend_fwd in AMX tiles (simd.HAS_AMX CPUs where the OS granted the tile state: the
    caller checks; E a multiple of 16): the same integers. Per (window, KV head): the keys as
    tiles of 16 keys (simd.tile_dots), the value rows as three byte planes in tiles of 64 keys
    (v = 2^16 v2 + 2^8 v1 + v0, v0 and v1 unsigned, v2 signed: |v| < 2^22); per head, blocks
    of 16 queries: their q.k products in tiles, each query's probabilities as in attend_fwd
    (_att_row, P in Q16), P = 2^8 p1 + p0 in unsigned bytes (a P of 2^16, one key with all the
    weight, gives that key's value row directly), and sum P v = sum over the six byte pairs of
    2^(8a + 8b) pa . vb, each an exact int32 sum (< 255^2 * 2^16), combined in int64 (the
    exact sum < 2^38) and rounded as attend_fwd rounds it."""
    rows, h_n, e = q.shape
    kv_n = k.shape[1]
    g = h_n // kv_n
    ke = (e + 63) // 64
    n_groups = (t_n + 15) // 16
    n_tiles = (t_n + 63) // 64
    out = np.empty((rows, h_n * e), np.int64)
    for pair in prange((rows // t_n) * kv_n):
        w, kh = pair // kv_n, pair % kv_n
        base = w * t_n
        kt = np.zeros((n_groups, ke, 16, 64), np.int8)
        vt0 = np.zeros((e // 16, n_tiles, 16, 64), np.uint8)
        vt1 = np.zeros((e // 16, n_tiles, 16, 64), np.uint8)
        vt2 = np.zeros((e // 16, n_tiles, 16, 64), np.int8)
        kw = kt.view(np.int32)  # [G, KE, 16, 16]: 4 elements of a key per word
        for j in range(t_n):
            kr = k[base + j, kh].view(np.int32)
            for c4 in range(e // 4):
                kw[j >> 4, c4 >> 4, c4 & 15, j & 15] = kr[c4]
        for j4 in range(0, t_n, 4):  # one 64-byte row of each value tile: 4 keys x 16 columns
            for cg in range(e // 16):
                r0, r1, r2 = (vt0[cg, j4 >> 6, (j4 & 63) >> 2], vt1[cg, j4 >> 6, (j4 & 63) >> 2],
                              vt2[cg, j4 >> 6, (j4 & 63) >> 2])  # fmt: skip
                for jj in range(min(4, t_n - j4)):
                    vr = v[base + j4 + jj, kh * e + 16 * cg : kh * e + 16 * cg + 16]
                    for c in range(16):
                        x = vr[c]
                        r0[4 * c + jj] = x & 255
                        r1[4 * c + jj] = (x >> 8) & 255
                        r2[4 * c + jj] = x >> 16
        qp = np.zeros((16, 64 * ke), np.int8)
        dots = np.empty((16, 16 * n_groups), np.int32)
        lg = np.empty(t_n, np.float64)
        pj = np.empty(t_n, np.float64)
        p0 = np.zeros((16, 64 * n_tiles), np.uint8)
        p1 = np.zeros((16, 64 * n_tiles), np.uint8)
        s6 = np.empty((6, 16, e), np.int32)
        for h in range(kh * g, kh * g + g):
            for t0 in range(0, t_n, 16):
                _tile_att_query_block(q, v, base, t0, min(16, t_n - t0), h, kh, e, gain, att, kt,
                                      vt0, vt1, vt2, qp, dots, lg, pj, p0, p1, s6, out)  # fmt: skip
    return out


def set_threads(n: int) -> None:
    """Threads for the parallel kernels (attend_fwd): 1 in worker processes, which already
    split the work by chunk; the cores' count when one process codes alone."""
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@njit(cache=True, nogil=True)
def attend_step(q, kc, vc, pos, gain, att):
    """One query per stream: q int8 [B, H, E], caches kc int8 [B, K, E/2, key_cols(W), 2] (keys
    as pairs of elements, _attend_heads) and vc int32 [B, K, W, E] (Q10 value rows), keys
    0..pos[b] -> y Q10 int64 [B, H*E]. The caches hold the types the loops read, so no step
    copies them. Same integers as numerics.md section 5 "Attention" (dot, logit, ATT, P, sum,
    rs)."""
    b_n, h_n, e = q.shape
    kv_n = kc.shape[1]
    g = h_n // kv_n
    out = np.empty((b_n, h_n * e), np.int64)
    scratch = _attend_scratch(vc.shape[2], e)
    for b in range(b_n):
        for kh in range(kv_n):
            _attend_kv(q, b, kh, g, kc[b, kh], vc[b, kh], pos[b] + 1, gain, att, scratch, out, b)
    return out


@njit(cache=True, inline="always")
def _step_linear(a, w, wq, wsum, use_quads, a_scale, ws, shift, lo, hi):
    """A linear of the decoding step: linear_quads where use_quads, else linear_i16."""
    if use_quads:
        return linear_quads(a, wq, wsum, a_scale, ws, shift, lo, hi)
    return linear_i16(a, w, a_scale, ws, shift, lo, hi)


@njit(cache=True, nogil=True)
def step_all(tokens, pos, emb_w, emb_ws, wq, wsq, wk, wsk, wv, wsv, wo, wso, wup, wsup, wdn,
             wsdn, gains, skip, cos, sin, att, kc, vc, sqd, sqe, e, cap, tn, ta, tb, lims,
             q4q, q4sq, q4k, q4sk, q4v, q4sv, q4o, q4so, q4up, q4sup, q4dn, q4sdn, q4emb, q4semb,
             use_quads):  # fmt: skip
    """One whole incremental step (engine.Engine.step) in a single compiled call: no per-op
    dispatch. Weights are stacked per layer for linear_i16 ([L, out, in] int8; emb_w [V, D]
    serves the lookup and the logits; scales [L, out] Q24), caches
    kc int8 [L, B, K, E/2, key_cols(W), 2] and vc int32 [L, B, K, W, E] (attend_step); lims = (RES_MAX, H_MAX, V_MAX, LOGIT_MAX, AQ).
    Composes exactly the row kernels above, in the order of Engine._layers and _logits. With
    use_quads the linears run in linear_quads on the q4* arrays: quad_cols of each stack and of
    emb_w, and their row sums ([L, N/16, K4, 64] and [L, N] for the layers; separate arguments,
    as numba's parallel loops take no tuples of arrays)."""
    res_max, h_max, v_max, logit_max, aq = lims[0], lims[1], lims[2], lims[3], lims[4]
    big = np.int64(9223372036854775807)
    b_n = tokens.shape[0]
    d = emb_w.shape[1]
    n_layer = wq.shape[0]
    kv_n = kc.shape[2]
    x = np.empty((b_n, d), np.int64)
    for b in range(b_n):
        t = tokens[b]
        for c in range(d):
            x[b, c] = _rs(np.int64(emb_w[t, c]) * emb_ws[t], 12)
    n_enc = n_layer // 2
    skips = np.empty((max(n_enc, 1), b_n, d), np.int64)
    ns = 0
    for i in range(n_layer):
        if i >= n_enc and ns > 0:
            ns -= 1
            for b in range(b_n):
                for c in range(d):
                    v = x[b, c] + _rs(skips[ns, b, c] * skip[i - n_enc, c], 24)
                    x[b, c] = min(max(v, -res_max), res_max)
        a, s = normquant(x, sqd, aq)
        y = _step_linear(a, wq[i], q4q[i], q4sq[i], use_quads, s, wsq[i], 20, -big, big)
        q = qk_rows(y, pos, cos, sin, sqe, e)
        y = _step_linear(a, wk[i], q4k[i], q4sk[i], use_quads, s, wsk[i], 20, -big, big)
        k = qk_rows(y, pos, cos, sin, sqe, e)
        vv = _step_linear(a, wv[i], q4v[i], q4sv[i], use_quads, s, wsv[i], 22, -v_max, v_max)
        for b in range(b_n):
            p = pos[b]
            for h in range(kv_n):
                for c in range(e):
                    kc[i, b, h, c >> 1, p, c & 1] = np.int8(k[b, h, c])
                    vc[i, b, h, p, c] = np.int32(vv[b, h * e + c])
        y = attend_step(q, kc[i], vc[i], pos, gains[i], att)
        a, s = absquant(y, 14, aq)
        o = _step_linear(a, wo[i], q4o[i], q4so[i], use_quads, s, wso[i], 20, -big, big)
        for b in range(b_n):
            for c in range(d):
                x[b, c] = min(max(x[b, c] + o[b, c], -res_max), res_max)
        a, s = normquant(x, sqd, aq)
        hid = _step_linear(a, wup[i], q4up[i], q4sup[i], use_quads, s, wsup[i], 20, -h_max, h_max)
        a, s = relu2_absquant(hid, 0, aq)
        dn = _step_linear(a, wdn[i], q4dn[i], q4sdn[i], use_quads, s, wsdn[i], 20, -big, big)
        for b in range(b_n):
            for c in range(d):
                x[b, c] = min(max(x[b, c] + dn[b, c], -res_max), res_max)
        if i < n_enc:
            skips[ns] = x
            ns += 1
    a, s = normquant(x, sqd, aq)
    lg = _step_linear(a, emb_w, q4emb, q4semb, use_quads, s, emb_ws, 16, -logit_max,
                      logit_max)  # fmt: skip
    if cap == 0:
        return lg
    return softcap_rows(lg, cap, tn, ta, tb)
