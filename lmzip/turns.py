"""Turn-taking between threads that run compiled loops (numba has no atomics of its own).

The streams of a mixed group decode on threads of their own, each stepping its language model
at its own pace, but their tokens must be decoded in one fixed order: position t of stream 0,
of stream 1, ..., then position t + 1 (the order the group's shared bucket table is updated
in, format_spec/mixer.md 4.2). A turn counter in an int64 array orders them: a thread waits
until turn[0] equals its slot, decodes, and hands the turn on. These numba intrinsics emit the
LLVM atomics that make the handoff correct on every CPU (an acquire load that the compiler may
not hoist out of the loop, a release store that publishes the decoded token's table updates
before the next slot reads them), a pause hint inside the spin and, after a while, sched_yield,
so that a waiting thread gives its core to the one it waits for when they share a core.

turn[1] is an abort flag: set (by any thread, also from Python) when a thread fails, so that
the others stop waiting instead of waiting forever.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from lmzip.simd import HAS_AVX2

_I64 = ir.IntType(64)
SPINS_BEFORE_YIELD = 2000  # pause hints (~tens of us) before a waiting thread yields its core
_HAS_YIELD = sys.platform.startswith("linux") or sys.platform == "darwin"


def _slot_ptr(context, builder, arr_type, arr, i):
    a = context.make_array(arr_type)(context, builder, arr)
    return builder.gep(builder.bitcast(a.data, _I64.as_pointer()), [i])


def _turn_array(arr, i) -> bool:
    return (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1
            and arr.layout == "C" and isinstance(i, types.Integer))  # fmt: skip


@intrinsic
def load_acquire(typingctx, arr, i):
    """arr[i] (int64 1-D C array), read with acquire ordering."""
    if not _turn_array(arr, i):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, i), codegen


@intrinsic
def store_release(typingctx, arr, i, value):
    """arr[i] = value (int64 1-D C array), written with release ordering."""
    if not _turn_array(arr, i):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot_ptr(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return types.none(arr, i, value), codegen


@intrinsic
def relax(typingctx, yield_core):
    """A pause hint where the target is x86 with AVX2 (the spin-wait instruction); sched_yield()
    too where yield_core is true and the platform has it."""

    def codegen(context, builder, sig, args):
        if HAS_AVX2:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause"
            )
            builder.call(fn, [])
        if _HAS_YIELD:
            fy = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield"
            )
            with builder.if_then(context.cast(builder, args[0], sig.args[0], types.boolean)):
                builder.call(fy, [])
        return context.get_dummy_value()

    return types.none(yield_core), codegen


@njit(cache=True, inline="always")
def wait_turn(turn, slot):
    """Wait until turn[0] == slot; False if turn[1] (abort) is set meanwhile."""
    spins = 0
    while load_acquire(turn, 0) != slot:
        if load_acquire(turn, 1) != 0:
            return False
        spins += 1
        relax(spins > SPINS_BEFORE_YIELD)
    return True


def new_turns() -> np.ndarray:
    """A turn counter at slot 0, abort flag clear."""
    return np.zeros(2, np.int64)
