"""numpy fixed-width string arrays ('U' or 'S') to a string column's bytes and offsets, in numba.

numpy holds a 'U' array as UCS-4 code points padded with NULs to the widest row; a
catalogue's key column arrives that way (1M rows of '<U23' are 92 MB). Arrow's
conversion goes through a Python object per row; this reads the array once to size each
row's UTF-8 bytes and once to write them, in parallel. A value's trailing NULs are not
part of it, as numpy's own str() of an element says. Lone surrogates (which Python
strings may hold and UTF-8 cannot encode) are reported by row.
"""
from __future__ import annotations

import numba as nb
import numpy as np

_SURROGATE_LO, _SURROGATE_HI = 0xD800, 0xDFFF


@nb.njit(inline="always", cache=True)
def _utf8_size(c):
    if c < 0x80:
        return 1
    if c < 0x800:
        return 2
    if c < 0x10000:
        return 3
    return 4


@nb.njit(inline="always", cache=True)
def _used(units, i):
    """Code units of row i before its trailing NULs."""
    w = units.shape[1]
    while w > 0 and units[i, w - 1] == 0:
        w -= 1
    return w


@nb.njit(parallel=True, nogil=True, cache=True)
def _sizes(units, utf8, lengths):
    """lengths[i + 1] = row i's size in bytes; returns the first row holding a surrogate, or -1."""
    bad = units.shape[0]
    for i in nb.prange(units.shape[0]):
        w = _used(units, i)
        if not utf8:
            lengths[i + 1] = w
            continue
        size = 0
        for q in range(w):
            c = units[i, q]
            if _SURROGATE_LO <= c <= _SURROGATE_HI:
                bad = min(bad, i)
            size += _utf8_size(c)
        lengths[i + 1] = size
    return bad if bad < units.shape[0] else -1


@nb.njit(parallel=True, nogil=True, cache=True)
def _encode(units, utf8, offsets, out):
    for i in nb.prange(units.shape[0]):
        at = offsets[i]
        for q in range(_used(units, i)):
            c = np.uint32(units[i, q])
            if not utf8 or c < 0x80:
                out[at] = np.uint8(c)
                at += 1
            elif c < 0x800:
                out[at] = np.uint8(0xC0 | (c >> 6))
                out[at + 1] = np.uint8(0x80 | (c & 0x3F))
                at += 2
            elif c < 0x10000:
                out[at] = np.uint8(0xE0 | (c >> 12))
                out[at + 1] = np.uint8(0x80 | ((c >> 6) & 0x3F))
                out[at + 2] = np.uint8(0x80 | (c & 0x3F))
                at += 3
            else:
                out[at] = np.uint8(0xF0 | (c >> 18))
                out[at + 1] = np.uint8(0x80 | ((c >> 12) & 0x3F))
                out[at + 2] = np.uint8(0x80 | ((c >> 6) & 0x3F))
                out[at + 3] = np.uint8(0x80 | (c & 0x3F))
                at += 4


def fixed_width_to_bytes(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 data, int64 offsets, first row with a lone surrogate or -1) of a 1-D 'U' or 'S'
    array: 'U' rows UTF-8 encoded, 'S' rows as they are; trailing NULs dropped."""
    array = np.ascontiguousarray(array)
    n = array.shape[0]
    utf8 = array.dtype.kind == "U"
    unit = np.uint32 if utf8 else np.uint8
    width = array.dtype.itemsize // np.dtype(unit).itemsize
    units = array.view(unit).reshape(n, width) if width else np.zeros((n, 0), unit)
    offsets = np.zeros(n + 1, dtype=np.int64)
    bad = _sizes(units, utf8, offsets)
    if bad >= 0:
        return np.zeros(0, np.uint8), offsets, int(bad)
    np.cumsum(offsets, out=offsets)
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    _encode(units, utf8, offsets, data)
    return data, offsets, -1
