"""What a request's kernels report back: one small array of counters, read once at its end.

Checks that would cost a pass over the data on the host (unknown categories, ids absent
from the table, rows that cannot get their negatives) are made by the kernels as they go;
each kernel adds to its own words of the request's counter array (a count and the first
position, kept with atomicMin), and the engine reads the whole array once, when the
request is done, to raise the same errors on every backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .kernel_constants import STATUS_OK

NONE = np.iinfo(np.uint64).max  # a "first position" word that no position has set


class Counter(IntEnum):
    """Word offsets in a request's counter array; a kernel gets a pointer to its group."""

    FAILED = 0          # sampling: rows that failed, the first one, alias draws made
    FIRST_FAILED = 1
    ATTEMPTS = 2
    UNKNOWN = 3         # category resolution: unknown categories, the first one's position
    FIRST_UNKNOWN = 4
    MISSING = 5         # pack: ids absent from the table (only while the default id is absent too)
    FIRST_MISSING = 6


COUNTERS = len(Counter)


def initial_counters() -> np.ndarray:
    """A request's counters before any kernel ran."""
    counters = np.zeros(COUNTERS, dtype=np.uint64)
    counters[[Counter.FIRST_FAILED, Counter.FIRST_UNKNOWN, Counter.FIRST_MISSING]] = NONE
    return counters


@dataclass
class RequestStatus:
    """A request's counters, read on the host."""

    failed: int = 0
    first_failed: int = -1
    first_failed_status: int = STATUS_OK
    attempts: int = 0
    unknown: int = 0
    first_unknown: int = -1
    missing: int = 0
    first_missing: int = -1

    @classmethod
    def from_counters(cls, c: np.ndarray, status_of_row=None) -> "RequestStatus":
        """``status_of_row(row)`` reads one row's status (called only when a row failed)."""
        def first(word):
            return -1 if c[word] == NONE else int(c[word])
        failed = int(c[Counter.FAILED])
        first_failed = first(Counter.FIRST_FAILED)
        return cls(failed, first_failed, status_of_row(first_failed) if failed else STATUS_OK,
                   int(c[Counter.ATTEMPTS]), int(c[Counter.UNKNOWN]), first(Counter.FIRST_UNKNOWN),
                   int(c[Counter.MISSING]), first(Counter.FIRST_MISSING))
