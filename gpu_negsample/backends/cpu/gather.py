"""Feature gather on the CPU: the numba twin of kernels/gather.cu, in two parallel regions.

The host writes descriptor tables (one int64 row per column: where its arrays are, how wide
a row is) and each kernel walks the request's rows in fixed blocks, every column of the
table per block:

    gather_rows     per block: the ids' table rows (lookup.rows_of, as rows_or_default does;
                    or rows given), then every dense column, and every ragged or string
                    column whose rows all have one length L >= 1 (single-valued id and
                    category columns: a dense (rows, L) array whose out offsets are i * L),
                    copied as 8-, 4-, 2- or 1-byte words; then every other ragged and string
                    column's offsets, each row's read once (its start and length kept);
                    block sums scanned into block bases, totals and the longest string row:
                    these size the outputs
    gather_ragged   those columns' values (and weights): out offsets written and values
                    copied from the kept starts; strings to fixed width, zero padded

The CUDA path runs the same work as four kernels (rows_or_default, ragged_lengths,
gather_dense, gather_ragged), measuring every ragged column; on the CPU each parallel region
ends in a barrier that waits for the slowest thread (milliseconds when another process holds
a core), and a fixed-length column costs one random line a row, not a second region's loop.
The outputs are the same bytes.

Every loop prefetches the lines of the row memory_hints.AHEAD rows on while it works on a row: a
loop of plain loads keeps only as many misses in flight as fit the core's reorder window,
and a random row is a miss (the table is far larger than the caches). Outputs come from the
caller's allocator, so descriptors hold addresses, not arrays: numba cannot hold a list of
arrays of different dtypes. Every address is of an array the caller keeps alive for the
call, and every size was checked against the column's own offsets at reload.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from numba.core import ir_utils, types
from numba.extending import intrinsic

from .lookup import rows_of
from ...memory_hints import AHEAD, prefetch

# Rows per block of a parallel loop: fixed, so the block bases (and thus every output) do
# not depend on the thread count.
BLOCK_ROWS = 1024

# Columns of the descriptor tables (int64 each).
# DENSE_OUT_OFFSETS: 0, or where a fixed-length ragged column's out offsets go (entry i =
# i * DENSE_ROW_VALUES; the host writes entry n).
DENSE_SRC, DENSE_DST, DENSE_ROW_WORDS, DENSE_WORD_BYTES, DENSE_OUT_OFFSETS, DENSE_ROW_VALUES = range(6)
DENSE_FIELDS = 6
MEASURE_OFFSETS = 0
MEASURE_FIELDS = 1
COPY_SRC, COPY_DST, COPY_VALUE_BYTES, COPY_MEASURED, COPY_WIDTH, COPY_OUT_OFFSETS = range(6)
COPY_FIELDS = 6


def _carray_escapes(lhs, args, alias_map, arg_aliases) -> None:
    """numba's alias analysis takes an nb.carray for a local array, so inside a parallel
    function it removes stores to one that are never read back as dead (a store of an
    out offset vanished). A carray here always views memory outside the function: mark
    it as aliasing an argument. (arg_aliases is a set, or a dict inside parfor lowering.)"""
    if isinstance(arg_aliases, set):
        arg_aliases.add(lhs)
    else:
        arg_aliases[lhs] = None


ir_utils.alias_func_extensions[("carray", "numba")] = _carray_escapes


@intrinsic
def _pointer(typingctx, address):
    """The int64 address as a void pointer (for nb.carray)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(types.int64), codegen


def address(a: np.ndarray) -> int:
    """Where a C-contiguous array's data starts; the descriptors' way of naming an array."""
    if not a.flags.c_contiguous:
        raise ValueError(f"gather: array of shape {a.shape} is not C-contiguous; outputs and columns must be")
    return a.ctypes.data


def word_bytes(row_bytes: int, *addresses: int) -> int:
    """The widest word (8, 4, 2 or 1 bytes) that divides a row and every address."""
    return next(w for w in (8, 4, 2, 1) if row_bytes % w == 0 and all(a % w == 0 for a in addresses))


@nb.njit(nogil=True, cache=True)
def fixed_row_length(offsets):
    """The length every row of a ragged column has, or -1 when lengths differ."""
    n = offsets.shape[0] - 1
    if n <= 0:
        return -1
    length = offsets[1] - offsets[0]
    for r in range(1, n):
        if offsets[r + 1] - offsets[r] != length:
            return -1
    return length


@nb.njit(inline="always", cache=True)
def _prefetch_span(raw, start, nbytes):
    """Prefetch every line of raw[start:start + nbytes] (raw a byte view; nbytes may be 0)."""
    end = start + nbytes - 1
    while start < end:
        prefetch(raw, start)
        start += 64
    prefetch(raw, end)


@nb.njit(inline="always", cache=True)
def _prefetch_row(raw, row_bytes, rows, i):
    _prefetch_span(raw, rows[i] * row_bytes, row_bytes)


@nb.njit(inline="always", cache=True)
def _copy_rows(src, dst, raw, row_bytes, rows, lo, hi):
    """dst[i, :] = src[rows[i], :] for i in lo:hi, prefetching row rows[i + AHEAD] (raw: the
    column as bytes) while copying row i; rows are known only up to hi (2-D views: numba's
    2-D indexing lets LLVM move a row in wide loads, where 1-D index arithmetic measured
    2-3x slower)."""
    for i in range(lo, min(hi, lo + AHEAD)):
        _prefetch_row(raw, row_bytes, rows, i)
    for i in range(lo, hi):
        if i + AHEAD < hi:
            _prefetch_row(raw, row_bytes, rows, i + AHEAD)
        r = rows[i]
        for q in range(src.shape[1]):
            dst[i, q] = src[r, q]


@nb.njit(inline="always", cache=True)
def _dense_block(cols, rows, table_rows, lo, hi):
    """Every dense column's rows lo:hi: dst[i, :] = src[rows[i], :], rows of row_words words of
    word_bytes; out offsets i * row_values where a column has them."""
    n = rows.shape[0]
    for c in range(cols.shape[0]):
        if cols[c, DENSE_OUT_OFFSETS] != 0:
            out_offsets = nb.carray(_pointer(cols[c, DENSE_OUT_OFFSETS]), n + 1, np.int64)
            per_row = cols[c, DENSE_ROW_VALUES]
            for i in range(lo, hi):
                out_offsets[i] = i * per_row
        src, dst = _pointer(cols[c, DENSE_SRC]), _pointer(cols[c, DENSE_DST])
        width, word = cols[c, DENSE_ROW_WORDS], cols[c, DENSE_WORD_BYTES]
        src_shape, dst_shape = (table_rows, width), (n, width)
        row_bytes = width * word
        raw = nb.carray(src, table_rows * row_bytes, np.uint8)
        if word == 8:
            _copy_rows(nb.carray(src, src_shape, np.uint64), nb.carray(dst, dst_shape, np.uint64), raw, row_bytes,
                       rows, lo, hi)
        elif word == 4:
            _copy_rows(nb.carray(src, src_shape, np.uint32), nb.carray(dst, dst_shape, np.uint32), raw, row_bytes,
                       rows, lo, hi)
        elif word == 2:
            _copy_rows(nb.carray(src, src_shape, np.uint16), nb.carray(dst, dst_shape, np.uint16), raw, row_bytes,
                       rows, lo, hi)
        else:
            _copy_rows(nb.carray(src, src_shape, np.uint8), nb.carray(dst, dst_shape, np.uint8), raw, row_bytes,
                       rows, lo, hi)


@nb.njit(inline="always", cache=True)
def _prefetch_offsets(offsets, rows, i):
    prefetch(offsets, rows[i])
    prefetch(offsets, rows[i] + 1)


@nb.njit(inline="always", cache=True)
def _measure_block(measured, rows, table_rows, starts, lengths, block_base, block_max, b, lo, hi):
    """Every measured column m's rows lo:hi (block b): starts[m, i] and lengths[m, i] of row
    rows[i], the block's total (in block_base[m, b]) and longest row."""
    for m in range(measured.shape[0]):
        offsets = nb.carray(_pointer(measured[m, MEASURE_OFFSETS]), table_rows + 1, np.int64)
        for i in range(lo, min(hi, lo + AHEAD)):
            _prefetch_offsets(offsets, rows, i)
        total = 0
        most = 0
        for i in range(lo, hi):
            if i + AHEAD < hi:
                _prefetch_offsets(offsets, rows, i + AHEAD)
            r = rows[i]
            start = offsets[r]
            length = offsets[r + 1] - start
            starts[m, i] = start
            lengths[m, i] = length
            total += length
            most = max(most, length)
        block_base[m, b] = total
        block_max[m, b] = most


@nb.njit(parallel=True, nogil=True, cache=True)
def gather_rows(slots, ids, default_row, rows, dense, measured, table_rows, starts, lengths, block_base, totals,
                longest):
    """A pack's first parallel region, block by block: rows[i] = the table row of ids[i]
    (default_row where absent; where ids is empty, rows are given), every dense column
    gathered (see _dense_block), every measured column's starts and lengths (_measure_block);
    then block_base[m, b] = where block b's values begin in column m's output, totals[m] =
    its values, longest[m] = its longest row (strings' fixed width). Returns how many ids
    were absent."""
    n = rows.shape[0]
    n_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    look_up = ids.shape[0] == n
    block_max = np.zeros_like(block_base)
    missing = 0
    for b in nb.prange(n_blocks):
        lo = b * BLOCK_ROWS
        hi = min(n, lo + BLOCK_ROWS)
        if look_up:
            missing += rows_of(slots, ids, default_row, rows, lo, hi)
        _dense_block(dense, rows, table_rows, lo, hi)
        _measure_block(measured, rows, table_rows, starts, lengths, block_base, block_max, b, lo, hi)
    for m in range(measured.shape[0]):
        at = 0
        most = 0
        for b in range(n_blocks):
            size = block_base[m, b]
            block_base[m, b] = at
            at += size
            most = max(most, block_max[m, b])
        totals[m] = at
        longest[m] = most
    return missing


@nb.njit(inline="always", cache=True)
def _copy_values(src, dst, raw, value_bytes, starts, lengths, lo, hi, at):
    """Rows lo:hi one after the other from dst[at], prefetching row i + AHEAD's values (raw:
    the values as bytes) while copying row i. Indices are unsigned: numba then skips the
    negative-index wraparound test, which otherwise keeps LLVM from vectorising the copy."""
    n = starts.shape[0]
    for i in range(lo, hi):
        if i + AHEAD < n:
            _prefetch_span(raw, starts[i + AHEAD] * value_bytes, lengths[i + AHEAD] * value_bytes)
        s = nb.uint64(starts[i])
        d = nb.uint64(at)
        for q in range(nb.uint64(lengths[i])):
            dst[d + q] = src[s + q]
        at += lengths[i]


@nb.njit(parallel=True, nogil=True, cache=True)
def gather_ragged(copies, starts, lengths, block_base, totals):
    """Every ragged, weight and string column (copies: one row each, see COPY_*): ragged rows
    packed from block_base on, with their out offsets (all but the last, the total) where
    COPY_OUT_OFFSETS is an address; string rows (COPY_WIDTH > 0, bytes) to fixed width, zero padded."""
    n = starts.shape[1]
    for b in nb.prange(block_base.shape[1]):
        lo = b * BLOCK_ROWS
        hi = min(n, lo + BLOCK_ROWS)
        for k in range(copies.shape[0]):
            m = copies[k, COPY_MEASURED]
            width = copies[k, COPY_WIDTH]
            total = totals[m]
            src, dst = _pointer(copies[k, COPY_SRC]), _pointer(copies[k, COPY_DST])
            # A source is sized by the furthest value these rows read, not known here;
            # carray does not check bounds, so any size >= the reads serves.
            src_n = np.int64(1) << 62
            if width > 0:
                fixed = nb.carray(dst, n * width, np.uint8)
                data = nb.carray(src, src_n, np.uint8)
                for i in range(lo, hi):
                    if i + AHEAD < n:
                        _prefetch_span(data, starts[m, i + AHEAD], lengths[m, i + AHEAD])
                    s = nb.uint64(starts[m, i])
                    d = nb.uint64(i * width)
                    length = nb.uint64(lengths[m, i])
                    for q in range(length):
                        fixed[d + q] = data[s + q]
                    for q in range(length, nb.uint64(width)):
                        fixed[d + q] = 0
                continue
            if copies[k, COPY_OUT_OFFSETS] != 0:
                out_offsets = nb.carray(_pointer(copies[k, COPY_OUT_OFFSETS]), n + 1, np.int64)
                at = block_base[m, b]
                for i in range(lo, hi):
                    out_offsets[i] = at
                    at += lengths[m, i]
            word = copies[k, COPY_VALUE_BYTES]
            base = block_base[m, b]
            row_starts, row_lengths = starts[m], lengths[m]
            raw = nb.carray(src, src_n, np.uint8)
            if word == 8:
                _copy_values(nb.carray(src, src_n, np.uint64), nb.carray(dst, total, np.uint64), raw, word,
                             row_starts, row_lengths, lo, hi, base)
            elif word == 4:
                _copy_values(nb.carray(src, src_n, np.uint32), nb.carray(dst, total, np.uint32), raw, word,
                             row_starts, row_lengths, lo, hi, base)
            elif word == 2:
                _copy_values(nb.carray(src, src_n, np.uint16), nb.carray(dst, total, np.uint16), raw, word,
                             row_starts, row_lengths, lo, hi, base)
            else:
                _copy_values(nb.carray(src, src_n, np.uint8), nb.carray(dst, total, np.uint8), raw, word,
                             row_starts, row_lengths, lo, hi, base)
