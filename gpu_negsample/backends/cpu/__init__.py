"""The CPU backend: numba kernels over numpy arrays, results as torch tensors (zero-copy).

Its kernels mirror kernels/*.cu file for file and kernel for kernel: ``cpu/sample.py`` is
the twin of ``sample.cu`` (part_masses, sample_put_back, sample_distinct), ``cpu/lookup.py``
of ``lookup.cu``, ``cpu/combine.py`` of ``combine.cu``, ``cpu/gather.py`` of ``gather.cu``,
``cpu/log_q.py`` of ``log_q.cu``. One exception: a sampling request is one parallel region
on the CPU, not three kernels (each region ends in a barrier both threads must reach, which
costs most on a busy machine): each block of rows of ``sample_put_back`` /
``sample_distinct`` first resolves its categories and excluded ids and computes its part
masses (``part_masses``' work), each step a loop of independent hash probes and loads so
the misses of many rows overlap, then draws. Likewise a pack is two regions, not four
kernels (``gather.py``): ``gather_rows`` (the id lookup, dense and fixed-length columns, the
other columns' lengths) and ``gather_ragged``.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch

from ...arena import default_allocate
from ...columns import DENSE, RAGGED, STRING, Column
from ...index import Index, IndexArrays
from ...ragged import RaggedTensor
from ..common import Placement
from ..exclusion import batch_set, exclusion
from ..protocol import Allocator, Draw, SampleInputs, host_empty
from ..status import Counter
from . import combine as c
from . import gather as g
from . import lookup as lk
from . import sample as s
from .log_q import log_q_rows
from .request import HostRequest


class CpuColumns(dict):
    """A table's columns with the per-table part of the gather's descriptors, built once per
    table as the CUDA backend places its own: the ragged and string columns whose rows all
    have one length L >= 1 (``fixed``: gathered as dense rows of L values), and the others
    (``measured``, with gather.py's MEASURE_* table: where their offsets are), and where
    each column's values and weights are (``address``: a pack needs them for every column,
    and reading an array's address costs microseconds)."""

    def __init__(self, columns: dict):
        super().__init__(columns)
        lengths = {name: g.fixed_row_length(col.offsets) for name, col in columns.items() if col.kind != DENSE}
        self.fixed = {name: int(length) for name, length in lengths.items() if length >= 1}
        self.measured = [name for name in lengths if name not in self.fixed]
        self.address = {(name, field): g.address(getattr(col, field)) for name, col in columns.items()
                        for field in ("values", "weight") if getattr(col, field) is not None}
        self.measure = np.array([(g.address(columns[name].offsets),) for name in self.measured],
                                dtype=np.int64).reshape(-1, g.MEASURE_FIELDS)


class CpuBackend:
    """numba kernels over the table's own numpy arrays; the reference the CUDA backend matches."""

    name = "cpu"
    count_attempts = True  # free here: a per-row sum
    packs_every_array = False  # the kernels read any host array; copying the reader's own gains nothing
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
    def sample(rq: HostRequest, inputs: SampleInputs, alloc: Allocator = host_empty) -> Draw:
        ix, n = inputs.ix, inputs.n_rows
        req_segs = np.empty(inputs.req_cats.shape[0], dtype=np.int64)
        own_rows = np.empty(inputs.own_ids.shape[0], np.int64)  # filled by the draw kernel (row-wise exclusion)
        ex = exclusion(ix, inputs.own_offsets, inputs.own_ids, own_rows, batch_set(inputs.own_ids) if inputs.batch else None)
        remaining = np.empty(2 * req_segs.shape[0], dtype=np.uint64)
        row_total = np.empty(n, dtype=np.uint64)
        out = alloc("negatives", (inputs.n_draws,), np.dtype(np.int64))
        status = np.empty(n, dtype=np.int8)
        draw = s.sample_distinct if inputs.distinct else s.sample_put_back
        # The kernel adds its unknown categories, failed rows and alias draws to rq.counters
        # itself: reading req_segs and status here would fetch every line from the core that wrote it.
        draw(ix, ex, own_rows, inputs.req_offsets, inputs.req_cats, req_segs, remaining, row_total, inputs.out_offsets,
             np.uint64(inputs.call & 0xFFFFFFFF), inputs.key[0], inputs.key[1], np.int64(inputs.fill_id),
             out, status, rq.counters, numba.get_num_threads())
        return Draw(out, req_segs, status)

    @staticmethod
    def valid_ids(rq: HostRequest, ix: IndexArrays, ids: np.ndarray, default_id: int,
                  alloc: Allocator = host_empty) -> np.ndarray:
        out = alloc("valid_ids", ids.shape, np.dtype(np.int64))
        lk.valid_ids(ix.id_slots, ids, np.int64(default_id), out)
        return out

    @staticmethod
    def rows_or_default(rq: HostRequest, ix: IndexArrays, ids: np.ndarray, default_row: int,
                        report_missing: bool) -> np.ndarray:
        out = np.empty(ids.shape[0], dtype=np.int64)
        missing = lk.rows_or_default(ix.id_slots, ids, np.int64(default_row), out)
        if missing and report_missing:
            _count_missing(rq, ix, ids)
        return out

    @staticmethod
    def combine(rq: HostRequest, origin: np.ndarray, sampled_offsets: np.ndarray, uniform_count: int,
                sampled: np.ndarray, alloc: Allocator = host_empty) -> np.ndarray:
        n = origin.shape[0]
        out_offsets = sampled_offsets[:-1] + np.arange(n, dtype=np.int64)
        out = alloc("combined_ids", (sampled.shape[0] + n,), np.dtype(np.int64))
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
        return _gather(columns, rows, alloc)[0]

    @staticmethod
    def gather_ids(rq: HostRequest, ix: IndexArrays, columns: CpuColumns, ids: np.ndarray, default_row: int,
                   report_missing: bool, alloc: Allocator = host_empty) -> dict:
        """gather_table at rows_or_default's rows, the lookup inside the gather's first
        parallel region (one region less, and a row's lines prefetched as soon as it is found)."""
        out, missing = _gather(columns, np.empty(ids.shape[0], np.int64), alloc, ix.id_slots, ids, default_row)
        if missing and report_missing:
            _count_missing(rq, ix, ids)
        return out

    @staticmethod
    def tile_ragged(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, offsets) of the given rows of a ragged array (RecIS combine's tiling)."""
        col = Column("tiled", RAGGED, np.ascontiguousarray(values), np.ascontiguousarray(offsets, dtype=np.int64))
        tiled = CpuBackend.gather_table(None, CpuColumns({"tiled": col}), rows)["tiled"]
        return tiled.values().numpy(), tiled.offsets()[0].numpy()


def _count_missing(rq: HostRequest, ix: IndexArrays, ids: np.ndarray) -> None:
    """Count the ids absent from the table, and the first one's position, into the request."""
    rq.count(Counter.MISSING, Counter.FIRST_MISSING, lk.lookup(ix.id_slots, ids) < 0)


_NO_IDS = np.zeros(0, np.int64)
_NO_SLOTS = np.zeros((0, 2), np.int64)


def _gather(columns: CpuColumns, rows: np.ndarray, alloc: Allocator, slots: np.ndarray = _NO_SLOTS,
            ids: np.ndarray = _NO_IDS, default_row: int = 0) -> tuple[dict, int]:
    """Every column at rows (in column order, as the CUDA backend's) and how many ids were
    absent. Where ids are given, rows is filled with their rows (default_row where absent)
    by the first region. Two parallel regions: gather_rows (lookup, dense and fixed-length
    columns, lengths of the others), then gather_ragged for the others' values."""
    n = rows.shape[0]
    table_rows = next(iter(columns.values())).row_count if columns else 0
    out, dense = {}, []
    for name, col in columns.items():
        if col.kind == DENSE:
            dst = alloc(name, (n,) + col.values.shape[1:], col.values.dtype)
            row_bytes = col.values.itemsize * math.prod(col.values.shape[1:])
            _add_dense(dense, columns.address[name, "values"], dst, row_bytes)
            out[name] = torch.from_numpy(dst)
        elif name in columns.fixed:
            out[name] = _fixed_length_column(dense, columns, name, n, alloc)
    m = len(columns.measured)
    n_blocks = (n + g.BLOCK_ROWS - 1) // g.BLOCK_ROWS
    starts, lengths = np.empty((m, n), np.int64), np.empty((m, n), np.int64)
    block_base = np.empty((m, n_blocks), np.int64)
    totals, longest = np.zeros(m, np.int64), np.zeros(m, np.int64)
    missing = g.gather_rows(slots, ids, np.int64(default_row), rows,
                            np.array(dense, dtype=np.int64).reshape(-1, g.DENSE_FIELDS), columns.measure, table_rows,
                            starts, lengths, block_base, totals, longest)
    if m:
        out.update(_gather_measured(columns, n, starts, lengths, block_base, totals, longest, alloc))
    return {name: out[name] for name in columns}, int(missing)


def _add_dense(dense: list, src: int, dst: np.ndarray, row_bytes: int, out_offsets: np.ndarray | None = None,
               row_values: int = 0) -> None:
    """Append gather_rows' dense descriptor of dst[i] = row rows[i] of the column at address
    src (rows of row_bytes bytes; none for empty rows), with the out offsets i * row_values
    where out_offsets is given."""
    if row_bytes:
        to = g.address(dst)
        word = g.word_bytes(row_bytes, src, to)
        dense.append((src, to, row_bytes // word, word, 0 if out_offsets is None else g.address(out_offsets),
                      row_values))


def _fixed_length_column(dense: list, columns: CpuColumns, name: str, n: int, alloc: Allocator):
    """A ragged or string column whose every row has the same number of values, at n rows:
    its outputs, and the dense descriptors (appended to dense) with which gather_rows fills them."""
    col, length = columns[name], columns.fixed[name]
    if col.kind == STRING:
        fixed = alloc(name, (n,), np.dtype(f"S{length if n else 1}"))  # as wide as the longest row, or 1
        _add_dense(dense, columns.address[name, "values"], fixed, length)
        return fixed
    offsets = alloc(f"{name}.offsets", (n + 1,), np.dtype(np.int64))
    offsets[n] = n * length
    values = alloc(f"{name}.values", (n * length,), col.values.dtype)
    _add_dense(dense, columns.address[name, "values"], values, length * col.values.itemsize, offsets, length)
    weight = None
    if col.weight is not None:
        weight = alloc(f"{name}.weight", (n * length,), col.weight.dtype)
        _add_dense(dense, columns.address[name, "weight"], weight, length * col.weight.itemsize)
    return RaggedTensor._from_parts(torch.from_numpy(values), torch.from_numpy(offsets),
                                    None if weight is None else torch.from_numpy(weight), length)


def _gather_measured(columns: CpuColumns, n: int, starts, lengths, block_base, totals, longest,
                     alloc: Allocator) -> dict:
    """The measured ragged and string columns at n rows, sized by gather_rows: their outputs,
    filled by one gather_ragged."""
    out, copies = {}, []
    for j, name in enumerate(columns.measured):
        col = columns[name]
        if col.kind == STRING:
            width = max(1, int(longest[j]))
            fixed = alloc(name, (n,), np.dtype(f"S{width}"))
            copies.append((columns.address[name, "values"], g.address(fixed), 1, j, width, 0))
            out[name] = fixed
            continue
        offsets = alloc(f"{name}.offsets", (n + 1,), np.dtype(np.int64))
        offsets[n] = totals[j]
        parts = [alloc(f"{name}.values", (int(totals[j]),), col.values.dtype)]
        if col.weight is not None:
            parts.append(alloc(f"{name}.weight", (int(totals[j]),), col.weight.dtype))
        for field, dst in zip(("values", "weight"), parts):
            copies.append((columns.address[name, field], g.address(dst), dst.itemsize, j, 0,
                           g.address(offsets) if dst is parts[0] else 0))
        out[name] = RaggedTensor._from_parts(torch.from_numpy(parts[0]), torch.from_numpy(offsets),
                                             torch.from_numpy(parts[1]) if len(parts) > 1 else None)
    if n:
        g.gather_ragged(np.array(copies, dtype=np.int64), starts, lengths, block_base, totals)
    return out
