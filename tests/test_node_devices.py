"""A node of several GPUs, on emulated devices: one table read and indexed once, placed on
every device that serves a rank (index and hot columns per device, the rest read from the one
host copy), each rank's requests on its own device, results those of the CPU path."""
import numpy as np
import pytest
import torch

from gpu_negsample.backends.cuda.device import OpCounts
from gpu_negsample.backends.select import select_backend
from gpu_negsample.config import SamplerConfig
from gpu_negsample.engine import Engine, RandomStream
from gpu_negsample.node import DeviceEngines
from conftest import one_per_row
from devices import in_threads, needs_gxx
from test_cuda_parity import feature_table

pytestmark = needs_gxx
CONFIG = SamplerConfig("cat", "item", "w", "skey", seed=4)


def node(budgets=None, ranks=4):
    budgets = budgets or {}
    engines = DeviceEngines(CONFIG, lambda n: select_backend(f"emulated:{n}", budgets.get(n)))
    for r in range(ranks):
        engines.engine(r)
    return engines


def snapshot(engines):
    return {n: OpCounts(**vars(engines.engine(n).backend.device.counts)) for n in engines.ordinals}


@pytest.fixture(scope="module")
def table():
    ids, t = feature_table(n=300, seed=6)
    return ids, np.asarray(t["cat"].values()), t


@pytest.fixture
def loaded(table):
    """Four emulated devices and the CPU path, the same table loaded on both."""
    engines, cpu = node(), Engine(CONFIG)
    engines.reload(table[2])
    cpu.reload(table[2])
    return engines, cpu


def request(ids, cats, rank):
    rows = np.random.default_rng(rank).choice(len(ids), 32)
    return one_per_row(ids[rows]), 5, one_per_row(cats[rows])


def test_each_rank_runs_on_its_own_device_with_the_cpu_paths_results(table, loaded):
    ids, cats, _ = table
    engines, cpu = loaded
    assert [engines.engine(n).backend.device.ordinal for n in range(4)] == [0, 1, 2, 3]
    for rank in range(4):
        before = snapshot(engines)
        got = engines.engine(rank).sample_ids(*request(ids, cats, rank), stream=RandomStream(100 + rank))
        after = snapshot(engines)
        busy = [n for n in engines.ordinals if after[n] != before[n]]
        assert busy == [rank], f"rank {rank}'s request ran on devices {busy}"
        assert torch.equal(got, torch.from_numpy(cpu.sample_ids(*request(ids, cats, rank),
                                                                stream=RandomStream(100 + rank))))


def test_one_host_copy_and_an_index_and_hot_columns_per_device(table):
    ids, cats, t = table
    engines = node(budgets={0: 1 << 30, 1: 0, 2: 1 << 30, 3: 0})  # devices 1 and 3 have no room for columns
    engines.reload(t)
    states = [engines.engine(n).state for n in range(4)]
    assert all(s.table is states[0].table for s in states), "the table was read more than once"
    index_on = {s.placed_index.arrays["id_slots"].data_ptr() for s in states}
    assert len(index_on) == 4, "devices share one index copy"
    wheres = [{row[0]: row[3] for row in s.placement.rows} for s in states]
    assert set(wheres[0].values()) == {"gpu"} and set(wheres[1].values()) == {"pinned host (UVA)"}
    arena = states[0].table.columns["f32"].values
    for s in (states[1], states[3]):  # read in place from the one host copy, not copied again
        assert s.columns["f32"].values.data_ptr() == arena.ctypes.data
    features = [engines.engine(n).pack_feature(torch.from_numpy(ids[:20]), int(ids[0])) for n in range(4)]
    assert all(torch.equal(f["f32"], features[0]["f32"]) for f in features)


def test_ranks_sample_at_once_on_their_devices(table, loaded):
    ids, cats, _ = table
    engines, cpu = loaded

    def rank(r):
        stream = RandomStream(r)  # the rank's own draws, as the server keeps one per client
        return [engines.engine(r).sample_ids(*request(ids, cats, r + 10 * k), stream=stream) for k in range(3)]

    got = in_threads(rank, 4)
    for r in range(4):
        stream = RandomStream(r)
        want = [cpu.sample_ids(*request(ids, cats, r + 10 * k), stream=stream) for k in range(3)]
        assert all(torch.equal(g, torch.from_numpy(w)) for g, w in zip(got[r], want)), r


def test_a_reload_reaches_every_device_and_a_device_added_later(table):
    ids, cats, t = table
    other_ids, other = feature_table(n=120, seed=9)
    other_ids = other_ids + 100_000
    other["item"] = one_per_row(other_ids)
    engines = node(ranks=2)
    engines.reload(t)
    engines.reload(other)
    late = engines.engine(5)
    assert late.state.table is engines.engine(0).state.table
    for n in (0, 1, 5):
        out = engines.engine(n).sample_ids(one_per_row(other_ids[:8]), 3, one_per_row(np.asarray(other["cat"].values())[:8]))
        assert np.isin(out.numpy(), other_ids).all(), n


def test_device_numbers_are_checked():
    assert select_backend("emulated:3").device.ordinal == 3
    with pytest.raises(ValueError, match="must be a device number"):
        select_backend("emulated:x")


def test_a_kernel_given_another_devices_memory_is_refused(table, loaded):
    """Were a request routed to one device with the table placed on another, a GPU without
    peer access would read an illegal address; the emulation refuses it, naming both, so
    the routing above is checked in CI (every test here runs with this check)."""
    ids, cats, _ = table
    engines, _ = loaded
    wrong = engines.engine(1)
    wrong.swap(engines.engine(0).state)  # device 0's placement, given to device 1's engine
    with pytest.raises(RuntimeError, match="on emulated device 1 was given .* memory of emulated device 0"):
        wrong.sample_ids(*request(ids, cats, 1), stream=RandomStream(1))


def test_a_device_in_use_is_found_while_a_reload_places_the_table(table, loaded):
    """The node server's one thread looks a rank's device up at every hello (a DataLoader
    worker attaching each epoch): while a reload places the new table on the devices, that
    look-up must not wait for the placement, or every rank's requests stall behind it."""
    import threading

    engines, _ = loaded
    placing, go_on, found = threading.Event(), threading.Event(), threading.Event()
    place, last = engines._place, engines.engine(3)

    def slow_place(state, engine):  # the placement on device 3 takes as long as the test wants
        if engine is last:
            placing.set()
            go_on.wait()
        return place(state, engine)

    engines._place = slow_place
    reload = threading.Thread(target=engines.reload, args=(table[2],))
    reload.start()
    try:
        assert placing.wait(timeout=120)
        threading.Thread(target=lambda: (engines.engine(1), found.set()), daemon=True).start()
        assert found.wait(timeout=30), "engine(1) waited for the reload's placement on device 3"
    finally:
        go_on.set()
        reload.join()
