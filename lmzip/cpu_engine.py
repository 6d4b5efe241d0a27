"""The exact engine's tables from a model container, and the engine on CPU without torch.

`build_tables` reads and checks a container's tensors and derives every integer table of
format_spec/numerics.md (weights with Q24 scales, attention gains, skip weights, RoPE, ATT);
both engines start from it. `CpuEngine` runs those tables through the compiled row kernels of
`lmzip.rowops` on numpy arrays: the same integers as the torch engine (`lmzip.engine.Engine`,
the reference and the GPU path; tests compare the two on every path), without importing torch,
which costs about a second of every command's start-up. The compressor uses it wherever the
kernels pass their start-up self-tests on this machine.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np

from lmzip import blocks, cpu_env, rowops, simd
from lmzip.config import ModelConfig
from lmzip.container import ModelFile
from lmzip.errors import FormatError, VersionError
from lmzip.tables import NUMERICS_VERSION, att_exp_np, exp_tables_np, rshift_round

RES_MAX = (1 << 31) - 1  # residual clamp, Q12 (|x| < 524288: trained residuals reach 5e4)
QK_MAX = (1 << 24) - 1  # q, k clamp before QK-norm, Q12
H_MAX = (1 << 23) - 1  # MLP hidden clamp, Q12 (h^2 < 2^46 keeps 16383 * h^2 < 2^60)
AQ = 16383  # activations are 15-bit: int8 pairs (hi, lo) with a = 128 hi + lo
V_MAX = (1 << 22) - 1  # v clamp, Q10
LOGIT_MAX = (1 << 26) - 1  # logit clamp, Q16 (|l| < 1024)
I64_MAX = (1 << 63) - 1
SCALE_MAX = 1 << 27  # weight scales must be <= 8 (Q24): |t * WS| < 2^35 * 2^27 < 2^63
TILES_ATT_MIN = 64  # windows from which the passes' attention runs in AMX tiles (shorter: no gain)
LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down")


def q24(values: np.ndarray, what: str, limit: int) -> np.ndarray:
    """float16 values -> exact Q24 integers (every float16 is a multiple of 2^-24)."""
    v = np.asarray(values, dtype=np.float16).astype(np.float64) * (1 << 24)
    if not np.all(np.isfinite(v)) or np.any(np.abs(v) > limit):
        raise FormatError(f"model tensor {what} has values out of the engine's range")
    return v.astype(np.int64)


def _linear_selftest(kernel, k_mid: int = 1031, n: int = 9, counts=(1, 2), reps: int = 1) -> bool:
    """Adversarial rows (every product at its extreme, one sign and alternating) and random ones
    through `kernel` (linear_i16's arguments, weights [N, K]), against int64 numpy, at the
    largest K the engine accepts (k_mid: the largest for 8-bit weights, or an even one), with n
    weight rows and the row counts `counts` and all seven rows (`reps` times over)."""
    rng = np.random.default_rng(99)
    for k, qmax in ((192, 127), (k_mid, 127), (4226, 31)):
        a = np.stack([np.full(k, 16383), np.full(k, -16383),
                      np.where(np.arange(k) % 2, 16383, -16383)]
                     + list(rng.integers(-16383, 16384, (4, k)))).astype(np.int64)  # fmt: skip
        a = np.concatenate([a] * reps)
        w = rng.integers(-qmax, qmax + 1, (n, k)).astype(np.int8)
        w[0], w[1], w[n - 1] = qmax, -qmax, np.where(np.arange(k) % 2, -qmax, qmax)
        a_scale = np.full(len(a), 1 << 16, np.int64)
        ws = np.full(len(w), 1 << 24, np.int64)
        want = a @ w.astype(np.int64).T  # unit scales (A = 2^16, WS = 2^24, shift 24): y = acc
        for m in (*counts, len(a)):
            if not np.array_equal(kernel(a[:m], w, a_scale[:m], ws, 24, -I64_MAX, I64_MAX),
                                  want[:m]):  # fmt: skip
                return False
    return True


@functools.cache
def fused_linear_ok() -> bool:
    """Start-up self-test of rowops.linear_i16 on this machine. Integer arithmetic cannot round,
    but a miscompiled kernel must never code a file: where this fails, the torch engine with its
    self-tested products codes instead."""
    return _linear_selftest(rowops.linear_i16)


@functools.cache
def parallel_linear_ok() -> bool:
    """The same for rowops.linear_i16_par, at its first use (the teacher-forced passes; decoding
    never needs it); where it fails, those passes use linear_i16."""
    return _linear_selftest(rowops.linear_i16_par)


def _pairs_selftest(kernel) -> bool:
    """_linear_selftest of a kernel on weight pairs (rowops.pair_cols) at the largest even K,
    64 outputs (two blocks of 32), blocks of four rows and a padded one; False without
    AVX2 (the kernels' instructions)."""

    def pairs(a, w, *rest):
        return kernel(a, rowops.pair_cols(w), *rest)

    return simd.HAS_AVX2 and _linear_selftest(pairs, k_mid=1030, n=64, counts=(1, 4))


@functools.cache
def pairs_linear_ok() -> bool:
    """Start-up self-test of rowops.linear_pairs (the passes' linears on AVX2 CPUs); where
    it fails (or the CPU has no AVX2) the passes use linear_i16."""
    return _pairs_selftest(rowops.linear_pairs)


@functools.cache
def pairs_par_ok() -> bool:
    """The same for rowops.linear_pairs_par, at its first use (passes of many rows)."""
    return _pairs_selftest(rowops.linear_pairs_par)


@functools.cache
def quads_linear_ok() -> bool:
    """Start-up self-test of rowops.linear_quads (the decoding step's linears in byte dot
    products, on CPUs with AVX512-VNNI: simd.HAS_VNNI512), at its first use; where it fails or
    the CPU lacks them, the step uses linear_i16."""
    if not simd.HAS_VNNI512:
        return False

    def quads(a, w, *rest):
        return rowops.linear_quads(a, *rowops.quad_cols(w), *rest)

    return _linear_selftest(quads, n=48)


@functools.cache
def amx_ready() -> bool:
    """Whether numba compiles the AMX tile kernels for this CPU (simd.HAS_AMX) and the OS granted
    this process the tile state (cpu_env.request_amx)."""
    return simd.HAS_AMX and cpu_env.request_amx()


def _tiles_selftest(kernel) -> bool:
    """_linear_selftest of a kernel on AMX tiles (rowops.tile_cols): K from 192 (three tiles) to
    4226 (padded), 64 outputs (two groups of 32), one row, 17 (a padded second block of 16)
    and 42 (two parallel blocks); False where the tiles cannot run (amx_ready)."""

    def tiles(a, w, *rest):
        return kernel(a, rowops.tile_cols(w), *rest)

    return amx_ready() and _linear_selftest(tiles, k_mid=1030, n=64, counts=(1, 17), reps=6)


@functools.cache
def tiles_linear_ok() -> bool:
    """Start-up self-test of rowops.linear_tiles (the passes' linears on CPUs with AMX); where it
    fails or the tiles cannot run, the passes use the weight pairs or linear_i16."""
    return _tiles_selftest(rowops.linear_tiles)


@functools.cache
def tiles_par_ok() -> bool:
    """The same for rowops.linear_tiles_par, at its first use (passes of many rows)."""
    return _tiles_selftest(rowops.linear_tiles_par)


@functools.cache
def tiles_attention_ok() -> bool:
    """Start-up self-test of rowops.attend_fwd_tiles (the passes' attention on CPUs with AMX)
    against rowops.attend_fwd: windows of 100 positions (blocks of 16 and a partial one), E =
    48 and 64, value rows at both ends of their range, queries whose weight falls on one key
    (P = 2^16) and flat ones. Where it fails or the tiles cannot run, the passes use
    attend_fwd."""
    if not amx_ready():
        return False
    rng = np.random.default_rng(7)
    att = att_exp_np().astype(np.float64)
    for e, h, kv in ((48, 4, 2), (64, 2, 2)):
        t_n, nw = 100, 2
        q = rng.integers(-127, 128, (nw * t_n, h, e)).astype(np.int8)
        k = rng.integers(-127, 128, (nw * t_n, kv, e)).astype(np.int8)
        q[::3] = 0  # flat rows: every key the same weight
        k[5::7] = q[5::7, :kv]  # sharp rows: one key far above the rest
        v = rng.integers(-V_MAX, V_MAX + 1, (nw * t_n, kv * e)).astype(np.int64)
        v[::2, ::3], v[1::2, ::3] = V_MAX, -V_MAX
        gain = np.array([1 << 20, 1 << 26, 1 << 30, 3 << 24][:h], np.int64)
        want = rowops.attend_fwd(q, k, v, t_n, gain, att)
        if not np.array_equal(rowops.attend_fwd_tiles(q, k, v, t_n, gain, att), want):
            return False
    return True


# linear_quads' arrays where the step does not use them: one layer's quads and row sums
_NO_QUADS = np.zeros((1, 1, 64), np.int8), np.zeros(16, np.int64)


@dataclass
class Linear:
    """int8 weights [out, in] (values within +-qmax) with Q24 per-row scales."""

    w: np.ndarray
    ws: np.ndarray
    qmax: int

    def fused_exact(self) -> bool:
        """Whether rowops.linear_i16's int32 sums are exact for this shape (K * AQ * qmax < 2^31)."""
        return self.w.shape[1] * AQ * self.qmax < (1 << 31)


@dataclass
class EngineTables:
    cfg: ModelConfig
    emb: Linear
    layers: list  # per layer: {name: Linear for LINEARS, "gain": G = gain / sqrt(E), Q24 [H]}
    skip: np.ndarray  # Q24 [n_skip, D]
    cos: np.ndarray  # RoPE Q30 [window, E/2]
    sin: np.ndarray
    sqd: int  # sqrt(D), Q16
    sqe: int  # sqrt(E), Q16


def _linear(mf: ModelFile, name: str, shape: tuple) -> Linear:
    qt = mf.tensors[name]
    qmax = {"q6": 31, "q8": 127}.get(qt.kind)
    vals = np.asarray(qt.values)
    if qmax is None or vals.ndim != 2 or np.abs(vals.astype(np.int16)).max(initial=0) > qmax:
        raise FormatError(f"model tensor {name} is not a valid q6/q8 matrix")
    if vals.shape != shape:
        raise FormatError(f"model tensor {name} has the wrong shape")
    ws = q24(qt.scales, name, SCALE_MAX)
    if ws.min(initial=0) < 0:
        raise FormatError(f"model tensor {name} has negative scales")
    return Linear(np.ascontiguousarray(vals.astype(np.int8)), ws, qmax)


def _rope_tables(base: np.ndarray, window: int, e: int) -> tuple[np.ndarray, np.ndarray]:
    """numerics.md "RoPE": cos, sin Q30 [window, E/2], by integer rotations for each bit of the
    position."""
    nb = max(1, (window - 1).bit_length())
    if base.shape != (nb, e // 2, 2) or np.abs(base.astype(np.int64)).max() > 1 << 30:
        raise FormatError("model tensor rope has the wrong shape or range")
    base = base.astype(np.int64)
    pos = np.arange(window)
    c = np.full((window, e // 2), 1 << 30, np.int64)
    s = np.zeros_like(c)
    for b in range(nb):  # multiply in the rotation by theta*2^b where bit b of pos is set
        on = ((pos >> b) & 1).astype(bool)[:, None]
        cb, sb = base[b, :, 0][None, :], base[b, :, 1][None, :]
        c2 = rshift_round(c * cb - s * sb, 30)
        s2 = rshift_round(s * cb + c * sb, 30)
        c, s = np.where(on, c2, c), np.where(on, s2, s)
    if max(np.abs(c).max(), np.abs(s).max()) >= 1 << 31:  # rotations stay near 2^30
        raise FormatError("model tensor rope: its rotations leave the range below 2^31")
    return c, s


def build_tables(mf: ModelFile) -> EngineTables:
    """Check a container's numerics version, config and tensors; derive the engine's tables."""
    if mf.numerics_version != NUMERICS_VERSION:
        raise VersionError(
            f"model uses numerics version {mf.numerics_version}; this lmzip supports "
            f"version {NUMERICS_VERSION}"
        )
    try:
        cfg = ModelConfig.from_dict(mf.config)
    except (TypeError, ValueError) as e:
        raise FormatError(f"model config is invalid: {e}") from None
    need = ["tok_emb", "skip_weights", "rope"] + [
        f"blocks.{i}.{n}" for i in range(cfg.n_layer) for n in LINEARS + ("attn.gain",)
    ]
    missing = [n for n in need if n not in mf.tensors]
    if missing:
        raise FormatError(f"model is missing tensor {missing[0]}")
    d, h, kv, e = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    sqd, sqe = math.isqrt(d << 32), math.isqrt(e << 32)  # sqrt(D), sqrt(E) in Q16
    emb = _linear(mf, "tok_emb", (cfg.vocab_size, d))
    shapes = {
        "attn.q": (h * e, d),
        "attn.k": (kv * e, d),
        "attn.v": (kv * e, d),
        "attn.o": (d, h * e),
        "mlp.up": (cfg.mlp_hidden, d),
        "mlp.down": (d, cfg.mlp_hidden),
    }
    layers = []
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        lay = {n: _linear(mf, p + n, shapes[n]) for n in LINEARS}
        gain = q24(np.asarray(mf.tensors[p + "attn.gain"].values).reshape(-1), p, 1 << 30)
        if gain.size != h:
            raise FormatError(f"model tensor {p}attn.gain has the wrong shape")
        # G = gain / sqrt(E) in Q24 (numerics.md "Attention scores"), rounded: floor((2n + d) / 2d)
        lay["gain"] = (2 * (gain << 16) + sqe) // (2 * sqe)
        layers.append(lay)
    skip = np.asarray(mf.tensors["skip_weights"].values).reshape(-1)
    if skip.size != cfg.n_skip * d:
        raise FormatError("model tensor skip_weights has the wrong shape")
    skip = q24(skip, "skip_weights", 1 << 30).reshape(cfg.n_skip, d)
    cos, sin = _rope_tables(np.asarray(mf.tensors["rope"].values), cfg.seq_len, e)
    return EngineTables(cfg, emb, layers, skip, cos, sin, sqd, sqe)


@dataclass
class CpuState:
    """KV caches of B streams, all layers (rowops.attend_step's types and
    rowops.cache_shapes): k int8 keys as pairs of elements, v (Q10) int32 value rows."""

    k_np: np.ndarray
    v_np: np.ndarray


class CpuEngine:
    """The exact engine on numpy arrays and compiled kernels (no torch): `forward_np` (teacher-
    forced windows) and `step_np` (one token per stream with KV caches), the integers of
    numerics.md. Build it with `CpuEngine.supports(tables)` true, else use lmzip.engine.Engine."""

    @staticmethod
    def supports(t: EngineTables) -> bool:
        """Every linear's int32 sums exact and the fused kernel's self-test passed here."""
        lins = [t.emb] + [lay[n] for lay in t.layers for n in LINEARS]
        return all(lin.fused_exact() for lin in lins) and fused_linear_ok()

    def __init__(self, t: EngineTables):
        self.tables = t
        cfg = self.cfg = t.cfg
        self.d, self.h, self.kv, self.e = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.vocab_size, self.window = cfg.vocab_size, cfg.seq_len
        self.att = att_exp_np().astype(np.float64)  # exact: every entry < 2^31 (rowops._att_row)
        self.exp = exp_tables_np()
        self.cap = cfg.logit_softcap

        def stack(name):
            return (np.stack([lay[name].w for lay in t.layers]),
                    np.stack([lay[name].ws for lay in t.layers]))  # fmt: skip

        args = [t.emb.w, t.emb.ws]
        for name in LINEARS:
            args += stack(name)
        gains = np.stack([lay["gain"] for lay in t.layers])
        skip = t.skip if t.skip.size else np.zeros((1, self.d), np.int64)
        args += [gains, skip, t.cos, t.sin, self.att]
        tail = (t.sqd, t.sqe, self.e, self.cap, *self.exp,
                np.array([RES_MAX, H_MAX, V_MAX, LOGIT_MAX, AQ], np.int64))  # fmt: skip
        self._stacked = tuple(args), tail
        self._step_args: tuple | None = None  # step_all_args, with the quads made at first use
        # the passes' linears in AMX tiles (rowops.linear_tiles) where the CPU has them, else as
        # weight pairs (rowops.linear_pairs) where it has AVX2: a second copy of every weight
        # matrix whose shape allows it (N % 32 == 0; for pairs also K even), made at first use
        self._copies: dict = {}
        self._lins: dict = {}  # blocks._lin's tuples (CpuEngine._lin)
        self._block_rows = blocks.block_rows(max((sum(lay[n].w.nbytes for n in LINEARS)
                                                  for lay in t.layers), default=0))  # fmt: skip

    def _copy(self, lin: Linear, tiles: bool) -> np.ndarray | None:
        """lin's weights as AMX tiles or as pairs (None where the shape does not allow it)."""
        key = (id(lin), tiles)
        if key not in self._copies:
            nn, kk = lin.w.shape
            ok = nn % 32 == 0 and (tiles or kk % 2 == 0)
            make = rowops.tile_cols if tiles else rowops.pair_cols
            self._copies[key] = make(lin.w) if ok else None
        return self._copies[key]

    # -- the decoding step (rowops.step_all: the whole step in one compiled call) -----------------
    def step_all_ok(self) -> bool:
        return True

    def step_all_args(self) -> tuple:
        """(args, tail): rowops.step_all(tokens, pos, *args, k_np, v_np, *tail) is one step. The
        step's linears run in rowops.linear_quads where the CPU has AVX512-VNNI, its self-test
        passed and every output count is a multiple of 16 (the weights' quads, a second copy
        made here, at the first step), else in linear_i16."""
        if self._step_args is None:
            args, tail = self._stacked
            stacks = [args[i] for i in range(2, 14, 2)]  # q, k, v, o, up, down: [L, N, K]
            emb = args[0]  # [V, D]
            outs = [w.shape[1] for w in stacks] + [emb.shape[0]]
            use = quads_linear_ok() and all(n % 16 == 0 for n in outs)
            quads: list = []
            for w in stacks:
                made = [rowops.quad_cols(m) for m in w] if use else [_NO_QUADS]
                quads += [np.stack([q for q, _ in made]), np.stack([r for _, r in made])]
            quads += rowops.quad_cols(emb) if use else _NO_QUADS
            self._step_args = args, (*tail, *quads, use)
        return self._step_args

    def new_state(self, batch: int) -> CpuState:
        n = len(self.tables.layers)
        kshape, vshape = rowops.cache_shapes(n, batch, self.kv, self.window, self.e)
        return CpuState(np.zeros(kshape, np.int8), np.zeros(vshape, np.int32))

    def step_np(self, state: CpuState, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Stream b reads tokens[b] at position pos[b] -> capped logits Q16 [B, V] (int64)."""
        args, tail = self.step_all_args()
        return rowops.step_all(tokens, pos, *args, state.k_np, state.v_np, *tail)

    # -- the teacher-forced pass ---------------------------------------------------------------
    def _linear(self, lin: Linear, a, s, frac: int, lim: int = I64_MAX) -> np.ndarray:
        """One linear over all rows (forward_kernels_np): the kernel _lin chooses, on numba's
        threads above PAR_ROWS rows."""
        big = a.shape[0] > rowops.PAR_ROWS
        kind, w, wp, wt, ws = self._lin(lin, big)
        if kind == blocks.TILES:
            kernel, wx = (rowops.linear_tiles_par if big else rowops.linear_tiles), wt
        elif kind == blocks.PAIRS:
            kernel, wx = (rowops.linear_pairs_par if big else rowops.linear_pairs), wp
        else:
            par = big and parallel_linear_ok()
            kernel, wx = (rowops.linear_i16_par if par else rowops.linear_i16), w
        return kernel(a, wx, s, ws, 32 - frac, -lim, lim)

    @staticmethod
    def _row(serial, par, rows: np.ndarray, *args):
        """A row kernel, on numba's threads above PAR_ROWS rows (the same integers)."""
        return (par if rows.shape[0] > rowops.PAR_ROWS else serial)(rows, *args)

    def _normquant(self, x: np.ndarray):
        return self._row(rowops.normquant, rowops.normquant_par, x, self.tables.sqd, AQ)

    def _qk(self, y: np.ndarray, pos: np.ndarray) -> np.ndarray:
        t = self.tables
        return self._row(rowops.qk_rows, rowops.qk_rows_par, y, pos, t.cos, t.sin, t.sqe, self.e)

    def forward_np(self, windows: np.ndarray) -> np.ndarray:
        """windows int64 [N, T] token ids (T <= window) -> capped logits Q16 [N, T, V]; row t
        predicts the token at t + 1 (forward_kernels_np's integers, in lmzip.blocks' blocks)."""
        return self._pass(windows, probs=False)

    def probs_np(self, windows: np.ndarray) -> np.ndarray:
        """forward_np, then numerics.md "probabilities": Q30 rows [N, T, V] (int64)."""
        return self._pass(windows, probs=True)

    def _lin(self, lin: Linear, par: bool) -> tuple:
        """blocks._lin's tuple for lin: AMX tiles, else weight pairs, else linear_i16, each where
        its self-test passed (with `par`, also on numba's threads) and the shape allows it."""
        key = (id(lin), par)
        if key not in self._lins:
            _, wp, wt = blocks.placeholders()
            kind = blocks.I16
            tiles_ok = tiles_linear_ok() and (not par or tiles_par_ok())
            if tiles_ok and self._copy(lin, True) is not None:
                kind, wt = blocks.TILES, self._copy(lin, True)
            elif (simd.HAS_AVX2 and pairs_linear_ok() and (not par or pairs_par_ok())
                  and self._copy(lin, False) is not None):  # fmt: skip
                kind, wp = blocks.PAIRS, self._copy(lin, False)
            self._lins[key] = (kind, lin.w, wp, wt, lin.ws)
        return self._lins[key]

    def _attend(self, t: int):
        """The passes' attention kernel for windows of t positions: in AMX tiles where its
        self-test passed, the window is long enough and E a multiple of 16, else attend_fwd."""
        tiles = t >= TILES_ATT_MIN and self.e % 16 == 0 and tiles_attention_ok()
        return rowops.attend_fwd_tiles if tiles else rowops.attend_fwd

    def _embed(self, windows: np.ndarray) -> tuple:
        """windows [N, T] -> (N, T, the embedding rows Q12 [N*T, D], their positions)."""
        n, t = windows.shape
        if t > self.window:
            raise ValueError(f"window of {t} tokens exceeds the model's {self.window}")
        tok = windows.reshape(-1)
        pos = np.tile(np.arange(t, dtype=np.int64), n)
        emb = self.tables.emb
        return n, t, rshift_round(emb.w[tok].astype(np.int64) * emb.ws[tok][:, None], 12), pos

    def _pass(self, windows: np.ndarray, probs: bool) -> np.ndarray:
        t_ = self.tables
        n, t, x, pos = self._embed(windows)
        rows = self._block_rows
        par = x.shape[0] > rows and numba.get_num_threads() > 1
        if par:
            pre, post, head = blocks.pre_attention_par, blocks.post_attention_par, blocks.head_par
        else:
            pre, post, head = blocks.pre_attention, blocks.post_attention, blocks.head
        rope = (t_.cos, t_.sin, t_.sqe, self.e)
        attend = self._attend(t)
        no_skip = np.zeros((0, self.d), np.int64), np.zeros(self.d, np.int64)
        n_enc = self.cfg.n_layer // 2
        skips = []
        for i, lay in enumerate(t_.layers):
            sk, skw = (skips.pop(), t_.skip[i - n_enc]) if i >= n_enc and skips else no_skip
            lq, lk, lv, lo, lup, ldn = (self._lin(lay[name], par) for name in LINEARS)
            x, q, k, v = pre(x, sk, skw, pos, t_.sqd, AQ, rope, lq, lk, lv, V_MAX, rows)
            y = attend(q, k, v, t, lay["gain"], self.att)
            x = post(x, y, t_.sqd, AQ, lo, lup, ldn, H_MAX, rows)
            if i < n_enc:
                skips.append(x)
        lemb = self._lin(t_.emb, par)
        out = head(x, t_.sqd, AQ, lemb, LOGIT_MAX, self.cap, self.exp, probs, rows)
        return out.reshape(n, t, -1)

    def forward_kernels_np(self, windows: np.ndarray) -> np.ndarray:
        """forward_np one kernel at a time over all rows (Engine._layers and _logits, kernel for
        kernel): the form the blocks of lmzip.blocks are tested against."""
        t_ = self.tables
        n, t, x, pos = self._embed(windows)
        n_enc = self.cfg.n_layer // 2
        skips = []
        for i, lay in enumerate(t_.layers):
            if i >= n_enc and skips:
                x = x + rshift_round(skips.pop() * t_.skip[i - n_enc][None, :], 24)
                x = np.clip(x, -RES_MAX, RES_MAX)
            a, s = self._normquant(x)
            q = self._qk(self._linear(lay["attn.q"], a, s, 12), pos)
            k = self._qk(self._linear(lay["attn.k"], a, s, 12), pos)
            v = self._linear(lay["attn.v"], a, s, 10, V_MAX)
            y = self._attend(t)(q, k, v, t, lay["gain"], self.att)
            a, s = self._row(rowops.absquant, rowops.absquant_par, y, 14, AQ)
            x = rowops.add_clamp(x, self._linear(lay["attn.o"], a, s, 12), RES_MAX)
            a, s = self._normquant(x)
            hid = self._linear(lay["mlp.up"], a, s, 12, H_MAX)
            a, s = self._row(rowops.relu2_absquant, rowops.relu2_absquant_par, hid, 0, AQ)
            x = rowops.add_clamp(x, self._linear(lay["mlp.down"], a, s, 12), RES_MAX)
            if i < n_enc:
                skips.append(x)
        a, s = self._normquant(x)
        logits = self._linear(t_.emb, a, s, 16, LOGIT_MAX)
        if self.cap:
            logits = self._row(rowops.softcap_rows, rowops.softcap_rows_par, logits, self.cap,
                               *self.exp)  # fmt: skip
        return logits.reshape(n, t, -1)

    def probs_kernels_np(self, windows: np.ndarray) -> np.ndarray:
        """forward_kernels_np, then the probabilities (probs_np one kernel at a time)."""
        capped = self.forward_kernels_np(windows)
        flat = capped.reshape(-1, capped.shape[-1])
        return self._row(rowops.probs_rows, rowops.probs_rows_par, flat, *self.exp).reshape(
            capped.shape
        )
