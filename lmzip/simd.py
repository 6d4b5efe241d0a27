"""Exact int16 x int8 dot products written as LLVM vector code, for rowops' linear and attention
kernels.

LLVM's loop vectorizer compiles the scalar int32 dot products of rowops to vpmulld (8 products
per instruction on AVX2). These numba intrinsics emit the pairwise multiply-add that x86 has
since SSE2 (vpmaddwd: 16 int16 products summed in pairs into 8 int32 per AVX2 instruction):
the `llvm.x86.avx2.pmadd.wd` intrinsic where the target CPU has AVX2 (numba compiles for, and
caches per, the host CPU; see _target_has_avx2), else the same operation written with shuffles,
sign extensions, multiplies and adds, which every LLVM target compiles. The results are the same int32 sums as
the scalar loops: every partial sum is below 2^31 in magnitude (the callers' bound: K * 16383 *
max|w| < 2^31), so int32 addition is exact in any order.

dot2x2 and dot1x4 cover the first 16 * n16 elements of their rows; the caller adds the rest
(K mod 16) with scalar code. keys_dot2 and keys_dot1 run along the other axis: the products of
one or two query rows with blocks of 8 keys stored as pairs of elements (no horizontal sums).
rows_pv2 and rows_pv1 are the attention's P.V sums over a list of value rows, in float64 (exact:
every product and partial sum is an integer below 2^53, the callers' bound).

On CPUs with AMX (HAS_AMX, and the tile state granted by the OS: cpu_env.request_amx), the
teacher-forced passes run in tiles of int8 dot products: tile_rows16 (the linears, each int16 row
as a signed high and an unsigned low byte), tile_dots (q.k) and tile_pv / tile_pv_signed (P.V as
products of bytes), all through _tile_products. Their sums are exact int32 (the callers' bounds);
the callers combine them exactly.
"""

from __future__ import annotations

import llvmlite.binding as llb
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic


def _target_has_avx2() -> bool:
    """Whether numba compiles for a CPU with AVX2: the host, unless NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES name another target (then only where the features say so)."""
    if config.CPU_FEATURES is not None:
        return "+avx2" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME not in (None, "host"):
        return False
    return "+avx2" in llb.get_host_cpu_features().flatten().split(",")


def _target_has(feature: str) -> bool:
    """Whether numba compiles for a CPU with `feature` (an LLVM name such as "avx512bw"): the
    host's features, unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES name another target (then only
    where the features say so)."""
    if config.CPU_FEATURES is not None:
        return f"+{feature}" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME not in (None, "host"):
        return False
    return f"+{feature}" in llb.get_host_cpu_features().flatten().split(",")


HAS_AVX2 = _target_has_avx2()
# 512-bit multiply-adds (vpmaddwd zmm; vpdpwssd where the CPU has AVX512-VNNI, which LLVM fuses
# from the multiply-add and the sum) in the linears' dot products: twice the products per
# instruction of the AVX2 form on CPUs that have them
HAS_AVX512BW = HAS_AVX2 and _target_has("avx512bw")
# 512-bit byte dot products (vpdpbusd: 64 unsigned x signed byte products summed in fours into
# 16 int32 per instruction): quads_dot1, the decoding step's linears
HAS_VNNI512 = HAS_AVX512BW and _target_has("avx512vnni")
# AMX tiles with int8 dot products (Sapphire Rapids and later Xeons): tile_rows16, the passes'
# linears. The code exists where numba compiles for such a CPU; it runs only where the OS also
# grants the process the tile state (cpu_env.request_amx), which the engine checks first.
HAS_AMX = _target_has("amx-tile") and _target_has("amx-int8")

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V16x8 = ir.VectorType(_I8, 16)
_V16x16 = ir.VectorType(_I16, 16)
_V8x32 = ir.VectorType(_I32, 8)
_V32x8 = ir.VectorType(_I8, 32)
_V32x16 = ir.VectorType(_I16, 32)
_V16x32 = ir.VectorType(_I32, 16)


def _shuffle(builder, a, b, idx):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(idx)), idx))


def _splat(builder, x, lanes):
    """x (a scalar) broadcast to a vector of `lanes` of its type."""
    one = builder.insert_element(ir.Constant(ir.VectorType(x.type, lanes), ir.Undefined), x,
                                 ir.Constant(_I32, 0))  # fmt: skip
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def _pmadd(builder, a, b):
    """<16 x i16> a, b -> <8 x i32> with lane i = a[2i] * b[2i] + a[2i+1] * b[2i+1]."""
    if HAS_AVX2:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V8x32, [_V16x16, _V16x16]), "llvm.x86.avx2.pmadd.wd"
        )
        return builder.call(fn, [a, b])
    even, odd = [2 * i for i in range(8)], [2 * i + 1 for i in range(8)]
    ae, ao = (builder.sext(_shuffle(builder, a, a, ix), _V8x32) for ix in (even, odd))
    be, bo = (builder.sext(_shuffle(builder, b, b, ix), _V8x32) for ix in (even, odd))
    return builder.add(builder.mul(ae, be), builder.mul(ao, bo))


def _pmadd512(builder, a, b):
    """<32 x i16> a, b -> <16 x i32>, lane i = a[2i] * b[2i] + a[2i+1] * b[2i+1] (AVX512BW)."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V16x32, [_V32x16, _V32x16]), "llvm.x86.avx512.pmaddw.d.512"
    )
    return builder.call(fn, [a, b])


def _pair_sum(builder, u, v):
    """<8 x i32> u, v -> <8 x i32> of adjacent-lane sums [u0+u1, u2+u3, v0+v1, v2+v3, u4+u5, ...]
    (the per-128-bit-lane layout of phaddd)."""
    lo = _shuffle(builder, u, v, [0, 2, 8, 10, 4, 6, 12, 14])
    hi = _shuffle(builder, u, v, [1, 3, 9, 11, 5, 7, 13, 15])
    return builder.add(lo, hi)


def _sum4(builder, accs):
    """The lane sums of four <8 x i32> accumulators, as four i32 (one joint reduction tree)."""
    t = _pair_sum(
        builder, _pair_sum(builder, accs[0], accs[1]), _pair_sum(builder, accs[2], accs[3])
    )
    s = builder.add(_shuffle(builder, t, t, [0, 1, 2, 3]), _shuffle(builder, t, t, [4, 5, 6, 7]))
    return [builder.extract_element(s, ir.Constant(_I32, i)) for i in range(4)]


def _row_ptr(context, builder, arr_type, arr, row=None, elem=_I8):
    """Pointer to the first element of a C-contiguous 1-D array, or of row `row` of a 2-D one."""
    a = context.make_array(arr_type)(context, builder, arr)
    base = builder.bitcast(a.data, _I8.as_pointer())
    if row is not None:
        base = builder.gep(base, [builder.mul(row, builder.extract_value(a.strides, 0))])
    return builder.bitcast(base, elem.as_pointer())


def _contiguous(*arrays) -> bool:
    """Rows must be contiguous: int16 1-D and int8 2-D C arrays (else no signature matches)."""
    dts = [types.int16] * (len(arrays) - 1) + [types.int8]
    return all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == d and a.ndim == n
               for a, d, n in zip(arrays, dts, [1] * (len(arrays) - 1) + [2]))  # fmt: skip


def _dot_step(builder, xs, ws, off, accs, lanes):
    """accs[k] += the pairwise multiply-adds of `lanes` elements from offset `off` of the k-th
    (x, w) pair (x int16, w int8 sign-extended as loaded)."""
    vx, vw, pmadd = ((_V32x16, _V32x8, _pmadd512) if lanes == 32 else
                     (_V16x16, _V16x8, _pmadd))  # fmt: skip
    xv = [builder.load(builder.bitcast(builder.gep(p, [off]), vx.as_pointer()), align=2)
          for p in xs]  # fmt: skip
    wv = [builder.sext(builder.load(builder.bitcast(builder.gep(p, [off]), vw.as_pointer()),
                                    align=1), vx)
          for p in ws]  # fmt: skip
    k = 0
    for x in xv:
        for w in wv:
            builder.store(builder.add(builder.load(accs[k]), pmadd(builder, x, w)), accs[k])
            k += 1


def _dot_block(builder, xs, ws, n16):
    """The int32 sums x . w for the (x, w) pairs of the block (x major; len(xs) * len(ws) a
    multiple of 4), over 16 * n16 elements: in steps of 16 (AVX2), or of 32 (HAS_AVX512BW) and a
    last step of 16 where n16 is odd. Integer sums: the same in any order."""
    n_acc = len(xs) * len(ws)
    zero = ir.Constant(_V8x32, None)
    accs = [cgutils.alloca_once_value(builder, zero) for _ in range(n_acc)]
    i64 = n16.type
    if HAS_AVX512BW:
        wide = [cgutils.alloca_once_value(builder, ir.Constant(_V16x32, None))
                for _ in range(n_acc)]  # fmt: skip
        with cgutils.for_range(builder, builder.ashr(n16, ir.Constant(i64, 1))) as loop:
            off = builder.mul(loop.index, ir.Constant(i64, 32))
            _dot_step(builder, xs, ws, off, wide, 32)
        for a, w in zip(accs, wide):  # 16 lanes -> 8: the sums of the two halves
            v = builder.load(w)
            builder.store(builder.add(_shuffle(builder, v, v, list(range(8))),
                                      _shuffle(builder, v, v, list(range(8, 16)))), a)  # fmt: skip
        with builder.if_then(builder.trunc(n16, ir.IntType(1))):
            off = builder.mul(builder.sub(n16, ir.Constant(i64, 1)), ir.Constant(i64, 16))
            _dot_step(builder, xs, ws, off, accs, 16)
    else:
        with cgutils.for_range(builder, n16) as loop:
            _dot_step(builder, xs, ws, builder.mul(loop.index, ir.Constant(i64, 16)), accs, 16)
    sums = [builder.load(a) for a in accs]
    return [v for i in range(0, n_acc, 4) for v in _sum4(builder, sums[i : i + 4])]


@intrinsic
def dot2x2(typingctx, x0, x1, w, j, n16):
    """(x0 . w[j], x0 . w[j+1], x1 . w[j], x1 . w[j+1]) over the first 16 * n16 elements, as
    int32: x0, x1 int16 1-D C arrays, w int8 2-D C array."""
    if not _contiguous(x0, x1, w):
        return None
    sig = types.UniTuple(types.int32, 4)(x0, x1, w, j, n16)

    def codegen(context, builder, signature, args):
        tx0, tx1, tw = signature.args[:3]
        ax0, ax1, aw, jj, nn = args
        w0 = _row_ptr(context, builder, tw, aw, jj)
        w1 = _row_ptr(context, builder, tw, aw, builder.add(jj, ir.Constant(jj.type, 1)))
        xs = [_row_ptr(context, builder, tx0, ax0, elem=_I16),
              _row_ptr(context, builder, tx1, ax1, elem=_I16)]  # fmt: skip
        sums = _dot_block(builder, xs, [w0, w1], nn)
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


@intrinsic
def dot4x2(typingctx, x0, x1, x2, x3, w, j, n16):
    """(x0 . w[j], x0 . w[j+1], x1 . w[j], ..., x3 . w[j+1]) over the first 16 * n16 elements,
    as int32: four int16 rows against two weight rows, each weight vector loaded and widened
    once for four rows (the widening shares the multiply-adds' port on x86)."""
    if not _contiguous(x0, x1, x2, x3, w):
        return None
    sig = types.UniTuple(types.int32, 8)(x0, x1, x2, x3, w, j, n16)

    def codegen(context, builder, signature, args):
        tys = signature.args
        xs = [_row_ptr(context, builder, tys[i], args[i], elem=_I16) for i in range(4)]
        jj, nn = args[5], args[6]
        w0 = _row_ptr(context, builder, tys[4], args[4], jj)
        w1 = _row_ptr(context, builder, tys[4], args[4], builder.add(jj, ir.Constant(jj.type, 1)))
        sums = _dot_block(builder, xs, [w0, w1], nn)
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


@intrinsic
def dot1x4(typingctx, x0, w, j, n16):
    """(x0 . w[j], x0 . w[j+1], x0 . w[j+2], x0 . w[j+3]) over the first 16 * n16 elements, as
    int32: x0 int16 1-D C array, w int8 2-D C array."""
    if not _contiguous(x0, w):
        return None
    sig = types.UniTuple(types.int32, 4)(x0, w, j, n16)

    def codegen(context, builder, signature, args):
        tx0, tw = signature.args[:2]
        ax0, aw, jj, nn = args
        ws = [_row_ptr(context, builder, tw, aw, builder.add(jj, ir.Constant(jj.type, i)))
              for i in range(4)]  # fmt: skip
        sums = _dot_block(builder, [_row_ptr(context, builder, tx0, ax0, elem=_I16)], ws, nn)
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """A hint that arr[i] (1-D C array) will be read soon: llvm.prefetch (read, keep in every
    cache level). It changes no value, only when a cache line arrives."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and isinstance(i, types.Integer)):  # fmt: skip
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(a.data, [idx]), _I8.as_pointer())
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]),
            "llvm.prefetch.p0i8",
        )  # fmt: skip
        builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(arr, i), codegen


def _cols_ok(xs, wt, out) -> bool:
    """int16 2-D C rows, int8 3-D C weight pairs [K/2, N, 2], int32 2-D C outputs."""
    return (isinstance(xs, types.Array) and xs.layout == "C" and xs.dtype == types.int16
            and xs.ndim == 2 and isinstance(wt, types.Array) and wt.layout == "C"
            and wt.dtype == types.int8 and wt.ndim == 3 and isinstance(out, types.Array)
            and out.layout == "C" and out.dtype == types.int32 and out.ndim == 2)  # fmt: skip


@intrinsic
def cols_dot4(typingctx, xs, wt, n0, kp_n, out):
    """out[r, n0 + c] = sum over k < 2 kp_n of xs[r, k] * w[n0 + c, k], for r < 4 and c < 32, as
    int32 (HAS_AVX2 CPUs): the weights as pairs along k, wt[kp, n] = (w[n, 2 kp],
    w[n, 2 kp + 1]) (int8 [K/2, N, 2]), so that one multiply-add (vpmaddwd; vpdpwssd with VNNI)
    computes 16 outputs of one row at once (8 on AVX2) against the row's pair broadcast, with no
    horizontal sums: 32 outputs of 4 rows in 8 accumulators of 512 bits, or on AVX2 in two
    passes of 16 outputs (8 accumulators of 256 bits: 16 registers in all). Exact where every
    partial sum is below 2^31 (the callers' bound)."""
    if not _cols_ok(xs, wt, out):
        return None

    def codegen(context, builder, signature, args):
        # per pass: two weight vectors of `lanes` outputs (their pairs: 2 * lanes bytes each)
        lanes, n_pass = (16, 1) if HAS_AVX512BW else (8, 2)
        vw, vx, vacc, pmadd = ((_V32x8, _V32x16, _V16x32, _pmadd512) if HAS_AVX512BW else
                               (_V16x8, _V16x16, _V8x32, _pmadd))  # fmt: skip
        txs, twt, _, _, tout = signature.args
        axs, awt, nn0, kpn, aout = args
        x = context.make_array(txs)(context, builder, axs)
        w = context.make_array(twt)(context, builder, awt)
        o = context.make_array(tout)(context, builder, aout)
        i64 = ir.IntType(64)
        xbase = builder.bitcast(x.data, _I8.as_pointer())
        xrow = builder.extract_value(x.strides, 0)
        wbase = builder.bitcast(w.data, _I8.as_pointer())
        wrow = builder.extract_value(w.strides, 0)
        obase = builder.bitcast(o.data, _I8.as_pointer())
        orow = builder.extract_value(o.strides, 0)
        n0b = builder.mul(context.cast(builder, nn0, signature.args[2], types.int64),
                          ir.Constant(i64, 2))  # fmt: skip
        zero = ir.Constant(vacc, None)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(4)]
        kpn64 = context.cast(builder, kpn, signature.args[3], types.int64)
        for ps in range(n_pass):
            for row in accs:
                for acc in row:
                    builder.store(zero, acc)
            with cgutils.for_range(builder, kpn64) as loop:
                kp = loop.index
                wp = builder.gep(wbase, [builder.add(builder.mul(kp, wrow), n0b)])
                vs = [builder.sext(builder.load(builder.bitcast(
                    builder.gep(wp, [ir.Constant(i64, 2 * lanes * (2 * ps + b))]),
                    vw.as_pointer()), align=1), vx) for b in range(2)]  # fmt: skip
                for r in range(4):
                    xp = builder.gep(xbase, [builder.add(builder.mul(ir.Constant(i64, r), xrow),
                                                         builder.mul(kp, ir.Constant(i64, 4)))])  # fmt: skip
                    pair = builder.load(builder.bitcast(xp, _I32.as_pointer()), align=2)
                    xb = builder.bitcast(_splat(builder, pair, lanes), vx)
                    for b in range(2):
                        acc = accs[r][b]
                        builder.store(builder.add(builder.load(acc), pmadd(builder, vs[b], xb)),
                                      acc)  # fmt: skip
            for r in range(4):
                for b in range(2):  # outputs n0 + lanes * (2 ps + b) .., 4 bytes each
                    off = builder.add(builder.mul(ir.Constant(i64, r), orow),
                                      builder.add(builder.mul(n0b, ir.Constant(i64, 2)),
                                                  ir.Constant(i64, 4 * lanes * (2 * ps + b))))  # fmt: skip
                    dst = builder.bitcast(builder.gep(obase, [off]), vacc.as_pointer())
                    builder.store(builder.load(accs[r][b]), dst, align=4)
        return context.get_dummy_value()

    return types.none(xs, wt, n0, kp_n, out), codegen


def _keys_block_dots(context, builder, qs, kt_type, kt, n8, e2, outs):
    """For each 8-key block b < n8 of kt (int8 [E/2, >= 8 n8, 2]: kt[c2, j] holds elements 2 c2
    and 2 c2 + 1 of key j) and each int16 query row q in qs: out[8 b + i] = q . key(8 b + i), the
    int32 sums of e2 pairwise multiply-adds, one per element pair, each the 16 bytes of kt[c2, 8b:
    8b + 8] against the pair (q[2 c2], q[2 c2 + 1]) broadcast to every lane. Where the CPU has
    AVX512BW, blocks of 16 keys (32 bytes, one 512-bit multiply-add) and a last one of 8 where
    n8 is odd."""
    a = context.make_array(kt_type)(context, builder, kt)
    base = builder.bitcast(a.data, _I8.as_pointer())
    row = builder.extract_value(a.strides, 0)
    q32 = [builder.bitcast(q, _I32.as_pointer()) for q in qs]
    i64 = n8.type

    def block(keys, first):
        """Keys first .. first + keys - 1 (keys 8 or 16; first an i64 value)."""
        vk, vq, vacc, pmadd = ((_V16x8, _V16x16, _V8x32, _pmadd) if keys == 8 else
                               (_V32x8, _V32x16, _V16x32, _pmadd512))  # fmt: skip
        zero = ir.Constant(vacc, None)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in qs]  # zeroed here, per block
        col = builder.mul(first, ir.Constant(i64, 2))
        with cgutils.for_range(builder, e2) as cl:
            p = builder.gep(base, [builder.add(builder.mul(cl.index, row), col)])
            kv = builder.sext(builder.load(builder.bitcast(p, vk.as_pointer()), align=1), vq)
            for q, acc in zip(q32, accs):
                pair = builder.load(builder.gep(q, [cl.index]), align=2)
                qv = builder.bitcast(_splat(builder, pair, keys), vq)
                builder.store(builder.add(builder.load(acc), pmadd(builder, kv, qv)), acc)
        for out, acc in zip(outs, accs):
            dst = builder.bitcast(builder.gep(out, [first]), vacc.as_pointer())
            builder.store(builder.load(acc), dst, align=4)

    if HAS_AVX512BW:
        n16 = builder.ashr(n8, ir.Constant(i64, 1))
        with cgutils.for_range(builder, n16) as blk:
            block(16, builder.mul(blk.index, ir.Constant(i64, 16)))
        with builder.if_then(builder.trunc(n8, ir.IntType(1))):
            block(8, builder.mul(n16, ir.Constant(i64, 16)))
    else:
        with cgutils.for_range(builder, n8) as blk:
            block(8, builder.mul(blk.index, ir.Constant(i64, 8)))


def _keys_ok(qs, kt, outs) -> bool:
    """int16 1-D C query rows, int8 3-D C keys [E/2, W, 2], int32 1-D C outputs."""
    return (all(isinstance(q, types.Array) and q.layout == "C" and q.dtype == types.int16
                and q.ndim == 1 for q in qs)
            and isinstance(kt, types.Array) and kt.layout == "C" and kt.dtype == types.int8
            and kt.ndim == 3
            and all(isinstance(o, types.Array) and o.layout == "C" and o.dtype == types.int32
                    and o.ndim == 1 for o in outs))  # fmt: skip


def _keys_codegen(nq):
    def codegen(context, builder, signature, args):
        tys = signature.args
        qs = [_row_ptr(context, builder, tys[i], args[i], elem=_I16) for i in range(nq)]
        kt, n8, e2 = args[nq], args[nq + 1], args[nq + 2]
        outs = [_row_ptr(context, builder, tys[nq + 3 + i], args[nq + 3 + i], elem=_I32)
                for i in range(nq)]  # fmt: skip
        _keys_block_dots(context, builder, qs, tys[nq], kt, n8, e2, outs)
        return context.get_dummy_value()

    return codegen


@intrinsic
def keys_dot2(typingctx, qa, qb, kt, n8, e2, da, db):
    """da[j] = qa . key j and db[j] = qb . key j for j < 8 n8, int32 (qa, qb int16 [>= 2 e2];
    kt int8 [>= e2, >= 8 n8, 2], key j's elements 2 c2 and 2 c2 + 1 at kt[c2, j]; da, db int32
    [>= 8 n8]): each 16-byte load of keys serves both query rows."""
    if not _keys_ok([qa, qb], kt, [da, db]):
        return None
    return types.none(qa, qb, kt, n8, e2, da, db), _keys_codegen(2)


@intrinsic
def keys_dot1(typingctx, qa, kt, n8, e2, da):
    """keys_dot2 for one query row."""
    if not _keys_ok([qa], kt, [da]):
        return None
    return types.none(qa, kt, n8, e2, da), _keys_codegen(1)


_F64 = ir.DoubleType()
_V4xF64 = ir.VectorType(_F64, 4)
_V4x32 = ir.VectorType(_I32, 4)


def _rows_pv(context, builder, sig, args, nh):
    """acc_h[c] = sum_i p_h[idx[i]] * v[idx[i], c] for c < 16 e16, h < nh: the float64 sums of
    the value rows idx[0:m] (int32 [W, E], converted to float64 as loaded, or float64), in
    passes over the rows of up to 64 outputs (four blocks of 16, as many vector accumulators of
    8 doubles per head and block count: 16 of the 32 registers for two heads) where the CPU has
    AVX512, else of 16 (four accumulators of 4 doubles per head: 8 of the 16 registers). Each
    row's values are loaded and converted once per pass for every head. Wide passes keep more
    multiply-adds in flight (one accumulator chain per vector) and read the row list and the
    probabilities fewer times: dense rows of 64 values, two heads, 2.5 -> 1.8 ns per head and
    row on the Xeon of session 13."""
    tys = sig.args
    idx_t, ps_t, v_t = tys[0], tys[2 : 2 + nh], tys[2 + nh]
    aidx, m, ps, av, e16 = args[0], args[1], args[2 : 2 + nh], args[2 + nh], args[3 + nh]
    outs = args[4 + nh : 4 + 2 * nh]
    idx = _row_ptr(context, builder, idx_t, aidx, elem=ir.IntType(64))
    pp = [_row_ptr(context, builder, t, a, elem=_F64) for t, a in zip(ps_t, ps)]
    op = [_row_ptr(context, builder, t, a, elem=_F64) for t, a in zip(tys[4 + nh :], outs)]
    va = context.make_array(v_t)(context, builder, av)
    vbase = builder.bitcast(va.data, _I8.as_pointer())
    vrow = builder.extract_value(va.strides, 0)
    lanes, most = (8, 4) if HAS_AVX512BW else (4, 1)  # doubles per vector, blocks per pass
    vf, vi = ir.VectorType(_F64, lanes), ir.VectorType(_I32, lanes)
    zero = ir.Constant(vf, None)
    # a fused multiply-add rounds once where a product and a sum would round twice; neither
    # rounds here (exact integers), so the result is the same on targets without FMA units
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vf, [vf] * 3), f"llvm.fma.v{lanes}f64"
    )
    i64 = ir.IntType(64)
    esz = v_t.dtype.bitwidth // 8

    def run_pass(first, nb):
        """Outputs first .. first + 16 nb - 1 (first: an i64 value) over all m rows."""
        nv = 16 * nb // lanes
        # (alloca_once_value stores the zeros here: each pass starts from them)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(nh)]
        c0 = builder.mul(first, ir.Constant(i64, esz))
        with cgutils.for_range(builder, context.cast(builder, m, tys[1], types.int64)) as it:
            j = builder.load(builder.gep(idx, [it.index]))
            row = builder.gep(vbase, [builder.add(builder.mul(j, vrow), c0)])
            xs = []
            for q in range(nv):
                ptr = builder.gep(row, [ir.Constant(i64, lanes * q * esz)])
                if v_t.dtype == types.float64:
                    xs.append(builder.load(builder.bitcast(ptr, vf.as_pointer()), align=8))
                else:
                    x = builder.load(builder.bitcast(ptr, vi.as_pointer()), align=4)
                    xs.append(builder.sitofp(x, vf))
            for p, ah in zip(pp, accs):
                pv = _splat(builder, builder.load(builder.gep(p, [j])), lanes)
                for x, a in zip(xs, ah):
                    builder.store(builder.call(fma, [pv, x, builder.load(a)]), a)
        for o, ah in zip(op, accs):
            for q, a in enumerate(ah):
                off = builder.add(first, ir.Constant(i64, lanes * q))
                dst = builder.bitcast(builder.gep(o, [off]), vf.as_pointer())
                builder.store(builder.load(a), dst, align=8)

    nblk = context.cast(builder, e16, tys[3 + nh], types.int64)
    full = builder.sdiv(nblk, ir.Constant(i64, most))
    with cgutils.for_range(builder, full) as ps_:
        run_pass(builder.mul(ps_.index, ir.Constant(i64, 16 * most)), most)
    rest = builder.sub(nblk, builder.mul(full, ir.Constant(i64, most)))
    first = builder.mul(full, ir.Constant(i64, 16 * most))
    for nb in range(1, most):  # the last 1 .. most - 1 blocks in one pass
        with builder.if_then(builder.icmp_signed("==", rest, ir.Constant(i64, nb))):
            run_pass(first, nb)
    return context.get_dummy_value()


@intrinsic
def att_weights(typingctx, dots, n, g, m, att, lg):
    """lg[j] = att[min(floor((m - l_j) / 256), len(att) - 1)] for j < n, with the key's logit
    l_j = floor((dots[j] g + 2^15) 2^-16), and their sum (dots int32 or float32 1-D C, exact
    integers; g and m integers held in float64, m >= every l_j; lg float64 1-D C; att the ATT
    table as float64): the attention weights (rowops._att_row) in vectors of 8 (AVX512) or 4
    doubles, the table lookups as gathers, the index clamped in float64 before its conversion
    (so it fits int32), the last n mod lanes scalar. LLVM's vectorizer leaves such loops scalar
    (it cannot prove that the stores do not alias the table). Every step is exact (rowops'
    _att_row says why); the sum is of integers below 2^53 in any order."""
    ok = (isinstance(dots, types.Array) and dots.layout == "C" and dots.ndim == 1
          and dots.dtype in (types.int32, types.float32)
          and isinstance(lg, types.Array) and lg.layout == "C"
          and lg.dtype == types.float64 and lg.ndim == 1 and isinstance(att, types.Array)
          and att.layout == "C" and att.dtype == types.float64 and att.ndim == 1
          and isinstance(n, types.Integer) and isinstance(g, types.Float)
          and isinstance(m, types.Float))  # fmt: skip
    if not ok:
        return None
    signed = dots.dtype == types.int32

    def codegen(context, builder, signature, args):
        lanes = 8 if HAS_AVX512BW else 4
        vf, vi = (ir.VectorType(t, lanes) for t in (_F64, ir.IntType(64)))
        vd = ir.VectorType(_I32 if signed else ir.FloatType(), lanes)
        i64 = ir.IntType(64)
        adots, nn, gg, mm, aatt, alg = args
        dp = context.make_array(signature.args[0])(context, builder, adots).data
        lp = context.make_array(signature.args[5])(context, builder, alg).data
        ta = context.make_array(signature.args[4])(context, builder, aatt)
        tp = ta.data
        last = builder.sitofp(builder.sub(builder.extract_value(ta.shape, 0), ir.Constant(i64, 1)),
                              _F64)  # fmt: skip
        gg = context.cast(builder, gg, signature.args[2], types.float64)
        mm = context.cast(builder, mm, signature.args[3], types.float64)
        nn = context.cast(builder, nn, signature.args[1], types.int64)
        half, inv16, inv8 = (ir.Constant(_F64, x) for x in (32768.0, 1.0 / 65536.0, 1.0 / 256.0))

        def widen(x, t):  # dot products as float64 (t: the vector or the scalar type): exact
            return builder.sitofp(x, t) if signed else builder.fpext(x, t)

        ptr_t = ir.VectorType(_F64.as_pointer(), lanes)
        mask_t = ir.VectorType(ir.IntType(1), lanes)
        gather = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vf, [ptr_t, _I32, mask_t, vf]),
            f"llvm.masked.gather.v{lanes}f64.v{lanes}p0f64",
        )  # fmt: skip
        vmin = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vf, [vf, vf]), f"llvm.minnum.v{lanes}f64"
        )
        vfloor = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vf, [vf]), f"llvm.floor.v{lanes}f64"
        )
        sfloor = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_F64, [_F64]), "llvm.floor.f64"
        )
        vg, vm, vlast, vhalf, v16, v8 = (_splat(builder, x, lanes)
                                         for x in (gg, mm, last, half, inv16, inv8))  # fmt: skip
        tbase = _splat(builder, builder.ptrtoint(tp, i64), lanes)
        eight = _splat(builder, ir.Constant(i64, 8), lanes)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vf, None))
        nv = builder.sdiv(nn, ir.Constant(i64, lanes))
        with cgutils.for_range(builder, nv) as loop:
            first = builder.mul(loop.index, ir.Constant(i64, lanes))
            d = builder.load(builder.bitcast(builder.gep(dp, [first]), vd.as_pointer()), align=4)
            lv = builder.call(vfloor, [builder.fmul(builder.fadd(builder.fmul(widen(d, vf), vg), vhalf),
                                                    v16)])  # fmt: skip
            k = builder.call(vmin, [builder.fmul(builder.fsub(vm, lv), v8), vlast])
            idx = builder.sext(builder.fptosi(k, ir.VectorType(_I32, lanes)), vi)
            ptrs = builder.inttoptr(builder.add(tbase, builder.mul(idx, eight)), ptr_t)
            w = builder.call(gather, [ptrs, ir.Constant(_I32, 8),
                                      ir.Constant(mask_t, [1] * lanes), ir.Constant(vf, None)])  # fmt: skip
            builder.store(w, builder.bitcast(builder.gep(lp, [first]), vf.as_pointer()), align=8)
            builder.store(builder.fadd(builder.load(acc), w), acc)
        v = builder.load(acc)
        total = builder.extract_element(v, ir.Constant(_I32, 0))
        for i in range(1, lanes):
            total = builder.fadd(total, builder.extract_element(v, ir.Constant(_I32, i)))
        tot = cgutils.alloca_once_value(builder, total)
        done = builder.mul(nv, ir.Constant(i64, lanes))
        with cgutils.for_range(builder, builder.sub(nn, done)) as loop:
            j = builder.add(done, loop.index)
            lv = builder.call(sfloor, [builder.fmul(builder.fadd(builder.fmul(
                widen(builder.load(builder.gep(dp, [j])), _F64), gg), half), inv16)])  # fmt: skip
            k = builder.fmul(builder.fsub(mm, lv), inv8)
            k = builder.select(builder.fcmp_ordered("<", k, last), k, last)
            w = builder.load(builder.gep(tp, [builder.sext(builder.fptosi(k, _I32), i64)]))
            builder.store(w, builder.gep(lp, [j]))
            builder.store(builder.fadd(builder.load(tot), w), tot)
        return builder.load(tot)

    return types.float64(dots, n, g, m, att, lg), codegen


def _pv_ok(idx, ps, v, outs) -> bool:
    """int64 1-D C row list, float64 1-D C weights and outputs, int32 2-D C value rows."""

    def vec(a, dt):
        return isinstance(a, types.Array) and a.layout == "C" and a.dtype == dt and a.ndim == 1

    return (vec(idx, types.int64) and all(vec(p, types.float64) for p in ps + outs)
            and isinstance(v, types.Array) and v.layout == "C"
            and v.dtype in (types.int32, types.float64)
            and v.ndim == 2)  # fmt: skip


@intrinsic
def rows_pv2(typingctx, idx, m, pa, pb, v, e16, acca, accb):
    """acca[c] = sum_{i < m} pa[idx[i]] * v[idx[i], c] and accb likewise with pb, for c < 16 e16,
    in float64 (idx int64 [>= m]; pa, pb float64 [W]; v int32 or float64 [W, E]; acca, accb
    float64 [E]).
    Exact where every product and partial sum is an integer below 2^53 in magnitude."""
    if not _pv_ok(idx, [pa, pb], v, [acca, accb]):
        return None

    def codegen(context, builder, signature, args):
        return _rows_pv(context, builder, signature, args, 2)

    return types.none(idx, m, pa, pb, v, e16, acca, accb), codegen


@intrinsic
def rows_pv1(typingctx, idx, m, pa, v, e16, acca):
    """rows_pv2 for one head."""
    if not _pv_ok(idx, [pa], v, [acca]):
        return None

    def codegen(context, builder, signature, args):
        return _rows_pv(context, builder, signature, args, 1)

    return types.none(idx, m, pa, v, e16, acca), codegen


def _tiles_ok(planes, wt, outs) -> bool:
    """int8 / uint8 2-D C planes, an int8 / uint8 4-D C array of tiles, int32 2-D C outputs."""

    def arr(a, dts, nd):
        return isinstance(a, types.Array) and a.layout == "C" and a.dtype in dts and a.ndim == nd

    i8 = (types.int8, types.uint8)
    return (HAS_AMX and all(arr(p, i8, 2) for p in planes) and arr(wt, i8, 4)
            and all(arr(o, (types.int32,), 2) for o in outs))  # fmt: skip


def _tile_products(context, builder, planes, wt, n_kt, outs, ops, groups=None):
    """The AMX loop of the tile kernels: for each plane p (up to two: tile registers 4, 5; its
    rows of 64-byte k steps, at most 16 rows) and each group g of 16 columns of wt (int8 [G,
    KT, 16, 64]: wt[g, kb] one tile of 16 rows of 4 k values x 16 columns, kb < n_kt <= KT),
    outs[p][r, 16 g + c] = the int32 sum over k < 64 n_kt of plane[r, k] * w[16 g + c, k], by
    the tile operation ops[p] (tdpbssd: signed x signed; tdpbusd: unsigned x signed; tdpbuud:
    unsigned x unsigned), for the groups g < G (or < `groups`). Two groups at a time (tiles 6, 7 hold their weights; accumulators
    0-3), a last odd one alone. Integer sums below 2^31 (the callers' bounds): exact."""
    p8, i64 = _I8.as_pointer(), ir.IntType(64)
    pl = [context.make_array(t)(context, builder, a) for t, a in planes]
    w = context.make_array(wt[0])(context, builder, wt[1])
    os_ = [context.make_array(t)(context, builder, a) for t, a in outs]
    xrow = builder.extract_value(pl[0].strides, 0)
    crow = builder.extract_value(os_[0].strides, 0)
    xb = [builder.bitcast(a.data, p8) for a in pl]
    ob = [builder.bitcast(a.data, p8) for a in os_]
    wb = builder.bitcast(w.data, p8)
    if groups is None:
        groups = builder.extract_value(w.shape, 0)

    def fn(name, argtys):
        return cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), argtys), name
        )

    # the tile configuration: palette 1, tiles 0-7 of 16 rows x 64 bytes
    cfg_t = ir.ArrayType(_I8, 64)
    cfg = cgutils.alloca_once(builder, cfg_t)
    cfg.align = 64
    cfg_bytes = [0] * 64
    cfg_bytes[0] = 1
    for t in range(8):
        cfg_bytes[16 + 2 * t] = 64
        cfg_bytes[48 + t] = 16
    builder.store(ir.Constant(cfg_t, cfg_bytes), cfg)
    builder.call(fn("llvm.x86.ldtilecfg", [p8]), [builder.bitcast(cfg, p8)])
    load, store = (fn(f"llvm.x86.{n}", [_I8, p8, i64]) for n in ("tileloadd64", "tilestored64"))
    zero = fn("llvm.x86.tilezero", [_I8])
    dps = [fn(f"llvm.x86.{op}", [_I8, _I8, _I8]) for op in ops]

    def t(i):
        return ir.Constant(_I8, i)

    c64, tile = ir.Constant(i64, 64), ir.Constant(i64, 1024)
    col = builder.mul(builder.extract_value(w.shape, 1), tile)  # bytes per group of 16

    def run(g0, two):
        gs = (0, 1) if two else (0,)
        for p in range(len(pl)):
            for gi in gs:
                builder.call(zero, [t(2 * p + gi)])
        wg = builder.gep(wb, [builder.mul(g0, col)])
        with cgutils.for_range(builder, n_kt) as kl:
            kb = builder.mul(kl.index, tile)
            k0 = builder.mul(kl.index, c64)
            # each load just before the first product that reads it (the order of Intel's
            # optimization manual: the loads overlap the products before them)
            for p in range(len(pl)):
                builder.call(load, [t(4 + p), builder.gep(xb[p], [k0]), xrow])
                for gi in gs:
                    if p == 0:
                        builder.call(load, [t(6 + gi), builder.gep(wg, [builder.add(kb, builder.mul(
                            ir.Constant(i64, gi), col))]), c64])  # fmt: skip
                    builder.call(dps[p], [t(2 * p + gi), t(4 + p), t(6 + gi)])
        o = builder.mul(g0, c64)
        for p in range(len(pl)):
            for gi in gs:
                dst = builder.gep(ob[p], [builder.add(o, ir.Constant(i64, 64 * gi))])
                builder.call(store, [t(2 * p + gi), dst, crow])

    with cgutils.for_range(builder, builder.udiv(groups, ir.Constant(i64, 2))) as gl:
        run(builder.mul(gl.index, ir.Constant(i64, 2)), True)
    with builder.if_then(builder.trunc(groups, ir.IntType(1))):
        run(builder.sub(groups, ir.Constant(i64, 1)), False)
    builder.call(fn("llvm.x86.tilerelease", []), [])


@intrinsic
def tile_rows16(typingctx, xh, xl, wt, ch, cl):
    """ch[r, n] = sum_k xh[r, k] * w[n, k] and cl[r, n] = sum_k xl[r, k] * w[n, k] for r < 16
    and every n, as int32, in AMX tiles (HAS_AMX CPUs, after cpu_env.request_amx): xh signed
    and xl unsigned bytes [16, KP] (KP a multiple of 64), the weights w [N, KP] as tiles
    wt[nb, kb] = the 16 x 64 bytes with wt[nb, kb, i, 4 c + j] = w[16 nb + c, 64 kb + 4 i + j]
    (rowops.tile_cols), each tile one contiguous kilobyte. A linear's int16 rows x = 256 hi +
    lo (hi signed, lo unsigned bytes) give x . w = 256 (hi . w) + (lo . w): exact, every sum
    an integer below 2^31 in magnitude (|hi| <= 64, lo <= 255, the callers' bound on K *
    max|w|)."""
    if not _tiles_ok([xh, xl], wt, [ch, cl]):
        return None

    def codegen(context, builder, signature, args):
        ty = signature.args
        n_kt = builder.extract_value(context.make_array(ty[2])(context, builder, args[2]).shape, 1)
        _tile_products(context, builder, [(ty[0], args[0]), (ty[1], args[1])], (ty[2], args[2]),
                       n_kt, [(ty[3], args[3]), (ty[4], args[4])], ("tdpbssd", "tdpbusd"))  # fmt: skip
        return context.get_dummy_value()

    return types.none(xh, xl, wt, ch, cl), codegen


@intrinsic
def tile_dots(typingctx, q, kt, n_g, out):
    """out[r, j] = sum_e q[r, e] * key_j[e] (signed bytes) for r < 16 and the keys of the
    groups g < n_g of kt (int8 [G, KE, 16, 64]: kt[g, kb, i, 4 c + j] = element 64 kb + 4 i +
    j of key 16 g + c), as int32: q int8 [16, 64 KE], out int32 [16, >= 16 n_g]. The
    attention's q.k products (|sum| < 2^22)."""
    if not (_tiles_ok([q], kt, [out]) and isinstance(n_g, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ty = signature.args
        n_kt = builder.extract_value(context.make_array(ty[1])(context, builder, args[1]).shape, 1)
        _tile_products(context, builder, [(ty[0], args[0])], (ty[1], args[1]), n_kt,
                       [(ty[3], args[3])], ("tdpbssd",),
                       context.cast(builder, args[2], ty[2], types.int64))  # fmt: skip
        return context.get_dummy_value()

    return types.none(q, kt, n_g, out), codegen


def _pv_codegen(op):
    def codegen(context, builder, signature, args):
        ty = signature.args
        n_kt = context.cast(builder, args[3], ty[3], types.int64)
        _tile_products(context, builder, [(ty[0], args[0]), (ty[1], args[1])], (ty[2], args[2]),
                       n_kt, [(ty[4], args[4]), (ty[5], args[5])], (op, op))  # fmt: skip
        return context.get_dummy_value()

    return codegen


@intrinsic
def tile_pv(typingctx, p0, p1, vt, n_kt, c0, c1):
    """c0[r, c] = sum_j p0[r, j] * u[j, c] and c1 likewise with p1, over keys j < 64 n_kt, as
    int32: p0, p1 unsigned bytes [16, >= 64 n_kt] (the low and high bytes of the attention's
    probabilities), vt the tiles of one unsigned byte of the value rows (uint8 [E/16, KB, 16,
    64]: vt[g, kb, i, 4 c + j] = u[64 kb + 4 i + j, 16 g + c]), c0, c1 int32 [16, E]."""
    if not _tiles_ok([p0, p1], vt, [c0, c1]):
        return None
    return types.none(p0, p1, vt, n_kt, c0, c1), _pv_codegen("tdpbuud")


@intrinsic
def tile_pv_signed(typingctx, p0, p1, vt, n_kt, c0, c1):
    """tile_pv with signed bytes in vt (the values' top byte)."""
    if not _tiles_ok([p0, p1], vt, [c0, c1]):
        return None
    return types.none(p0, p1, vt, n_kt, c0, c1), _pv_codegen("tdpbusd")


def _dpbusd(builder, acc, a, b):
    """acc (<16 x i32>) + the products of the unsigned bytes of a and the signed bytes of b
    (<64 x i8> each) summed in fours: vpdpbusd where the target has AVX512-VNNI, else the same
    sums in plain vector code (so that the kernels compile everywhere; the engine uses them
    only where quads_linear_ok passed)."""
    v64x8, v64x32 = ir.VectorType(_I8, 64), ir.VectorType(_I32, 64)
    if HAS_VNNI512:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16x32, [_V16x32, v64x8, v64x8]),
            "llvm.x86.avx512.vpdpbusd.512",
        )  # fmt: skip
        return builder.call(fn, [acc, a, b])
    prod = builder.mul(builder.zext(a, v64x32), builder.sext(b, v64x32))
    for j in range(4):
        acc = builder.add(acc, _shuffle(builder, prod, prod, [4 * i + j for i in range(16)]))
    return acc


def _quads_codegen(rows):
    """quads_dot1 (rows = 1) and quads_dot2 (rows = 2)."""

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        v64x8 = ir.VectorType(_I8, 64)
        xl = context.make_array(signature.args[0])(context, builder, args[0])
        xh = context.make_array(signature.args[1])(context, builder, args[1])
        w = context.make_array(signature.args[2])(context, builder, args[2])
        o = context.make_array(signature.args[3])(context, builder, args[3])
        n16, k4n = builder.extract_value(w.shape, 0), builder.extract_value(w.shape, 1)
        wp = builder.bitcast(w.data, _I8.as_pointer())
        gbytes = builder.mul(k4n, ir.Constant(i64, 64))  # one group's bytes
        planes = []  # per row: (low bytes, high bytes) as int32 quads
        for r in range(rows):
            ri = ir.Constant(i64, r)
            planes.append([builder.bitcast(builder.gep(
                builder.bitcast(a.data, _I8.as_pointer()),
                [builder.mul(ri, builder.extract_value(a.strides, 0))]), _I32.as_pointer())
                for a in (xl, xh)])  # fmt: skip
        obase = builder.bitcast(o.data, _I8.as_pointer())
        orow = builder.extract_value(o.strides, 0)
        zero = ir.Constant(_V16x32, None)
        eight = ir.Constant(_V16x32, [8] * 16)

        def run(g0, groups):
            """Output groups g0 .. g0 + groups - 1 (16 outputs each) of every row."""
            acc = [[[cgutils.alloca_once_value(builder, zero) for _ in range(2)]
                    for _ in range(groups)] for _ in range(rows)]  # fmt: skip
            gp = [builder.gep(wp, [builder.mul(builder.add(g0, ir.Constant(i64, g)), gbytes)])
                  for g in range(groups)]  # fmt: skip
            with cgutils.for_range(builder, k4n) as loop:
                k4 = loop.index
                xs = [[builder.bitcast(_splat(builder, builder.load(builder.gep(p, [k4])), 16),
                                       v64x8) for p in planes[r]] for r in range(rows)]  # fmt: skip
                off = builder.mul(k4, ir.Constant(i64, 64))
                for g in range(groups):
                    ptr = builder.bitcast(builder.gep(gp[g], [off]), v64x8.as_pointer())
                    wv = builder.load(ptr, align=1)
                    for r in range(rows):
                        for b in range(2):
                            a = acc[r][g][b]
                            builder.store(_dpbusd(builder, builder.load(a), xs[r][b], wv), a)
            for r in range(rows):
                for g in range(groups):
                    tot = builder.add(builder.shl(builder.load(acc[r][g][1]), eight),
                                      builder.load(acc[r][g][0]))  # fmt: skip
                    col = builder.mul(builder.add(g0, ir.Constant(i64, g)), ir.Constant(i64, 64))
                    dst = builder.gep(obase, [builder.add(builder.mul(ir.Constant(i64, r), orow),
                                                          col)])  # fmt: skip
                    builder.store(tot, builder.bitcast(dst, _V16x32.as_pointer()), align=4)

        n4 = builder.sdiv(n16, ir.Constant(i64, 4))
        with cgutils.for_range(builder, n4) as loop:
            run(builder.mul(loop.index, ir.Constant(i64, 4)), 4)
        done = builder.mul(n4, ir.Constant(i64, 4))
        with cgutils.for_range(builder, builder.sub(n16, done)) as loop:
            run(builder.add(done, loop.index), 1)
        return context.get_dummy_value()

    return codegen


def _quads_ok(xl, xh, wq, out) -> bool:
    u8 = (types.uint8,)
    return all(
        isinstance(a, types.Array) and a.layout == "C" and a.dtype in dt and a.ndim == nd
        for a, dt, nd in ((xl, u8, 2), (xh, u8, 2), (wq, (types.int8,), 3),
                          (out, (types.int32,), 2))
    )  # fmt: skip


@intrinsic
def quads_dot1(typingctx, xl, xh, wq, out):
    """out[0, n] = 256 * (xh[0] . w_n) + (xl[0] . w_n) as int32 (wrapping), for every n < N (in
    vpdpbusd on HAS_VNNI512 CPUs, else in plain vector code: _dpbusd): xl, xh unsigned bytes
    [rows, >= 4 K4] (a row's low bytes, and its high bytes plus 64), wq the weights in groups of
    16 outputs as quads along k (int8 [N/16, K4, 64]: wq[g, k4, 4 c + j] = w[16 g + c, 4 k4 +
    j]), so that one vpdpbusd adds the products of 4 k of 16 outputs with the row's broadcast
    quad, with no horizontal sums, each group's weights one contiguous stream: four groups per
    pass in 8 accumulators, then single groups. Each plane's sums are exact int32 (below 255 *
    127 * K, the caller's bound); their combination wraps, which rowops.linear_quads undoes (the
    exact result fits int32)."""
    if not _quads_ok(xl, xh, wq, out):
        return None
    return types.none(xl, xh, wq, out), _quads_codegen(1)


@intrinsic
def quads_dot2(typingctx, xl, xh, wq, out):
    """quads_dot1 for rows 0 and 1 at once: each weight vector loaded once for both (16
    accumulators)."""
    if not _quads_ok(xl, xh, wq, out):
        return None
    return types.none(xl, xh, wq, out), _quads_codegen(2)
