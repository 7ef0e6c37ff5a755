"""Random requests on a realistic catalogue: every contract checked on every row.

CI runs the bounded size; ``python -m pytest -m slow`` runs the 1M-item version."""
import numpy as np
import pytest
import torch

from gpu_negsample import NegativeSampler
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, WEIGHT_TAG, make_catalogue, positive_batch


def run_stress(n_items, n_categories, rounds, batch, wide_batch):
    cat = make_catalogue(n_items, n_categories, n_dense=1, n_ragged=1, strings=False, seed=5)
    category_of = dict(zip(cat.ids.tolist(), cat.categories.tolist()))
    rng = np.random.default_rng(6)
    for put_back in (True, False):
        s = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, None, put_back=put_back, seed=8, device="cpu")
        s.reload(cat.table, progress=False)
        row_batch = batch
        for r in range(rounds):
            # Batch-wide exclusion of a large batch removes most of the heavy categories' weight,
            # which sends draws to the O(category) exact scan (ARCHITECTURE.md): keep it smaller.
            wide = r % 2 == 1
            batch = wide_batch if wide else row_batch
            item = positive_batch(cat, batch, rng)[0]
            counts = torch.from_numpy(rng.integers(0, 12, size=batch))
            neg = s.sample_ids(item[DEDUP_TAG], counts, item[SAMPLE_TAG], avoid_conflict_with_all_dedup_tags=wide)
            pos = item[DEDUP_TAG].values().numpy()
            owner = np.repeat(np.arange(batch), counts.numpy())
            neg_np = neg.numpy()
            assert neg_np.shape[0] == int(counts.sum())
            assert (neg_np != pos[owner]).all()
            if wide:
                assert not np.isin(neg_np, pos).any()
            want = item[SAMPLE_TAG].values().numpy()[owner]
            assert np.array_equal(np.fromiter((category_of[v] for v in neg_np.tolist()), np.int64, neg_np.size), want)
            if not put_back:
                pairs = np.stack([owner, neg_np], 1)
                assert np.unique(pairs, axis=0).shape[0] == pairs.shape[0]
            assert s.engine.last_attempts <= 2 * neg_np.size


def test_stress_bounded():
    run_stress(50_000, 200, rounds=6, batch=2048, wide_batch=2048)


@pytest.mark.slow
def test_stress_full_size():
    run_stress(1_000_000, 1000, rounds=10, batch=65536, wide_batch=1024)
