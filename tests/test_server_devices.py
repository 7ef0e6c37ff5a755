"""The node server routes each rank to its own GPU (emulated GPUs in CI): rank r's requests run
on device r and give the single-device answers; a reload reaches every device in use; a GPU
the server cannot use is refused."""
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("zmq", reason="the node server needs pyzmq")
from gpu_negsample import NegativeSampler
from gpu_negsample.backends.cuda.device import OpCounts
from gpu_negsample.backends.select import select_backend
from gpu_negsample.columns import read_table_input
from gpu_negsample.config import SamplerConfig
from gpu_negsample.errors import RequestError
from gpu_negsample.node import DeviceEngines
from gpu_negsample.server import protocol as p
from gpu_negsample.server.client import ServerTransport
from gpu_negsample.server.service import Args, SamplingServer, rank_seed
from devices import needs_gxx
from server_tables import catalogue, positives
import server_workers as w
from test_server import collect, job, start  # noqa: F401 (job: the fixture that checks nothing is left behind)

pytestmark = needs_gxx
SEED = 11


@pytest.fixture
def server():
    """A server in this process (its handlers called directly, so each device's counters can be read)."""
    directory = tempfile.mkdtemp(prefix="gns-route-")  # short: the socket path must fit sun_path
    s = SamplingServer(directory, os.getpid(), 1 << 26)
    yield s
    s.close()
    shutil.rmtree(directory, ignore_errors=True)


def hello(server, rank, device, config_device="emulated"):
    """Rank `rank` becomes a client (rank 0 opens the sampler), naming `device` as its GPU."""
    config = SamplerConfig("category", "item_id", "weight", "skey", seed=SEED, device=config_device)
    args = {"pid": os.getpid(), "rank": rank, "config": config.to_wire(), "open": rank == 0, "slot": 0,
            "ordinal": 0, "device": device}
    return server.op_hello(b"rank%d" % rank, Args("hello", args), {})


def sample_ids(server, rank, cat, call):
    """Rank `rank`'s sample_ids request for `positives(cat, call)`, as the server runs it."""
    dedup, n, tags = positives(cat, call)
    args, arrays = ServerTransport._encode(dedup=dedup, counts=n, tags=tags)
    args.update(avoid_conflict=True, avoid_all=False)
    return server.op_sample_ids(b"rank%d" % rank, Args("sample_ids", args), arrays)[1]["out"]


def reload(server, rank, cat):
    """Rank `rank`'s reload of `cat`, waited for; its answer must be ok."""
    arrays = {}
    args = {"columns": p.encode_columns(read_table_input(cat.table), arrays)}
    server._current_seq = 0
    assert server.op_reload(b"rank%d" % rank, Args("reload", args), arrays) is None
    hosted = server.clients[b"rank%d" % rank].sampler
    deadline = time.monotonic() + 60
    while hosted.reloading is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    header = json.loads(bytes(server.replies.get_nowait()[1]))
    assert header["ok"], header


def reference(rank, cat, calls):
    """What rank `rank` gets from its first `calls` calls: an in-process CPU sampler with its seed."""
    ref = NegativeSampler("category", "item_id", "weight", "skey", seed=rank_seed(SEED, rank), device="cpu")
    ref.reload(cat.table)
    return [ref.sample_ids(*positives(cat, call)) for call in range(calls)]


def test_each_ranks_requests_run_on_its_own_device(server):
    cat = catalogue()
    for rank in (0, 1):
        hello(server, rank, {"ordinal": rank, "visible": None})
    engines = {r: server._engine(b"rank%d" % r) for r in (0, 1)}
    assert [engines[r].backend.device.ordinal for r in (0, 1)] == [0, 1]
    reload(server, 0, cat)
    want = {r: reference(r, cat, 2) for r in (0, 1)}
    for call in range(2):
        for rank in (0, 1):
            before = {r: OpCounts(**vars(e.backend.device.counts)) for r, e in engines.items()}
            got = sample_ids(server, rank, cat, call)
            busy = [r for r, e in engines.items() if vars(e.backend.device.counts) != vars(before[r])]
            assert busy == [rank], f"rank {rank}'s request ran on devices {busy}"
            assert torch.equal(torch.as_tensor(got), want[rank][call]), (rank, call)


def test_a_reload_switches_every_rank_s_device(server):
    a, b = catalogue(seed=5), catalogue(seed=6)
    for rank in (0, 1):
        hello(server, rank, {"ordinal": rank, "visible": None})
    reload(server, 0, a)
    reload(server, 1, b)  # any rank may reload: both devices switch
    for rank in (0, 1):
        assert np.isin(np.asarray(sample_ids(server, rank, b, 0)), b.ids).all(), rank
    states = [server._engine(b"rank%d" % r).state for r in (0, 1)]
    assert states[0].table is states[1].table, "the table was read once per device"


def test_a_cpu_sampler_serves_every_rank_from_one_engine(server):
    for rank in (0, 1):
        hello(server, rank, {"ordinal": rank, "visible": None}, config_device="cpu")
    assert server._engine(b"rank0") is server._engine(b"rank1")


def test_a_gpu_the_server_cannot_use_is_refused_at_hello(server, monkeypatch):
    monkeypatch.setattr("gpu_negsample.backends.select._gpu_count", lambda: 1)
    with pytest.raises(RequestError, match=r"cuda:3 \(the server's numbering\).*1 CUDA device"):
        hello(server, 0, {"ordinal": 3, "visible": None}, config_device="cuda")
    with pytest.raises(RequestError, match="'device' must be null or"):
        hello(server, 0, [3], config_device="emulated")


def test_two_ranks_sample_on_their_own_emulated_gpus(job):
    barrier = mp.get_context("spawn").Barrier(2)
    procs, results = start(w.ranks_on_their_devices, [0, 1], job, SEED, barrier)
    got = dict(collect(results, 2))
    for proc in procs:
        proc.join(60)
    a, b = catalogue(seed=5), catalogue(seed=6)
    for rank in (0, 1):
        assert not isinstance(got[rank], str), got[rank]
        calls, described, after_reload = got[rank]
        assert f"device {rank}" in described, described
        for call, (ids, want) in enumerate(zip(calls, reference(rank, a, 2))):
            assert np.array_equal(ids, want.numpy()), (rank, call)
        assert np.isin(after_reload, b.ids).all(), f"rank {rank} still samples the old table"


def test_a_rank_arriving_during_a_reload_is_not_held_up_and_gets_the_new_table():
    """The server's one thread answers every rank: a hello that adds a device must not wait
    for a reload's whole build (DeviceEngines builds outside its lock)."""
    a, b = catalogue(seed=5), catalogue(seed=6)
    engines = DeviceEngines(SamplerConfig("category", "item_id", "weight", "skey", seed=SEED),
                            lambda n: select_backend(f"emulated:{n}"))
    engines.engine(0)
    engines.reload(a.table)
    building, release = threading.Event(), threading.Event()
    build = engines.engine(0).build_state

    def held_build(data, progress=None):
        building.set()
        assert release.wait(60)
        return build(data, progress)

    engines.engine(0).build_state = held_build
    reloading = threading.Thread(target=engines.reload, args=(b.table,))
    reloading.start()
    try:
        assert building.wait(60)
        added = threading.Thread(target=engines.engine, args=(1,))
        added.start()
        added.join(30)  # a deadlock detector, not a speed bound: it waits on nothing else
        assert not added.is_alive(), "adding a device waited for the reload's build"
    finally:
        release.set()
        reloading.join(60)
    assert engines.engine(1).state.table is engines.engine(0).state.table
    assert np.isin(np.asarray(engines.engine(1).sample_ids(*positives(b, 0))), b.ids).all()


def test_a_cuda_result_block_on_a_gpu_without_peer_access_is_refused(server, monkeypatch):
    """A rank whose result block lies on a GPU other than the one its requests run on (it
    allocates on its current device, its sampler names another) is refused when that pair
    has no peer access, naming both GPUs; with peer access only the emulation's lack of
    CUDA IPC stops it."""
    hello(server, 0, {"ordinal": 0, "visible": None})
    args = {"handle": "00" * 64, "size": 1 << 20, "block": 1, "device": {"ordinal": 1, "visible": None}}
    monkeypatch.setenv("GPU_NEGSAMPLE_EMU_NO_PEER", "0-1")
    with pytest.raises(RequestError, match=r"block is on emulated:1 but its requests run on emulated:0 .*no peer "
                                           r"access to emulated:1.*results='shm'"):
        server.op_map_cuda_block(b"rank0", Args("map_cuda_block", args), {})
    monkeypatch.setenv("GPU_NEGSAMPLE_EMU_NO_PEER", "2-3")
    with pytest.raises(RequestError, match="runs the CPU emulation"):
        server.op_map_cuda_block(b"rank0", Args("map_cuda_block", args), {})
    monkeypatch.setenv("GPU_NEGSAMPLE_EMU_NO_PEER", "0-0")
    with pytest.raises(ValueError, match="GPU_NEGSAMPLE_EMU_NO_PEER='0-0': each entry must be two different"):
        server.op_map_cuda_block(b"rank0", Args("map_cuda_block", args), {})
