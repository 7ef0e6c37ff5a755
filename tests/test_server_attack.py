"""The node server attacked by a hostile local client and used by a careless one: what an
attack found (issue 9, second pass), each held by a test that failed before its fix."""
import itertools
import os
import re
import struct
import threading
import time

import numpy as np
import pytest
import torch

from gpu_negsample import LocalRpcDataSampler, NegativeSampler, RaggedTensor, RequestError
from gpu_negsample.columns import read_table_input
from gpu_negsample.server import protocol as p
from gpu_negsample.server.endpoint import PID_MAX_LIMIT, create_block, pid_alive
from gpu_negsample.server.service import MAX_CLIENT_BLOCKS, MAX_WAITING
from server_harness import CONFIG, raw_client, server_on_thread
from server_tables import catalogue

_jobs = itertools.count()


@pytest.fixture
def job():
    return f"x{os.getpid()}-{next(_jobs)}"


def load(c, cat) -> None:
    arrays = {}
    assert c.ask("reload", {"columns": p.encode_columns(read_table_input(cat.table), arrays)}, arrays)["ok"]


@pytest.mark.parametrize("n", [-1, 2**40])
def test_a_log_q_request_whose_positive_count_the_ids_cannot_hold_is_refused_before_allocating(job, n):
    """Before: the server allocated n counts first (2**40: MemoryError, -1: ValueError), both an
    InternalError with a traceback in its log; n = 10**8 took 1.6 GB and 2.6 s before the ids' check."""
    cat = catalogue()
    ids = cat.ids[:9]
    with server_on_thread(job) as server, raw_client(server) as c:
        load(c, cat)
        arrays = {}
        head = c.ask("log_q", {"ids": p.encode("ids", ids, arrays), "counts": 0, "tags": None, "n": n}, arrays)
    assert head["error"] == "RequestError" and f"log q of {n} positives: ids has 9 entries" in head["message"], head
    engine = NegativeSampler("category", "item_id", "weight", "skey", device="cpu").engine
    engine.reload(cat.table)
    with pytest.raises(RequestError, match=f"log q of {n} positives"):
        engine.log_q(ids, 0, None, n)


def test_ids_counts_and_defaults_in_every_documented_form_work_through_the_server_as_in_process(job):
    """Before: lists (ids and counts, documented in sampler.py) were refused ("a list cannot be
    sent"), a one-element tensor default_value was refused naming a dict, and an object array
    raised numpy's TypeError from inside the transport."""
    cat = catalogue()
    ids = [int(i) for i in cat.ids[:8]]
    tags = tuple(int(c) for c in cat.categories[:8])
    ref = NegativeSampler("category", "item_id", "weight", "skey", seed=1, device="cpu")
    ref.reload(cat.table)
    with LocalRpcDataSampler("category", "item_id", "weight", "skey", seed=1, device="cpu", name=job) as s:
        s.reload(cat.table)
        assert torch.equal(s.sample_ids(ids, [2] * 8, tags), ref.sample_ids(ids, [2] * 8, tags))
        default = torch.tensor(ids[0])
        assert torch.equal(s.valid_sample_ids(ids + [-5], default), ref.valid_sample_ids(ids + [-5], default))
        assert torch.equal(s.combine_vector_with_sample_counts(ids[:2], (1, 2), ids[:3]),
                           ref.combine_vector_with_sample_counts(ids[:2], (1, 2), ids[:3]))
        for bad in (np.array([1, "a"], dtype=object), [2**70]):
            with pytest.raises(RequestError, match="has dtype object"):
                s.valid_sample_ids(bad)


def test_a_client_holds_a_bounded_number_of_result_blocks_and_a_replaced_one_is_closed(job):
    """Before: every map_block added a mapping to the server (2,000 a second, unbounded); at
    vm.max_map_count (65,530) the server's own allocations would fail, for every client."""
    blocks = []
    try:
        with server_on_thread(job) as server, raw_client(server) as c:
            def map_block(ident: int) -> dict:
                blocks.append(create_block(4096))
                return c.ask("map_block", {"fd": blocks[-1], "size": 4096, "block": ident})
            for ident in range(MAX_CLIENT_BLOCKS):
                assert map_block(ident)["ok"]
            head = map_block(MAX_CLIENT_BLOCKS)
            assert head["error"] == "RequestError" and "unmap one" in head["message"], head
            (client,) = server.clients.values()
            first = client.blocks[0]
            assert map_block(0)["ok"]  # the same id again: replaces (and closes) the block it names
            assert len(client.blocks) == MAX_CLIENT_BLOCKS and first.bytes is None and client.blocks[0] is not first
    finally:
        for fd in blocks:
            os.close(fd)


class _Waiting:
    """An engine whose valid_sample_ids waits until released (a request being answered)."""

    seed = 1
    loaded = True

    def __init__(self):
        self.release = threading.Event()

    def valid_sample_ids(self, ids, default):
        if not self.release.wait(20):
            raise RuntimeError("never released")
        return ids

    def swap(self, state) -> None:
        """The table is dropped with the sampler (there is none)."""


def test_requests_a_client_sends_without_waiting_for_answers_are_refused_not_buffered(job):
    """Before: every request received while the client's first was answered was kept: 60
    requests of 20 MB grew the server by 1.9 GB (and nothing bounded how many)."""
    engine = _Waiting()
    ids = np.zeros(40_000, np.int64)  # 320 kB: three fit under the 1 MiB max_request_bytes, four do not
    with server_on_thread(job, max_request_bytes=1 << 20, engine=engine) as server, raw_client(server) as c:
        def send() -> int:
            arrays = {}
            c.seq += 1
            c.send_frames(p.pack_request(c.seq, {"op": "valid_sample_ids",
                                                 "args": {"ids": p.encode("ids", ids, arrays), "default": 0}}, arrays))
            return c.seq
        sent = [send() for _ in range(5)]  # the first runs; three wait; the fifth would pass 1 MiB waiting
        head, _ = c.receive(10)
        assert head["seq"] == sent[4] and head["error"] == "RequestError" and "already wait" in head["message"], head
        for _ in range(MAX_WAITING + 1):
            send()  # with small requests the count bounds it
        refused = [c.receive(10)[0] for _ in range(MAX_WAITING + 1)]
        assert all(h["error"] == "RequestError" for h in refused)
        engine.release.set()
        answered = [c.receive(10)[0] for _ in range(4)]
        assert [h["seq"] for h in answered] == sent[:4] and all(h["ok"] for h in answered), answered


@pytest.mark.parametrize("config, message", [
    ([1], "must be a JSON object"),
    ({}, "missing 3 required positional arguments"),
    ({"evil": 1}, "unknown sampler settings \\['evil'\\]"),
    (dict(CONFIG.to_wire(), seed=2**80), "seed must be a 64-bit unsigned integer"),
])
def test_a_hello_whose_settings_are_refused_is_a_request_error(job, config, message):
    """Before: an InternalError ("a failure of the sampling server") with a traceback in its log."""
    with server_on_thread(job) as server, raw_client(server) as c:
        head = c.ask("hello", dict(c.hello_args, config=config))
    assert head["error"] == "RequestError" and re.search(f"hello: the sampler's settings are refused: .*{message}",
                                                         head["message"]), head


@pytest.mark.parametrize("pid", [-1, 2**31, PID_MAX_LIMIT + 1])
def test_a_hello_with_a_pid_no_process_can_have_is_refused_and_the_server_answers_on(job, pid):
    """Before: the pid was taken as it came; os.kill(2**31, 0) in the server's liveness check
    raised OverflowError out of its loop (the server closed, no client was answered), and a
    client of pid -1 was never dropped (os.kill(-1, 0) asks about every process)."""
    cat = catalogue()
    with server_on_thread(job) as server, raw_client(server) as good:
        with raw_client(server, pid=pid) as bad:
            assert bad.hello["error"] == "RequestError" and "process id" in bad.hello["message"], bad.hello
        time.sleep(1.5)  # past the loop's next check of its clients' pids
        arrays = {}
        good.seq += 1
        good.send_frames(p.pack_request(good.seq, {"op": "reload", "args": {
            "columns": p.encode_columns(read_table_input(cat.table), arrays)}}, arrays))
        head, _ = good.receive(60)  # bounded: a dead server would leave it unanswered
        assert head["ok"], head
        assert pid_alive(os.getpid()) and not pid_alive(pid)


def test_a_header_nested_too_deeply_for_json_is_a_request_error_with_its_sequence_number(job):
    """Before: json's RecursionError became an InternalError with a traceback in the server's log."""
    header = b'{"op": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with server_on_thread(job) as server, raw_client(server) as c:
        c.send_frames([struct.pack("<QI", 77, len(header)) + header])
        head, _ = c.receive()
    assert head["seq"] == 77 and head["error"] == "RequestError" and "too deeply" in head["message"], head


def test_an_answer_bigger_than_the_server_lets_one_take_is_refused_and_the_server_answers_on(job):
    """Before: an answer took whatever process memory it asked for: a request within every other
    bound (k up to max_negatives, ids up to max_request_bytes) could ask for tens of GB of
    features, and the kernel's OOM killer would end the server of every rank."""
    cat = catalogue()
    default = int(cat.ids[0])
    with server_on_thread(job, max_answer_bytes=64 << 10) as server, raw_client(server) as c:
        load(c, cat)

        def pack(ids) -> dict:
            arrays = {}
            return c.ask("pack_feature", {"ids": p.encode("ids", ids, arrays), "default": default}, arrays)

        def sample(k: int) -> dict:
            arrays = {}
            args = {"dedup": p.encode("dedup", RaggedTensor.from_rows([[int(i)] for i in cat.ids[:4]]), arrays),
                    "counts": k, "tags": p.encode("tags", RaggedTensor.from_rows([[int(t)] for t in cat.categories[:4]]),
                                                  arrays),
                    "default": default, "avoid_conflict": True, "avoid_all": False, "log_q": False}
            return c.ask("sample", args, arrays)

        for big in (pack(np.repeat(cat.ids[:4], 4000)), sample(4000)):
            assert big["error"] == "RequestError" and "more of the server's memory than one answer may take" \
                in big["message"], big
        assert pack(cat.ids[:4])["ok"] and sample(2)["ok"]


def test_arrays_placed_in_a_block_are_refused_unless_inside_a_block_the_client_mapped_and_within_the_limit(job):
    """A request's arrays may ride in its client's result block (the real client's way when
    they fit): the server copies them out only from a block this client mapped, each
    placement inside it and all within max_request_bytes; otherwise the request is answered
    with a RequestError and the server answers on."""
    import mmap
    cat = catalogue()
    size = 2 << 20
    fd = create_block(size)
    try:
        memory = mmap.mmap(fd, size)
        with server_on_thread(job, max_request_bytes=1 << 20) as server, raw_client(server) as c:
            load(c, cat)
            args = {"ids": {"array": "ids", "numpy": True}, "default": -1}
            head = c.ask("valid_sample_ids", args, request_placed=[["ids", "<i8", [4], 0]], block=7)
            assert head["error"] == "RequestError" and "not a shared-memory block this client mapped" in head["message"]
            assert c.ask("map_block", {"fd": fd, "size": size, "block": 7})["ok"]
            for placed, message in (([["ids", "<i8", [size // 8], 64]], "outside the"),
                                    ([["ids", "<i8", [200_000], 0]], "exceeds the server's limit"),
                                    ([["ids", "<i8", [(1 << 17) - 2], 0]], "exceeds"),  # with its frame's bytes
                                    ({"ids": 0}, "list of placements")):
                head = c.ask("valid_sample_ids", args, request_placed=placed, block=7)
                assert head["error"] == "RequestError" and message in head["message"], head
            head = c.ask("valid_sample_ids", args, {"ids": np.zeros(4, np.int64)},
                         request_placed=[["ids", "<i8", [4], 0]], block=7)
            assert head["error"] == "RequestError" and "not both" in head["message"], head
            ids = np.concatenate([cat.ids[:3], [-5]])
            np.frombuffer(memory, np.int64, 4)[:] = ids
            head = c.ask("valid_sample_ids", args, request_placed=[["ids", "<i8", [4], 0]], block=7)
            assert head["ok"], head
            got = p.read_block(memory, head["placed"])["out"] if "placed" in head else head["arrays"]["out"]
            assert got.tolist() == [*cat.ids[:3].tolist(), -1]
            del got
            memory.close()
    finally:
        os.close(fd)
