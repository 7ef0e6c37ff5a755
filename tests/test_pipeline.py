"""valid ids, combine, pack, RecIS combine, the fused call and log q, against brute force."""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_negsample import RaggedTensor
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue
from gpu_negsample import NegativeSampler
from conftest import make_sampler, one_per_row, small_table


def test_combine_vector_recis_example():
    s = make_sampler(small_table([1], [1], [1.0]))
    out = s.combine_vector_with_sample_counts(torch.tensor([1, 2, 3]), 2, torch.arange(5, 11))
    assert out.tolist() == [1, 5, 6, 2, 7, 8, 3, 9, 10]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=30))
def test_combine_vector_with_varied_counts(counts):
    s = make_sampler(small_table([1], [1], [1.0]))
    origin = torch.arange(len(counts)) * 100
    sampled = torch.arange(sum(counts)) + 1
    out = s.combine_vector_with_sample_counts(origin, torch.tensor(counts, dtype=torch.int64), sampled).tolist()
    expected, k = [], 0
    for i, c in enumerate(counts):
        expected += [i * 100] + list(range(k + 1, k + c + 1))
        k += c
    assert out == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-50, 50), max_size=6), max_size=20), st.integers(0, 3))
def test_ragged_round_trips_and_tiling(rows, k):
    rt = RaggedTensor.from_rows(rows)
    assert rt.to_list() == [list(r) for r in rows]
    if rows:
        nested = rt.to_nested()
        back = RaggedTensor.from_nested(nested)
        assert back.to_list() == rt.to_list()
    s = make_sampler(small_table([1], [1], [1.0]))
    batch = [{"x": rt}]
    packed = {"id": torch.zeros(len(rows) * (k + 1))}
    out = s.combine(batch, packed, k, keep_positive_columns=True)[0]["x"]
    assert out.to_list() == [list(r) for r in rows for _ in range(k + 1)]


def test_valid_ids_and_pack_feature_against_brute_force():
    cat = make_catalogue(2000, 20, seed=3)
    s = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=0, device="cpu")
    s.reload(cat.table)
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.choice(cat.ids, 300), [123, -5]])
    default = int(cat.ids[7])
    assert s.valid_sample_ids(torch.from_numpy(ids), default).tolist() == \
        [int(i) if i in set(cat.ids.tolist()) else default for i in ids]
    tab = s.pack_feature(torch.from_numpy(ids), default)
    row_of = {int(v): r for r, v in enumerate(cat.ids)}
    rows = [row_of.get(int(i), 7) for i in ids]
    for name, value in cat.table.items():
        got = tab[name]
        if isinstance(value, RaggedTensor):
            assert got.to_list() == [value.to_list()[r] for r in rows], name
        elif isinstance(value, torch.Tensor):
            assert torch.equal(got, value[rows]), name
        else:
            assert got.tolist() == [value[0][r].encode() for r in rows], name


def test_pack_feature_over_several_blocks_and_fixed_length_columns():
    """Rows span several of the gather's blocks; single-valued and fixed-length ragged and
    string columns are gathered as dense rows (no offsets read), and must agree with brute
    force too, weights of a fixed-length ragged column included."""
    from gpu_negsample.backends.cpu import gather

    cat = make_catalogue(3000, 20, n_dense=2, n_ragged=2, seed=4)
    rng = np.random.default_rng(1)
    pairs = rng.integers(0, 100, (3000, 2))
    pair_weights = torch.from_numpy(rng.random(6000, dtype=np.float32))
    cat.table["pairs"] = RaggedTensor(torch.from_numpy(pairs.reshape(-1)), torch.arange(0, 6001, 2), pair_weights)
    cat.table["codes"] = [np.char.add("c", (np.arange(3000) % 900 + 100).astype("U"))]  # all 4 bytes
    s = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=0, device="cpu")
    s.reload(cat.table)
    columns = s.engine.state.columns
    assert columns.fixed == {SAMPLE_TAG: 1, DEDUP_TAG: 1, "pairs": 2, "codes": 4}
    assert columns.measured == ["ragged_0", "ragged_1", SKEY]
    n = 3 * gather.BLOCK_ROWS + 17
    rows = rng.integers(0, 3000, n)
    tab = s.pack_feature(torch.from_numpy(cat.ids[rows]))
    for name, value in cat.table.items():
        got = tab[name]
        if isinstance(value, RaggedTensor):
            want = [value.to_list()[r] for r in rows]
            assert got.to_list() == want, name
            assert got.offsets()[0][-1] == sum(map(len, want)), name
        elif isinstance(value, torch.Tensor):
            assert torch.equal(got, value[rows]), name
        else:
            assert got.tolist() == [value[0][r].encode() for r in rows], name
    assert torch.equal(tab["pairs"].weight(), pair_weights.reshape(-1, 2)[rows].reshape(-1))


def test_stores_through_a_carray_in_a_parallel_function_are_kept():
    """numba's parallel passes dropped a store to a pointer's carray that nothing read back;
    the CPU gather writes its outputs that way."""
    import numba as nb

    from gpu_negsample.backends.cpu.gather import _pointer, address

    @nb.njit(parallel=True)
    def write(out_address, scratch, n):
        for b in nb.prange(scratch.shape[0]):
            scratch[b] = b
        nb.carray(_pointer(out_address), n + 1, np.int64)[n] = 77

    out = np.zeros(6, np.int64)
    write(address(out), np.zeros(2), 5)
    assert out.tolist() == [0, 0, 0, 0, 0, 77]


def test_arena_views_start_on_a_cache_line():
    """numpy's memory starts 16 bytes into a line; the arena must not inherit that, or
    every 64-byte dense row would straddle two lines."""
    from gpu_negsample.arena import ALIGN, Arena

    arena = Arena([np.ones(n, np.uint8) for n in (3, 64, 1000, 5)])
    assert all(v.ctypes.data % ALIGN == 0 for v in arena.views)
    assert [int(v.sum()) for v in arena.views] == [3, 64, 1000, 5]


def test_arena_copies_large_arrays_exactly():
    """Arrays over the parallel-copy threshold are copied in chunks on every thread: sizes
    off the chunk size, several dimensions, a non-contiguous view and a small array beside
    them must all come out as given."""
    from gpu_negsample.arena import _COPY_CHUNK, _PARALLEL_COPY_BYTES, Arena

    rng = np.random.default_rng(5)
    arrays = [
        rng.integers(0, 2**62, size=_COPY_CHUNK // 8 * 3 + 5, dtype=np.int64),
        rng.random((_PARALLEL_COPY_BYTES // 64 + 3, 16), dtype=np.float32),
        rng.random((_PARALLEL_COPY_BYTES // 4, 2))[:, 1],  # strided: copied by numpy
        np.arange(7, dtype=np.int16),
    ]
    arena = Arena(arrays)
    for given, packed in zip(arrays, arena.views):
        assert packed.dtype == given.dtype and packed.shape == given.shape
        assert np.array_equal(packed, given)


def test_recis_combine_tiles_group_id_and_indicators():
    s = make_sampler(small_table([1], [1], [1.0]))
    batch = [
        {"item": one_per_row([4, 5]), "_sample_group_id": torch.tensor([10, 11]), "age": torch.tensor([30.0, 40.0])},
        {"_indicator_user": torch.tensor([0, 1]), "user_feat": torch.tensor([7.0, 8.0])},
    ]
    table = {"item": torch.arange(5)}
    counts = torch.tensor([2, 1])
    out = s.combine(batch, table, counts)
    assert out[0]["_sample_group_id"].tolist() == [10, 10, 10, 11, 11]
    assert out[1]["_indicator_user"].tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(out[1]["user_feat"], batch[1]["user_feat"])
    assert "age" not in out[0] and batch[1]["_indicator_user"].tolist() == [0, 1]
    extra = s.combine(batch, table, counts, keep_positive_columns=True, label_column="label")[0]
    assert extra["age"].tolist() == [30.0, 30.0, 30.0, 40.0, 40.0]
    assert extra["label"].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert "item" in extra and torch.equal(extra["item"], table["item"])


def test_fused_sample_equals_the_five_calls_and_log_q_is_exact(catalogue):
    ids, cats, weights = catalogue
    table = small_table(ids, cats, weights)
    fused, stepwise = make_sampler(table, seed=9), make_sampler(table, seed=9)
    pos, cat = one_per_row([int(ids[1]), 999, int(ids[22])]), one_per_row([1, 2, 3])
    r = fused.sample(pos, 3, cat, default_value=int(ids[0]), return_log_q=True)
    neg = stepwise.sample_ids(pos, 3, cat)
    valid = stepwise.valid_sample_ids(pos.values(), int(ids[0]))
    combined = stepwise.combine_vector_with_sample_counts(valid, 3, neg)
    assert torch.equal(r.negative_ids, neg) and torch.equal(r.positive_ids, valid) and torch.equal(r.ids, combined)
    packed = stepwise.pack_feature(combined, int(ids[0]))
    assert torch.equal(r.features["w"], packed["w"])
    raw = stepwise.combine_vector_with_sample_counts(pos.values(), 3, neg)
    row_cat = np.repeat([1, 2, 3], 4)
    w_of = dict(zip(ids.tolist(), weights.tolist()))
    c_of = dict(zip(ids.tolist(), cats.tolist()))
    for t, item in enumerate(raw.tolist()):
        c = row_cat[t]
        mass = w_of.get(item, 0.0) if c_of.get(item) == c else 0.0
        want = np.log(mass / weights[cats == c].sum()) if mass else -np.inf
        assert np.isclose(r.log_q[t].item(), want, atol=1e-5), (t, item)


def test_main_job_runs_small(capsys):
    from gpu_negsample.__main__ import main

    main(["--items", "20000", "--categories", "50", "--batches", "5", "--batch-size", "256"])
    out = capsys.readouterr().out
    assert "negatives / s" in out and "pack_feature" in out
