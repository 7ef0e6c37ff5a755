"""Walker alias tables with integer acceptance thresholds (Vose's construction).

Each slot s of a segment holds ``(threshold, alias)`` as two uint32 words: a draw picks
slot s uniformly, then keeps s when ``r32 < threshold`` and takes ``alias`` otherwise.
A slot that always keeps itself stores threshold 0xFFFFFFFF with alias == s, so the
32-bit compare needs no special case. Tables are built once on the CPU, in float64,
from the integer weights; both backends then read the same bytes.
"""
from __future__ import annotations

import numba as nb
import numpy as np

FULL = np.uint32(0xFFFFFFFF)
_TWO32 = 4294967296.0


@nb.njit(nogil=True, cache=True)
def build_alias(weights, out):
    """Fill out[(n, 2) uint32] with the alias table of integer weights[n] (some > 0)."""
    n = weights.shape[0]
    total = 0.0
    for i in range(n):
        total += float(weights[i])
    scaled = np.empty(n, dtype=np.float64)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    n_small = 0
    n_large = 0
    for i in range(n):
        scaled[i] = float(weights[i]) * n / total
        if scaled[i] < 1.0:
            small[n_small] = i
            n_small += 1
        else:
            large[n_large] = i
            n_large += 1
    heaviest = 0
    for i in range(n):
        if weights[i] > weights[heaviest]:
            heaviest = i
    while n_small > 0 and n_large > 0:
        n_small -= 1
        s = small[n_small]
        n_large -= 1
        g = large[n_large]
        out[s, 0] = np.uint32(min(scaled[s] * _TWO32, 4294967295.0))
        out[s, 1] = np.uint32(g)
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            small[n_small] = g
            n_small += 1
        else:
            large[n_large] = g
            n_large += 1
    for k in range(n_large):
        g = large[k]
        out[g, 0] = FULL
        out[g, 1] = np.uint32(g)
    # Leftover smalls exist only through float rounding and sit at ~1.0; a zero-weight
    # leftover must still never be drawn, so it hands its slot to the heaviest item.
    for k in range(n_small):
        s = small[k]
        if weights[s] > 0:
            out[s, 0] = FULL
            out[s, 1] = np.uint32(s)
        else:
            out[s, 0] = np.uint32(0)
            out[s, 1] = np.uint32(heaviest)
