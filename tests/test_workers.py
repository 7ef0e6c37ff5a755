"""NegativeSampler in DataLoader workers: forked workers sample (each its own random stream,
results checked), spawn refuses with an error that points to LocalRpcDataSampler, and a
child that cannot run the kernels (GNU OpenMP after fork) is told so instead of dying."""
import importlib.metadata
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gpu_negsample import NegativeSampler, SampledBatches
from tests.conftest import make_sampler, small_table

IDS = np.arange(1000, 1040)
CATS = np.repeat([1, 2, 3, 4], 10)
CATEGORY_OF = dict(zip(IDS.tolist(), CATS.tolist()))
K = 6
# Eight batches of the same positives: two of them drawn alike by chance has probability
# below 1e-20 (24 draws among 9 candidates each), so a repeat means a shared stream. Each
# batch has tensors of its own, as real batches do: a worker that returns a tensor hands it
# to a feeder thread that moves its storage into shared memory, freeing the old memory, so
# one tensor object returned by one batch and read by the next would be read after free.
POSITIVES = [(torch.tensor([1000, 1015, 1025, 1039]), torch.tensor([1, 2, 3, 4])) for _ in range(8)]


class WithNegatives:
    """The transform the workers run (a class, not a lambda: picklable under spawn)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, batch):
        ids, cats = batch
        return ids, self.sampler.sample_ids(ids, K, cats)


@pytest.fixture
def sampler():
    s = make_sampler(small_table(IDS, CATS, np.linspace(1, 4, 40)))
    s.sample_ids(torch.tensor([1000]), K, torch.tensor([1]))  # numba's threads run in the parent before the fork
    return s


def test_forked_workers_sample_in_category_without_the_positive_each_from_its_own_stream(sampler):
    children_before = set(multiprocessing.active_children())
    loader = DataLoader(SampledBatches(POSITIVES, WithNegatives(sampler)), batch_size=None, num_workers=2,
                        multiprocessing_context="fork")
    draws = []
    for ids, neg in loader:
        neg = neg.reshape(len(ids), K)
        for positive, row in zip(ids.tolist(), neg.tolist()):
            assert all(CATEGORY_OF[n] == CATEGORY_OF[positive] for n in row), (positive, row)
            assert positive not in row
        draws.append(tuple(neg.reshape(-1).tolist()))
    assert len(draws) == len(POSITIVES)
    assert len(set(draws)) == len(draws), "two workers (or two calls) repeated the same draws"
    assert set(multiprocessing.active_children()) <= children_before  # the workers are gone


def test_a_loaded_sampler_refuses_spawn_workers_pointing_to_the_server(sampler):
    children_before = set(multiprocessing.active_children())
    loader = DataLoader(SampledBatches(POSITIVES, WithNegatives(sampler)), batch_size=None, num_workers=1,
                        multiprocessing_context="spawn")
    with pytest.raises(TypeError, match="cannot be pickled.*LocalRpcDataSampler"):
        iter(loader)
    assert set(multiprocessing.active_children()) <= children_before


def test_a_sampler_without_a_table_pickles_its_settings():
    s = NegativeSampler("cat", "item", "w", None, put_back=False, seed=99, device="cpu")
    copy = pickle.loads(pickle.dumps(s))
    assert copy.config == s.config and copy.seed == 99 and not copy.engine.loaded


def test_without_tbb_a_forked_child_is_told_why_it_cannot_sample(tmp_path):
    """GNU OpenMP forced: the child gets an error naming the fix, not numba's abort."""
    script = textwrap.dedent("""
        import os, numpy as np, torch
        from tests.conftest import make_sampler, small_table
        s = make_sampler(small_table(np.arange(10, 20), np.ones(10, dtype=np.int64), np.ones(10)))
        s.sample_ids(torch.tensor([10]), 2, torch.tensor([1]))
        pid = os.fork()
        if pid == 0:
            try:
                s.sample_ids(torch.tensor([10]), 2, torch.tensor([1]))
                print("child sampled")
            except RuntimeError as e:
                print("child refused:", e)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="omp", PYTHONPATH=os.getcwd())
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "child refused:" in run.stdout and "pip install tbb" in run.stdout, run.stdout + run.stderr[-2000:]


def test_a_user_asking_numba_for_tbb_gets_it():
    """NUMBA_THREADING_LAYER=tbb: numba finds pip's libtbb (outside the loader's path) too."""
    try:
        importlib.metadata.version("tbb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the tbb package is not installed (a dependency on Linux x86-64 only)")
    script = ("import numpy as np, numba, torch\nfrom tests.conftest import make_sampler, small_table\n"
              "s = make_sampler(small_table(np.arange(10, 20), np.ones(10, dtype=np.int64), np.ones(10)))\n"
              "s.sample_ids(torch.tensor([10]), 2, torch.tensor([1]))\nprint('layer', numba.threading_layer())")
    env = dict(os.environ, NUMBA_THREADING_LAYER="tbb", PYTHONPATH=os.getcwd())
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "layer tbb" in run.stdout, run.stderr[-2000:]


class ReadsWhileTheLastResultIsSent:
    """A transform that reads its batch for a while (as a sampling kernel does) and hands its
    input tensor back, as a transform returning ``(ids, negatives)`` does."""

    def __call__(self, batch):
        ids = batch[0]
        before = ids.data_ptr()
        time.sleep(0.2)  # widens the window in which the feeder thread sends the previous result
        return ids, torch.tensor(ids.data_ptr() == before)


def test_a_tensor_shared_by_batches_is_not_moved_while_a_worker_reads_it():
    """The same tensor in every batch (a list made with ``[batch] * n``, a dataset caching
    its tensors): a worker's queue feeder thread moves a returned tensor's storage into
    shared memory, freeing the old memory, while the worker's next transform still reads it
    (use after free). SampledBatches moves results to shared memory before handing them on."""
    ids = torch.arange(1000, 1064)
    loader = DataLoader(SampledBatches([(ids,)] * 4, ReadsWhileTheLastResultIsSent()), batch_size=None, num_workers=1,
                        multiprocessing_context="fork")
    unmoved = [bool(same) for _, same in loader]
    assert unmoved == [True] * 4, "a batch's storage was freed while a transform read it"


class CountingBatches(torch.utils.data.Dataset):
    """A map-style dataset of positive batches that counts the batches it loads (reading a
    batch from disk is the loading process's real cost)."""

    def __init__(self, n):
        self.n, self.loaded = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise KeyError(i)  # as a dict- or frame-backed dataset does; no IndexError to stop iter()
        self.loaded.append(i)
        return i


def test_a_worker_loads_only_its_own_share_of_a_map_style_dataset(monkeypatch):
    batches = CountingBatches(12)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: type("Info", (), {"id": 1, "num_workers": 4}))
    assert list(SampledBatches(batches, lambda b: b * 10)) == [10, 50, 90]
    assert batches.loaded == [1, 5, 9]


def test_a_threading_layer_the_user_chose_in_numbas_config_is_kept():
    """numba.config.THREADING_LAYER set in code (numba's documented alternative to the
    environment variable) is the user's choice too: importing the package must not replace it."""
    script = ("import numba\nnumba.config.THREADING_LAYER = 'workqueue'\nimport gpu_negsample\n"
              "print('layer', numba.config.THREADING_LAYER)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "layer workqueue" in run.stdout, run.stdout + run.stderr[-2000:]
