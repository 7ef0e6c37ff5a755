"""A rank names its GPU in its hello; the server finds it among its own GPUs, through both
sides' CUDA_VISIBLE_DEVICES, or says why it cannot."""
import pytest

from gpu_negsample.errors import RequestError
from gpu_negsample.server.rank_device import rank_device, server_ordinal


def test_a_rank_names_its_gpu_from_its_device_setting(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert rank_device("cpu") is None
    assert rank_device("emulated:3") == {"ordinal": 3, "visible": None}
    assert rank_device("emulated") == {"ordinal": 0, "visible": None}
    assert rank_device("cuda:1") == {"ordinal": 1, "visible": "4,5"}
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.current_device", lambda: 1)  # the rank called torch.cuda.set_device(1)
    assert rank_device("cuda") == rank_device("auto") == {"ordinal": 1, "visible": "4,5"}
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert rank_device("auto") is None


def g(ordinal, visible=None):
    return {"ordinal": ordinal, "visible": visible}


@pytest.mark.parametrize("device, here, want", [
    (g(2), None, 2),                 # nobody restricts: the same numbering
    (g(0, "3"), None, 3),            # a rank started with CUDA_VISIBLE_DEVICES=3 uses the node's GPU 3
    (g(1, "6,7"), "5,6,7", 2),       # both restricted, differently
    (g(0, "GPU-ab"), "GPU-cd,GPU-ab", 1),
    (g(5, "GPU-ab"), "GPU-ab", 5),   # the same list on both sides: no translation (MIG, UUIDs)
    (None, "1", None),               # a rank with no GPU of its own: the sampler's device
])
def test_the_server_translates_a_ranks_gpu_to_its_own_numbering(device, here, want):
    assert server_ordinal("cuda", device, here) == want


def test_emulated_gpus_are_numbered_alike_on_both_sides():
    assert server_ordinal("emulated", g(1, "7"), "0") == 1


@pytest.mark.parametrize("device, here, message", [
    (g(0, "3"), "0,1", r"GPU 3 \(CUDA_VISIBLE_DEVICES=3\) is not visible to the node's sampling server.*=0,1"),
    (g(2, "0,1"), None, "shows only 2 GPU"),
    (g(0, "GPU-ab"), None, "name GPUs by number"),
    ({"ordinal": -1, "visible": None}, None, "integer >= 0"),
    ({"ordinal": True, "visible": None}, None, "integer >= 0"),
    ({"ordinal": 0, "visible": 3}, None, "null or a string"),
    ({"ordinal": 0}, None, "'device' must be null or"),
    ("cuda:0", None, "'device' must be null or"),
])
def test_a_gpu_the_server_cannot_find_is_refused_with_the_reason(device, here, message):
    with pytest.raises(RequestError, match=message):
        server_ordinal("cuda", device, here)


def test_a_dataloader_workers_copy_samples_on_its_ranks_gpu():
    """A worker's pickled copy carries its rank's GPU (not the worker's torch current device),
    so the server routes the worker's requests where its rank's go."""
    from gpu_negsample.server.client import ServerTransport

    transport = ServerTransport.__new__(ServerTransport)
    transport.__dict__.update({k: None for k in ServerTransport._PICKLED}, _closed=False,
                              device={"ordinal": 3, "visible": None})
    copy = ServerTransport.__new__(ServerTransport)
    copy.__setstate__(transport.__getstate__())
    assert copy.device == {"ordinal": 3, "visible": None}
