"""Sampling in DataLoader workers: each worker transforms its share of the positive batches.

Which to use when (README "Feeding a model"):

* ``Prefetcher`` / ``prefetch``: one training process, sampling in a background thread
  of that process (the kernels release the GIL).
* ``SampledBatches`` in ``DataLoader(num_workers=n)``: sampling spread over worker
  processes. With a ``NegativeSampler`` the workers must be forked (they share the table
  the parent loaded; each gets its own random stream); with a ``LocalRpcDataSampler``
  any start method works (each worker is one more client of the node's server).
* ``LocalRpcDataSampler``: several training processes on one machine (torchrun), one
  table in memory for all of them.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import itertools
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.utils.data

from .ragged import RaggedTensor


class SampledBatches(torch.utils.data.IterableDataset):
    """``transform(batch)`` for every positive batch of ``batches``, computed in DataLoader workers.

    Worker ``w`` of ``n`` takes batches ``w, w + n, w + 2n, ...``, so each batch is
    transformed once per epoch, by one worker; without workers the loading process takes
    them all. ``batches`` is read again each epoch: a list or a map-style Dataset (its
    ``len`` and ``[i]``: each worker loads only its own batches), or any iterable that can
    be iterated more than once (each worker iterates all of it, skipping the others').
    ``transform`` is typically a function that calls a sampler (``sampler.sample(...)``
    and ``sampler.combine(...)``); under the spawn start method it is pickled, so make it
    a module-level function or a ``functools.partial``.
    Use the loader with ``batch_size=None``: the batches are already batches::

        loader = DataLoader(SampledBatches(batches, with_negatives), batch_size=None,
                            num_workers=2, multiprocessing_context="fork")
    """

    def __init__(self, batches: Iterable[Any], transform: Callable[[Any], Any]):
        super().__init__()
        self.batches = batches
        self.transform = transform

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return map(self.transform, _share(self.batches, 0, 1))
        share = _share(self.batches, info.id, info.num_workers)
        return (_in_shared_memory(self.transform(batch)) for batch in share)


def _share(batches, first: int, step: int) -> Iterator[Any]:
    """Batches first, first + step, ... of ``batches``. A map-style Dataset or a sequence is
    indexed: only the worker's own batches are loaded (``iter()`` of a Dataset would load
    every batch in every worker, and run on until an IndexError its __getitem__ may never
    raise); any other iterable is iterated, skipping the other workers' batches."""
    indexable = isinstance(batches, collections.abc.Sequence) or (
        isinstance(batches, torch.utils.data.Dataset) and not isinstance(batches, torch.utils.data.IterableDataset)
        and hasattr(batches, "__len__"))
    if indexable:
        return (batches[i] for i in range(first, len(batches), step))
    return itertools.islice(batches, first, None, step)


def _in_shared_memory(value):
    """value, with its CPU tensors moved to shared memory here, in the worker's own thread.

    A worker hands its result to a queue whose feeder thread pickles it later, and pickling
    moves a tensor's storage into shared memory in place, freeing the old memory. A result
    that holds a tensor the worker reads again (the batch's own ids handed back, one tensor
    in several batches, a transform's cached buffer) would be freed under the next
    transform's kernel. Moved here, before the hand-over, the feeder finds it shared already
    and leaves it where it is. Tensors inside tuples, lists, dicts, dataclasses (SampleResult)
    and RaggedTensors are found.
    """
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu" and value.layout == torch.strided and not value.is_nested:
            value.share_memory_()  # a no-op in shared memory already; sparse and nested ones are sent by parts
    elif isinstance(value, RaggedTensor):
        for part in (value.values(), *value.offsets(), value.weight()):
            _in_shared_memory(part)
    elif isinstance(value, dict):
        for item in value.values():
            _in_shared_memory(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _in_shared_memory(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _in_shared_memory(getattr(value, f.name))
    return value
