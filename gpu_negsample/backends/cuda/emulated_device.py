"""The CUDA kernels run on the CPU: kernels/*.cu built with g++ through a shim header.

This is how CI, which has no GPU, executes the very sources the GPU runs: each .cu is
included by a generated wrapper after ``kernels/emulation/cuda_shim.h``, the wrappers
are built into one shared library (cached by source digest), and a launch loops over
the grid's blocks and threads. ``EmulatedDevice`` offers the same methods as
``CupyDevice`` over numpy arrays, so the whole CUDA backend, host code included, runs
here too (``device="emulated"``). It exists to check the kernels, not to be fast.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import os
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from ...compile_cache import cache_dir
from . import kernel_sources as ks
from .device import DeviceBase

_CTYPES = {"i64": ctypes.c_int64, "u64": ctypes.c_uint64, "u32": ctypes.c_uint32}
NO_PEER_ENV = "GPU_NEGSAMPLE_EMU_NO_PEER"  # e.g. "0-1,2-3": those pairs of emulated GPUs have no peer access
CXX_FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-fno-strict-aliasing")


def _wrapper(source: Path) -> str:
    """A C++ file that includes the shim and one .cu and exports emu_<kernel> launchers."""
    lines = ['#include "cuda_shim.h"', f'#include "{source.name}"']
    for k in ks.kernels().values():
        if k.source != source:
            continue
        params = ", ".join(f"{p.ctype} {p.name}" for p in k.params)
        names = ", ".join(p.name for p in k.params)
        lines.append(f'extern "C" void emu_{k.name}(unsigned grid, unsigned block, {params}) '
                     f"{{ gn_emu::launch(grid, block, [&] {{ {k.name}({names}); }}); }}")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def build_library(extra_flags: tuple[str, ...] = ()) -> Path:
    """Build (once per source digest and flags) the emulation library; returns its path."""
    digest = hashlib.sha256((ks.source_hash() + " ".join(CXX_FLAGS + extra_flags)).encode()).hexdigest()[:16]
    target = cache_dir() / f"kernels-emulated-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    kdir = ks.kernel_dir()
    with tempfile.TemporaryDirectory() as tmp:
        wrappers = []
        for source in ks.sources():
            w = Path(tmp) / f"emu_{source.stem}.cpp"
            w.write_text(_wrapper(source))
            wrappers.append(str(w))
        built = Path(tmp) / target.name
        cmd = ["g++", *CXX_FLAGS, *extra_flags, f"-I{kdir}", f"-I{kdir / 'emulation'}", *wrappers, "-o", str(built)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building the CPU emulation of kernels/ failed:\n{' '.join(cmd)}\n{result.stderr}")
        os.replace(built, target)  # atomic: concurrent builders never load a half-written file
    return target


def no_peer_pairs(text: str | None) -> set[frozenset]:
    """The pairs of emulated GPUs without peer access that GPU_NEGSAMPLE_EMU_NO_PEER names."""
    pairs = set()
    for item in (text or "").replace(" ", "").split(","):
        a, sep, b = item.partition("-")
        if not item:
            continue
        if not (sep and a.isdigit() and b.isdigit() and a != b):
            raise ValueError(f"{NO_PEER_ENV}={text!r}: each entry must be two different device numbers, "
                             "as in '0-1,2-3'")
        pairs.add(frozenset((int(a), int(b))))
    return pairs


class _Owners:
    """Which emulated GPU allocated each piece of "device memory" (by its storage's address),
    so that a kernel given another GPU's memory fails in CI as it would on GPUs, where no
    peer access is enabled for kernels. Memory no emulated GPU allocated (pinned host
    memory, a caller's tensors) is not checked."""

    def __init__(self):
        self._by_address: dict[int, tuple[int, int]] = {}  # address -> (ordinal, claim token)
        self._tokens = itertools.count()
        self._lock = threading.Lock()

    def claim(self, t: torch.Tensor, ordinal: int) -> torch.Tensor:
        address = t.untyped_storage().data_ptr()
        if address:  # empty tensors share address 0
            token = next(self._tokens)
            with self._lock:
                self._by_address[address] = (ordinal, token)
            weakref.finalize(t, self._release, address, token)
        return t

    def _release(self, address: int, token: int) -> None:
        with self._lock:
            if self._by_address.get(address, (None, None))[1] == token:  # not since claimed by a newer tensor
                del self._by_address[address]

    def owner(self, t: torch.Tensor) -> int | None:
        address = t.untyped_storage().data_ptr()
        return self._by_address.get(address, (None,))[0] if address else None


_OWNERS = _Owners()


class EmulatedDevice(DeviceBase):
    """CPU tensors as "device memory", g++-built kernels as launches; uploads, downloads,
    launches and waits are counted as on a GPU."""

    # Small blocks and a capped grid so every grid-stride loop really strides in tests.
    BLOCK = 32
    MAX_BLOCKS = 8

    def __init__(self, ordinal: int = 0, memory_bytes: int = 1 << 30):
        super().__init__()
        # e.g. GPU_NEGSAMPLE_EMU_FLAGS="-fsanitize=address" (tests/test_emulation_sanitized.py)
        extra = tuple(os.environ.get("GPU_NEGSAMPLE_EMU_FLAGS", "").split())
        self._lib = ctypes.CDLL(str(build_library(extra)))
        self.ordinal = ordinal
        self.torch_device = torch.device("cpu")
        self._memory_bytes = memory_bytes
        self._functions = {}

    def describe(self) -> str:
        return f"CPU emulation of the CUDA kernels (g++), device {self.ordinal}"

    def free_memory(self) -> int:
        return self._memory_bytes

    def can_access_peer(self, ordinal: int) -> bool:
        """True unless GPU_NEGSAMPLE_EMU_NO_PEER names the pair (read at each call, so a test
        or a server started with it stands for a node whose GPUs lack peer access)."""
        return frozenset((self.ordinal, ordinal)) not in no_peer_pairs(os.environ.get(NO_PEER_ENV))

    def _function(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            kernel = ks.kernels()[name]
            fn = getattr(self._lib, f"emu_{name}")
            fn.restype = None
            fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [
                ctypes.c_void_p if p.is_pointer else _CTYPES[p.ctype] for p in kernel.params]
            self._functions[name] = fn
        return fn

    def compile_all(self) -> None:
        for name in ks.kernels():
            self._function(name)

    def active(self):
        return self._activated()

    def launch(self, name: str, n_items: int, *args) -> None:
        self._op("launches")
        if n_items <= 0:
            return
        grid = max(1, min(-(-int(n_items) // self.BLOCK), self.MAX_BLOCKS))
        params = ks.kernels()[name].params
        for p, a in zip(params, args, strict=True):
            owner = _OWNERS.owner(a) if p.is_pointer else None
            if owner is not None and owner != self.ordinal:
                raise RuntimeError(f"kernel {name} on emulated device {self.ordinal} was given {p.name} in the "
                                   f"memory of emulated device {owner}: a kernel reads only its own GPU's memory "
                                   "and pinned host memory (no peer access is enabled between GPUs); place the "
                                   "data on this device first")
        values = [a.data_ptr() if p.is_pointer else int(a) for p, a in zip(params, args, strict=True)]
        self._function(name)(grid, self.BLOCK, *values)

    # ---- memory ----------------------------------------------------------------------
    @staticmethod
    def allocate_host(nbytes: int) -> np.ndarray:
        return np.empty(nbytes, dtype=np.uint8)

    def upload(self, host: np.ndarray) -> torch.Tensor:
        self._op("uploads")
        return _OWNERS.claim(torch.from_numpy(np.array(host, copy=True, order="C")), self.ordinal)

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        return _OWNERS.claim(super().empty(shape, dtype), self.ordinal)

    def fetch(self, tensors) -> list[np.ndarray]:
        self._op("downloads", len(tensors))
        self._op("waits")
        return [t.numpy().copy() for t in tensors]

    def adopt(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return t.to(dtype).contiguous()

    def hand_over(self, tensors) -> None:
        self._op("launches", 0)  # the same check as on a GPU: inside active()
