"""The devices the CUDA backend's tests run on: the g++ emulation always, a GPU when present.

GPU_NEGSAMPLE_RUN_GPU_TESTS=1 runs the GPU tests without a GPU, so CI can check that each of
them fails only for want of one (tests/test_cuda_first_run.py), not for a bug of its own."""
import os
import re
import shutil

import pytest

from gpu_negsample.backends.select import _gpu_count

HAS_GPU = _gpu_count() > 0
RUN_WITHOUT_GPU = os.environ.get("GPU_NEGSAMPLE_RUN_GPU_TESTS") == "1"
# What a GPU test may fail with where there is no GPU: the samplers' and the client's refusals, and torch's.
GPU_MISSING = re.compile(r"CUDA device\(s\) usable through cupy|this process has no CUDA device|"
                         r"requires CUDA support|Torch not compiled with CUDA enabled")
needs_gpu = pytest.mark.skipif(not HAS_GPU and not RUN_WITHOUT_GPU, reason="no CUDA device with cupy here")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build the kernel emulation")
KERNEL_DEVICES = [pytest.param("emulated", marks=needs_gxx), pytest.param("cuda", marks=[needs_gpu, pytest.mark.gpu])]


def in_threads(work, ranks: int) -> dict:
    """{rank: work(rank)} with every rank in its own thread at once, as the ranks of a node
    (or a training thread and its prefetcher) call; the first error is raised here."""
    import threading

    results, errors = {}, []

    def run(rank):
        try:
            results[rank] = work(rank)
        except BaseException as e:  # raised by the calling thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(ranks)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results
