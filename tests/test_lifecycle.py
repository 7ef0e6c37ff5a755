"""How the node server's life follows its users: a process that fails without close(), a
sampler made in a thread that ends, several samplers in one job."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_negsample.server.endpoint import job_dir, job_name, pid_alive

TESTS = Path(__file__).parent
OTHER_RANKS_WAIT_S = 30  # what local rank 0's close() gives other ranks; an exit must not wait it out


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
