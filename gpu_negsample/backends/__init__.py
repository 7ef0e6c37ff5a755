"""Kernel backends. The engine talks to a backend only through the ``CpuBackend`` methods;
a CUDA backend provides the same methods over device arrays."""
from .cpu import CpuBackend

__all__ = ["CpuBackend"]
