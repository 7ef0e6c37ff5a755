"""The devices the CUDA backend's tests run on: the g++ emulation always, a GPU when present."""
import shutil

import pytest

from gpu_negsample.backends.select import _gpu_count

HAS_GPU = _gpu_count() > 0
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device with cupy here")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build the kernel emulation")
KERNEL_DEVICES = [pytest.param("emulated", marks=needs_gxx), pytest.param("cuda", marks=[needs_gpu, pytest.mark.gpu])]
