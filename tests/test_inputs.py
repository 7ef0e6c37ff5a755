"""What the samplers accept from users: the formats they already hold, and clear errors
for what they cannot take."""
import numpy as np
import pandas as pd
import pytest
import torch

from gpu_negsample import RaggedTensor, RequestError, TableError
from gpu_negsample.server import protocol as p
from tests.conftest import make_sampler, small_table

IDS = np.arange(100, 120)
CATS = np.repeat([1, 2], 10)


@pytest.fixture
def sampler():
    return make_sampler(small_table(IDS, CATS, np.ones(20)))


def test_valid_sample_ids_takes_a_ragged_tensors_values(sampler):
    ragged = RaggedTensor.from_rows([[100], [7], [119]])
    assert sampler.valid_sample_ids(ragged, default_value=100).tolist() == [100, 100, 119]


@pytest.mark.parametrize("ids", [torch.tensor([101, 5], dtype=torch.int32), np.array([101, 5], dtype=np.int32),
                                 [101, 5], torch.tensor([[101], [5]])])
def test_plain_ids_are_one_id_per_row_whatever_their_integer_type(sampler, ids):
    assert sampler.valid_sample_ids(ids, default_value=-1).tolist() == [101, -1]


def test_a_nested_list_whose_rows_differ_is_a_request_error_in_process_and_on_the_wire(sampler):
    """Before: numpy's ValueError ("inhomogeneous shape") from inside the conversion, on both
    transports (the server's client converts lists before sending)."""
    for call in (lambda: sampler.valid_sample_ids([[101, 102], [5]], default_value=-1),
                 lambda: sampler.sample_ids([101], [[1, 2], [3]], [1]),
                 lambda: p.encode("ids", [[101, 102], [5]], {})):
        with pytest.raises(RequestError, match="cannot be read as an array .* RaggedTensor for rows of several ids"):
            call()


def test_a_path_that_is_not_parquet_raises_table_error_and_keeps_the_table(sampler, tmp_path):
    csv = tmp_path / "items.csv"
    csv.write_text("cat,item,w\n1,100,1.0\n")
    with pytest.raises(TableError, match=r"cannot read .*items\.csv.* as Parquet.*pyarrow\.csv"):
        sampler.reload(str(csv))
    assert sampler.valid_sample_ids([100], -1).tolist() == [100]


def test_a_pandas_dataframe_loads_through_arrow():
    frame = pd.DataFrame({
        "item": IDS,
        "cat": [[c] for c in CATS],                       # a list column becomes ragged
        "w": np.linspace(1, 2, 20),
        "skey": [f"k{i}" for i in IDS],                   # strings
        "tags": [list(range(i % 3)) for i in range(20)],  # a ragged feature
    })
    s = make_sampler(frame)
    neg = s.sample_ids(torch.tensor([100, 115]), 5, torch.tensor([1, 2]))
    assert set(neg[:5].tolist()) <= set(IDS[:10]) - {100} and set(neg[5:].tolist()) <= set(IDS[10:]) - {115}
    packed = s.pack_feature(torch.tensor([102, 104]))
    assert packed["tags"].to_list() == [[0, 1], [0]]  # rows 2 and 4: range(2), range(1)
    assert packed["skey"].tolist() == [b"k102", b"k104"]


def test_a_dataframe_column_of_mixed_types_is_a_table_error():
    frame = pd.DataFrame({"item": IDS, "cat": CATS, "w": np.ones(20), "skey": ["a"] * 19 + [3]})
    with pytest.raises(TableError, match="cannot read the DataFrame through Arrow.*skey"):
        make_sampler(frame)
