"""A request reads the loaded table once: a reload that lands in the middle of a request
never gives one answer parts of two tables (in-process and, through the same engine, in
the node server)."""
import numpy as np
import torch

from gpu_negsample import NegativeSampler
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG
from server_tables import catalogue, positives


def sampler_with_reload_midway(first, second):
    """A sampler on table `first` whose backend swaps in table `second` after the first
    kernel of every request (as a concurrent reload would)."""
    s = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=3, device="cpu")
    s.reload(first.table)
    engine = s.engine
    later = engine.build_state(second.table)
    backend = engine.backend
    sample = backend.sample

    def sample_then_reload(*args, **kwargs):
        out = sample(*args, **kwargs)
        engine.swap(later)
        return out
    backend.sample = sample_then_reload
    return s


def test_fused_sample_answers_from_the_table_it_started_on():
    a, b = catalogue(seed=5), catalogue(seed=6)
    assert not np.isin(a.ids, b.ids).any()
    s = sampler_with_reload_midway(a, b)
    r = s.sample(*positives(a, 0), default_value=int(a.ids[0]), return_log_q=True)
    assert np.isin(r.negative_ids.numpy(), a.ids).all()
    # the packed features are the rows of the very ids sampled, from table a
    assert torch.equal(r.features[DEDUP_TAG].values(), r.ids)
    row_of = {int(v): k for k, v in enumerate(a.ids)}
    rows = [row_of[int(i)] for i in r.ids]
    assert torch.equal(r.features["dense_0"], a.table["dense_0"][rows])
    assert torch.isfinite(r.log_q[1:]).all()  # negatives scored on table a, where they exist
