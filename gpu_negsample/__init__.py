"""gpu_negsample: weighted, category-conditional negative sampling for recommendation training."""
from . import compile_cache  # noqa: F401  (before any numba function is defined: where they are cached)
from . import threading_layer  # noqa: F401  (before any parallel kernel runs: TBB, which survives fork)
from .errors import NegSampleError, NotLoadedError, RequestError, TableError, UnsatisfiableRowError
from .ragged import RaggedTensor
from .prefetch import Prefetcher, prefetch
from .config import SamplerConfig
from .sampler import NegativeSampler, SamplerBase
from .transport import SampleResult
from .server.client import LocalRpcDataSampler, ServerError
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
    "NegSampleError",
    "NotLoadedError",
    "RequestError",
    "TableError",
    "UnsatisfiableRowError",
]
__version__ = "0.1.0"
