"""The CPU backend: numba kernels over numpy arrays, results as torch tensors (zero-copy).

Its kernels mirror kernels/*.cu file for file and kernel for kernel: ``cpu/sample.py`` is
the twin of ``sample.cu`` (part_masses, sample_put_back, sample_distinct), ``cpu/lookup.py``
of ``lookup.cu``, ``cpu/combine.py`` of ``combine.cu``, ``cpu/gather.py`` of ``gather.cu``.
"""
from __future__ import annotations

import numpy as np
import torch

from ...arena import default_allocate
from ...columns import Column
from ...index import Index, IndexArrays
from ..common import Placement, SampleOutput
from ..exclusion import exclusion
from ..log_q import log_q_rows
from . import combine as c
from . import gather as g
from . import lookup as lk
from . import sample as s


def _word_view(a: np.ndarray) -> np.ndarray:
    """2-D view of a row-major array as the widest unsigned word that divides a row."""
    rows = a.shape[0]
    flat = a.reshape(rows, -1)
    row_bytes = flat.shape[1] * a.itemsize
    for size in (8, 4, 2, 1):
        if row_bytes % size == 0:
            return flat.view(np.dtype(f"u{size}")).reshape(rows, row_bytes // size)
    raise AssertionError("unreachable: 1 divides every row")


class CpuBackend:
    """numba kernels over the table's own numpy arrays; the reference the CUDA backend matches."""

    name = "cpu"
    allocate_host = staticmethod(default_allocate)

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
    def valid_ids(ix: IndexArrays, ids: np.ndarray, default_id: int) -> np.ndarray:
        out = np.empty_like(ids)
        lk.valid_ids(ix.id_slots, ids, np.int64(default_id), out)
        return out

    @staticmethod
    def rows_or_default(ix: IndexArrays, ids: np.ndarray, default_row: int) -> tuple[np.ndarray, int]:
        out = np.empty(ids.shape[0], dtype=np.int64)
        missing = lk.rows_or_default(ix.id_slots, ids, np.int64(default_row), out)
        return out, int(missing)

    @staticmethod
    def combine(origin: np.ndarray, counts: np.ndarray, sampled: np.ndarray) -> np.ndarray:
        sampled_offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=sampled_offsets[1:])
        out_offsets = sampled_offsets[:-1] + np.arange(counts.shape[0], dtype=np.int64)
        out = np.empty(sampled.shape[0] + origin.shape[0], dtype=np.result_type(origin, sampled))
        c.combine_with_counts(origin, out_offsets, sampled, sampled_offsets, out)
        return out

    @staticmethod
    def sample(ix: IndexArrays, req_offsets, req_segs, counts, own_offsets, own_ids,
               batch, distinct: bool, call: int, key: tuple, fill_id: int) -> SampleOutput:
        n = counts.shape[0]
        out_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=out_offsets[1:])
        out = np.empty(int(out_offsets[-1]), dtype=np.int64)
        status = np.empty(n, dtype=np.int8)
        attempts = np.empty(n, dtype=np.int64)
        own_rows = np.full(own_ids.shape[0], -1, np.int64)
        if batch is None:
            lk.lookup_rows(ix.id_slots, own_ids, own_rows)
        ex = exclusion(ix, own_offsets, own_ids, own_rows, batch)
        remaining = np.empty(2 * req_segs.shape[0], dtype=np.uint64)
        row_total = np.empty(n, dtype=np.uint64)
        s.part_masses(ix, ex, req_offsets, req_segs, remaining, row_total)
        draw = s.sample_distinct if distinct else s.sample_put_back
        draw(ix, ex, req_offsets, req_segs, remaining, row_total, out_offsets,
             np.uint64(call & 0xFFFFFFFF), key[0], key[1], np.int64(fill_id), out, status, attempts)
        return SampleOutput.from_status(out, status, int(attempts.sum()))

    @staticmethod
    def log_q(ix: IndexArrays, req_offsets, req_segs, item_offsets, item_ids) -> np.ndarray:
        out = np.empty(item_ids.shape[0], dtype=np.float64)
        log_q_rows(ix, req_offsets, req_segs, item_offsets, item_ids, out)
        return out

    @staticmethod
    def gather_dense(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        words = _word_view(values)
        out = np.empty((rows.shape[0], words.shape[1]), dtype=words.dtype)
        g.gather_words(words, rows, out)
        return out.view(values.dtype).reshape((rows.shape[0],) + values.shape[1:])

    @staticmethod
    def gather_ragged(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out_offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        g.gather_lengths(offsets, rows, out_offsets)
        np.cumsum(out_offsets, out=out_offsets)
        words = values.view(np.dtype(f"u{values.itemsize}"))
        out = np.empty(int(out_offsets[-1]), dtype=words.dtype)
        g.gather_ragged(words, offsets, rows, out_offsets, out)
        return out.view(values.dtype), out_offsets

    @classmethod
    def gather_strings(cls, col: Column, rows: np.ndarray) -> np.ndarray:
        data, offsets = cls.gather_ragged(col.values, col.offsets, rows)
        width = max(1, int(np.diff(offsets).max(initial=0)))
        fixed = np.zeros((rows.shape[0], width), dtype=np.uint8)
        g.strings_to_fixed_width(data, offsets, fixed)
        return fixed.view(np.dtype(f"S{width}")).reshape(rows.shape[0])
