"""LocalRpcDataSampler: RecIS's client class; every training process of a node samples
through the one server that local rank 0 starts."""
from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import mmap
import os
import subprocess
import sys
import threading
import time
import weakref

import torch
import zmq

from ..columns import read_table_input
from ..config import DEFAULT_MAX_NEGATIVES, SamplerConfig
from ..errors import (DeviceFaultError, NegSampleError, NotLoadedError, RequestError, TableError,
                      UnsatisfiableRowError)
from ..request import int64_scalar
from ..sampler import SamplerBase
from ..transport import SampleResult
from . import protocol as p
from .rank_device import VISIBLE, rank_device
from .registry import settings_key
from .endpoint import (EXIT_JOB_TAKEN, RANK_VARIABLES, check_job_path, create_block, global_rank, job_dir,
                       job_name, live_server_pid, local_rank, pid_alive, process_group_peers, ranks_by_process_group,
                       remove_empty_dirs, socket_path)

log = logging.getLogger("gpu_negsample")

DEFAULT_MAX_REQUEST_BYTES = 2**31
MAX_BLOCKS = 8
MIN_BLOCK_BYTES = 1 << 20
OTHER_RANKS_WAIT_S = 30.0  # local rank 0's close() lets the other ranks finish this long
_ERRORS = {e.__name__: e for e in (RequestError, TableError, UnsatisfiableRowError, NotLoadedError, DeviceFaultError)}


class ServerError(NegSampleError):
    """The sampling server is gone or failed in a way that is not the request's fault."""


@contextlib.contextmanager
def _server_fault():
    """An answer's array described wrongly or placed outside its block is the server's fault."""
    try:
        yield
    except RequestError as e:
        raise ServerError(f"the sampling server's answer is malformed: {e}") from None


class _Block:
    """A result block the server writes answers into (and a request's arrays go into, when
    they fit); offered again only when no array the caller holds views it any more and no
    answer to a request sent with it is still to come (``reusable``)."""

    kind = ""
    # The sequence number of a request sent with this block and not answered yet (its caller
    # gave up: an interrupt): the server may still write that answer here.
    pending_seq: int | None = None

    def __init__(self, ident: int, size: int):
        self.ident, self.size = ident, size
        self.live_arrays = 0

    def release(self) -> None:
        self.live_arrays -= 1
        if self.live_arrays == 0:
            self._last_view_gone()

    def _last_view_gone(self) -> None:
        """Called when the caller holds no view of the block any more."""

    def reusable(self) -> bool:
        """Whether the next request may use this block now (its arrays written here, its
        answer too): no view of an answer here is held, no request sent with it is unanswered,
        and (``_settled``) nothing queued still reads it."""
        return self.live_arrays == 0 and self.pending_seq is None and self._settled()

    def _settled(self) -> bool:
        return True

    def views(self, metas: list) -> dict:
        """The answer's arrays in this block. Their lifetime is that of their ``owners`` (the
        objects whose memory they are), each watched by a finalizer: an array derived from a
        view (a slice, ``.view``) keeps its owner, so the block stays taken until it is gone."""
        arrays, owners = self._views(metas)
        for owner in owners:
            self.live_arrays += 1
            weakref.finalize(owner, self.release)
        return arrays


class _ShmBlock(_Block):
    """Shared memory: a sealed memfd (``create_block``) mapped here and in the server."""

    kind = "shm"

    def __init__(self, ident: int, size: int, memory: mmap.mmap):
        super().__init__(ident, size)
        self.memory = memory

    def _views(self, metas):
        """One owner for the whole answer: every array is a view of one base array over the
        block (``read_block``), so one finalizer, not one per array, says when all are gone."""
        with _server_fault():
            arrays = p.read_block(self.memory, metas)
        return arrays, [next(iter(arrays.values())).base] if arrays else []

    def close(self) -> None:
        try:
            self.memory.close()
        except BufferError:
            pass  # the caller still holds tensors on it; the mapping goes with them


class _CudaBlock(_Block):
    """Memory on this rank's GPU that the server opened through a CUDA IPC handle.

    Each answer array is a CuPy array over its range of the block, handed to torch through
    DLPack: the torch tensor's storage owns the CuPy array, so every tensor derived from it
    keeps the range taken. When the last one is gone, an event is recorded on the stream that
    was current when the answer arrived and on the one current where the last view went (a
    prefetch thread's, say); the block is offered again only once the kernels the rank
    queued on both before that point (which may still read the old answer) have run past it.
    torch's ``record_stream`` does nothing for memory it did not allocate: a rank that reads
    an answer on a third stream synchronises that stream before dropping the answer.
    """

    kind = "cuda"

    def __init__(self, ident: int, size: int, device: int):
        import cupy

        super().__init__(ident, size)
        self._cupy, self.device = cupy, device
        self._answer_stream: torch.cuda.Stream | None = None  # current when the last answer arrived
        self._done: list[torch.cuda.Event] = []  # recorded when the last view went
        with cupy.cuda.Device(device):
            self.ptr = cupy.cuda.runtime.malloc(size)  # its own allocation: the IPC handle covers exactly it
            self.handle = cupy.cuda.runtime.ipcGetMemHandle(self.ptr)

    def _views(self, metas):
        cp, out, owners = self._cupy, {}, []
        self._answer_stream = torch.cuda.current_stream(self.device)
        for meta in metas:
            with _server_fault():
                name, dtype, shape, offset, nbytes = p.placed_range(meta, self.size)
            memory = cp.cuda.UnownedMemory(self.ptr + offset, max(nbytes, 1), self, self.device)
            owner = cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(memory, 0))
            out[name] = torch.from_dlpack(owner)
            owners.append(owner)
        return out, owners

    def _last_view_gone(self) -> None:
        streams = {torch.cuda.current_stream(self.device), self._answer_stream} - {None}
        self._done = [torch.cuda.Event() for _ in streams]
        for event, stream in zip(self._done, streams):
            event.record(stream)

    def _settled(self) -> bool:
        return all(event.query() for event in self._done)

    def close(self) -> None:
        # Else the caller's tensors keep using it, or the server may still write an answer
        # there through its IPC mapping, until the process ends.
        if self.live_arrays == 0 and self.pending_seq is None:
            for event in self._done:
                event.synchronize()  # the rank's queued kernels may still read it
            with self._cupy.cuda.Device(self.device):
                self._cupy.cuda.runtime.free(self.ptr)


class _StartedServer:
    """The server local rank 0 started for a job; this process's samplers of that job share it
    (each is a sampler hosted there), and the last one to close waits for it to exit."""

    def __init__(self, job: str, directory, max_request_bytes: int):
        self.job, self.directory, self.owner, self.users = job, directory, os.getpid(), 0
        cmd = [sys.executable, "-m", "gpu_negsample.server", "--dir", str(directory),
               "--parent", str(os.getpid()), "--max-request-bytes", str(max_request_bytes)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    @classmethod
    def for_job(cls, job: str, directory, max_request_bytes: int) -> "_StartedServer | None":
        """This process's running server of the job, else a new one (the first sampler's
        max_request_bytes bounds the server's requests); None where another process's server
        already serves the job (DataLoader workers that each think they are local rank 0)."""
        server = _started.get(job)
        if server is None or server.owner != os.getpid() or server.process.poll() is not None:
            if live_server_pid(directory) is not None:
                return None
            server = _started[job] = cls(job, directory, max_request_bytes)
        server.users += 1
        return server

    def leave(self, wait_s: float) -> None:
        """One sampler is done; after the last, wait `wait_s` for the other ranks to leave and the
        server to exit, then stop it."""
        self.users -= 1
        if self.users:
            return
        if _started.get(self.job) is self:
            del _started[self.job]
        try:
            self.process.wait(timeout=wait_s)  # the server leaves once every rank has said goodbye
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(timeout=10)
        remove_empty_dirs(self.directory)


_started: dict[str, _StartedServer] = {}  # job -> the server this process started for it
_made: collections.Counter = collections.Counter()  # samplers this process made, by job and by (job, settings)


class _Release:
    """What a transport holds, released when it is closed or collected: its socket, its blocks,
    and its share of the server this process started (given `wait_s` for other ranks)."""

    def __init__(self, sock, ctx, blocks, started: _StartedServer | None):
        self.sock, self.ctx, self.blocks, self.started = sock, ctx, blocks, started
        self.pid = os.getpid()
        self.wait_s = OTHER_RANKS_WAIT_S

    def __call__(self) -> None:
        if os.getpid() != self.pid:
            return  # a forked child's copy: the sockets and the server are its parent's
        self.sock.close(0)
        self.ctx.term()
        for block in self.blocks:
            block.close()
        if self.started is not None:
            self.started.leave(self.wait_s)


_live: "weakref.WeakSet[ServerTransport]" = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """A process that ends without close() (an exception in training) leaves at once: its server
    could not outlive it anyway, so local rank 0 does not wait for other ranks here."""
    for transport in list(_live):
        transport.close(wait_for_other_ranks=0.0)


def _worker_stream() -> int:
    """What makes a worker's random stream its own: torch's per-worker seed in a DataLoader
    worker (different per worker and epoch, reproducible under torch.manual_seed), else the pid."""
    info = torch.utils.data.get_worker_info()
    return int(info.seed) % 2**64 if info is not None else os.getpid()


class ServerTransport:
    """The sampler's requests, carried to the node's sampling server over a local socket.

    Local rank 0 starts the server; every rank connects. One request at a time per
    transport (a lock: a prefetch thread may share it); answers come back in shared-memory
    blocks, through the socket, or in CUDA IPC buffers (``results``).
    """

    def __init__(self, config: SamplerConfig, name: str | None, results: str, connect_timeout: float,
                 wait_for_table_timeout: float, max_request_bytes: int):
        if results not in ("shm", "socket", "cuda"):
            raise ValueError(f"results must be 'shm', 'socket' or 'cuda'; got {results!r}")
        if results == "cuda" and not torch.cuda.is_available():
            raise ValueError("results='cuda' puts answers on this rank's GPU; this process has no CUDA device")
        self.config = config.to_wire()
        self.local_rank, self.rank = local_rank(), global_rank()
        self.device = rank_device(config.device)  # this rank's GPU: the server runs its requests there
        self.job = job_name(name)
        self._by_process_group = ranks_by_process_group(name)
        self._next_peer_check = time.monotonic() + 1.0
        if self.local_rank != 0:
            self._check_rank_0_can_exist()
        self.directory = job_dir(self.job, create=self.local_rank == 0)
        self.results = results
        self.connect_timeout = connect_timeout
        self.wait_for_table_timeout = wait_for_table_timeout
        self.max_request_bytes = int(max_request_bytes)
        self._closed = False
        self.server_pid = None  # the server's hello says it; a wait for that hello checks it first
        self._started = _StartedServer.for_job(self.job, self.directory, self.max_request_bytes) \
            if self.local_rank == 0 else None
        settings = settings_key(config)
        hello = {"open": self.local_rank == 0, "slot": _made[(self.job, settings)], "ordinal": _made[self.job]}
        _made[(self.job, settings)] += 1
        _made[self.job] += 1
        self._open_connection(hello)

    def _open_connection(self, hello: dict) -> None:
        """This process's socket, blocks and client identity on the server, for the hosted
        sampler `hello` names. A process that got the sampler by fork or pickle (a DataLoader
        worker) makes its own: sockets and mappings are never shared between processes."""
        self._pid = os.getpid()
        self._lock = threading.Lock()  # one request at a time (a prefetch thread may share the sampler)
        self._seq = itertools.count()
        self._block_ids = itertools.count()
        self._blocks: list[_Block] = []
        self._server_max_request_bytes = self.max_request_bytes  # until the server's hello says its own
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._release = _Release(self._sock, self._ctx, self._blocks, self._started)
        self._finalizer = weakref.finalize(self, self._release)
        self._finalizer.atexit = False  # _close_at_exit closes live transports first, without waiting on others
        _live.add(self)
        try:
            deadline = time.monotonic() + self.connect_timeout
            self._connect(deadline)
            reply = self._hello(dict(hello, pid=os.getpid(), rank=self.rank, config=self.config, device=self.device),
                                deadline)
        except BaseException:
            self._closed = True
            self._release.wait_s = 0.0  # nobody else will ask a server that never answered to leave
            self._finalizer()
            raise
        self.server_pid, self._seed, self.sampler_id = reply["server_pid"], reply["seed"], reply["sampler"]
        self._server_max_request_bytes = int(reply.get("max_request_bytes", self.max_request_bytes))

    def _here(self) -> None:
        """Attach this process to the hosted sampler when the sampler came by fork or pickle."""
        if self._closed:
            raise ServerError(f"this sampler of job {self.job!r} is closed")
        if self._pid != os.getpid():
            if self._finalizer is not None:
                self._finalizer.detach()  # a forked copy: the parent's socket and blocks are the parent's to release
            self._started = None
            self._open_connection({"attach": self.sampler_id, "stream": _worker_stream()})

    _PICKLED = ("config", "local_rank", "rank", "device", "job", "_by_process_group", "directory", "results",
                "connect_timeout", "wait_for_table_timeout", "max_request_bytes", "server_pid", "sampler_id")

    def __getstate__(self) -> dict:
        """A DataLoader worker's copy carries the settings and the job's hosted sampler, never
        sockets, blocks or tables: it becomes one more client of the same server."""
        if self._closed:
            raise ServerError(f"a closed sampler of job {self.job!r} cannot be sent to another process")
        return {k: self.__dict__[k] for k in self._PICKLED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._closed, self._started, self._pid, self._finalizer = False, None, None, None  # attaches at first use
        self._next_peer_check = 0.0

    # ---- lifecycle -------------------------------------------------------------------------
    def _connect(self, deadline: float) -> None:
        """Connect once the job's socket exists and is this user's own (checked before connecting,
        so a rank never sends a positive to a server another user runs)."""
        while not socket_path(self.directory).exists():
            self._check_start(deadline)
            time.sleep(0.05)
        check_job_path(self.directory)
        self._sock.connect(f"ipc://{socket_path(self.directory)}")

    def _check_rank_0_can_exist(self) -> None:
        """A rank found by process group whose group holds no other process waits for a local
        rank 0 that cannot exist: say at once what to set instead."""
        if self._by_process_group and not process_group_peers():
            set_vars = ", ".join(f"{v}={os.environ[v]}" for v in RANK_VARIABLES if os.environ.get(v, "").strip())
            raise ServerError(
                f"{set_vars} is set without name= or a launcher's MASTER_ADDR/MASTER_PORT, so this rank looks "
                f"for local rank 0's server by process group ({os.getpgrp()}), and no other process is in "
                "that group: no rank 0 of this job can start one. Give every rank of the job the same "
                "LocalRpcDataSampler(..., name='your-job'), or set MASTER_ADDR and MASTER_PORT as a launcher does")

    def _check_start(self, deadline: float) -> None:
        """Raise when the server this rank waits for cannot come any more."""
        if self.local_rank != 0 and time.monotonic() > self._next_peer_check:
            self._next_peer_check = time.monotonic() + 1.0  # a scan of /proc: once a second is enough
            self._check_rank_0_can_exist()
        process = self._started.process if self._started is not None else None
        if process is not None and process.poll() not in (None, EXIT_JOB_TAKEN):
            raise ServerError(f"the sampling server exited with code {process.returncode} while "
                              f"starting; its log is above (another server for job {self.job!r}?)")
        if time.monotonic() > deadline:
            raise ServerError(f"no sampling server answered at {socket_path(self.directory)} before "
                              f"connect_timeout; local rank 0 of job {self.job!r} starts it (is it running, "
                              "with the same name=?)")

    def _hello(self, args: dict, deadline: float) -> dict:
        """Become a client of this sampler's hosted twin: local rank 0 opens it, another rank
        waits (up to the deadline) for rank 0 to have made it, a worker attaches to it."""
        while True:
            try:
                reply = self._request("hello", args, {}, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                self._check_start(deadline)
                continue
            if "pending" not in reply:
                return reply
            if time.monotonic() > deadline:
                raise RequestError(f"waited connect_timeout for local rank 0 of job {self.job!r} to make this "
                                   f"sampler: {reply['pending']}")
            time.sleep(0.1)

    def close(self, wait_for_other_ranks: float = OTHER_RANKS_WAIT_S) -> None:
        """Say goodbye to the server; local rank 0 also waits (up to `wait_for_other_ranks`
        seconds) for the other ranks to leave and the server to exit. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return  # a forked copy that never attached: the parent's connection is the parent's
        if self._lock.acquire(timeout=min(10.0, wait_for_other_ranks + 1)):  # a prefetch thread may be mid-request
            try:
                if self.server_pid and pid_alive(self.server_pid):
                    last = self._started is not None and self._started.users == 1
                    self._request("bye", {"last": last}, {}, timeout=min(5.0, wait_for_other_ranks + 1))
            except (NegSampleError, TimeoutError):
                pass
            finally:
                self._lock.release()
        self._release.wait_s = wait_for_other_ranks
        self._finalizer()

    # ---- transport -------------------------------------------------------------------------
    def _request(self, op: str, args: dict, arrays: dict, timeout: float | None = None, block=None) -> dict:
        seq = next(self._seq)
        header = {"op": op, "args": args}
        if block is not None:
            header["block"] = block.ident
        # The arrays ride in the result block when they fit (the server copies them out): a
        # 4096x10 fused request then sends ~0.4 kB, not 131 kB, through zmq's I/O threads.
        placed = isinstance(block, _ShmBlock) and p.place_arrays(header, arrays, block.memory)
        frames = p.pack_request(seq, header, {} if placed else arrays)
        size = sum(memoryview(f).nbytes for f in frames) + (sum(a.nbytes for a in arrays.values()) if placed else 0)
        limit = min(self.max_request_bytes, self._server_max_request_bytes)
        if size > limit:  # the server would drop a bigger frame unanswered (zmq's ZMQ_MAXMSGSIZE), or refuse it
            raise RequestError(f"{op}: request of {size:,} bytes exceeds max_request_bytes={limit:,} (the smaller of "
                               "this rank's and the server's); reload big tables from a Parquet path")
        if block is not None:
            block.pending_seq = seq
        self._sock.send_multipart(frames, copy=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._sock.poll(500):
                reply = self._sock.recv_multipart(copy=False)  # reply_arrays copies each array once
                with _server_fault():
                    head = p.reply_header(reply[0])
                self._answered(head.get("seq"))
                if head.get("seq") != seq:
                    continue  # the answer to an earlier request that timed out
                return self._decode_reply(head, reply, block)
            if self.server_pid is not None and not pid_alive(self.server_pid):
                raise ServerError(f"the sampling server (pid {self.server_pid}) of job {self.job!r} died; "
                                  "restart the job (local rank 0 starts a new server)")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(op)

    def _read_abandoned_answers(self) -> None:
        """Read the answers already here to requests whose callers gave up (the lock is held
        and no request of ours is in flight, so every reply waiting is one of those), so that
        their blocks are offered again rather than passed over for new ones."""
        while any(b.pending_seq is not None for b in self._blocks) and self._sock.poll(0):
            reply = self._sock.recv_multipart(copy=False)
            with _server_fault():
                self._answered(p.reply_header(reply[0]).get("seq"))

    def _answered(self, seq) -> None:
        """The server answered request `seq`: the block sent with it is no longer written by
        that answer. (Only that one: a request refused while others of this client wait is
        answered at once, ahead of them.)"""
        for block in self._blocks:
            if block.pending_seq == seq:
                block.pending_seq = None

    def _decode_reply(self, head: dict, reply: list, block) -> dict:
        if not head.get("ok"):
            kind = _ERRORS.get(head.get("error"), ServerError)
            raise kind(head.get("message", "the sampling server failed"))
        with _server_fault():
            arrays = p.reply_arrays(head, reply)  # what came through the socket
        if "placed" in head:
            arrays.update(block.views(head["placed"]))
        if head.get("needed"):
            self._grow_blocks(int(head["needed"]))
        head["arrays"] = arrays
        return head

    def _free_block(self):
        if self.results == "socket":
            return None
        self._read_abandoned_answers()
        free = [b for b in self._blocks if b.reusable()]
        return max(free, key=lambda b: b.size) if free else (self._new_block(MIN_BLOCK_BYTES)
                                                             if len(self._blocks) < MAX_BLOCKS else None)

    def _grow_blocks(self, needed: int) -> None:
        """Replace the smallest free block by one that fits `needed` (results that did not fit came by socket)."""
        free = [b for b in self._blocks if b.reusable()]
        if free and len(self._blocks) >= MAX_BLOCKS:
            smallest = min(free, key=lambda b: b.size)
            self._blocks.remove(smallest)
            self._request("unmap_block", {"block": smallest.ident}, {})
            smallest.close()
        if len(self._blocks) < MAX_BLOCKS:
            self._new_block(max(2 * needed, MIN_BLOCK_BYTES))

    def _new_block(self, size: int) -> _Block | None:
        ident = next(self._block_ids)
        if self.results == "cuda":
            on = self.device["ordinal"] if self.device is not None else torch.cuda.current_device()
            block = _CudaBlock(ident, size, on)  # on the GPU the server samples this rank's requests on
            where = {"ordinal": on, "visible": os.environ.get(VISIBLE)}  # in this process's numbering
            try:
                self._request("map_cuda_block", {"handle": bytes(block.handle).hex(), "size": size, "block": ident,
                                                 "device": where}, {})
            except BaseException:
                block.close()  # refused (e.g. no peer access): its GPU memory goes back now, not at exit
                raise
            self._blocks.append(block)
            return block
        try:
            fd = create_block(size)
        except OSError as e:
            log.warning("no memory for a result block of %d bytes (%s): answers come through the socket from now on",
                        size, e)
            self.results = "socket"
            return None
        try:
            block = _ShmBlock(ident, size, mmap.mmap(fd, size))
            self._request("map_block", {"fd": fd, "size": size, "block": ident}, {})
        except RequestError as e:  # the server could not map it (e.g. /proc hidden from it): use the socket
            log.warning("%s", e)
            self.results = "socket"
            block.close()
            return None
        finally:
            os.close(fd)  # both sides have it mapped: the memory lives as long as a mapping does
        self._blocks.append(block)
        return block

    def _call(self, op: str, args: dict, arrays: dict) -> dict:
        """One request that returns results. Local rank 0 loads the table, so its request before
        its own reload fails at once; another rank waits (up to wait_for_table_timeout) for it."""
        self._here()
        deadline = time.monotonic() + self.wait_for_table_timeout
        with self._lock:
            while True:
                try:
                    return self._request(op, args, arrays, block=self._free_block())
                except NotLoadedError:
                    if self.local_rank == 0:
                        raise NotLoadedError(
                            f"{op}: no table is loaded; this process is local rank 0 of job {self.job!r}, which "
                            "loads the node's table: call reload(neg_data) on this sampler first") from None
                    if time.monotonic() > deadline:
                        raise NotLoadedError(
                            f"{op}: waited {self.wait_for_table_timeout:.0f} s for local rank 0 of job {self.job!r} "
                            "to call reload(neg_data); it has not (raise wait_for_table_timeout to wait longer)"
                        ) from None
                    time.sleep(0.05)

    @staticmethod
    def _encode(**values) -> tuple[dict, dict]:
        if "default" in values:  # a one-element tensor or numpy integer, as in-process takes it, goes as a number
            values["default"] = int64_scalar(values["default"], "default_value")
        arrays = {}
        return {k: p.encode(k, v, arrays) for k, v in values.items()}, arrays

    # ---- the sampler's operations ---------------------------------------------------------
    @property
    def seed(self) -> int:
        """This process's stream seed (a worker's copy has its own, known once it attached)."""
        self._here()
        return self._seed

    def reload(self, neg_data, progress: bool | None = None) -> None:
        """Load the node's negative table into the server (a Parquet path is read by the server
        itself). Other ranks keep sampling the old table until the new one is in."""
        if isinstance(neg_data, (str, os.PathLike)):
            args, arrays = {"path": os.path.abspath(os.fspath(neg_data))}, {}
        else:
            arrays = {}
            args = {"columns": p.encode_columns(read_table_input(neg_data), arrays)}
        self._here()
        with self._lock:
            self._request("reload", args, arrays)

    def sample_ids(self, dedup, counts, tags, avoid_conflict: bool, avoid_all: bool) -> torch.Tensor:
        args, arrays = self._encode(dedup=dedup, counts=counts, tags=tags)
        args.update(avoid_conflict=avoid_conflict, avoid_all=avoid_all)
        return p.tensor(self._call("sample_ids", args, arrays)["arrays"]["out"])

    def valid_sample_ids(self, ids, default_value: int) -> torch.Tensor:
        args, arrays = self._encode(ids=ids, default=default_value)
        return p.tensor(self._call("valid_sample_ids", args, arrays)["arrays"]["out"])

    def combine_vector(self, origin, counts, sampled) -> torch.Tensor:
        args, arrays = self._encode(origin=origin, counts=counts, sampled=sampled)
        return p.tensor(self._call("combine_vector", args, arrays)["arrays"]["out"])

    def pack_feature(self, ids, default_value: int) -> dict:
        args, arrays = self._encode(ids=ids, default=default_value)
        reply = self._call("pack_feature", args, arrays)
        with _server_fault():
            return p.decode_table(reply["table"], reply["arrays"])

    def sample(self, dedup, counts, tags, default_value: int, avoid_conflict: bool, avoid_all: bool,
               return_log_q: bool) -> SampleResult:
        args, arrays = self._encode(dedup=dedup, counts=counts, tags=tags, default=default_value)
        args.update(avoid_conflict=avoid_conflict, avoid_all=avoid_all, log_q=return_log_q)
        reply = self._call("sample", args, arrays)
        a = reply["arrays"]
        with _server_fault():
            features = p.decode_table(reply["table"], a)
        return SampleResult(p.tensor(a["neg"]), p.tensor(a["valid"]), p.tensor(a["ids"]), features,
                            p.tensor(a["counts"]),
                            p.tensor(a["log_q"]) if "log_q" in a else None)

    def log_q(self, ids, counts, tags, n_positives: int) -> torch.Tensor:
        args, arrays = self._encode(ids=ids, counts=counts, tags=tags, n=n_positives)
        return p.tensor(self._call("log_q", args, arrays)["arrays"]["out"])

    def describe(self) -> str:
        return self._call("describe", {}, {})["text"]


class LocalRpcDataSampler(SamplerBase):
    """RecIS's LocalRpcDataSampler: one sampling server per node, shared by its training processes.

    The arguments of ``NegativeSampler`` (tags, put_back, seed, device, ...) configure the
    server, which local rank 0 (``LOCAL_PROCESS_RANK``, else ``LOCAL_RANK``, else 0)
    starts; every rank connects to it. Extra arguments:

    * name: the job's name on this machine (default: torchrun's run id, or MASTER_ADDR and
      MASTER_PORT; for ranks whose LOCAL_RANK / RANK was set by hand without those, the
      process group, which the processes one command starts share; else this process id).
      The server's directory holds a readable part of it and a digest of all of it;
    * results: "shm" (results arrive in shared memory and become tensors without a copy),
      "socket" (copied through the socket), or "cuda" (a server on a GPU writes them into
      buffers on this rank's current CUDA device, shared once through CUDA IPC handles; the
      answer's tensors are views of those buffers);
    * connect_timeout, wait_for_table_timeout: seconds to wait for the server to come up
      and for local rank 0's reload;
    * max_request_bytes: the server refuses bigger requests, and requests of more than
      4,096 arrays (a reload sends up to three a column); reload a bigger or wider table
      from a Parquet path, which the server reads itself. A request's arrays go into this
      rank's result block when they fit, not through the socket.

    RecIS's ``rpc_*`` keyword arguments are accepted and ignored: the transport is a local
    socket. With a seed, a rank's results depend only on (seed, RANK, its own calls);
    rank 0's equal an in-process NegativeSampler's with the same seed.

    One server per job hosts any number of samplers: rank r's k-th sampler of given
    settings shares rank 0's k-th one (its table and reload); a rank whose settings match
    none of rank 0's gets a RequestError naming both. Local rank 0 loads the table
    (``reload``); its requests before that raise NotLoadedError at once, other ranks wait
    up to ``wait_for_table_timeout`` for it. Handed to DataLoader workers (fork or spawn),
    the sampler becomes one more client of the same server in each worker, with a random
    stream of its own (from torch's per-worker seed). Every rank checks that the server's
    directory and socket are its own user's before it connects.
    """

    def __init__(self, sample_tag: str, dedup_tag: str, weight_tag: str, skey_name: str | None = None,
                 put_back: bool = True, *, seed: int | None = None, weight_exponent: float = 1.0,
                 unsatisfiable: str = "raise", fill_id: int = -1, device: str = "auto",
                 memory_budget: int | None = None, max_negatives: int = DEFAULT_MAX_NEGATIVES,
                 name: str | None = None, results: str = "shm", connect_timeout: float = 120.0,
                 wait_for_table_timeout: float = 600.0, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 **recis_options):
        self.config = SamplerConfig.from_arguments(
            recis_options=recis_options, owner=type(self).__name__, sample_tag=sample_tag, dedup_tag=dedup_tag,
            weight_tag=weight_tag, skey_name=skey_name, put_back=put_back, seed=seed,
            weight_exponent=weight_exponent, unsatisfiable=unsatisfiable, fill_id=fill_id, device=device,
            memory_budget=memory_budget, max_negatives=max_negatives)
        self._transport = ServerTransport(self.config, name, results, connect_timeout, wait_for_table_timeout,
                                          max_request_bytes)

    @property
    def server_pid(self) -> int | None:
        """The pid of the node's sampling server."""
        return self._transport.server_pid

    @property
    def job(self) -> str:
        """The job name this sampler's server is found by."""
        return self._transport.job
