"""How the node server's life follows its users: a process that fails without close(), a
sampler made in a thread that ends, several samplers in one job."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from gpu_negsample import LocalRpcDataSampler
from gpu_negsample.server.endpoint import job_dir, job_name, pid_alive
from gpu_negsample.server.service import LIVENESS_PERIOD_S
from server_tables import catalogue, positives

TESTS = Path(__file__).parent
OTHER_RANKS_WAIT_S = 30  # what local rank 0's close() gives other ranks; an exit must not wait it out


def client(job, **kw):
    return LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, seed=1, **kw)


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
