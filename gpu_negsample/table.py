"""The loaded negative table: validated columns in one arena plus the sampling columns."""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from .arena import Arena, default_allocate
from .columns import DENSE, RAGGED, STRING, Column, first_row_off_one, row_length_summary
from .errors import TableError
from .hashing import EMPTY_KEY


@dataclass
class SamplingColumns:
    """What the index is built from, one entry per (item, category) pair in CSR form."""

    ids: np.ndarray          # int64, one per row
    cat_offsets: np.ndarray  # int64, rows + 1
    categories: np.ndarray   # int64, the category values of every row
    weights: np.ndarray      # float64, aligned with categories (after the distortion exponent)


class Table:
    """Feature columns (packed into one ``Arena``) and the validated sampling columns."""

    def __init__(self, columns: dict[str, Column], sampling: SamplingColumns, arena: Arena):
        self.arena = arena
        self.columns = columns
        self.sampling = sampling
        self.row_count = sampling.ids.shape[0]

    def describe(self) -> str:
        kinds = {k: sum(1 for c in self.columns.values() if c.kind == k) for k in (DENSE, RAGGED, STRING)}
        return (
            f"{self.row_count:,} rows, {len(self.columns)} columns "
            f"({kinds[DENSE]} dense, {kinds[RAGGED]} ragged, {kinds[STRING]} string), "
            f"{self.arena.nbytes / 2**20:,.1f} MiB arena"
        )


def pack_columns(columns: dict[str, Column], allocate=default_allocate, keep_owned: bool = False) -> Arena:
    """Copy the columns' arrays into one ``Arena`` and point the columns at its views; with
    ``keep_owned``, the arrays of owned columns (made by the reader) stay where they are."""
    slots = [(col, field) for col in columns.values() if not (keep_owned and col.owned)
             for field in ("values", "offsets", "weight") if getattr(col, field) is not None]
    arena = Arena([getattr(col, field) for col, field in slots], allocate)
    for (col, field), view in zip(slots, arena.views):
        setattr(col, field, view)
    return arena


def build_table(columns: dict[str, Column], sample_tag: str, dedup_tag: str, weight_tag: str,
                skey_name: str | None, weight_exponent: float = 1.0, allocate=default_allocate,
                keep_owned: bool = False) -> Table:
    """Validate the columns and extract the sampling columns; raises TableError naming the problem.
    ``allocate`` provides the arena's memory (pinned host memory for the CUDA backend);
    ``keep_owned`` leaves owned columns' arrays out of it (see ``pack_columns``).

    The sampling columns are read from the arena's copies, not from the arrays given: the
    index and the one-category index (built on first use) must not change when the caller
    later writes to its own tensors."""
    required = [t for t in (sample_tag, dedup_tag, weight_tag, skey_name) if t is not None]
    missing = [t for t in required if t not in columns]
    if missing:
        raise TableError(f"reload: missing required column(s) {missing}; the table has {sorted(columns)}")
    n = columns[dedup_tag].row_count
    if n == 0:
        raise TableError(f"reload: the table has no rows (column {dedup_tag!r} is empty); give at least one item")
    for col in columns.values():
        if col.row_count != n:
            raise TableError(
                f"column {col.name!r} has {col.row_count} rows but {dedup_tag!r} has {n}; every column needs one entry per row"
            )
        if col.kind == RAGGED and col.weight is not None and col.weight.shape[0] != col.values.shape[0]:
            raise TableError(f"column {col.name!r}: ragged weight length {col.weight.shape[0]} != values {col.values.shape[0]}")
    if skey_name is not None and columns[skey_name].kind != STRING:
        raise TableError(f"column {skey_name!r} (skey_name) must hold strings; got a {columns[skey_name].kind} column")
    arena = pack_columns(columns, allocate, keep_owned)
    ids = _single_valued_ints(columns[dedup_tag], "dedup_tag")
    reserved = np.flatnonzero(ids == EMPTY_KEY)
    if reserved.size:
        raise TableError(f"column {dedup_tag!r} row {int(reserved[0])}: id {EMPTY_KEY} is reserved as the hash table's empty marker")
    cat_offsets, categories = _multi_valued_ints(columns[sample_tag])
    several, most_categories = row_length_summary(cat_offsets)
    weights = _weights(columns[weight_tag], cat_offsets, n, one_category_per_row=not several)
    _check_weights(weight_tag, weights, cat_offsets)
    if weight_exponent != 1.0:
        if not np.isfinite(weight_exponent) or weight_exponent <= 0:
            raise TableError(f"weight_exponent must be a positive finite number; got {weight_exponent}")
        weights = np.power(weights, weight_exponent)
    if most_categories >= 2:
        _check_duplicate_categories(sample_tag, cat_offsets, categories)
    return Table(columns, SamplingColumns(ids, cat_offsets, categories, weights), arena)


def _int64(col: Column, values: np.ndarray, role: str) -> np.ndarray:
    if values.dtype.kind not in "iu" and values.dtype != np.bool_:
        raise TableError(f"column {col.name!r} ({role}) has dtype {values.dtype}; it must hold integers (cast to int64)")
    if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
        row = int(np.argmax(values > np.iinfo(np.int64).max))
        raise TableError(f"column {col.name!r} ({role}) value {values[row]} at position {row} does not fit in int64")
    return values.astype(np.int64, copy=False)


def _single_valued_ints(col: Column, role: str) -> np.ndarray:
    if col.kind == DENSE:
        values = col.values.reshape(col.values.shape[0], -1) if col.values.ndim > 1 else col.values
        if values.ndim > 1 and values.shape[1] != 1:
            raise TableError(f"column {col.name!r} ({role}) is multi-valued ({values.shape[1]} per row); it must hold one id per row")
        return np.ascontiguousarray(_int64(col, values.reshape(-1), role))
    if col.kind == RAGGED:
        if row_length_summary(col.offsets)[0]:
            row, length = first_row_off_one(col.offsets)
            raise TableError(f"column {col.name!r} ({role}) row {row} has {length} values; "
                             "it must hold exactly one id per row")
        return np.ascontiguousarray(_int64(col, col.values, role))
    raise TableError(f"column {col.name!r} ({role}) holds strings; it must hold int64 ids")


def _multi_valued_ints(col: Column) -> tuple[np.ndarray, np.ndarray]:
    if col.kind == DENSE:
        values = col.values.reshape(col.values.shape[0], -1)
        per_row = values.shape[1]
        offsets = np.arange(values.shape[0] + 1, dtype=np.int64) * per_row
        return offsets, np.ascontiguousarray(_int64(col, values.reshape(-1), "sample_tag"))
    if col.kind == RAGGED:
        return col.offsets.astype(np.int64, copy=False), np.ascontiguousarray(_int64(col, col.values, "sample_tag"))
    raise TableError(f"column {col.name!r} (sample_tag) holds strings; categories must be int64")


def _weights(col: Column, cat_offsets: np.ndarray, n: int, one_category_per_row: bool) -> np.ndarray:
    """float64 weights, one per (item, category) pair: a per-row weight is repeated over the
    row's categories (no copy where every row has one category)."""
    def as_float(values):
        if values.dtype.kind not in "biuf":
            raise TableError(f"column {col.name!r} (weight_tag) has dtype {values.dtype}; it must be numeric")
        return values.astype(np.float64, copy=False)

    if col.kind == STRING:
        raise TableError(f"column {col.name!r} (weight_tag) holds strings; weights must be numbers")
    if col.kind == DENSE:
        values = col.values.reshape(n, -1)
        if values.shape[1] != 1:
            raise TableError(f"column {col.name!r} (weight_tag) has {values.shape[1]} values per row; give one weight per row")
        per_row = as_float(values.reshape(-1))
    else:
        if np.array_equal(col.offsets, cat_offsets):
            return np.ascontiguousarray(as_float(col.values))
        if row_length_summary(col.offsets)[0]:
            row, length = first_row_off_one(col.offsets)
            raise TableError(
                f"column {col.name!r} (weight_tag) row {row} has {length} weights but "
                f"{int(cat_offsets[row + 1] - cat_offsets[row])} categories; give one weight per row or one per category"
            )
        per_row = as_float(col.values)
    if one_category_per_row:
        return np.ascontiguousarray(per_row)
    return np.repeat(per_row, np.diff(cat_offsets))


@nb.njit(nogil=True, cache=True)
def _all_valid(weights):
    """Every weight finite and >= 0, in one pass (NaN fails both comparisons); numpy's test
    made four temporaries. A count, not a running boolean: LLVM vectorises the sum. The
    error path finds the row with numpy."""
    invalid = 0
    for i in range(weights.shape[0]):
        invalid += not ((weights[i] >= 0.0) & (weights[i] < np.inf))
    return invalid == 0


def _check_weights(name: str, weights: np.ndarray, cat_offsets: np.ndarray) -> None:
    if not _all_valid(weights):
        bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
        pos = int(bad[0])
        row = int(np.searchsorted(cat_offsets, pos, side="right") - 1)
        raise TableError(
            f"column {name!r} row {row}: weight {float(weights[pos])} is invalid; weights must be finite and >= 0 "
            f"({bad.size} invalid value(s) in all)"
        )
    with np.errstate(over="ignore"):
        total = weights.sum()
    if not np.isfinite(total):
        raise TableError(f"column {name!r}: the weights sum to {total} (the largest is {float(weights.max())}); "
                         "scale them down so their sum is a finite float64")


def _check_duplicate_categories(name: str, cat_offsets: np.ndarray, categories: np.ndarray) -> None:
    lengths = np.diff(cat_offsets)
    rows = np.repeat(np.arange(lengths.shape[0]), lengths)
    order = np.lexsort((categories, rows))
    same = (rows[order][1:] == rows[order][:-1]) & (categories[order][1:] == categories[order][:-1])
    if same.any():
        pos = order[int(np.argmax(same))]
        raise TableError(f"column {name!r} row {int(rows[pos])} lists category {int(categories[pos])} more than once")
