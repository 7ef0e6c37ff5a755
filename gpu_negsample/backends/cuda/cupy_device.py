"""One GPU through CuPy: kernels/*.cu compiled by NVRTC, launched on the caller's torch stream.

Compiled modules are cached per device here and on disk by CuPy (its kernel cache is
keyed by source and options; the options carry the digest of every header, so a changed
header recompiles). Arrays cross between torch and CuPy by DLPack, without copies.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from . import kernel_sources as ks

BLOCK = 256
BLOCKS_PER_SM = 32  # enough resident warps to hide memory latency; grid-stride loops do the rest


class CupyDevice:
    """The CUDA device `ordinal`, as the CUDA backend uses it."""

    def __init__(self, ordinal: int = 0):
        import cupy

        self.cp = self.xp = cupy
        self.ordinal = ordinal
        self.name = f"cuda:{ordinal}"
        self._device = cupy.cuda.Device(ordinal)
        props = cupy.cuda.runtime.getDeviceProperties(ordinal)
        self._card = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        self._max_blocks = int(props["multiProcessorCount"]) * BLOCKS_PER_SM
        self._arch = f"sm_{props['major']}{props['minor']}"
        self._modules = {}
        self._functions = {}

    def describe(self) -> str:
        return f"{self._card} ({self.name}, {self._arch})"

    def free_memory(self) -> int:
        with self._device:
            return int(self.cp.cuda.runtime.memGetInfo()[0])

    @contextlib.contextmanager
    def active(self):
        """This device, with CuPy on the caller's current torch stream (kernels queue behind its work)."""
        stream = self.cp.cuda.ExternalStream(torch.cuda.current_stream(self.ordinal).cuda_stream, self.ordinal)
        with self._device, stream:
            yield

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
        """Load every kernel now (from CuPy's disk cache or NVRTC), so no request pays for it."""
        with self._device:
            for name in ks.kernels():
                self._function(name)

    def launch(self, name: str, n_items: int, *args) -> None:
        if n_items <= 0:
            return
        grid = max(1, min(-(-int(n_items) // BLOCK), self._max_blocks))
        params = ks.kernels()[name].params
        values = tuple(a if p.is_pointer else ks.SCALARS[p.ctype](a) for p, a in zip(params, args, strict=True))
        self._function(name)((grid,), (BLOCK,), values)

    # ---- memory ----------------------------------------------------------------------
    @staticmethod
    def address(a) -> int:
        return int(a.data.ptr)

    def allocate_host(self, nbytes: int) -> np.ndarray:
        """Pinned (page-locked) host memory; with unified addressing kernels read it in place."""
        memory = self.cp.cuda.alloc_pinned_memory(nbytes)
        return np.frombuffer(memory, dtype=np.uint8, count=nbytes)

    def upload(self, a: np.ndarray):
        return self.cp.asarray(np.ascontiguousarray(a))

    def host_view(self, a: np.ndarray):
        """A device array over pinned host memory (zero-copy, read through UVA)."""
        memory = self.cp.cuda.UnownedMemory(a.ctypes.data, a.nbytes, a, self.ordinal)
        return self.cp.ndarray(a.shape, a.dtype, self.cp.cuda.MemoryPointer(memory, 0))

    def to_host(self, a) -> np.ndarray:
        return self.cp.asnumpy(a) if isinstance(a, self.cp.ndarray) else np.asarray(a)

    @staticmethod
    def to_torch(a) -> torch.Tensor:
        return torch.from_dlpack(a)

    def from_torch(self, t: torch.Tensor):
        return self.cp.from_dlpack(t.detach())
