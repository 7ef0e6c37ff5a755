"""One contiguous, aligned buffer that holds every array of a loaded table.

Keeping the table in one allocation lets it be pinned for the GPU (the CUDA backend
allocates it in pinned host memory) or, later, placed in shared memory, in one call.
``allocate`` is the hook: it receives a byte count and returns a writable uint8 numpy
array of that size.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

ALIGN = 64  # a cache line on the CPU, and >= the 16-byte vector loads of the GPU gather


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def default_allocate(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, dtype=np.uint8)


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
            view = self.buffer[start: start + a.nbytes].view(a.dtype).reshape(a.shape)
            view[...] = a
            self.views.append(view)

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes
