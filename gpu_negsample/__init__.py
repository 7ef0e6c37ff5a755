"""gpu_negsample: weighted, category-conditional negative sampling for recommendation training."""
from .errors import NegSampleError, NotLoadedError, RequestError, TableError, UnsatisfiableRowError
from .ragged import RaggedTensor
from .sampler import NegativeSampler, SampleResult

__all__ = [
    "NegativeSampler",
    "RaggedTensor",
    "SampleResult",
    "NegSampleError",
    "NotLoadedError",
    "RequestError",
    "TableError",
    "UnsatisfiableRowError",
]
__version__ = "0.1.0"
