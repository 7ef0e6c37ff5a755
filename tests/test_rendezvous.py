"""How the ranks of a job find their node's server, and only theirs: job names, ownership
of the socket directory, waiting for rank 0's reload, ranks started without a launcher."""
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest

from gpu_negsample import LocalRpcDataSampler, NotLoadedError
from server_tables import catalogue, positives
import server_workers as w

SPAWN = mp.get_context("spawn")
from gpu_negsample.server.endpoint import UnsafePathError, job_dir, job_name

NO_LAUNCHER = {"TORCHELASTIC_RUN_ID": "", "MASTER_PORT": "", "MASTER_ADDR": ""}


def test_different_names_never_give_the_same_job():
    long_a = "train-" + "x" * 70 + "-a.svc.cluster.local"
    long_b = "train-" + "x" * 70 + "-b.svc.cluster.local"  # differs only after 64 characters
    names = {job_name(n) for n in ("a/b", "a b", "a_b", "a:b", long_a, long_b)}
    assert len(names) == 6, names
    with mock.patch.dict(os.environ, NO_LAUNCHER):
        by_master = set()
        for addr in (long_a, long_b):
            os.environ.update(MASTER_ADDR=addr, MASTER_PORT="29500")
            by_master.add(job_name())
        assert len(by_master) == 2, by_master
        os.environ.update(TORCHELASTIC_RUN_ID="a/b")
        assert job_name() not in names | by_master  # a run id never meets an explicit name
    assert job_name("a/b") == job_name("a/b"), "the name must be stable for every rank"


def test_job_names_stay_readable_and_fit_a_socket_path():
    name = job_name("my-job.v2")
    assert name.startswith("my-job.v2-") and "/" not in name
    long = job_name("y" * 500)
    path = job_dir(long, create=False) / "server.sock"
    assert len(os.fsencode(path)) < 107, path


@pytest.fixture
def short_tmp():
    """A private base directory with a short path (pytest's tmp_path overflows an AF_UNIX address)."""
    path = tempfile.mkdtemp(prefix="gns")
    yield path
    shutil.rmtree(path)


def _other_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")


def _fake_server_dir(job, socket_mode=0o600, dir_mode=0o700, owner=None):
    """What another local user could leave under a shared temp dir: the job's directory with a
    listening socket in it."""
    directory = job_dir(job_name(job), create=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(directory / "server.sock"))
    sock.listen()
    os.chmod(directory / "server.sock", socket_mode)
    os.chmod(directory, dir_mode)
    if owner is not None:
        os.chown(directory, owner, owner)
    return directory, sock


@pytest.mark.parametrize("case", ["directory mode", "socket mode", "owner", "symlink"])
def test_a_rank_refuses_a_job_directory_or_socket_that_is_not_its_own(monkeypatch, short_tmp, case):
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_tmp)
    _other_rank(monkeypatch)
    job = f"fake-{case}"
    if case == "symlink":  # a link to a directory that holds another server's socket
        real, sock = _fake_server_dir("elsewhere")
        (job_dir(job_name(job), create=False)).symlink_to(real)
    elif case == "owner":
        if os.getuid() != 0:
            pytest.skip("giving a directory to another user needs root")
        real, sock = _fake_server_dir(job, owner=4242)
    else:
        real, sock = _fake_server_dir(job, dir_mode=0o755 if case == "directory mode" else 0o700,
                                      socket_mode=0o666 if case == "socket mode" else 0o600)
    with sock, pytest.raises(UnsafePathError, match=r"uid|mode|symlink") as error:
        LocalRpcDataSampler("category", "item_id", "weight", device="cpu", name=job, connect_timeout=5)
    assert "another local user" in str(error.value) and "XDG_RUNTIME_DIR" in str(error.value)


def test_rank_0_before_its_own_reload_fails_at_once_other_ranks_wait_for_it():
    job = f"unloaded-{os.getpid()}"
    cat = catalogue()
    # wait_for_table_timeout is long: the old code waited it out before failing
    with LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job,
                             wait_for_table_timeout=60) as rank0:
        with pytest.raises(NotLoadedError, match="this process is local rank 0 .* call reload"):
            rank0.sample_ids(*positives(cat, 0))
        results = SPAWN.Queue()
        rank1 = SPAWN.Process(target=w.rank_1_before_reload, args=(job, results), daemon=True)
        rank1.start()
        message = results.get(timeout=120)
        assert message.startswith("NotLoadedError: sample_ids: waited 1 s for local rank 0 of job"), message
        rank0.reload(cat.table)  # the rank waiting again gets its answer from this table
        assert results.get(timeout=60) == "sampled 768"
        rank1.join(30)


def test_ranks_started_by_hand_without_launcher_variables_find_one_server():
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=w.started_by_hand, args=(rank, results), daemon=True) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    got = sorted(results.get(timeout=180) for _ in procs)
    for proc in procs:
        proc.join(30)
    (_, pid0, job0, n0), (_, pid1, job1, n1) = got
    assert isinstance(pid0, int), pid0
    assert (pid1, job1, n0, n1) == (pid0, job0, 768, 768), got
    assert job0.startswith(f"pgid{os.getpgrp()}-")


def test_a_hand_started_rank_that_no_rank_0_can_join_fails_at_once_saying_what_to_set():
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update(LOCAL_RANK="1", PYTHONPATH=str(Path(__file__).parent))
    code = ("from gpu_negsample import LocalRpcDataSampler\n"
            "LocalRpcDataSampler('category', 'item_id', 'weight', device='cpu')\n")
    # alone in a new session (so a process group of its own): the old code waited connect_timeout (120 s)
    proc = subprocess.run([sys.executable, "-c", code], env=env, start_new_session=True, capture_output=True,
                          text=True, timeout=90)
    assert "ServerError" in proc.stderr and "no other process is in that group" in proc.stderr, proc.stderr
    assert "name=" in proc.stderr and "MASTER_ADDR and MASTER_PORT" in proc.stderr


def test_a_killed_servers_pid_file_does_not_hold_the_job_once_its_pid_is_reused(tmp_path):
    """A server killed with SIGKILL (the OOM killer) leaves its pid file. Once another
    process gets that pid, the job must not count as served: rank 0 would start no server,
    a new server would refuse the job, and every rank would wait connect_timeout for a
    server that is not there, run after run, for as long as that process lives."""
    from gpu_negsample.server.endpoint import claim_job, live_server_pid, pid_path

    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from gpu_negsample.server.endpoint import claim_job; claim_job(Path(sys.argv[1]))", str(tmp_path)],
                   check=True, timeout=120)
    dead, *rest = pid_path(tmp_path).read_text().split(maxsplit=1)
    assert live_server_pid(tmp_path) is None  # the server is gone
    pid_path(tmp_path).write_text(" ".join([str(os.getpid()), *rest]))  # its pid now names this live process
    assert live_server_pid(tmp_path) is None, f"pid {dead}, reused by another process, still counts as the server"
    claim_job(tmp_path)
    assert live_server_pid(tmp_path) == os.getpid()


@pytest.mark.parametrize("var", ["LOCAL_RANK", "RANK"])
def test_a_rank_variable_that_is_not_a_number_is_named_in_the_error(monkeypatch, var):
    from gpu_negsample.server.endpoint import global_rank, local_rank

    monkeypatch.delenv("LOCAL_PROCESS_RANK", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv(var, "rank-1")
    with pytest.raises(ValueError, match=f"{var}='rank-1'.*a number"):
        local_rank(), global_rank()
