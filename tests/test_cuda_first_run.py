"""What would crash or mislead the first time the CUDA path runs on a GPU, checked without one:
answers in CUDA result blocks, reuse of those blocks, GPU tests that must fail only for want
of a GPU, sticky CUDA errors, device tensors of other dtypes and strides, the example on
fewer GPUs than ranks, and an import without pyzmq."""
import gc
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_negsample.errors import DeviceFaultError, RequestError
from conftest import make_sampler, one_per_row
from devices import GPU_MISSING, HAS_GPU, needs_gxx

ROOT = Path(__file__).resolve().parents[1]


# ---- results="cuda": answers that are tensors already --------------------------------------
def _client():
    pytest.importorskip("zmq")
    from gpu_negsample.server import client
    return client


def _stub_block(client, arrays):
    """A result block whose views are CPU tensors over numpy memory that they own through DLPack,
    as _CudaBlock's are tensors owning a CuPy array."""

    class Block(client._Block):
        kind = "cuda"

        def __init__(self):
            super().__init__(0, 1 << 20)
            self.gone = 0

        def _views(self, metas):
            out, owners = {}, []
            for m in metas:
                owner = np.array(arrays[m[0]].numpy())
                out[m[0]] = torch.from_dlpack(owner)
                owners.append(owner)
            return out, owners

        def _last_view_gone(self):
            self.gone += 1

    return Block()


def _transport(client, answer, table=()):
    from gpu_negsample.server import protocol as p

    t = object.__new__(client.ServerTransport)
    blocks = []

    def call(op, args, arrays):
        metas, _ = p.layout(answer)
        head = {"ok": True, "placed": metas, "table": list(table)}
        blocks.append(_stub_block(client, answer))
        return t._decode_reply(head, p.pack(head, {}), blocks[-1])

    t._call = call
    return t, blocks


def test_every_api_method_takes_answers_that_are_tensors_already():
    client = _client()
    answer = {"out": torch.arange(6), "neg": torch.arange(6), "valid": torch.arange(2), "ids": torch.arange(8),
              "counts": torch.tensor([3, 3]), "log_q": torch.zeros(8), "f.values": torch.arange(4),
              "f.offsets": torch.tensor([0, 1, 2, 3, 4, 4, 4, 4, 4]), "d": torch.ones(8, 2)}
    table = [["dense", {"array": "d", "numpy": False}], ["ragged", {"ragged": "f", "weight": False}]]
    t, _ = _transport(client, answer, table)
    dedup = torch.arange(2)
    assert torch.equal(t.sample_ids(dedup, 3, None, True, False), torch.arange(6))
    assert torch.equal(t.valid_sample_ids(dedup, -1), torch.arange(6))
    assert torch.equal(t.combine_vector(dedup, 3, torch.arange(6)), torch.arange(6))
    assert torch.equal(t.log_q(torch.arange(8), 3, None, 2), torch.arange(6))
    r = t.sample(dedup, 3, None, -1, True, False, True)
    assert torch.equal(r.ids, torch.arange(8)) and torch.equal(r.log_q, torch.zeros(8))
    assert torch.equal(r.features["dense"], torch.ones(8, 2))
    assert torch.equal(t.pack_feature(dedup, -1)["ragged"].values(), torch.arange(4))


def test_a_result_block_stays_taken_while_a_tensor_derived_from_an_answer_lives():
    client = _client()
    t, blocks = _transport(client, {"out": torch.arange(10)})
    out = t.sample_ids(torch.arange(2), 5, None, True, False)
    block = blocks[0]
    derived = out[2:].view(torch.float64)  # shares the answer's memory, not its Python object
    del out
    gc.collect()
    assert not block.reusable() and block.gone == 0, "offered again while a derived tensor still reads it"
    del derived
    gc.collect()
    assert block.reusable() and block.gone == 1


class _Event:
    def __init__(self, done):
        self.done = done

    def query(self):
        return self.done


def test_a_cuda_block_is_offered_again_only_after_the_ranks_stream_passed_its_release():
    client = _client()
    block = object.__new__(client._CudaBlock)
    block.size, block.live_arrays, block._done = 1 << 20, 0, [_Event(False)]  # the rank's queued kernels may still read it
    t = object.__new__(client.ServerTransport)
    t.results, t._blocks = "cuda", [block]
    t._new_block = lambda size: "a new block"
    assert not block.reusable() and t._free_block() == "a new block"
    block._done[0].done = True
    assert block.reusable() and t._free_block() is block


class _RecordedEvent(_Event):
    def __init__(self):
        super().__init__(False)

    def record(self, stream):
        self.stream = stream


def test_a_cuda_block_waits_for_the_answers_stream_and_the_one_where_its_last_view_went(monkeypatch):
    """Before: the event was recorded only on the stream current where the last view was
    dropped (a prefetch thread's, or wherever the garbage collector ran), so kernels the
    rank queued on the stream it read the answer on could see the next answer written."""
    client = _client()
    current = {"stream": "the training stream"}
    monkeypatch.setattr(client.torch.cuda, "current_stream", lambda device=None: current["stream"])
    monkeypatch.setattr(client.torch.cuda, "Event", _RecordedEvent)
    block = object.__new__(client._CudaBlock)
    block.size, block.live_arrays, block._done, block.device = 1 << 20, 1, [], 0
    block._cupy, block._answer_stream = None, None
    assert block._views([]) == ({}, [])  # an answer arrives (its arrays do not matter here)
    current["stream"] = "a prefetch thread's stream"
    block.release()
    assert sorted(e.stream for e in block._done) == ["a prefetch thread's stream", "the training stream"]
    block._done[0].done = True
    assert not block.reusable(), "offered again before both streams passed the release"
    block._done[1].done = True
    assert block.reusable()


# ---- GPU tests outside a GPU machine -------------------------------------------------------
def test_gpu_tests_are_collected_here_and_fail_only_for_want_of_a_gpu(tmp_path):
    """Run every `gpu` test with its skip lifted: on a machine without a GPU each must fail
    with the no-GPU error, not with a TypeError of its own (as passing device twice did)."""
    if HAS_GPU:
        pytest.skip("a GPU is present: the GPU tests run for real")
    report = tmp_path / "gpu.xml"
    env = dict(os.environ, GPU_NEGSAMPLE_RUN_GPU_TESTS="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                          f"--junitxml={report}", str(ROOT / "tests")], capture_output=True, text=True, env=env,
                         timeout=600, cwd=ROOT)
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {}
    for case in cases:
        failure = case.find("failure")
        failure = case.find("error") if failure is None else failure  # (an Element without children is falsy)
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = None if failure is None else \
            (failure.get("message") or "") + (failure.text or "")
    assert len(outcomes) >= 14, run.stdout[-3000:]  # parity, streams, prefetch, IPC results, GPU server
    wrong = {name: (text or "passed")[-600:] for name, text in outcomes.items()
             if text is None or not GPU_MISSING.search(text)}
    assert not wrong, wrong


# ---- sticky CUDA errors ------------------------------------------------------------------
class _CudaRuntimeError(RuntimeError):
    def __init__(self, status, text):
        super().__init__(text)
        self.status = status


@needs_gxx
@pytest.mark.parametrize("error", [
    _CudaRuntimeError(700, "cudaErrorIllegalAddress: an illegal memory access was encountered"),
    _CudaRuntimeError(214, "cudaErrorECCUncorrectable"),
    RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be reported ..."),
])
def test_a_sticky_cuda_error_in_a_request_is_a_device_fault(error):
    from gpu_negsample.backends.cuda.emulated_device import EmulatedDevice

    device = EmulatedDevice()
    with pytest.raises(DeviceFaultError, match="process must exit") as info:
        with device.active():
            raise error
    assert info.value.__cause__ is error


@needs_gxx
@pytest.mark.parametrize("error", [_CudaRuntimeError(2, "cudaErrorMemoryAllocation: out of memory"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RequestError("positive row 3: category 9 is not in the table")])
def test_other_errors_pass_unchanged(error):
    from gpu_negsample.backends.cuda.emulated_device import EmulatedDevice

    with pytest.raises(type(error)) as info:
        with EmulatedDevice().active():
            raise error
    assert info.value is error


# ---- device tensors of any integer dtype and stride --------------------------------------
@needs_gxx
def test_device_tensors_of_other_dtypes_and_strides_are_converted_on_the_device():
    from test_cuda_parity import feature_table
    from gpu_negsample import RaggedTensor

    ids, table = feature_table(n=200, seed=3)
    cats = np.asarray(table["cat"].values())
    cpu, emu = make_sampler(table, device="cpu", seed=5), make_sampler(table, device="emulated", seed=5)
    as32 = torch.from_numpy(ids[:64]).to(torch.int32)  # read as int64 it would be pairs of ids
    strided = torch.from_numpy(np.stack([ids[:64], ids[64:128]], 1)).reshape(-1)[::2]
    rows32 = RaggedTensor(as32, torch.arange(65, dtype=torch.int32))
    for ids_in in (as32, strided):
        assert torch.equal(emu.valid_sample_ids(ids_in, -1), cpu.valid_sample_ids(ids_in, -1))
        assert torch.equal(emu.combine_vector_with_sample_counts(ids_in, 1, ids_in),
                           cpu.combine_vector_with_sample_counts(ids_in, 1, ids_in))
        assert torch.equal(emu.pack_feature(ids_in, int(ids[0]))["f32"], cpu.pack_feature(ids_in, int(ids[0]))["f32"])
    assert torch.equal(emu.sample_ids(rows32, 3, one_per_row(cats[:64])), cpu.sample_ids(rows32, 3, one_per_row(cats[:64])))


# ---- the example on a machine with fewer GPUs than ranks ---------------------------------
@pytest.mark.parametrize("gpus, ranks, want", [
    (0, 2, [("gloo", "cpu"), ("gloo", "cpu")]),
    (1, 2, [("gloo", "cuda:0"), ("gloo", "cuda:0")]),   # one card, two ranks: NCCL would refuse
    (2, 4, [("gloo", "cuda:0"), ("gloo", "cuda:1"), ("gloo", "cuda:0"), ("gloo", "cuda:1")]),
    (8, 8, [("nccl", f"cuda:{r}") for r in range(8)]),
])
def test_the_example_runs_ranks_on_fewer_gpus(monkeypatch, gpus, ranks, want):
    spec = importlib.util.spec_from_file_location("train_two_tower", ROOT / "examples" / "train_two_tower.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    got = [example.process_group_and_device(r, ranks) for r in range(ranks)]
    assert [(b, str(d)) for b, d in got] == want


# ---- a machine without pyzmq --------------------------------------------------------------
def test_the_package_imports_without_pyzmq():
    code = ("import sys; sys.modules['zmq'] = None\n"
            "import gpu_negsample as g\n"
            "s = g.NegativeSampler('c', 'i', 'w', device='cpu', seed=1)\n"
            "try:\n    g.LocalRpcDataSampler\nexcept ImportError as e:\n    print('refused:', e)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused: gpu_negsample.LocalRpcDataSampler needs pyzmq" in run.stdout
