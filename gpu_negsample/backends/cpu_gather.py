"""Lookup, combine and feature-gather kernels of the CPU (numba) path."""
from __future__ import annotations

import numba as nb

from ..hashing import probe


@nb.njit(parallel=True, nogil=True, cache=True)
def valid_ids(slots, ids, default_id, out):
    """out[i] = ids[i] if it is a key of slots, else default_id."""
    for i in nb.prange(ids.shape[0]):
        out[i] = ids[i] if probe(slots, ids[i]) >= 0 else default_id


@nb.njit(parallel=True, nogil=True, cache=True)
def rows_or_default(slots, ids, default_row, out):
    """Table rows of ids (default_row where absent); returns how many were absent."""
    missing = 0
    for i in nb.prange(ids.shape[0]):
        r = probe(slots, ids[i])
        if r < 0:
            r = default_row
            missing += 1
        out[i] = r
    return missing


@nb.njit(parallel=True, nogil=True, cache=True)
def combine_with_counts(origin, out_offsets, sampled, sampled_offsets, out):
    """out = origin[0], sampled of 0, origin[1], sampled of 1, ... (row i owns out_offsets[i]:...)."""
    for i in nb.prange(origin.shape[0]):
        o = out_offsets[i]
        out[o] = origin[i]
        lo = sampled_offsets[i]
        for q in range(sampled_offsets[i + 1] - lo):
            out[o + 1 + q] = sampled[lo + q]


@nb.njit(parallel=True, nogil=True, cache=True)
def gather_rows(values, rows, out):
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
