"""Integer core of the adaptive mixer: tables, hashes, state layout, per-bit predict and update.

Everything here is exact integer arithmetic (format_spec/mixer.md sections 2-4). The state of one
chunk lives in four numpy arrays so that numba loops can pass it around without a jitclass:

- ``head`` int64[H_SIZE + V + 1]: scalars (H_*), per-token scratch and the prefix sum of p.
- ``body`` int32[...]: every table but the buckets (squash, stretch, rates, weights, APMs, match).
- ``mem`` uint16[16 << hash_bits]: the context models' hashed buckets (16 entries of 16 bits).
- ``hist`` int32[max_tokens]: the chunk's tokens so far (the match model reads it).

Version 2 (format_spec/mixer.md): order-0 and indirect context models, two SSE-of-LM inputs,
four layer-1 mixers (weight sets by confidence/match/known order, depth, tree node, previous
token) combined by a layer-2 mixer, then the two APMs of version 1. Version 3: 16-bit bucket
entries (12-bit probability, 4-bit count) and four candidate buckets per hash.
"""

import numpy as np
from numba import njit

from lmzip.simd import prefetch

# Stretch domain: x = round(256 * ln(p / (1 - p))), clamped to [-XMAX, XMAX]; probabilities are
# 16-bit (p1 in [1, 65535] means P(bit = 1) = p1 / 65536).
XMAX = 3071
PBITS = 16
PONE = 1 << PBITS
# squash(x) at x = 128 * (k - 24), k = 0..48: round(65536 / (1 + exp(-(k - 24) / 2))) in [1, 65535].
SQUASH_KNOTS = (
    1, 1, 1, 2, 3, 5, 8, 13, 22, 36, 60, 98, 162, 267, 439, 720, 1179, 1921, 3108, 4971, 7812,
    11955, 17625, 24743, 32768, 40793, 47911, 53581, 57724, 60565, 62428, 63615, 64357, 64816,
    65097, 65269, 65374, 65438, 65476, 65500, 65514, 65523, 65528, 65531, 65533, 65534, 65535,
    65535, 65535,
)  # fmt: skip
NKNOT = 49  # APM interpolation points use the same grid
MASK32 = 0xFFFFFFFF
M1 = 0x6A09E667  # odd, < 2^31: h < 2^32 times M1 stays below 2^63 in int64
M2 = 0x3C6EF373
P22 = 1 << 22  # adaptive probabilities are kept with 22 bits
CNT_BITS = 4  # bucket entry (uint16) = p12 << 4 | count
CNT_MASK = (1 << CNT_BITS) - 1
ENTRY_INIT = (1 << 11) << CNT_BITS  # p = 1/2, count 0
WAYS = 4  # a hash may live in any of 4 neighbouring buckets (an aligned group of 128 bytes)
MAX_MODELS = 8
WMAX = 1 << 22  # mixer weights are 16.16 fixed point, clamped to [-WMAX, WMAX]
NIN_MAX = MAX_MODELS + 5  # LM, context models, match, bias, 2 SSE-of-LM inputs
IND_MIN, IND_MAX = 33, 35  # order codes 33..35: indirect models of order 1..3 (spec 5.1)
LMC_MIN, LMC_MAX = 40, 42  # codes 40..42: the LM's most probable token + the last k - 40 tokens

# head scalars
H_V, H_B, H_N, H_NM, H_NIN = 0, 1, 2, 3, 4
H_LIMIT, H_LR, H_APMRATE, H_MMIN, H_MAXTOK = 5, 6, 7, 8, 9
H_NODE, H_D, H_MPTR, H_MLEN, H_MEXP, H_MBIT = 10, 11, 12, 13, 14, 15
H_PMIX, H_DOT, H_WSET, H_A1, H_A2, H_PFIN, H_MSM = 16, 17, 18, 19, 20, 21, 22
H_NBMASK, H_MMMASK, H_A2MASK = 23, 24, 25
# offsets into body
H_OSQ, H_OST, H_ORT, H_OW, H_OA1, H_OA2, H_OMM, H_OSM = 26, 27, 28, 30, 31, 32, 33, 34
H_OW2, H_OS1, H_OS2, H_S1, H_S2, H_OIND = 35, 36, 37, 38, 39, 40
H_ORD = 48  # MAX_MODELS orders
H_CTX = H_ORD + MAX_MODELS  # context hashes of the current token
H_BASE = H_CTX + MAX_MODELS  # bucket bases of the current nibble group
H_SLOT = H_BASE + MAX_MODELS  # entry indices of the current bit
H_WS = H_SLOT + MAX_MODELS  # NMIX weight-set offsets (layer 1) of the current bit
H_PM = H_WS + 8  # NMIX layer-1 outputs squash(dot_k)
H_X2 = H_PM + 8  # NMIX layer-1 outputs in the stretch domain (layer-2 inputs)
H_X = H_X2 + 8  # NIN_MAX mixer inputs of the current bit
H_SIZE = H_X + NIN_MAX  # prefix sum of p starts here: head[H_SIZE + t] = p[0] + ... + p[t - 1]

# Layer-1 weight sets (spec 5.2): mixer 0 by LM confidence x match state x highest order that
# knows the context, mixer 1 by bit depth x match state, mixer 2 by tree node, mixer 3 by the
# previous token. Layer 2 mixes their four outputs with a weight set per bit depth x confidence.
NMIX = 4
WS_SIZES = (4 * 3 * (MAX_MODELS + 1), 16 * 3, 1024, 1025)
WS_BASE = (0, WS_SIZES[0], WS_SIZES[0] + WS_SIZES[1], WS_SIZES[0] + WS_SIZES[1] + WS_SIZES[2])
N_WSETS = WS_BASE[3] + WS_SIZES[3]
N_WSETS2 = 16 * 4
LR2 = 1
SSE_BITS = 14  # SSE-of-LM tables: 2^14 contexts x 49 points each, two tables
SSE_RATE = 6
IND_BITS = 16  # indirect tables: 2^16 int32 entries each, one per order 1..3
N_IND = IND_MAX - IND_MIN + 1
SM_SIZE = 64  # match model: 32 length buckets x (expected bit agrees so far)
APM1_SIZE = 4096  # APM1 context: node index (bit-tree position), folded to 12 bits


@njit(cache=True)
def _hstep(h, x):
    """One hash step over h < 2^32 and a token or sentinel x <= 65536 (spec 3)."""
    return ((h + x + 1) * M1) & MASK32


@njit(cache=True)
def _hfin(h):
    """Final avalanche of a 32-bit hash (spec 3)."""
    h ^= h >> 15
    h = (h * M2) & MASK32
    return h ^ (h >> 13)


@njit(cache=True)
def _fill_tables(body, osq, ost, ort, knots):
    """squash, stretch and adaptation-rate tables (spec 2): integer only, identical everywhere."""
    for i in range(2 * XMAX + 1):
        z = i - XMAX + 3072  # 1..6143, knot spacing 128
        k = z >> 7
        f = z & 127
        body[osq + i] = (knots[k] * (128 - f) + knots[k + 1] * f + 64) >> 7
    # stretch(p) = smallest x with squash(x) >= p, or XMAX if there is none.
    j = 0
    for i in range(2 * XMAX + 1):
        v = body[osq + i]
        while j <= v and j < PONE:
            body[ost + j] = i - XMAX
            j += 1
    while j < PONE:
        body[ost + j] = XMAX
        j += 1
    for n in range(CNT_MASK + 1):
        body[ort + n] = 131072 // (2 * n + 3)


@njit(cache=True)
def squash(body, head, x):
    if x > XMAX:
        x = XMAX
    elif x < -XMAX:
        x = -XMAX
    return body[head[H_OSQ] + x + XMAX]


@njit(cache=True)
def stretch(body, head, p):
    return body[head[H_OST] + p]


@njit(cache=True)
def _ctx(hist, n, k):
    """Hash of the k tokens before position n (spec 3), sentinels before the chunk start."""
    g = 0
    for j in range(1, k + 1):
        g = _hstep(g, hist[n - j] if n - j >= 0 else 65536)
    return g


@njit(cache=True)
def _token_begin(head, body, hist, p):
    """Per-token set-up (spec 5.1): prefix sum of p, context hashes, expected token."""
    V = head[H_V]
    s = 0
    head[H_SIZE] = 0
    best = 0
    for t in range(V):
        s += p[t]
        head[H_SIZE + t + 1] = s
        if p[t] > p[best]:
            best = t
    n = head[H_N]
    imask = (1 << IND_BITS) - 1
    for m in range(head[H_NM]):
        k = head[H_ORD + m]
        h = (k * M2) & MASK32
        if k < IND_MIN:
            for j in range(1, k + 1):
                h = _hstep(h, hist[n - j] if n - j >= 0 else 65536)
        elif k >= LMC_MIN:
            # the LM's most probable token (lowest index on ties), with the last k - 40 tokens
            h = _hstep(h, best)
            for j in range(1, k - LMC_MIN + 1):
                h = _hstep(h, hist[n - j] if n - j >= 0 else 65536)
        else:
            # indirect: the last two tokens that followed the order-q context, and tok(n - 1)
            q = k - IND_MIN
            fol = body[head[H_OIND] + (q << IND_BITS) + (_hfin(_ctx(hist, n, q + 1)) & imask)]
            h = _hstep(_hstep(h, fol), hist[n - 1] if n >= 1 else 65536)
        head[H_CTX + m] = h
    head[H_MEXP] = hist[head[H_MPTR]] if head[H_MLEN] > 0 else -1
    head[H_NODE] = 1
    head[H_D] = 0


@njit(cache=True)
def _find_bucket(mem, head, h):
    """Index of the 16-entry bucket for hash h (spec 4.1): tag match among WAYS candidates, or
    replace the candidate whose first node has seen the fewest bits (ties: the first)."""
    tag = (((h * M1) & MASK32) >> 16) % 65535 + 1
    i0 = h & head[H_NBMASK]
    best = -1
    bc = 1 << 30
    for w in range(WAYS):
        b = 16 * (i0 ^ w)
        if mem[b] == tag:
            return b
        c = mem[b + 1] & CNT_MASK
        if c < bc:
            bc = c
            best = b
    mem[best] = tag
    for j in range(1, 16):
        mem[best + j] = ENTRY_INIT
    return best


@njit(cache=True)
def prefetch_buckets(head, mem, tok, known):
    """After _token_begin, hint the cache with the bucket groups that every model's
    _find_bucket will read for the token (the aligned group of the WAYS candidate buckets, 128
    bytes) at the depths d = 0, 4, 8, ... below `known` where the lookups happen: the encoder
    knows the whole token (known = B), the decoder only that the first lookup is at node 1
    (known = 1, tok unused). The table's cache misses then overlap instead of coming one model
    after another. A hint only: no value depends on it."""
    B = head[H_B]
    for d in range(0, min(known, B), 4):
        node = (1 << d) | (tok >> (B - d))
        for m in range(head[H_NM]):
            h = _hfin(_hstep(_hstep(head[H_CTX + m], m), node))
            group = 16 * ((h & head[H_NBMASK]) & ~(WAYS - 1))
            prefetch(mem, group)
            prefetch(mem, group + 32)


@njit(cache=True)
def _interp(body, a, f):
    """APM-style interpolation between points a and a + 1 (weight f / 128 on a + 1)."""
    return (body[a] * (128 - f) + body[a + 1] * f) >> 13


@njit(cache=True)
def _bit_predict(head, body, mem, hist):
    """P(next bit = 1) in [1, 65535], or -1 when the bit is forced to 0 (spec 5.2)."""
    V = head[H_V]
    B = head[H_B]
    d = head[H_D]
    node = head[H_NODE]
    pre = node - (1 << d)
    sh = B - d
    lo = pre << sh
    mid = lo + (1 << (sh - 1))
    if mid >= V:
        return -1
    hi = min(lo + (1 << sh), V)
    m0 = head[H_SIZE + mid] - head[H_SIZE + lo]
    m1 = head[H_SIZE + hi] - head[H_SIZE + mid]
    if m0 + m1 == 0:
        plm = PONE >> 1
    else:
        plm = min(max((m1 << 16) // (m0 + m1), 1), PONE - 1)
    x0 = stretch(body, head, plm)
    head[H_X] = x0
    nm = head[H_NM]
    g = d & 3
    if g == 0:
        for m in range(nm):
            h = _hfin(_hstep(_hstep(head[H_CTX + m], m), node))
            head[H_BASE + m] = _find_bucket(mem, head, h)
    jn = (1 << g) | (pre & ((1 << g) - 1))
    known = 0  # weight-set context (spec 5.2)
    for m in range(nm):
        slot = head[H_BASE + m] + jn
        e = np.int64(mem[slot])
        head[H_SLOT + m] = slot
        head[H_X + 1 + m] = stretch(body, head, (e >> CNT_BITS) << 4)
        if e & CNT_MASK:
            known = m + 1  # the last model in the order list that has seen it
    mexp = head[H_MEXP]
    mstate = 0
    xm = 0
    head[H_MSM] = -1
    if mexp >= 0 and (mexp >> sh) == pre:
        ebit = (mexp >> (sh - 1)) & 1
        mlen = head[H_MLEN]
        lb = mlen if mlen < 16 else min(16 + ((mlen - 16) >> 2), 31)
        idx = 2 * lb + (1 if d > 0 else 0)
        st = stretch(body, head, body[head[H_OSM] + idx] >> 6)
        xm = st if ebit else -st
        mstate = 1 if lb < 12 else 2
        head[H_MSM] = idx
        head[H_MBIT] = ebit
    head[H_X + 1 + nm] = xm
    head[H_X + 2 + nm] = 256
    # SSE of the LM: per (context, node) maps of the LM's stretch, interpolated like the APMs
    n = head[H_N]
    prev = hist[n - 1] if n > 0 else 65536
    prev2 = hist[n - 2] if n > 1 else 65536
    z0 = x0 + 3072
    k0 = z0 >> 7
    f0 = z0 & 127
    smask = (1 << SSE_BITS) - 1
    h2 = _hstep(_hstep(_hstep(0x2B992D, prev2), prev), node)
    s1 = head[H_OS1] + (_hfin(_hstep(_hstep(0x51ED27, prev), node)) & smask) * NKNOT + k0
    s2 = head[H_OS2] + (_hfin(h2) & smask) * NKNOT + k0
    head[H_S1] = s1 + (f0 >> 6)
    head[H_S2] = s2 + (f0 >> 6)
    head[H_X + 3 + nm] = stretch(body, head, min(max(_interp(body, s1, f0), 1), PONE - 1))
    head[H_X + 4 + nm] = stretch(body, head, min(max(_interp(body, s2, f0), 1), PONE - 1))
    nin = head[H_NIN]
    # layer 1: four weight sets selected by different contexts
    ax = abs(x0)
    conf = 0 if ax < 256 else (1 if ax < 1024 else (2 if ax < 2048 else 3))
    head[H_WS + 0] = (WS_BASE[0] + (conf * 3 + mstate) * (MAX_MODELS + 1) + known) * NIN_MAX
    head[H_WS + 1] = (WS_BASE[1] + d * 3 + mstate) * NIN_MAX
    head[H_WS + 2] = (WS_BASE[2] + (node & 1023)) * NIN_MAX
    head[H_WS + 3] = (WS_BASE[3] + (prev if prev < 1024 else 1024)) * NIN_MAX
    ow = head[H_OW]
    ow2 = head[H_OW2] + (d * 4 + conf) * NMIX
    head[H_WSET] = ow2
    dotf = 0
    for k in range(NMIX):
        o = ow + head[H_WS + k]
        dk = 0
        for i in range(nin):
            dk += body[o + i] * head[H_X + i]
        dk = min(max(dk >> 16, -XMAX), XMAX)
        head[H_PM + k] = squash(body, head, dk)
        head[H_X2 + k] = dk
        dotf += body[ow2 + k] * dk
    # layer 2
    dot = min(max(dotf >> 16, -XMAX), XMAX)
    head[H_DOT] = dot
    pmix = squash(body, head, dot)
    head[H_PMIX] = pmix
    # APMs: interpolate between the two grid points around dot, later train the nearer one
    z = dot + 3072
    k = z >> 7
    f = z & 127
    a1 = head[H_OA1] + (node & (APM1_SIZE - 1)) * NKNOT + k
    c2 = _hfin(_hstep(_hstep(0, prev), node)) & head[H_A2MASK]
    a2 = head[H_OA2] + c2 * NKNOT + k
    head[H_A1] = a1 + (f >> 6)
    head[H_A2] = a2 + (f >> 6)
    pf = (pmix + _interp(body, a1, f) + 2 * _interp(body, a2, f) + 2) >> 2
    pf = min(max(pf, 1), PONE - 1)
    head[H_PFIN] = pf
    return pf


@njit(cache=True)
def _bit_update(head, body, mem, bit):
    """Train every component on the coded bit, then descend the tree (spec 5.2, Update)."""
    nm = head[H_NM]
    nin = head[H_NIN]
    ow = head[H_OW]
    lr = head[H_LR]
    for k in range(NMIX):
        err = ((bit << 16) - head[H_PM + k]) * lr
        o = ow + head[H_WS + k]
        for i in range(nin):
            # weights stay in [-WMAX, WMAX] (|w| <= 64.0) so int32 storage never wraps
            w = body[o + i] + ((head[H_X + i] * err + (1 << 17)) >> 18)
            body[o + i] = min(max(w, -WMAX), WMAX)
    err = ((bit << 16) - head[H_PMIX]) * LR2
    o = head[H_WSET]
    for k in range(NMIX):
        w = body[o + k] + ((head[H_X2 + k] * err + (1 << 17)) >> 18)
        body[o + k] = min(max(w, -WMAX), WMAX)
    ort = head[H_ORT]
    limit = head[H_LIMIT]
    target = bit << 22
    for m in range(nm):
        slot = head[H_SLOT + m]
        e = np.int64(mem[slot])
        p = e >> CNT_BITS
        c = e & CNT_MASK
        p += (((bit << 12) - p) * body[ort + c] + 32768) >> 16
        p = min(max(p, 1), 4095)
        if c < limit:
            c += 1
        mem[slot] = (p << CNT_BITS) | c
    if head[H_MSM] >= 0:
        i = head[H_OSM] + head[H_MSM]
        body[i] += (((1 if bit == head[H_MBIT] else 0) << 22) - body[i]) >> 6
    r = head[H_APMRATE]
    for key in (H_A1, H_A2):
        a = head[key]
        body[a] += (target - body[a]) >> r
    for key in (H_S1, H_S2):
        a = head[key]
        body[a] += (target - body[a]) >> SSE_RATE
    head[H_NODE] = 2 * head[H_NODE] + bit
    head[H_D] += 1


@njit(cache=True)
def _token_end(head, body, hist, tok):
    """Append tok to the history; indirect tables; advance or look up the match model (5.3)."""
    n = head[H_N]
    hist[n] = tok
    n += 1
    head[H_N] = n
    # indirect tables: the order-q context before tok -> its last two followers (10 bits each)
    imask = (1 << IND_BITS) - 1
    g = 0
    for q in range(N_IND):
        g = _hstep(g, hist[n - 2 - q] if n - 2 - q >= 0 else 65536)
        i = head[H_OIND] + (q << IND_BITS) + (_hfin(g) & imask)
        body[i] = ((body[i] << 10) | tok) & 0xFFFFF
    mlen = head[H_MLEN]
    mptr = head[H_MPTR]
    if mlen > 0 and hist[mptr] == tok:
        mlen = min(mlen + 1, 65535)
        mptr += 1
    else:
        mlen = 0
    mmin = head[H_MMIN]
    if n >= mmin:
        h = 0
        for j in range(1, mmin + 1):
            h = _hstep(h, hist[n - j])
        i = head[H_OMM] + (_hfin(h) & head[H_MMMASK])
        if mlen == 0:
            cand = body[i]
            if cand > 0:
                L = 0
                while L < 32 and cand - 1 - L >= 0 and hist[cand - 1 - L] == hist[n - 1 - L]:
                    L += 1
                if L > 0:
                    mlen = L
                    mptr = cand
        body[i] = n
    head[H_MLEN] = mlen
    head[H_MPTR] = mptr
