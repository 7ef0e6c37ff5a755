"""numpy fixed-width string arrays ('U' or 'S') to a string column's bytes and offsets, in numba.

numpy holds a 'U' array as UCS-4 code points padded with NULs to the widest row; a
catalogue's key column arrives that way (1M rows of '<U23' are 92 MB). Arrow's
conversion goes through a Python object per row; this reads the array once, in parallel,
sizing and encoding each row together. A value's trailing NULs are not
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


@nb.njit(inline="always", cache=True)
def _size(units, i, w, utf8):
    """(bytes of row i's first w units, whether they hold a surrogate)."""
    if not utf8:
        return w, False
    size = 0
    surrogate = False
    for q in range(w):
        c = units[i, q]
        if _SURROGATE_LO <= c <= _SURROGATE_HI:
            surrogate = True
        size += _utf8_size(c)
    return size, surrogate


@nb.njit(inline="always", cache=True)
def _put(units, i, w, utf8, out, at):
    """Write row i's first w units to out[at:], UTF-8 encoded for 'U' rows."""
    for q in range(w):
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


@nb.njit(parallel=True, nogil=True, cache=True)
def _encode_chunks(units, utf8, per, lengths, staging, used):
    """Read the array once: chunk c (rows c*per onwards) writes its rows' bytes back to back
    from staging[c*per*width], lengths[i + 1] = row i's size, used[c] = the chunk's bytes,
    or -1 when they do not fit its rows*width bytes (only non-ASCII rows can need more).
    Returns the first row holding a surrogate, or -1."""
    n, width = units.shape
    bad = n
    for c in nb.prange(used.shape[0]):
        lo = c * per
        hi = min(n, lo + per)
        at = lo * width
        for i in range(lo, hi):
            w = _used(units, i)
            size, surrogate = _size(units, i, w, utf8)
            if surrogate:
                bad = min(bad, i)
            if at + size > hi * width:
                at = -1
                break
            _put(units, i, w, utf8, staging, at)
            lengths[i + 1] = size
            at += size
        used[c] = at - lo * width if at >= 0 else -1
    return bad if bad < n else -1


@nb.njit(parallel=True, nogil=True, cache=True)
def _gather_chunks(staging, used, per, width, offsets, out):
    for c in nb.prange(used.shape[0]):
        at = offsets[c * per]
        out[at: at + used[c]] = staging[c * per * width: c * per * width + used[c]]


@nb.njit(parallel=True, nogil=True, cache=True)
def _sizes(units, utf8, lengths):
    """lengths[i + 1] = row i's size in bytes; returns the first row holding a surrogate, or -1."""
    bad = units.shape[0]
    for i in nb.prange(units.shape[0]):
        size, surrogate = _size(units, i, _used(units, i), utf8)
        if surrogate:
            bad = min(bad, i)
        lengths[i + 1] = size
    return bad if bad < units.shape[0] else -1


@nb.njit(parallel=True, nogil=True, cache=True)
def _encode(units, utf8, offsets, out):
    for i in nb.prange(units.shape[0]):
        _put(units, i, _used(units, i), utf8, out, offsets[i])


# Chunks of the one-read conversion: enough for both threads to stay busy; few enough that
# the staging pages a chunk leaves untouched (it writes ~its used bytes of rows*width) are
# few.
_CHUNKS = 16


def fixed_width_to_bytes(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 data, int64 offsets, first row with a lone surrogate or -1) of a 1-D 'U' or 'S'
    array: 'U' rows UTF-8 encoded, 'S' rows as they are; trailing NULs dropped.

    The array is read once: each chunk of rows is encoded into staging memory, then the
    chunks' bytes are moved together. Where non-ASCII rows outgrow their chunk's staging,
    it is read twice instead (sizes, then bytes straight to their place)."""
    array = np.ascontiguousarray(array)
    n = array.shape[0]
    utf8 = array.dtype.kind == "U"
    unit = np.uint32 if utf8 else np.uint8
    width = array.dtype.itemsize // np.dtype(unit).itemsize
    units = array.view(unit).reshape(n, width) if width else np.zeros((n, 0), unit)
    offsets = np.zeros(n + 1, dtype=np.int64)
    per = max(1, -(-n // _CHUNKS))
    used = np.empty(-(-n // per), dtype=np.int64)
    staging = np.empty(n * width, dtype=np.uint8)
    bad = _encode_chunks(units, utf8, per, offsets, staging, used)
    overflow = bool((used < 0).any())
    if overflow:  # chunks stopped early: size every row (and find the first surrogate) anew
        bad = _sizes(units, utf8, offsets)
    if bad >= 0:
        return np.zeros(0, np.uint8), offsets, int(bad)
    np.cumsum(offsets, out=offsets)
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    if overflow:
        _encode(units, utf8, offsets, data)
    else:
        _gather_chunks(staging, used, per, width, offsets, data)
    return data, offsets, -1
