"""Values chosen to break the index: INT64_MIN (the hash tables' empty-slot marker) as an
id or a category, on every path that probes a hash table, CPU and CUDA kernels alike."""
import numpy as np
import pytest
import torch

from gpu_negsample import RequestError
from conftest import make_sampler, one_per_row, small_table
from devices import KERNEL_DEVICES

INT64_MIN = -(2**63)
DEVICES = [pytest.param("cpu")] + KERNEL_DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_the_empty_marker_is_never_an_id_or_a_category(device):
    s = make_sampler(small_table([1, 2, 3, 4], [7, 7, 8, 8], [1.0, 2.0, 3.0, 4.0]), device=device)
    ids = torch.tensor([INT64_MIN, 2, INT64_MIN])
    assert s.valid_sample_ids(ids, 4).cpu().tolist() == [4, 2, 4]
    packed = s.pack_feature(ids, default_value=4)
    assert packed["item"].values().cpu().tolist() == [4, 2, 4]
    with pytest.raises(RequestError, match="default_value"):
        s.pack_feature(ids, default_value=INT64_MIN)
    with pytest.raises(RequestError, match=f"category {INT64_MIN} is not in the table"):
        s.sample_ids(one_per_row([1]), 2, one_per_row([INT64_MIN]))
    neg = s.sample_ids(one_per_row([INT64_MIN, 3]), 5, one_per_row([7, 8]), avoid_conflict_with_all_dedup_tags=True)
    assert np.isin(neg.cpu().numpy()[:5], [1, 2]).all() and (neg.cpu().numpy()[5:] == 4).all()
