"""device= of the samplers -> a backend."""
from __future__ import annotations

import functools
import logging

log = logging.getLogger("gpu_negsample")

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "emulated", "emulated:N")


def _gpu_count() -> int:
    try:
        import cupy
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no cupy, no driver or no device: all mean "no GPU for us"
        return 0


@functools.lru_cache(maxsize=None)
def _auto_choice() -> str:
    import torch

    choice = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() and _gpu_count() else "cpu"
    log.info("gpu_negsample: device='auto' chose %s%s", choice,
             "" if choice != "cpu" else " (no CUDA device with cupy installed)")
    return choice


def _ordinal(device: str) -> int:
    """N of 'kind:N' (0 for a bare kind)."""
    text = device.partition(":")[2]
    if text and not (text.isdigit() and text.isascii()):
        raise ValueError(f"device={device!r}: the part after ':' must be a device number, as in 'cuda:1'")
    return int(text or 0)


def select_backend(device: str = "auto", memory_budget: int | None = None, stream=None):
    """The backend for device 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'emulated' | 'emulated:N'
    (the CUDA kernels run on the CPU through g++, for tests; N numbers emulated GPUs, so a
    node of several GPUs can be tested without one). 'auto' takes the current torch CUDA
    device when a GPU and cupy are present, else the CPU, and logs its choice once.
    ``stream``: a torch.cuda.Stream the GPU backend runs on (default: one of its own)."""
    from .cpu import CpuBackend

    if device == "auto":
        device = _auto_choice()
    if stream is not None and not (isinstance(device, str) and device.startswith("cuda")):
        raise ValueError(f"stream= is for a sampler on a GPU; this one has device={device!r}")
    if device == "cpu":
        return CpuBackend()
    from .cuda import CudaBackend

    if isinstance(device, str) and (device == "emulated" or device.startswith("emulated:")):
        from .cuda.emulated_device import EmulatedDevice
        return CudaBackend(EmulatedDevice(_ordinal(device)), memory_budget)
    if device == "cuda" or (isinstance(device, str) and device.startswith("cuda:")):
        import torch

        ordinal = torch.cuda.current_device() if device == "cuda" and torch.cuda.is_available() else _ordinal(device)
        count = _gpu_count()
        if ordinal >= count:
            raise ValueError(f"device={device!r}: {count} CUDA device(s) usable through cupy "
                             "(install gpu_negsample[cuda12] or [cuda13] and check the driver), or use device='cpu'")
        from .cuda.cupy_device import CupyDevice
        return CudaBackend(CupyDevice(ordinal, stream), memory_budget)
    raise ValueError(f"device={device!r} is not one of {DEVICES}")
