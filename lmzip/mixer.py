"""Adaptive context mixing: the LM's next-token distribution mixed with models learned online.

Spec: format_spec/mixer.md (mixer version 4). A token id is coded as ceil(log2 V) binary
decisions, most significant bit first. For every decision the LM's probability (exact subtree mass
ratio), hashed token-context models (orders 0..16 and indirect models), a match model, two SSE maps
of the LM probability and a bias are mixed in the stretched domain by four gated linear mixers
whose outputs a second mixer combines, refined by two APMs, and the final 16-bit probability is
coded with the range coder. All arithmetic is int64 (numba), so encoder and decoder agree bit for
bit on any machine.

API (all state starts fresh per chunk, or per group of chunks for the shared bucket table):
    MixerParams(...).to_bytes() / MixerParams.from_bytes(b)
    mix_encode(p_all, tokens, params) -> bytes            one chunk, teacher-forced
    mix_cost_bits(p_all, tokens, params) -> float64[N]     ideal bits per token (verify)
    MixEncoder(params, V, max_tokens).feed(p_block, toks); .finish() -> bytes
    GroupEncoder(params, V, [max_tokens...]).feed([p_block...], [toks...]); .finish() -> [bytes]
    MixDecoder(payload, params, V, max_tokens, mem=None).next(p) -> token
    new_table(params) -> the bucket table a group's MixDecoders share (mem=)
    mix_decode_token(head, body, mem, hist, cst, data, p) -> token   njit, for batched decode loops

This module holds the parameters, the state allocation and the coding loops; the per-bit models
are in lmzip/ctxmodels.py. Memory per chunk: MixerParams.memory_bytes(max_tokens), about
32 * 2^hash_bits bytes + 13 MB (47 MB with the defaults and 150,000 tokens; api.mixer_params
picks hash_bits from the chunk length).
"""

import struct
from dataclasses import dataclass

import numpy as np
from numba import njit

from lmzip.coder import dec_advance, dec_new, dec_overrun, dec_target, enc_finish, enc_new, enc_put
from lmzip.ctxmodels import (
    APM1_SIZE,
    CNT_MASK,
    ENTRY_INIT,
    H_A2MASK,
    H_APMRATE,
    H_B,
    H_D,
    H_LIMIT,
    H_LR,
    H_MAXTOK,
    H_MEXP,
    H_MMIN,
    H_MMMASK,
    H_N,
    H_NBMASK,
    H_NIN,
    H_NM,
    H_NODE,
    H_OA1,
    H_OA2,
    H_OIND,
    H_OMM,
    H_ORD,
    H_ORT,
    H_OS1,
    H_OS2,
    H_OSM,
    H_OSQ,
    H_OST,
    H_OW,
    H_OW2,
    H_SIZE,
    H_V,
    IND_BITS,
    IND_MAX,
    IND_MIN,
    LMC_MAX,
    LMC_MIN,
    MAX_MODELS,
    N_IND,
    N_WSETS,
    N_WSETS2,
    NIN_MAX,
    NKNOT,
    NMIX,
    P22,
    PONE,
    SM_SIZE,
    SQUASH_KNOTS,
    SSE_BITS,
    XMAX,
    _bit_predict,
    _bit_update,
    _fill_tables,
    _token_begin,
    _token_end,
    prefetch_buckets,
)
from lmzip.errors import FormatError, VersionError

MIXER_VERSION = 4
READ_VERSIONS = (3, 4)  # version 3 params are version 4's without the group byte (group 1)
MAX_GROUP = 16
CTX_W0 = 80  # initial total weight of the context-model inputs, in 1/64
_PARAMS_FMT = "<BB8BBHBBBBBB"  # version, n_orders, orders[8], hash_bits, limit, ..., group
_PARAMS_FMT_V3 = _PARAMS_FMT[:-1]


@dataclass(frozen=True)
class MixerParams:
    """Every setting that changes the mixer's bytes (spec 6); stored in the file header."""

    # context models, one hashed model each: code k in 0..16 = the last k tokens (0: order 0),
    # 33..35 = indirect model of order k - 32, 40..42 = LM argmax + last k - 40 tokens (spec 5.1)
    orders: tuple = (0, 1, 2, 3, 4, 6, 34, 41)
    hash_bits: int = 20  # 2^hash_bits buckets of 32 bytes shared by the context models
    limit: int = 15  # adaptation count limit: rate 2 / (2n + 3), n <= limit
    match_min: int = 3  # tokens hashed to find a match
    match_bits: int = 18  # 2^match_bits match-table entries (int32 positions)
    lr: int = 14  # layer-1 mixer learning rate (w += x * err * lr >> 18)
    apm_rate: int = 5  # APM update shift
    apm2_bits: int = 14  # 2^apm2_bits APM2 contexts (previous token x node)
    # consecutive chunks whose mixed streams share one bucket table and are coded in lock-step
    # (spec 4.2): a group codes about as well as one chunk of its size, yet decodes in parallel
    group: int = 1

    def __post_init__(self):
        if not 0 <= len(self.orders) <= MAX_MODELS or any(
            not (0 <= k <= 16 or IND_MIN <= k <= IND_MAX or LMC_MIN <= k <= LMC_MAX)
            for k in self.orders
        ):
            raise ValueError(
                f"orders must be <= {MAX_MODELS} values in 0..16, {IND_MIN}..{IND_MAX} or "
                f"{LMC_MIN}..{LMC_MAX}: "
                f"{self.orders}"
            )
        checks = (
            (10 <= self.hash_bits <= 24, "hash_bits in 10..24"),
            (1 <= self.limit <= CNT_MASK, f"limit in 1..{CNT_MASK}"),
            (1 <= self.match_min <= 32, "match_min in 1..32"),
            (8 <= self.match_bits <= 24, "match_bits in 8..24"),
            (0 <= self.lr <= 255, "lr in 0..255"),
            (1 <= self.apm_rate <= 15, "apm_rate in 1..15"),
            (6 <= self.apm2_bits <= 20, "apm2_bits in 6..20"),
            (1 <= self.group <= MAX_GROUP, f"group in 1..{MAX_GROUP}"),
        )
        for ok, what in checks:
            if not ok:
                raise ValueError(f"mixer parameter out of range: {what}")

    def to_bytes(self) -> bytes:
        o = tuple(self.orders) + (0,) * (MAX_MODELS - len(self.orders))
        return struct.pack(
            _PARAMS_FMT, MIXER_VERSION, len(self.orders), *o, self.hash_bits, self.limit,
            self.match_min, self.match_bits, self.lr, self.apm_rate, self.apm2_bits, self.group,
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, b: bytes) -> "MixerParams":
        if len(b) < 1:
            raise FormatError("mixer params: empty")
        if b[0] not in READ_VERSIONS:
            raise VersionError(
                f"mixer version {b[0]} is not supported (this build reads "
                f"{', '.join(map(str, READ_VERSIONS))})"
            )
        fmt = _PARAMS_FMT_V3 if b[0] == 3 else _PARAMS_FMT
        if len(b) != struct.calcsize(fmt):
            raise FormatError(f"mixer params: {len(b)} bytes, expected {struct.calcsize(fmt)}")
        v = struct.unpack(fmt, b)
        n = v[1]
        if n > MAX_MODELS or any(v[2 + n : 2 + MAX_MODELS]):
            raise FormatError("mixer params: bad order list")
        try:
            return cls(tuple(v[2 : 2 + n]), *v[2 + MAX_MODELS :])
        except ValueError as e:
            raise FormatError(str(e)) from None

    def memory_bytes(self, max_tokens: int) -> int:
        """Bytes of state one chunk needs (head excluded: 8 * (V + 97)), its bucket table
        counted whole although a group's chunks share one."""
        return 4 * _body_size(self) + 32 * (1 << self.hash_bits) + 4 * max_tokens


def _body_size(prm: MixerParams) -> int:
    return (
        (2 * XMAX + 1) + PONE + (CNT_MASK + 1)
        + N_WSETS * NIN_MAX
        + N_WSETS2 * NMIX
        + 2 * (NKNOT << SSE_BITS)
        + (N_IND << IND_BITS)
        + (APM1_SIZE + (1 << prm.apm2_bits)) * NKNOT
        + (1 << prm.match_bits)
        + SM_SIZE
    )  # fmt: skip


def new_table(prm: MixerParams) -> np.ndarray:
    """A fresh bucket table (spec 4): one per chunk, or one per group shared by its chunks."""
    mem = np.full(16 << prm.hash_bits, ENTRY_INIT, np.uint16)
    mem[::16] = 0  # slot 0 of each bucket: tag, 0 = empty
    return mem


def _new_state(prm: MixerParams, V: int, max_tokens: int, mem: np.ndarray | None = None):
    """Fresh (head, body, mem, hist) for one chunk (spec 4: initial values); `mem`: the group's
    shared bucket table instead of a fresh one."""
    if not 1 <= V <= 65536:
        raise ValueError(f"vocabulary size {V} not in 1..65536")
    head = np.zeros(H_SIZE + V + 1, np.int64)
    body = np.zeros(_body_size(prm), np.int32)
    hist = np.zeros(max(max_tokens, 1), np.int32)
    off = 0
    for key, size in (
        (H_OSQ, 2 * XMAX + 1), (H_OST, PONE), (H_ORT, CNT_MASK + 1),
        (H_OW, N_WSETS * NIN_MAX), (H_OW2, N_WSETS2 * NMIX),
        (H_OS1, NKNOT << SSE_BITS), (H_OS2, NKNOT << SSE_BITS), (H_OIND, N_IND << IND_BITS),
        (H_OA1, APM1_SIZE * NKNOT),
        (H_OA2, NKNOT << prm.apm2_bits), (H_OMM, 1 << prm.match_bits), (H_OSM, SM_SIZE),
    ):  # fmt: skip
        head[key] = off
        off += size
    assert off == body.size
    _fill_tables(body, head[H_OSQ], head[H_OST], head[H_ORT], np.array(SQUASH_KNOTS, np.int64))
    head[H_V] = V
    head[H_B] = max(1, (V - 1).bit_length())
    head[H_NM] = len(prm.orders)
    head[H_NIN] = len(prm.orders) + 5
    head[H_ORD : H_ORD + len(prm.orders)] = prm.orders
    head[H_LIMIT], head[H_LR], head[H_APMRATE] = prm.limit, prm.lr, prm.apm_rate
    head[H_MMIN], head[H_MAXTOK] = prm.match_min, max_tokens
    head[H_NBMASK] = (1 << prm.hash_bits) - 1
    head[H_MMMASK] = (1 << prm.match_bits) - 1
    head[H_A2MASK] = (1 << prm.apm2_bits) - 1
    if mem is None:
        mem = new_table(prm)
    elif mem.shape != (16 << prm.hash_bits,) or mem.dtype != np.uint16:
        raise ValueError("shared bucket table of the wrong shape")
    # The mixer starts near "LM only": weight 1.0 on the LM input, small priors on the adaptive
    # inputs (they are 0 until a context has been seen), which helps short chunks (spec 4).
    w = body[head[H_OW] : head[H_OW] + N_WSETS * NIN_MAX].reshape(N_WSETS, NIN_MAX)
    w[:, 0] = 1 << 16
    w[:, 1 : 1 + len(prm.orders)] = (1 << 16) * CTX_W0 // 64 // max(1, len(prm.orders))
    w[:, 1 + len(prm.orders)] = 1 << 15
    w2 = body[head[H_OW2] : head[H_OW2] + N_WSETS2 * NMIX]
    w2[:] = (1 << 16) // NMIX
    knots = np.array(SQUASH_KNOTS, np.int32) << 6  # APM point k starts at squash(128 (k - 24))
    body[head[H_OA1] : head[H_OA1] + APM1_SIZE * NKNOT] = np.tile(knots, APM1_SIZE)
    body[head[H_OA2] : head[H_OA2] + (NKNOT << prm.apm2_bits)] = np.tile(knots, 1 << prm.apm2_bits)
    for key in (H_OS1, H_OS2):
        body[head[key] : head[key] + (NKNOT << SSE_BITS)] = np.tile(knots, 1 << SSE_BITS)
    body[head[H_OSM] : head[H_OSM] + SM_SIZE] = P22 * 3 // 4
    head[H_MEXP] = -1
    return head, body, mem, hist


@njit(cache=True, nogil=True)  # chunks may be coded in parallel threads
def _cost_block(head, body, mem, hist, p_block, toks, out_bits):
    """Ideal code length of each token in bits (floats only here, for reporting)."""
    B = head[H_B]
    for i in range(toks.shape[0]):
        _token_begin(head, body, hist, p_block[i])
        tok = toks[i]
        bits = 0.0
        while head[H_D] < B:
            pf = _bit_predict(head, body, mem, hist)
            if pf < 0:
                head[H_NODE] *= 2
                head[H_D] += 1
                continue
            bit = (tok >> (B - 1 - head[H_D])) & 1
            bits -= np.log2((pf if bit else PONE - pf) / PONE)
            _bit_update(head, body, mem, bit)
        _token_end(head, body, hist, tok)
        out_bits[i] = bits


@njit(cache=True, inline="always")
def _encode_token(head, body, mem, hist, p, tok, cst, out, pos):
    """Code tok with LM vector p, writing at out[pos:]; returns the new pos (spec 5.2)."""
    B = head[H_B]
    _token_begin(head, body, hist, p)
    prefetch_buckets(head, mem, tok, B)
    while head[H_D] < B:
        pf = _bit_predict(head, body, mem, hist)
        if pf < 0:
            head[H_NODE] *= 2
            head[H_D] += 1
            continue
        bit = (tok >> (B - 1 - head[H_D])) & 1
        if bit:
            pos = enc_put(cst, out, pos, PONE - pf, pf, 16)
        else:
            pos = enc_put(cst, out, pos, 0, PONE - pf, 16)
        _bit_update(head, body, mem, bit)
    _token_end(head, body, hist, tok)
    return pos


@njit(cache=True, nogil=True)  # chunks may be coded in parallel threads
def _encode_block(head, body, mem, hist, p_block, toks, cst, out):
    """Code toks[i] with LM vector p_block[i]; returns bytes written to out (spec 5.2)."""
    pos = 0
    for i in range(toks.shape[0]):
        pos = _encode_token(head, body, mem, hist, p_block[i], toks[i], cst, out, pos)
    return pos


@njit(cache=True, nogil=True)
def _encode_lockstep(heads, bodies, mem, hists, p_blocks, wins, toks, counts, csts, outs, pos):
    """A group's block in lock-step (spec 4.2): for each position i, chunk g = 0, 1, ... codes
    its token i if it has one (counts[g] > i), all with the one bucket table `mem`; chunk g's
    LM rows are p_blocks[wins[g]] (int64 [W, >= counts, V])."""
    n = 0
    for g in range(counts.shape[0]):
        n = max(n, counts[g])
    for i in range(n):
        for g in range(counts.shape[0]):
            if i < counts[g]:
                pos[g] = _encode_token(heads[g], bodies[g], mem, hists[g], p_blocks[wins[g], i],
                                       toks[g, i], csts[g], outs[g], pos[g])  # fmt: skip


@njit(cache=True, nogil=True)  # chunks may be coded in parallel threads
def mix_decode_token(head, body, mem, hist, cst, data, p):
    """Decode one token given the LM vector p (int64[V]); callable from other numba loops.

    The caller guarantees head[H_N] < len(hist) (at most max_tokens tokens per chunk).
    """
    B = head[H_B]
    _token_begin(head, body, hist, p)
    prefetch_buckets(head, mem, 0, 1)
    while head[H_D] < B:
        pf = _bit_predict(head, body, mem, hist)
        if pf < 0:
            head[H_NODE] *= 2
            head[H_D] += 1
            continue
        if dec_target(cst, 16) >= PONE - pf:
            dec_advance(cst, data, PONE - pf, pf, 16)
            bit = 1
        else:
            dec_advance(cst, data, 0, PONE - pf, 16)
            bit = 0
        _bit_update(head, body, mem, bit)
    tok = head[H_NODE] - (1 << B)
    _token_end(head, body, hist, tok)
    return tok


def _check_inputs(p_all, tokens, V):
    p_all = np.ascontiguousarray(p_all, dtype=np.int64)
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    if p_all.ndim != 2 or p_all.shape[1] != V or p_all.shape[0] != tokens.shape[0]:
        raise ValueError(f"p_all must be [N, V] with N = len(tokens): {p_all.shape}")
    if p_all.size and (p_all.min() < 0 or p_all.max() > 1 << 30):
        raise ValueError("p values must be in [0, 2^30]")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= V):
        raise ValueError("token id out of range")
    return p_all, tokens


def mix_cost_bits(p_all, tokens, params: MixerParams) -> np.ndarray:
    """Ideal bits of each token under the mixer (float64[N]); sum ~= 8 * len(mix_encode(...))."""
    V = int(np.shape(p_all)[1])
    p_all, tokens = _check_inputs(p_all, tokens, V)
    head, body, mem, hist = _new_state(params, V, len(tokens))
    out = np.zeros(len(tokens), np.float64)
    _cost_block(head, body, mem, hist, p_all, tokens, out)
    return out


class MixEncoder:
    """Teacher-forced encoder of one chunk; feed blocks of (LM vectors, tokens), then finish()."""

    def __init__(self, params: MixerParams, V: int, max_tokens: int):
        self.V = V
        self.head, self.body, self.mem, self.hist = _new_state(params, V, max_tokens)
        self.cst = enc_new()
        # one output buffer for the whole chunk: enc_put at P = 16 writes at most 2 bytes per
        # binary decision (B per token), the flush 7. Per-block buffers kept as many small bytes
        # objects fragmented a worker's heap by several KB per token.
        self.out = np.empty(2 * int(self.head[H_B]) * max_tokens + 32, np.uint8)
        self.pos = 0

    def feed(self, p_block, tokens) -> None:
        p_block, tokens = _check_inputs(p_block, tokens, self.V)
        if self.head[H_N] + len(tokens) > self.head[H_MAXTOK]:
            raise ValueError("more tokens than max_tokens")
        out = self.out[self.pos :]
        self.pos += _encode_block(
            self.head, self.body, self.mem, self.hist, p_block, tokens, self.cst, out
        )

    def finish(self) -> bytes:
        self.pos = enc_finish(self.cst, self.out, self.pos)
        return self.out[: self.pos].tobytes()


class GroupEncoder:
    """Teacher-forced encoder of a group of chunks sharing one bucket table (spec 4.2), coded in
    lock-step; with one chunk it writes MixEncoder's bytes. feed() takes, per chunk, the block
    of the same positions (an empty block once a chunk has ended); finish() -> payloads."""

    def __init__(self, params: MixerParams, V: int, max_tokens: list[int]):
        self.V, self.g = V, len(max_tokens)
        self.mem = new_table(params)
        states = [_new_state(params, V, n, self.mem) for n in max_tokens]
        self.heads = np.stack([st[0] for st in states])
        self.bodies = np.stack([st[1] for st in states])
        longest = max(1, *max_tokens)
        self.hists = np.zeros((self.g, longest), np.int32)
        self.csts = np.stack([enc_new() for _ in range(self.g)])
        self.outs = np.empty((self.g, 2 * int(self.heads[0, H_B]) * longest + 32), np.uint8)
        self.pos = np.zeros(self.g, np.int64)

    def feed(self, p_blocks: list, tokens: list) -> None:
        """p_blocks[g], tokens[g]: chunk g's next block (None or empty once it has ended)."""
        if len(p_blocks) != self.g or len(tokens) != self.g:
            raise ValueError(f"one block per chunk of the group ({self.g})")
        counts, t_all = self._token_block(tokens)
        # one [G, n, V] block (a copy: numba typed lists would avoid it, but they compile
        # anew in every process, ~1 s, and a signal during that compilation was lost)
        p_all = np.zeros((self.g, t_all.shape[1], self.V), np.int64)
        for g in range(self.g):
            if counts[g]:
                p_all[g, : counts[g]] = _check_inputs(p_blocks[g], t_all[g, : counts[g]],
                                                      self.V)[0]  # fmt: skip
        self._encode(p_all, np.arange(self.g, dtype=np.int64), t_all, counts)

    def feed_pass(self, p: np.ndarray, wins: np.ndarray, tokens: list) -> None:
        """feed() from the LM pass that computed the blocks, without copying or checking them:
        chunk g's rows are p[wins[g], :len(tokens[g])] (p int64 C-contiguous [N, T, V], Q30
        rows of the engine; wins[g] unused where tokens[g] is None or empty). For callers that
        made p with the engine (api._code_group)."""
        if len(tokens) != self.g or len(wins) != self.g:
            raise ValueError("feed_pass: blocks do not match the pass")
        counts, t_all = self._token_block(tokens)
        if p.dtype != np.int64 or not p.flags.c_contiguous or p.ndim != 3 or (
            p.shape[2] != self.V or any(c and not (0 <= w < p.shape[0] and c <= p.shape[1])
                                        for w, c in zip(wins, counts))):  # fmt: skip
            raise ValueError("feed_pass: blocks do not match the pass")
        self._encode(p, np.asarray(wins, np.int64), t_all, counts)

    def _token_block(self, tokens: list) -> tuple:
        """(counts, t_all int32 [G, max count]) of the chunks' next token blocks (None or empty
        once a chunk has ended), checked: ids in the vocabulary, at most max_tokens a chunk."""
        counts = np.array([0 if t is None else len(t) for t in tokens], np.int64)
        t_all = np.zeros((self.g, int(counts.max(initial=0))), np.int32)
        for g in range(self.g):
            if counts[g]:
                t = np.asarray(tokens[g])
                if t.min() < 0 or t.max() >= self.V:
                    raise ValueError("token id out of range")
                if self.heads[g, H_N] + counts[g] > self.heads[g, H_MAXTOK]:
                    raise ValueError("more tokens than max_tokens")
                t_all[g, : counts[g]] = t
        return counts, t_all

    def _encode(self, p, wins, t_all, counts) -> None:
        _encode_lockstep(self.heads, self.bodies, self.mem, self.hists, p, wins, t_all, counts,
                         self.csts, self.outs, self.pos)  # fmt: skip

    def finish(self) -> list[bytes]:
        out = []
        for g in range(self.g):
            end = enc_finish(self.csts[g], self.outs[g], int(self.pos[g]))
            out.append(self.outs[g, :end].tobytes())
        return out


class MixDecoder:
    """Decoder of one chunk, one token at a time: next(p) with the LM vector for that position.
    `mem`: the bucket table its group shares (new_table), else a fresh one of its own."""

    def __init__(self, payload: bytes, params: MixerParams, V: int, max_tokens: int,
                 mem: np.ndarray | None = None):  # fmt: skip
        self.V = V
        self.head, self.body, self.mem, self.hist = _new_state(params, V, max_tokens, mem)
        self.data = np.frombuffer(bytes(payload), np.uint8)
        self.cst = dec_new(self.data)

    @property
    def arrays(self):
        """(head, body, mem, hist, cst, data): the arguments of mix_decode_token before p."""
        return self.head, self.body, self.mem, self.hist, self.cst, self.data

    def next(self, p) -> int:
        if self.head[H_N] >= self.head[H_MAXTOK]:
            raise ValueError("more tokens than max_tokens")
        p = np.ascontiguousarray(p, dtype=np.int64)
        if p.shape != (self.V,):
            raise ValueError(f"p must have shape ({self.V},)")
        return int(mix_decode_token(*self.arrays, p))

    def overrun(self) -> int:
        """Bytes read past the payload: nonzero after the last token means corrupt input."""
        return int(dec_overrun(self.cst))


def mix_encode(p_all, tokens, params: MixerParams) -> bytes:
    """One chunk's payload: tokens coded with LM vectors p_all[i] (int64[N, V], Q30)."""
    n, V = np.shape(p_all)
    enc = MixEncoder(params, int(V), int(n))
    enc.feed(p_all, tokens)
    return enc.finish()


def mix_decode(payload: bytes, p_all, params: MixerParams) -> np.ndarray:
    """Decode len(p_all) tokens (tests and tools; the real decoder gets p one position at a time)."""
    n, V = np.shape(p_all)
    dec = MixDecoder(payload, params, int(V), int(n))
    return np.array([dec.next(p_all[i]) for i in range(n)], np.int32)
