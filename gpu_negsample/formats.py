"""RaggedTensor to and from the ragged formats recommender code already holds: Arrow list
arrays (Parquet, pandas, Ray, Spark) and TorchRec's JaggedTensor / KeyedJaggedTensor.

Arrow conversions share memory where Arrow allows: a list array's values and a numeric
RaggedTensor's values are the same buffer both ways (a list array whose offsets do not
start at 0, i.e. a slice, gets its offsets rebased, which copies them only). TorchRec is
optional (``pip install torchrec``); its conversions import it when called and keep the
values, offsets and weights tensors as they are.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Mapping

import pyarrow as pa
import torch

from .columns import RAGGED, from_arrow
from .ragged import RaggedTensor

if TYPE_CHECKING:  # optional dependency
    from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

__all__ = ["ragged_from_arrow", "ragged_to_arrow", "ragged_from_jagged", "ragged_to_jagged",
           "columns_from_keyed_jagged", "columns_to_keyed_jagged"]


def ragged_from_arrow(array: pa.Array | pa.ChunkedArray, name: str = "array") -> RaggedTensor:
    """A RaggedTensor over an Arrow list / large list array of numbers (no nulls). The values
    are Arrow's buffer (do not write to them: Arrow buffers are immutable)."""
    column = from_arrow(name, array)
    if column.kind != RAGGED:
        raise TypeError(f"{name}: expected an Arrow list array of numbers; got Arrow type {array.type}")
    with warnings.catch_warnings():  # torch warns that Arrow's buffers are read-only; they stay unwritten here
        warnings.simplefilter("ignore", UserWarning)
        values = torch.from_numpy(column.values)
    return RaggedTensor(values, torch.from_numpy(column.offsets))


def ragged_to_arrow(ragged: RaggedTensor) -> pa.LargeListArray:
    """An Arrow large list array over the RaggedTensor's values and offsets (no copy for CPU
    tensors; a CUDA tensor is copied to the host). ``weight`` is not carried: Arrow lists have none."""
    values = ragged.values().detach().cpu().contiguous().numpy()
    offsets = ragged.offsets()[0].detach().cpu().contiguous().numpy()
    value_array = pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), values.shape[0],
                                        [None, pa.py_buffer(values)])
    return pa.LargeListArray.from_arrays(pa.Array.from_buffers(pa.int64(), offsets.shape[0],
                                                               [None, pa.py_buffer(offsets)]), value_array)


def ragged_from_jagged(jagged: "JaggedTensor") -> RaggedTensor:
    """A RaggedTensor over a TorchRec JaggedTensor's values, offsets and weights (no copy)."""
    return RaggedTensor(jagged.values(), jagged.offsets(), jagged.weights_or_none())


def ragged_to_jagged(ragged: RaggedTensor) -> "JaggedTensor":
    """A TorchRec JaggedTensor over the RaggedTensor's values, offsets and weight (no copy)."""
    from torchrec.sparse.jagged_tensor import JaggedTensor

    return JaggedTensor(values=ragged.values(), offsets=ragged.offsets()[0], weights=ragged.weight())


def columns_from_keyed_jagged(keyed: "KeyedJaggedTensor") -> dict[str, RaggedTensor]:
    """One RaggedTensor per key of a TorchRec KeyedJaggedTensor (e.g. to build a table or a batch)."""
    return {key: ragged_from_jagged(jagged) for key, jagged in keyed.to_dict().items()}


def columns_to_keyed_jagged(columns: Mapping[str, RaggedTensor]) -> "KeyedJaggedTensor":
    """A TorchRec KeyedJaggedTensor of RaggedTensor columns with the same number of rows
    (e.g. the ragged columns of ``pack_feature``'s table), keyed by column name."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    rows = {name: len(col) for name, col in columns.items()}
    if len(set(rows.values())) > 1:
        raise ValueError(f"columns_to_keyed_jagged: every column needs the same number of rows; got {rows}")
    return KeyedJaggedTensor.from_jt_dict({name: ragged_to_jagged(col) for name, col in columns.items()})
