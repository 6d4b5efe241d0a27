"""Integer building blocks of the adaptive mixer: squash/stretch tables, hashes, state layout.

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
