"""Process bodies for test_server.py (spawned processes import them from here)."""
import os
import time
import traceback

import numpy as np
import torch


def as_rank(rank: int, job: str) -> None:
    """The environment torchrun gives a local process of one node."""
    os.environ.update(LOCAL_PROCESS_RANK=str(rank), LOCAL_RANK=str(rank), RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=job)


def job_of_ranks(job: str) -> str:
    """The job name the ranks of as_rank(rank, job) find their server by."""
    from unittest import mock

    from gpu_negsample.server.endpoint import job_name

    with mock.patch.dict(os.environ, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": job}):
        os.environ.pop("TORCHELASTIC_RUN_ID", None)
        return job_name()


def recis_example(rank: int, job: str, results) -> None:
    """RecIS's usage example in one local process: invariants of every combined batch."""
    try:
        as_rank(rank, job)
        from test_recis_example import load_example

        example = load_example()
        catalogue, fn = example.build(n_items=5000, n_categories=20)
        rng = np.random.default_rng(rank)
        per = example.sample_size
        for _ in range(3):
            batch = example.positive_batch(catalogue, 64, rng)
            table = fn(batch)[0]
            ids = table[example.dedup_tag].values().reshape(64, per)
            positives = batch[0][example.dedup_tag].values()
            assert torch.equal(ids[:, 0], positives)
            assert not (ids[:, 1:] == positives[:, None]).any(), "a positive came back as its own negative"
            cats = table[example.sample_tag].values().reshape(64, per)
            assert torch.equal(cats, batch[0][example.sample_tag].values()[:, None].expand(64, per))
        fn.sampler.close()
        results.put((rank, "ok"))
    except BaseException:
        results.put((rank, traceback.format_exc()))


def seeded_calls(rank: int, job: str, seed: int, delays: dict, results) -> None:
    """A rank's sample_ids results with a seed, started after its delay (timing must not matter)."""
    try:
        as_rank(rank, job)
        from gpu_negsample import LocalRpcDataSampler
        from server_tables import catalogue, positives

        cat = catalogue()
        with LocalRpcDataSampler("category", "item_id", "weight", "skey", seed=seed, device="cpu") as s:
            if rank == 0:
                s.reload(cat.table)
            time.sleep(delays[rank])
            out = [s.sample_ids(*positives(cat, call)).numpy() for call in range(4)]
            results.put((rank, out))
            results.put((rank, "done"))
            time.sleep(1.0)  # stay connected until every rank has answered
    except BaseException:
        results.put((rank, traceback.format_exc()))


def sample_forever(rank: int, job: str, results) -> None:
    """A client that samples until it is killed (or its server dies, which it reports)."""
    try:
        as_rank(rank, job)
        from gpu_negsample import LocalRpcDataSampler
        from server_tables import catalogue, positives

        cat = catalogue()
        s = LocalRpcDataSampler("category", "item_id", "weight", "skey", seed=1, device="cpu", name=job)
        if rank == 0:
            s.reload(cat.table)
        results.put((rank, "ready"))
        while True:
            s.sample_ids(*positives(cat, 0))
    except BaseException as e:
        results.put((rank, f"{type(e).__name__}: {e}"))


def rank_1_before_reload(job: str, results) -> None:
    """Local rank 1 before rank 0's reload: a request that gives up after its short wait, then
    one that waits until rank 0 has loaded the table."""
    try:
        os.environ.update(LOCAL_RANK="1", RANK="1")
        from gpu_negsample import LocalRpcDataSampler, NotLoadedError
        from server_tables import catalogue, positives

        with LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job,
                                 wait_for_table_timeout=1) as s:
            try:
                s.sample_ids(*positives(catalogue(), 0))
            except NotLoadedError as e:
                results.put(f"NotLoadedError: {e}")
            s._transport.wait_for_table_timeout = 120
            results.put(f"sampled {s.sample_ids(*positives(catalogue(), 0)).numel()}")
    except BaseException as e:
        results.put(f"{type(e).__name__}: {e}")


def started_by_hand(rank: int, results) -> None:
    """A rank of a job started by its own multiprocessing: LOCAL_RANK set by hand, no launcher
    variables, no name=. Reports the server it found."""
    try:
        for var in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "LOCAL_PROCESS_RANK", "RANK"):
            os.environ.pop(var, None)
        os.environ["LOCAL_RANK"] = str(rank)
        from gpu_negsample import LocalRpcDataSampler
        from server_tables import catalogue, positives

        cat = catalogue()
        with LocalRpcDataSampler("category", "item_id", "weight", "skey", seed=1, device="cpu",
                                 connect_timeout=60) as s:
            if rank == 0:
                s.reload(cat.table)
            results.put((rank, s.server_pid, s.job, s.sample_ids(*positives(cat, 0)).numel()))
            time.sleep(3)  # rank 0's server must stay until the other rank has sampled
    except BaseException as e:
        results.put((rank, f"{type(e).__name__}: {e}", None, None))


def several_samplers(rank: int, job: str, results) -> None:
    """Rank 1 of a job whose rank 0 hosts two samplers: it makes them in the other order (a
    sampler meets the one of the same settings and place) and reports which table each draws."""
    try:
        as_rank(rank, job)
        from gpu_negsample import LocalRpcDataSampler
        from server_tables import catalogue, positives

        distinct = LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job,
                                       put_back=False, seed=3)
        plain = LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, seed=3)
        for s, table in ((plain, catalogue(seed=5)), (distinct, catalogue(seed=6))):
            ids = s.sample_ids(*positives(table, 0)).numpy()
            results.put(bool(np.isin(ids, table.ids).all()))
        results.put(plain.server_pid == distinct.server_pid)
        plain.close()
        distinct.close()
    except BaseException:
        results.put(traceback.format_exc())


def other_settings(rank: int, job: str, results) -> None:
    """Rank 1 given other arguments than rank 0 (put_back=False): the error it gets."""
    try:
        as_rank(rank, job)
        from gpu_negsample import LocalRpcDataSampler

        LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, put_back=False)
        results.put("joined")
    except BaseException as e:
        results.put(f"{type(e).__name__}: {e}")


def second_rank_0(rank: int, job: str, results) -> None:
    """A second process that believes it is local rank 0 of a job that already has a server."""
    try:
        from gpu_negsample import LocalRpcDataSampler
        from server_tables import catalogue, positives

        with LocalRpcDataSampler("category", "item_id", "weight", "skey", seed=1, device="cpu", name=job) as s:
            started_one = s._transport._started is not None
            results.put((rank, (s.server_pid, started_one, s.sample_ids(*positives(catalogue(), 0)).numel())))
    except BaseException:
        results.put((rank, (traceback.format_exc(), None, None)))


def ranks_on_their_devices(rank: int, job: str, seed: int, barrier, results) -> None:
    """A rank sampling on its own emulated GPU (device='emulated:RANK', as torch users write
    'cuda:LOCAL_RANK'): two calls on table A, what describe() says, then a call after rank 0
    reloaded table B."""
    try:
        as_rank(rank, job)
        from gpu_negsample import LocalRpcDataSampler
        from server_tables import catalogue, positives

        a, b = catalogue(seed=5), catalogue(seed=6)
        with LocalRpcDataSampler("category", "item_id", "weight", "skey", seed=seed, device=f"emulated:{rank}") as s:
            if rank == 0:
                s.reload(a.table)
            calls = [s.sample_ids(*positives(a, call)).numpy() for call in range(2)]
            described = s.describe()
            barrier.wait(120)
            if rank == 0:
                s.reload(b.table)
            barrier.wait(120)
            after = s.sample_ids(*positives(b, 0)).numpy()
            results.put((rank, (calls, described, after)))
            barrier.wait(120)  # both answered before either leaves
    except BaseException:
        results.put((rank, traceback.format_exc()))
