"""GPT (float, torch) <-> model container tensors.

Tensor names and kinds (format_spec/numerics.md, "Model tensors"):
    tok_emb                 q8/q6 [V, D]      tied embedding and output layer
    blocks.{i}.attn.q       q6 [H*E, D]       (block_bits)
    blocks.{i}.attn.k       q6 [K*E, D]
    blocks.{i}.attn.v       q6 [K*E, D]
    blocks.{i}.attn.o       q6 [D, H*E]
    blocks.{i}.attn.gain    f16 [H]           query gain after QK-norm
    blocks.{i}.mlp.up       q6 [F, D]
    blocks.{i}.mlp.down     q6 [D, F]
    skip_weights            f16 [S, D]        U-Net skip weights
    rope                    i32 [B, E/2, 2]   Q30 (cos, sin) of theta_i * 2^b, b < B
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lmzip.container import ModelFile, QTensor
from lmzip.model import GPT, ModelConfig, rope_inv_freq
from lmzip.numerics import NUMERICS_VERSION
from lmzip.quantize import dequantize_rows, quantize_rows


def rope_bits(cfg: ModelConfig) -> int:
    """Number of stored power-of-two rotations: positions 0..seq_len-1 need bits 0..B-1."""
    return max(1, (cfg.seq_len - 1).bit_length())


def rope_table(cfg: ModelConfig) -> np.ndarray:
    """int32 [B, E/2, 2]: round(2^30 cos(theta_i 2^b)), round(2^30 sin(theta_i 2^b)).

    Computed once by the writer with float64 and stored, so readers need no transcendental
    functions of their own (format_spec/numerics.md, "RoPE").
    """
    theta = rope_inv_freq(cfg).tolist()
    out = np.zeros((rope_bits(cfg), len(theta), 2), dtype=np.int64)
    for b in range(out.shape[0]):
        for i, th in enumerate(theta):
            a = math.fmod(th * (1 << b), 2 * math.pi)
            out[b, i] = (round(math.cos(a) * (1 << 30)), round(math.sin(a) * (1 << 30)))
    return np.clip(out, -(1 << 30), (1 << 30) - 1).astype(np.int32)


def _qt(w: torch.Tensor, bits: int) -> QTensor:
    q, s = quantize_rows(w, bits)
    return QTensor(f"q{bits}", q.numpy(), s.numpy())


def model_file_from_gpt(model: GPT, tokenizer_bytes: bytes, provenance: dict) -> ModelFile:
    cfg = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    t: dict[str, QTensor] = {"tok_emb": _qt(sd["tok_emb.weight"], cfg.embed_bits)}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        for name in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"):
            t[p + name] = _qt(sd[p + name + ".weight"], cfg.block_bits)
        t[p + "attn.gain"] = QTensor("f16", sd[p + "attn.gain"].half().numpy(), None)
    t["skip_weights"] = QTensor("f16", sd["skip_weights"].half().numpy(), None)
    t["rope"] = QTensor("i32", rope_table(cfg), None)
    return ModelFile(
        config=cfg.to_dict(),
        tokenizer=tokenizer_bytes,
        tensors=t,
        provenance=dict(provenance),
        numerics_version=NUMERICS_VERSION,
    )


def _deq(qt: QTensor) -> torch.Tensor:
    if qt.kind in ("q6", "q8"):
        return dequantize_rows(torch.from_numpy(qt.values), torch.from_numpy(qt.scales))
    return torch.from_numpy(np.asarray(qt.values, dtype=np.float32))


def gpt_from_model_file(mf: ModelFile) -> GPT:
    """The float reference: a GPT whose parameters are the container's dequantized values."""
    cfg = ModelConfig.from_dict(mf.config)
    model = GPT(cfg)
    sd = {"tok_emb.weight": _deq(mf.tensors["tok_emb"])}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        for name in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"):
            sd[p + name + ".weight"] = _deq(mf.tensors[p + name])
        sd[p + "attn.gain"] = _deq(mf.tensors[p + "attn.gain"])
    sd["skip_weights"] = _deq(mf.tensors["skip_weights"]).reshape(cfg.n_skip, cfg.d_model)
    model.load_state_dict(sd, strict=True)
    return model.eval()
