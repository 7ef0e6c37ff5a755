"""What a request costs the device, counted on the emulated GPU: uploads, downloads, kernel
launches and host waits. The budgets are those of a request that lives on the device (one
upload of its inputs, a fixed chain of kernels, one wait at its end, one more to size a
pack's ragged and string outputs); a change that brings back per-array uploads or syncs
fails here, without a GPU."""
import numpy as np
import pytest
import torch

from gpu_negsample.backends.cuda.device import OpCounts
from gpu_negsample.backends.cuda.request import ALIGN
from gpu_negsample.backends.status import initial_counters
from conftest import make_sampler, one_per_row
from devices import needs_gxx
from test_cuda_parity import feature_table

pytestmark = needs_gxx


@pytest.fixture(scope="module")
def sampler():
    ids, table = feature_table(n=200, seed=3)  # dense, ragged (weighted too) and string columns
    s = make_sampler(table, device="emulated", seed=5)
    s.ids, s.cats = ids, np.asarray(table["cat"].values())
    return s


def cost(sampler, call) -> OpCounts:
    device = sampler.engine.backend.device
    before = OpCounts(**vars(device.counts))
    call()
    return device.counts - before


def within(got: OpCounts, **budget) -> bool:
    return all(getattr(got, name) <= most for name, most in budget.items())


def test_sample_ids_is_one_upload_two_launches_one_wait(sampler):
    args = (one_per_row(sampler.ids[:64]), 7, one_per_row(sampler.cats[:64]))
    got = cost(sampler, lambda: sampler.sample_ids(*args))
    assert got == OpCounts(uploads=1, downloads=1, launches=2, waits=1), got


def test_sample_ids_uploads_only_what_its_kernels_read(sampler, monkeypatch):
    """Offsets and ids of the excluded positives, category offsets and categories, output
    offsets and the counters: not the per-row counts (the output offsets carry them), which
    at 1M positives were 8 MB more to copy into the staging buffer on the host."""
    device = sampler.engine.backend.device
    uploaded, upload = [], device.upload
    monkeypatch.setattr(device, "upload", lambda host: uploaded.append(host.nbytes) or upload(host))
    n = 150
    sampler.sample_ids(one_per_row(sampler.ids[:n]), 7, one_per_row(sampler.cats[:n]))
    padded = -(-8 * (n + 1) // ALIGN) * ALIGN
    assert len(uploaded) == 1 and uploaded[0] <= 5 * padded + -(-initial_counters().nbytes // ALIGN) * ALIGN, uploaded


def test_batch_wide_exclusion_stays_on_the_device(sampler):
    """Its hash set, masses and prefix sums are built on the device: no second upload, and no
    download of device-resident positives to deduplicate them on the host."""
    positives = torch.from_numpy(sampler.ids[:64])  # on the emulated device's memory, as a CUDA tensor would be
    rows = one_per_row(positives)
    got = cost(sampler, lambda: sampler.sample_ids(rows, 7, one_per_row(sampler.cats[:64]),
                                                   avoid_conflict_with_all_dedup_tags=True))
    # fill the hash set, zero the masses, batch_exclusion, batch_weights, their cumsum, part_masses,
    # sample_put_back
    assert got == OpCounts(uploads=1, downloads=1, launches=7, waits=1), got


def test_fused_sample_with_every_kind_of_column_waits_twice(sampler):
    args = (one_per_row(sampler.ids[:64]), 4, one_per_row(sampler.cats[:64]))
    got = cost(sampler, lambda: sampler.sample(*args, default_value=int(sampler.ids[0]), return_log_q=True))
    # uploads: the inputs, then the request's column descriptors (sized by the first wait)
    assert within(got, uploads=2, waits=2, launches=12), got


def test_lookups_and_pack_are_bounded_too(sampler):
    ids = torch.from_numpy(sampler.ids[:50])
    assert cost(sampler, lambda: sampler.valid_sample_ids(ids, -1)) == OpCounts(1, 1, 1, 1)
    assert within(cost(sampler, lambda: sampler.pack_feature(ids, int(sampler.ids[0]))), uploads=2, waits=2)
    got = cost(sampler, lambda: sampler.combine_vector_with_sample_counts(ids, 2, torch.arange(100)))
    assert got == OpCounts(1, 1, 1, 1), got


def test_device_operations_outside_a_request_are_refused(sampler):
    device = sampler.engine.backend.device
    with pytest.raises(RuntimeError, match="outside the device's active"):
        device.launch("valid_ids", 0, *([torch.zeros(1, dtype=torch.int64)] * 3), 0, 0, torch.zeros(1))
    with pytest.raises(RuntimeError, match="outside"):
        device.fetch([torch.zeros(1)])


def test_a_fused_result_lives_on_one_device(sampler):
    r = sampler.sample(one_per_row(sampler.ids[:8]), 2, one_per_row(sampler.cats[:8]),
                       default_value=int(sampler.ids[0]), return_log_q=True)
    tensors = [r.negative_ids, r.positive_ids, r.ids, r.sample_counts, r.log_q]
    assert len({t.device for t in tensors}) == 1 and r.log_q.dtype == torch.float32


@pytest.mark.parametrize("n_items, blocks, threads", [
    (4096, 128, 32),          # a 4096-row request: every one of 132 SMs gets a block
    (40960, 160, 256),        # 4096x10 draws
    (10_485_760, 132 * 32, 256),  # 1Mx10: capped, grid-stride loops do the rest
    (1, 1, 32),
    (0, 1, 32),
])
def test_launch_shapes_are_sized_per_launch(n_items, blocks, threads):
    from gpu_negsample.backends.cuda.device import launch_shape

    assert launch_shape(n_items, 132) == (blocks, threads)


def test_reload_warms_the_device_so_no_request_loads_kernels(monkeypatch):
    from gpu_negsample.backends.cuda.emulated_device import EmulatedDevice

    warmed = []
    monkeypatch.setattr(EmulatedDevice, "warm", lambda self: warmed.append(self))
    ids, table = feature_table(n=50, seed=1)
    s = make_sampler(table, device="emulated")
    assert warmed == [s.engine.backend.device]


def test_a_stream_is_for_a_sampler_on_a_gpu():
    with pytest.raises(ValueError, match="stream= is for a sampler on a GPU"):
        make_sampler(device="cpu", stream=object())
