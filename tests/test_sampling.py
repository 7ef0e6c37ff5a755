"""Distribution, exclusion, skew and reproducibility of sample_ids against brute-force references."""
import numba
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from gpu_negsample import RaggedTensor, RequestError, UnsatisfiableRowError
from conftest import ALPHA, make_sampler, one_per_row, small_table


def expected_distribution(ids, item_cats, item_weights, row_cats, excluded):
    """p(x) over ids for a positive with categories row_cats and excluded ids (brute force)."""
    mass = np.zeros(len(ids))
    for x, (cats, ws) in enumerate(zip(item_cats, item_weights)):
        if ids[x] in excluded:
            continue
        for c, w in zip(cats, ws):
            if c in row_cats:
                mass[x] += w
    return mass / mass.sum()


def chi2_ok(counts, probs):
    keep = probs > 0
    assert counts[~keep].sum() == 0, "an item of probability 0 was drawn"
    expected = probs[keep] * counts.sum()
    return chisquare(counts[keep], expected).pvalue > ALPHA


def histogram(sampled, ids):
    pos = {int(v): k for k, v in enumerate(ids)}
    out = np.zeros(len(ids), dtype=np.int64)
    for v in sampled.tolist():
        out[pos[v]] += 1
    return out


def test_with_replacement_matches_category_conditional_weights(catalogue):
    ids, cats, weights = catalogue
    s = make_sampler(small_table(ids, cats, weights))
    for cat in (1, 2, 3):
        positive = int(ids[cats == cat][3])
        n = 40_000
        neg = s.sample_ids(one_per_row([positive]), n, one_per_row([cat]))
        probs = expected_distribution(ids, [[c] for c in cats], [[w] for w in weights], {cat}, {positive})
        assert chi2_ok(histogram(neg, ids), probs)


def test_popular_positive_is_excluded_with_bounded_draws(catalogue):
    ids, cats, weights = catalogue
    s = make_sampler(small_table(ids, cats, weights))
    popular = int(ids[0])  # 500 of category 1's ~600 weight: it sits in the category's head
    neg = s.sample_ids(one_per_row([popular]), 30_000, one_per_row([1]))
    assert popular not in set(neg.tolist())
    assert s.engine.last_attempts <= 1.2 * 30_000  # the tail is untouched: ~1 alias draw at most
    probs = expected_distribution(ids, [[c] for c in cats], [[w] for w in weights], {1}, {popular})
    assert chi2_ok(histogram(neg, ids), probs)


def test_multi_category_items_and_rows():
    ids = np.arange(100, 112)
    item_cats = [[1], [1, 2], [2], [2, 3], [3], [3, 1], [1], [2], [3], [1, 2, 3], [2], [3]]
    item_w = [[3], [1, 4], [2], [5, 1], [2], [1, 6], [2], [3], [4], [1, 1, 2], [7], [1]]
    cat_rt = RaggedTensor.from_rows(item_cats)
    w_rt = RaggedTensor(torch.tensor([w for ws in item_w for w in ws], dtype=torch.float64), cat_rt.offsets())
    s = make_sampler(small_table(ids, cat_rt, w_rt))
    positive = 109  # in all three categories
    for row_cats in ([1, 2], [2, 3], [1, 2, 3], [3]):
        neg = s.sample_ids(one_per_row([positive]), 40_000, RaggedTensor.from_rows([row_cats]))
        probs = expected_distribution(ids, item_cats, item_w, set(row_cats), {positive})
        assert chi2_ok(histogram(neg, ids), probs), row_cats


@pytest.mark.parametrize("weights", [
    [40.0, 20, 10, 5, 3, 2],                       # head only
    [40.0, 20, 10, 5, 3, 2, 6, 5, 4, 3, 2, 1],     # head and tail
])
def test_without_replacement_is_successive_weighted_sampling(weights):
    """Every ordered pair (a, b) of a row's two negatives has probability w_a / W * w_b / (W - w_a)
    (chi-square, alpha = ALPHA: a correct sampler fails once in 10,000 runs; seeded, so a run
    is repeatable). Checking only "distinct and not the positive" is not enough: RecIS's
    put_back=False draws k + 1, orders them with the heaviest pick last and drops that one when
    the positive is not among them, which passes such checks while under-drawing heavy items
    (a row's heaviest category item in 0.638 of rows against 0.774 exactly, on the benchmark
    table; ARCHITECTURE.md, "Without replacement"). This test fails such a sampler."""
    weights = np.asarray(weights)
    ids = np.arange(1, weights.size + 1)
    s = make_sampler(small_table(ids, [9] * weights.size, weights), put_back=False)
    trials = 30_000
    positive = 2  # weight 20 is excluded
    pos = one_per_row([positive] * trials)
    neg = s.sample_ids(pos, 2, one_per_row([9] * trials)).reshape(trials, 2).numpy()
    assert (neg[:, 0] != neg[:, 1]).all()
    assert not (neg == positive).any()
    rest = [i for i in ids if i != positive]
    w = {i: weights[i - 1] for i in rest}
    total = sum(w.values())
    cells = [(a, b) for a in rest for b in rest if a != b]
    probs = np.array([w[a] / total * w[b] / (total - w[a]) for a, b in cells])
    index = {cell: k for k, cell in enumerate(cells)}
    counts = np.zeros(len(cells), dtype=np.int64)
    for a, b in neg.tolist():
        counts[index[(a, b)]] += 1
    assert chi2_ok(counts, probs)


def test_without_replacement_takes_exact_fallback_when_little_remains():
    # 20 items: the 8 heaviest form the head (exact scans), the 12 light ones the tail. Asking
    # for 15 of the 20 drains the tail below half its mass: the tail's exact scan finishes.
    ids = np.arange(1, 21)
    weights = np.array([1000.0] * 8 + [1.0] * 12)
    s = make_sampler(small_table(ids, [5] * 20, weights), put_back=False)
    neg = s.sample_ids(one_per_row([99] * 500), 15, one_per_row([5] * 500)).reshape(500, 15).numpy()
    for row in neg:
        assert len(set(row.tolist())) == 15
        assert set(range(1, 9)) <= set(row.tolist())  # heavy items all come first, almost surely
    assert s.engine.last_attempts < 2 * neg.size


def test_batch_wide_exclusion_never_returns_a_batch_id(catalogue):
    ids, cats, weights = catalogue
    s = make_sampler(small_table(ids, cats, weights))
    batch_ids = ids[cats == 2][:8]  # 8 of category 2's 10 items: the exact scan path
    neg = s.sample_ids(one_per_row(batch_ids), 2000, one_per_row([2] * 8),
                       avoid_conflict_with_all_dedup_tags=True)
    assert not set(neg.tolist()) & set(batch_ids.tolist())
    probs = expected_distribution(ids, [[c] for c in cats], [[w] for w in weights], {2}, set(batch_ids.tolist()))
    assert chi2_ok(histogram(neg, ids), probs)


def heavy_tail_table():
    """One category: a head of 8 items (11..18), then a tail of 24 items of weight 10 (the
    batch's ids below: 240 of the tail's 279, so the tail is heavy) and 6 kept (4..9)."""
    weights = np.concatenate([np.arange(18.0, 10.0, -1), np.full(24, 10.0), np.arange(4.0, 10.0)])
    ids = np.arange(1, weights.size + 1)
    return ids, weights, ids[8:32]


def test_heavy_tail_binary_search_picks_what_the_exact_scan_picks():
    """In a tail the batch's ids hold more than half of, a draw searches the call's prefix sums
    of the weights without them: for every target it must land where the exact scan does."""
    from gpu_negsample.backends.cpu.sample import _prefix_search, _scan
    from gpu_negsample.backends.exclusion import batch_set, exclusion, heavy_tail

    rng = np.random.default_rng(3)
    weights = rng.pareto(1.1, 400) + 0.001
    weights[rng.choice(400, 30, replace=False)] = 0.0  # zero weights never hold a target
    ids = np.arange(1000, 1400)
    s = make_sampler(small_table(ids, [1] * 400, weights))
    ix = s.engine.state.index.arrays
    lo, hi = int(ix.seg_offsets[0] + ix.seg_head[0]), int(ix.seg_offsets[1])
    tail_ids = ix.seg_ids[lo:hi]
    batch = np.concatenate([tail_ids[:150], tail_ids[200:330], [5]])  # most of the tail, an absent id
    empty = np.zeros(0, np.int64)
    ex = exclusion(ix, np.zeros(2, np.int64), empty, empty, batch_set(batch))
    assert heavy_tail(ix, 0, ex.batch_tail_mass[0])
    mass = int(ix.seg_total[0] - ix.seg_head_mass[0] - ex.batch_tail_mass[0])
    assert int(ex.batch_cum[hi] - ex.batch_cum[lo]) == mass
    bounds = (ex.batch_cum[lo + 1:hi + 1] - ex.batch_cum[lo]).astype(np.int64)
    targets = np.unique(np.concatenate([[0, mass - 1], bounds[bounds < mass], (bounds - 1)[bounds > 0],
                                        rng.integers(0, mass, 2000)]))
    out = np.zeros(1, np.int64)
    for t in targets.tolist():
        want = _scan(ix, ex, lo, hi, np.uint64(t), 0, 0, False, out, 0, 0)
        assert _prefix_search(ex, lo, hi, np.uint64(t)) == want >= 0, t


@pytest.mark.parametrize("put_back", [True, False])
def test_batch_wide_heavy_tail_draws_are_exact(put_back):
    """Draws from a heavy tail (binary search in the prefix sums without the batch's ids):
    with replacement, each kept item by its weight; without, every ordered pair (a, b) of a
    row's two negatives with probability w_a / W * w_b / (W - w_a) (a second pick of the
    first item from the tail is rejected and redrawn)."""
    ids, weights, batch = heavy_tail_table()
    s = make_sampler(small_table(ids, [7] * ids.size, weights), put_back=put_back)
    rows, k = (3000, 20) if put_back else (30_000, 2)
    positives = one_per_row(np.resize(batch, rows))
    neg = s.sample_ids(positives, k, one_per_row([7] * rows), avoid_conflict_with_all_dedup_tags=True)
    kept = [int(i) for i in ids if i not in set(batch.tolist())]
    w = {i: weights[i - 1] for i in kept}
    total = sum(w.values())
    if put_back:
        probs = expected_distribution(ids, [[7]] * ids.size, [[x] for x in weights], {7}, set(batch.tolist()))
        assert chi2_ok(histogram(neg, ids), probs)
        return
    pairs = neg.reshape(rows, 2).numpy()
    cells = [(a, b) for a in kept for b in kept if a != b]
    index = {cell: n for n, cell in enumerate(cells)}
    counts = np.zeros(len(cells), dtype=np.int64)
    for a, b in pairs.tolist():
        counts[index[(a, b)]] += 1
    probs = np.array([w[a] / total * w[b] / (total - w[a]) for a, b in cells])
    assert chi2_ok(counts, probs)


def test_exclusion_holds_for_random_requests(catalogue):
    ids, cats, weights = catalogue
    rng = np.random.default_rng(5)
    for put_back in (True, False):
        s = make_sampler(small_table(ids, cats, weights), put_back=put_back)
        for _ in range(20):
            rows = rng.integers(0, 40, size=64)
            rows = rows[weights[rows] > 0]
            counts = torch.from_numpy(rng.integers(0, 4, size=rows.size))
            neg = s.sample_ids(one_per_row(ids[rows]), counts, one_per_row(cats[rows])).numpy()
            owner = np.repeat(ids[rows], counts.numpy())
            assert (neg != owner).all()
            assert (cats[np.searchsorted(ids, neg)] == np.repeat(cats[rows], counts.numpy())).all()


def test_avoid_conflict_false_can_return_the_positive():
    s = make_sampler(small_table([1, 2], [3, 3], [1.0, 1.0]))
    neg = s.sample_ids(one_per_row([1]), 200, one_per_row([3]), avoid_conflict=False)
    assert set(neg.tolist()) == {1, 2}


def test_missing_sample_tag_means_whole_table(catalogue):
    ids, cats, weights = catalogue
    s = make_sampler(small_table(ids, cats, weights))
    neg = s.sample_ids(one_per_row([int(ids[5])]), 60_000)
    probs = expected_distribution(ids, [[0]] * 40, [[w] for w in weights], {0}, {int(ids[5])})
    assert chi2_ok(histogram(neg, ids), probs)


def test_same_seed_same_results_on_any_thread_count(catalogue):
    ids, cats, weights = catalogue
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 40, size=300)
    rows = rows[weights[rows] > 0]
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            for put_back in (True, False):
                s = make_sampler(small_table(ids, cats, weights), seed=42, put_back=put_back)
                results.append([s.sample_ids(one_per_row(ids[rows]), 3, one_per_row(cats[rows])) for _ in range(3)])
    finally:
        numba.set_num_threads(before)
    half = len(results) // 2
    for a, b in zip(results[:half], results[half:]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(results[0][0], results[0][1])  # successive calls differ
    other = make_sampler(small_table(ids, cats, weights), seed=43)
    assert not torch.equal(other.sample_ids(one_per_row(ids[rows]), 3, one_per_row(cats[rows])), results[0][0])


def test_counts_zero_and_per_positive(catalogue):
    ids, cats, weights = catalogue
    s = make_sampler(small_table(ids, cats, weights))
    neg = s.sample_ids(one_per_row(ids[:3]), torch.tensor([0, 2, 0]), one_per_row(cats[:3]))
    assert neg.shape == (2,)
    assert s.sample_ids(one_per_row(ids[:3]), 0, one_per_row(cats[:3])).shape == (0,)


def test_rows_in_blocks_of_different_sizes_keep_their_categories(catalogue):
    """Counts that differ by row give a request's blocks of rows different numbers of draws
    while a thread's scratch is sized for its largest block. Before: without replacement a
    smaller block left its speculated weights unset, the row's remaining mass went wrong and
    negatives came from other categories (tests/test_stress.py found it on 50K items)."""
    ids, cats, weights = catalogue
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 40, size=2000)
    rows = rows[weights[rows] > 0]
    counts = rng.integers(0, 4, size=rows.size)
    for put_back in (True, False):
        s = make_sampler(small_table(ids, cats, weights), put_back=put_back)
        for _ in range(3):
            neg = s.sample_ids(one_per_row(ids[rows]), torch.from_numpy(counts), one_per_row(cats[rows])).numpy()
            assert (cats[np.searchsorted(ids, neg)] == np.repeat(cats[rows], counts)).all()
            assert (neg != np.repeat(ids[rows], counts)).all()
            if not put_back:
                starts = np.concatenate([[0], np.cumsum(counts)])
                assert all(np.unique(neg[a:b]).size == b - a for a, b in zip(starts[:-1], starts[1:]))


def test_first_unknown_category_and_failed_row_across_blocks_and_threads(catalogue):
    """The kernels count unknown categories and failed rows per thread and merge the counts
    and first positions; the error must name the request's first one, wherever the blocks
    that hold them ran (300 rows: 5 blocks over 2 threads, taken in any order)."""
    ids, cats, weights = catalogue
    rows = np.flatnonzero(weights > 0)[np.arange(300) % 39]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        s = make_sampler(small_table(ids, cats, weights))
        tags = cats[rows].copy()
        tags[[250, 130, 299]] = 99
        for _ in range(5):
            with pytest.raises(RequestError, match=r"positive row 130: category 99 is not in the table \(3 unknown"):
                s.sample_ids(one_per_row(ids[rows]), 2, one_per_row(tags))
        # a row whose category holds only its own positive cannot get a negative
        lonely = np.concatenate([ids, [999]])
        table = small_table(lonely, np.concatenate([cats, [7]]), np.concatenate([weights, [1.0]]))
        s = make_sampler(table, put_back=False)
        pos, tags = ids[rows].copy(), cats[rows].copy()
        pos[[290, 70, 200]], tags[[290, 70, 200]] = 999, 7
        for _ in range(5):
            with pytest.raises(UnsatisfiableRowError, match=r"positive row 70 .* 3 row\(s\) fail in all"):
                s.sample_ids(one_per_row(pos), 2, one_per_row(tags))
    finally:
        numba.set_num_threads(before)
