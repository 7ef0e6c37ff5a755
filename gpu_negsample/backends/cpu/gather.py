"""Feature gather on the CPU: the numba twin of kernels/gather.cu."""
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
def gather_lengths(offsets, rows, out_offsets):
    """out_offsets[i + 1] = length of row rows[i] (out_offsets[0] untouched)."""
    for i in nb.prange(rows.shape[0]):
        out_offsets[i + 1] = offsets[rows[i] + 1] - offsets[rows[i]]


@nb.njit(parallel=True, nogil=True, cache=True)
def gather_ragged(values, offsets, rows, out_offsets, out):
    for i in nb.prange(rows.shape[0]):
        src = offsets[rows[i]]
        dst = out_offsets[i]
        for q in range(out_offsets[i + 1] - dst):
            out[dst + q] = values[src + q]


@nb.njit(parallel=True, nogil=True, cache=True)
def strings_to_fixed_width(data, offsets, out):
    """Row i's bytes into out[i, :] (out zero-filled, width >= the longest row)."""
    for i in nb.prange(offsets.shape[0] - 1):
        lo = offsets[i]
        for q in range(offsets[i + 1] - lo):
            out[i, q] = data[lo + q]
