"""Philox4x32-10 and the integer helpers every draw decision is made with.

One random-number spec serves both backends (DESIGN.md "Randomness"):

* key     = the sampler's 64-bit seed: ``k0`` = low 32 bits, ``k1`` = high 32 bits;
* counter = ``(c0, c1, c2, c3)`` = ``(call number, positive row, draw index, attempt)``,
  each taken modulo 2**32.

One Philox call gives four 32-bit words ``r0..r3``; a sampling attempt spends them as

* ``r0 | r1 << 32`` -> a 64-bit uniform ``u`` for the alias slot
  (``slot = mulhi64(u, segment_size)``) or, in the exact scan, for the target mass
  (``target = mulhi64(u, remaining_mass)``);
* ``r2``            -> the alias acceptance test (``r2 < threshold``);
* ``r3``            -> the category of a multi-category positive (attempt 0 only):
  ``target = mul32hi(r3, total_mass)`` over the categories' remaining integer masses.

Every decision is integer arithmetic, so the numba path and the CUDA kernels
(kernels/philox.cuh documents the same layout) agree bit for bit on any thread count.
"""
from __future__ import annotations

import numba as nb
import numpy as np

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)


@nb.njit(inline="always", cache=True)
def _philox_round(c0, c1, c2, c3, k0, k1):
    p0 = _M0 * c0
    p1 = _M1 * c2
    return (
        (p1 >> SHIFT32) ^ c1 ^ k0,
        p1 & MASK32,
        (p0 >> SHIFT32) ^ c3 ^ k1,
        p0 & MASK32,
    )


@nb.njit(inline="always", cache=True)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0..c3) under key (k0, k1); all uint64 holding 32 bits."""
    for _ in range(9):
        c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
        k0 = (k0 + _W0) & MASK32
        k1 = (k1 + _W1) & MASK32
    return _philox_round(c0, c1, c2, c3, k0, k1)


@nb.njit(cache=True)
def philox_lanes(c0, c1, c2, c3, k0, k1, words, n):
    """words[q, t] = word q of philox4x32_10(c0, c1[t], c2[t], c3) under key (k0, k1), t < n:
    many counters at a time.

    c1 and c2 are uint32 arrays, so LLVM sees each 64-bit product of the inlined rounds as
    32 x 32 -> 64 bits, and the loop has no branches: it vectorises (vpmuludq, 4 counters
    per instruction on AVX2; ~4x the rate of one call per draw inside a sampling loop).
    words is a (4, >= n) uint32 array. Not inlined: its loop is vectorised on its own.
    """
    c0 = c0 & MASK32
    c3 = c3 & MASK32
    k0 = k0 & MASK32
    k1 = k1 & MASK32
    for t in range(n):
        r = philox4x32_10(c0, nb.uint64(c1[t]), nb.uint64(c2[t]), c3, k0, k1)
        words[0, t] = r[0]
        words[1, t] = r[1]
        words[2, t] = r[2]
        words[3, t] = r[3]


@nb.njit(inline="always", cache=True)
def mulhi64(a, b):
    """High 64 bits of the 128-bit product of two uint64 (CUDA's ``__umul64hi``)."""
    a_lo = a & MASK32
    a_hi = a >> SHIFT32
    b_lo = b & MASK32
    b_hi = b >> SHIFT32
    lo_lo = a_lo * b_lo
    lo_hi = a_lo * b_hi
    hi_lo = a_hi * b_lo
    mid = (lo_lo >> SHIFT32) + (lo_hi & MASK32) + (hi_lo & MASK32)
    return a_hi * b_hi + (lo_hi >> SHIFT32) + (hi_lo >> SHIFT32) + (mid >> SHIFT32)


@nb.njit(inline="always", cache=True)
def mul32hi(r, total):
    """floor(r * total / 2**32) for a 32-bit r and a total below 2**63, exactly."""
    return r * (total >> SHIFT32) + ((r * (total & MASK32)) >> SHIFT32)


def split_seed(seed: int) -> tuple[np.uint64, np.uint64]:
    """The Philox key words (k0, k1) of a 64-bit seed."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)


@nb.njit(cache=True)
def philox_block(counters, k0, k1):
    """Philox outputs for an (n, 4) uint64 counter array: a test and reference helper."""
    out = np.empty(counters.shape, dtype=np.uint64)
    for i in range(counters.shape[0]):
        r = philox4x32_10(counters[i, 0], counters[i, 1], counters[i, 2], counters[i, 3], k0, k1)
        out[i, 0] = r[0]
        out[i, 1] = r[1]
        out[i, 2] = r[2]
        out[i, 3] = r[3]
    return out
