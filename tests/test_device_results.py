"""Every device tensor a request returns is handed over to the caller's stream.

On a GPU a request's tensors come from torch's caching allocator on the sampler's own
stream; ``hand_over`` records them on the caller's stream, so memory the caller still reads
there is not given to the sampler's next request. A returned tensor that was not handed
over (a view of the request's staged inputs) could be overwritten by the next request's
upload while the caller's kernels read it. Checked on the emulated device (its hand_over
is spied on): which tensors a request hands over is host logic, the same on both.
"""
import numpy as np
import pytest
import torch

from gpu_negsample import RaggedTensor
from gpu_negsample.backends.cuda.emulated_device import EmulatedDevice
from conftest import make_sampler, one_per_row
from devices import needs_gxx
from test_cuda_parity import feature_table

pytestmark = needs_gxx


def tensors_of(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, RaggedTensor):
        yield from (value.values(), *value.offsets(), *([value.weight()] if value.weight() is not None else []))
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_of(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from tensors_of(v)


@pytest.fixture
def handed_over(monkeypatch):
    storages = set()
    original = EmulatedDevice.hand_over

    def spy(self, tensors):
        storages.update(t.untyped_storage().data_ptr() for t in tensors)
        return original(self, tensors)

    monkeypatch.setattr(EmulatedDevice, "hand_over", spy)
    return storages


def test_every_tensor_of_a_fused_sample_is_handed_over(handed_over):
    ids, table = feature_table(n=60, seed=2)
    s = make_sampler(table, device="emulated", seed=5)
    cats = np.asarray(table["cat"].values())
    r = s.sample(one_per_row(ids[:8]), 3, one_per_row(cats[:8]), default_value=int(ids[0]), return_log_q=True)
    results = {"negative_ids": r.negative_ids, "positive_ids": r.positive_ids, "ids": r.ids,
               "sample_counts": r.sample_counts, "log_q": r.log_q, **r.features}
    not_handed = [name for name, value in results.items()
                  for t in tensors_of(value) if t.untyped_storage().data_ptr() not in handed_over]
    assert not not_handed, f"returned without being handed over to the caller's stream: {not_handed}"
