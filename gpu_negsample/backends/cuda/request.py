"""One request on a device: its host inputs in one upload, its counters, one wait at its end.

``inputs()`` packs every host array of the request (and its initial counters) into one
aligned host buffer (pinned on a GPU) and uploads it with one asynchronous copy; tensors
already on the device are used where they are. Kernels add to the counters as they go
(see backends/status.py); ``finish()`` reads them, and whatever else the request left to
download, with one wait for the sampler's stream, then hands the outputs over to the
caller's stream.
"""
from __future__ import annotations

import numpy as np
import torch

from ...arena import copy_into
from ..status import Counter, RequestStatus, initial_counters
from .device import Device

ALIGN = 256  # each staged array starts on its own 256-byte boundary (any vector load is aligned)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class DeviceRequest:
    """The device side of one engine request (a context manager: ``with backend.request() as rq``)."""

    def __init__(self, device: Device):
        self.device = device
        self.counters: torch.Tensor | None = None
        self._outputs: list[torch.Tensor] = []
        self._downloads: list[tuple[torch.Tensor, np.ndarray]] = []
        self._staging: list[np.ndarray] = []  # alive until the uploads they feed are done
        self._finished = False
        self._scope = None

    def __enter__(self) -> "DeviceRequest":
        self._scope = self.device.active()
        self._scope.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        try:
            if not self._finished and self._staging:
                self.device.fetch([])  # an error left the upload in flight: wait before its buffer goes
        finally:
            self._scope.__exit__(*exc)
        return False

    # ---- inputs and outputs -------------------------------------------------------------
    def inputs(self, **arrays) -> dict:
        """Backend arrays of the request's inputs: numpy arrays staged and uploaded together
        (with the counters, the first time), device tensors converted in place (int64,
        contiguous)."""
        host = {name: a for name, a in arrays.items() if isinstance(a, np.ndarray)}
        out = {name: self.device.adopt(a, torch.int64) for name, a in arrays.items() if isinstance(a, torch.Tensor)}
        if self.counters is None:
            host["counters"] = initial_counters()
        if not host:
            return out
        layout, offset = {}, 0
        for name, a in host.items():
            layout[name] = offset
            offset += -(-a.nbytes // ALIGN) * ALIGN
        staging = self.device.allocate_host(max(offset, ALIGN))
        for name, a in host.items():
            copy_into(staging[layout[name]:layout[name] + a.nbytes], a)
        self._staging.append(staging)
        buffer = self.device.upload(staging)
        # Handed over with the outputs: a request may return a staged input (fused sample's
        # counts), and memory the caller's stream still reads must not go to the next upload.
        self._outputs.append(buffer)
        for name, a in host.items():
            part = buffer[layout[name]:layout[name] + a.nbytes]
            out[name] = part.view(_torch_dtype(a.dtype)).reshape(a.shape)
        if "counters" in out:
            self.counters = out.pop("counters")
        return out

    def counter(self, first: Counter) -> torch.Tensor:
        """The counter words from `first` on, for a kernel that reports into them."""
        return self.counters[int(first):]

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A device output of this request (handed over to the caller's stream at its end, as
        are the staged inputs)."""
        t = self.device.empty(shape, dtype)
        self._outputs.append(t)
        return t

    def zeros(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A zeroed device output of this request."""
        t = self.empty(shape, dtype)
        self.device.fill(t, 0)
        return t

    def download_at_finish(self, src: torch.Tensor, dst: np.ndarray) -> None:
        """Copy src into dst (host) in the request's final wait."""
        self._downloads.append((src, dst))

    # ---- the end ------------------------------------------------------------------------
    def finish(self, status: torch.Tensor | None = None) -> RequestStatus:
        """Wait once for the request's kernels; its counters (and pending downloads) as host values.
        ``status`` holds per-row sampling statuses, read only for a failed row."""
        fetched = self.device.fetch([self.counters, *(src for src, _ in self._downloads)])
        for (_, dst), host in zip(self._downloads, fetched[1:]):
            # on every thread when large: a 1Mx10 fused answer's string column spent 23 ms here
            copy_into(dst.reshape(-1).view(np.uint8), host.reshape(-1).view(np.uint8))
        self._finished = True
        self.device.hand_over(self._outputs)
        return RequestStatus.from_counters(
            fetched[0], lambda row: int(self.device.fetch([status[row:row + 1]])[0][0]))
