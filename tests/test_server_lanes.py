"""The node server answers ranks on different GPUs at the same time (a worker thread per
device, emulated GPUs in CI), and one client's requests in the order it sent them."""
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("zmq", reason="the node server needs pyzmq")
from gpu_negsample.config import SamplerConfig
from devices import needs_gxx
from server_harness import raw_client, server_on_thread
from test_server_wire import job  # noqa: F401 (a fresh job name per test)

pytestmark = needs_gxx
WAIT_S = 20  # how long a fake request waits for the event it needs; the test fails if it never comes
EMULATED = SamplerConfig("category", "item_id", "weight", "skey", seed=1, device="emulated").to_wire()


def rank_hello(rank: int) -> dict:
    """Hello arguments of rank `rank`, whose GPU is emulated device `rank` (rank 0 opens the sampler)."""
    return {"rank": rank, "config": EMULATED, "open": rank == 0, "device": {"ordinal": rank, "visible": None}}


def engine_of(server, rank: int):
    (client,) = [c for c in server.clients.values() if c.rank == rank]
    return client.engine


def test_requests_of_ranks_on_different_gpus_run_at_the_same_time(job):
    """Each rank's request waits until the other rank's has started: answered one at a time,
    the first would wait in vain and fail."""
    started = {0: threading.Event(), 1: threading.Event()}

    def meeting(rank):
        def describe():
            started[rank].set()
            if not started[1 - rank].wait(WAIT_S):
                raise RuntimeError(f"rank {rank}'s request ran alone: rank {1 - rank}'s did not start meanwhile")
            return f"rank {rank} met rank {1 - rank}"
        return describe

    with server_on_thread(job) as server, raw_client(server, **rank_hello(0)) as r0, \
            raw_client(server, **rank_hello(1)) as r1:
        assert r0.hello["ok"] and r1.hello["ok"], (r0.hello, r1.hello)
        engines = {rank: engine_of(server, rank) for rank in (0, 1)}
        assert engines[0] is not engines[1]
        for rank, engine in engines.items():
            engine.describe = meeting(rank)
        r0.send("describe", {})
        r1.send("describe", {})
        for rank, client in ((0, r0), (1, r1)):
            head, _ = client.receive(2 * WAIT_S)
            assert head["ok"] and head["text"] == f"rank {rank} met rank {1 - rank}", head
        assert set(server.lanes) == {"emulated:0", "emulated:1"}


def test_one_clients_requests_are_answered_in_the_order_it_sent_them(job, monkeypatch):
    """The first request (on the device's lane) is still running when the second (one the
    loop answers itself) arrives: the second must wait for it."""
    second_arrived = threading.Event()
    with server_on_thread(job) as server, raw_client(server, **rank_hello(0)) as client:
        received = []
        receive = server._receive

        def counting(frames):
            receive(frames)
            received.append(frames)
            if len(received) == 2:
                second_arrived.set()
        monkeypatch.setattr(server, "_receive", counting)

        def describe():
            if not second_arrived.wait(WAIT_S):
                raise RuntimeError("the second request never reached the server")
            return "first"
        engine_of(server, 0).describe = describe
        first = client.send("describe", {})
        second = client.send("unmap_block", {"block": 7})  # no such block: answered ok at once, on the loop
        answers = [client.receive(2 * WAIT_S)[0] for _ in range(2)]
        assert [a["seq"] for a in answers] == [first, second], answers
        assert answers[0]["ok"] and answers[0]["text"] == "first" and answers[1]["ok"], answers


def until(predicate, what: str, limit_s: float = 30.0) -> None:
    """Wait for a state of the server (not a timing assertion: the limit only bounds a failure)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_a_client_that_dies_mid_request_is_dropped_once_answered(job):
    """A lane may be writing into a dead client's blocks: its state goes only after the answer."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    release = threading.Event()

    def describe():
        if not release.wait(WAIT_S):
            raise RuntimeError("never released")
        return "late"
    try:
        with server_on_thread(job) as server, raw_client(server, pid=process.pid) as client:
            (identity,) = server.clients
            server.clients[identity].engine.describe = describe
            client.send("describe", {})
            until(lambda: server.clients[identity].in_flight, "the request is on its lane")
            process.kill()
            process.wait()
            until(lambda: server.clients[identity].dead, "the server noticed the client died")
            assert identity in server.clients, "dropped (its blocks unmapped) while its request still ran"
            release.set()
            until(lambda: identity not in server.clients, "the dead client was dropped after its answer")
    finally:
        release.set()
        process.kill()
