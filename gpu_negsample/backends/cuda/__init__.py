"""The CUDA backend: kernels/*.cu over a device (CupyDevice on a GPU, EmulatedDevice on the CPU).

It offers CpuBackend's methods and returns the same ids and features for the same seed.
Placement at reload: the table's arena is allocated in pinned host memory; the index and
the feature columns that fit ``memory_budget`` are copied to the GPU; the other columns
stay in pinned memory and are gathered from there through unified addressing (zero-copy).
Request arrays arrive as host numpy arrays (the engine validates them there) or as
device arrays from an earlier step of the same request, which are used where they are.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...columns import DENSE, RAGGED, Column
from ...ragged import RaggedTensor
from ...index import Index, IndexArrays
from ..common import Placement, SampleOutput
from ..exclusion import exclusion
from ..kernel_constants import STATUS_OK
from ..log_q import log_q_rows
from ..protocol import Allocator, host_empty
from .kernel_views import pack_view

GPU = "gpu"
PINNED = "pinned host (UVA)"
BUDGET_SHARE = 0.5  # default budget for feature columns: half the device memory free at reload
_NO_ROW = np.uint64(np.iinfo(np.uint64).max)


@dataclasses.dataclass
class IndexMirror:
    """An index's arrays on the device plus the IndexView that points at them."""

    host: IndexArrays
    arrays: dict
    view: object
    no_batch: dict  # the batch-wide fields of an ExclusionView without batch-wide exclusion, uploaded once


@dataclasses.dataclass
class SampleJob:
    """One sample request on the device: inputs, outputs, and the views the kernels read."""

    ix: IndexMirror
    ex_view: object
    ex_arrays: dict  # keeps the arrays ex_view points at alive
    n_rows: int
    n_draws: int
    uniform_count: int
    distinct: bool
    call: int
    key: tuple
    fill_id: int
    req_offsets: object
    req_segs: object
    out_offsets: object
    remaining: object
    row_total: object
    out: object
    status: object
    counters: object


class CudaBackend:
    """kernels/*.cu on one device. ``memory_budget``: bytes of feature columns to copy to
    the GPU (None: half of the free device memory); ``count_attempts`` makes the sampling
    kernels count alias draws (an atomic per draw: for benchmarks, off by default)."""

    def __init__(self, device, memory_budget: int | None = None, count_attempts: bool = False):
        self.device = device
        self.memory_budget = memory_budget
        self.count_attempts = count_attempts
        self.name = f"cuda on {device.describe()}"

    @property
    def allocate_host(self):
        return self.device.allocate_host

    # ---- placement -----------------------------------------------------------------
    def place_index(self, index: Index) -> IndexMirror:
        dev = self.device
        dev.compile_all()  # at reload, not in the first request
        with dev.active():
            arrays = {name: dev.upload(a) for name, a in index.arrays._asdict().items()}
            fields = dict(arrays, id_capacity=index.arrays.id_slots.shape[0],
                          cat_capacity=index.arrays.cat_slots.shape[0])
            none = exclusion(index.arrays, np.zeros(1, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), None)
            no_batch = {name: dev.upload(a) for name, a in none._asdict().items() if name.startswith("batch_")}
            return IndexMirror(index.arrays, arrays, pack_view(dev, "IndexView", fields), no_batch)

    def place_table(self, table) -> tuple[dict, Placement]:
        dev = self.device
        budget = self.memory_budget if self.memory_budget is not None else int(dev.free_memory() * BUDGET_SHARE)
        placement = Placement(dev.describe())
        placed = {}
        with dev.active():
            for col in table.columns.values():
                where = GPU if col.nbytes <= budget else PINNED
                if where == GPU:
                    budget -= col.nbytes
                move = dev.upload if where == GPU else dev.host_view
                placed[col.name] = dataclasses.replace(
                    col, **{f: move(getattr(col, f)) for f in ("values", "offsets", "weight") if getattr(col, f) is not None})
                placement.add(col.name, col.kind, col.nbytes, where)
        return placed, placement

    # ---- conversions ---------------------------------------------------------------
    def asarray(self, a, dtype=np.int64):
        """A device array of a host array / tensor, or the device array itself."""
        if isinstance(a, torch.Tensor):
            a = self.device.from_torch(a) if a.is_cuda else a.numpy()
        if not isinstance(a, np.ndarray):
            return a
        return self.device.upload(np.ascontiguousarray(a, dtype=dtype))

    def to_torch(self, a) -> torch.Tensor:
        """A torch tensor on this backend's device (host arrays are copied there)."""
        return self.device.to_torch(self.device.upload(a) if isinstance(a, np.ndarray) else a)

    def to_host(self, a) -> np.ndarray:
        return self.device.to_host(a)

    def _counters(self, *values) -> object:
        return self.device.upload(np.array(values, dtype=np.uint64))

    # ---- lookups -------------------------------------------------------------------
    def valid_ids(self, ix: IndexMirror, ids, default_id: int):
        dev = self.device
        with dev.active():
            ids = self.asarray(ids)
            out = dev.xp.empty_like(ids)
            dev.launch("valid_ids", ids.shape[0], ix.arrays["id_slots"], ix.host.id_slots.shape[0], ids,
                       ids.shape[0], default_id, out)
            return out

    def rows_or_default(self, ix: IndexMirror, ids, default_row: int):
        dev = self.device
        with dev.active():
            ids = self.asarray(ids)
            out = dev.xp.empty_like(ids)
            missing = self._counters(0)
            dev.launch("rows_or_default", ids.shape[0], ix.arrays["id_slots"], ix.host.id_slots.shape[0], ids,
                       ids.shape[0], default_row, out, missing)
            return out, int(dev.to_host(missing)[0])

    def _lookup_rows(self, ix: IndexMirror, keys):
        dev = self.device
        out = dev.xp.empty(keys.shape[0], dtype=np.int64)
        dev.launch("lookup_rows", keys.shape[0], ix.arrays["id_slots"], ix.host.id_slots.shape[0], keys,
                   keys.shape[0], out)
        return out

    def combine(self, origin, counts: np.ndarray, sampled):
        dev = self.device
        with dev.active():
            offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            origin, sampled = self.asarray(origin), self.asarray(sampled)
            out = dev.xp.empty(sampled.shape[0] + origin.shape[0], dtype=np.int64)
            dev.launch("combine_with_counts", out.shape[0], origin, sampled, dev.upload(offsets), counts.shape[0], out)
            return out

    # ---- sampling ------------------------------------------------------------------
    def sample(self, ix: IndexMirror, req_offsets, req_segs, counts, own_offsets, own_ids,
               batch, distinct: bool, call: int, key: tuple, fill_id: int) -> SampleOutput:
        with self.device.active():
            job = self.prepare_sample(ix, req_offsets, req_segs, counts, own_offsets, own_ids, batch, distinct,
                                      call, key, fill_id)
            self.launch_sample(job)
            return self.finish_sample(job)

    def prepare_sample(self, ix: IndexMirror, req_offsets, req_segs, counts, own_offsets, own_ids,
                       batch, distinct: bool, call: int, key: tuple, fill_id: int) -> "SampleJob":
        """Copy one request to the device and allocate its outputs (no kernel runs yet)."""
        dev = self.device
        n = counts.shape[0]
        out_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=out_offsets[1:])
        uniform = int(counts[0]) if n and counts[0] > 0 and (counts == counts[0]).all() else 0
        own_ids_d = dev.upload(own_ids)
        if batch is None:
            ex_arrays = dict(ix.no_batch, own_rows=self._lookup_rows(ix, own_ids_d))
        else:
            # Batch-wide exclusion's per-segment masses and tables are built on the host by
            # the same code as the CPU path, then copied.
            host_ex = exclusion(ix.host, own_offsets, own_ids, np.empty(0, np.int64), batch)
            ex_arrays = {name: dev.upload(a) for name, a in host_ex._asdict().items() if name.startswith("batch_")}
            ex_arrays["own_rows"] = dev.upload(np.full(own_ids.shape[0], -1, np.int64))
        ex_arrays.update(own_offsets=dev.upload(own_offsets), own_ids=own_ids_d)
        ex_view = pack_view(dev, "ExclusionView", dict(ex_arrays, use_batch=int(batch is not None),
                                                       batch_capacity=ex_arrays["batch_slots"].shape[0]))
        return SampleJob(
            ix=ix, ex_view=ex_view, ex_arrays=ex_arrays, n_rows=n, n_draws=int(out_offsets[-1]),
            uniform_count=uniform, distinct=distinct, call=call & 0xFFFFFFFF, key=(int(key[0]), int(key[1])),
            fill_id=fill_id, req_offsets=dev.upload(req_offsets), req_segs=dev.upload(req_segs),
            out_offsets=dev.upload(out_offsets),
            remaining=dev.xp.empty(2 * req_segs.shape[0], dtype=np.uint64),
            row_total=dev.xp.empty(n, dtype=np.uint64), out=dev.xp.empty(int(out_offsets[-1]), dtype=np.int64),
            status=dev.xp.zeros(n, dtype=np.int8), counters=self._counters(0, _NO_ROW, 0))

    def launch_sample(self, job: "SampleJob") -> None:
        """Queue the kernels of a prepared request (asynchronous on a GPU)."""
        dev = self.device
        dev.launch("part_masses", job.n_rows, job.ix.view, job.ex_view, job.req_offsets, job.req_segs, job.n_rows,
                   job.remaining, job.row_total)
        common = (job.ix.view, job.ex_view, job.req_offsets, job.req_segs, job.remaining, job.row_total,
                  job.out_offsets, job.n_rows)
        tail = (job.call, *job.key, job.fill_id, int(self.count_attempts), job.out, job.status, job.counters)
        if job.distinct:
            dev.launch("sample_distinct", job.n_rows, *common, *tail)
        else:
            dev.launch("sample_put_back", job.n_draws, *common, job.uniform_count, *tail)

    def finish_sample(self, job: "SampleJob") -> SampleOutput:
        """Wait for the kernels (one read of three counters) and report failed rows."""
        dev = self.device
        n_failed, first, attempts = (int(v) for v in dev.to_host(job.counters))
        first_status = int(dev.to_host(job.status[first:first + 1])[0]) if n_failed else STATUS_OK
        return SampleOutput(job.out, n_failed, first if n_failed else -1, first_status,
                            attempts if self.count_attempts else None)

    def log_q(self, ix: IndexMirror, req_offsets, req_segs, item_offsets, item_ids) -> np.ndarray:
        """Float math, on the host from the same index (GPU and CPU logs agree only to rounding)."""
        out = np.empty(item_offsets[-1], dtype=np.float64)
        log_q_rows(ix.host, req_offsets, req_segs, item_offsets, np.ascontiguousarray(self.to_host(item_ids)), out)
        return out

    # ---- feature gather --------------------------------------------------------------
    def gather_table(self, columns: dict, rows, alloc: Allocator = host_empty) -> dict:
        """Every column at the given rows: dense and ragged columns as tensors on the device,
        strings as a host bytes array from ``alloc``."""
        out = {}
        with self.device.active():
            rows = self.asarray(rows)
            for name, col in columns.items():
                if col.kind == DENSE:
                    out[name] = self.device.to_torch(self._gather_dense(col.values, rows))
                elif col.kind == RAGGED:
                    values, offsets = self._gather_ragged(col.values, col.offsets, rows)
                    weight = None if col.weight is None else self._gather_ragged(col.weight, col.offsets, rows)[0]
                    t = self.device.to_torch
                    out[name] = RaggedTensor._from_parts(t(values), t(offsets), None if weight is None else t(weight))
                else:
                    out[name] = self._gather_strings(name, col, rows, alloc)
        return out

    def _gather_dense(self, values, rows):
        dev = self.device
        n = rows.shape[0]
        row_bytes = values.dtype.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
        word = next(w for w in (16, 8, 4, 2, 1) if row_bytes % w == 0 and dev.address(values) % w == 0)
        out = dev.xp.empty(n * row_bytes, dtype=np.uint8)
        if n and row_bytes:
            dev.launch(f"gather_words_{word}", n * (row_bytes // word), values, row_bytes // word, rows, n, out)
        return out.view(values.dtype).reshape((n,) + tuple(values.shape[1:]))

    def _gather_ragged(self, values, offsets, rows):
        dev = self.device
        n = rows.shape[0]
        lengths = dev.xp.empty(n, dtype=np.int64)
        dev.launch("gather_lengths", n, offsets, rows, n, lengths)
        out_offsets = dev.xp.zeros(n + 1, dtype=np.int64)
        out_offsets[1:] = dev.xp.cumsum(lengths)
        total = int(dev.to_host(out_offsets[n:])[0])
        out = dev.xp.empty(total, dtype=values.dtype)
        dev.launch(f"gather_ragged_{values.dtype.itemsize}", n, values, offsets, rows, n, out_offsets, out)
        return out, out_offsets

    def _gather_strings(self, name: str, col: Column, rows, alloc: Allocator) -> np.ndarray:
        dev = self.device
        data, offsets = self._gather_ragged(col.values, col.offsets, rows)
        n = offsets.shape[0] - 1
        width = max(1, int(dev.to_host(dev.xp.diff(offsets).max()) if n else 0))
        fixed = dev.xp.zeros((n, width), dtype=np.uint8)
        dev.launch("strings_to_fixed_width", n, data, offsets, n, width, fixed)
        host = alloc(name, (n,), np.dtype(f"S{width}"))
        host.view(np.uint8).reshape(n, width)[...] = dev.to_host(fixed)
        return host
