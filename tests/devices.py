"""The devices the CUDA backend's tests run on: the g++ emulation always, a GPU when present."""
import pytest

from gpu_negsample.backends.select import _gpu_count

HAS_GPU = _gpu_count() > 0
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device with cupy here")
KERNEL_DEVICES = ["emulated", pytest.param("cuda", marks=[needs_gpu, pytest.mark.gpu])]
