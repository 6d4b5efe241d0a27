"""Exact integer matrix products, chosen per machine by a start-up self-test.

A product of int8 activations [M, K] with int8-stored weights [K, N] must be the exact integer
result: it feeds the frequency tables, which encoder and decoder must agree on bit for bit.
Three kernels compute it:

- "int_mm": torch._int_mm (oneDNN VNNI on x86 CPUs, cuBLASLt on CUDA). Fast, but oneDNN's AVX2
  path saturates int16 pair sums and is silently wrong for weights outside [-64, 63]
  (DESIGN section 2), so it is only used after it passed the self-test on this machine.
- "f32": float32 GEMM on integer values, K split so that every partial sum stays below 2^24
  (then every float32 sum is exact, whatever the summation order).
- "f64": float64 GEMM; exact for K * 127 * 127 < 2^53, i.e. always here. The reference.
"""

from __future__ import annotations

import functools
import time

import torch

KERNELS = ("int_mm", "f32", "f64")


def _mm_f64(a: torch.Tensor, w: torch.Tensor, wmax: int) -> torch.Tensor:
    return (a.double() @ w.double()).long()


def _mm_f32(a: torch.Tensor, w: torch.Tensor, wmax: int) -> torch.Tensor:
    kc = max(1, (1 << 24) // (128 * max(1, wmax)) - 1)
    k = a.size(1)
    if k <= kc:
        return (a.float() @ w.float()).long()
    out = None
    for s in range(0, k, kc):
        part = (a[:, s : s + kc].float() @ w[s : s + kc].float()).long()
        out = part if out is None else out + part
    return out


def _mm_int(a: torch.Tensor, w: torch.Tensor, wmax: int) -> torch.Tensor:
    m = a.size(0)
    if a.is_cuda and m <= 16:  # cuBLASLt int8 GEMM wants M > 16: pad rows with zeros
        pad = torch.zeros(17 - m, a.size(1), dtype=a.dtype, device=a.device)
        return torch._int_mm(torch.cat([a, pad]), w)[:m]
    return torch._int_mm(a.contiguous(), w)  # int32: exact here, callers widen


_IMPL = {"int_mm": _mm_int, "f32": _mm_f32, "f64": _mm_f64}


def _adversarial_cases(k: int, n: int, wmax: int, device) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1234)
    cases = []
    for m in (1, 3, 17, 64):
        a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
        w = torch.randint(-wmax, wmax + 1, (k, n), generator=g, dtype=torch.int8)
        cases.append((a, w))
    # extremes: all products at +-127 * +-wmax, same sign (largest sums) and alternating signs
    a = torch.full((4, k), 127, dtype=torch.int8)
    a[1] = -128  # the high half of a 15-bit activation reaches -128
    a[2, ::2] = -127
    a[3] = torch.randint(0, 2, (k,), generator=g, dtype=torch.int8) * 254 - 127
    w = torch.full((k, n), wmax, dtype=torch.int8)
    w[:, 1::2] = -wmax
    cases.append((a, w))
    return [(a.to(device), w.to(device)) for a, w in cases]


@functools.cache
def kernel_ok(name: str, k: int, n: int, wmax: int, device: str) -> bool:
    """Does kernel `name` give exact products for shape K x N and weights in [-wmax, wmax]?"""
    try:
        for a, w in _adversarial_cases(k, n, wmax, torch.device(device)):
            if not torch.equal(_IMPL[name](a, w, wmax).long(), _mm_f64(a, w, wmax)):
                return False
        return True
    except (RuntimeError, NotImplementedError):
        return False


def kernel_seconds(name: str, k: int, n: int, device: str, m: int = 128, beat: float = 0.0
                   ) -> float:  # fmt: skip
    """Best time of kernel `name` over several [m, K] x [K, N] products on this machine. The
    minimum, not the median: on a busy machine a run can be descheduled, never sped up, so the
    best run is the kernel's own speed. Every kernel that passed the self-test gives the same
    integers, so choosing by speed changes no result; it matters: on AVX2-only x86 (no VNNI)
    oneDNN's exact `_int_mm` runs at ~2 GOP/s, 30x slower than the float32 GEMM."""
    dev = torch.device(device)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8).to(dev)
    w = torch.randint(-31, 32, (k, n), dtype=torch.int8).to(dev)
    fn = _IMPL[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core speed: a multi-threaded GEMM on a busy machine waits
    try:  # on descheduled peers, which says nothing about the kernel
        fn(a, w, 127)
        best = float("inf")
        for _ in range(9):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn(a, w, 127)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
            if beat and best > 4 * beat:  # clearly slower than a kernel already timed
                break
    finally:
        torch.set_num_threads(threads)
    return best


@functools.cache
def fastest(names: tuple, k: int, n: int, device: str) -> str:
    """The fastest of the exact kernels `names` for K x N on this machine (float32 timed first:
    it is never slow, so a slow kernel's timing stops early)."""
    order = sorted(names, key=lambda name: name != "f32")
    times: dict = {}
    for name in order:
        times[name] = kernel_seconds(name, k, n, device, beat=min(times.values(), default=0.0))
    return min(order, key=times.__getitem__)


class MatMul:
    """An exact int8 x int8 -> int64 product for one weight matrix, using the fastest kernel
    that passed the self-test for its shape and weight range (or the one forced by `prefer`)."""

    def __init__(self, w_t: torch.Tensor, wmax: int, prefer: str = "auto"):
        self.w = w_t.contiguous()  # [K, N] int8
        self.wmax = wmax
        k, n = self.w.shape
        dev = str(self.w.device)
        if prefer == "auto":
            ok = tuple(name for name in KERNELS if name == "f64" or kernel_ok(name, k, n, wmax, dev))
            self.kernel = fastest(ok, k, n, dev)
        elif prefer == "f64" or kernel_ok(prefer, k, n, wmax, dev):
            self.kernel = prefer
        else:  # a forced kernel that failed its self-test: never use it silently
            self.kernel = "f64"
        self._fn = _IMPL[self.kernel]

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return self._fn(a, self.w, self.wmax)
