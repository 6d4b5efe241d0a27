"""ModelConfig: the shape of a model (architecture in lmzip/model.py, numerics in
format_spec/numerics.md). No torch: the compressor reads it from a container's header."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 1024  # tokenizer vocabulary (ids 0-3 pad/bos/eos/unk)
    n_layer: int = 9  # transformer blocks; the first half feed U-Net skips to the second
    d_model: int = 512  # residual width
    n_head: int = 8  # query heads
    n_kv_head: int = 4  # key/value heads (GQA); must divide n_head
    mlp_mult: int = 2  # MLP hidden width = mlp_mult * d_model
    seq_len: int = 1024  # context window the model is trained for (and coded with)
    rope_base: float = 10000.0  # RoPE frequency base
    logit_softcap: int = 30  # logits -> c*tanh(logits/c); an integer (exact in the engine), 0=off
    qk_gain_init: float = 1.5  # initial per-head query gain (after QK-norm)
    block_bits: int = 6  # weight bits of block matrices (per-row scales)
    embed_bits: int = 8  # weight bits of the (tied) embedding

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_mult * self.d_model

    @property
    def n_skip(self) -> int:
        return min(self.n_layer // 2, self.n_layer - self.n_layer // 2)

    def validate(self) -> ModelConfig:
        checks = [
            (self.vocab_size >= 260, "vocab_size must be >= 260 (4 control + 256 byte tokens)"),
            (self.vocab_size <= 65536, "vocab_size must be <= 65536"),
            (self.n_layer >= 1, "n_layer must be >= 1"),
            (self.n_head >= 1 and self.d_model % self.n_head == 0, "n_head must divide d_model"),
            (self.head_dim % 2 == 0, "head_dim must be even (RoPE)"),
            # attention dot products of int8 q and k are summed exactly in float32: < 2^24
            (self.head_dim <= 1024, "head_dim must be <= 1024"),
            (
                self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0,
                "n_kv_head must divide n_head",
            ),
            (self.d_model <= 4096 and self.mlp_hidden <= 16384, "model too wide for the engine"),
            (self.seq_len >= 2, "seq_len must be >= 2"),
            (0 <= self.logit_softcap <= 1000, "logit_softcap must be an integer in [0, 1000]"),
            (self.block_bits in (6, 8) and self.embed_bits in (6, 8), "weight bits must be 6 or 8"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid ModelConfig: {msg}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**d).validate()

    def n_params(self) -> int:
        d, e = self.d_model, self.head_dim
        attn = d * e * (self.n_head * 2 + self.n_kv_head * 2) + self.n_head
        mlp = 2 * d * self.mlp_hidden
        return self.vocab_size * d + self.n_layer * (attn + mlp) + self.n_skip * d
