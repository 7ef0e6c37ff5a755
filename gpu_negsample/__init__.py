"""gpu_negsample: weighted, category-conditional negative sampling for recommendation training."""
from . import compile_cache  # noqa: F401  (before any numba function is defined: where they are cached)
from . import threading_layer  # noqa: F401  (before any parallel kernel runs: TBB, which survives fork)
from .errors import DeviceFaultError, NegSampleError, NotLoadedError, RequestError, TableError, UnsatisfiableRowError
from .ragged import RaggedTensor
from .prefetch import Prefetcher, prefetch
from .config import SamplerConfig
from .sampler import NegativeSampler, SamplerBase
from .transport import SampleResult
from .workers import SampledBatches
from . import formats

__all__ = [
    "NegativeSampler",
    "LocalRpcDataSampler",
    "ServerError",
    "Prefetcher",
    "prefetch",
    "SampledBatches",
    "RaggedTensor",
    "SampleResult",
    "SamplerBase",
    "SamplerConfig",
    "DeviceFaultError",
    "NegSampleError",
    "NotLoadedError",
    "RequestError",
    "TableError",
    "UnsatisfiableRowError",
]
__version__ = "0.1.0"

_SERVER_NAMES = ("LocalRpcDataSampler", "ServerError")


def __getattr__(name: str):
    """The node server's client is imported on first use: it needs pyzmq, which a process
    that only samples in-process (or a GPU machine without it) does not have."""
    if name in _SERVER_NAMES:
        try:
            from .server import client
        except ImportError as e:
            raise ImportError(f"gpu_negsample.{name} needs pyzmq ({e}); install it (pip install pyzmq) or use "
                              "NegativeSampler in-process") from e
        return getattr(client, name)
    raise AttributeError(f"module 'gpu_negsample' has no attribute {name!r}")
