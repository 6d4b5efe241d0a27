"""The constants and lookup tables of format_spec/numerics.md, in numpy (no torch).

exp(-x) is three tables built by integer recurrences from three constants (numerics.md
"exp"); attention reads one more table, ATT, built from them. `lmzip.numerics` (torch) and the
CPU engine (`lmzip.cpu_engine`) both take their tables from here, so there is one definition.
"""

from __future__ import annotations

import functools

import numpy as np

NUMERICS_VERSION = 1

ONE30 = 1 << 30
# round(2^30 * exp(-1)), round(2^30 * exp(-1/256)), round(2^30 * exp(-1/65536)), from 40-digit
# decimal arithmetic; tests recompute them with the decimal module.
EXP_C1 = 395007542
EXP_CA = 1069555701
EXP_CB = 1073725440
EXP_NMAX = 24  # exp(-x) for x >= 24 nats is 0 in Q30 precision
ATT_EXP_SIZE = EXP_NMAX * 256  # attention exp table: one entry per 1/256 nat


def rshift_round(v, s: int):
    """round(v / 2^s), ties toward +infinity: floor((v + 2^(s-1)) / 2^s) (ints or int64 arrays)."""
    if s <= 0:
        return v << (-s)
    return (v + (1 << (s - 1))) >> s


def _recur(c: int, n: int) -> list[int]:
    out = [ONE30]
    for _ in range(n - 1):
        out.append((out[-1] * c + (1 << 29)) >> 30)
    return out


@functools.cache
def exp_tables_np() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TN[n] ~ 2^30 e^-n (n < 24), TA[a] ~ 2^30 e^-(a/256), TB[b] ~ 2^30 e^-(b/65536)."""
    tabs = (_recur(EXP_C1, EXP_NMAX), _recur(EXP_CA, 256), _recur(EXP_CB, 256))
    return tuple(np.array(t, np.int64) for t in tabs)  # shared by every caller: read only


def exp_q30_np(x: np.ndarray) -> np.ndarray:
    """2^30 * exp(-x / 2^16) for int64 x >= 0 (Q16 nats), as specified (three table lookups)."""
    tn, ta, tb = exp_tables_np()
    n = x >> 16
    v = rshift_round(tn[np.minimum(n, EXP_NMAX - 1)] * ta[(x >> 8) & 255], 30)
    v = rshift_round(v * tb[x & 255], 30)
    return np.where(n < EXP_NMAX, v, 0)


@functools.cache
def att_exp_np() -> np.ndarray:
    """ATT[i] = exp_q30(i * 256), i < ATT_EXP_SIZE, and a final 0: attention weights at
    1/256-nat resolution (one lookup)."""
    idx = np.arange(ATT_EXP_SIZE, dtype=np.int64) << 8
    return np.concatenate([exp_q30_np(idx), np.zeros(1, np.int64)])  # shared: read only
