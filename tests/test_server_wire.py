"""The node server against what a broken or hostile client puts on the wire: every bad input
is an error reply naming the cause, never a crash or a hang of the node's server."""
import errno
import fcntl
import itertools
import mmap
import os
import struct
import subprocess
import sys
import threading
import time

import numba
import numpy as np
import pytest
import torch

from gpu_negsample import LocalRpcDataSampler, NegativeSampler, RequestError
from gpu_negsample.columns import DENSE, RAGGED, STRING, Column
from gpu_negsample.engine import RandomStream
from gpu_negsample.errors import DeviceFaultError
from gpu_negsample.server import protocol as p
from gpu_negsample.server import endpoint
from gpu_negsample.server.endpoint import create_block, job_name
from gpu_negsample.server.service import AnswerMemory, BlockAllocator, SamplingServer, SharedBlock, cpu_lane_workers
from server_harness import raw_client, server_on_thread
from server_tables import assert_same_features, catalogue, positives

_jobs = itertools.count()


@pytest.fixture
def job():
    return f"w{os.getpid()}-{next(_jobs)}"


def columns_of(table: dict) -> dict:
    from gpu_negsample.columns import read_table_input

    return read_table_input(table)


def reload_frames_args(columns: dict) -> tuple[dict, dict]:
    arrays = {}
    return {"columns": p.encode_columns(columns, arrays)}, arrays


BAD_OFFSETS = [  # (what, offsets of a 4-value column of 3 rows, what the error says)
    ("run past the values", [0, 1, 2, 400], "must end at the number of values \\(4\\); row 2 ends at 400"),
    ("decrease", [0, 3, 1, 4], "decrease at row 1: 3 -> 1"),
    ("do not start at 0", [2, 3, 4, 4], "must start at 0; row 0 starts at 2"),
]


@pytest.mark.parametrize("kind", [RAGGED, STRING])
@pytest.mark.parametrize("what, offsets, message", BAD_OFFSETS)
def test_columns_with_bad_offsets_are_refused_when_decoded(kind, what, offsets, message):
    values = np.arange(4, dtype=np.uint8 if kind == STRING else np.int64)
    items, arrays = reload_frames_args({"c": Column("c", kind, values, np.array(offsets, np.int64))})
    with pytest.raises(p.TableError, match=f"column 'c': offsets {message}"):
        p.decode_columns(items["columns"], arrays)


@pytest.mark.parametrize("column, message", [
    (Column("c", RAGGED, np.arange(4), np.array([0, 4], np.int32)), "offsets must be a non-empty 1-D int64"),
    (Column("c", STRING, np.arange(4, dtype=np.int64), np.array([0, 4], np.int64)), "string bytes must be uint8"),
    (Column("c", DENSE, np.array([b"ab"]), None), "values must be a numeric numpy array"),
    (Column("c", "tensor", np.arange(4), None), "unknown kind 'tensor'"),
    (Column("c", RAGGED, np.arange(4), np.array([0, 4], np.int64), np.ones(3)), "weight length 3 != values 4"),
])
def test_columns_with_bad_arrays_are_refused_when_decoded(column, message):
    items, arrays = reload_frames_args({"c": column})
    with pytest.raises(p.TableError, match=message):
        p.decode_columns(items["columns"], arrays)


def test_a_reload_with_bad_category_offsets_is_a_table_error_and_the_server_serves_on(job):
    """Before: the server accepted the table and died of SIGSEGV at the next pack_feature."""
    cat = catalogue()
    columns = columns_of(cat.table)
    good_args, good_arrays = reload_frames_args(columns)
    bad = columns["category"]
    n = bad.offsets.shape[0] - 1
    columns["category"] = Column("category", RAGGED, bad.values, np.arange(n + 1, dtype=np.int64) * 1000)
    bad_args, bad_arrays = reload_frames_args(columns)
    with server_on_thread(job) as server, raw_client(server) as c:
        assert c.ask("reload", good_args, good_arrays)["ok"]
        head = c.ask("reload", bad_args, bad_arrays)
        assert head["error"] == "TableError" and "column 'category': offsets must end at" in head["message"]
        arrays = {}
        head = c.ask("pack_feature", {"ids": p.encode("ids", cat.ids[:5], arrays), "default": -1}, arrays)
        assert head["ok"], head


# ---- shared-memory result blocks -------------------------------------------------------------
def load(c, cat) -> None:
    args, arrays = reload_frames_args(columns_of(cat.table))
    assert c.ask("reload", args, arrays)["ok"]


def lookup(c, cat, **header) -> dict:
    arrays = {}
    return c.ask("valid_sample_ids", {"ids": p.encode("ids", cat.ids[:100], arrays), "default": -1}, arrays, **header)


def test_a_block_cannot_be_truncated_and_an_unsealed_one_is_refused(job):
    """Before: a block was a /dev/shm file its client could truncate while the server wrote
    an answer into it (a 4096x10 `sample` truncated 4 ms after sending killed the server with
    SIGBUS). Now the server maps only a memfd sealed against shrinking."""
    cat = catalogue()
    with server_on_thread(job) as server, raw_client(server) as c:
        load(c, cat)
        fd = create_block(1 << 20)
        unsealed = os.memfd_create("gpu_negsample-block", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(unsealed, 1 << 20)
        memory = mmap.mmap(fd, 1 << 20)
        try:
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)  # not even its creator can shrink it
            assert c.ask("map_block", {"fd": fd, "size": 1 << 20, "block": 0})["ok"]
            head = c.ask("map_block", {"fd": unsealed, "size": 1 << 20, "block": 1})
            assert head["error"] == "RequestError" and "sealed against shrinking" in head["message"], head
        finally:
            os.close(fd)
            os.close(unsealed)
        head = lookup(c, cat, block=0)  # the block outlives the client's fd: the mappings hold it
        assert np.array_equal(p.read_block(memory, head["placed"])["out"], cat.ids[:100])


def test_a_client_falls_back_to_the_socket_when_no_block_memory_can_be_reserved(job, monkeypatch):
    cat = catalogue()
    ref = NegativeSampler("category", "item_id", "weight", "skey", seed=1, device="cpu")
    ref.reload(cat.table)

    def full(fd, offset, size):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, seed=1) as s:
        s.reload(cat.table)
        for call in range(2):
            assert torch.equal(s.sample_ids(*positives(cat, call)), ref.sample_ids(*positives(cat, call)))
        assert s._transport.results == "socket"


def test_map_block_accepts_only_a_sealed_reserved_memfd(job, tmp_path, monkeypatch):
    """Before: any file a client named by fd was opened for writing first and checked after, so
    a FUSE file whose daemon never answers hung the server's loop (and every client) in open;
    a block sized but not reserved let a client make the server map terabytes it never had."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep" * 1024)
    regular = os.open(victim, os.O_RDWR)
    fd = create_block(4096)
    unreserved = os.memfd_create("gpu_negsample-block", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(unreserved, 1 << 40)
    fcntl.fcntl(unreserved, fcntl.F_ADD_SEALS, endpoint.BLOCK_SEALS)
    gone = subprocess.Popen(["true"])
    gone.wait()
    cases = [(os.getpid(), regular, 4096, "sealed against shrinking"), (os.getpid(), fd, 8192, "not the announced 8192"),
             (os.getpid(), unreserved, 1 << 40, "only 0 of its 1,099,511,627,776 bytes are reserved"),
             (os.getpid(), 999_999, 4096, "cannot open"), (gone.pid, fd, 4096, "cannot open")]
    opened = []
    real_open = os.open

    def spy(path, flags, *rest, **kw):
        if str(path).startswith("/proc/"):
            opened.append((str(path), flags))
        return real_open(path, flags, *rest, **kw)

    try:
        with server_on_thread(job) as server:
            monkeypatch.setattr(os, "open", spy)
            for block, (pid, client_fd, size, message) in enumerate(cases):
                with raw_client(server, pid=pid) as c:
                    head = c.ask("map_block", {"fd": client_fd, "size": size, "block": block})
                    assert head["error"] == "RequestError" and message in head["message"], (client_fd, head)
        assert victim.read_bytes() == b"keep" * 1024
        client_paths = [(path, flags) for path, flags in opened if not path.startswith("/proc/self/")]
        assert client_paths and all(flags & os.O_PATH for _, flags in client_paths), client_paths
        assert not any(path == f"/proc/{os.getpid()}/fd/{regular}" and not flags & os.O_PATH for path, flags in opened)
    finally:
        for closing in (regular, fd, unreserved):
            os.close(closing)


# ---- every request is answered ------------------------------------------------------------------
def outcome_within(seconds: float, call):
    """What call returned or raised, run on a thread; AssertionError if it is still waiting
    after `seconds` (the caller would have hung)."""
    box = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as e:  # the outcome under test
            box["value"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert "value" in box, f"no answer within {seconds} s"
    return box["value"]


def test_a_request_the_server_cannot_parse_still_reaches_its_caller(job):
    """Before: the error reply had no sequence number, the client dropped it and waited forever."""
    cat = catalogue()
    with LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, seed=1) as s:
        s.reload(cat.table)
        error = outcome_within(30, lambda: s.valid_sample_ids(np.array(["1"]), -1))
        assert isinstance(error, RequestError) and "'ids': dtype <U1 is not allowed" in str(error), error


def test_an_unreadable_header_is_answered_with_its_sequence_number(job):
    with server_on_thread(job) as server, raw_client(server) as c:
        c.send_frames([struct.pack("<QI", 99, 5) + b"{nope"])
        head, _ = c.receive()
        assert head["seq"] == 99 and head["error"] == "RequestError" and "not JSON" in head["message"]
        c.send_frames([struct.pack("<QI", 100, 2) + b"{}", b"a second frame"])
        head, _ = c.receive()
        assert head["seq"] == 100 and "one frame" in head["message"]


def test_a_request_over_the_servers_limit_is_refused_before_it_is_sent(job, monkeypatch):
    """Before: the client checked only its own limit; the server's zmq dropped the message
    silently and the caller waited forever."""
    monkeypatch.setenv("LOCAL_RANK", "1")  # joins the server below instead of starting one
    monkeypatch.setenv("LOCAL_PROCESS_RANK", "1")
    with server_on_thread(job_name(job), max_request_bytes=4096) as server, raw_client(server):  # rank 0's sampler
        s = LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, seed=1)
        try:
            error = outcome_within(30, lambda: s.reload(catalogue().table))
            assert isinstance(error, RequestError) and "exceeds max_request_bytes=4,096" in str(error), error
        finally:
            s.close()


def test_a_rank_whose_hello_is_answered_after_half_a_second_joins(job, monkeypatch):
    """Before: the client's wait for the hello's answer, past its first 0.5 s slice, read the
    server's pid before it knew it (AttributeError): with 8 ranks starting on a busy 2-core
    machine one of them died so."""
    monkeypatch.setenv("LOCAL_RANK", "1")  # joins the server below instead of starting one
    monkeypatch.setenv("LOCAL_PROCESS_RANK", "1")
    with server_on_thread(job_name(job)) as server, raw_client(server):  # rank 0's sampler
        hello = server.op_hello

        def slow_hello(identity, args, arrays):
            time.sleep(1.0)
            return hello(identity, args, arrays)

        server.op_hello = slow_hello
        s = LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, seed=1)
        try:
            assert s.server_pid == os.getpid()  # the server runs on a thread of this process
        finally:
            s.close()


# ---- the request's errors are the request's -----------------------------------------------------
def reload_with(c, column: str, value) -> dict:
    table = dict(catalogue().table)
    table[column] = value
    args, arrays = reload_frames_args(columns_of(table))
    return c.ask("reload", args, arrays)


def test_errors_of_the_request_come_back_as_request_or_table_errors_with_their_cause(job, tmp_path):
    """Before: InternalError with the server's traceback for each of these."""
    cat = catalogue()
    not_parquet = tmp_path / "table.parquet"
    not_parquet.write_text("not parquet")
    empty = {"item_id": torch.zeros(0, dtype=torch.int64), "category": torch.zeros(0, dtype=torch.int64),
             "weight": torch.zeros(0), "skey": np.array([], dtype="S1")}
    with server_on_thread(job) as server, raw_client(server) as c:
        load(c, cat)
        n = cat.ids.shape[0]
        huge = reload_with(c, "weight", torch.full((n,), 1e308, dtype=torch.float64))
        arrays = {}
        empty_args = {"columns": p.encode_columns(columns_of(empty), arrays)}
        cases = [
            (huge, "TableError", "weights sum to inf"),
            (c.ask("reload", {"path": str(not_parquet)}), "TableError", "as Parquet ("),
            (c.ask("reload", empty_args, arrays), "TableError", "has no rows"),
            (c.ask("valid_sample_ids", {"ids": p.encode("ids", cat.ids[:3], a := {}), "default": 2**70}, a),
             "RequestError", "does not fit in int64"),
            (c.ask("valid_sample_ids", {"default": -1}), "RequestError", "argument 'ids' is missing"),
            (c.ask("valid_sample_ids", {"ids": {"array": "nothing"}, "default": -1}), "RequestError",
             "arrays ['nothing'] it does not carry"),
            (c.ask("sample_ids", {"dedup": {"ragged": "d", "weight": False}, "counts": 2, "tags": None,
                                  "avoid_conflict": True, "avoid_all": False},
                   {"d.values": cat.ids[:3], "d.offsets": np.array([0, 9], np.int64)}),
             "RequestError", "d: not a valid RaggedTensor"),
            (c.ask("unmap_block", {"block": "x"}), "RequestError", "'block' must be an integer"),
            (c.ask("describe", []), "RequestError", "'args' must be a JSON object"),
            (c.ask("hello", dict(c.hello_args, attach=c.hello["sampler"], stream="worker 1")), "RequestError",
             "'stream' must be an integer"),
        ]
        for head, kind, message in cases:
            assert head.get("error") == kind and message in head["message"], (kind, message, head)
            assert "Traceback" not in head["message"]
        assert lookup(c, cat)["ok"], "the server stopped serving"


class FakeEngine:
    """What the server asks of an engine besides the request under test."""
    loaded = True
    seed = 1

    def swap(self, state):
        pass


class BrokenEngine(FakeEngine):
    def describe(self):
        raise ZeroDivisionError("a bug")


class CountingThreadsEngine(FakeEngine):
    """describe() answers with numba's thread count on the lane worker that runs it; with
    `meet`, it first waits (a barrier) until that many requests are running at once."""

    def __init__(self, meet: int = 1):
        self.barrier = threading.Barrier(meet, timeout=20)

    def describe(self):
        self.barrier.wait()  # BrokenBarrierError (an InternalError answer) when run one at a time
        return str(numba.get_num_threads())


@pytest.mark.skipif(cpu_lane_workers() < 2, reason="one numba thread or the workqueue layer: one CPU lane worker")
def test_two_clients_cpu_requests_run_at_the_same_time_on_numbas_threads_split(job):
    """Two ranks' requests to one CPU sampler meet inside the engine: answered one at a time
    (the CPU lane before it had workers), the first would wait at the barrier in vain. A
    request sets its worker's numba thread count when it starts: cores // requests running."""
    total = numba.get_num_threads()
    with server_on_thread(job, engine=CountingThreadsEngine(meet=2)) as server, raw_client(server) as r0, \
            raw_client(server, rank=1, open=False) as r1:
        assert r0.hello["ok"] and r1.hello["ok"], (r0.hello, r1.hello)
        r0.send("describe", {})
        r1.send("describe", {})
        answers = [client.receive(30)[0] for client in (r0, r1)]
    assert all(a["ok"] for a in answers), answers
    # the one that started second shares the threads (the first set its count when it ran alone)
    assert min(int(a["text"]) for a in answers) == total // 2, (answers, total)


def test_two_requests_on_one_engine_at_once_answer_as_each_does_alone():
    """What the CPU lane's workers do to a real engine: two clients' fused requests (own
    streams, one numba thread each, as the lane splits 2 cores) run at the same time and
    answer bit for bit what the same requests answer one after the other."""
    cat = catalogue(20_000, 40)
    engine = NegativeSampler("category", "item_id", "weight", "skey", seed=1, device="cpu").engine
    engine.reload(cat.table, progress=False)
    requests = {client: [positives(cat, 10 * client + call, 2048) for call in range(4)] for client in (1, 2)}

    def answers(client, start=None):
        if start is not None:
            numba.set_num_threads(1)
            start.wait()
        stream = RandomStream(client)
        return [engine.fused_sample(*r, default_value=int(cat.ids[0]), stream=stream) for r in requests[client]]

    alone = {client: answers(client) for client in (1, 2)}
    start, together = threading.Barrier(2, timeout=20), {}
    threads = [threading.Thread(target=lambda c=c: together.__setitem__(c, answers(c, start))) for c in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for client in (1, 2):
        for got, want in zip(together[client], alone[client], strict=True):
            for g, w in zip(got[:3] + got[4:5], want[:3] + want[4:5]):
                assert np.array_equal(np.asarray(g), np.asarray(w)), client
            assert_same_features(got[3], want[3])


def test_a_cpu_request_running_alone_gets_every_numba_thread(job):
    with server_on_thread(job, engine=CountingThreadsEngine()) as server, raw_client(server) as c:
        head = c.ask("describe", {})
    assert head["ok"] and head["text"] == str(numba.get_num_threads()), head


def test_a_failure_of_the_server_is_logged_and_the_caller_gets_no_traceback(job, caplog):
    with server_on_thread(job, engine=BrokenEngine()) as server, raw_client(server) as c:
        head = c.ask("describe", {})
    assert head["error"] == "InternalError" and "ZeroDivisionError: a bug" in head["message"]
    assert "Traceback" not in head["message"]
    logged = [r for r in caplog.records if r.name == "gpu_negsample.server" and r.exc_info]
    assert logged and "describe" in logged[0].getMessage()


# ---- a dead GPU ------------------------------------------------------------------------------------
class FaultingEngine(FakeEngine):
    """An engine whose GPU context died: every call raises DeviceFaultError, as the CUDA
    backend does after an illegal address."""

    def describe(self):
        raise DeviceFaultError("CUDA error: an illegal memory access was encountered")


def test_a_device_fault_is_a_fatal_error_for_every_client_and_the_server_exits(job, monkeypatch):
    """Before: InternalError for this request and every later one, and the server stayed up."""
    monkeypatch.setenv("LOCAL_RANK", "1")  # joins the server below instead of starting one
    monkeypatch.setenv("LOCAL_PROCESS_RANK", "1")
    with server_on_thread(job_name(job), engine=FaultingEngine()) as server, raw_client(server) as other:
        s = LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job, seed=1)
        try:
            error = outcome_within(30, s.describe)
            assert isinstance(error, DeviceFaultError) and "lost its GPU" in str(error), error
            head = other.ask("describe", {})  # another client, after the fault
            assert head["error"] == "DeviceFaultError" and "illegal memory access" in head["message"]
            deadline = time.monotonic() + 10
            while not server.stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.stopping and server.fault, "the server kept running on a dead GPU"
        finally:
            s.close()


def test_the_server_explains_itself_with_help():
    out = subprocess.run([sys.executable, "-m", "gpu_negsample.server", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for needed in ("negative sampling server", "local rank 0", "LocalRpcDataSampler", "--parent PARENT",
                   "exits when it dies", "GPU_NEGSAMPLE_SERVER_LOG=PATH", "GPU_NEGSAMPLE_SERVER_LOG_LEVEL",
                   "exit status"):
        assert needed in out.stdout, needed


# ---- features gathered where the client reads them ---------------------------------------------
def test_features_are_gathered_straight_into_the_clients_block(job, monkeypatch):
    """Before: the engine gathered into process memory and the server copied every array into
    the block; then the negatives, valid and combined ids were still copied; now the engine
    writes every array into the block itself but the request's counts (staged inputs)."""
    cat = catalogue()
    copied = []
    original = SharedBlock.write

    def spy(self, arrays, metas):
        copied.extend(arrays)
        original(self, arrays, metas)

    monkeypatch.setattr(SharedBlock, "write", spy)
    with server_on_thread(job) as server, raw_client(server) as c:
        load(c, cat)
        fd = create_block(8 << 20)
        try:
            memory = mmap.mmap(fd, 8 << 20)
            assert c.ask("map_block", {"fd": fd, "size": 8 << 20, "block": 0})["ok"]
            arrays = {}
            args = {"dedup": p.encode("dedup", positives(cat, 0)[0], arrays), "counts": 6,
                    "tags": p.encode("tags", positives(cat, 0)[2], arrays), "default": int(cat.ids[0]),
                    "avoid_conflict": True, "avoid_all": False, "log_q": False}
            head = c.ask("sample", args, arrays, block=0)
        finally:
            os.close(fd)
    assert head["ok"] and not head["arrays"], "everything should be in the block"
    placed = p.read_block(memory, head["placed"])
    features = p.decode_table(head["table"], placed)
    feature_arrays = {n for n in placed if n.startswith("f")}
    assert feature_arrays and not feature_arrays & set(copied), copied
    assert set(copied) == {"counts"}
    rows = placed["ids"].reshape(-1, 7)  # per positive: its valid id, then its 6 negatives
    assert np.array_equal(rows[:, 0], placed["valid"]) and np.array_equal(rows[:, 1:].ravel(), placed["neg"])
    ref = NegativeSampler("category", "item_id", "weight", "skey", seed=1, device="cpu")
    ref.reload(cat.table)
    assert_same_features(features, ref.pack_feature(torch.from_numpy(placed["ids"].copy()), int(cat.ids[0])))


def test_only_arrays_the_allocator_handed_out_are_placed_where_they_lie():
    """An array (or tensor over it) the allocator handed out is placed at its offset; a view into
    the middle of one, a bigger one or process memory is not (it is copied behind them)."""
    block = SharedBlock.__new__(SharedBlock)  # its memory only: no file, no client
    block.bytes, block.size = np.zeros(4096, np.uint8), 4096
    block.base = block.bytes.ctypes.data
    alloc = BlockAllocator(block, AnswerMemory(1 << 20))
    a, b = alloc("a", (3,), np.int64), alloc("b", (2, 2), np.float32)
    assert alloc.offset_of(a) == 0 and alloc.offset_of(torch.from_numpy(b)) == p.ALIGN
    assert alloc.offset_of(a[:2]) == 0  # a prefix lies where a does
    for elsewhere in (a[1:], torch.from_numpy(b).t(), block.bytes[:64].view(np.int64), np.zeros(3), torch.zeros(3)):
        assert alloc.offset_of(elsewhere) is None


def test_a_cpu_lanes_answers_are_built_by_the_loop(job, monkeypatch):
    """Before: the CPU lane built each answer's frames (placements, copies of the small arrays,
    header) while numba's idle pool thread spun beside it; now the loop thread builds them and the
    lane is free for the next request at once. The answer is the same."""
    cat = catalogue()
    built_on = []
    original = SamplingServer._reply

    def spy(self, *args):
        built_on.append(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(SamplingServer, "_reply", spy)
    with server_on_thread(job) as server, raw_client(server) as c:
        load(c, cat)
        built_on.clear()
        head = lookup(c, cat)
    assert head["ok"] and np.array_equal(head["arrays"]["out"], cat.ids[:100])
    assert built_on == [f"server-{job}"], built_on
