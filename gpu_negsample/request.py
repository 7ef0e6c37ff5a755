"""Normalising request arguments (tensors, RaggedTensors, ints) into flat int64 arrays."""
from __future__ import annotations

import numba as nb
import numpy as np
import torch

from .errors import RequestError
from .ragged import RaggedTensor, check_offsets


def listed_array(x, what: str) -> np.ndarray:
    """np.asarray(x) of a value given for ``what``; RequestError (not numpy's ValueError) when x
    is a nested list whose rows differ in length."""
    try:
        return np.asarray(x)
    except ValueError as e:
        raise RequestError(f"{what} cannot be read as an array ({e}); give a flat list, a tensor or an array of "
                           "int64 ids, or a RaggedTensor for rows of several ids") from None


def int64_array(x, what: str) -> np.ndarray:
    """A contiguous 1-D int64 numpy array of ids: a tensor, numpy array or list of integers
    (any integer dtype; one id per entry; an (n, 1) column counts as n ids), or a
    RaggedTensor, whose values are taken (one id per value). RequestError on anything else."""
    if isinstance(x, RaggedTensor):
        x = x.values()
    if isinstance(x, torch.Tensor):
        x = x.numpy(force=True)  # detach().cpu().numpy() in one call; a CPU tensor's memory is shared
    a = listed_array(x, what)
    if a.dtype == np.int64 and a.ndim == 1 and a.flags.c_contiguous:
        return a  # already what the checks below would make of it
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        a = a.reshape(-1) if a.ndim == 2 and a.shape[1] == 1 else a
    if a.ndim != 1:
        raise RequestError(f"{what} must be 1-D; got shape {tuple(a.shape)}")
    if a.size and a.dtype.kind not in "iu":
        raise RequestError(f"{what} has dtype {a.dtype}; it must hold integer ids (int64), e.g. "
                           "torch.tensor([...], dtype=torch.int64)")
    if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
        raise RequestError(f"{what} value {a.max()} does not fit in int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def _never(t: torch.Tensor) -> bool:
    return False


def id_values(x, what: str, keep=_never) -> np.ndarray | torch.Tensor:
    """The ids of x as ``int64_array`` reads them; a device tensor the backend uses where it
    is (``keep(tensor)``) is returned as it is, after the same checks of shape and dtype."""
    if isinstance(x, RaggedTensor):
        x = x.values()
    if isinstance(x, torch.Tensor) and x.device.type != "cpu" and keep(x):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise RequestError(f"{what} has dtype {x.dtype}; it must hold integer ids (int64)")
        if x.dim() == 2 and x.shape[1] == 1 or x.dim() == 0:
            x = x.reshape(-1)
        if x.dim() != 1:
            raise RequestError(f"{what} must be 1-D; got shape {tuple(x.shape)}")
        return x
    return int64_array(x, what)


def ragged_rows(x, what: str, keep=_never) -> tuple[np.ndarray, np.ndarray | torch.Tensor]:
    """(offsets, values) of a RaggedTensor, or of a 1-D tensor read as one value per row.
    Offsets are read on the host (they size the outputs); values may stay on the device."""
    if isinstance(x, RaggedTensor):
        offsets = int64_array(x.offsets()[0], f"{what} offsets")
        values = id_values(x.values(), what, keep)
        try:
            check_offsets(offsets, values.shape[0])
        except ValueError as e:
            raise RequestError(f"{what}: {e}") from None
        return offsets, values
    values = id_values(x, what, keep)
    return np.arange(values.shape[0] + 1, dtype=np.int64), values


@nb.njit(cache=True, nogil=True)
def row_plan(cat_offsets, counts, one_category, out_offsets):
    """One pass over a request's rows: out_offsets = 0 then the running sum of counts; the
    first row that asks for negatives with no category (or, when one_category, with other
    than one), -1 if none; and the count every row asks for (0: they differ, or there are
    no rows, or it is 0)."""
    bad = -1
    uniform = counts[0] if counts.shape[0] else 0
    total = 0
    out_offsets[0] = 0
    for i in range(counts.shape[0]):
        c = counts[i]
        per_row = cat_offsets[i + 1] - cat_offsets[i]
        if bad < 0 and c > 0 and (per_row == 0 or (one_category and per_row != 1)):
            bad = i
        if c != uniform:
            uniform = 0
        total += c
        out_offsets[i + 1] = total
    return bad, max(uniform, 0)


def int64_scalar(value, what: str) -> int:
    """An int64 scalar argument (e.g. default_value), refused clearly when it is not one."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RequestError(f"{what} must be an int64 id; got {value!r} ({type(value).__name__})")
    if not -(1 << 63) <= int(value) < (1 << 63):
        raise RequestError(f"{what} = {value} does not fit in int64")
    return int(value)


def sample_counts(counts, n_positives: int, max_total: int) -> np.ndarray:
    """Per-positive counts from an int or a tensor of length 1 or n_positives; each >= 0
    and their sum at most max_total (checked before anything is allocated for them)."""
    if isinstance(counts, (int, np.integer)) and not isinstance(counts, bool):
        if not 0 <= int(counts) <= max_total:
            raise RequestError(f"sample_cnts = {int(counts)} must be between 0 and the request maximum {max_total:,} "
                               "(max_negatives)")
        arr = np.full(n_positives, int(counts), dtype=np.int64)
        if int(counts) * n_positives <= max_total:  # the checks below hold: no pass over the array
            return arr
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
    # The float sum cannot overflow; only when it is in range is the exact int64 sum taken.
    big = np.flatnonzero(arr > max_total)
    total = None if big.size or float(arr.sum(dtype=np.float64)) > 2.0 * max_total else int(arr.sum())
    if big.size or total is None or total > max_total:
        where = (f"sample_cnts[{int(big[0])}] = {int(arr[big[0]])}" if big.size else
                 f"sample_cnts add up to {total if total is not None else float(arr.sum(dtype=np.float64)):,.0f}")
        raise RequestError(f"{where}: a request may ask for at most {max_total:,} negatives (max_negatives); "
                           "split the batch or raise max_negatives")
    return arr


def row_of_position(offsets: np.ndarray, position: int) -> int:
    return int(np.searchsorted(offsets, position, side="right") - 1)
