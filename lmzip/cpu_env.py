"""Process settings for numba's code generation, decided by the entry point (the CLI) before
numba loads: numba reads them once, at import.

On CPUs with AVX512, LLVM's tuning prefers 256-bit vectors in the loops it vectorizes (wide
vectors lowered the clock of early AVX512 Xeons). The row kernels of `lmzip.rowops` (the
quantizers, softcap, QK-norm, probabilities) run about 1.2x faster in 512-bit vectors on the
Xeons of sessions 12-14 (a forward token of the default model 50.9 -> 48.6 us on one core);
the hand-written vector code of `lmzip.simd` chooses its width itself. Only the speed changes:
every kernel computes exact integers (or float sums of integers below 2^53, in a fixed order),
whatever the vector width.

`request_amx` asks the OS for the AMX tile state, which Linux grants a process only on request;
the engine calls it before its start-up self-test of the tile kernels.
"""

from __future__ import annotations

import os
import sys

WIDE_VECTORS = ",-prefer-256-bit"  # the tuning flag off: LLVM then uses the widest vectors


def prefer_512_bit_vectors(environ=os.environ) -> bool:
    """Set NUMBA_CPU_FEATURES to the host's features with 512-bit vectors preferred, where the
    host has AVX512BW, numba is not loaded yet, and the user has not chosen a target
    (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES). True where it did."""
    if "numba" in sys.modules or "NUMBA_CPU_FEATURES" in environ or "NUMBA_CPU_NAME" in environ:
        return False
    import llvmlite.binding as llb

    features = llb.get_host_cpu_features().flatten()
    if "+avx512bw" not in features.split(","):
        return False
    environ["NUMBA_CPU_FEATURES"] = features + WIDE_VECTORS
    return True


ARCH_REQ_XCOMP_PERM = 0x1023  # arch_prctl: ask for an extended state component
XFEATURE_XTILEDATA = 18  # the AMX tile data
SYS_ARCH_PRCTL = 158  # x86_64


def request_amx() -> bool:
    """Ask Linux for the AMX tile state in this process (arch_prctl ARCH_REQ_XCOMP_PERM, Linux
    5.16 and later): without it the first tile instruction kills the process. True where it
    was granted (it then holds for every thread, and for children forked later); False on other
    systems, CPUs or kernels, or where the call fails."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        rc = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                          ctypes.c_long(XFEATURE_XTILEDATA))  # fmt: skip
    except (OSError, AttributeError):
        return False
    return rc == 0
