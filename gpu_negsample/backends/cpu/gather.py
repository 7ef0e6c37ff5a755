"""Feature gather on the CPU: the numba twin of kernels/gather.cu.

A ragged column is gathered in two passes over the rows, not three: ``gather_lengths``
reads each row's two offsets once (one random read per row) and keeps where the row
starts; after the scan of the lengths, ``gather_ragged`` and ``gather_fixed_width`` copy
from those starts, read in order, so each row's values are the only random read left and
the rows' reads are independent of each other (the CPU keeps many in flight). A column's
weights reuse the same starts and offsets.
"""
from __future__ import annotations

import numba as nb


@nb.njit(parallel=True, nogil=True, cache=True)
def gather_words(values, rows, out):
    """out[i, :] = values[rows[i], :] for 2-D arrays of one machine word type."""
    width = values.shape[1]
    for i in nb.prange(rows.shape[0]):
        r = rows[i]
        for c in range(width):
            out[i, c] = values[r, c]


@nb.njit(parallel=True, nogil=True, cache=True)
def gather_lengths(offsets, rows, out_offsets, starts):
    """out_offsets[i + 1] = length of row rows[i] (out_offsets[0] untouched); starts[i] = where
    it begins in the column's values."""
    for i in nb.prange(rows.shape[0]):
        r = rows[i]
        start = offsets[r]
        starts[i] = start
        out_offsets[i + 1] = offsets[r + 1] - start


@nb.njit(parallel=True, nogil=True, cache=True)
def gather_ragged(values, starts, out_offsets, out):
    """out[out_offsets[i]:out_offsets[i + 1]] = the values of row i, which begin at starts[i]."""
    for i in nb.prange(starts.shape[0]):
        src = starts[i]
        dst = out_offsets[i]
        for q in range(out_offsets[i + 1] - dst):
            out[dst + q] = values[src + q]


@nb.njit(parallel=True, nogil=True, cache=True)
def gather_fixed_width(data, starts, out_offsets, out):
    """Row i's bytes (from data[starts[i]:], out_offsets[i + 1] - out_offsets[i] of them) into
    out[i, :], the rest of the row zero (width >= the longest row)."""
    width = out.shape[1]
    for i in nb.prange(starts.shape[0]):
        src = starts[i]
        length = out_offsets[i + 1] - out_offsets[i]
        for q in range(length):
            out[i, q] = data[src + q]
        for q in range(length, width):
            out[i, q] = 0
