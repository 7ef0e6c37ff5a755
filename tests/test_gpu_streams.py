"""The CUDA backend on a real GPU as a training job uses it: a prefetch thread, several samplers
(one per rank) on their own streams at once, results used on the caller's own stream. Each
result is compared with the CPU path's, id for id. Skipped without a GPU (bench/device_check.sh
runs them)."""
import numpy as np
import pytest
import torch

from gpu_negsample import prefetch
from conftest import make_sampler, one_per_row
from devices import in_threads, needs_gpu
from test_cuda_parity import feature_table

pytestmark = [needs_gpu, pytest.mark.gpu]


def batches(ids, cats, n_batches, size=256, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        rows = rng.choice(len(ids), size)
        yield one_per_row(ids[rows]), one_per_row(cats[rows])


@pytest.fixture(scope="module")
def table():
    ids, table = feature_table(n=2000, seed=4)
    return ids, np.asarray(table["cat"].values()), table


def test_a_prefetch_thread_samples_on_the_gpu_as_the_cpu_does(table):
    ids, cats, t = table
    gpu, cpu = make_sampler(t, device="cuda", seed=3), make_sampler(t, device="cpu", seed=3)
    want = [cpu.sample(d, 5, c, default_value=int(ids[0])).ids for d, c in batches(ids, cats, 6)]
    with prefetch(batches(ids, cats, 6), lambda b: gpu.sample(b[0], 5, b[1], default_value=int(ids[0]))) as stream:
        got = [r.ids for r in stream]
    assert all(g.is_cuda for g in got)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))


def test_samplers_of_several_ranks_run_at_once_on_their_own_streams(table):
    ids, cats, t = table
    samplers = [make_sampler(t, device="cuda", seed=10 + r) for r in range(4)]
    assert len({s.engine.backend.device.stream.cuda_stream for s in samplers}) == 4
    results = in_threads(lambda r: [samplers[r].sample_ids(d, 7, c) for d, c in batches(ids, cats, 8, seed=r)], 4)
    for r in range(4):
        cpu = make_sampler(t, device="cpu", seed=10 + r)
        want = [cpu.sample_ids(d, 7, c) for d, c in batches(ids, cats, 8, seed=r)]
        assert all(torch.equal(g.cpu(), w) for g, w in zip(results[r], want)), r


def test_results_are_ready_on_the_callers_own_stream(table):
    ids, cats, t = table
    gpu, cpu = make_sampler(t, device="cuda", seed=8), make_sampler(t, device="cpu", seed=8)
    d, c = next(batches(ids, cats, 1, size=4096))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # the caller's earlier work, still running when the sampler is called
        got = gpu.sample_ids(d.values().cuda(), 10, c) + 0  # used on the caller's stream, no host wait
    side.synchronize()
    assert torch.equal(got.cpu(), cpu.sample_ids(d, 10, c))
