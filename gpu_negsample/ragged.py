"""RaggedTensor: RecIS's variable-length column type (values + row offsets)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import numba as nb
import numpy as np
import torch

if TYPE_CHECKING:  # converted to and from, imported where used
    import pyarrow as pa
    from torchrec.sparse.jagged_tensor import JaggedTensor


# What a RaggedTensor is built from: a tensor, or anything numpy reads as an array.
TensorLike = Union[torch.Tensor, np.ndarray, Sequence]


class RaggedTensor:
    """A batch of variable-length rows: ``values`` plus int64 row ``offsets``.

    Row ``i`` is ``values[offsets[i]:offsets[i + 1]]``. As in RecIS, ``offsets()``
    returns a list of offset tensors, outermost last; this class holds one level (a list
    of lists of scalars); deeper nesting is refused with an error. ``weight`` is RecIS's
    optional per-value weight, aligned with ``values``.
    """

    def __init__(self, values: TensorLike, offsets: TensorLike | Sequence[TensorLike],
                 weight: TensorLike | None = None):
        if isinstance(offsets, (list, tuple)):
            if len(offsets) != 1:
                raise NotImplementedError(
                    f"RaggedTensor holds one ragged level; got {len(offsets)} offset tensors. "
                    "Flatten the inner levels into the values first."
                )
            offsets = offsets[0]
        self._values = _as_tensor(values)
        self._offsets = _as_tensor(offsets).to(torch.int64)
        self._weight = None if weight is None else _as_tensor(weight)
        self._check()

    # Every row's length where the package built the rows all alike (a fixed-length column
    # gathered by the CPU backend), else None: the server then sends this number instead of
    # the offsets, and the client makes them itself rather than checking the server's.
    _row_length: int | None = None

    @classmethod
    def _from_parts(cls, values: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor | None = None,
                    row_length: int | None = None) -> "RaggedTensor":
        """Parts the package built itself (offsets valid by construction): no checks, no copies,
        no device synchronisation. ``row_length``: every row has that many values."""
        self = cls.__new__(cls)
        self._values, self._offsets, self._weight = values, offsets, weight
        if row_length is not None:
            self._row_length = row_length
        return self

    @classmethod
    def _from_arrays(cls, values: np.ndarray, offsets: np.ndarray, weight: np.ndarray | None = None
                     ) -> "RaggedTensor":
        """From numpy arrays that came from outside (a request, a server's answer): the
        constructor's checks, run on the arrays themselves before they become tensors (a
        fused answer builds six of these per call)."""
        if offsets.ndim != 1 or offsets.dtype != np.int64 or values.ndim == 0:
            return cls(torch.from_numpy(values), torch.from_numpy(offsets),
                       None if weight is None else torch.from_numpy(weight))
        check_offsets(offsets, values.shape[0], None if weight is None else weight.shape[0])
        return cls._from_parts(torch.from_numpy(values), torch.from_numpy(offsets),
                               None if weight is None else torch.from_numpy(weight))

    def _check(self) -> None:
        off = self._offsets
        if off.dim() != 1:
            raise ValueError("RaggedTensor offsets must be a non-empty 1-D tensor (rows + 1 entries)")
        # On the CPU one pass over numpy: torch's comparisons over tens of thousands of offsets
        # wake its intra-op thread pool, whose threads then spin on the cores a sampler needs
        # (~3 ms a check on 2 cores, several checks per sampled batch).
        check_offsets(off.numpy() if off.device.type == "cpu" else off, self._values.shape[0],
                      None if self._weight is None else self._weight.shape[0])

    def values(self) -> torch.Tensor:
        """Every row's values, concatenated."""
        return self._values

    def offsets(self) -> list[torch.Tensor]:
        """The row offsets as RecIS gives them: a list of one int64 tensor of rows + 1 entries."""
        return [self._offsets]

    def weight(self) -> torch.Tensor | None:
        """The per-value weight (aligned with ``values()``), or None."""
        return self._weight

    def set_weight(self, weight: TensorLike | None) -> None:
        """Replace the per-value weight (None removes it); checked against the values."""
        self._weight = None if weight is None else _as_tensor(weight)
        self._check()

    @property
    def row_count(self) -> int:
        """The number of rows."""
        return self._offsets.numel() - 1

    def __len__(self) -> int:
        return self.row_count

    def row_lengths(self) -> torch.Tensor:
        """Each row's number of values (int64)."""
        return self._offsets[1:] - self._offsets[:-1]

    def to_nested(self) -> torch.Tensor:
        """A ``torch.nested`` jagged tensor over the same values (no weight)."""
        return torch.nested.nested_tensor_from_jagged(self._values, self._offsets)

    @classmethod
    def from_nested(cls, nested: torch.Tensor) -> "RaggedTensor":
        """From a ``torch.nested`` jagged tensor (layout=torch.jagged)."""
        if not nested.is_nested or nested.layout != torch.jagged:
            raise ValueError("from_nested expects a torch.nested tensor with layout=torch.jagged")
        return cls(nested.values(), nested.offsets())

    @classmethod
    def from_arrow(cls, array: "pa.Array | pa.ChunkedArray") -> "RaggedTensor":
        """From an Arrow list / large list array of numbers, sharing its values buffer."""
        from .formats import ragged_from_arrow

        return ragged_from_arrow(array)

    def to_arrow(self) -> "pa.LargeListArray":
        """An Arrow large list array over the same values and offsets (no copy on the CPU; no weight)."""
        from .formats import ragged_to_arrow

        return ragged_to_arrow(self)

    @classmethod
    def from_jagged(cls, jagged: "JaggedTensor") -> "RaggedTensor":
        """From a TorchRec ``JaggedTensor`` (values, offsets and weights, no copy)."""
        from .formats import ragged_from_jagged

        return ragged_from_jagged(jagged)

    def to_jagged(self) -> "JaggedTensor":
        """A TorchRec ``JaggedTensor`` over the same values, offsets and weight (needs torchrec)."""
        from .formats import ragged_to_jagged

        return ragged_to_jagged(self)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence], dtype: torch.dtype = torch.int64) -> "RaggedTensor":
        """From a list of Python sequences (a convenience for tests and examples)."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = [v for r in rows for v in r]
        return cls(torch.tensor(flat, dtype=dtype), torch.from_numpy(offsets))

    def to_list(self) -> list[list]:
        """The rows as Python lists."""
        vals = self._values.tolist()
        off = self._offsets.tolist()
        return [vals[off[i]:off[i + 1]] for i in range(len(off) - 1)]

    def __repr__(self) -> str:
        return f"RaggedTensor(rows={self.row_count}, values={tuple(self._values.shape)}, dtype={self._values.dtype})"


def check_offsets(o, n_values: int, n_weights: int | None = None) -> None:
    """ValueError unless 1-D offsets `o` (numpy, or a tensor on a GPU) start at 0, end at
    n_values and never decrease, and a weight (n_weights entries) is aligned with the values.
    Host int64 offsets are passed once, without temporaries (``_offsets_valid``); only
    invalid ones are read again, to say where."""
    if isinstance(o, np.ndarray) and o.dtype == np.int64 and _offsets_valid(o, n_values) \
            and n_weights in (None, n_values):
        return
    if o.shape[0] == 0:
        raise ValueError("RaggedTensor offsets must be a non-empty 1-D tensor (rows + 1 entries)")
    first, last = int(o[0]), int(o[-1])
    if first != 0 or last != n_values:
        raise ValueError(f"RaggedTensor offsets must start at 0 and end at len(values)={n_values}; "
                         f"got first={first}, last={last}")
    down = o[1:] < o[:-1]
    if bool(down.any()):
        row = int(down.nonzero()[0][0])  # the first decrease (torch and numpy index alike here)
        raise ValueError(f"RaggedTensor offsets decrease at row {row}: {int(o[row])} -> {int(o[row + 1])}")
    if n_weights is not None and n_weights != n_values:
        raise ValueError(f"RaggedTensor weight has {n_weights} entries for {n_values} values")


@nb.njit(cache=True, nogil=True)
def _offsets_valid(offsets, n_values):
    """Whether offsets start at 0, never decrease and end at n_values."""
    if offsets.shape[0] == 0 or offsets[0] != 0 or offsets[-1] != n_values:
        return False
    # No early exit: a loop without branches is vectorised (45,057 offsets: 10 us, not 62),
    # and valid offsets, the common case, are read to the end anyway.
    decreases = False
    for i in range(1, offsets.shape[0]):
        decreases |= offsets[i] < offsets[i - 1]
    return not decreases


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))
