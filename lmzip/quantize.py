"""Weight quantizers shared by the trainer (QAT), the exporter and the float reference.

Per output row r of a weight matrix W [rows, cols] with b bits (qmax = 2^(b-1) - 1):
    scale_r = float16(max_c |W[r, c]| / qmax)        (0 for an all-zero row)
    q[r, c] = clamp(round_half_even(W[r, c] / scale_r), -qmax, qmax)
and the model computes with q * scale_r exactly (format_spec/numerics.md section "weights").
The scale is rounded to float16 *before* the values are rounded, so the dequantized weights
are exactly what the container stores and what the integer engine multiplies with.
"""

from __future__ import annotations

import torch


def qmax_for(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def quantize_rows(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [rows, cols] float -> (int8 values [rows, cols], float16 scales [rows])."""
    qmax = qmax_for(bits)
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / qmax).half()
    s = scale.float()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.clamp(torch.round(w / safe[:, None]), -qmax, qmax)
    q = torch.where(s[:, None] > 0, q, torch.zeros_like(q))
    return q.to(torch.int8), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def fake_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (QAT)."""
    qmax = qmax_for(bits)
    with torch.no_grad():
        s = (w.float().abs().amax(dim=1, keepdim=True) / qmax).half().float()
        s = torch.where(s > 0, s, torch.ones_like(s))
        wq = torch.clamp(torch.round(w.float() / s), -qmax, qmax) * s
    return w + (wq.to(w.dtype) - w).detach()
