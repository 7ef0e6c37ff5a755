"""A request reads the loaded table once: a reload that lands in the middle of a request
never gives one answer parts of two tables (in-process and, through the same engine, in
the node server)."""
import numpy as np
import torch

from gpu_negsample import NegativeSampler
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG
from gpu_negsample.ragged import RaggedTensor
from server_tables import assert_same_features, catalogue, positives


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


def scribble(table: dict) -> None:
    """Overwrite every array of a RecIS table in place, as a caller reusing its buffers would."""
    for value in table.values():
        if isinstance(value, RaggedTensor):
            value.values().neg_()
            value.offsets()[0].zero_()
        elif isinstance(value, torch.Tensor):
            value.fill_(7)
        else:  # RecIS's [array of str]
            value[0][:] = "scribbled"


def test_a_callers_later_writes_to_its_tensors_change_no_answer():
    """reload keeps copies only: the index, the features and the one-category index built on
    first use never read the caller's tensors, which it may reuse right after reload."""
    answers = []
    for scribbled in (False, True):
        cat = catalogue(seed=5)
        s = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=3, device="cpu")
        s.reload(cat.table)
        pos, k, cats = positives(catalogue(seed=5), 0)
        if scribbled:
            scribble(cat.table)
        fused = s.sample(pos, k, cats, default_value=int(pos.values()[0]), return_log_q=True)
        answers.append((fused, s.sample_ids(pos, k)))  # the second builds the one-category index now
    (want, want_any), (got, got_any) = answers
    for name in ("negative_ids", "positive_ids", "ids", "sample_counts", "log_q"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert_same_features(got.features, want.features)
    assert torch.equal(got_any, want_any)
