"""numba's threading layer: TBB where it is installed, so the CPU kernels survive fork().

DataLoader workers are forked from the training process. numba's default layer on Linux
without TBB is GNU OpenMP, and GNU OpenMP cannot run in a child forked after its threads
started: numba aborts the child ("fork() called from a process already using GNU
OpenMP"), which the user sees as a dead worker. TBB's layer survives fork, so when the
``tbb`` package is installed (a dependency on Linux x86-64) its library is loaded and
numba is told to use it, before any parallel kernel starts numba's threads.

pip puts libtbb under the environment's ``lib/`` directory, which the dynamic loader does
not search; numba then reports TBB as unavailable. Loading it by its full path first
(RTLD_GLOBAL) makes numba's own import of its TBB pool find it.

A layer the user chose (``NUMBA_THREADING_LAYER``, or ``numba.config.THREADING_LAYER``
set in code) is respected (libtbb is loaded for the layers that may pick TBB). Where TBB is missing, a sampler
used in a forked child whose parent already ran GNU OpenMP kernels refuses with an error
(``forked_child_can_run``) instead of letting numba abort the process.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import logging

import numba

log = logging.getLogger("gpu_negsample")


def _load_tbb() -> bool:
    """Load the tbb package's libtbb (if installed) and check numba's TBB pool imports."""
    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        return False
    libraries = [f for f in files if f.name.startswith("libtbb.so.")]
    for library in libraries:
        try:
            ctypes.CDLL(str(library.locate()), mode=ctypes.RTLD_GLOBAL)
            break
        except OSError as e:
            log.debug("cannot load %s: %s", library, e)
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (fails when libtbb is missing or too old)
    except ImportError as e:
        log.debug("numba's TBB threading layer unavailable: %s", e)
        return False
    return True


def choose() -> str | None:
    """Select TBB when the user chose no layer, numba's threads have not started yet, and
    TBB loads; returns the layer chosen here (None: numba's own choice stands)."""
    from numba.np.ufunc import parallel

    if parallel._is_initialized:
        return None
    # numba's config holds NUMBA_THREADING_LAYER, or what the user set there in code
    asked = str(numba.config.THREADING_LAYER).lower()
    asked = "" if asked == "default" else asked
    if asked in ("omp", "workqueue") or not _load_tbb():  # a user's "tbb" or "safe" needs libtbb loaded too
        return None
    if asked:
        return None
    numba.config.THREADING_LAYER = "tbb"
    return "tbb"


def forked_child_can_run() -> str | None:
    """In a forked child: None when numba's parallel kernels can run here, else why not."""
    from numba.np.ufunc import parallel

    if not parallel._is_initialized:
        return None  # the parent never started numba's threads; this process picks its own layer
    layer = numba.threading_layer()
    if layer == "omp":
        from numba.np.ufunc import omppool

        if omppool.openmp_vendor == "GNU":
            return ("numba runs its kernels on GNU OpenMP here, which cannot run in a child forked after "
                    "the parent used it. Install tbb (pip install tbb) so numba uses its TBB layer, or use "
                    "LocalRpcDataSampler, whose workers ask the node's sampling server")
    return None


chosen = choose()
