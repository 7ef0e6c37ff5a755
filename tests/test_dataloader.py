"""LocalRpcDataSampler in torch DataLoader workers, under fork and spawn: a worker is one more
client of the job's server, with its own random stream, and leaves nothing behind."""
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gpu_negsample import LocalRpcDataSampler
from gpu_negsample.server.endpoint import job_dir, job_name, pid_alive
from gpu_negsample.server.service import rank_seed
from dataloader_workers import NegativesDataset, seed_in_worker
from server_tables import catalogue

TESTS = Path(__file__).parent


def check_negatives(batch, cat):
    """Each negative is in its positive's category and is not the positive."""
    category = dict(zip(cat.ids.tolist(), cat.categories.tolist()))
    pos = batch["positives"].numpy()
    neg = batch["negatives"].numpy().reshape(pos.shape[0], -1)
    assert not (neg == pos[:, None]).any(), "a positive came back as its own negative"
    want = np.array([category[p] for p in pos])
    got = np.vectorize(category.__getitem__)(neg)
    assert (got == want[:, None]).all(), "a negative outside its positive's category"


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_sampler_made_in_the_main_process_works_in_dataloader_workers(context):
    job = f"loader-{context}-{os.getpid()}"
    cat = catalogue()
    with LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", seed=1, name=job) as s:
        s.reload(cat.table)
        loader = DataLoader(NegativesDataset(s, 8), batch_size=None, num_workers=2, multiprocessing_context=context,
                            timeout=120)  # the old code hung in forked workers
        batches = list(loader)
        assert sorted({b["worker"] for b in batches}) == [0, 1]
        for batch in batches:
            check_negatives(batch, cat)
        # the same positives in two workers draw different negatives: each has its own stream
        first = {b["worker"]: b["negatives"] for b in batches if b["worker"] in (0, 1)}
        assert not torch.equal(first[0], first[1])
        workers = {b["pid"] for b in batches}
        assert s.sample_ids(*__import__("server_tables").positives(cat, 0)).numel() == 768  # the main one still works
        server = s.server_pid
    assert not any(pid_alive(pid) for pid in workers | {server}), "a process was left behind"
    assert not job_dir(job_name(job), create=False).exists()


def test_samplers_made_inside_workers_under_torchrun_print_no_traceback():
    """Every worker of local rank 0 believes it is local rank 0: one starts the server, the
    others join it, and nothing is printed about it."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), LOCAL_RANK="0", RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=f"inworkers{os.getpid()}")
    env.pop("TORCHELASTIC_RUN_ID", None)
    code = ("from torch.utils.data import DataLoader\n"
            "from dataloader_workers import NegativesDataset, make_rank_0_sampler\n"
            "n = sum(b['negatives'].numel() for b in DataLoader(NegativesDataset(None, 6, make_rank_0_sampler),\n"
            "        batch_size=None, num_workers=2, multiprocessing_context='spawn'))\n"
            "print('negatives', n)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == f"negatives {6 * 768}", proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "already has a sampling server" not in proc.stderr, proc.stderr


def test_a_pickled_copy_has_its_own_stream_seed_and_the_original_keeps_its_own():
    job = f"pickled-{os.getpid()}"
    with LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", seed=1, name=job) as s:
        with mp.get_context("spawn").Pool(1) as pool:
            theirs = pool.apply(seed_in_worker, (s,))
        assert theirs != s.seed == rank_seed(1, 0)
