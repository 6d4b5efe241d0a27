"""Integer core of the adaptive mixer: tables, hashes, state layout, per-bit predict and update.

Everything here is exact integer arithmetic (format_spec/mixer.md sections 2-4). The state of one
chunk lives in three numpy arrays so that numba loops can pass it around without a jitclass:

- ``head`` int64[H_SIZE + V + 1]: scalars (H_*), per-token scratch and the prefix sum of p.
- ``body`` int32[...]: every table (squash, stretch, rates, hashed buckets, weights, APMs, match).
- ``hist`` int32[max_tokens]: the chunk's tokens so far (the match model reads it).
"""

from numba import njit

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
CNT_BITS = 9  # bucket entry = p22 << 9 | count
CNT_MASK = (1 << CNT_BITS) - 1
ENTRY_INIT = (1 << 21) << CNT_BITS  # p = 1/2, count 0
MAX_MODELS = 8
WMAX = 1 << 22  # mixer weights are 16.16 fixed point, clamped to [-WMAX, WMAX]
NIN_MAX = MAX_MODELS + 4  # LM, context models, match, order-0 node, bias

# head scalars
H_V, H_B, H_N, H_NM, H_NIN = 0, 1, 2, 3, 4
H_LIMIT, H_LR, H_APMRATE, H_MMIN, H_MAXTOK = 5, 6, 7, 8, 9
H_NODE, H_D, H_MPTR, H_MLEN, H_MEXP, H_MBIT = 10, 11, 12, 13, 14, 15
H_PMIX, H_DOT, H_WSET, H_A1, H_A2, H_PFIN, H_MSM = 16, 17, 18, 19, 20, 21, 22
H_NBMASK, H_MMMASK, H_A2MASK = 23, 24, 25
# offsets into body
H_OSQ, H_OST, H_ORT, H_OMEM, H_OW, H_OA1, H_OA2, H_OMM, H_OSM = 26, 27, 28, 29, 30, 31, 32, 33, 34
H_WSET2, H_PMIX2 = 35, 36
H_ORD = 40  # MAX_MODELS orders
H_CTX = 48  # MAX_MODELS context hashes of the current token
H_BASE = 56  # MAX_MODELS bucket bases of the current nibble group
H_X = 64  # NIN_MAX mixer inputs of the current bit
H_SLOT = 80  # MAX_MODELS entry indices of the current bit
H_SIZE = 96  # prefix sum of p starts here: head[H_SIZE + t] = p[0] + ... + p[t - 1]

# Weight sets: mixer 1 by LM confidence x match state x highest order that knows the context,
# mixer 2 by bit depth x match state.
N_WSETS1 = 4 * 3 * (MAX_MODELS + 1)
N_WSETS = N_WSETS1 + 16 * 3
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
def _token_begin(head, body, hist, p):
    """Per-token set-up (spec 5.1): prefix sum of p, context hashes, expected token."""
    V = head[H_V]
    s = 0
    head[H_SIZE] = 0
    for t in range(V):
        s += p[t]
        head[H_SIZE + t + 1] = s
    n = head[H_N]
    for m in range(head[H_NM]):
        k = head[H_ORD + m]
        h = (k * M2) & MASK32
        for j in range(1, k + 1):
            h = _hstep(h, hist[n - j] if n - j >= 0 else 65536)
        head[H_CTX + m] = h
    head[H_MEXP] = hist[head[H_MPTR]] if head[H_MLEN] > 0 else -1
    head[H_NODE] = 1
    head[H_D] = 0


@njit(cache=True)
def _find_bucket(body, head, h):
    """Index of the 16-entry bucket for hash h (spec 4.1): tag match in 2 candidates or replace."""
    omem = head[H_OMEM]
    tag = (((h * M1) & MASK32) >> 16) + 1
    i0 = h & head[H_NBMASK]
    i1 = i0 ^ 1
    b0 = omem + 16 * i0
    b1 = omem + 16 * i1
    if body[b0] == tag:
        return b0
    if body[b1] == tag:
        return b1
    # replace the candidate whose first node has seen fewer bits (ties: the first)
    b = b1 if (body[b1 + 1] & CNT_MASK) < (body[b0 + 1] & CNT_MASK) else b0
    body[b] = tag
    for j in range(1, 16):
        body[b + j] = ENTRY_INIT
    return b


@njit(cache=True)
def _bit_predict(head, body, hist):
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
            head[H_BASE + m] = _find_bucket(body, head, h)
    jn = (1 << g) | (pre & ((1 << g) - 1))
    known = 0  # weight-set context (spec 5.2)
    for m in range(nm):
        slot = head[H_BASE + m] + jn
        e = body[slot]
        head[H_SLOT + m] = slot
        head[H_X + 1 + m] = stretch(body, head, e >> (CNT_BITS + 6))
        if e & CNT_MASK:
            known = m + 1  # models are in increasing order: the highest order that has seen it
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
    ax = abs(x0)
    conf = 0 if ax < 256 else (1 if ax < 1024 else (2 if ax < 2048 else 3))
    wset = ((conf * 3 + mstate) * (MAX_MODELS + 1) + known) * NIN_MAX
    head[H_WSET] = wset
    wset2 = (N_WSETS1 + d * 3 + mstate) * NIN_MAX
    head[H_WSET2] = wset2
    ow = head[H_OW] + wset
    ow2 = head[H_OW] + wset2
    dot1 = 0
    dot2 = 0
    for i in range(nm + 3):
        dot1 += body[ow + i] * head[H_X + i]
        dot2 += body[ow2 + i] * head[H_X + i]
    dot1 = min(max(dot1 >> 16, -XMAX), XMAX)
    dot2 = min(max(dot2 >> 16, -XMAX), XMAX)
    head[H_PMIX] = squash(body, head, dot1)
    head[H_PMIX2] = squash(body, head, dot2)
    dot = (dot1 + dot2) >> 1
    head[H_DOT] = dot
    pmix = squash(body, head, dot)
    # APMs: interpolate between the two grid points around dot, later train the nearer one
    z = dot + 3072
    k = z >> 7
    f = z & 127
    a1 = head[H_OA1] + (node & (APM1_SIZE - 1)) * NKNOT + k
    pa1 = (body[a1] * (128 - f) + body[a1 + 1] * f) >> 13
    prev = hist[head[H_N] - 1] if head[H_N] > 0 else 65536
    c2 = _hfin(_hstep(_hstep(0, prev), node)) & head[H_A2MASK]
    a2 = head[H_OA2] + c2 * NKNOT + k
    pa2 = (body[a2] * (128 - f) + body[a2 + 1] * f) >> 13
    head[H_A1] = a1 + (f >> 6)
    head[H_A2] = a2 + (f >> 6)
    pf = (pmix + pa1 + 2 * pa2 + 2) >> 2
    pf = min(max(pf, 1), PONE - 1)
    head[H_PFIN] = pf
    return pf


@njit(cache=True)
def _bit_update(head, body, bit):
    """Train every component on the coded bit, then descend the tree (spec 5.2, Update)."""
    nm = head[H_NM]
    err = ((bit << 16) - head[H_PMIX]) * head[H_LR]
    err2 = ((bit << 16) - head[H_PMIX2]) * head[H_LR]
    ow = head[H_OW] + head[H_WSET]
    ow2 = head[H_OW] + head[H_WSET2]
    for i in range(nm + 3):
        x = head[H_X + i]
        # weights stay in [-WMAX, WMAX] (|w| <= 64.0) so int32 storage never wraps
        body[ow + i] = min(max(body[ow + i] + ((x * err + (1 << 17)) >> 18), -WMAX), WMAX)
        body[ow2 + i] = min(max(body[ow2 + i] + ((x * err2 + (1 << 17)) >> 18), -WMAX), WMAX)
    ort = head[H_ORT]
    limit = head[H_LIMIT]
    target = bit << 22
    for m in range(nm):
        slot = head[H_SLOT + m]
        e = body[slot]
        p = e >> CNT_BITS
        c = e & CNT_MASK
        p += ((target - p) * body[ort + c]) >> 16
        if c < limit:
            c += 1
        body[slot] = (p << CNT_BITS) | c
    if head[H_MSM] >= 0:
        i = head[H_OSM] + head[H_MSM]
        body[i] += (((1 if bit == head[H_MBIT] else 0) << 22) - body[i]) >> 6
    r = head[H_APMRATE]
    a = head[H_A1]
    body[a] += (target - body[a]) >> r
    a = head[H_A2]
    body[a] += (target - body[a]) >> r
    head[H_NODE] = 2 * head[H_NODE] + bit
    head[H_D] += 1


@njit(cache=True)
def _token_end(head, body, hist, tok):
    """Append tok to the history; advance or look up the match model (spec 5.3)."""
    n = head[H_N]
    hist[n] = tok
    n += 1
    head[H_N] = n
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
