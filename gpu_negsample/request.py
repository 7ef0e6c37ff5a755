"""Normalising request arguments (tensors, RaggedTensors, ints) into flat int64 arrays."""
from __future__ import annotations

import numpy as np
import torch

from .errors import RequestError
from .ragged import RaggedTensor


def int64_array(x, what: str) -> np.ndarray:
    """A contiguous 1-D int64 numpy array of a tensor / array / list; RequestError on lossy casts."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        a = a.reshape(-1) if a.ndim == 2 and a.shape[1] == 1 else a
    if a.ndim != 1:
        raise RequestError(f"{what} must be 1-D; got shape {tuple(a.shape)}")
    if a.size and a.dtype.kind not in "iu":
        raise RequestError(f"{what} has dtype {a.dtype}; it must hold integers (int64)")
    if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
        raise RequestError(f"{what} value {a.max()} does not fit in int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def ragged_rows(x, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a RaggedTensor, or of a 1-D tensor read as one value per row."""
    if isinstance(x, RaggedTensor):
        return int64_array(x.offsets()[0], f"{what} offsets"), int64_array(x.values(), what)
    values = int64_array(x, what)
    return np.arange(values.shape[0] + 1, dtype=np.int64), values


def sample_counts(counts, n_positives: int) -> np.ndarray:
    """Per-positive counts from an int or a tensor of length 1 or n_positives."""
    if isinstance(counts, (int, np.integer)) and not isinstance(counts, bool):
        arr = np.full(n_positives, int(counts), dtype=np.int64)
    else:
        arr = int64_array(counts, "sample_cnts")
        if arr.shape[0] == 1:
            arr = np.full(n_positives, int(arr[0]), dtype=np.int64)
        elif arr.shape[0] != n_positives:
            raise RequestError(
                f"sample_cnts has {arr.shape[0]} entries for {n_positives} positives; give an int, "
                "one count, or one count per positive"
            )
    negative = np.flatnonzero(arr < 0)
    if negative.size:
        row = int(negative[0])
        raise RequestError(f"sample_cnts[{row}] = {int(arr[row])} is negative; counts must be >= 0")
    return arr


def row_of_position(offsets: np.ndarray, position: int) -> int:
    return int(np.searchsorted(offsets, position, side="right") - 1)
