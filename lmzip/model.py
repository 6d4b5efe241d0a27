"""The float reference GPT (torch), shared by the trainer and the compressor; its ModelConfig
lives in lmzip/config.py (no torch) and is importable from here too.

The architecture is the Parameter Golf baseline (RMSNorm without weights, GQA attention with
QK-norm, RoPE and a learned per-head query gain, relu^2 MLP, U-Net skips with learned per-channel
weights, tied embeddings, tanh logit softcap), restricted to operations that have an exact integer
counterpart in `lmzip.engine` (format_spec/numerics.md):

- every matrix is a linear layer whose weights are quantized per output row (int6 blocks, int8
  embedding) with float16 scales; `qat=True` runs the forward pass on those quantized weights
  (straight-through gradients), so the exported model is the model that was trained;
- every other parameter (query gains, skip weights) is stored as float16 and used as such;
- norms carry no weights, so RMSNorm + int8 activation quantization is one scale per row.

Shapes: B batch, T time, D d_model, H heads, K kv heads, E head dim, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzip.config import ModelConfig
from lmzip.quantize import fake_quant


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """theta_i = base^(-2i/E), i < E/2, in float64 (the exporter stores cos/sin of these)."""
    e = cfg.head_dim
    return cfg.rope_base ** (-torch.arange(0, e, 2, dtype=torch.float64) / e)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # rotate-half convention: pairs (i, i + E/2); x: [B, h, T, E], cos/sin: [T, E/2]
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class QLinear(nn.Linear):
    """Linear layer without bias whose forward pass sees per-row quantized weights when qat."""

    def __init__(self, d_in: int, d_out: int, bits: int, zero_init: bool = False):
        super().__init__(d_in, d_out, bias=False)
        self.bits = bits
        self.qat = False
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quant(self.weight, self.bits) if self.qat else self.weight
        return F.linear(x, w.to(x.dtype))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, e, b = cfg.d_model, cfg.head_dim, cfg.block_bits
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, e
        self.q = QLinear(d, cfg.n_head * e, b)
        self.k = QLinear(d, cfg.n_kv_head * e, b)
        self.v = QLinear(d, cfg.n_kv_head * e, b)
        self.o = QLinear(cfg.n_head * e, d, b, zero_init=True)
        self.gain = nn.Parameter(torch.full((cfg.n_head,), cfg.qk_gain_init))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        bsz, t, _ = x.shape
        q = self.q(x).view(bsz, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k(x).view(bsz, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v(x).view(bsz, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(rms_norm(q), cos, sin), apply_rope(rms_norm(k), cos, sin)
        # the gain is stored as float16 in the container; round it the same way here
        gain = self.gain.half().float() + (self.gain - self.gain.detach())
        q = q * gain.to(q.dtype)[None, :, None, None]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv_head != self.n_head
        )
        return self.o(y.transpose(1, 2).reshape(bsz, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = QLinear(cfg.d_model, cfg.mlp_hidden, cfg.block_bits)
        self.down = QLinear(cfg.mlp_hidden, cfg.d_model, cfg.block_bits, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.tok_emb.weight, std=0.005)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.skip_weights = nn.Parameter(torch.ones(cfg.n_skip, cfg.d_model))
        self.register_buffer("inv_freq", rope_inv_freq(cfg).float(), persistent=False)

    def set_qat(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, QLinear):
                m.qat = on
        self.qat = on

    def rope(self, t: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(t, device=device, dtype=torch.float32)
        ang = torch.outer(pos, self.inv_freq.to(device))
        return ang.cos(), ang.sin()

    def embedding_weight(self) -> torch.Tensor:
        w = self.tok_emb.weight
        return fake_quant(w, self.cfg.embed_bits) if getattr(self, "qat", False) else w

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] token ids -> softcapped logits [B, T, V] (float32)."""
        cfg = self.cfg
        emb = self.embedding_weight()
        x = F.embedding(idx, emb)
        cos, sin = self.rope(idx.size(1), idx.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        skip_w = self.skip_weights.half().float() + (self.skip_weights - self.skip_weights.detach())
        n_enc = cfg.n_layer // 2
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= n_enc and skips:
                x = x + skip_w[i - n_enc].to(x.dtype) * skips.pop()
            x = block(x, cos, sin)
            if i < n_enc:
                skips.append(x)
        logits = F.linear(rms_norm(x), emb.to(x.dtype)).float()
        if cfg.logit_softcap:
            c = float(cfg.logit_softcap)
            logits = c * torch.tanh(logits / c)
        return logits

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def token_nll(model: GPT, windows: torch.Tensor) -> torch.Tensor:
    """windows [B, T] (each starting with BOS) -> nats of tokens 1..T-1 given their prefix."""
    with torch.no_grad():
        logits = model(windows[:, :-1])
        logp = torch.log_softmax(logits.double(), dim=-1)
        return -logp.gather(-1, windows[:, 1:, None].long())[..., 0]
