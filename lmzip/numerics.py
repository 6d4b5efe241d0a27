"""Integer primitives of the exact engine (format_spec/numerics.md, numerics version 1).

Everything here is defined on integers: rounding shifts, floor divisions, an exact integer square
root, and exp(-x) from three lookup tables that are themselves built by integer recurrences from
three constants. No floating-point result can leak into a frequency table, so every machine that
follows the spec computes the same tables (DESIGN section 2).

Fixed-point notation: "Qn" means an integer v standing for the real number v / 2^n.
All tensors are torch.int64 unless stated otherwise.
"""

from __future__ import annotations

import torch

from lmzip.tables import (  # noqa: F401  (the constants, as lmzip.numerics.X too)
    ATT_EXP_SIZE,
    EXP_C1,
    EXP_CA,
    EXP_CB,
    EXP_NMAX,
    NUMERICS_VERSION,
    ONE30,
    att_exp_np,
    exp_tables_np,
    rshift_round,
)


def div_round(n: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """round(n / d) for d > 0, ties toward +infinity: floor((2n + d) / 2d); 0 where d == 0."""
    d_safe = torch.where(d > 0, d, torch.ones_like(d))
    q = torch.div(2 * n + d_safe, 2 * d_safe, rounding_mode="floor")
    return torch.where(d > 0, q, torch.zeros_like(q))


def div_floor(n: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """floor(n / d) for d > 0; 0 where d == 0."""
    d_safe = torch.where(d > 0, d, torch.ones_like(d))
    q = torch.div(n, d_safe, rounding_mode="floor")
    return torch.where(d > 0, q, torch.zeros_like(q))


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) for 0 <= n < 2^62, exactly (float estimate, then integer correction)."""
    r = torch.sqrt(n.double()).floor().long()
    for _ in range(2):
        r = torch.where(r * r > n, r - 1, r)
        r = torch.where((r + 1) * (r + 1) <= n, r + 1, r)
    return r


def _exp_tables_cpu() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TN, TA, TB (lmzip/tables.py) as tensors."""
    return tuple(torch.from_numpy(t.copy()) for t in exp_tables_np())


_TABLE_CACHE: dict = {}


def exp_tables(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = ("exp", str(device))
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = tuple(t.to(device) for t in _exp_tables_cpu())
    return _TABLE_CACHE[key]


def exp_q30(x: torch.Tensor) -> torch.Tensor:
    """2^30 * exp(-x / 2^16) for x >= 0 (x in Q16 nats), as specified (three table lookups)."""
    tn, ta, tb = exp_tables(x.device)
    n = x >> 16
    valid = n < EXP_NMAX
    n = torch.clamp(n, max=EXP_NMAX - 1)
    v = rshift_round(tn[n] * ta[(x >> 8) & 255], 30)
    v = rshift_round(v * tb[x & 255], 30)
    return torch.where(valid, v, torch.zeros_like(v))


def att_exp_table(device) -> torch.Tensor:
    """ATT[i] = exp_q30(i * 256), and a final 0 (lmzip/tables.py), on `device`."""
    key = ("att", str(device))
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = torch.from_numpy(att_exp_np().copy()).to(device)
    return _TABLE_CACHE[key]


def softcap_q16(logits: torch.Tensor, cap: int) -> torch.Tensor:
    """cap * tanh(l / cap) in Q16 for Q16 logits l, through exp: tanh(z) = (1-e^-2z)/(1+e^-2z)."""
    if cap == 0:
        return logits
    if logits.device.type == "cpu":
        from lmzip import rowops

        flat = logits.reshape(-1, logits.size(-1)).contiguous().numpy()
        kernel = rowops.softcap_rows_par if flat.shape[0] > rowops.PAR_ROWS else rowops.softcap_rows
        out = kernel(flat, cap, *exp_tables_np())
        return torch.from_numpy(out).view(logits.shape)
    return softcap_reference(logits, cap)


def softcap_reference(logits: torch.Tensor, cap: int) -> torch.Tensor:
    y = logits.abs()
    e = exp_q30(torch.div(2 * y, cap, rounding_mode="floor"))
    t = torch.div((ONE30 - e) << 30, ONE30 + e, rounding_mode="floor")  # Q30, in [0, 2^30)
    mag = rshift_round(cap * t, 14)
    return torch.where(logits < 0, -mag, mag)


def lm_probs(capped: torch.Tensor) -> torch.Tensor:
    """[..., V] capped Q16 logits -> unnormalized Q30 probabilities; the argmax gets 2^30."""
    if capped.device.type == "cpu":
        from lmzip import rowops

        flat = capped.reshape(-1, capped.size(-1)).contiguous().numpy()
        kernel = rowops.probs_rows_par if flat.shape[0] > rowops.PAR_ROWS else rowops.probs_rows
        out = kernel(flat, *exp_tables_np())
        return torch.from_numpy(out).view(capped.shape)
    return lm_probs_reference(capped)


def lm_probs_reference(capped: torch.Tensor) -> torch.Tensor:
    m = capped.amax(dim=-1, keepdim=True)
    return exp_q30(m - capped)


def freq_table(p: torch.Tensor, precision: int) -> torch.Tensor:
    """[..., V] Q30 probabilities -> frequencies, each >= 1, summing to exactly 2^precision.

    f_i = 1 + floor(p_i * (2^P - V) / sum(p)); the remainder (< V) goes to the first argmax.
    """
    v = p.size(-1)
    total = 1 << precision
    if total < 2 * v:
        raise ValueError(f"precision {precision} too small for vocabulary {v}")
    if p.device.type == "cpu":
        from lmzip import rowops

        flat = p.reshape(-1, v).contiguous().numpy()
        return torch.from_numpy(rowops.freq_rows(flat, precision)).view(p.shape)
    return freq_table_reference(p, precision)


def freq_table_reference(p: torch.Tensor, precision: int) -> torch.Tensor:
    v, total = p.size(-1), 1 << precision
    s = p.sum(dim=-1, keepdim=True)
    f = 1 + torch.div(p * (total - v), s, rounding_mode="floor")
    rem = total - f.sum(dim=-1, keepdim=True)
    top = p.argmax(dim=-1, keepdim=True)
    return f.scatter_add(-1, top, rem)
