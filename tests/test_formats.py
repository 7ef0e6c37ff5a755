"""RaggedTensor to and from Arrow list arrays (sharing buffers), torch.nested and TorchRec."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gpu_negsample import RaggedTensor, formats

ROWS = [[1, 2], [], [3, 4, 5], [6]]


def test_arrow_list_array_round_trip_shares_the_values_buffer():
    ragged = RaggedTensor.from_rows(ROWS)
    array = ragged.to_arrow()
    assert array.to_pylist() == ROWS and array.type == pa.large_list(pa.int64())
    assert array.values.buffers()[1].address == ragged.values().data_ptr()  # no copy out
    back = RaggedTensor.from_arrow(array)
    assert back.to_list() == ROWS
    assert back.values().data_ptr() == array.values.buffers()[1].address  # no copy in


def test_a_sliced_chunked_list_column_from_parquet_keeps_its_rows(tmp_path):
    pq.write_table(pa.table({"tags": pa.array([[9.5], *ROWS], pa.list_(pa.float32()))}), tmp_path / "t.parquet")
    column = pq.read_table(tmp_path / "t.parquet").column("tags").slice(1)
    ragged = RaggedTensor.from_arrow(column)
    assert ragged.values().dtype == torch.float32 and ragged.to_list() == ROWS


@pytest.mark.parametrize("bad, why", [(pa.array([1, 2]), "list array"), (pa.array([[1], None]), "null")])
def test_arrow_arrays_that_are_not_ragged_numbers_are_refused(bad, why):
    with pytest.raises((TypeError, ValueError), match=why):
        RaggedTensor.from_arrow(bad)


def test_torch_nested_round_trip():
    ragged = RaggedTensor.from_rows([[1, 2], [3, 4, 5]])
    assert RaggedTensor.from_nested(ragged.to_nested()).to_list() == [[1, 2], [3, 4, 5]]


def _torchrec_or_skip():
    try:
        import torchrec.sparse.jagged_tensor  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: fbgemm-gpu's library built for another torch
        pytest.skip(f"torchrec unavailable ({type(e).__name__}: {str(e)[:120]}); it is optional "
                    "(pip install torchrec), and its fbgemm-gpu 1.9 does not load with torch 2.13.0, "
                    "so the test extra leaves it out")


def test_torchrec_jagged_and_keyed_jagged_round_trip():
    _torchrec_or_skip()
    ragged = RaggedTensor(torch.arange(6), torch.tensor([0, 2, 2, 5, 6]), weight=torch.linspace(0, 1, 6))
    jagged = ragged.to_jagged()
    assert jagged.values().data_ptr() == ragged.values().data_ptr()
    back = RaggedTensor.from_jagged(jagged)
    assert back.to_list() == ragged.to_list() and torch.equal(back.weight(), ragged.weight())
    keyed = formats.columns_to_keyed_jagged({"a": ragged, "b": RaggedTensor.from_rows(ROWS)})
    columns = formats.columns_from_keyed_jagged(keyed)
    assert columns["a"].to_list() == ragged.to_list() and columns["b"].to_list() == ROWS
