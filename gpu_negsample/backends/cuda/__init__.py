"""The CUDA backend: kernels/*.cu over a Device (CupyDevice on a GPU, EmulatedDevice on the CPU).

It offers CpuBackend's steps and returns the same ids and features for the same seed.
Placement at reload: the table's arena is allocated in pinned host memory; the index and
the feature columns that fit ``memory_budget`` are copied to the GPU; the other columns
stay in pinned memory and are gathered from there in place (unified addressing). A request
lives on the device (``DeviceRequest``): its host inputs in one upload, tensors already on
the device used where they are, a fixed chain of kernels, one wait at its end (and one
more in a pack, to size the ragged and string outputs).
"""
from __future__ import annotations

import numpy as np
import torch

from ...hashing import EMPTY_KEY, capacity_for
from ...index import Index
from ..protocol import Allocator, Draw, SampleInputs, host_empty
from ..status import Counter
from .device import Device
from .gather import TableKernels, gather_table, table_kernels
from .placement import IndexMirror, place_index, place_table
from .request import DeviceRequest


class PlacedColumns(dict):
    """A table's columns as placed on the device, with their per-table gather descriptors."""

    def __init__(self, columns: dict, kernels: TableKernels):
        super().__init__(columns)
        self.kernels = kernels


class CudaBackend:
    """kernels/*.cu on one device. ``memory_budget``: bytes of feature columns to copy to
    the GPU (None: half of the free device memory); ``count_attempts`` makes the sampling
    kernels count alias draws (an atomic per draw: for benchmarks, off by default)."""

    def __init__(self, device: Device, memory_budget: int | None = None, count_attempts: bool = False):
        self.device = device
        self.memory_budget = memory_budget
        self.count_attempts = count_attempts
        self.packs_every_array = True  # columns not placed on the GPU are read from the pinned arena
        self.name = f"cuda on {device.describe()}"

    @property
    def allocate_host(self):
        return self.device.allocate_host

    def keeps_device_tensors(self, t: torch.Tensor) -> bool:
        return t.device == self.device.torch_device

    def request(self) -> DeviceRequest:
        return DeviceRequest(self.device)

    # ---- placement -----------------------------------------------------------------
    def place_index(self, index: Index) -> IndexMirror:
        return place_index(self.device, index)

    def place_table(self, table):
        placed, placement = place_table(self.device, table, self.memory_budget)
        with self.device.active():
            return PlacedColumns(placed, table_kernels(self.device, placed)), placement

    # ---- conversions ---------------------------------------------------------------
    @staticmethod
    def to_torch(a) -> torch.Tensor:
        """Device arrays are tensors already; host arrays (counts) stay on the host."""
        return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))

    def to_host(self, a) -> np.ndarray:
        if not isinstance(a, torch.Tensor):
            return np.asarray(a)
        with self.device.active():
            return self.device.fetch([a])[0]

    # ---- sampling ------------------------------------------------------------------
    def sample(self, rq: DeviceRequest, inputs: SampleInputs, alloc: Allocator = host_empty) -> Draw:
        dev, ix = self.device, inputs.ix
        n, n_cats = inputs.n_rows, int(inputs.req_cats.shape[0])
        batch = self._batch_exclusion(rq, inputs) if inputs.batch else dict(ix.no_batch, use_batch=0)
        ex = (inputs.own_offsets, inputs.own_ids, batch["use_batch"], batch["batch_slots"],
              batch["batch_slots"].shape[0], batch["batch_head_mass"], batch["batch_tail_mass"],
              batch["batch_cum"])
        req_segs = rq.empty((n_cats,), torch.int64)
        remaining = rq.empty((2 * n_cats,), torch.int64)  # u64 in the kernels
        row_total = rq.empty((n,), torch.int64)
        dev.launch("part_masses", n, ix.view, *ex, inputs.req_offsets, inputs.req_cats, n, req_segs, remaining,
                   row_total, rq.counter(Counter.UNKNOWN))
        out = rq.empty((inputs.n_draws,), torch.int64)
        status = rq.empty((n,), torch.int8)
        common = (ix.view, *ex, inputs.req_offsets, req_segs, remaining, row_total, inputs.out_offsets, n)
        tail = (inputs.call & 0xFFFFFFFF, int(inputs.key[0]), int(inputs.key[1]), inputs.fill_id, int(self.count_attempts),
                out, status, rq.counter(Counter.FAILED))
        if inputs.distinct:
            dev.launch("sample_distinct", n, *common, *tail)
        else:
            dev.launch("sample_put_back", inputs.n_draws, *common, inputs.uniform_count, *tail)
        return Draw(out, req_segs, status)

    def _batch_exclusion(self, rq: DeviceRequest, inputs: SampleInputs) -> dict:
        """Batch-wide exclusion on the device: the excluded ids' hash set and per-segment masses
        (batch_exclusion), then every position's weight with those ids at 0 (batch_weights)
        and their prefix sums (one cumsum), from which the tails the ids would stall are drawn."""
        dev, ix = self.device, inputs.ix
        n_ids, n_seg, n_pos = int(inputs.own_ids.shape[0]), ix.host.seg_total.shape[0], ix.host.seg_ids.shape[0]
        capacity = capacity_for(n_ids)
        slots = rq.empty((capacity, 2), torch.int64)
        dev.fill(slots, EMPTY_KEY)
        mass = rq.zeros((2, n_seg), torch.int64)  # u64 in the kernels: head masses, then tail masses
        dev.launch("batch_exclusion", n_ids, ix.view, inputs.own_ids, n_ids, slots, capacity, mass, n_seg)
        cum = rq.empty((n_pos + 1,), torch.int64)  # u64 in the kernels; a wrapped sum is harmless (differences)
        dev.launch("batch_weights", n_pos + 1, ix.view, slots, capacity, n_pos, cum)
        dev.cumsum(cum, cum)
        return {"use_batch": 1, "batch_slots": slots, "batch_head_mass": mass[0], "batch_tail_mass": mass[1],
                "batch_cum": cum}

    # ---- lookups -------------------------------------------------------------------
    def valid_ids(self, rq: DeviceRequest, ix: IndexMirror, ids, default_id: int, alloc: Allocator = host_empty):
        out = rq.empty(ids.shape, torch.int64)
        self.device.launch("valid_ids", ids.shape[0], ix.arrays["id_slots"], ix.host.id_slots.shape[0], ids,
                           ids.shape[0], default_id, out)
        return out

    def rows_or_default(self, rq: DeviceRequest, ix: IndexMirror, ids, default_row: int, report_missing: bool):
        out = rq.empty(ids.shape, torch.int64)
        self.device.launch("rows_or_default", ids.shape[0], ix.arrays["id_slots"], ix.host.id_slots.shape[0], ids,
                           ids.shape[0], default_row, int(report_missing), out, rq.counter(Counter.MISSING))
        return out

    def combine(self, rq: DeviceRequest, origin, sampled_offsets, uniform_count: int, sampled,
                alloc: Allocator = host_empty):
        n = int(origin.shape[0])
        out = rq.empty((n + int(sampled.shape[0]),), torch.int64)
        self.device.launch("combine_with_counts", out.shape[0], origin, sampled, sampled_offsets, n, uniform_count,
                           out)
        return out

    def log_q(self, rq: DeviceRequest, ix: IndexMirror, req_offsets, req_segs, sampled_offsets, uniform_count: int,
              ids):
        out = rq.empty(ids.shape, torch.float32)
        n = int(req_offsets.shape[0]) - 1
        self.device.launch("log_q_rows", ids.shape[0], ix.view, req_offsets, req_segs, sampled_offsets, n,
                           uniform_count, ids, out)
        return out

    # ---- feature gather --------------------------------------------------------------
    def gather_table(self, rq: DeviceRequest, columns: PlacedColumns, rows, alloc: Allocator = host_empty) -> dict:
        """Dense and ragged columns as tensors on the device; strings as host bytes arrays from ``alloc``."""
        return gather_table(self.device, rq, columns, columns.kernels, rows, alloc)

    def gather_ids(self, rq: DeviceRequest, ix: IndexMirror, columns: PlacedColumns, ids, default_row: int,
                   report_missing: bool, alloc: Allocator = host_empty) -> dict:
        """rows_or_default, then gather_table at those rows."""
        return self.gather_table(rq, columns, self.rows_or_default(rq, ix, ids, default_row, report_missing), alloc)
