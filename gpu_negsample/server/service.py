"""The node server process: the job's samplers (server/registry.py, an Engine each), shared by
every training process of the machine.

Started by local rank 0's LocalRpcDataSampler (``python -m gpu_negsample.server``); serves a
ROUTER socket in the job's 0700 directory. The loop thread owns the socket; each GPU's
requests run on that GPU's own worker thread (a ``Lane``), so ranks on different GPUs are
answered concurrently, and every CPU sampler's on one shared CPU lane, whose workers run
several clients' requests at once on numba's threads split between them (``Lane``). A
client's requests are answered one after the other, in order. A reload
builds the new table on a thread of its own and swaps it in, so requests keep running on
the old table meanwhile. It exits when the
process that started it dies (polled every 0.5 s: not PR_SET_PDEATHSIG, which fires when the
starting *thread* ends, so a sampler made in a worker thread would lose its server), or when
every client said goodbye or died; it removes its socket on the way out.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import torch
import zmq

from ..backends.protocol import host_empty
from ..config import SamplerConfig
from ..engine import Engine, RandomStream
from ..errors import DeviceFaultError, NegSampleError, RequestError
from . import protocol as p
from .endpoint import (EXIT_JOB_TAKEN, PID_MAX_LIMIT, JobTakenError, claim_job, open_block, pid_alive, pid_path,
                       socket_path)
from .rank_device import VISIBLE, server_ordinal
from .registry import CPU_LANE, HostedSampler, SamplerRegistry

log = logging.getLogger("gpu_negsample.server")

GOLDEN = 0x9E3779B97F4A7C15
LIVENESS_PERIOD_S = 0.5
LAST_CLIENT_GRACE_S = 2.0
EXIT_DEVICE_FAULT = 3
FAULT_DRAIN_S = 1.0  # after a device fault: how long requests already sent still get the fatal answer
GATHERING_OPS = ("sample", "pack_feature")  # their features are gathered straight into the client's block
# Requests that change the server's own state (clients, blocks, reload queues) run on the
# loop thread; every other one on its client's device lane.
LOOP_OPS = ("hello", "bye", "map_block", "map_cuda_block", "unmap_block", "reload")
# The CPU lane's most requests at once: each holds the GIL for its host share (~5 % of a
# fused call), and past a few the cores are split too finely to gain (measured on 2 cores).
CPU_LANE_WORKERS = 4
LANE_STOP_S = 5.0  # at exit: how long the lanes get to finish the request they are running
# What one client may hold in the server. Its result blocks are mappings of the server's,
# of which a process has vm.max_map_count (65,530) shared with numpy's and numba's own: a
# client mapping blocks without end (2,000 a second, measured) would make the server's own
# allocations fail, for every client. The client keeps at most 8 (client.MAX_BLOCKS).
MAX_CLIENT_BLOCKS = 16
# Its requests received while one of its own is answered wait in memory: the client sends
# one at a time (a timed-out one may still be answered), so more than this, or more than
# max_request_bytes in all, is a client not waiting for its answers; they are refused.
MAX_WAITING = 16


def default_max_answer_bytes() -> int:
    """The most process memory one `sample` or `pack_feature` answer (its features) may take
    beyond its client's result block (what does not fit there, or all of it when answers go
    through the socket): an eighth of the machine's memory, so the CPU lanes answering at once (at most CPU_LANE_WORKERS) leave
    half of it. A request within every other bound (k up to max_negatives, ids up to
    max_request_bytes) can still ask for tens of GB of features, and the kernel's OOM killer
    would then end the server that every rank of the node depends on."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's stream: rank 0 uses the seed itself, rank r a Weyl step away."""
    return (int(seed) + int(rank) * GOLDEN) % 2**64


def worker_seed(seed: int, salt: int) -> int:
    """The seed of a worker's stream: a digest of its rank's seed and the worker's own number,
    so no two workers (or a worker and its rank) share a stream."""
    digest = hashlib.blake2b(f"{seed}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class RemoteCudaBlock:
    """A client's GPU buffer, opened here from its CUDA IPC handle."""

    def __init__(self, cupy, ordinal: int, handle: bytes, size: int):
        self.cp, self.ordinal, self.size = cupy, ordinal, size
        with cupy.cuda.Device(ordinal):
            self.ptr = cupy.cuda.runtime.ipcOpenMemHandle(handle)

    def write(self, arrays: dict, metas: list) -> None:
        """Device-to-device copies on the current stream, finished before the answer leaves."""
        rt = self.cp.cuda.runtime
        stream = self.cp.cuda.get_current_stream()
        for (_, _, _, offset), a in zip(metas, arrays.values()):
            if isinstance(a, torch.Tensor):
                a = a.contiguous()
                src, nbytes = a.data_ptr(), a.numel() * a.element_size()
            else:
                a = self.cp.ascontiguousarray(a)
                src, nbytes = a.data.ptr, a.nbytes
            rt.memcpyAsync(self.ptr + int(offset), src, nbytes, rt.memcpyDefault, stream.ptr)
        stream.synchronize()

    def close(self) -> None:
        with self.cp.cuda.Device(self.ordinal):
            self.cp.cuda.runtime.ipcCloseMemHandle(self.ptr)


class SharedBlock:
    """A client's shared-memory result block, mapped here (``open_block`` checks it is one:
    sealed, so it keeps its size whatever its client does)."""

    def __init__(self, client_pid: int, client_fd: int, size: int):
        self.memory = open_block(client_pid, client_fd, size)
        self.size = size
        self.bytes = np.frombuffer(self.memory, dtype=np.uint8)
        self.base = self.bytes.ctypes.data

    def write(self, arrays: dict, metas: list) -> None:
        p.write_block(memoryview(self.memory), arrays, metas)

    def close(self) -> None:
        self.bytes = None
        try:
            self.memory.close()
        except BufferError:
            pass  # an array still views it: the mapping goes when that array does


class AnswerMemory:
    """An Allocator (backends.protocol) of process memory for one answer: what would take the
    answer past ``limit`` bytes is refused, before it is allocated, with a RequestError."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def __call__(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if self.used + nbytes > self.limit:
            raise RequestError(f"the answer needs more of the server's memory than one answer may take "
                               f"({self.limit:,} bytes): {name} is {nbytes:,} bytes after {self.used:,}; ask for "
                               "fewer ids or negatives per request (split the batch)")
        self.used += nbytes
        return host_empty(name, shape, dtype)


class BlockAllocator:
    """An Allocator (backends.protocol) that carves a request's host outputs out of the
    client's block, one after the other at 64-byte aligned offsets, so the engine gathers
    features straight into the memory the client reads; what does not fit comes from
    ``overflow``, the answer's process memory (and is copied or sent afterwards)."""

    def __init__(self, block: SharedBlock, overflow: AnswerMemory):
        self.block, self.used, self.overflow = block, 0, overflow
        self._given: dict[int, tuple[int, int]] = {}  # address -> (offset, bytes) of each array handed out
        self._handed: dict[int, tuple[np.ndarray, int]] = {}  # id -> (the array itself, its offset)

    def __call__(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if self.used + nbytes > self.block.size:
            return self.overflow(name, shape, dtype)
        a = self.block.bytes[self.used:self.used + nbytes].view(dtype).reshape(shape)
        self._given[self.block.base + self.used] = (self.used, nbytes)
        self._handed[id(a)] = (a, self.used)  # holding a: its id cannot be reused while this lives
        self.used = p.aligned(self.used + nbytes)
        return a

    def offset_of(self, a) -> int | None:
        """Where host array / tensor a lies in the block when it is (the start of) an array this
        allocator handed out, else None. Found by its address in a dict rather than checked
        against the block's bounds: a fused answer has ~20 arrays, and a bounds check's torch
        and numpy attribute reads cost 2.5 us (tensor) to 6.7 us (numpy array) each, warm. An
        array handed out is known by identity first: its address (``ctypes.data``) costs 2.3 us
        warm and ~8 us in a loop thread that slept through the request."""
        if isinstance(a, torch.Tensor):
            given = self._given.get(a.data_ptr())
            if given is None or not a.is_cpu or not a.is_contiguous():
                return None
            nbytes = a.nbytes
        elif isinstance(a, np.ndarray):
            handed = self._handed.get(id(a))
            if handed is not None and handed[0] is a:
                return handed[1] if a.nbytes else None
            given = self._given.get(a.ctypes.data)
            if given is None or not a.flags.c_contiguous:
                return None
            nbytes = a.nbytes
        else:
            return None
        return given[0] if 0 < nbytes <= given[1] else None


class Args(dict):
    """A request's arguments: a missing or mistyped one is the request's error, not the server's."""

    def __init__(self, op: str, args):
        if not isinstance(args, dict):
            raise RequestError(f"{op}: 'args' must be a JSON object; got {type(args).__name__}")
        super().__init__(args)
        self.op = op

    def __missing__(self, key):
        raise RequestError(f"{self.op}: argument {key!r} is missing")

    def int(self, key: str) -> int:
        value = self[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise RequestError(f"{self.op}: argument {key!r} must be an integer; got {value!r}")
        return value


@dataclass
class Client:
    pid: int
    rank: int
    sampler: HostedSampler
    stream: RandomStream
    blocks: dict = field(default_factory=dict)  # block id -> SharedBlock | RemoteCudaBlock
    engine: Engine | None = None  # the sampler's engine on this client's device
    lane: str = "cpu"  # the lane (worker thread) of that device
    # Read and written by the loop thread only:
    in_flight: bool = False  # a request of this client is being answered (on a lane or a reload thread)
    waiting: collections.deque = field(default_factory=collections.deque)  # its requests received meanwhile
    dead: bool = False  # its process died while a request was in flight: dropped once that is answered

    def close(self) -> None:
        for block in self.blocks.values():
            block.close()
        self.blocks.clear()


class Lane:
    """Worker threads that run one device's requests in the order they were submitted:
    requests of ranks on different devices run at the same time. A GPU's lane has one worker
    (its engine's kernels already fill the GPU). The CPU lane has up to ``CPU_LANE_WORKERS``,
    which split numba's threads between the requests running at once (``_run``): one
    request alone gets every thread, two share them. With many clients, two requests
    each on one core make more answers per second than one request at a time on both
    (measured, 2 cores, fused 4096x10, 7 rounds: 1.17x), because a request's parallel
    regions end in barriers and numba's TBB worker spins idle 1-3 ms after each."""

    def __init__(self, name: str, workers: int = 1):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        # numba is asked only where the work is split (cpu_lane_workers started its layer)
        self._threads_total = numba.get_num_threads() if workers > 1 else 0
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, name=f"lane {name}" + (f" {i}" if workers > 1 else ""),
                                          daemon=True) for i in range(workers)]
        for worker in self._workers:
            worker.start()

    def submit(self, job) -> None:
        """Run job() on this lane; jobs start in the order submitted (a client's requests are
        submitted one at a time, so they also end in order); job handles its own errors."""
        self._jobs.put(job)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._busy_lock:
                self._busy += 1
                busy = self._busy
            if self._threads_total:  # in [1, NUMBA_NUM_THREADS]: cannot raise; this thread's own setting
                numba.set_num_threads(max(1, self._threads_total // busy))
            try:
                job()
            except Exception:  # a job answers its own errors; this is a bug of the server, logged
                log.exception("lane %s: a request's job failed", self.name)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def stop(self) -> None:
        """Let the lane end after the jobs already submitted."""
        for _ in self._workers:
            self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Wait for the lane to end; whether it did."""
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return not any(worker.is_alive() for worker in self._workers)


def cpu_lane_workers() -> int:
    """How many requests the CPU lane runs at once: one per numba thread, at most
    CPU_LANE_WORKERS, under numba's TBB layer (the one threading_layer.py picks, measured);
    one under any other (workqueue may not be entered by two threads at once; OpenMP gives
    each caller a team of its own, unmeasured) or when numba's layer cannot start (the
    request then fails in its own answer, not here on the loop)."""
    try:
        threads = numba.get_num_threads()  # starts numba's layer, so threading_layer() can answer
        return min(CPU_LANE_WORKERS, threads) if numba.threading_layer() == "tbb" else 1
    except (ValueError, RuntimeError) as e:
        log.warning("numba's threading layer did not start (%s): the CPU lane runs one request at a time", e)
        return 1


@dataclass
class _Unbuilt:
    """An answer whose frames the loop thread builds (``SamplingServer._build``): the request,
    the handler's header and arrays, and the block (and allocator) they go into."""

    identity: bytes
    op: str
    request: dict
    header: dict
    arrays: dict
    block: object
    alloc: "BlockAllocator | None"


def _per_thread(name: str, doc: str) -> property:
    """An attribute of the request the current thread answers: each lane answers its own."""
    return property(lambda self: getattr(self._call, name, None), lambda self, v: setattr(self._call, name, v),
                    doc=doc)


class SamplingServer:
    def __init__(self, directory: str, parent_pid: int, max_request_bytes: int, max_answer_bytes: int | None = None):
        self.directory, self.parent_pid = directory, parent_pid
        self.max_request_bytes = max_request_bytes
        self.max_answer_bytes = default_max_answer_bytes() if max_answer_bytes is None else max_answer_bytes
        self.samplers = SamplerRegistry()
        self.clients: dict[bytes, Client] = {}
        self.had_clients = False
        self.last_client_left = None
        self.replies: queue.Queue = queue.Queue()  # [identity, *frames] from the lanes and reload threads
        self.lanes: dict[str, Lane] = {}  # a worker thread per device, by lane name
        self.stopping = False
        self.fault: str | None = None  # set once the GPU context is unusable: every answer is this error
        self._fault_lock = threading.Lock()  # lanes may fault at the same time
        self._stop_at: float | None = None
        self._call = threading.local()  # the request a thread is answering: seq, offered block, allocator
        # Lanes wake the loop through a pipe it polls beside the socket (zmq sockets are not
        # thread-safe, so only the loop thread sends).
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_request_bytes)
        claim_job(Path(directory))
        self.path = socket_path(Path(directory))
        self.sock.bind(f"ipc://{self.path}")
        os.chmod(self.path, 0o600)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self._wake_read, zmq.POLLIN)

    _current_seq = _per_thread("seq", "the sequence number of the request this thread answers")
    _block = _per_thread("block", "the result block that request offers, checked once")
    _alloc = _per_thread("alloc", "where that request's features are gathered (a BlockAllocator) or None")
    _memory = _per_thread("memory", "that request's process memory (an AnswerMemory)")

    # ---- the loop --------------------------------------------------------------------------
    def serve(self) -> None:
        next_check = 0.0
        try:
            while not self.stopping:
                events = dict(self.poller.poll(200))
                if self._wake_read in events:
                    self._drain_wake_ups()
                if self.sock in events:
                    self._receive(self.sock.recv_multipart(copy=False))
                while not self.replies.empty():
                    self._answered(self.replies.get_nowait())
                now = time.monotonic()
                if self._stop_at is not None and now >= self._stop_at:
                    log.critical("exiting after a device fault: %s", self.fault)
                    self.stopping = True
                if now >= next_check:
                    next_check = now + LIVENESS_PERIOD_S
                    self._check_liveness(now)
        finally:
            self.close()

    def _drain_wake_ups(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _post(self, reply: "list | _Unbuilt") -> None:
        """A reply ([identity, *frames], or what its frames are made of) from another thread: the
        loop sends it."""
        self.replies.put(reply)
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups the loop has not read yet: it will wake anyway

    def _check_liveness(self, now: float) -> None:
        if not pid_alive(self.parent_pid) or os.getppid() != self.parent_pid:
            log.info("the process that started the server (pid %d) is gone: exiting", self.parent_pid)
            self.stopping = True
        for identity, client in list(self.clients.items()):
            if not client.dead and not pid_alive(client.pid):
                log.info("client pid %d (rank %d) died: dropping its state", client.pid, client.rank)
                if client.in_flight:  # a lane may be writing into its blocks: drop it once answered
                    client.dead = True
                else:
                    self._drop(identity)
        self.samplers.drop_idle()
        if self.had_clients and not self.clients and not self.samplers.reloading:
            self.last_client_left = self.last_client_left or now
            if now - self.last_client_left > LAST_CLIENT_GRACE_S:
                log.info("every client has left: exiting")
                self.stopping = True
        else:
            self.last_client_left = None

    def _drop(self, identity: bytes) -> None:
        client = self.clients.pop(identity, None)
        if client:
            client.close()
            self.samplers.leave(client.sampler, identity)

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.stop()
        deadline = time.monotonic() + LANE_STOP_S
        for lane in self.lanes.values():  # a lane still writing into a block must finish before it is unmapped
            if not lane.join(max(0.0, deadline - time.monotonic())):
                log.warning("lane %s still runs a request at exit", lane.name)
        for identity in list(self.clients):
            self._drop(identity)
        self.sock.close(0)
        self.ctx.term()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self.path.unlink(missing_ok=True)
        pid_path(Path(self.directory)).unlink(missing_ok=True)
        try:
            os.rmdir(self.directory)
        except OSError:
            pass  # another file is there: not ours to remove

    # ---- one request -----------------------------------------------------------------------
    def _receive(self, frames: list) -> None:
        """A request from the socket: started now, or after its client's request in flight."""
        client = self.clients.get(frames[0].bytes)
        if client is None or not (client.in_flight or client.waiting):
            self._start(frames)
        elif len(client.waiting) < MAX_WAITING and \
                sum(len(f) for queued in (*client.waiting, frames) for f in queued[1:]) <= self.max_request_bytes:
            client.waiting.append(frames)
        else:
            error = RequestError(f"{len(client.waiting)} requests of this client already wait for the one being "
                                 "answered; send a request after the answer to the one before")
            self.sock.send_multipart([frames[0], *self._failure(p.request_seq(frames[1:]), error)], copy=False)

    def _start(self, frames: list) -> None:
        """Parse a request and answer it: on the loop thread when it changes the server's state
        (LOOP_OPS), else on its client's lane; the answer is sent by the loop (_answered)."""
        identity, body = frames[0].bytes, frames[1:]
        seq = p.request_seq(body)  # read first: an unreadable request is still answered
        try:
            if self.fault is not None:
                raise DeviceFaultError(self.fault)
            header, arrays = p.unpack_request(body, self.max_request_bytes)
            header["seq"] = seq
            op = header.get("op")
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise RequestError(f"unknown request {op!r}")
            if op != "hello" and identity not in self.clients:
                raise RequestError("this client has not said hello (or was dropped); reconnect")
            if "request_placed" in header:
                if arrays:
                    raise RequestError("a request carries its arrays in its frame or in its result block, not both")
                arrays = self._placed_arrays(identity, header, self.max_request_bytes - len(body[0]))
        except Exception as e:
            self.sock.send_multipart([identity, *self._failure(seq, e)], copy=False)
            return
        client = self.clients.get(identity)
        if op in LOOP_OPS:
            reply = self._run(identity, op, handler, header, arrays)
            if reply is not None:
                self.sock.send_multipart(reply, copy=False)
            elif identity in self.clients:  # answered later (a reload): its next request waits for that
                self.clients[identity].in_flight = True
            return
        client.in_flight = True
        # A CPU lane leaves its answer's frames to the loop: with requests queued it starts the
        # next one's kernels at once rather than building frames while numba's TBB worker spins
        # idle beside it (1-3 ms after a request's last parallel region). A GPU lane copies its answer from
        # the device on its own stream, so it builds its own.
        build = client.lane != CPU_LANE
        self._lane(client.lane).submit(lambda: self._post(self._run(identity, op, handler, header, arrays, build)))

    def _lane(self, name: str) -> Lane:
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = Lane(name, cpu_lane_workers() if name == CPU_LANE else 1)
        return lane

    def _run(self, identity: bytes, op: str, handler, header: dict, arrays: dict,
             build: bool = True) -> "list | _Unbuilt | None":
        """Answer one parsed request on this thread: the reply's frames (or, unless `build`, what
        they are made of, for the loop to build: ``_Unbuilt``), or None when it is answered later
        (reload)."""
        self._current_seq, self._alloc, self._block = header["seq"], None, None
        self._memory = AnswerMemory(self.max_answer_bytes)
        try:
            if self.fault is not None:  # a lane's queue may hold requests sent before the fault
                raise DeviceFaultError(self.fault)
            self._block = self._offered_block(identity, header)
            if op in GATHERING_OPS and isinstance(self._block, SharedBlock):
                self._alloc = BlockAllocator(self._block, self._memory)
            result = handler(identity, Args(op, header.get("args", {})), arrays)
            if result is None:
                return None
            reply_header, reply_arrays = result
            if not build:
                return _Unbuilt(identity, op, header, dict(reply_header, ok=True), reply_arrays, self._block,
                                self._alloc)
            reply = self._reply(identity, header, dict(reply_header, ok=True), reply_arrays, self._block,
                                self._alloc)
        except Exception as e:
            reply = self._failure(header["seq"], e, op)
        finally:
            self._alloc, self._block, self._memory = None, None, None  # nothing is held past its answer
        return [identity, *reply]

    def _answered(self, reply: "list | _Unbuilt") -> None:
        """Send a reply made on a lane or reload thread (building its frames first when the lane
        left that to the loop), then start its client's next request."""
        if isinstance(reply, _Unbuilt):
            reply = self._build(reply)
        identity = reply[0]
        self.sock.send_multipart(reply, copy=False)
        client = self.clients.get(identity)
        if client is None:
            return
        client.in_flight = False
        if client.dead:
            self._drop(identity)
            return
        while client.waiting and not client.in_flight:
            self._start(client.waiting.popleft())
            if self.clients.get(identity) is not client:  # it said bye: the rest are a stranger's
                for frames in client.waiting:
                    self._start(frames)
                client.waiting.clear()

    def _build(self, u: "_Unbuilt") -> list:
        """The frames of an answer a lane left to the loop ([identity, *frames])."""
        try:
            frames = self._reply(u.identity, u.request, u.header, u.arrays, u.block, u.alloc)
        except Exception as e:
            frames = self._failure(u.request["seq"], e, u.op)
        return [u.identity, *frames]

    def _failure(self, seq, error: Exception, op: str | None = None) -> list:
        """The reply frames of request `seq` (`op`, where known) that failed with `error`."""
        header = {"seq": seq}
        if isinstance(error, DeviceFaultError):
            return self._error(header, "DeviceFaultError", self._device_fault(error))
        if isinstance(error, NegSampleError):
            return self._error(header, type(error).__name__, str(error))
        # A bug must not take the node's sampling down: report it to the caller.
        log.error("request %r (seq %s) failed", op, seq, exc_info=error)
        return self._error(header, "InternalError", _internal(error))

    def _device_fault(self, error: DeviceFaultError) -> str:
        """Record a dead GPU context: from now on every request is answered with it, and the
        server exits after FAULT_DRAIN_S (its clients then see it gone, not InternalError
        forever). Returns what callers are told."""
        with self._fault_lock:
            if self.fault is None:
                self.fault = (f"the node's sampling server (pid {os.getpid()}) lost its GPU: {error}; it is exiting. "
                              "Restart the job (check the GPU with nvidia-smi first)")
                log.critical("%s", self.fault)
                self._stop_at = time.monotonic() + FAULT_DRAIN_S
        return self.fault

    @staticmethod
    def _error(header: dict, kind: str, message: str) -> list:
        return p.pack({"ok": False, "seq": header.get("seq"), "error": kind, "message": message}, {})

    def _placed_arrays(self, identity: bytes, request: dict, max_bytes: int) -> dict:
        """Copies of the arrays a request placed in the result block it offers, at most
        max_bytes (what its frame left of max_request_bytes)."""
        block = self._offered_block(identity, request)
        if not isinstance(block, SharedBlock):
            raise RequestError(f"the request places its arrays in result block {str(request.get('block'))[:40]}, "
                               "which is not a shared-memory block this client mapped (map_block)")
        return p.copy_placed(block.memory, request.pop("request_placed"), max_bytes)

    def _offered_block(self, identity: bytes, request: dict):
        """The result block the request offers (None if none)."""
        client = self.clients.get(identity)
        block_id = request.get("block")
        return client.blocks.get(block_id) if client and isinstance(block_id, int) else None

    def _reply(self, identity: bytes, request: dict, header: dict, arrays: dict, block,
               alloc: BlockAllocator | None) -> list:
        """Frames of a reply. Arrays go into the block the client offered when they fit (a
        shared-memory block takes every array, and already holds those gathered into it
        through `alloc`; a CUDA block the ones on the GPU); the rest, and everything when
        nothing fits, go through the socket, with the size that would have fitted ("needed")
        so the client can map a bigger block."""
        header["seq"] = request.get("seq")
        block = block if arrays else None
        if isinstance(block, SharedBlock):
            placed, rest = [], {}
            for name, a in arrays.items():
                offset = alloc.offset_of(a) if alloc else None
                if offset is None:
                    rest[name] = a
                else:
                    placed.append(p.placed_meta(name, a, offset))
            header["placed"], arrays = placed, rest
            metas, needed = p.layout(arrays, alloc.used if alloc else 0)
            if arrays and needed <= block.size:
                block.write(arrays, metas)
                header["placed"] += metas
                arrays = {}
            elif arrays:
                header["needed"] = needed
        elif block is not None:
            placed = {n: a for n, a in arrays.items() if p.on_gpu(a)}
            metas, needed = p.layout(placed)
            if placed and needed <= block.size:
                with self._engine(identity).backend.device.active():
                    block.write(placed, metas)
                header["placed"] = metas
                arrays = {n: a for n, a in arrays.items() if n not in placed}
            elif placed:
                header["needed"] = needed
        return p.pack(header, arrays)

    # ---- operations ------------------------------------------------------------------------
    def op_hello(self, identity, args, arrays):
        """A client for one hosted sampler: local rank 0 opens it (args "open"), another rank joins
        rank 0's of the same settings and place (answered "pending" until rank 0 made it), a
        DataLoader worker attaches to it by id."""
        rank, pid = args.int("rank"), args.int("pid")
        if not 0 < pid <= PID_MAX_LIMIT:  # its liveness is watched, and its blocks found, by this number
            raise RequestError(f"hello: argument 'pid' must be this client's process id (1 to {PID_MAX_LIMIT}); "
                               f"got {pid}")
        try:
            theirs = SamplerConfig.from_wire(args["config"])
        except ValueError as e:  # from_wire's every refusal of untrusted settings
            raise RequestError(f"hello: the sampler's settings are refused: {e}") from None
        if args.get("attach") is not None:
            hosted = self.samplers.attach(args.int("attach"))
        elif args.get("open"):
            hosted = self.samplers.open(theirs, args.int("slot"))
        else:
            hosted = self.samplers.join(theirs, args.int("slot"), args.int("ordinal"))
            if hosted is None:
                return {"pending": self.samplers.mismatch(theirs, args.int("slot"), None)}, {}
        engine = hosted.engines.engine_for(args.get("device"))  # the rank's own GPU: its requests run there
        seed = rank_seed(hosted.seed if theirs.seed is None else theirs.seed, rank)
        if args.get("stream") is not None:  # a DataLoader worker: a stream of its own, beside its rank's
            seed = worker_seed(seed, args.int("stream"))
        hosted.clients.add(identity)
        self.clients[identity] = Client(pid, rank, hosted, RandomStream(seed), engine=engine,
                                        lane=hosted.engines.lane(engine))
        self.had_clients = True
        return {"server_pid": os.getpid(), "loaded": engine.loaded, "max_request_bytes": self.max_request_bytes,
                "seed": seed, "sampler": hosted.ident}, {}

    def op_bye(self, identity, args, arrays):
        self._drop(identity)
        if args.get("last") and not self.clients:  # the starter's last sampler left: no grace to wait out
            self.stopping = True
        return {}, {}

    def _add_block(self, identity, args: Args, open_block) -> None:
        """Hold the block open_block() opens as the client's block args["block"], closing one it
        replaces; a client holds at most MAX_CLIENT_BLOCKS (checked before opening)."""
        blocks, ident = self.clients[identity].blocks, args.int("block")
        if ident not in blocks and len(blocks) >= MAX_CLIENT_BLOCKS:
            raise RequestError(f"{args.op}: this client has {len(blocks)} result blocks mapped, the most it may; "
                               "unmap one (unmap_block) first")
        block = open_block()
        replaced = blocks.pop(ident, None)
        if replaced is not None:
            replaced.close()
        blocks[ident] = block

    def op_map_block(self, identity, args, arrays):
        pid, fd, size = self.clients[identity].pid, args.int("fd"), args.int("size")

        def open_shared():
            try:
                return SharedBlock(pid, fd, size)
            except ValueError as e:
                raise RequestError(f"map_block: {e}") from None
            except OSError as e:  # mmap's: no address space, or no more mappings (vm.max_map_count)
                raise RequestError(f"map_block: cannot map {size:,} bytes: {e.strerror}; answers go "
                                   "through the socket") from None
        self._add_block(identity, args, open_shared)
        return {}, {}

    def op_map_cuda_block(self, identity, args, arrays):
        """Open a rank's CUDA result block. It is written by the GPU that runs the rank's requests:
        one on another GPU (the rank allocates on its current device, its sampler names
        another) is refused when that GPU has no peer access to it, rather than failing at
        the first answer."""
        engines = self.clients[identity].sampler.engines
        device = getattr(self._engine(identity).backend, "device", None)
        if device is None:
            raise RequestError("results='cuda' needs the node's server on a GPU: start it with device='cuda' "
                               "(or 'auto' on a GPU node, with cupy installed), or use results='shm'")
        where = server_ordinal(engines.kind, args["device"], os.environ.get(VISIBLE))
        if where is None:
            raise RequestError("map_cuda_block: argument 'device' must name the GPU the block is on")
        if not device.can_access_peer(where):
            raise RequestError(
                f"this rank's CUDA result block is on {engines.kind}:{where} but its requests run on "
                f"{engines.kind}:{device.ordinal} (the server's numbering), which has no peer access to "
                f"{engines.kind}:{where} (see nvidia-smi topo -m), so answers cannot be written there. Sample on the "
                "GPU the rank allocates on: torch.cuda.set_device(local_rank) and device='cuda' (or "
                "device='cuda:N' with that N), or use results='shm'")
        if getattr(device, "cp", None) is None:
            raise RequestError("results='cuda' needs the node's server on a GPU (this one runs the CPU emulation); "
                               "use results='shm'")
        handle = bytes.fromhex(args["handle"])
        self._add_block(identity, args, lambda: RemoteCudaBlock(device.cp, device.ordinal, handle, args.int("size")))
        return {}, {}

    def op_unmap_block(self, identity, args, arrays):
        block = self.clients[identity].blocks.pop(args.int("block"), None)
        if block is not None:
            block.close()
        return {}, {}

    def op_reload(self, identity, args, arrays):
        """Build the new table on a thread and swap it in; a reload asked for during another one
        of the same sampler (each DataLoader worker loading the table) runs after it."""
        hosted = self.clients[identity].sampler
        source = args["path"] if args.get("path") else p.decode_columns(args["columns"], arrays)
        with hosted.reload_lock:
            hosted.queued_reloads.append((identity, source, self._current_seq))
            if hosted.reloading is not None:
                return None
            hosted.reloading = threading.Thread(target=self._reload, args=(hosted,), name="reload", daemon=True)
        hosted.reloading.start()
        return None

    def _reload(self, hosted: HostedSampler) -> None:
        """The reload thread of one sampler: its queued reloads in order, each answered when done."""
        while True:
            with hosted.reload_lock:
                if not hosted.queued_reloads:
                    hosted.reloading = None
                    return
                identity, source, seq = hosted.queued_reloads.pop(0)
            try:
                hosted.engines.reload(source, progress=False)  # on every device in use, then switched together
                reply = p.pack({"ok": True, "seq": seq}, {})
            except Exception as e:
                reply = self._failure(seq, e, "reload")
            self._post([identity, *reply])

    def op_describe(self, identity, args, arrays):
        return {"text": self._engine(identity).describe()}, {}

    def _stream(self, identity) -> RandomStream:
        return self.clients[identity].stream

    def _engine(self, identity) -> Engine:
        return self.clients[identity].engine

    def op_sample_ids(self, identity, args, arrays):
        neg = self._engine(identity).sample_ids(p.decode(args["dedup"], arrays), p.decode(args["counts"], arrays),
                                     p.decode(args["tags"], arrays), args["avoid_conflict"],
                                     args["avoid_all"], self._stream(identity))
        return {}, {"out": neg}

    def op_valid_sample_ids(self, identity, args, arrays):
        out = self._engine(identity).valid_sample_ids(p.decode(args["ids"], arrays), args["default"])
        return {}, {"out": out}

    def op_combine_vector(self, identity, args, arrays):
        out = self._engine(identity).combine_vector_with_sample_counts(p.decode(args["origin"], arrays),
                                                            p.decode(args["counts"], arrays),
                                                            p.decode(args["sampled"], arrays))
        return {}, {"out": out}

    def op_pack_feature(self, identity, args, arrays):
        out = {}
        features = self._engine(identity).pack_feature(p.decode(args["ids"], arrays), args["default"],
                                                       self._alloc or self._memory)
        table = p.encode_table("f", features, out)
        return {"table": table}, out

    def op_log_q(self, identity, args, arrays):
        out = self._engine(identity).log_q(p.decode(args["ids"], arrays), p.decode(args["counts"], arrays),
                                           p.decode(args["tags"], arrays), args.int("n"))
        return {}, {"out": out}

    def op_sample(self, identity, args, arrays):
        neg, valid, ids, features, counts, log_q = self._engine(identity).fused_sample(
            p.decode(args["dedup"], arrays), p.decode(args["counts"], arrays), p.decode(args["tags"], arrays),
            args["default"], args["avoid_conflict"], args["avoid_all"], args["log_q"], self._stream(identity),
            self._alloc or self._memory)
        out = {"neg": neg, "valid": valid, "ids": ids, "counts": counts}
        if log_q is not None:
            out["log_q"] = log_q
        return {"table": p.encode_table("f", features, out)}, out


def _internal(e: Exception) -> str:
    """What a caller is told of a failure of the server itself (the traceback is in its log)."""
    return (f"{type(e).__name__}: {e} (a failure of the sampling server, not of this request; the server's log "
            "has the traceback)")


LOG_FILE_ENV, LOG_LEVEL_ENV = "GPU_NEGSAMPLE_SERVER_LOG", "GPU_NEGSAMPLE_SERVER_LOG_LEVEL"


def _configure_logging() -> None:
    """The server's log: its own failures (with tracebacks) and lifecycle events. It goes to a
    file when GPU_NEGSAMPLE_SERVER_LOG names one, else to the stderr it inherited from local
    rank 0; only WARNING and above unless GPU_NEGSAMPLE_SERVER_LOG_LEVEL says otherwise, so a
    healthy server stays quiet in rank 0's output."""
    level = os.environ.get(LOG_LEVEL_ENV, "WARNING").upper()
    if not isinstance(logging.getLevelName(level), int):
        level = "WARNING"
    target = os.environ.get(LOG_FILE_ENV)
    logging.basicConfig(level=level, filename=target or None,
                        format=f"%(asctime)s [gpu_negsample server {os.getpid()}] %(levelname)s %(message)s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m gpu_negsample.server", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
The node-local negative sampling server of gpu_negsample: one process per job and machine
that holds the negative tables of the job's samplers and answers the sampling requests of
every training process (LocalRpcDataSampler) of the node over a private local socket.

You do not start it yourself: local rank 0's LocalRpcDataSampler starts it with these
arguments, every rank connects to it, and it exits when that process dies or when every
client has said goodbye (or died). Requests of ranks on different GPUs run at the same
time, each on its own GPU; one client's requests are answered in order; a reload builds
the new table aside while requests keep using the old one.""",
        epilog=f"""\
environment:
  {LOG_FILE_ENV}=PATH
      write the server's log to PATH (default: the stderr it inherited from local rank 0)
  {LOG_LEVEL_ENV}=LEVEL
      DEBUG, INFO, WARNING (default) or ERROR

exit status: 0 when its clients are gone, 1 on a start-up error (another server already
serves the job), {EXIT_DEVICE_FAULT} after a GPU fault (the GPU context was unusable).""")
    ap.add_argument("--dir", required=True, help="the job's private (0700) directory; the socket is created in it")
    ap.add_argument("--parent", type=int, required=True,
                    help="pid of the process that starts the server; the server exits when it dies")
    ap.add_argument("--max-request-bytes", type=int, required=True,
                    help="the largest request accepted, in bytes (clients are told and refuse bigger ones)")
    args = ap.parse_args(argv)
    _configure_logging()
    os.umask(0o077)  # the socket is 0600 from the moment it exists: a client refuses any other mode
    try:
        server = SamplingServer(args.dir, args.parent, args.max_request_bytes)
    except JobTakenError as e:  # processes that each think they are local rank 0 (DataLoader workers)
        log.debug("%s: this one exits; its starter joins that one", e)  # normal: nothing to print
        sys.exit(EXIT_JOB_TAKEN)

    def stop(signum, frame):
        server.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not pid_alive(args.parent):  # the parent died while the server started
        server.close()
        return
    server.serve()  # returns after close(): socket, directory and blocks are gone
    logging.shutdown()
    # Skip the interpreter's teardown (torch, numba: seconds on a loaded machine) that the
    # starter may be waiting on at its own exit; there is nothing left to flush.
    os._exit(EXIT_DEVICE_FAULT if server.fault is not None else 0)
