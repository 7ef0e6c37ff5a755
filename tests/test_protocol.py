"""The server's wire format refuses what it must not trust: object dtypes, sizes that do not
add up, oversized requests; and values round-trip exactly."""
import json

import numpy as np
import pytest
import torch

from gpu_negsample import RaggedTensor, RequestError
from gpu_negsample.server import protocol as p


def frames_of(header, arrays):
    return [bytes(memoryview(f)) for f in p.pack(header, arrays)]


def test_values_round_trip():
    rt = RaggedTensor(torch.tensor([3, 4, 5]), torch.tensor([0, 1, 3]), torch.tensor([0.5, 1.0, 2.0]))
    arrays = {}
    args = {"r": p.encode("r", rt, arrays), "t": p.encode("t", torch.arange(4.0), arrays),
            "s": p.encode("s", np.array([b"ab", b"c"]), arrays), "n": p.encode("n", np.int64(7), arrays)}
    header, got = p.unpack(frames_of({"args": args}, arrays), 1 << 20)
    back = {k: p.decode(v, got) for k, v in header["args"].items()}
    assert back["r"].to_list() == rt.to_list() and torch.equal(back["r"].weight(), rt.weight())
    assert torch.equal(back["t"], torch.arange(4.0)) and back["s"].tolist() == [b"ab", b"c"] and back["n"] == 7


def test_object_arrays_are_refused():
    header = json.dumps({"arrays": [{"name": "x", "dtype": "|O", "shape": [1]}]}).encode()
    with pytest.raises(RequestError, match="not allowed"):
        p.unpack([header, b"\0" * 8], 1 << 20)


def test_sizes_must_add_up():
    header = json.dumps({"arrays": [{"name": "x", "dtype": "<i8", "shape": [3]}]}).encode()
    with pytest.raises(RequestError, match="do not make"):
        p.unpack([header, b"\0" * 16], 1 << 20)
    with pytest.raises(RequestError, match="announces 1 arrays but carries 0"):
        p.unpack([header], 1 << 20)


def test_oversized_requests_are_refused():
    frames = frames_of({}, {"x": np.zeros(1000)})
    with pytest.raises(RequestError, match="exceeds the server's limit"):
        p.unpack(frames, 4000)


def test_only_plain_values_are_sent():
    with pytest.raises(RequestError, match="cannot be sent"):
        p.encode("x", object(), {})
