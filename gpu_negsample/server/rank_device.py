"""Which GPU of the node a rank samples on: named by the rank (its hello's "device"), found
by the server among the GPUs it sees.

A rank's GPU is the one its torch uses: ``device="cuda:N"`` names it, ``"cuda"`` and
``"auto"`` mean the rank's current CUDA device (``torch.cuda.set_device(local_rank)``, as
torch users do). Each process numbers GPUs among its own ``CUDA_VISIBLE_DEVICES``; a rank
started with ``CUDA_VISIBLE_DEVICES=3`` calls the node's GPU 3 "cuda:0", while the server
(started by local rank 0, with rank 0's environment) may number it otherwise. So the rank
sends its ordinal together with its ``CUDA_VISIBLE_DEVICES``, and the server translates
through its own. Emulated GPUs (``"emulated:N"``) have no such list: N is the device.
"""
from __future__ import annotations

import os

from ..backends.select import _ordinal
from ..errors import RequestError

VISIBLE = "CUDA_VISIBLE_DEVICES"


def rank_device(device: str) -> dict | None:
    """What a rank's hello says of its GPU, for its sampler's ``device`` setting:
    ``{"ordinal": N, "visible": CUDA_VISIBLE_DEVICES or None}``, or None when the rank
    samples on no GPU of its own (``"cpu"``, or ``"auto"`` without CUDA)."""
    if device == "cpu":
        return None
    if device.startswith("emulated"):
        return {"ordinal": _ordinal(device), "visible": None}
    if device in ("auto", "cuda"):
        import torch

        if not torch.cuda.is_available():
            return None if device == "auto" else {"ordinal": 0, "visible": os.environ.get(VISIBLE)}
        return {"ordinal": torch.cuda.current_device(), "visible": os.environ.get(VISIBLE)}
    if device.startswith("cuda:"):
        return {"ordinal": _ordinal(device), "visible": os.environ.get(VISIBLE)}
    return None  # not a device setting: the server's select_backend says what is wrong with it


def _visible_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def server_ordinal(kind: str, device, here: str | None) -> int | None:
    """The server's ordinal of the GPU a rank's hello names (``device``, checked: it comes
    from the socket); None when it names none. ``kind`` is the hosted sampler's ("cuda" or
    "emulated"); ``here`` the server's own CUDA_VISIBLE_DEVICES. A RequestError says which
    GPU the server cannot see and how to fix it."""
    if device is None:
        return None
    if not isinstance(device, dict) or set(device) != {"ordinal", "visible"}:
        raise RequestError(f"hello: argument 'device' must be null or {{'ordinal', 'visible'}}; got {device!r}")
    ordinal, theirs = device["ordinal"], device["visible"]
    if not isinstance(ordinal, int) or isinstance(ordinal, bool) or ordinal < 0:
        raise RequestError(f"hello: device 'ordinal' must be an integer >= 0; got {ordinal!r}")
    if theirs is not None and not isinstance(theirs, str):
        raise RequestError(f"hello: device 'visible' must be null or a string; got {theirs!r}")
    if kind != "cuda" or theirs == here:
        return ordinal  # the same numbering on both sides
    rank_list = _visible_list(theirs)
    if rank_list is not None and ordinal >= len(rank_list):
        raise RequestError(f"this rank asks for cuda:{ordinal}, but its {VISIBLE}={theirs} shows only "
                           f"{len(rank_list)} GPU(s); use device='cuda:N' with N < {len(rank_list)}")
    node_gpu = rank_list[ordinal] if rank_list is not None else str(ordinal)
    server_list = _visible_list(here)
    if server_list is None:
        if node_gpu.isdigit():
            return int(node_gpu)
        raise RequestError(f"this rank's GPU is {node_gpu!r} ({VISIBLE}={theirs}) and the node's sampling server "
                           f"numbers GPUs without {VISIBLE}; name GPUs by number in {VISIBLE}")
    if node_gpu not in server_list:
        raise RequestError(f"this rank's GPU {node_gpu} ({VISIBLE}={theirs}) is not visible to the node's sampling "
                           f"server, which local rank 0 started with {VISIBLE}={here}; start local rank 0 with "
                           f"every GPU the job's ranks use visible (e.g. unset {VISIBLE} and give each rank "
                           "device='cuda:LOCAL_RANK')")
    return server_list.index(node_gpu)
