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

import numba
import numpy as np
import torch

from ...arena import default_allocate
from ...columns import DENSE, RAGGED, STRING, Column
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


class CpuColumns(dict):
    """A table's columns with the per-table half of the ragged descriptors (gather.py's
    MEASURE_* table: where each ragged or string column's offsets are, and the one length
    all its rows have, or -1), built once per table as the CUDA backend places its own."""

    def __init__(self, columns: dict):
        super().__init__(columns)
        self.measured = [name for name, col in columns.items() if col.kind != DENSE]
        self.measure = np.array([(g.address(columns[name].offsets), g.fixed_row_length(columns[name].offsets))
                                 for name in self.measured], dtype=np.int64).reshape(-1, g.MEASURE_FIELDS)


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
    def place_table(table) -> tuple[CpuColumns, Placement]:
        placement = Placement("cpu")
        for col in table.columns.values():
            placement.add(col.name, col.kind, col.nbytes, "host")
        return CpuColumns(table.columns), placement

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
             out, status, attempts, numba.get_num_threads())
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

    @staticmethod
    def gather_table(rq: HostRequest, columns: CpuColumns, rows: np.ndarray, alloc: Allocator = host_empty) -> dict:
        n = rows.shape[0]
        table_rows = next(iter(columns.values())).row_count if columns else 0
        out, dense = {}, []
        for name, col in columns.items():
            if col.kind == DENSE:
                dst = alloc(name, (n,) + col.values.shape[1:], col.values.dtype)
                row_bytes = col.values.itemsize * int(np.prod(col.values.shape[1:], dtype=np.int64))
                if row_bytes:
                    word = g.word_bytes(row_bytes, col.values, dst)
                    dense.append((g.address(col.values), g.address(dst), row_bytes // word, word))
                out[name] = torch.from_numpy(dst)
        if dense and n:
            g.gather_dense(np.array(dense, dtype=np.int64), rows, table_rows)
        if columns.measured:
            out.update(_gather_ragged_columns(columns, rows, table_rows, alloc))
        return out

    @staticmethod
    def tile_ragged(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, offsets) of the given rows of a ragged array (RecIS combine's tiling)."""
        col = Column("tiled", RAGGED, np.ascontiguousarray(values), np.ascontiguousarray(offsets, dtype=np.int64))
        tiled = _gather_ragged_columns(CpuColumns({"tiled": col}), rows, offsets.shape[0] - 1, host_empty)["tiled"]
        return tiled.values().numpy(), tiled.offsets()[0].numpy()


def _gather_ragged_columns(columns: CpuColumns, rows: np.ndarray, table_rows: int, alloc: Allocator) -> dict:
    """The ragged and string columns at rows: one ragged_lengths and one gather_ragged for all."""
    n = rows.shape[0]
    n_blocks = (n + g.BLOCK_ROWS - 1) // g.BLOCK_ROWS
    m = len(columns.measured)
    starts, lengths = np.empty((m, n), np.int64), np.empty((m, n), np.int64)
    block_base = np.empty((m, n_blocks), np.int64)
    totals, longest = np.zeros(m, np.int64), np.zeros(m, np.int64)
    g.ragged_lengths(columns.measure, rows, table_rows, starts, lengths, block_base, totals, longest)
    out, copies = {}, []
    for j, name in enumerate(columns.measured):
        col = columns[name]
        if col.kind == STRING:
            width = max(1, int(longest[j]))
            fixed = alloc(name, (n,), np.dtype(f"S{width}"))
            copies.append((g.address(col.values), g.address(fixed), 1, j, width, 0))
            out[name] = fixed
            continue
        offsets = alloc(f"{name}.offsets", (n + 1,), np.dtype(np.int64))
        offsets[n] = totals[j]
        parts = [alloc(f"{name}.values", (int(totals[j]),), col.values.dtype)]
        if col.weight is not None:
            parts.append(alloc(f"{name}.weight", (int(totals[j]),), col.weight.dtype))
        for src, dst in zip((col.values, col.weight), parts):
            copies.append((g.address(src), g.address(dst), src.itemsize, j, 0,
                           g.address(offsets) if dst is parts[0] else 0))
        out[name] = RaggedTensor._from_parts(torch.from_numpy(parts[0]), torch.from_numpy(offsets),
                                             torch.from_numpy(parts[1]) if len(parts) > 1 else None)
    if n:
        g.gather_ragged(np.array(copies, dtype=np.int64), starts, lengths, block_base, totals)
    return out
