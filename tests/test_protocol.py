"""The server's wire format refuses what it must not trust: object dtypes, foreign byte
orders, sizes that do not add up, oversized requests, headers that are not JSON; its
sequence number is readable before anything else; and values round-trip exactly."""
import json
import struct

import numpy as np
import pytest
import torch

from gpu_negsample import RaggedTensor, RequestError
from gpu_negsample.server import protocol as p


def request(header: dict, *payload: bytes, seq: int = 7) -> list:
    """A hand-made request frame: seq, header length, header, then raw payload bytes."""
    head = json.dumps(header).encode()
    body = struct.pack("<QI", seq, len(head)) + head
    body += b"\0" * (-len(body) % 64)
    return [body + b"".join(payload)]


def test_values_round_trip():
    rt = RaggedTensor(torch.tensor([3, 4, 5]), torch.tensor([0, 1, 3]), torch.tensor([0.5, 1.0, 2.0]))
    arrays = {}
    args = {"r": p.encode("r", rt, arrays), "t": p.encode("t", torch.arange(4.0), arrays),
            "s": p.encode("s", np.array([b"ab", b"c"]), arrays), "n": p.encode("n", np.int64(7), arrays)}
    frames = p.pack_request(5, {"args": args}, arrays)
    assert len(frames) == 1 and p.request_seq(frames) == 5
    header, got = p.unpack_request(frames, 1 << 20)
    back = {k: p.decode(v, got) for k, v in header["args"].items()}
    assert back["r"].to_list() == rt.to_list() and torch.equal(back["r"].weight(), rt.weight())
    assert torch.equal(back["t"], torch.arange(4.0)) and back["s"].tolist() == [b"ab", b"c"] and back["n"] == 7
    header, got = p.unpack(p.pack({"ok": True}, {"x": np.arange(3)}), 1 << 20)  # a reply
    assert header["ok"] and got["x"].tolist() == [0, 1, 2]


def test_object_arrays_are_refused():
    with pytest.raises(RequestError, match="not allowed"):
        p.unpack_request(request({"arrays": [{"name": "x", "dtype": "|O", "shape": [1]}]}, b"\0" * 64), 1 << 20)


def test_big_endian_arrays_are_refused_on_the_wire_and_converted_by_the_sender():
    with pytest.raises(RequestError, match="byte order"):
        p.unpack_request(request({"arrays": [{"name": "x", "dtype": ">i8", "shape": [1]}]}, b"\0" * 64), 1 << 20)
    header, got = p.unpack_request(p.pack_request(1, {}, {"x": np.arange(3, dtype=">i8")}), 1 << 20)
    assert got["x"].dtype == np.int64 and got["x"].tolist() == [0, 1, 2]


def test_sizes_must_add_up():
    header = {"arrays": [{"name": "x", "dtype": "<i8", "shape": [16]}]}
    with pytest.raises(RequestError, match="needs 128 bytes; the message has 64 left"):
        p.unpack_request(request(header, b"\0" * 64), 1 << 20)
    with pytest.raises(RequestError, match="64 bytes beyond"):
        p.unpack_request(request({"arrays": []}, b"\0" * 64), 1 << 20)
    with pytest.raises(RequestError, match="one frame"):
        p.unpack_request(request({}) * 2, 1 << 20)
    with pytest.raises(RequestError, match="shape .* must be a list"):
        p.unpack_request(request({"arrays": [{"name": "x", "dtype": "<i8", "shape": [-1]}]}), 1 << 20)
    with pytest.raises(RequestError, match="too big"):
        p.unpack_request(request({"arrays": [{"name": "x", "dtype": "<i8", "shape": [2**40, 2**40]}]}), 1 << 20)


def test_a_header_that_is_not_json_is_a_request_error_with_its_sequence_number():
    frame = struct.pack("<QI", 42, 5) + b"{nope"
    assert p.request_seq([frame]) == 42 and p.request_seq([b"abc"]) is None
    with pytest.raises(RequestError, match="not JSON"):
        p.unpack_request([frame], 1 << 20)


def test_oversized_requests_are_refused():
    frames = p.pack_request(1, {}, {"x": np.zeros(1000)})
    with pytest.raises(RequestError, match="exceeds the server's limit"):
        p.unpack_request(frames, 4000)


def test_only_plain_values_are_sent():
    with pytest.raises(RequestError, match="cannot be sent"):
        p.encode("x", object(), {})


@pytest.mark.parametrize("offsets, message", [
    ([0, 3, 1, 4], "decrease at row 1: 3 -> 1"),
    ([1, 2, 4], "start at 0 .* got first=1"),
    ([0, 2, 5], "end at len\\(values\\)=4; got first=0, last=5"),  # would index past the values
    ([], "non-empty"),
])
def test_ragged_offsets_that_would_index_out_of_bounds_are_refused(offsets, message):
    """A RaggedTensor that arrives as arrays (request or reply) is checked in one numpy pass."""
    arrays = {"r.values": np.arange(4), "r.offsets": np.array(offsets, dtype=np.int64)}
    with pytest.raises(RequestError, match=message):
        p.decode({"ragged": "r", "weight": False}, arrays)


def test_rows_the_package_built_alike_travel_as_their_length_and_the_receiver_makes_the_offsets():
    """An answer's fixed-length column (every row L values) carries no offsets: the client
    makes them, so it has none of the server's to check. A caller's RaggedTensor keeps its own."""
    values, weight = torch.arange(6), torch.ones(6)
    built = RaggedTensor._from_parts(values, torch.arange(0, 7, 2), weight, row_length=2)
    callers = RaggedTensor(values, torch.tensor([0, 2, 4, 6]))
    arrays = {}
    items = p.encode_table("f", {"built": built, "callers": callers}, arrays)
    assert sorted(arrays) == ["f0.values", "f0.weight", "f1.offsets", "f1.values"]
    assert items[0][1] == {"ragged": "f0", "weight": True, "rows": 3, "row_length": 2}
    got = p.decode_table(items, {k: v.numpy() for k, v in arrays.items()})
    assert got["built"].offsets()[0].tolist() == [0, 2, 4, 6] and got["built"].weight().tolist() == [1.0] * 6
    assert got["callers"].offsets()[0].tolist() == [0, 2, 4, 6]
    on_device = p.decode_table(items, arrays)["built"]  # tensors (a GPU result block's views): offsets beside them
    assert torch.equal(on_device.offsets()[0], torch.tensor([0, 2, 4, 6])) and on_device.values() is values
    requests = {}
    p.encode("r", built, requests)  # a request (no row_lengths) carries its offsets as they are
    assert "r.offsets" in requests


@pytest.mark.parametrize("rows, length, n_values, message", [
    (3, 2, 5, "values of shape \\(5,\\) for 3 rows of 2; expected \\(6,\\)"),  # would read past the values
    (3, 0, 0, "row_length >= 1"),
    (-1, 2, 0, "rows >= 0"),
    (True, 2, 2, "expected integers"),
    (None, 2, 2, "expected integers"),
    (3, 2.0, 6, "expected integers"),
])
def test_a_row_length_that_does_not_match_the_values_is_refused(rows, length, n_values, message):
    arrays = {"r.values": np.arange(n_values)}
    with pytest.raises(RequestError, match=message):
        p.decode({"ragged": "r", "weight": False, "rows": rows, "row_length": length}, arrays)


@pytest.mark.parametrize("offset", [-64, 8, "0", None])
def test_an_array_placed_outside_the_result_block_is_refused(offset):
    """A reply's placement is checked against the block before any view of it is made."""
    meta = ["x", "<i8", [8], offset]
    with pytest.raises(RequestError, match="'x' is placed at bytes .* outside the 64-byte result block"):
        p.read_block(bytearray(64), [meta])
    assert p.read_block(bytearray(64), [meta[:3] + [0]])["x"].shape == (8,)
    with pytest.raises(RequestError, match="placement must be \\[name, dtype, shape, offset\\]"):
        p.read_block(bytearray(64), [{"name": "x", "dtype": "<i8", "shape": [8], "offset": 0}])


def test_a_malformed_answer_is_the_servers_fault_not_the_callers():
    """Arrays of a reply placed outside the caller's block, or ragged offsets that do not fit
    their values, are refused before use, as a ServerError."""
    import mmap

    from gpu_negsample.server import client

    t = object.__new__(client.ServerTransport)
    block = client._ShmBlock(0, 4096, mmap.mmap(-1, 4096))  # zeros: offsets [0, 0, 0] for 4 values

    def answer_with(metas, table=()):
        head = {"ok": True, "placed": metas, "table": list(table)}
        t._call = lambda op, args, arrays: t._decode_reply(head, p.pack(head, {}), block)

    answer_with(p.layout({"f.values": np.arange(4), "f.offsets": np.arange(3)})[0], [["r", {"ragged": "f"}]])
    with pytest.raises(client.ServerError, match="malformed.* must start at 0 and end at len"):
        t.pack_feature(torch.arange(2), -1)
    answer_with([["out", "<i8", [2], 4088]])
    with pytest.raises(client.ServerError, match="malformed.*outside the 4096-byte result block"):
        t.valid_sample_ids(torch.arange(2), -1)


def test_an_answer_in_shared_memory_is_watched_by_one_finalizer_for_all_its_arrays():
    """Every array of an answer is a view of one base array over the block, so one finalizer
    says when the last is gone (a fused answer has ~20 arrays: one finalizer each cost the
    client ~0.1 ms a call). The block stays taken while any array of the answer, or a tensor
    derived from one, lives."""
    import gc
    import mmap

    from gpu_negsample.server import client

    block = client._ShmBlock(0, 4096, mmap.mmap(-1, 4096))
    sent = {"a": np.arange(4), "b": np.arange(6, dtype=np.float32).reshape(2, 3), "c": np.array([b"xy", b"z"]),
            "empty": np.zeros((0, 2))}
    metas, _ = p.layout(sent)
    p.write_block(memoryview(block.memory), sent, metas)
    arrays = block.views(metas)
    assert block.live_arrays == 1, "one finalizer per answer, not per array"
    for name, a in sent.items():
        assert arrays[name].dtype == a.dtype and np.array_equal(arrays[name], a)
    derived = torch.from_numpy(arrays["b"])[1:]
    kept = arrays["c"]
    del arrays
    gc.collect()
    assert not block.reusable()
    del kept
    gc.collect()
    assert not block.reusable(), "offered again while a tensor derived from the answer still reads it"
    del derived
    gc.collect()
    assert block.reusable() and block.live_arrays == 0


def test_arrays_placed_in_a_result_block_are_copied_out_and_checked():
    """A request's arrays ride in the client's result block when they fit; the server uses
    private copies, each placement checked against the block, all bounded by max_bytes."""
    block = bytearray(4096)
    arrays = {}
    rt = RaggedTensor(torch.tensor([3, 4, 5]), torch.tensor([0, 1, 3]))
    args = {"r": p.encode("r", rt, arrays), "t": p.encode("t", torch.arange(4.0), arrays)}
    header = {"args": args}
    assert p.place_arrays(header, arrays, memoryview(block))
    frames = p.pack_request(5, header, {})
    header, inline = p.unpack_request(frames, 1 << 20)
    assert inline == {} and len(frames[0]) < 512
    got = p.copy_placed(block, header.pop("request_placed"), 1 << 20)
    block[:] = b"\xff" * len(block)  # the client may write its block at any time: the copies keep what was sent
    back = {k: p.decode(v, got) for k, v in header["args"].items()}
    assert back["r"].to_list() == rt.to_list() and torch.equal(back["t"], torch.arange(4.0))
    assert all(a.flags.writeable for a in got.values())

    header = {}
    assert not p.place_arrays(header, {"x": np.zeros(1000)}, memoryview(bytearray(64)))  # does not fit
    assert header == {} and not p.place_arrays(header, {}, memoryview(block))  # nothing to place

    with pytest.raises(RequestError, match="outside the 4096-byte result block"):
        p.copy_placed(block, [["x", "<i8", [1000], 0]], 1 << 20)
    with pytest.raises(RequestError, match="outside"):
        p.copy_placed(block, [["x", "<i8", [1], -8]], 1 << 20)
    with pytest.raises(RequestError, match="exceeds the server's limit of 64 bytes"):
        p.copy_placed(block, [["x", "<i8", [8], 0], ["y", "<i8", [8], 64]], 64)
    with pytest.raises(RequestError, match="list of placements"):
        p.copy_placed(block, {"x": 1}, 1 << 20)
    with pytest.raises(RequestError, match="not allowed"):
        p.copy_placed(block, [["x", "|O", [1], 0]], 1 << 20)


def test_placements_must_follow_one_another_and_name_each_array_once():
    """Otherwise a frame of a few kB could make the server copy its whole limit (255 places of
    1 MiB, all at offset 0 of a 1 MiB block, took 257 MB)."""
    block = bytearray(4096)
    with pytest.raises(RequestError, match="before the end \\(64\\) of the array placed before it"):
        p.copy_placed(block, [["x", "<i8", [8], 0], ["y", "<i8", [8], 0]], 1 << 20)
    with pytest.raises(RequestError, match="names an array twice"):
        p.copy_placed(block, [["x", "<i8", [8], 0], ["x", "<i8", [8], 64]], 1 << 20)
    got = p.copy_placed(block, [["x", "<i8", [8], 0], ["e", "<i8", [0], 64], ["y", "<i8", [8], 64]], 1 << 20)
    assert [a.shape for a in got.values()] == [(8,), (0,), (8,)]


def test_a_request_of_more_arrays_than_the_server_accepts_is_refused_before_any_is_read():
    many = [["x", "<i8", [0], 0]] * (p.MAX_REQUEST_ARRAYS + 1)
    with pytest.raises(RequestError, match="at most 4,096 are accepted"):
        p.copy_placed(bytearray(64), many, 1 << 20)
    with pytest.raises(RequestError, match="at most 4,096 are accepted"):
        p.unpack_request(request({"arrays": [{"name": "x", "dtype": "<i8", "shape": [0]}] * 4097}), 1 << 20)


def test_a_bool_in_a_shape_or_offset_is_a_request_error():
    with pytest.raises(RequestError, match="must be a list of at most 8 non-negative ints"):
        p.unpack_request(request({"arrays": [{"name": "x", "dtype": "<i8", "shape": [True, 4]}]}, b"\0" * 64), 1 << 20)
    with pytest.raises(RequestError, match="outside"):
        p.copy_placed(bytearray(64), [["x", "<i8", [1], True]], 1 << 20)
