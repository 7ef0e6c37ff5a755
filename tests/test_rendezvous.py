"""How the ranks of a job find their node's server, and only theirs: job names, ownership
of the socket directory, waiting for rank 0's reload, ranks started without a launcher."""
import os
from unittest import mock

import pytest

from gpu_negsample.server.endpoint import job_dir, job_name

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
