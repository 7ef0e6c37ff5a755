"""pack_feature on a device: every column of a table at a request's rows, in a fixed chain.

    ragged_lengths   every ragged and string column, one launch (descriptors placed at reload)
    cumsum           the ragged columns' offsets, one scan over a (columns, rows + 1) array
    (one wait)       the totals and the string widths, read together: they size the outputs
    gather_dense     every dense column, one launch (descriptors of this request, one upload)
    gather_ragged    every ragged, weight and string column, one launch

Strings are gathered to fixed width on the device and downloaded in the request's final wait
into the host arrays ``alloc`` gives.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ...columns import DENSE, RAGGED, STRING
from ...ragged import RaggedTensor
from ..protocol import Allocator
from .kernel_views import view_words

@dataclasses.dataclass
class TableKernels:
    """The per-table part of a pack request's descriptors: which columns are measured, and
    their RaggedColumn descriptors for ragged_lengths, on the device."""

    measured: list          # names of the ragged and string columns, in descriptor order
    measure_view: torch.Tensor | None


def table_kernels(device, columns: dict) -> TableKernels:
    """Placed once per table (inside the device's active())."""
    measured = [name for name, col in columns.items() if col.kind in (RAGGED, STRING)]
    if not measured:
        return TableKernels([], None)
    words = np.concatenate([view_words("RaggedColumn", _ragged_fields(columns[name].values, columns[name].offsets,
                                                                      -1 if columns[name].kind == STRING else 0))
                            for name in measured])
    return TableKernels(measured, device.upload(words))


def _ragged_fields(values, offsets, width, out=None, out_offsets=None) -> dict:
    return {"values": values, "offsets": offsets, "out": out, "out_offsets": out_offsets,
            "value_bytes": values.element_size(), "width": width}


def _word_bytes(t: torch.Tensor, row_bytes: int) -> int:
    """The widest word (16, 8, 4, 2 or 1 bytes) that divides a row and the column's alignment."""
    return next(w for w in (16, 8, 4, 2, 1) if row_bytes % w == 0 and t.data_ptr() % w == 0)


def gather_table(device, rq, columns: dict, kernels: TableKernels, rows: torch.Tensor, alloc: Allocator) -> dict:
    n = int(rows.shape[0])
    widths = totals = {}
    lengths = None
    if kernels.measured:
        n_measured = len(kernels.measured)
        # ragged_lengths writes a column's leading 0 from the thread of its row 0; with no
        # rows there is none, and the offsets would be whatever the memory held.
        lengths = rq.empty((n_measured, n + 1), torch.int64) if n else rq.zeros((n_measured, 1), torch.int64)
        max_length = rq.zeros((n_measured,), torch.int64)
        device.launch("ragged_lengths", n_measured * n, kernels.measure_view, n_measured, rows, n, lengths,
                      max_length)
        device.cumsum(lengths, lengths)
        ends, longest = device.fetch([lengths[:, n], max_length])
        totals = dict(zip(kernels.measured, ends.tolist()))
        widths = dict(zip(kernels.measured, longest.tolist()))
    out, dense_words, ragged_words, n_dense_words = {}, [], [], 0
    for name, col in columns.items():
        if col.kind == DENSE:
            row_bytes = col.values.element_size() * math.prod(col.values.shape[1:])
            dst = rq.empty((n,) + tuple(col.values.shape[1:]), col.values.dtype)
            word = _word_bytes(col.values, row_bytes) if row_bytes else 1
            if row_bytes:
                dense_words.append(view_words("DenseColumn", {"src": col.values, "dst": dst, "row_words": row_bytes // word,
                                                              "word_bytes": word, "first_word": n_dense_words}))
                n_dense_words += n * (row_bytes // word)
            out[name] = dst
        elif col.kind == RAGGED:
            offsets = lengths[kernels.measured.index(name)]
            values = rq.empty((totals[name],), col.values.dtype)
            ragged_words.append(view_words("RaggedColumn", _ragged_fields(col.values, col.offsets, 0, values, offsets)))
            weight = None
            if col.weight is not None:
                weight = rq.empty((totals[name],), col.weight.dtype)
                ragged_words.append(view_words("RaggedColumn", _ragged_fields(col.weight, col.offsets, 0, weight,
                                                                              offsets)))
            out[name] = RaggedTensor._from_parts(values, offsets, weight)
        else:
            width = max(1, widths[name])
            fixed = rq.empty((n, width), torch.uint8)
            ragged_words.append(view_words("RaggedColumn", _ragged_fields(col.values, col.offsets, width, fixed)))
            host = alloc(name, (n,), np.dtype(f"S{width}"))
            rq.download_at_finish(fixed, host)
            out[name] = host
    if dense_words or ragged_words:
        staged = rq.inputs(dense=np.concatenate(dense_words or [np.zeros(0, np.uint64)]),
                           ragged=np.concatenate(ragged_words or [np.zeros(0, np.uint64)]))
        if dense_words:
            device.launch("gather_dense", n_dense_words, staged["dense"], len(dense_words), rows, n, n_dense_words)
        if ragged_words:
            device.launch("gather_ragged", len(ragged_words) * n * 32, staged["ragged"], len(ragged_words), rows, n)
    return out
