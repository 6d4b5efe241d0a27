"""Validation in bits per byte with the Parameter Golf byte rule (DESIGN.md section 5).

bpb = sum over scored targets of cross-entropy (nats) / ln 2 / sum of their golf byte counts.
A target's byte count depends on the token before it (leading U+2581 not counted after BOS), and
that is always the token before it in the validation stream, so counts are computed once for the
whole stream.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lmzip.tokenizer import Tokenizer, golf_byte_counts
from trainer.shards import eval_windows


class ValSet:
    def __init__(self, tokens: np.ndarray, tok: Tokenizer):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.byte_counts = golf_byte_counts(tok, self.tokens)  # [n]; entry j is target j's bytes

    def __len__(self) -> int:
        return int(self.tokens.size)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    val: ValSet,
    seq_len: int,
    stride: int,
    batch_seqs: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """{'bpb', 'loss' (nats/token), 'tokens', 'bytes'} over the val stream, windows split by rank."""
    wins = eval_windows(len(val), seq_len, stride)
    mine = wins[rank::world]
    nats = torch.zeros((), dtype=torch.float64, device=device)
    n_tok = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for i in range(0, len(mine), batch_seqs):
        chunk = mine[i : i + batch_seqs]
        t = min(seq_len, len(val) - 1)
        x = np.stack([val.tokens[s : s + t] for s, _ in chunk])
        y = np.stack([val.tokens[s + 1 : s + t + 1] for s, _ in chunk])
        # mask[b, j]: target s+1+j is scored by this window (j >= first_scored - s - 1)
        first = np.array([f - s - 1 for s, f in chunk])[:, None]
        mask = np.arange(t)[None, :] >= first
        nb = np.stack([val.byte_counts[s + 1 : s + t + 1] for s, _ in chunk])
        xb = torch.from_numpy(x).to(device)
        with autocast or contextlib.nullcontext():
            logits = model(xb)
        ce = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            torch.from_numpy(y).to(device).reshape(-1),
            reduction="none",
        ).double()
        m = torch.from_numpy(mask.reshape(-1)).to(device)
        nats += (ce * m).sum()
        n_tok += m.sum()
        n_bytes += float((nb * mask).sum())
    if was_training:
        model.train()
    if world > 1:
        for v in (nats, n_tok, n_bytes):
            dist.all_reduce(v)
    nats_f, tok_f, bytes_f = nats.item(), n_tok.item(), n_bytes.item()
    return {
        "bpb": nats_f / math.log(2) / max(bytes_f, 1.0),
        "loss": nats_f / max(tok_f, 1.0),
        "tokens": int(tok_f),
        "bytes": int(bytes_f),
    }
