"""A sampling server running on a thread of the test process, and a raw client that sends
hand-made frames: what a hostile or broken client could put on the wire."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

import zmq

from gpu_negsample.config import SamplerConfig
from gpu_negsample.server import protocol as p
from gpu_negsample.server.endpoint import job_dir, socket_path
from gpu_negsample.server.registry import OneEngine, SamplerRegistry
from gpu_negsample.server.service import SamplingServer

CONFIG = SamplerConfig("category", "item_id", "weight", "skey", seed=1, device="cpu")


class RawClient:
    """A DEALER that says hello and then sends whatever frames a test gives it."""

    def __init__(self, path, pid: int | None = None, **hello):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{path}")
        self.seq = 0
        self.hello_args = {"pid": pid or os.getpid(), "rank": 0, "config": CONFIG.to_wire(),
                           "open": True, "slot": 0, "ordinal": 0}  # as local rank 0's first sampler
        self.hello_args.update(hello)  # e.g. another rank, another device
        self.hello = self.ask("hello", self.hello_args)

    def send(self, op: str, args: dict) -> int:
        """Send one request without waiting for its answer; its sequence number."""
        self.seq += 1
        self.send_frames(p.pack_request(self.seq, {"op": op, "args": args}, {}))
        return self.seq

    def send_frames(self, frames: list) -> None:
        self.sock.send_multipart(frames, copy=False)

    # The first requests of a checkout whose compile cache is cold compile the kernels inside
    # the server (tens of seconds on 2 cores); no test waits for a reply that should not come.
    def receive(self, timeout: float = 180.0) -> tuple[dict, dict]:
        """The next reply (header, socket arrays); TimeoutError when none comes."""
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("the server did not answer")
        reply = self.sock.recv_multipart()
        return p.unpack(reply, 1 << 40)

    def ask(self, op: str, args: dict, arrays: dict | None = None, **header) -> dict:
        """Send one request the way the real client does and return the reply's header."""
        self.seq += 1
        self.send_frames(p.pack_request(self.seq, dict(header, op=op, args=args), arrays or {}))
        head, arrays = self.receive()
        head["arrays"] = arrays
        return head

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@contextmanager
def server_on_thread(job: str, max_request_bytes: int = 1 << 20, engine=None, max_answer_bytes: int | None = None):
    """A SamplingServer serving `job` on a thread (its parent is this process's parent, which
    outlives the test); yields the server. `engine` replaces the Engine of every sampler it
    hosts (a fake one)."""
    directory = job_dir(job)
    server = SamplingServer(str(directory), os.getppid(), max_request_bytes, max_answer_bytes)
    if engine is not None:
        server.samplers = SamplerRegistry(lambda config: OneEngine(config, engine))
    thread = threading.Thread(target=server.serve, name=f"server-{job}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping = True
        thread.join(10)
        assert not thread.is_alive(), "the server thread did not stop"


@contextmanager
def raw_client(server, pid: int | None = None, **hello):
    c = RawClient(socket_path(Path(server.directory)), pid, **hello)
    try:
        yield c
    finally:
        c.close()
