"""Software prefetch for the numba kernels.

A loop of loads keeps only as many cache misses in flight as its instructions fit in the
core's reorder window (a handful for a sampling loop's body); a prefetch retires at once,
so a loop that prefetches what a later loop will read keeps many more misses in flight.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# How many rows ahead of the one it works on a gather loop prefetches: enough misses in
# flight to cover DRAM latency, few enough that the lines are still in L1/L2 when the loop
# reaches them (16, 32 and 64 measured alike within this VM's noise; 8 slower).
AHEAD = 32


@intrinsic
def prefetch(typingctx, arr, index):
    """Start loading the cache line of arr[index] (of arr[index, 0, ...] for an array of
    more dimensions) into every cache level; no value, never a fault (an index out of range
    prefetches nothing useful, harmlessly)."""
    if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i64 = ir.IntType(64)
        idx = [context.cast(builder, args[1], signature.args[1], types.int64)] + [i64(0)] * (aryty.ndim - 1)
        ptr = cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
                                        cgutils.unpack_tuple(builder, ary.strides), aryty.layout, idx,
                                        wraparound=False, boundscheck=False)
        i32 = ir.IntType(32)
        byte_ptr = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), i32(0), i32(3), i32(1)])  # read, all cache levels, data
        return context.get_dummy_value()

    return types.void(arr, index), codegen
