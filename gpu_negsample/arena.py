"""One contiguous, aligned buffer that holds every array of a loaded table.

Keeping the table in one allocation lets it be pinned for the GPU (the CUDA backend
allocates it in pinned host memory) or, later, placed in shared memory, in one call.
``allocate`` is the hook: it receives a byte count and returns a writable uint8 numpy
array of that size.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numba as nb
import numpy as np

ALIGN = 64  # a cache line on the CPU, and >= the 16-byte vector loads of the GPU gather

# Arrays at least this large are copied on every thread, in chunks of _COPY_CHUNK bytes: a
# copy into fresh memory is mostly the first touch of its pages (the kernel zeroes each),
# which one thread would pay for alone (183 MiB on the 2-core VM: 40 -> 26 ms); a copy into
# memory already touched (a GPU request's pinned staging buffer) is bound by what one core
# moves (48 MB took 7.5 ms of a 1Mx10 request on the H200 machine's host).
_PARALLEL_COPY_BYTES = 1 << 20
_COPY_CHUNK = 1 << 21


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def default_allocate(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, dtype=np.uint8)


@nb.njit(parallel=True, nogil=True, cache=True)
def _copy_bytes(dst, src):
    n = src.shape[0]
    for c in nb.prange((n + _COPY_CHUNK - 1) // _COPY_CHUNK):
        lo = c * _COPY_CHUNK
        hi = min(n, lo + _COPY_CHUNK)
        dst[lo:hi] = src[lo:hi]


def copy_into(dst: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Copy array ``a`` into ``dst`` (uint8, a.nbytes long, contiguous) and return dst viewed
    as ``a``; a large contiguous array is copied on every thread."""
    view = dst.view(a.dtype).reshape(a.shape)
    if a.nbytes >= _PARALLEL_COPY_BYTES and a.flags.c_contiguous:
        _copy_bytes(dst, a.reshape(-1).view(np.uint8))
    else:
        view[...] = a
    return view


class Arena:
    """Copies a list of arrays into one buffer; ``views`` are the packed arrays, same order."""

    def __init__(self, arrays: Sequence[np.ndarray], allocate: Callable[[int], np.ndarray] = default_allocate):
        layout = []
        total = 0
        for a in arrays:
            layout.append(total)
            total += _aligned(a.nbytes)
        # allocate() promises no alignment (numpy's own memory starts 16 bytes into a
        # line): take ALIGN bytes more and start on a line, so that a 64-byte dense row is
        # one cache line, not two.
        self.buffer = allocate(max(total, ALIGN) + ALIGN)
        skip = -self.buffer.ctypes.data % ALIGN
        self.views: list[np.ndarray] = []
        for a, start in zip(arrays, layout):
            start += skip
            self.views.append(copy_into(self.buffer[start: start + a.nbytes], a))

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes
