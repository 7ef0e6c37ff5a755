"""The interface between the engine and a kernel backend, declared.

The engine (engine.py) drives one pipeline; a backend supplies its steps over its own
memory: ``CpuBackend`` (numba kernels over numpy arrays) or ``CudaBackend`` (kernels/*.cu
over a ``Device``: a GPU through CuPy, or the g++ emulation). Arrays a backend returns
are its own ("backend arrays": numpy for the CPU, device arrays for CUDA) until
``to_torch`` / ``to_host`` convert them.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from ..index import Index
from .common import Placement, SampleOutput


class Allocator(Protocol):
    """Where a host output goes: a writable array of exactly ``shape`` and ``dtype``, named
    by what it holds (``"neg"``, ``"<column>"``, ``"<column>.values"``, ``"<column>.offsets"``,
    ...). The node server passes one that carves arrays out of a client's shared-memory
    block, so results are written once, where the client reads them."""

    def __call__(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...


def host_empty(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The default Allocator: fresh process memory."""
    return np.empty(shape, dtype=dtype)


class Backend(Protocol):
    """The steps of the sampling pipeline over one kind of memory."""

    name: str

    def allocate_host(self, nbytes: int) -> np.ndarray:
        """uint8 host memory for a table's arena (pinned where the backend reads it from a GPU)."""

    def place_index(self, index: Index) -> Any:
        """The index as the kernels read it (arrays copied to the device where there is one)."""

    def place_table(self, table) -> tuple[dict, Placement]:
        """The table's columns as the kernels read them, and where each one lives."""

    def to_torch(self, a) -> torch.Tensor:
        """A backend array as a torch tensor on the backend's device (zero-copy where possible)."""

    def to_host(self, a) -> np.ndarray:
        """A backend array as a host numpy array."""

    def valid_ids(self, ix, ids, default_id: int) -> Any:
        """ids, with each id absent from the table replaced by default_id."""

    def rows_or_default(self, ix, ids, default_row: int) -> tuple[Any, int]:
        """(table rows of ids with default_row where absent, how many were absent)."""

    def combine(self, origin, counts: np.ndarray, sampled) -> Any:
        """origin[0], its sampled entries, origin[1], its entries, ..."""

    def sample(self, ix, req_offsets, req_segs, counts, own_offsets, own_ids, batch, distinct: bool,
               call: int, key: tuple, fill_id: int) -> SampleOutput:
        """Negatives of one request (see backends/cpu/sample.py for the decisions)."""

    def log_q(self, ix, req_offsets, req_segs, item_offsets, item_ids) -> Any:
        """float64 log q of combined ids (see backends/log_q.py)."""

    def gather_table(self, columns: dict, rows, alloc: Allocator) -> dict:
        """Every placed column at the given table rows: dense -> Tensor, ragged -> RaggedTensor,
        string -> fixed-width np.bytes_ array; host outputs come from ``alloc``."""
