"""One request on the CPU: the same interface as a device request, with nothing to move."""
from __future__ import annotations

import numpy as np

from ..status import Counter, RequestStatus, initial_counters

_INITIAL = initial_counters()  # copied per request: one call instead of initial_counters' two passes


class HostRequest:
    """Inputs stay where they are; the counters are a numpy array that the sampling kernels
    fill themselves and the other kernels' wrappers fill as they finish; ``finish`` reads them."""

    def __init__(self) -> None:
        self.counters = _INITIAL.copy()

    def __enter__(self) -> "HostRequest":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    @staticmethod
    def inputs(**arrays) -> dict:
        """The request's arrays on the host (a CUDA tensor is read back: the CPU backend samples here)."""
        return {name: a if isinstance(a, np.ndarray) else np.ascontiguousarray(a.detach().cpu().numpy(), np.int64)
                for name, a in arrays.items()}

    def count(self, count: Counter, first: Counter, flags: np.ndarray) -> None:
        """Add the positions where flags is true to the counters count / first."""
        hits = np.flatnonzero(flags)
        if hits.size:
            self.counters[count] += hits.size
            self.counters[first] = min(int(self.counters[first]), int(hits[0]))

    def finish(self, status: np.ndarray | None = None) -> RequestStatus:
        # as Python ints: from_counters reads each word once or twice, cheaper on a list than on numpy scalars
        return RequestStatus.from_counters(self.counters.tolist(), lambda row: int(status[row]))
