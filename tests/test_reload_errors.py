"""reload's input formats, and every bad input: a clear error and the previous table kept."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gpu_negsample import NotLoadedError, RaggedTensor, RequestError, TableError, UnsatisfiableRowError
from conftest import make_sampler, one_per_row, small_table


def arrow_table():
    return pa.table({
        "item": pa.array([5, 6, 7], pa.int64()),
        "cat": pa.array([[1], [1, 2], [2]], pa.list_(pa.int64())),
        "w": pa.array([1.0, 2.0, 3.0]),
        "skey": pa.array(["a", "b", "c"]),
        "emb": pa.array([[0.5, 1.5], [2.5, 3.5], [4.5, 5.5]], pa.list_(pa.float32(), 2)),
        "tags": pa.array([[1, 2, 3], [], [4]], pa.list_(pa.int64())),
    })


def check_loaded(s):
    tab = s.pack_feature(torch.tensor([7, 5]), default_value=5)
    assert tab["skey"].tolist() == [b"c", b"a"]
    assert tab["emb"].tolist() == [[4.5, 5.5], [0.5, 1.5]]
    assert tab["tags"].to_list() == [[4], [1, 2, 3]]
    assert tab["cat"].to_list() == [[2], [1]]


def test_reload_accepts_arrow_parquet_file_and_directory(tmp_path):
    for source in ("arrow", "file", "dir"):
        data = arrow_table()
        if source == "file":
            pq.write_table(data, tmp_path / "t.parquet")
            data = str(tmp_path / "t.parquet")
        elif source == "dir":
            (tmp_path / "d").mkdir()
            pq.write_table(data.slice(0, 2), tmp_path / "d" / "part0.parquet")
            pq.write_table(data.slice(2), tmp_path / "d" / "part1.parquet")
            data = tmp_path / "d"
        s = make_sampler(data)
        check_loaded(s)


@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_the_arena_copies_what_a_caller_holds_and_on_the_cpu_only_that(tmp_path, device):
    """A Parquet file's columns and converted strings are the reader's own: the CPU keeps them
    where they are; a caller's tensors are copied; the CUDA backend copies every array into
    its pinned arena."""
    pq.write_table(arrow_table(), tmp_path / "t.parquet")
    sources = {"parquet": str(tmp_path / "t.parquet"), "tensors": small_table([5, 6, 7], [1, 1, 2], [1.0, 2.0, 3.0])}
    for source, data in sources.items():
        table = make_sampler(data, device=device).engine.state.table
        in_arena = {name: np.shares_memory(col.values, table.arena.buffer) for name, col in table.columns.items()}
        owned = set(in_arena) if source == "parquet" else {"skey"}
        assert in_arena == {name: device != "cpu" or name not in owned for name in in_arena}, source


def test_reload_accepts_recis_batch_and_string_forms():
    ids = [5, 6, 7]
    for skey in ([np.array(["a", "b", "c"])], ["a", "b", "c"], [b"a", b"b", b"c"], np.array(["a", "b", "c"])):
        table = {
            "item": torch.tensor(ids),
            "cat": RaggedTensor.from_rows([[1], [1, 2], [2]]),
            "w": torch.tensor([1.0, 2.0, 3.0]),
            "skey": skey,
            "emb": torch.tensor([[0.5, 1.5], [2.5, 3.5], [4.5, 5.5]]),
            "tags": RaggedTensor.from_rows([[1, 2, 3], [], [4]]),
        }
        s = make_sampler([table, {"_indicator_user": torch.tensor([0, 0, 1])}])
        check_loaded(s)


def good():
    return small_table([1, 2, 3, 4], [7, 7, 8, 8], [1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.update(item=one_per_row([1, 2, 2, 4])), "id 2 appears in rows 1 and 2"),
    (lambda t: t.update(w=torch.tensor([1.0, float("nan"), 1.0, 1.0])), "row 1: weight nan"),
    (lambda t: t.update(w=torch.tensor([1.0, 1.0, float("inf"), 1.0])), "row 2: weight inf"),
    (lambda t: t.update(w=torch.tensor([1.0, 1.0, 1.0, -2.0])), "row 3: weight -2.0"),
    (lambda t: t.update(w=torch.tensor([1.0, 1.0, 0.0, 0.0])), "category 8 has only zero weights"),
    (lambda t: t.pop("w"), "missing required column(s) ['w']"),
    (lambda t: t.update(extra=torch.zeros(3)), "column 'extra' has 3 rows"),
    (lambda t: t.update(item=RaggedTensor.from_rows([[1], [2, 9], [3], [4]])), "row 1 has 2 values"),
    (lambda t: t.update(item=torch.tensor([1.0, 2.0, 3.0, 4.0])), "dtype float32"),
    (lambda t: t.update(cat=RaggedTensor.from_rows([[7], [7, 7], [8], [8]]), w=torch.ones(4)),
     "row 1 lists category 7 more than once"),
    (lambda t: t.update(w=RaggedTensor.from_rows([[1.0], [1.0, 2.0], [1.0], [1.0]])),
     "row 1 has 2 weights but 1 categories"),
    (lambda t: t.update(skey=torch.zeros(4)), "must hold strings"),
    (lambda t: t.update(w=["a", "b", "c", "d"]), "weights must be numbers"),
    (lambda t: t.update(item=one_per_row([1, 2, 3, np.iinfo(np.int64).min])), "reserved"),
])
def test_bad_table_is_refused_and_previous_table_stays(mutate, message):
    s = make_sampler(good())
    bad = good()
    mutate(bad)
    with pytest.raises(TableError) as err:
        s.reload(bad)
    assert message in str(err.value)
    assert s.valid_sample_ids(torch.tensor([1, 99]), -1).tolist() == [1, -1]


def test_row_length_summary_answers_each_check_in_one_pass():
    from gpu_negsample.columns import row_length_summary

    assert row_length_summary(np.array([0, 1, 2, 3], np.int64)) == (False, 1)
    assert row_length_summary(np.array([0, 1, 1, 4], np.int64)) == (True, 3)
    assert row_length_summary(np.array([0], np.int64)) == (False, 0)


def test_offsets_that_fall_by_more_than_int64_holds_are_refused():
    """A fall that subtraction would hide (the difference wraps round to a length of 1)."""
    from gpu_negsample.columns import _check_offsets

    with pytest.raises(TableError, match="offsets decrease at row 1"):
        _check_offsets("column 'x'", np.array([0, 2**63 - 1, -(2**63), 0], np.int64), 0)


def test_dense_weights_repeat_over_several_categories():
    table = small_table([1, 2, 3], [7, 7, 8], [1.0, 2.0, 3.0])
    table["cat"] = RaggedTensor.from_rows([[7], [7, 8], [8]])
    s = make_sampler(table)
    sc = s.engine.state.table.sampling
    assert sc.weights.tolist() == [1.0, 2.0, 2.0, 3.0]


def test_bad_requests_name_the_problem():
    s = make_sampler(good())
    pos, cats = one_per_row([1, 3]), one_per_row([7, 8])
    with pytest.raises(RequestError, match="sample_cnts has 3 entries for 2 positives"):
        s.sample_ids(pos, torch.tensor([1, 1, 1]), cats)
    with pytest.raises(RequestError, match=r"sample_cnts\[1\] = -1 is negative"):
        s.sample_ids(pos, torch.tensor([1, -1]), cats)
    with pytest.raises(RequestError, match="positive row 1: category 99 is not in the table"):
        s.sample_ids(pos, 1, one_per_row([7, 99]))
    with pytest.raises(RequestError, match="sample_tag_ragged_tensor has 1 rows"):
        s.sample_ids(pos, 1, one_per_row([7]))
    with pytest.raises(RequestError, match="default_value 12345 is not"):
        s.pack_feature(torch.tensor([1, 77]), default_value=12345)
    with pytest.raises(RequestError, match="dtype float"):
        s.valid_sample_ids(torch.tensor([1.5]), -1)
    with pytest.raises(RequestError, match="sampled_vector has 3 entries"):
        s.combine_vector_with_sample_counts(torch.tensor([1, 2]), 2, torch.tensor([5, 6, 7]))


def test_unsatisfiable_rows_raise_or_fill():
    table = small_table([1, 2, 3], [7, 7, 8], [1.0, 2.0, 3.0])
    s = make_sampler(table)
    with pytest.raises(UnsatisfiableRowError, match="positive row 1 .* every candidate"):
        s.sample_ids(one_per_row([1, 3]), 2, one_per_row([7, 8]))
    nr = make_sampler(table, put_back=False)
    with pytest.raises(UnsatisfiableRowError, match="fewer than 3 distinct"):
        nr.sample_ids(one_per_row([9]), 3, one_per_row([7]))
    with pytest.raises(RequestError, match="exactly one category"):
        nr.sample_ids(one_per_row([9]), 1, RaggedTensor.from_rows([[7, 8]]))
    filled = make_sampler(table, put_back=False, unsatisfiable="fill", fill_id=-5)
    assert sorted(filled.sample_ids(one_per_row([9]), 3, one_per_row([7])).tolist()) == [-5, 1, 2]


def test_requests_before_reload_fail_clearly():
    with pytest.raises(NotLoadedError, match="call reload"):
        make_sampler().sample_ids(one_per_row([1]), 1)


def test_weight_exponent_distorts_weights():
    s = make_sampler(small_table([1, 2], [7, 7], [1.0, 16.0]), weight_exponent=0.5)
    logq = s.sampling_log_prob(torch.tensor([1, 2]), 1, one_per_row([7]))
    assert np.allclose(logq.numpy(), np.log([1 / 5, 4 / 5]), atol=1e-6)
