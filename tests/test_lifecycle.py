"""How the node server's life follows its users: a process that fails without close(), a
sampler made in a thread that ends, several samplers in one job."""
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from gpu_negsample import LocalRpcDataSampler
from gpu_negsample.server.endpoint import job_dir, job_name, pid_alive
from gpu_negsample.server.service import LIVENESS_PERIOD_S
from server_tables import catalogue, positives
import server_workers as w

SPAWN = mp.get_context("spawn")

TESTS = Path(__file__).parent
OTHER_RANKS_WAIT_S = 30  # what local rank 0's close() gives other ranks; an exit must not wait it out


def client(job, **kw):
    kw.setdefault("seed", 1)
    return LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, **kw)


def run_script(name, job):
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.Popen([sys.executable, str(TESTS / "lifecycle_scripts.py"), name, job], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_process_that_ends_without_close_exits_promptly_and_takes_its_server_along():
    job = f"noclose-{os.getpid()}"
    proc = run_script("raise_without_close", job)
    line = proc.stdout.readline()
    assert line.startswith("server "), proc.stderr.read()
    server = int(line.split()[1])
    # the old code waited OTHER_RANKS_WAIT_S for other ranks at exit; anything well under it passes
    _, err = proc.communicate(timeout=OTHER_RANKS_WAIT_S / 2)
    assert proc.returncode == 1 and "RuntimeError: training failed" in err, err
    assert not pid_alive(server)
    assert not job_dir(job_name(job), create=False).exists()


def test_a_sampler_made_in_a_thread_that_ends_keeps_its_server():
    """The server watches the process that started it, not the thread (PR_SET_PDEATHSIG
    fires when the starting thread ends)."""
    cat = catalogue()
    made = {}
    thread = threading.Thread(target=lambda: made.update(s=client(f"thread-{os.getpid()}")))
    thread.start()
    thread.join()
    with made["s"] as s:
        time.sleep(2 * LIVENESS_PERIOD_S)  # long enough for the server to notice a death and stop
        s.reload(cat.table)
        assert s.sample_ids(*positives(cat, 0)).shape == (128 * 6,)
        assert pid_alive(s.server_pid)


def test_one_server_hosts_several_samplers_each_with_its_own_settings_and_table():
    job = f"several-{os.getpid()}"
    a, b = catalogue(seed=5), catalogue(seed=6)
    with client(job, seed=3) as plain, client(job, seed=3, put_back=False) as distinct:
        plain.reload(a.table)
        distinct.reload(b.table)
        assert plain.server_pid == distinct.server_pid
        results = SPAWN.Queue()
        rank1 = SPAWN.Process(target=w.several_samplers, args=(1, job, results), daemon=True)
        rank1.start()
        assert [results.get(timeout=180) for _ in range(3)] == [True, True, True]
        rank1.join(30)
        ids = distinct.sample_ids(*positives(b, 1)).numpy().reshape(128, 6)
        assert all(len(set(row)) == 6 for row in ids), "put_back=False must give distinct negatives"
        assert np.isin(plain.sample_ids(*positives(a, 1)).numpy(), a.ids).all()
    assert not job_dir(job_name(job), create=False).exists()


def test_a_new_sampler_right_after_close_of_the_first_works():
    job = f"again-{os.getpid()}"
    cat = catalogue()
    with client(job) as holder:  # keeps the job's server up between the others
        holder.reload(cat.table)
        for put_back in (False, False, True):  # other settings, the same again, then the holder's
            with client(job, put_back=put_back) as s:
                assert s.server_pid == holder.server_pid
                s.reload(cat.table)
                assert s.sample_ids(*positives(cat, 0)).shape == (128 * 6,)
        assert holder.sample_ids(*positives(cat, 0)).shape == (128 * 6,)
    assert not job_dir(job_name(job), create=False).exists()


def test_a_rank_whose_settings_match_no_sampler_of_rank_0_is_told_both():
    job = f"mismatch-{os.getpid()}"
    with client(job):
        results = SPAWN.Queue()
        rank1 = SPAWN.Process(target=w.other_settings, args=(1, job, results), daemon=True)
        rank1.start()
        message = results.get(timeout=180)  # the rank's connect_timeout is 120 s: this comes at once
        rank1.join(30)
    assert message.startswith("RequestError") and "put_back: rank 0 True, this rank False" in message, message
