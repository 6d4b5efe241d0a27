"""Fused CPU kernels (numba) for the engine's row operations.

Each function computes exactly the integers that format_spec/numerics.md defines and that the
torch reference in lmzip/engine.py computes (tests compare them on every path); fusing turns a
dozen passes over int64 temporaries into one pass, and the attention kernel skips masked keys.
Serial kernels: lmzip parallelizes across worker processes, and a parallel launch costs more
than the work at decoding batch sizes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


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
def _rs(v, s):
    return (v + (np.int64(1) << (s - 1))) >> s


@njit(cache=True)
def att_probs(dot, gain, lim, att):
    """dot f32 [N, Tq, Tk] (exact integers), gain int64 [N], lim int64 [N, Tq] (key j allowed
    iff j <= lim), att int64 table -> Q16 probabilities as float64 [N, Tq, Tk] (0 if masked)."""
    n, tq, tk = dot.shape
    out = np.zeros((n, tq, tk), np.float64)
    last = att.shape[0] - 1
    for r in prange(n * tq):
        b, i = r // tq, r % tq
        g = gain[b]
        hi = min(lim[b, i], tk - 1)
        lg = np.empty(hi + 1, np.int64)
        m = np.int64(-(1 << 62))
        for j in range(hi + 1):
            v = _rs(np.int64(dot[b, i, j]) * g, 16)
            lg[j] = v
            m = max(m, v)
        s = np.int64(0)
        for j in range(hi + 1):
            w = att[min((m - lg[j]) >> 8, last)]
            lg[j] = w
            s += w
        inv = 1.0 / np.float64(s)
        for j in range(hi + 1):
            out[b, i, j] = np.float64(_floordiv_est(lg[j] << 16, s, inv))
    return out


@njit(cache=True, inline="always")
def _floordiv_est(n, d, inv):
    """floor(n / d) for 0 <= n < 2^47, 0 < d < 2^41: a float estimate (within 1 of the
    quotient, since the relative error is < 2^-50) corrected with exact integer products."""
    q = np.int64(np.float64(n) * inv)
    if q * d > n:
        q -= 1
    elif (q + 1) * d <= n:
        q += 1
    return q


@njit(cache=True)
def normquant(x, sqd, aq):
    """Rows x int64 [N, D] Q12 -> (int64 [N, D] in [-aq, aq], Q24 scale [N]): RMSNorm + 15-bit
    quantization; squares of x >> k with k = max(0, bitlength(amax) - 24) (numerics.md)."""
    n, d = x.shape
    a = np.empty((n, d), np.int64)
    scale = np.empty(n, np.int64)
    for r in range(n):
        amax = np.int64(0)
        for c in range(d):
            v = x[r, c]
            av = -v if v < 0 else v
            if av > amax:
                amax = av
        k = np.int64(0)
        while (amax >> (k + 24)) > 0:
            k += 1
        ss = np.int64(0)
        for c in range(d):
            v = x[r, c] >> k
            ss += v * v
        root = _isqrt(ss) << k
        for c in range(d):
            a[r, c] = _rdiv(aq * x[r, c], amax)
        scale[r] = _rdiv(amax * (sqd << 8), aq * root)
    return a, scale


@njit(cache=True)
def absquant(y, shift, aq):
    """Rows y int64 [N, M] -> (int64 in [-aq, aq], Q24 scale = rdiv(amax << shift, aq))."""
    n, m = y.shape
    a = np.empty((n, m), np.int64)
    scale = np.empty(n, np.int64)
    for r in range(n):
        amax = np.int64(0)
        for c in range(m):
            v = y[r, c]
            av = -v if v < 0 else v
            if av > amax:
                amax = av
        for c in range(m):
            a[r, c] = _rdiv(aq * y[r, c], amax)
        scale[r] = _rdiv(amax << shift, np.int64(aq))
    return a, scale


@njit(cache=True)
def rescale(acc, a_scale, ws, shift, lo, hi):
    """Linear epilogue: clamp(rs(rs(acc * A, 16) * WS, shift), lo, hi) for acc [N, M]."""
    n, m = acc.shape
    out = np.empty((n, m), np.int64)
    for r in prange(n):
        s = a_scale[r]
        for c in range(m):
            t = _rs(np.int64(acc[r, c]) * s, 16)
            v = _rs(t * ws[c], shift)
            out[r, c] = min(max(v, lo), hi)
    return out


@njit(cache=True)
def qk_rows(y, pos, cos, sin, sqe, e):
    """[N, n*E] Q12 rows at positions pos [N] -> QK-normed, rotated int8 [N, n, E]."""
    n, w = y.shape
    heads = w // e
    half = e // 2
    lim = (1 << 24) - 1
    out = np.empty((n, heads, e), np.int8)
    for r in prange(n):
        p = pos[r]
        for h in range(heads):
            base = h * e
            ss = np.int64(0)
            for c in range(e):
                v = min(max(y[r, base + c], -lim), lim)
                ss += v * v
            root = _isqrt(ss)
            for c in range(half):
                v1 = min(max(y[r, base + c], -lim), lim)
                v2 = min(max(y[r, base + c + half], -lim), lim)
                n1 = _rdiv(v1 * sqe, 16 * root)
                n2 = _rdiv(v2 * sqe, 16 * root)
                cc, sn = cos[p, c], sin[p, c]
                r1 = _rs(_rs(n1 * cc + n2 * sn, 30), 8)
                r2 = _rs(_rs(n2 * cc - n1 * sn, 30), 8)
                out[r, h, c] = min(max(r1, -127), 127)
                out[r, h, c + half] = min(max(r2, -127), 127)
    return out


@njit(cache=True, inline="always")
def _exp30(x, tn, ta, tb):
    """numerics.md section 2: 2^30 exp(-x / 2^16) for x >= 0."""
    n = x >> 16
    if n >= tn.shape[0]:
        return np.int64(0)
    v = _rs(tn[n] * ta[(x >> 8) & 255], 30)
    return _rs(v * tb[x & 255], 30)


@njit(cache=True)
def softcap_rows(logits, cap, tn, ta, tb):
    """Q16 logits [N, V] -> cap * tanh(l / cap) in Q16 (numerics.md section 6)."""
    n, v = logits.shape
    out = np.empty((n, v), np.int64)
    one = np.int64(1) << 30
    for r in prange(n):
        for c in range(v):
            lv = logits[r, c]
            y = -lv if lv < 0 else lv
            e = _exp30((2 * y) // cap, tn, ta, tb)
            t = ((one - e) << 30) // (one + e)
            mag = _rs(cap * t, 14)
            out[r, c] = -mag if lv < 0 else mag
    return out


@njit(cache=True)
def probs_rows(capped, tn, ta, tb):
    """Capped Q16 logits [N, V] -> Q30 probabilities exp30(max - capped)."""
    n, v = capped.shape
    out = np.empty((n, v), np.int64)
    for r in prange(n):
        m = capped[r, 0]
        for c in range(v):
            m = max(m, capped[r, c])
        for c in range(v):
            out[r, c] = _exp30(m - capped[r, c], tn, ta, tb)
    return out


@njit(cache=True)
def freq_rows(p, precision):
    """Q30 probabilities [N, V] -> frequency tables (numerics.md section 6)."""
    n, v = p.shape
    total = np.int64(1) << precision
    out = np.empty((n, v), np.int64)
    for r in prange(n):
        s = np.int64(0)
        top = 0
        for c in range(v):
            s += p[r, c]
            if p[r, c] > p[r, top]:
                top = c
        acc = np.int64(0)
        for c in range(v):
            f = 1 + (p[r, c] * (total - v)) // s
            out[r, c] = f
            acc += f
        out[r, top] += total - acc
    return out


@njit(cache=True)
def attend_step(q, kc, vc, pos, gain, att):
    """One query per stream: q int8 [B, H, E], caches kc int8 [B, K, W, E] and vc int32 Q10
    [B, K, W, E], keys 0..pos[b] -> y Q10 int64 [B, H*E].
    Same integers as numerics.md section 5 "Attention" (dot, logit, ATT, P, sum, rs)."""
    b_n, h_n, e = q.shape
    g = h_n // kc.shape[1]
    last = att.shape[0] - 1
    out = np.empty((b_n, h_n * e), np.int64)
    for b in range(b_n):
        n = pos[b] + 1
        lg = np.empty(n, np.int64)
        acc = np.empty(e, np.int64)
        for h in range(h_n):
            kh = h // g
            m = np.int64(-(1 << 62))
            for j in range(n):
                d = np.int32(0)  # |dot| < 2^22: int32 is exact and vectorizes
                for c in range(e):
                    d += np.int32(q[b, h, c]) * np.int32(kc[b, kh, j, c])
                v = _rs(np.int64(d) * gain[h], 16)
                lg[j] = v
                if v > m:
                    m = v
            s = np.int64(0)
            for j in range(n):
                w = att[min((m - lg[j]) >> 8, last)]
                lg[j] = w
                s += w
            acc[:] = 0
            for j in range(n):
                p = (lg[j] << 16) // s
                if p == 0:
                    continue
                for c in range(e):
                    acc[c] += p * np.int64(vc[b, kh, j, c])
            for c in range(e):
                out[b, h * e + c] = _rs(acc[c], 16)
    return out
