"""Turning every accepted input format into flat numpy columns.

Accepted: a RecIS batch (list of dicts; the first dict is the table), a dict, a
``pyarrow.Table``, a pandas ``DataFrame`` (read through Arrow), or a Parquet file /
directory. Column values may be torch tensors,
``RaggedTensor``, numpy arrays, lists of str/bytes, or RecIS's one-element list holding a
string array. Arrow list columns become ragged, fixed-size lists dense 2-D, string and
binary columns strings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numba as nb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .errors import TableError
from .fixed_strings import fixed_width_to_bytes
from .ragged import RaggedTensor, _offsets_valid

DENSE, RAGGED, STRING = "dense", "ragged", "string"


@dataclass
class Column:
    """One table column, flat: ``values`` plus ``offsets`` (n + 1, int64) unless dense.

    dense:  values has shape (n, *feature_shape)
    ragged: values is 1-D, row i is values[offsets[i]:offsets[i+1]]; ``weight`` optional
    string: values is uint8 bytes, row i is values[offsets[i]:offsets[i+1]]

    ``owned``: the reader made these arrays itself (a string conversion, a Parquet file it
    read), so no caller can write to them and a backend may keep them as they are.
    """

    name: str
    kind: str
    values: np.ndarray
    offsets: np.ndarray | None = None
    weight: np.ndarray | None = None
    owned: bool = False

    @property
    def row_count(self) -> int:
        return self.values.shape[0] if self.kind == DENSE else self.offsets.shape[0] - 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.values, self.offsets, self.weight) if a is not None)


def read_table_input(data) -> dict[str, Column]:
    """Columns of any accepted input, keyed by name, in input order, each checked by
    ``check_column`` (columns received over the wire are checked the same way)."""
    columns = _read_columns(data)
    for col in columns.values():
        check_column(col)
        if isinstance(data, (str, os.PathLike)):
            col.owned = True  # Arrow memory of a Parquet file read here: nothing else holds it
    return columns


def check_column(col: Column) -> None:
    """TableError unless the column's arrays have the layout its kind promises: the kernels
    index values by offsets without bounds checks, so a bad offset would read or write out
    of bounds. Columns built here are valid by construction; columns that arrive as raw
    arrays (the sampling server's reload) are not."""
    where = f"column {col.name!r}"
    if not isinstance(col.name, str):
        raise TableError(f"column name {col.name!r} must be a string")
    if col.kind not in (DENSE, RAGGED, STRING):
        raise TableError(f"{where}: unknown kind {col.kind!r}; expected {DENSE!r}, {RAGGED!r} or {STRING!r}")
    values = col.values
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "biuf" or values.ndim == 0:
        raise TableError(f"{where}: values must be a numeric numpy array with one entry per row; got "
                         f"{getattr(values, 'dtype', type(values).__name__)} of shape {getattr(values, 'shape', '?')}")
    if col.kind == DENSE:
        if col.offsets is not None or col.weight is not None:
            raise TableError(f"{where}: a dense column has no offsets or weight")
        return
    if values.ndim != 1:
        raise TableError(f"{where}: {col.kind} values must be 1-D; got shape {values.shape}")
    if col.kind == STRING and values.dtype != np.uint8:
        raise TableError(f"{where}: string bytes must be uint8; got {values.dtype}")
    _check_offsets(where, col.offsets, values.shape[0])
    if col.weight is not None:
        w = col.weight
        if col.kind == STRING or not isinstance(w, np.ndarray) or w.ndim != 1 or w.dtype.kind not in "biuf":
            raise TableError(f"{where}: weight must be a 1-D numeric array of a ragged column")
        if w.shape[0] != values.shape[0]:
            raise TableError(f"{where}: ragged weight length {w.shape[0]} != values {values.shape[0]}")


@nb.njit(nogil=True, cache=True)
def row_length_summary(offsets):
    """One pass over valid int64 offsets (``_check_offsets``): (whether any row's length is
    not 1, the longest row's length). Reductions only, no first-row search, so the loop
    vectorises: a reload asks this of its id, category and weight columns, where numpy
    needed a temporary or two per question (np.diff, a comparison, flatnonzero). Error paths
    find the row with numpy."""
    off_one = False
    longest = 0
    for r in range(offsets.shape[0] - 1):
        length = offsets[r + 1] - offsets[r]
        off_one |= length != 1
        longest = max(longest, length)
    return off_one, longest


def first_row_off_one(offsets: np.ndarray) -> tuple[int, int]:
    """(first row whose length is not 1, its length), for an error message."""
    lengths = np.diff(offsets)
    row = int(np.flatnonzero(lengths != 1)[0])
    return row, int(lengths[row])


def _check_offsets(where: str, offsets, n_values: int) -> None:
    if not isinstance(offsets, np.ndarray) or offsets.dtype != np.int64 or offsets.ndim != 1 or offsets.size == 0:
        raise TableError(f"{where}: offsets must be a non-empty 1-D int64 array (rows + 1 entries); got "
                         f"{getattr(offsets, 'dtype', type(offsets).__name__)} of shape {getattr(offsets, 'shape', '?')}")
    if _offsets_valid(offsets, n_values):  # one branch-free pass; the checks below only say where
        return
    if offsets[0] != 0:
        raise TableError(f"{where}: offsets must start at 0; row 0 starts at {int(offsets[0])}")
    falls = np.flatnonzero(offsets[1:] < offsets[:-1])
    if falls.size:
        row = int(falls[0])
        raise TableError(f"{where}: offsets decrease at row {row}: {int(offsets[row])} -> {int(offsets[row + 1])}")
    if offsets[-1] != n_values:
        row = int(np.argmax(offsets > n_values)) - 1 if offsets[-1] > n_values else offsets.size - 2
        raise TableError(f"{where}: offsets must end at the number of values ({n_values}); row {row} ends at "
                         f"{int(offsets[row + 1])}")


def _read_columns(data) -> dict[str, Column]:
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.exists(path):
            raise TableError(f"reload: Parquet path {path!r} does not exist")
        data = _read_parquet(path)
    if _is_pandas_frame(data):
        data = _from_pandas(data)
    if isinstance(data, list):
        if not data or not isinstance(data[0], dict):
            raise TableError("reload: a list input must be a RecIS batch whose first element is a dict of columns")
        data = data[0]
    if isinstance(data, pa.Table):
        return {name: from_arrow(name, data.column(name)) for name in data.column_names}
    if isinstance(data, dict):
        if data and all(isinstance(v, Column) for v in data.values()):
            return dict(data)  # already read (the sampling server receives columns this way)
        return {name: _from_value(str(name), value) for name, value in data.items() if name != "_sample_group_id"}
    raise TableError(
        f"reload: unsupported input type {type(data).__name__}; give a dict of columns, a RecIS batch "
        "(list of dicts), a pyarrow.Table, a pandas DataFrame, or a Parquet path"
    )


def _read_parquet(path: str) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise TableError(
            f"reload: cannot read {path!r} as Parquet ({exc}). reload reads Parquet files and directories "
            "of them; read other formats yourself (e.g. pyarrow.csv.read_csv) and pass the table"
        ) from exc


def _is_pandas_frame(data) -> bool:
    """A pandas DataFrame, recognised without importing pandas (an optional dependency)."""
    return type(data).__name__ == "DataFrame" and type(data).__module__.split(".")[0] == "pandas"


def _from_pandas(frame) -> pa.Table:
    """Columns of lists become ragged columns, of str/bytes string columns (Arrow's reading)."""
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise TableError(f"reload: cannot read the DataFrame through Arrow: {exc}. Give each column one type "
                         "(numbers, lists of numbers, or strings)") from exc


def _from_value(name: str, value) -> Column:
    if isinstance(value, RaggedTensor):
        weight = value.weight()
        return Column(
            name,
            RAGGED,
            _numpy(name, value.values()),
            _numpy(name, value.offsets()[0]).astype(np.int64, copy=False),
            None if weight is None else _numpy(name, weight),
        )
    if isinstance(value, torch.Tensor):
        return _dense(name, _numpy(name, value))
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], (np.ndarray, list)):
            value = value[0]  # RecIS wraps string columns as [array_of_strings]
        return strings_from_sequence(name, value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "USO":
            return strings_from_sequence(name, value)
        return _dense(name, value)
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return from_arrow(name, value)
    raise TableError(
        f"column {name!r}: unsupported value type {type(value).__name__}; use a torch tensor, "
        "RaggedTensor, numpy array, or a list of str/bytes"
    )


def _numpy(name: str, t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        if t.dtype == torch.bfloat16:
            raise TableError(f"column {name!r}: bfloat16 has no numpy equivalent; cast it to float32 first")
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _dense(name: str, array: np.ndarray) -> Column:
    if array.ndim == 0:
        raise TableError(f"column {name!r}: a scalar is not a column; give one value per row")
    if array.dtype.kind not in "biuf":
        raise TableError(f"column {name!r}: dense dtype {array.dtype} is not numeric")
    return Column(name, DENSE, np.ascontiguousarray(array))


def strings_from_sequence(name: str, seq) -> Column:
    """A string column from a list / array of str or bytes: numpy fixed-width arrays directly
    (fixed_strings.py), anything else via Arrow's binary layout."""
    if isinstance(seq, np.ndarray) and seq.ndim == 1 and seq.dtype.kind in "US":
        data, offsets, bad = fixed_width_to_bytes(seq)
        if bad >= 0:
            raise TableError(f"column {name!r}: row {bad} holds a lone surrogate code point, which UTF-8 cannot "
                             "encode; fix or drop that value")
        return Column(name, STRING, data, offsets, owned=True)
    try:
        arr = pa.array(seq if not isinstance(seq, np.ndarray) or seq.dtype.kind != "O" else list(seq))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TableError(f"column {name!r}: cannot read as strings (mix of str and bytes, or other values?): {exc}") from exc
    return _strings_from_arrow(name, arr)


def _strings_from_arrow(name: str, arr: pa.Array) -> Column:
    if arr.null_count:
        row = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise TableError(f"column {name!r}: row {row} is null; string columns need a value (use '') in every row")
    if not (pa.types.is_string(arr.type) or pa.types.is_binary(arr.type)
            or pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)):
        raise TableError(f"column {name!r}: expected strings, got Arrow type {arr.type}")
    arr = arr.cast(pa.large_binary())
    _, offset_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offset_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]: offsets[-1]]
    return Column(name, STRING, data.copy(), (offsets - offsets[0]).astype(np.int64), owned=True)


def from_arrow(name: str, col) -> Column:
    """A Column of an Arrow array: strings, list -> ragged, fixed-size list -> dense 2-D, numbers -> dense."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return _strings_from_arrow(name, arr)
    _reject_nulls(name, arr)
    if pa.types.is_fixed_size_list(t):
        values = _flat_values(name, arr.flatten())
        return Column(name, DENSE, values.reshape(len(arr), t.list_size))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        arr = arr.cast(pa.large_list(t.value_type))
        offsets = np.asarray(arr.offsets, dtype=np.int64)
        values = _flat_values(name, arr.values)[offsets[0]: offsets[-1]]
        return Column(name, RAGGED, np.ascontiguousarray(values), offsets - offsets[0])
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return Column(name, DENSE, np.ascontiguousarray(arr.to_numpy(zero_copy_only=False)))
    raise TableError(f"column {name!r}: Arrow type {t} is not supported (use numbers, lists of numbers, or strings)")


def _reject_nulls(name: str, arr: pa.Array) -> None:
    if arr.null_count:
        row = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise TableError(f"column {name!r}: row {row} is null; fill nulls before loading")


def _flat_values(name: str, values: pa.Array) -> np.ndarray:
    if values.null_count:
        raise TableError(f"column {name!r}: list values contain nulls; fill them before loading")
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        raise TableError(f"column {name!r}: nested lists are not supported (one ragged level)")
    return values.to_numpy(zero_copy_only=False)
