"""Open-addressing id -> row hash table, shared by the item index and the category index.

Layout (the same bytes serve the CPU path and, copied as they are, the GPU):
``slots`` is an int64 array of shape (capacity, 2) holding (key, value) pairs, capacity a
power of two at least twice the number of keys; empty slots hold ``EMPTY_KEY`` in the key
word and -1 in the value word. The home slot of a key is ``splitmix64(key) & (capacity -
1)``; collisions probe linearly. Pairs sit side by side so a probe touches one cache line
(one sector on a GPU) for both the key and its row. INT64_MIN is the empty sentinel and is refused as an id.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .memory_hints import prefetch

EMPTY_KEY = np.int64(np.iinfo(np.int64).min)
NOT_FOUND = np.int64(-1)

_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


@nb.njit(inline="always", cache=True)
def splitmix64(key):
    """The splitmix64 finalizer of an int64 key's bits, as uint64."""
    z = nb.uint64(key)
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


def capacity_for(n_keys: int) -> int:
    """Smallest power of two >= 2 * n_keys (and >= 2)."""
    return 1 << max(1, int(2 * max(n_keys, 1) - 1).bit_length())


# Keys ahead whose home slot is prefetched while one is inserted: a serial insert into a
# table larger than the caches waits for one miss per key; with the next keys' lines on
# their way the misses overlap (1M keys into 32 MB: ~1.5x faster on the 2-core VM).
_PREFETCH_AHEAD = 16
# Tables smaller than this are cleared by numpy: a parallel region costs more than it saves
# (a request's batch-wide exclusion set is such a table).
_PARALLEL_CLEAR_SLOTS = 1 << 16


@nb.njit(parallel=True, nogil=True, cache=True)
def _clear(slots):
    """Every slot empty (value word -1, so the bytes are deterministic), written on every
    thread: the first touch of a fresh table's pages is shared out."""
    for s in nb.prange(slots.shape[0]):
        slots[s, 0] = EMPTY_KEY
        slots[s, 1] = -1


@nb.njit(nogil=True, cache=True)
def _clear_here(slots):
    """_clear on the calling thread only (the same bytes)."""
    for s in range(slots.shape[0]):
        slots[s, 0] = EMPTY_KEY
        slots[s, 1] = -1


@nb.njit(inline="always", cache=True)
def home_slot(slots, key):
    """The slot a key's linear probe starts at."""
    return splitmix64(key) & np.uint64(slots.shape[0] - 1)


@nb.njit(inline="always", cache=True)
def prefetch_home(slots, key):
    """Start loading the line of key's home slot, for a probe or insert of it a few keys on."""
    prefetch(slots, home_slot(slots, key))


@nb.njit(nogil=True, cache=True)
def _insert_all(slots, keys):
    """Insert keys[i] -> i in order; return (-1, -1) or the first duplicate pair (first, second)."""
    mask = np.uint64(slots.shape[0] - 1)
    n = keys.shape[0]
    for i in range(min(_PREFETCH_AHEAD, n)):
        prefetch_home(slots, keys[i])
    for i in range(n):
        if i + _PREFETCH_AHEAD < n:
            prefetch_home(slots, keys[i + _PREFETCH_AHEAD])
        key = keys[i]
        slot = home_slot(slots, key)
        while True:
            held = slots[slot, 0]
            if held == EMPTY_KEY:
                slots[slot, 0] = key
                slots[slot, 1] = i
                break
            if held == key:
                return slots[slot, 1], np.int64(i)
            slot = (slot + np.uint64(1)) & mask
    return np.int64(-1), np.int64(-1)


def build_hash_table(keys: np.ndarray, all_threads: bool = True) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Hash table mapping keys[i] -> i.

    Returns (slots, duplicate): duplicate is None or the first (row, row) pair that holds
    the same key, for the caller's error message. Keys must not contain EMPTY_KEY.
    ``all_threads=False`` keeps the work on the calling thread (no parallel region), for a
    caller that builds the table beside other work; the bytes are the same.
    """
    slots = np.empty((capacity_for(keys.shape[0]), 2), dtype=np.int64)
    if slots.shape[0] < _PARALLEL_CLEAR_SLOTS:
        slots[:] = (EMPTY_KEY, -1)
    elif all_threads:
        _clear(slots)
    else:
        _clear_here(slots)
    first, second = _insert_all(slots, np.ascontiguousarray(keys, dtype=np.int64))
    return slots, (None if first < 0 else (int(first), int(second)))


@nb.njit(inline="always", cache=True)
def probe(slots, key):
    """Value stored for key, or NOT_FOUND. EMPTY_KEY is never a key: it would match an
    empty slot, whose value word is not a row."""
    if key == EMPTY_KEY:
        return NOT_FOUND
    mask = np.uint64(slots.shape[0] - 1)
    slot = home_slot(slots, key)
    while True:
        held = slots[slot, 0]
        if held == key:
            return slots[slot, 1]
        if held == EMPTY_KEY:
            return NOT_FOUND
        slot = (slot + np.uint64(1)) & mask
