"""Hash lookups on the CPU: the numba twin of kernels/lookup.cu."""
from __future__ import annotations

import numba as nb

import numpy as np

from ...hashing import prefetch_home, probe
from ...memory_hints import AHEAD

# Ids per block of rows_or_default's parallel loop.
BLOCK = 1024


@nb.njit(parallel=True, nogil=True, cache=True)
def lookup_rows(slots, keys, out):
    """out[i] = the value stored for keys[i] (a table row or a segment), NOT_FOUND where absent."""
    for i in nb.prange(keys.shape[0]):
        out[i] = probe(slots, keys[i])


@nb.njit(parallel=True, nogil=True, cache=True)
def valid_ids(slots, ids, default_id, out):
    """out[i] = ids[i] if it is a key of slots, else default_id."""
    for i in nb.prange(ids.shape[0]):
        out[i] = ids[i] if probe(slots, ids[i]) >= 0 else default_id


@nb.njit(inline="always", cache=True)
def rows_of(slots, ids, default_row, out, lo, hi):
    """out[i] = the table row of ids[i] (default_row where absent) for i in lo:hi; returns how
    many were absent. Each probe's home slot is prefetched AHEAD ids earlier, so many misses
    are in flight."""
    n = ids.shape[0]
    missing = 0
    for i in range(lo, hi):
        if i + AHEAD < n:
            prefetch_home(slots, ids[i + AHEAD])
        r = probe(slots, ids[i])
        if r < 0:
            r = default_row
            missing += 1
        out[i] = r
    return missing


@nb.njit(parallel=True, nogil=True, cache=True)
def rows_or_default(slots, ids, default_row, out):
    """Table rows of ids (default_row where absent); returns how many were absent."""
    n = ids.shape[0]
    missing = 0
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        missing += rows_of(slots, ids, default_row, out, b * BLOCK, min(n, b * BLOCK + BLOCK))
    return missing


def lookup(slots, keys) -> np.ndarray:
    """The values of many keys (NOT_FOUND where absent): ``lookup_rows`` into a new array."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    out = np.empty(keys.shape[0], dtype=np.int64)
    lookup_rows(slots, keys, out)
    return out
