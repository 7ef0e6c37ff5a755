"""The interface between the engine and a kernel backend, declared.

The engine (engine.py) drives one pipeline; a backend supplies its steps over its own
memory: ``CpuBackend`` (numba kernels over numpy arrays) or ``CudaBackend`` (kernels/*.cu
over a ``Device``: a GPU, or the g++ emulation, with torch tensors as device arrays).
Every step of a request runs inside the backend's ``request()`` scope, which takes the
request's inputs (one upload on a GPU), gives each kernel its counter words, and reads
them once at the end (``finish``): the engine raises the same errors on every backend
from that ``RequestStatus``. Arrays a backend returns are its own ("backend arrays":
numpy for the CPU, tensors on the device for CUDA) until ``to_torch`` / ``to_host``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ContextManager, Protocol

import numpy as np
import torch

from ..index import Index
from .common import Placement
from .status import RequestStatus


class Allocator(Protocol):
    """Where a host output goes: a writable array of exactly ``shape`` and ``dtype``, named
    by what it holds (``"<column>"``, ``"<column>.values"``, ``"<column>.offsets"``, ...).
    The node server passes one that carves arrays out of a client's shared-memory block,
    so results are written once, where the client reads them."""

    def __call__(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...


def host_empty(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The default Allocator: fresh process memory."""
    return np.empty(shape, dtype=dtype)


@dataclass
class SampleInputs:
    """One sampling request, checked by the engine; arrays are the request's backend arrays."""

    ix: Any                 # the placed index (the table's, or the one-category index)
    own_offsets: Any        # rows + 1: row i excludes own_ids[own_offsets[i]:own_offsets[i + 1]]
    own_ids: Any
    req_offsets: Any        # rows + 1: row i samples from categories req_cats[req_offsets[i]:...]
    req_cats: Any
    out_offsets: Any        # rows + 1: row i's negatives go to out[out_offsets[i]:out_offsets[i + 1]]
    n_rows: int
    n_draws: int
    uniform_count: int      # > 0 when every row asks that many, else 0
    batch: bool             # batch-wide exclusion: every row excludes every id of own_ids
    distinct: bool
    call: int
    key: tuple
    fill_id: int


@dataclass
class Draw:
    """A sampling request's results: the negatives, the categories resolved to segments
    (unknown ones -1, counted), and the per-row statuses (read for a failed row)."""

    ids: Any
    req_segs: Any
    status: Any


class Request(Protocol):
    """One request's scope on a backend (a context manager)."""

    def inputs(self, **arrays) -> dict:
        """Backend arrays of host arrays (numpy) and device tensors."""

    def finish(self, status: Any = None) -> RequestStatus:
        """Wait for the request's work; its counters on the host."""


class Backend(Protocol):
    """The steps of the sampling pipeline over one kind of memory."""

    name: str
    count_attempts: bool  # whether sample() counts alias draws (RequestStatus.attempts)
    # whether every table array must be copied into allocate_host memory (pinned where a GPU
    # reads it); if not, arrays the reader made itself (Column.owned) stay where they are
    packs_every_array: bool

    def allocate_host(self, nbytes: int) -> np.ndarray:
        """uint8 host memory for a table's arena (pinned where a GPU reads it in place)."""

    def keeps_device_tensors(self, t: torch.Tensor) -> bool:
        """Whether a caller's tensor is used where it is (on this backend's device)."""

    def request(self) -> ContextManager[Request]: ...

    def place_index(self, index: Index) -> Any:
        """The index as the kernels read it (arrays copied to the device where there is one)."""

    def place_table(self, table) -> tuple[dict, Placement]:
        """The table's columns as the kernels read them, and where each one lives."""

    def to_torch(self, a) -> torch.Tensor:
        """A backend array as a torch tensor on the backend's device (zero-copy where possible)."""

    def to_host(self, a) -> np.ndarray:
        """A backend array as a host numpy array (a wait on a device)."""

    def sample(self, rq: Request, inputs: SampleInputs, alloc: Allocator = host_empty) -> Draw:
        """Negatives of one request (see backends/cpu/sample.py for the decisions). Here and in
        valid_ids and combine (the fused request's other outputs handed back to a caller), a
        host backend takes its output array from ``alloc``; a device backend's outputs stay on
        its device and it ignores ``alloc``."""

    def valid_ids(self, rq: Request, ix, ids, default_id: int, alloc: Allocator = host_empty) -> Any:
        """ids, with each id absent from the table replaced by default_id."""

    def rows_or_default(self, rq: Request, ix, ids, default_row: int, report_missing: bool) -> Any:
        """Table rows of ids, default_row where absent (counted when report_missing)."""

    def combine(self, rq: Request, origin, sampled_offsets, uniform_count: int, sampled,
                alloc: Allocator = host_empty) -> Any:
        """origin[0], its sampled entries, origin[1], its entries, ... (uniform_count < 0: counts differ)."""

    def log_q(self, rq: Request, ix, req_offsets, req_segs, sampled_offsets, uniform_count: int, ids) -> Any:
        """float32 log q of combined ids (see kernels/log_q.cu)."""

    def gather_table(self, rq: Request, columns: dict, rows, alloc: Allocator) -> dict:
        """Every placed column at the given table rows: dense -> Tensor, ragged -> RaggedTensor,
        string -> fixed-width np.bytes_ array; host outputs come from ``alloc``."""

    def gather_ids(self, rq: Request, ix, columns: dict, ids, default_row: int, report_missing: bool,
                   alloc: Allocator) -> dict:
        """gather_table at rows_or_default's rows of ids (a backend may do both in one pass)."""
