"""The CPU backend: numba kernels over numpy arrays, results as torch tensors (zero-copy).

Its kernels mirror kernels/*.cu file for file and kernel for kernel: ``cpu/sample.py`` is
the twin of ``sample.cu`` (part_masses, sample_put_back, sample_distinct), ``cpu/lookup.py``
of ``lookup.cu``, ``cpu/combine.py`` of ``combine.cu``, ``cpu/gather.py`` of ``gather.cu``,
``cpu/log_q.py`` of ``log_q.cu``. One exception: a sampling request is one parallel region
on the CPU, not three kernels (each region ends in a barrier both threads must reach, which
costs most on a busy machine): each block of rows of ``sample_put_back`` /
``sample_distinct`` first resolves its categories and excluded ids and computes its part
masses (``part_masses``' work), each step a loop of independent hash probes and loads so
the misses of many rows overlap, then draws.
"""
from __future__ import annotations

import numpy as np
import torch

from ...arena import default_allocate
from ...columns import DENSE, RAGGED
from ...index import Index, IndexArrays
from ...ragged import RaggedTensor
from ..common import Placement
from ..exclusion import batch_set, exclusion
from ..kernel_constants import STATUS_OK
from ..protocol import Allocator, Draw, SampleInputs, host_empty
from ..status import Counter
from . import combine as c
from . import gather as g
from . import lookup as lk
from . import sample as s
from .log_q import log_q_rows
from .request import HostRequest


def _word_view(a: np.ndarray) -> np.ndarray:
    """2-D view of a contiguous row-major array as the widest unsigned word that divides a row."""
    row_bytes = a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
    size = next(w for w in (8, 4, 2, 1) if row_bytes % w == 0)
    return a.reshape(-1).view(np.uint8).view(np.dtype(f"u{size}")).reshape(a.shape[0], row_bytes // size)


class CpuBackend:
    """numba kernels over the table's own numpy arrays; the reference the CUDA backend matches."""

    name = "cpu"
    count_attempts = True  # free here: a per-row sum
    allocate_host = staticmethod(default_allocate)
    request = HostRequest

    @staticmethod
    def keeps_device_tensors(t: torch.Tensor) -> bool:
        return False

    @staticmethod
    def place_index(index: Index) -> IndexArrays:
        return index.arrays

    @staticmethod
    def place_table(table) -> tuple[dict, Placement]:
        placement = Placement("cpu")
        for col in table.columns.values():
            placement.add(col.name, col.kind, col.nbytes, "host")
        return table.columns, placement

    @staticmethod
    def to_torch(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a))

    @staticmethod
    def to_host(a) -> np.ndarray:
        return np.asarray(a)

    @staticmethod
    def sample(rq: HostRequest, inputs: SampleInputs) -> Draw:
        ix, n = inputs.ix, inputs.n_rows
        req_segs = np.empty(inputs.req_cats.shape[0], dtype=np.int64)
        own_rows = np.empty(inputs.own_ids.shape[0], np.int64)  # filled by the draw kernel (row-wise exclusion)
        ex = exclusion(ix, inputs.own_offsets, inputs.own_ids, own_rows, batch_set(inputs.own_ids) if inputs.batch else None)
        remaining = np.empty(2 * req_segs.shape[0], dtype=np.uint64)
        row_total = np.empty(n, dtype=np.uint64)
        out = np.empty(inputs.n_draws, dtype=np.int64)
        status = np.empty(n, dtype=np.int8)
        attempts = np.empty(n, dtype=np.int64)
        draw = s.sample_distinct if inputs.distinct else s.sample_put_back
        draw(ix, ex, own_rows, inputs.req_offsets, inputs.req_cats, req_segs, remaining, row_total, inputs.out_offsets,
             np.uint64(inputs.call & 0xFFFFFFFF), inputs.key[0], inputs.key[1], np.int64(inputs.fill_id),
             out, status, attempts)
        rq.count(Counter.UNKNOWN, Counter.FIRST_UNKNOWN, req_segs < 0)
        rq.count(Counter.FAILED, Counter.FIRST_FAILED, status != STATUS_OK)
        rq.counters[Counter.ATTEMPTS] += np.uint64(attempts.sum())
        return Draw(out, req_segs, status)

    @staticmethod
    def valid_ids(rq: HostRequest, ix: IndexArrays, ids: np.ndarray, default_id: int) -> np.ndarray:
        out = np.empty_like(ids)
        lk.valid_ids(ix.id_slots, ids, np.int64(default_id), out)
        return out

    @staticmethod
    def rows_or_default(rq: HostRequest, ix: IndexArrays, ids: np.ndarray, default_row: int,
                        report_missing: bool) -> np.ndarray:
        out = np.empty(ids.shape[0], dtype=np.int64)
        missing = lk.rows_or_default(ix.id_slots, ids, np.int64(default_row), out)
        if missing and report_missing:
            found = lk.lookup(ix.id_slots, ids)
            rq.count(Counter.MISSING, Counter.FIRST_MISSING, found < 0)
        return out

    @staticmethod
    def combine(rq: HostRequest, origin: np.ndarray, sampled_offsets: np.ndarray, uniform_count: int,
                sampled: np.ndarray) -> np.ndarray:
        n = origin.shape[0]
        out_offsets = sampled_offsets[:-1] + np.arange(n, dtype=np.int64)
        out = np.empty(sampled.shape[0] + n, dtype=np.int64)
        c.combine_with_counts(origin, out_offsets, sampled, sampled_offsets, out)
        return out

    @staticmethod
    def log_q(rq: HostRequest, ix: IndexArrays, req_offsets, req_segs, sampled_offsets, uniform_count: int,
              ids) -> np.ndarray:
        item_offsets = sampled_offsets + np.arange(sampled_offsets.shape[0], dtype=np.int64)
        out = np.empty(ids.shape[0], dtype=np.float32)
        log_q_rows(ix, req_offsets, req_segs, item_offsets, ids, out)
        return out

    @classmethod
    def gather_table(cls, rq: HostRequest, columns: dict, rows: np.ndarray, alloc: Allocator = host_empty) -> dict:
        n = rows.shape[0]
        out = {}
        for name, col in columns.items():
            if col.kind == DENSE:
                dst = alloc(name, (n,) + col.values.shape[1:], col.values.dtype)
                g.gather_words(_word_view(col.values), rows, _word_view(dst))
                out[name] = torch.from_numpy(dst)
            elif col.kind == RAGGED:
                offsets = alloc(f"{name}.offsets", (n + 1,), np.dtype(np.int64))
                starts = cls.ragged_rows(col.offsets, rows, offsets)
                values = cls.copy_ragged(col.values, starts, offsets,
                                         lambda total, c=col, m=name: alloc(f"{m}.values", (total,), c.values.dtype))
                weight = None if col.weight is None else cls.copy_ragged(
                    col.weight, starts, offsets,
                    lambda total, c=col, m=name: alloc(f"{m}.weight", (total,), c.weight.dtype))
                out[name] = RaggedTensor._from_parts(torch.from_numpy(values), torch.from_numpy(offsets),
                                                     None if weight is None else torch.from_numpy(weight))
            else:
                offsets = np.empty(n + 1, dtype=np.int64)
                starts = cls.ragged_rows(col.offsets, rows, offsets)
                width = max(1, int(np.diff(offsets).max(initial=0)))
                fixed = alloc(name, (n,), np.dtype(f"S{width}"))
                g.gather_fixed_width(col.values, starts, offsets, fixed.view(np.uint8).reshape(n, width))
                out[name] = fixed
        return out

    @staticmethod
    def ragged_rows(offsets: np.ndarray, rows: np.ndarray, out_offsets: np.ndarray) -> np.ndarray:
        """Fill out_offsets (n + 1) with the offsets of the given rows of a ragged column; return
        where each row starts in the column's values (its offsets are read here only)."""
        starts = np.empty(rows.shape[0], dtype=np.int64)
        out_offsets[0] = 0
        g.gather_lengths(offsets, rows, out_offsets, starts)
        np.cumsum(out_offsets, out=out_offsets)
        return starts

    @staticmethod
    def copy_ragged(values: np.ndarray, starts: np.ndarray, out_offsets: np.ndarray, allocate_values) -> np.ndarray:
        """The rows' values (laid out by ragged_rows) into allocate_values(total)."""
        words = values.view(np.dtype(f"u{values.itemsize}"))
        out = allocate_values(int(out_offsets[-1]))
        g.gather_ragged(words, starts, out_offsets, out.view(words.dtype))
        return out

    @classmethod
    def tile_ragged(cls, values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, offsets) of the given rows of a ragged array (RecIS combine's tiling)."""
        out_offsets = np.empty(rows.shape[0] + 1, dtype=np.int64)
        starts = cls.ragged_rows(offsets, rows, out_offsets)
        return cls.copy_ragged(values, starts, out_offsets, lambda total: np.empty(total, values.dtype)), out_offsets
