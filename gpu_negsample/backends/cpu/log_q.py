"""log q of combined ids on the CPU: the numba twin of kernels/log_q.cu (float math: the two
agree to rounding, not bit for bit)."""
from __future__ import annotations

import numba as nb
import numpy as np

from ...hashing import probe


@nb.njit(parallel=True, nogil=True, cache=True)
def log_q_rows(ix, req_offsets, req_segs, item_offsets, item_ids, out):
    """out[t] = log of the probability that row i's category mixture draws item_ids[t]
    (before exclusion), for t in item_offsets[i]:item_offsets[i+1]; computed in float64,
    stored in out's dtype (float32)."""
    for i in nb.prange(item_offsets.shape[0] - 1):
        c_lo = req_offsets[i]
        c_hi = req_offsets[i + 1]
        total = np.uint64(0)
        for k in range(c_lo, c_hi):
            if req_segs[k] >= 0:  # an unknown category (reported) weighs nothing
                total += ix.seg_total[req_segs[k]]
        for t in range(item_offsets[i], item_offsets[i + 1]):
            row = probe(ix.id_slots, item_ids[t])
            mass = np.uint64(0)
            if row >= 0:
                for p in range(ix.item_cat_offsets[row], ix.item_cat_offsets[row + 1]):
                    for k in range(c_lo, c_hi):
                        if ix.item_seg[p] == req_segs[k]:
                            mass += ix.item_weights[p]
            if mass == 0 or total == 0:
                out[t] = -np.inf
            else:
                out[t] = np.log(float(mass)) - np.log(float(total))
