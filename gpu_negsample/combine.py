"""RecIS's ``combine``: joining packed positive+negative features with the positive batch.

A positive batch is a list of dicts. ``batch[0]`` holds the item-level columns (one row
per positive), optionally ``_sample_group_id``; each later dict holds the columns of a
coarser level (e.g. users) plus an ``_indicator*`` tensor that maps item rows to its rows.
After sampling every positive row becomes ``count + 1`` rows (the positive, then its
negatives), so ``_sample_group_id`` and the indicators are tiled by ``count + 1``.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import RequestError
from .ragged import RaggedTensor

GROUP_ID = "_sample_group_id"
INDICATOR_PREFIX = "_indicator"


def repeats_of(sample_counts, n_rows: int) -> torch.Tensor:
    """count + 1 per positive, as an int64 tensor of length n_rows."""
    if isinstance(sample_counts, (int, np.integer)):
        return torch.full((n_rows,), int(sample_counts) + 1, dtype=torch.int64)
    counts = torch.as_tensor(sample_counts).reshape(-1).to(torch.int64)
    if counts.numel() == 1:
        return torch.full((n_rows,), int(counts[0]) + 1, dtype=torch.int64)
    if counts.numel() != n_rows:
        raise RequestError(f"sample_counts has {counts.numel()} entries but the column has {n_rows} rows")
    return counts + 1


def tile_rows(value, repeats: torch.Tensor, gather_ragged):
    """Each row of a tensor / RaggedTensor / numpy array repeated repeats[i] times."""
    if isinstance(value, torch.Tensor):
        return torch.repeat_interleave(value, repeats.to(value.device), dim=0)
    if isinstance(value, RaggedTensor):
        rows = np.repeat(np.arange(value.row_count, dtype=np.int64), repeats.numpy())
        offsets = value.offsets()[0].numpy()
        values, new_offsets = gather_ragged(value.values().numpy(), offsets, rows)
        weight = value.weight()
        if weight is not None:
            weight = torch.from_numpy(gather_ragged(weight.numpy(), offsets, rows)[0])
        return RaggedTensor(torch.from_numpy(values), torch.from_numpy(new_offsets), weight)
    if isinstance(value, np.ndarray):
        return np.repeat(value, repeats.numpy(), axis=0)
    raise RequestError(f"cannot tile a {type(value).__name__}; columns must be tensors, RaggedTensors or numpy arrays")


def row_count(value) -> int:
    return value.row_count if isinstance(value, RaggedTensor) else len(value)


def combine(batch, output_sample_table: dict, sample_counts, gather_ragged,
            keep_positive_columns: bool = False, label_column: str | None = None) -> list[dict]:
    """RecIS semantics, plus an opt-in tiling of the positive batch's own columns.

    Returns ``[table, *batch[1:]]``: ``table`` is ``output_sample_table`` (not modified)
    with ``_sample_group_id`` tiled in when ``batch[0]`` has one; each later dict is a copy
    with its ``_indicator*`` tensors tiled. Options:

    * ``keep_positive_columns``: every other column of ``batch[0]`` that the negative
      table does not provide (user / context features) is tiled by count + 1 into
      ``table``, so each negative row carries its positive's context;
    * ``label_column``: adds a float32 column, 1.0 on positive rows and 0.0 on negatives.
    """
    if not isinstance(batch, (list, tuple)) or not batch or not all(isinstance(d, dict) for d in batch):
        raise RequestError("combine: batch must be a non-empty list of dicts (RecIS's batch layout)")
    first = batch[0]
    n = _positive_rows(first, output_sample_table, sample_counts)
    repeats = repeats_of(sample_counts, n)
    table = dict(output_sample_table)
    for name, value in first.items():
        if name == GROUP_ID or name.startswith(INDICATOR_PREFIX):
            table[name] = tile_rows(_indicator(name, value), repeats, gather_ragged)
        elif keep_positive_columns and name not in output_sample_table:
            table[name] = tile_rows(value, repeats, gather_ragged)
    if label_column is not None:
        starts = torch.cumsum(repeats, 0) - repeats
        labels = torch.zeros(int(repeats.sum()), dtype=torch.float32)
        labels[starts] = 1.0
        table[label_column] = labels
    rest = []
    for level in batch[1:]:
        level = dict(level)
        for name, value in level.items():
            if name.startswith(INDICATOR_PREFIX):
                level[name] = tile_rows(_indicator(name, value), repeats, gather_ragged)
        rest.append(level)
    return [table, *rest]


def _indicator(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise RequestError(f"combine: {name!r} must be a torch tensor; got {type(value).__name__}")
    return value


def _positive_rows(first: dict, table: dict, sample_counts) -> int:
    """Number of positives, checked against the packed table's row count."""
    total = None
    for value in table.values():
        total = row_count(value)
        break
    n = None
    for name, value in first.items():
        if name != GROUP_ID and not name.startswith(INDICATOR_PREFIX):
            n = row_count(value)
            break
    if n is None:
        for name, value in first.items():
            n = row_count(value)
            break
    if n is None:
        raise RequestError("combine: batch[0] has no columns, so the number of positives is unknown")
    expected = int(repeats_of(sample_counts, n).sum())
    if total is not None and total != expected:
        raise RequestError(
            f"combine: the packed table has {total} rows but batch[0] has {n} positives and sample_counts give "
            f"{expected} rows (positives + negatives); pass the table pack_feature returned for this batch"
        )
    return n
