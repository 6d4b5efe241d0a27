"""The exact integer engine: next-token frequency tables that every machine computes identically.

Two paths share every operation: `forward` (teacher-forced: whole windows, batched) and `step`
(incremental: one token per stream with a KV cache, batched over streams). Every operation is
row-local integer arithmetic, or an exact integer reduction (matmuls, attention sums), so the
results cannot depend on batch shape, thread count, summation order or device. The normative
definition is format_spec/numerics.md; section names are cited in the comments.

Value formats (Qn = integer standing for v / 2^n): residual x Q12 (|x| < 2^25), q/k Q12, v Q10,
attention probabilities Q16, logits Q16, per-row activation scales Q24, weight scales Q24.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmzip import rowops
from lmzip.container import ModelFile
from lmzip.cpu_engine import (  # noqa: F401  (lmzip.engine.X, as before)
    AQ,
    H_MAX,
    I64_MAX,
    LINEARS,
    LOGIT_MAX,
    QK_MAX,
    RES_MAX,
    SCALE_MAX,
    V_MAX,
    CpuEngine,
    EngineTables,
    Linear,
    build_tables,
    fused_linear_ok,
    parallel_linear_ok,
)
from lmzip.kernels import MatMul
from lmzip.numerics import (
    ATT_EXP_SIZE,
    att_exp_table,
    div_round,
    isqrt,
    lm_probs,
    rshift_round,
    softcap_q16,
)

STEP_ALL_MAX_B = 64  # batches up to which a step runs as one compiled call


def _bitlength(v: torch.Tensor) -> torch.Tensor:
    """Number of bits of non-negative int64 values (0 for 0), exactly."""
    n = torch.zeros_like(v)
    for b in (32, 16, 8, 4, 2, 1):
        big = (v >> (n + b)) > 0
        n = torch.where(big, n + b, n)
    return torch.where(v > 0, n + 1, n)


class _Linear:
    """int8 weights [out, in] with Q24 per-row scales; y = (a @ W^T) * A * WS."""

    def __init__(self, lin: Linear, device, prefer: str):
        self.shape, self.qmax = lin.w.shape, lin.qmax
        self.ws = torch.from_numpy(lin.ws).to(device)
        self.rows = torch.from_numpy(lin.w).to(device)  # for embedding lookups
        self._prefer, self._mm = prefer, None
        self.ws_np = lin.ws
        # the fused CPU path (rowops.linear_i16): exact int32 sums while K * AQ * qmax < 2^31
        cpu = self.ws.device.type == "cpu"
        exact = cpu and lin.fused_exact() and fused_linear_ok()
        self.w_rows = lin.w if exact else None

    @property
    def mm(self) -> MatMul:
        """The torch product (unfused paths), built on first use: its kernel choice times and
        self-tests torch's kernels, start-up work the fused CPU path does not need."""
        if self._mm is None:
            self._mm = MatMul(self.rows.t(), self.qmax, self._prefer)
        return self._mm

    def __call__(self, a, a_scale, frac: int, lim: int = I64_MAX, fused: bool = False):
        """a [N, K] in [-16383, 16383], a_scale Q24 [N] -> clamp([N, out] in Q(frac), -lim, lim).
        (numerics.md "linear"): two exact int8 products, a = 128 * hi + lo, lo in [0, 127]."""
        if fused and self.w_rows is not None:
            big = a.size(0) > rowops.PAR_ROWS and parallel_linear_ok()
            kernel = rowops.linear_i16_par if big else rowops.linear_i16
            out = kernel(a.numpy(), self.w_rows, a_scale.numpy(), self.ws_np, 32 - frac, -lim, lim)
            return torch.from_numpy(out)
        hi = (a >> 7).to(torch.int8)
        lo = (a & 127).to(torch.int8)
        acc = self.mm(hi).long() * 128 + self.mm(lo).long()
        if fused:
            ws = self.ws_np
            out = rowops.rescale(acc.numpy(), a_scale.numpy(), ws, 32 - frac, -lim, lim)
            return torch.from_numpy(out)
        t = rshift_round(acc.long() * a_scale[:, None], 16)  # Q8 of acc * A
        y = rshift_round(t * self.ws[None, :], 32 - frac)
        return y if lim == I64_MAX else y.clamp(-lim, lim)


@dataclass
class DecodeState:
    """KV caches of B streams per layer: for the fused kernels (rowops.attend_step) k int8
    [B, K, E/2, rowops.key_cols(W), 2] (keys as pairs of elements) and v (Q10) int32
    [B, K, W, E]; for the GEMMs k as float32 and v as float64 (exact values), both
    [B, K, W, E]."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    k_all: torch.Tensor | None = None  # [L, B, ...]: the per-layer caches are its views
    v_all: torch.Tensor | None = None
    k_np: np.ndarray | None = None  # numpy views of k_all, v_all (CPU)
    v_np: np.ndarray | None = None


class Engine:
    def __init__(
        self,
        mf: ModelFile | None,
        device: str = "cpu",
        matmul: str = "auto",
        fused: bool | None = None,
        tables: EngineTables | None = None,
    ):
        """From a container (checked by cpu_engine.build_tables), or from its `tables`."""
        t = tables if tables is not None else build_tables(mf)
        self.cfg = cfg = t.cfg
        self.device = torch.device(device)
        dev = self.device
        # fused numba kernels on CPU; the torch reference elsewhere (and in tests)
        self.fused = self.device.type == "cpu" if fused is None else fused
        self.d, self.h, self.kv, self.e = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.vocab_size, self.window = cfg.vocab_size, cfg.seq_len
        self.sqd, self.sqe = t.sqd, t.sqe
        self.emb = _Linear(t.emb, dev, matmul)
        self.layers = []
        for lay_t in t.layers:
            lay = {n: _Linear(lay_t[n], dev, matmul) for n in LINEARS}
            lay["gain"] = torch.from_numpy(lay_t["gain"]).to(dev)
            self.layers.append(lay)
        self.skip = torch.from_numpy(t.skip).to(dev)
        self.cos, self.sin = torch.from_numpy(t.cos).to(dev), torch.from_numpy(t.sin).to(dev)
        self.cos_np, self.sin_np = t.cos, t.sin
        self.att_exp = att_exp_table(dev)
        # the compiled kernels read ATT as float64 (exact: every entry < 2^31; rowops._att_row)
        self.att_np = self.att_exp.cpu().numpy().astype(np.float64)
        # the whole step in one compiled call (rowops.step_all, CpuEngine's arguments), unless a
        # linear's int32 sums could overflow or its kernel failed the self-test (layer by layer)
        lins = [self.emb] + [lay[n] for lay in self.layers for n in LINEARS]
        whole = self.fused and all(lin.w_rows is not None for lin in lins)
        self._stacked = CpuEngine(t).step_all_args() if whole else None

    # -- row-local operations ---------------------------------------------------------------------
    def _normquant(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm + int8 quantization of rows x [N, D] Q12 -> (int8 [N, D], scale Q24 [N])."""
        if self.fused:
            a, s = rowops.normquant(x.numpy(), self.sqd, AQ)
            return torch.from_numpy(a), torch.from_numpy(s)
        amax = x.abs().amax(dim=-1)
        # shift so the squares fit: (x >> k)^2 * D < 2^48 * 2^12 (numerics.md "normquant")
        k = torch.clamp(_bitlength(amax) - 24, min=0)
        xs = x >> k[:, None]
        r = isqrt((xs * xs).sum(dim=-1)) << k
        a = div_round(AQ * x, amax[:, None])
        scale = div_round(amax * (self.sqd << 8), AQ * r)
        return a, scale

    def _absquant(self, y: torch.Tensor, frac: int) -> tuple[torch.Tensor, torch.Tensor]:
        """int8 quantization of rows y [N, n] in Q(frac) -> (int8, scale Q24), no norm."""
        if self.fused:
            a, s = rowops.absquant(y.numpy(), 24 - frac, AQ)
            return torch.from_numpy(a), torch.from_numpy(s)
        amax = y.abs().amax(dim=-1)
        a = div_round(AQ * y, amax[:, None])
        return a, div_round(amax << (24 - frac), torch.full_like(amax, AQ))

    def _qk(self, y: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """[N, n*E] Q12 at positions pos [N] -> QK-normed, rotated int8 [N, n, E] (scale 1/16)."""
        if self.fused:
            kernel = rowops.qk_rows_par if y.size(0) > rowops.PAR_ROWS else rowops.qk_rows
            out = kernel(y.numpy(), pos.numpy(), self.cos_np, self.sin_np, self.sqe, self.e)
            return torch.from_numpy(out)
        y = y.clamp(-QK_MAX, QK_MAX).view(y.size(0), -1, self.e)
        r = isqrt((y * y).sum(dim=-1, keepdim=True))
        yn = div_round(y * self.sqe, 16 * r)  # Q12, rms 1 per head
        half = self.e // 2
        y1, y2 = yn[..., :half], yn[..., half:]
        c, s = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        r1 = rshift_round(y1 * c + y2 * s, 30)
        r2 = rshift_round(y2 * c - y1 * s, 30)
        return rshift_round(torch.cat([r1, r2], dim=-1), 8).clamp(-127, 127).to(torch.int8)

    def _attend(self, q, k, v, lim, gain) -> torch.Tensor:
        """q int8 [B, H, Tq, E], k int8 [B, K, Tk, E], v Q10 [B, K, Tk, E], lim [B, Tq] (query
        t sees keys j <= lim[b, t]) -> y Q10 [B, Tq, H*E]. (numerics.md "Attention")"""
        b, h, tq, e = q.shape
        g = h // self.kv
        qg = q.reshape(b, self.kv, g * tq, e).float()
        dot = (qg @ k.float().transpose(-1, -2)).view(b, h, tq, -1)  # exact integers: < 2^24
        if self.fused:
            lim_n = lim[:, None, :].expand(b, h, tq).reshape(b * h, tq).contiguous().numpy()
            gain_n = gain.repeat(b).numpy()
            pn = rowops.att_probs(dot.reshape(b * h, tq, -1).numpy(), gain_n, lim_n, self.att_np)
            pg = torch.from_numpy(pn).view(b, self.kv, g * tq, -1)
        else:
            allowed = torch.arange(dot.size(-1), device=dot.device) <= lim[:, None, :, None]
            logit = rshift_round(dot.long() * gain[None, :, None, None], 16)  # Q16
            logit = torch.where(allowed, logit, torch.full_like(logit, -(1 << 62)))
            delta = logit.amax(dim=-1, keepdim=True) - logit
            w = self.att_exp[torch.clamp(delta >> 8, max=ATT_EXP_SIZE)]
            p = torch.div(w << 16, w.sum(dim=-1, keepdim=True), rounding_mode="floor")  # Q16
            pg = p.view(b, self.kv, g * tq, -1).double()
        o = (pg @ v.double()).long().view(b, h, tq, e)  # exact: every sum < 2^53
        return rshift_round(o, 16).transpose(1, 2).reshape(b, tq, h * e)

    def _residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual stream's update: clamp(x + y, -RES_MAX, RES_MAX)."""
        if self.fused:
            return torch.from_numpy(rowops.add_clamp(x.numpy(), y.numpy(), RES_MAX))
        return (x + y).clamp(-RES_MAX, RES_MAX)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return rshift_round(self.emb.rows[tokens].long() * self.emb.ws[tokens][:, None], 12)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        a, s = self._normquant(x)
        logits = self.emb(a, s, 16, LOGIT_MAX, self.fused)
        return softcap_q16(logits, self.cfg.logit_softcap)

    def _layers(self, x, pos, attn_fn) -> torch.Tensor:
        n_enc = self.cfg.n_layer // 2
        skips = []
        for i, lay in enumerate(self.layers):
            if i >= n_enc and skips:
                x = x + rshift_round(skips.pop() * self.skip[i - n_enc][None, :], 24)
                x = x.clamp(-RES_MAX, RES_MAX)
            a, s = self._normquant(x)
            fu = self.fused
            q = self._qk(lay["attn.q"](a, s, 12, I64_MAX, fu), pos)
            k = self._qk(lay["attn.k"](a, s, 12, I64_MAX, fu), pos)
            v = lay["attn.v"](a, s, 10, V_MAX, fu).view(-1, self.kv, self.e)
            y = attn_fn(i, q, k, v, lay["gain"])
            a, s = self._absquant(y, 10)
            x = self._residual(x, lay["attn.o"](a, s, 12, I64_MAX, fu))
            a, s = self._normquant(x)
            hid = lay["mlp.up"](a, s, 12, H_MAX, fu)
            if fu:
                big = hid.size(0) > rowops.PAR_ROWS
                kernel = rowops.relu2_absquant_par if big else rowops.relu2_absquant
                a, s = (torch.from_numpy(t) for t in kernel(hid.numpy(), 0, AQ))
            else:
                hid = hid.clamp(min=0)
                a, s = self._absquant(hid * hid, 24)
            x = self._residual(x, lay["mlp.down"](a, s, 12, I64_MAX, fu))
            if i < n_enc:
                skips.append(x)
        return x

    # -- the two paths --------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: windows [N, T] token ids (T <= window) -> capped logits Q16 [N, T, V];
        row t predicts the token at t + 1."""
        n, t = windows.shape
        if t > self.window:
            raise ValueError(f"window of {t} tokens exceeds the model's {self.window}")
        windows = windows.to(self.device)
        pos = torch.arange(t, device=self.device).repeat(n)
        causal = torch.arange(t, device=self.device)[None, :].expand(n, t)

        def attn(i, q, k, v, gain):
            if self.fused:
                y = rowops.attend_fwd(q.numpy(), k.numpy(), v.reshape(n * t, -1).numpy(), t,
                                      gain.numpy(), self.att_np)  # fmt: skip
                return torch.from_numpy(y)
            q = q.view(n, t, self.h, self.e).transpose(1, 2)
            k = k.view(n, t, self.kv, self.e).transpose(1, 2)
            v = v.view(n, t, self.kv, self.e).transpose(1, 2)
            return self._attend(q, k, v, causal, gain).reshape(n * t, -1)

        x = self._layers(self._embed(windows.reshape(-1)), pos, attn)
        return self._logits(x).view(n, t, -1)

    def probs_np(self, windows: np.ndarray) -> np.ndarray:
        """`forward` of int64 windows, then the Q30 probability rows [N, T, V] as numpy
        (CpuEngine.probs_np's integers)."""
        return lm_probs(self.forward(torch.from_numpy(windows))).cpu().numpy()

    def new_state(self, batch: int) -> DecodeState:
        shp = (batch, self.kv, self.window, self.e)
        dev = self.device
        n = len(self.layers)
        if self.fused:  # rowops.attend_step's types: int8 key pairs, int32 value rows
            kshape, vshape = rowops.cache_shapes(n, batch, self.kv, self.window, self.e)
            k_all = torch.zeros(kshape, dtype=torch.int8, device=dev)
            v_all = torch.zeros(vshape, dtype=torch.int32, device=dev)
        else:  # the GEMM types (exact values)
            k_all = torch.zeros((n,) + shp, dtype=torch.float32, device=dev)
            v_all = torch.zeros((n,) + shp, dtype=torch.float64, device=dev)
        cpu = dev.type == "cpu"
        return DecodeState(k=list(k_all), v=list(v_all), k_all=k_all, v_all=v_all,
                           k_np=k_all.numpy() if cpu else None,
                           v_np=v_all.numpy() if cpu else None)  # fmt: skip

    def step_all_ok(self) -> bool:
        """Whether a step of one stream is one compiled call (rowops.step_all; CPU, fused)."""
        return self._stacked is not None and self.device.type == "cpu"

    def step_all_args(self) -> tuple:
        """(args, tail): rowops.step_all(tokens, pos, *args, k_np, v_np, *tail) is one step."""
        return self._stacked

    def step_np(self, state: DecodeState, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """`step` on int64 numpy arrays (the decoding loop's): where the whole step is one compiled
        call (fused CPU engine, B <= STEP_ALL_MAX_B) it is called directly, without torch's
        dispatch and grad-mode switches (~20 us per token); elsewhere through `step`."""
        if self._stacked is not None and len(tokens) <= STEP_ALL_MAX_B and state.k_np is not None:
            args, tail = self._stacked
            return rowops.step_all(tokens, pos, *args, state.k_np, state.v_np, *tail)
        return self.step(state, torch.from_numpy(tokens), torch.from_numpy(pos)).cpu().numpy()

    @torch.no_grad()
    def step(self, state: DecodeState, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Incremental: stream b reads tokens[b] at position pos[b] (its KV cache holds positions
        < pos[b] of its current window) -> capped logits Q16 [B, V] for the next token."""
        b = tokens.size(0)
        tokens, pos = tokens.to(self.device), pos.to(self.device)
        if self._stacked is not None and b <= STEP_ALL_MAX_B and state.k_np is not None:
            return torch.from_numpy(self.step_np(state, tokens.numpy(), pos.numpy()))
        rows = torch.arange(b, device=self.device)
        tk = int(pos.max()) + 1

        def attn(i, q, k, v, gain):
            state.v[i][rows, :, pos] = v.to(state.v[i].dtype)  # [B, K, W, E] on both paths
            if self.fused:  # keys [B, K, E/2, W', 2]
                state.k[i][rows, :, :, pos] = k.reshape(b, self.kv, -1, 2).to(torch.int8)
                y = rowops.attend_step(q.numpy(), state.k[i].numpy(), state.v[i].numpy(),
                                       pos.numpy(), gain.numpy(), self.att_np)  # fmt: skip
                return torch.from_numpy(y)
            state.k[i][rows, :, pos] = k.to(state.k[i].dtype)  # [B, K, W, E]
            kc, vc = state.k[i][:, :, :tk], state.v[i][:, :, :tk]
            return self._attend(q[:, :, None], kc, vc, pos[:, None], gain).reshape(b, -1)

        x = self._layers(self._embed(tokens), pos, attn)
        return self._logits(x)
