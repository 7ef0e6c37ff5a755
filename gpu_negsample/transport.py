"""How a sampler's requests reach an engine: in this process, or through the node's server.

``SamplerTransport`` is the one interface both samplers call (as vLLM's engine client has
an in-process and a multiprocess implementation). Arguments arrive as the user gave them
(tensors, RaggedTensors, numpy arrays, ints); the engine behind the transport checks them.
Results are torch tensors (ids, counts, log q), feature tables (name -> Tensor /
RaggedTensor / bytes array) and ``SampleResult``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from . import threading_layer
from .engine import Engine, RandomStream


@dataclass
class SampleResult:
    """What one fused ``sample`` call returns (one round trip through a server).

    ``ids`` interleaves each positive with its negatives, ``features`` is the packed
    table of ``ids``, ``log_q`` (when asked for) is aligned with ``ids``. Every tensor is
    on the sampler's result device.
    """

    negative_ids: torch.Tensor
    positive_ids: torch.Tensor
    ids: torch.Tensor
    features: dict
    sample_counts: torch.Tensor
    log_q: torch.Tensor | None = None


class SamplerTransport(Protocol):
    """The operations of a sampler, carried to an engine."""

    @property
    def seed(self) -> int: ...

    def reload(self, neg_data, progress: bool | None) -> None: ...

    def sample_ids(self, dedup, counts, tags, avoid_conflict: bool, avoid_all: bool) -> torch.Tensor: ...

    def valid_sample_ids(self, ids, default_value: int) -> torch.Tensor: ...

    def combine_vector(self, origin, counts, sampled) -> torch.Tensor: ...

    def pack_feature(self, ids, default_value: int) -> dict: ...

    def sample(self, dedup, counts, tags, default_value: int, avoid_conflict: bool, avoid_all: bool,
               return_log_q: bool) -> SampleResult: ...

    def log_q(self, ids, counts, tags, n_positives: int) -> torch.Tensor: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class InProcessTransport:
    """The engine runs in this process; results are the backend's arrays as torch tensors.

    In a child forked from the process that made it (a DataLoader worker), the first call
    checks that the CPU kernels can run there and gives the child its own random stream
    (``worker_seed``): forked children would otherwise all repeat the parent's draws.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._to_torch = engine.backend.to_torch
        self._pid = os.getpid()
        self._stream = engine.stream

    @property
    def seed(self) -> int:
        return self.engine.seed

    def _here(self) -> RandomStream:
        """The random stream of this process (a new one on the first call in a forked child).
        Every method calls it before running a kernel."""
        if self._pid != os.getpid():
            why = threading_layer.forked_child_can_run()
            if why is not None:
                raise RuntimeError(f"NegativeSampler in a forked process (a DataLoader worker?): {why}")
            self._stream = RandomStream(worker_seed(self.engine.seed))
            self._pid = os.getpid()
        return self._stream

    def reload(self, neg_data, progress: bool | None) -> None:
        self._here()
        self.engine.reload(neg_data, progress)

    def sample_ids(self, dedup, counts, tags, avoid_conflict: bool, avoid_all: bool) -> torch.Tensor:
        return self._to_torch(self.engine.sample_ids(dedup, counts, tags, avoid_conflict, avoid_all,
                                                     stream=self._here()))

    def valid_sample_ids(self, ids, default_value: int) -> torch.Tensor:
        self._here()
        return self._to_torch(self.engine.valid_sample_ids(ids, default_value))

    def combine_vector(self, origin, counts, sampled) -> torch.Tensor:
        self._here()
        return self._to_torch(self.engine.combine_vector_with_sample_counts(origin, counts, sampled))

    def pack_feature(self, ids, default_value: int) -> dict:
        self._here()
        return self.engine.pack_feature(ids, default_value)

    def sample(self, dedup, counts, tags, default_value: int, avoid_conflict: bool, avoid_all: bool,
               return_log_q: bool) -> SampleResult:
        neg, valid, ids, features, counts, log_q = self.engine.fused_sample(
            dedup, counts, tags, default_value, avoid_conflict, avoid_all, return_log_q, stream=self._here())
        t = self._to_torch
        return SampleResult(t(neg), t(valid), t(ids), features, t(counts), None if log_q is None else t(log_q))

    def log_q(self, ids, counts, tags, n_positives: int) -> torch.Tensor:
        self._here()
        return self._to_torch(self.engine.log_q(ids, counts, tags, n_positives))

    def describe(self) -> str:
        return self.engine.describe()

    def close(self) -> None:
        """Drop the loaded table (the memory goes when no result refers to it)."""
        self.engine.swap(None)


def worker_seed(seed: int) -> int:
    """The seed of a forked child's stream: mixed from the sampler's seed and the DataLoader
    worker's torch seed (which torch draws per worker and per epoch from the loader's
    generator, so ``torch.manual_seed`` makes it reproducible); outside a DataLoader
    worker, from the process id."""
    info = torch.utils.data.get_worker_info()
    salt = info.seed if info is not None else os.getpid()
    return int(np.random.SeedSequence([seed & (2**64 - 1), salt & (2**64 - 1)]).generate_state(1, np.uint64)[0])
