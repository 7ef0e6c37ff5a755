"""Where a loaded table lives on a device: the index always on the GPU, each feature column on
the GPU while it fits the memory budget, else read in place from pinned host memory (UVA)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...index import Index, IndexArrays
from ..common import Placement
from .device import Device
from .kernel_views import pack_view

GPU = "gpu"
PINNED = "pinned host (UVA)"
BUDGET_SHARE = 0.5  # default budget for feature columns: half the device memory free at reload


@dataclasses.dataclass
class IndexMirror:
    """An index's arrays on a device, the IndexView that points at them, and the batch-wide
    exclusion arrays of a request without batch-wide exclusion (uploaded once)."""

    host: IndexArrays
    arrays: dict
    view: torch.Tensor
    no_batch: dict


def place_index(device: Device, index: Index) -> IndexMirror:
    device.warm()  # at reload, not in the first request
    with device.active():
        arrays = {name: device.upload(a) for name, a in index.arrays._asdict().items()}
        fields = dict(arrays, id_capacity=index.arrays.id_slots.shape[0], cat_capacity=index.arrays.cat_slots.shape[0])
        n_seg = index.segment_count
        no_batch = {"batch_slots": device.upload(np.full((2, 2), np.iinfo(np.int64).min, dtype=np.int64)),
                    "batch_head_mass": device.upload(np.zeros(n_seg, np.uint64)),
                    "batch_tail_mass": device.upload(np.zeros(n_seg, np.uint64)),
                    "batch_cum": device.upload(np.zeros(1, np.uint64))}
        return IndexMirror(index.arrays, arrays, pack_view(device, "IndexView", fields), no_batch)


def place_table(device: Device, table, memory_budget: int | None) -> tuple[dict, Placement]:
    """The columns with their arrays on the GPU (in table order while they fit the budget,
    None: half the free memory) or as views of the pinned arena."""
    budget = memory_budget if memory_budget is not None else int(device.free_memory() * BUDGET_SHARE)
    placement = Placement(device.describe())
    placed = {}
    with device.active():
        for col in table.columns.values():
            where = GPU if col.nbytes <= budget else PINNED
            if where == GPU:
                budget -= col.nbytes
            move = device.upload if where == GPU else device.host_view
            placed[col.name] = dataclasses.replace(
                col, **{f: move(getattr(col, f)) for f in ("values", "offsets", "weight") if getattr(col, f) is not None})
            placement.add(col.name, col.kind, col.nbytes, where)
    return placed, placement
