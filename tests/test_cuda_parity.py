"""The CUDA backend (on the g++ emulation here, on a GPU where there is one) returns exactly
the CPU backend's ids and features for the same seed and calls."""
import numpy as np
import pytest
import torch

from gpu_negsample import NegativeSampler, RaggedTensor
from gpu_negsample.errors import UnsatisfiableRowError
from conftest import make_sampler, one_per_row, small_table
from devices import HAS_GPU, KERNEL_DEVICES


def ragged(rows, dtype=torch.int64):
    values = torch.tensor([v for r in rows for v in r], dtype=dtype)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(r) for r in rows])]), dtype=torch.int64)
    return RaggedTensor(values, offsets)


def multi_category_table(n=300, n_cats=6, seed=0):
    """Items in 1-3 categories each, one weight per (item, category), a few heavy items."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(1000, 1000 + 3 * n))[:n]
    cats = [sorted(rng.choice(n_cats, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(n)]
    weights = [(rng.pareto(1.2, size=len(c)) + 0.01).tolist() for c in cats]
    for r in rng.choice(n, 5, replace=False):
        weights[r] = [w * 500 for w in weights[r]]
    weights[3] = [0.0] * len(cats[3])
    return ids, cats, small_table(ids, ragged(cats), ragged(weights, torch.float32))


def pair(table, device, **kw):
    return make_sampler(table, device="cpu", **kw), make_sampler(table, device=device, **kw)


def assert_same_calls(cpu, dev, calls):
    """Each call on both samplers, in order (the call counter is part of the random stream)."""
    for args, kwargs in calls:
        want = cpu.sample_ids(*args, **kwargs)
        got = dev.sample_ids(*args, **kwargs)
        assert got.device.type == ("cpu" if dev.engine.backend.name.startswith("cuda on CPU emulation") else "cuda")
        assert torch.equal(got.cpu(), want), (args[1], kwargs)
        assert dev.engine.last_attempts in (None, cpu.engine.last_attempts)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_with_replacement_single_and_multi_category(device):
    ids, cats, table = multi_category_table()
    cpu, dev = pair(table, device, seed=11)
    rng = np.random.default_rng(1)
    rows = rng.choice(len(ids), 64)
    positives = one_per_row(ids[rows])
    one_cat = one_per_row([cats[r][0] for r in rows])
    several = ragged([cats[r] for r in rows])
    counts = torch.from_numpy(rng.integers(0, 12, size=64))
    assert_same_calls(cpu, dev, [
        ((positives, 9, one_cat), {}),
        ((positives, counts, several), {}),           # uneven counts: the row of each draw by search
        ((positives, 5, None), {}),                    # no categories: the one-category index
        ((positives, 7, several), {"avoid_conflict": False}),
        ((positives, 6, one_cat), {"avoid_conflict_with_all_dedup_tags": True}),
    ])


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_batch_wide_tail_tables_of_skewed_weights_with_repeated_and_absent_ids(device):
    """The heavy tails' prefix sums, a scan over every position on the device, per heavy tail
    on the host, give the same draws."""
    rng = np.random.default_rng(8)
    ids, cats = np.arange(1000, 1300), np.repeat([1, 2, 3], 100)
    table = small_table(ids, cats, rng.pareto(1.1, 300) + 0.001)
    cpu, dev = pair(table, device, seed=21)
    tails = [ids[8:90], ids[108:150], ids[200:203]]  # most of tail 1, part of tail 2, a little of tail 3
    chosen = np.concatenate(tails + [ids[8:20], [5, 6, np.iinfo(np.int64).min]])  # repeats, absent ids, INT64_MIN
    positives = one_per_row(chosen)
    tags = one_per_row(np.where(chosen >= 1200, 3, np.where(chosen >= 1100, 2, 1)))
    assert_same_calls(cpu, dev, [((positives, 7, tags), {"avoid_conflict_with_all_dedup_tags": True})] * 3)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_batch_wide_heavy_tails_without_replacement(device):
    """Heavy tails drawn by search in the prefix sums, a row's earlier picks rejected and
    redrawn, the exact scan once a row has drawn its tail down: the same ids on both paths."""
    from gpu_negsample.backends.exclusion import batch_exclusion, batch_set, heavy_tail

    rng = np.random.default_rng(9)
    ids, cats = np.arange(1000, 1300), np.repeat([1, 2, 3], 100)
    table = small_table(ids, cats, rng.pareto(1.1, 300) + 0.001)
    cpu, dev = pair(table, device, seed=29, put_back=False, unsatisfiable="fill", fill_id=-9)
    chosen = np.concatenate([ids[8:80], ids[100:180], ids[230:240]])
    ix = cpu.engine.state.index.arrays
    _, tail_out = batch_exclusion(ix, batch_set(chosen)[1], 3)
    assert [heavy_tail(ix, seg, tail_out[seg]) for seg in range(3)] == [True, True, False]
    tags = one_per_row(np.where(chosen >= 1200, 3, np.where(chosen >= 1100, 2, 1)))
    counts = torch.from_numpy(rng.integers(1, 16, size=chosen.size))
    assert_same_calls(cpu, dev, [((one_per_row(chosen), counts, tags), {"avoid_conflict_with_all_dedup_tags": True})] * 2)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_row_exclusion_of_most_of_a_tail_takes_the_exact_scan(device):
    ids, cats = np.arange(100, 160), np.repeat([1, 2], 30)
    table = small_table(ids, cats, np.linspace(1, 3, 60))
    cpu, dev = pair(table, device, seed=5)
    excluded = [ids[:26].tolist(), ids[30:36].tolist() + [7777], ids[:29].tolist()]
    assert_same_calls(cpu, dev, [((ragged(excluded), 40, one_per_row([1, 2, 1])), {})])


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_batch_wide_exclusion_with_per_call_tail_tables(device):
    ids, cats = np.arange(10, 90), np.repeat([1, 2], 40)
    table = small_table(ids, cats, np.ones(80))
    cpu, dev = pair(table, device, seed=3)
    positives = one_per_row(ids[:30].tolist() + [ids[45]])  # most of category 1's tail
    assert_same_calls(cpu, dev, [((positives, 8, one_per_row([1] * 30 + [2])),
                                  {"avoid_conflict_with_all_dedup_tags": True})] * 2)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_without_replacement_including_rows_that_run_out(device):
    ids, cats, table = multi_category_table(seed=2)
    cpu, dev = pair(table, device, seed=21, put_back=False, unsatisfiable="fill", fill_id=-9)
    cat_of_row = [c[0] for c in cats]
    sizes = np.bincount(cat_of_row)
    rows = np.arange(0, 300, 7)
    counts = torch.tensor([min(int(sizes[cat_of_row[r]]) + 2, 60) if k % 5 == 0 else 10 for k, r in enumerate(rows)])
    assert_same_calls(cpu, dev, [((one_per_row(ids[rows]), counts, one_per_row([cat_of_row[r] for r in rows])), {})] * 2)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_without_replacement_over_many_blocks_of_uneven_counts(device):
    """A CPU thread's scratch is sized for its largest block of rows; blocks with fewer draws
    must decide exactly as the kernel's one thread per row does."""
    ids, cats, table = multi_category_table(seed=2)
    cpu, dev = pair(table, device, seed=23, put_back=False, unsatisfiable="fill", fill_id=-9)
    rng = np.random.default_rng(4)
    rows = rng.choice(len(ids), 500)
    counts = torch.from_numpy(rng.integers(0, 6, size=rows.size))
    tags = one_per_row([cats[r][0] for r in rows])
    assert_same_calls(cpu, dev, [((one_per_row(ids[rows]), counts, tags), {})] * 2)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_unsatisfiable_rows_raise_the_same_error(device):
    table = small_table([1, 2, 3], [1, 1, 2], [1.0, 1.0, 1.0])
    cpu, dev = pair(table, device, put_back=False)
    args = (one_per_row([1, 3, 2]), 2, one_per_row([1, 2, 1]))
    with pytest.raises(UnsatisfiableRowError) as want:
        cpu.sample_ids(*args)
    with pytest.raises(UnsatisfiableRowError) as got:
        dev.sample_ids(*args)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_alias_draw_counts_match_when_counted(device):
    ids, cats, table = multi_category_table(seed=4)
    cpu, dev = pair(table, device, seed=8)
    dev.engine.backend.count_attempts = True
    args = (one_per_row(ids[:50]), 10, one_per_row([c[0] for c in cats[:50]]))
    cpu.sample_ids(*args)
    dev.sample_ids(*args)
    assert dev.engine.last_attempts == cpu.engine.last_attempts > 0


def feature_table(n=97, seed=0):
    """Columns whose rows take every gather word size (1, 2, 4, 8, 16 bytes) and ragged value size."""
    rng = np.random.default_rng(seed)
    ids = np.arange(5000, 5000 + n)
    extra = {
        "u8x5": torch.from_numpy(rng.integers(0, 255, (n, 5)).astype(np.uint8)),
        "i16x3": torch.from_numpy(rng.integers(-99, 99, (n, 3)).astype(np.int16)),
        "f32": torch.from_numpy(rng.random(n).astype(np.float32)),
        "f64x1": torch.from_numpy(rng.random((n, 1))),
        "f32x4": torch.from_numpy(rng.random((n, 4)).astype(np.float32)),
        "tags": ragged([rng.integers(0, 50, rng.integers(0, 6)).tolist() for _ in range(n)]),
        "short_tags": ragged([rng.integers(0, 50, rng.integers(0, 4)).tolist() for _ in range(n)], torch.int16),
        "bytes": ragged([rng.integers(0, 9, rng.integers(0, 3)).tolist() for _ in range(n)], torch.uint8),
        "codes": [f"c{i % 1000:03d}" for i in range(n)],  # strings of one length
    }
    weighted = ragged([rng.integers(0, 9, 2).tolist() for _ in range(n)], torch.int32)
    extra["weighted"] = RaggedTensor(weighted.values(), weighted.offsets()[0], torch.rand(2 * n))
    return ids, small_table(ids, rng.integers(1, 4, n), rng.random(n) + 0.1, extra)


def assert_same_features(want: dict, got: dict):
    assert want.keys() == got.keys()
    for name, w in want.items():
        g = got[name]
        if isinstance(w, torch.Tensor):
            assert g.dtype == w.dtype and torch.equal(g.cpu(), w), name
        elif isinstance(w, RaggedTensor):
            assert torch.equal(g.values().cpu(), w.values()) and torch.equal(g.offsets()[0].cpu(), w.offsets()[0]), name
            assert (g.weight() is None) == (w.weight() is None), name
            if w.weight() is not None:
                assert torch.equal(g.weight().cpu(), w.weight()), name
        else:
            assert np.array_equal(g, w) and g.dtype == w.dtype, name


@pytest.mark.parametrize("budget", [None, 0], ids=["gpu-resident", "pinned-uva"])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_pack_feature_valid_ids_and_combine(device, budget):
    ids, table = feature_table()
    cpu, dev = pair(table, device, memory_budget=budget)
    rng = np.random.default_rng(3)
    query = torch.from_numpy(np.concatenate([rng.choice(ids, 200), [1, -3], ids[:1]]))
    default = int(ids[4])
    assert_same_features(cpu.pack_feature(query, default), dev.pack_feature(query, default))
    assert_same_features(cpu.pack_feature(query[:0], default), dev.pack_feature(query[:0], default))
    assert torch.equal(dev.valid_sample_ids(query, default).cpu(), cpu.valid_sample_ids(query, default))
    counts = torch.from_numpy(rng.integers(0, 4, size=query.numel()))
    sampled = torch.arange(int(counts.sum()))
    assert torch.equal(dev.combine_vector_with_sample_counts(query, counts, sampled).cpu(),
                       cpu.combine_vector_with_sample_counts(query, counts, sampled))
    where = "pinned host (UVA)" if budget == 0 else "gpu"
    lines = dev.describe().splitlines()
    assert all(line.endswith(where) for line in lines if line.split()[:1] in (["f32x4"], ["tags"], ["skey"]))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_fused_sample_matches(device):
    ids, table = feature_table(seed=1)
    cpu, dev = pair(table, device, seed=77)
    pos = one_per_row(ids[10:40])
    cats = one_per_row(np.asarray(table["cat"].values())[10:40])
    want = cpu.sample(pos, 4, cats, default_value=int(ids[0]), return_log_q=True)
    got = dev.sample(pos, 4, cats, default_value=int(ids[0]), return_log_q=True)
    for field in ("negative_ids", "positive_ids", "ids", "sample_counts"):
        assert torch.equal(getattr(got, field).cpu(), getattr(want, field)), field
    assert got.log_q.device == got.ids.device  # one result, one device
    assert torch.allclose(got.log_q.cpu(), want.log_q)
    assert_same_features(want.features, got.features)


def test_device_names_are_checked():
    with pytest.raises(ValueError, match="not one of"):
        NegativeSampler("cat", "item", "w", device="tpu")


@pytest.mark.skipif(HAS_GPU, reason="checks the choices of a machine without a GPU")
def test_without_a_gpu_auto_is_cpu_and_cuda_is_a_clear_error():
    assert NegativeSampler("cat", "item", "w", device="auto").engine.backend.name == "cpu"
    with pytest.raises(ValueError, match="CUDA device"):
        NegativeSampler("cat", "item", "w", device="cuda:0")
