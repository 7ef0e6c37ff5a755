"""Turning every accepted input format into flat numpy columns.

Accepted: a RecIS batch (list of dicts; the first dict is the table), a dict, a
``pyarrow.Table``, or a Parquet file / directory. Column values may be torch tensors,
``RaggedTensor``, numpy arrays, lists of str/bytes, or RecIS's one-element list holding a
string array. Arrow list columns become ragged, fixed-size lists dense 2-D, string and
binary columns strings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .errors import TableError
from .fixed_strings import fixed_width_to_bytes
from .ragged import RaggedTensor

DENSE, RAGGED, STRING = "dense", "ragged", "string"


@dataclass
class Column:
    """One table column, flat: ``values`` plus ``offsets`` (n + 1, int64) unless dense.

    dense:  values has shape (n, *feature_shape)
    ragged: values is 1-D, row i is values[offsets[i]:offsets[i+1]]; ``weight`` optional
    string: values is uint8 bytes, row i is values[offsets[i]:offsets[i+1]]
    """

    name: str
    kind: str
    values: np.ndarray
    offsets: np.ndarray | None = None
    weight: np.ndarray | None = None

    @property
    def row_count(self) -> int:
        return self.values.shape[0] if self.kind == DENSE else self.offsets.shape[0] - 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.values, self.offsets, self.weight) if a is not None)


def read_table_input(data) -> dict[str, Column]:
    """Columns of any accepted input, keyed by name, in input order."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.exists(path):
            raise TableError(f"reload: Parquet path {path!r} does not exist")
        data = pq.read_table(path)
    if isinstance(data, list):
        if not data or not isinstance(data[0], dict):
            raise TableError("reload: a list input must be a RecIS batch whose first element is a dict of columns")
        data = data[0]
    if isinstance(data, pa.Table):
        return {name: _from_arrow(name, data.column(name)) for name in data.column_names}
    if isinstance(data, dict):
        if data and all(isinstance(v, Column) for v in data.values()):
            return dict(data)  # already read (the sampling server receives columns this way)
        return {name: _from_value(str(name), value) for name, value in data.items() if name != "_sample_group_id"}
    raise TableError(
        f"reload: unsupported input type {type(data).__name__}; give a dict of columns, a RecIS batch "
        "(list of dicts), a pyarrow.Table, or a Parquet path"
    )


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
        return _from_arrow(name, value)
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
        return Column(name, STRING, data, offsets)
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
    return Column(name, STRING, data.copy(), (offsets - offsets[0]).astype(np.int64))


def _from_arrow(name: str, col) -> Column:
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
