"""What the CUDA backend needs from a device, declared; and the bookkeeping both devices share.

Device arrays are torch tensors: on a GPU they come from torch's caching allocator on the
sampler's own stream (so ``record_stream`` and the caller's streams behave as torch users
expect), on the emulation they are CPU tensors. Kernels get addresses, so a tensor of pinned
host memory is read in place (unified addressing). Every operation that costs a GPU request
something (an upload, a download, a kernel launch, a host wait) goes through the device
and is counted, and must run inside ``active()``: tests hold a request to its budget.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import ContextManager, Protocol, Sequence

import numpy as np
import torch

from .faults import device_faults


@dataclasses.dataclass
class OpCounts:
    """Operations a device has done (cumulative; diff two snapshots for one request)."""

    uploads: int = 0
    downloads: int = 0
    launches: int = 0
    waits: int = 0

    def __sub__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


WARP = 32
MAX_BLOCK = 256
BLOCKS_PER_SM = 32  # enough resident warps to hide memory latency; grid-stride loops do the rest


def launch_shape(n_items: int, sms: int) -> tuple[int, int]:
    """(blocks, threads per block) for a kernel over n_items threads on a GPU with `sms`
    multiprocessors, sized per launch: blocks shrink (down to one warp) until every SM gets
    one, so a 4096-row request runs on all 132 SMs of an H100 (128 blocks of 32) instead of
    16 of them (blocks of 256); big launches use blocks of 256, at most BLOCKS_PER_SM per SM.
    Every kernel is a grid-stride loop and works for any shape, warp-per-row ones included
    (blocks are whole warps)."""
    per_sm = -(-max(int(n_items), 1) // sms)
    block = min(MAX_BLOCK, max(WARP, -(-per_sm // WARP) * WARP))
    return max(1, min(-(-int(n_items) // block), sms * BLOCKS_PER_SM)), block


class Device(Protocol):
    """One GPU (CupyDevice) or its CPU emulation (EmulatedDevice), as the CUDA backend uses it."""

    ordinal: int
    torch_device: torch.device
    counts: OpCounts

    def describe(self) -> str: ...

    def free_memory(self) -> int: ...

    def can_access_peer(self, ordinal: int) -> bool:
        """Whether this device's kernels and copies can reach device `ordinal`'s memory
        directly (peer access; True for itself). Kernels never read another GPU's memory:
        only a result buffer a rank shares through CUDA IPC may lie on another GPU."""

    def compile_all(self) -> None:
        """Load every kernel now (at reload), so no request pays for compiling."""

    def warm(self) -> None:
        """Compile and load everything a request runs (at reload): our kernels, and the torch
        operations (scan, memset, pinned copies) whose kernels load lazily on first use."""

    def active(self) -> ContextManager:
        """This device and the sampler's stream, for the operations of one request or placement."""

    def launch(self, name: str, n_items: int, *args) -> None:
        """Queue kernel `name` over n_items with args (tensors for pointers, ints for scalars)."""

    def allocate_host(self, nbytes: int) -> np.ndarray:
        """uint8 host memory the kernels can read in place (pinned on a GPU)."""

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor: ...

    def upload(self, host: np.ndarray) -> torch.Tensor:
        """A device copy of a host array (placement at reload, or a request's staged inputs)."""

    def host_view(self, host: np.ndarray) -> torch.Tensor:
        """A tensor over host memory from allocate_host, read in place by the kernels."""

    def fill(self, t: torch.Tensor, value: int) -> None:
        """t = value everywhere (a memset or fill kernel; counted as a launch)."""

    def cumsum(self, src: torch.Tensor, out: torch.Tensor) -> None:
        """out = the running sums of src along its last dimension."""

    def fetch(self, tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Host copies of device tensors, read with one wait for this sampler's stream."""

    def adopt(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A caller's tensor on this device, as a contiguous tensor of dtype, ordered after
        the caller's work that produced it (no host wait)."""

    def hand_over(self, tensors: Sequence[torch.Tensor]) -> None:
        """Make results safe to use on the caller's current stream (no host wait)."""


class DeviceBase:
    """What both devices share: counting, the active() check, and the operations torch does
    the same way on either (on the current stream: the sampler's, inside active())."""

    def __init__(self) -> None:
        self.counts = OpCounts()
        self._active = threading.local()

    @contextlib.contextmanager
    def _activated(self):
        depth = getattr(self._active, "depth", 0)
        self._active.depth = depth + 1
        try:
            with device_faults(self.describe()):
                yield
        finally:
            self._active.depth = depth

    def _op(self, kind: str, n: int = 1) -> None:
        if not getattr(self._active, "depth", 0):
            raise RuntimeError(f"a device {kind[:-1]} outside the device's active(): every device operation of "
                               "a request must run on the sampler's device and stream")
        setattr(self.counts, kind, getattr(self.counts, kind) + n)

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype, device=self.torch_device)

    def warm(self) -> None:
        self.compile_all()
        with self.active():
            t = self.upload(np.zeros((2, 2), np.int64))
            self.fill(t, 0)
            self.cumsum(t, t)
            self.fetch([t[:, 1]])

    @staticmethod
    def host_view(host: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(host)

    def fill(self, t: torch.Tensor, value: int) -> None:
        self._op("launches")
        t.fill_(value)

    def cumsum(self, src: torch.Tensor, out: torch.Tensor) -> None:
        self._op("launches")
        torch.cumsum(src, dim=-1, out=out)
