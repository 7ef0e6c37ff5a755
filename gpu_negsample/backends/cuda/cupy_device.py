"""One GPU: kernels/*.cu compiled by NVRTC through CuPy, launched on the sampler's own stream.

Memory is torch's: device tensors come from its caching allocator on the sampler's stream,
so results are ordinary torch tensors that the caller's streams can use (``hand_over``
records them there). CuPy only compiles and launches our kernels, by address. Compiled
modules are cached per device here and on disk by CuPy (keyed by source and options; the
options carry the digest of every header, so a changed header recompiles).
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

from . import kernel_sources as ks
from .device import DeviceBase, launch_shape


class CupyDevice(DeviceBase):
    """The CUDA device `ordinal`, with a non-blocking stream of its own, or the caller's
    `stream` (a torch.cuda.Stream on that device)."""

    def __init__(self, ordinal: int = 0, stream: torch.cuda.Stream | None = None):
        import cupy

        super().__init__()
        self.cp = cupy
        self.ordinal = ordinal
        self.torch_device = torch.device("cuda", ordinal)
        if stream is not None and stream.device != self.torch_device:
            raise ValueError(f"stream= is on {stream.device}, the sampler on {self.torch_device}; "
                             "give a stream of the sampler's device")
        self.stream = stream or torch.cuda.Stream(device=self.torch_device)  # torch's pool: non-blocking
        props = torch.cuda.get_device_properties(ordinal)
        self._card = props.name
        self._sms = int(props.multi_processor_count)
        self._arch = f"sm_{props.major}{props.minor}"
        self._modules = {}
        self._functions = {}
        self._callers = threading.local()

    def describe(self) -> str:
        return f"{self._card} (cuda:{self.ordinal}, {self._arch})"

    def free_memory(self) -> int:
        return int(torch.cuda.mem_get_info(self.ordinal)[0])

    def can_access_peer(self, ordinal: int) -> bool:
        return ordinal == self.ordinal or bool(self.cp.cuda.runtime.deviceCanAccessPeer(self.ordinal, ordinal))

    @contextlib.contextmanager
    def active(self):
        outer = getattr(self._callers, "stream", None)
        if outer is None:  # the caller's stream, seen from outside the sampler's own
            self._callers.stream = torch.cuda.current_stream(self.ordinal)
        try:
            with torch.cuda.device(self.ordinal), torch.cuda.stream(self.stream), \
                    self.cp.cuda.Device(self.ordinal), \
                    self.cp.cuda.ExternalStream(self.stream.cuda_stream, self.ordinal), self._activated():
                yield
        finally:
            self._callers.stream = outer

    def _function(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            kernel = ks.kernels()[name]
            module = self._modules.get(kernel.source)
            if module is None:
                # CuPy adds its own defaults (NVRTC_OPTIONS and -arch of this device) itself.
                options = (f"-I{ks.kernel_dir()}", f"-DGN_SOURCE_DIGEST=0x{ks.source_hash()}")
                module = self.cp.RawModule(code=kernel.source.read_text(), options=options)
                self._modules[kernel.source] = module
            fn = self._functions[name] = module.get_function(name)
        return fn

    def compile_all(self) -> None:
        with self.cp.cuda.Device(self.ordinal):
            for name in ks.kernels():
                self._function(name)

    def launch(self, name: str, n_items: int, *args) -> None:
        self._op("launches")
        if n_items <= 0:
            return
        grid, block = launch_shape(n_items, self._sms)
        params = ks.kernels()[name].params
        values = tuple(np.uint64(a.data_ptr()) if p.is_pointer else ks.SCALARS[p.ctype](a)
                       for p, a in zip(params, args, strict=True))
        self._function(name)((grid,), (block,), values)

    # ---- memory ----------------------------------------------------------------------
    def allocate_host(self, nbytes: int) -> np.ndarray:
        """Pinned (page-locked) host memory; with unified addressing kernels read it in place.
        CuPy's allocation, not torch's: torch's host allocator rounds up to a power of two."""
        memory = self.cp.cuda.alloc_pinned_memory(nbytes)
        return np.frombuffer(memory, dtype=np.uint8, count=nbytes)

    def upload(self, host: np.ndarray) -> torch.Tensor:
        """Asynchronous when host is pinned (a request's staging buffer); the request's final
        wait covers it."""
        self._op("uploads")
        return torch.from_numpy(host).to(self.torch_device, non_blocking=True)

    def fetch(self, tensors) -> list[np.ndarray]:
        self._op("downloads", len(tensors))
        self._op("waits")
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for h, t in zip(host, tensors):
            h.copy_(t, non_blocking=True)
        self.stream.synchronize()  # this sampler's stream only: never the caller's training work
        return [h.numpy() for h in host]

    def adopt(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if t.device != self.torch_device:
            raise ValueError(f"a tensor on {t.device} was given to a sampler on {self.torch_device}; "
                             "move it there, or pass it on the CPU")
        # The caller's stream may still be producing t: the sampler's stream waits for it there.
        self.stream.wait_stream(self._callers.stream)
        return t.to(dtype).contiguous()

    def hand_over(self, tensors) -> None:
        caller = self._callers.stream
        caller.wait_stream(self.stream)
        for t in tensors:
            t.record_stream(caller)
