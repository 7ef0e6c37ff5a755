"""Positives interleaved with their negatives: the numba twin of kernels/combine.cu."""
from __future__ import annotations

import numba as nb


@nb.njit(parallel=True, nogil=True, cache=True)
def combine_with_counts(origin, out_offsets, sampled, sampled_offsets, out):
    """out = origin[0], sampled of 0, origin[1], sampled of 1, ... (row i owns out_offsets[i]:...)."""
    for i in nb.prange(origin.shape[0]):
        o = out_offsets[i]
        out[o] = origin[i]
        lo = sampled_offsets[i]
        for q in range(sampled_offsets[i + 1] - lo):
            out[o + 1 + q] = sampled[lo + q]
