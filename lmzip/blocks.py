"""The teacher-forced pass between two attentions, in blocks of rows that stay in the cache.

Run one kernel at a time over all rows of a pass (CpuEngine.forward_kernels_np), the golf
shape's pass of two windows has 2,046 rows, so every intermediate (the residual stream, the
quantized activations, the MLP's hidden rows: 8 bytes a value) is 8-17 MB and each kernel
streams its input and output through the L3 cache. Everything but the attention works row by
row, so a block of 64 or 128 rows can run through several kernels before the next block: the
block's temporaries (the widest, its rows of the MLP's hidden width or of the vocabulary, 1 MB
at the golf shape) stay in the core's L2 cache. Three fused stages per pass:

- `pre_attention`: the decoder layers' skip connection, RMSNorm + quantization, the q, k and v
  linears, QK-norm and RoPE of q and k (the attention's inputs for every row);
- `post_attention`: the attention output's quantization, its projection and residual add, the
  MLP (RMSNorm, up, relu^2, down) and its residual add;
- `head`: the last RMSNorm, the logits, the softcap and (`probs`) the Q30 probabilities.

Each block runs the very kernels of lmzip.rowops on its rows, so the integers are those of
forward_kernels_np (tests compare the two). The linear of each matrix is chosen by the engine (`kind`:
AMX tiles, weight pairs or linear_i16, after their self-tests), with its weights in the three
layouts (an unused layout is a 1-element placeholder). The `_par` forms run the blocks on
numba's threads; with one thread (a pass per core) the serial forms run. `rows`: rows per
block (block_rows).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lmzip import rowops
from lmzip.simd import HAS_AMX

# Rows per block. Each block reads the layer's weights again: where they fit in a core's L2
# cache beside the block (the default model: 0.33 MB a layer) 64 rows run best, where they do
# not (the golf shape: 1.84 MB a layer) 128 (forward of two lee_news windows, one thread: the
# default model 38-39 us per token with 64 rows, 40-41 with 128, 43-46 with 32; golf shape
# 254-269 with 64, 244-248 with 128, 250-253 with 256; one kernel at a time over all rows: 43
# and 292-306).
BLOCK_ROWS = 64
LARGE_LAYER = 1 << 20  # bytes of a layer's int8 weights above which blocks have 128 rows


def block_rows(layer_bytes: int) -> int:
    """Rows per block for layers of `layer_bytes` bytes of int8 weights."""
    return 2 * BLOCK_ROWS if layer_bytes > LARGE_LAYER else BLOCK_ROWS


I16, PAIRS, TILES = 0, 1, 2  # the linear kernels (kind)


def placeholders() -> tuple:
    """Layouts a linear does not use: (weights [N, K], pairs [K/2, N, 2], tiles [.., 16, 64])."""
    return (np.zeros((1, 1), np.int8), np.zeros((1, 1, 2), np.int8),
            np.zeros((1, 1, 16, 64), np.int8))  # fmt: skip


@njit(cache=True, inline="always")
def _lin(a, s, lin, shift, lo, hi):
    """One linear of a block's rows: lin = (kind, w, pairs, tiles, ws). The tile kernel exists
    only where numba compiles for a CPU with AMX (simd.HAS_AMX, a constant here: elsewhere
    numba drops that branch before typing it)."""
    kind, w, wp, wt, ws = lin
    if HAS_AMX and kind == TILES:
        return rowops.linear_tiles(a, wt, s, ws, shift, lo, hi)
    if kind == PAIRS:
        return rowops.linear_pairs(a, wp, s, ws, shift, lo, hi)
    return rowops.linear_i16(a, w, s, ws, shift, lo, hi)


@njit(cache=True, inline="always")
def _pre_block(x, xs, sk, skw, pos, sqd, aq, rope, lq, lk, lv, v_max, q, k, v, r0, r1):
    """Rows r0..r1-1 of pre_attention."""
    cos, sin, sqe, e = rope
    res_max = np.int64(2147483647)
    big = np.int64(9223372036854775807)
    if sk.shape[0] > 0:  # the skip connection: x + rs(skip * weight, 24), clamped
        for r in range(r0, r1):
            for c in range(x.shape[1]):
                t = x[r, c] + rowops._rs(sk[r, c] * skw[c], 24)
                xs[r, c] = min(max(t, -res_max), res_max)
    xb = xs[r0:r1]
    a, s = rowops.normquant(xb, sqd, aq)
    pb = pos[r0:r1]
    q[r0:r1] = rowops.qk_rows(_lin(a, s, lq, 20, -big, big), pb, cos, sin, sqe, e)
    k[r0:r1] = rowops.qk_rows(_lin(a, s, lk, 20, -big, big), pb, cos, sin, sqe, e)
    v[r0:r1] = _lin(a, s, lv, 22, -v_max, v_max)


@njit(cache=True, inline="always")
def _pre_arrays(x, sk, n_q, n_k, n_v, e):
    n = x.shape[0]
    xs = np.empty_like(x) if sk.shape[0] > 0 else x
    return (xs, np.empty((n, n_q // e, e), np.int8), np.empty((n, n_k // e, e), np.int8),
            np.empty((n, n_v), np.int64))  # fmt: skip


@njit(cache=True, nogil=True)
def pre_attention(x, sk, skw, pos, sqd, aq, rope, lq, lk, lv, v_max, rows):
    """Rows x int64 [N, D] Q12 at positions pos -> (x', q int8 [N, H, E], k int8 [N, KV, E],
    v Q10 int64 [N, KV*E]): x' = clamp(x + rs(sk * skw, 24)) where sk has rows (a decoder
    layer's skip connection; x itself otherwise), then CpuEngine.forward_np's normquant, the
    q, k, v linears (lq, lk, lv: _lin's tuples) and qk_rows. rope = (cos, sin, sqe, e)."""
    e = rope[3]
    xs, q, k, v = _pre_arrays(x, sk, lq[4].shape[0], lk[4].shape[0], lv[4].shape[0], e)
    for r0 in range(0, x.shape[0], rows):
        r1 = min(x.shape[0], r0 + rows)
        _pre_block(x, xs, sk, skw, pos, sqd, aq, rope, lq, lk, lv, v_max, q, k, v, r0, r1)
    return xs, q, k, v


@njit(cache=True, parallel=True, nogil=True)
def pre_attention_par(x, sk, skw, pos, sqd, aq, rope, lq, lk, lv, v_max, rows):
    """pre_attention with its blocks on numba's threads (the same integers)."""
    e = rope[3]
    xs, q, k, v = _pre_arrays(x, sk, lq[4].shape[0], lk[4].shape[0], lv[4].shape[0], e)
    n = x.shape[0]
    for b in prange((n + rows - 1) // rows):
        r0, r1 = b * rows, min(n, (b + 1) * rows)
        _pre_block(x, xs, sk, skw, pos, sqd, aq, rope, lq, lk, lv, v_max, q, k, v, r0, r1)
    return xs, q, k, v


@njit(cache=True, inline="always")
def _add_clamp_into(x, y, lim, out, r0):
    """out[r0 + i] = clamp(x[i] + y[i], -lim, lim) (rowops.add_clamp, written in place)."""
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[r0 + i, c] = min(max(x[i, c] + y[i, c], -lim), lim)


@njit(cache=True, inline="always")
def _post_block(x, y, sqd, aq, lo_, lup, ldn, h_max, out, r0, r1):
    """Rows r0..r1-1 of post_attention."""
    res_max = np.int64(2147483647)
    big = np.int64(9223372036854775807)
    a, s = rowops.absquant(y[r0:r1], 14, aq)
    xb = rowops.add_clamp(x[r0:r1], _lin(a, s, lo_, 20, -big, big), res_max)
    a, s = rowops.normquant(xb, sqd, aq)
    a, s = rowops.relu2_absquant(_lin(a, s, lup, 20, -h_max, h_max), 0, aq)
    _add_clamp_into(xb, _lin(a, s, ldn, 20, -big, big), res_max, out, r0)


@njit(cache=True, nogil=True)
def post_attention(x, y, sqd, aq, lo_, lup, ldn, h_max, rows):
    """Residual rows x [N, D] and attention rows y Q10 [N, H*E] -> the layer's output rows:
    forward_np's absquant, attn.o, add_clamp, normquant, mlp.up, relu2_absquant, mlp.down and
    add_clamp (lo_, lup, ldn: _lin's tuples). A new array (x may be a skip connection)."""
    out = np.empty_like(x)
    for r0 in range(0, x.shape[0], rows):
        r1 = min(x.shape[0], r0 + rows)
        _post_block(x, y, sqd, aq, lo_, lup, ldn, h_max, out, r0, r1)
    return out


@njit(cache=True, parallel=True, nogil=True)
def post_attention_par(x, y, sqd, aq, lo_, lup, ldn, h_max, rows):
    """post_attention with its blocks on numba's threads (the same integers)."""
    out = np.empty_like(x)
    n = x.shape[0]
    for b in prange((n + rows - 1) // rows):
        r0, r1 = b * rows, min(n, (b + 1) * rows)
        _post_block(x, y, sqd, aq, lo_, lup, ldn, h_max, out, r0, r1)
    return out


@njit(cache=True, inline="always")
def _head_block(x, sqd, aq, lemb, logit_max, cap, exp, probs, out, r0, r1):
    """Rows r0..r1-1 of head."""
    tn, ta, tb = exp
    a, s = rowops.normquant(x[r0:r1], sqd, aq)
    lg = _lin(a, s, lemb, 16, -logit_max, logit_max)
    if cap > 0:
        lg = rowops.softcap_rows(lg, cap, tn, ta, tb)
    if probs:
        rowops._probs_block(lg, tn, ta, tb, out[r0:r1], 0, r1 - r0)
    else:
        out[r0:r1] = lg


@njit(cache=True, nogil=True)
def head(x, sqd, aq, lemb, logit_max, cap, exp, probs, rows):
    """Final rows x [N, D] -> capped logits Q16 [N, V] (forward_np's normquant, the tied
    embedding's linear, softcap_rows where cap > 0), or with `probs` their Q30 probabilities
    (probs_rows). exp = (tn, ta, tb), the exp tables."""
    out = np.empty((x.shape[0], lemb[4].shape[0]), np.int64)
    for r0 in range(0, x.shape[0], rows):
        r1 = min(x.shape[0], r0 + rows)
        _head_block(x, sqd, aq, lemb, logit_max, cap, exp, probs, out, r0, r1)
    return out


@njit(cache=True, parallel=True, nogil=True)
def head_par(x, sqd, aq, lemb, logit_max, cap, exp, probs, rows):
    """head with its blocks on numba's threads (the same integers)."""
    out = np.empty((x.shape[0], lemb[4].shape[0]), np.int64)
    n = x.shape[0]
    for b in prange((n + rows - 1) // rows):
        r0, r1 = b * rows, min(n, (b + 1) * rows)
        _head_block(x, sqd, aq, lemb, logit_max, cap, exp, probs, out, r0, r1)
    return out
