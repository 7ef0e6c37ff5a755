"""The RecIS sampler API, written once over a transport; NegativeSampler runs it in-process.

``SamplerBase`` holds the public methods of RecIS's ``LocalDataSampler`` /
``LocalRpcDataSampler`` (plus the fused ``sample`` and ``sampling_log_prob``) and hands
each call to its ``SamplerTransport``: ``NegativeSampler`` uses an engine in this process,
``LocalRpcDataSampler`` (server/client.py) the node's sampling server.

What the arguments mean, for every method:

* ids (``dedup_tag_ragged_tensor``, ``ids``, ``origin_vector``, ...) may be a
  ``RaggedTensor`` (one row per positive), or a 1-D tensor, numpy array or list of
  integers of any integer dtype (int32 included): one id per row. Where a method takes
  plain ids (``valid_sample_ids``, ``pack_feature``), a RaggedTensor's values are used.
* ``sample_cnts``: an int (the same count for every positive), a one-element tensor, or
  one count per positive. Counts are >= 0 and add up to at most ``max_negatives``.
* ``sample_tag_ragged_tensor``: each positive's categories (RaggedTensor or one per row);
  None samples from the whole table.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
import torch

from . import combine as _combine
from .backends import CpuBackend
from .backends.select import select_backend
from .config import DEFAULT_MAX_NEGATIVES, SamplerConfig
from .engine import Engine
from .errors import RequestError
from .ragged import RaggedTensor
from .request import int64_array, ragged_rows
from .transport import InProcessTransport, SampleResult, SamplerTransport

if TYPE_CHECKING:
    import pandas
    import pyarrow

Ids = Union[RaggedTensor, torch.Tensor, np.ndarray, Sequence[int]]
Counts = Union[int, torch.Tensor, np.ndarray, Sequence[int]]
# A negative table: a RecIS batch (list of dicts), a dict of columns, a pyarrow.Table, a
# pandas DataFrame, or a Parquet file / directory path.
TableInput = Union[list, dict, "pyarrow.Table", "pandas.DataFrame", str, os.PathLike]
FeatureTable = dict  # column name -> torch.Tensor (dense) | RaggedTensor (ragged) | np.ndarray of bytes (strings)

__all__ = ["NegativeSampler", "SampleResult", "SamplerBase"]


class SamplerBase:
    """RecIS's sampler methods over a transport (see the module docstring for argument types)."""

    config: SamplerConfig
    _transport: SamplerTransport

    @property
    def seed(self) -> int:
        """The 64-bit seed this sampler's draws come from (drawn at random when none was given)."""
        return self._transport.seed

    @property
    def put_back(self) -> bool:
        """True: negatives drawn with replacement; False: distinct negatives per positive."""
        return self.config.put_back

    def describe(self) -> str:
        """The loaded table, its index, the backend, and where each column lives."""
        return self._transport.describe()

    def reload(self, neg_data: TableInput, progress: bool | None = None) -> None:
        """Load the negative table: a RecIS batch (list of dicts), a dict of columns, a
        pyarrow.Table, a pandas DataFrame, or a Parquet file / directory. On error the previous
        table stays loaded. ``progress`` shows a bar (default: for tables of 1M rows or more)."""
        self._transport.reload(neg_data, progress)

    def sample_ids(self, dedup_tag_ragged_tensor: Ids, sample_cnts: Counts, sample_tag_ragged_tensor: Ids | None = None,
                   avoid_conflict: bool = True, avoid_conflict_with_all_dedup_tags: bool = False) -> torch.Tensor:
        """Negative item ids, int64, positive 0's negatives first.

        ``dedup_tag_ragged_tensor`` has one row per positive (its ids are excluded when
        ``avoid_conflict``); ``sample_tag_ragged_tensor`` gives each positive's categories
        (None: the whole table). ``avoid_conflict_with_all_dedup_tags`` excludes every
        positive id of the request from every row.
        """
        return self._transport.sample_ids(dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                                          bool(avoid_conflict), bool(avoid_conflict_with_all_dedup_tags))

    def valid_sample_ids(self, ids: Ids, default_value: int = -1) -> torch.Tensor:
        """ids with every id that is not in the table replaced by default_value."""
        return self._transport.valid_sample_ids(ids, default_value)

    def combine_vector_with_sample_counts(self, origin_vector: Ids, sample_cnts: Counts,
                                          sampled_vector: Ids) -> torch.Tensor:
        """Each origin entry followed by its sampled entries: [1,2,3], 2, [5..10] -> [1,5,6,2,7,8,3,9,10]."""
        return self._transport.combine_vector(origin_vector, sample_cnts, sampled_vector)

    def pack_feature(self, local_data_sample_ids: Ids, default_value: int = -1,
                     decorate_skey: bool = False) -> FeatureTable:
        """Every table column at the given ids (absent ids take default_value's row, so
        default_value must be an id of the table when an id may be absent): dense ->
        Tensor, ragged -> RaggedTensor, strings -> numpy array of bytes."""
        if decorate_skey:
            raise NotImplementedError("decorate_skey is not supported (RecIS does not implement it either)")
        return self._transport.pack_feature(local_data_sample_ids, default_value)

    def combine(self, batch: list, output_sample_table: FeatureTable, sample_cnts: Counts,
                keep_positive_columns: bool = False, label_column: str | None = None) -> list:
        """RecIS's combine; see ``gpu_negsample.combine.combine`` for the two opt-in extras.
        It tiles the caller's own positive batch, so it runs here, in the caller."""
        return _combine.combine(batch, output_sample_table, sample_cnts, CpuBackend.tile_ragged,
                                keep_positive_columns, label_column)

    def sample(self, dedup_tag_ragged_tensor: Ids, sample_cnts: Counts, sample_tag_ragged_tensor: Ids | None = None,
               default_value: int = -1, avoid_conflict: bool = True, avoid_conflict_with_all_dedup_tags: bool = False,
               return_log_q: bool = False) -> SampleResult:
        """sample_ids -> valid_sample_ids -> combine_vector_with_sample_counts -> pack_feature in
        one call on one table (one round trip through a server). Needs one dedup id per positive."""
        return self._transport.sample(dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor, default_value,
                                      bool(avoid_conflict), bool(avoid_conflict_with_all_dedup_tags),
                                      bool(return_log_q))

    def sampling_log_prob(self, ids: Ids, sample_cnts: Counts, sample_tag_ragged_tensor: Ids | None = None
                          ) -> torch.Tensor:
        """log q for combined ids (each positive followed by its negatives): the log probability
        that the positive's category mixture draws the item, before exclusion (float32)."""
        return self._transport.log_q(ids, sample_cnts, sample_tag_ragged_tensor,
                                     _positives_of(ids, sample_cnts, sample_tag_ragged_tensor))

    def close(self) -> None:
        """Release what the sampler holds. Idempotent."""
        self._transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class NegativeSampler(SamplerBase):
    """Weighted, category-conditional negative sampler over a table loaded in this process.

    Args:
        sample_tag: category column (int64, one or several per row).
        dedup_tag: item id column (int64, one per row, unique).
        weight_tag: weight column: one per row, or one per category value of the row.
        skey_name: RecIS's sample-key column (strings), kept as a feature; None when the
            table has no such column.
        put_back: True samples with replacement; False gives distinct negatives per
            positive (one category per positive).
        seed: 64-bit Philox key; the same seed, table and call sequence give the same
            results on any thread count. None draws a random seed (see ``seed``).
        weight_exponent: weights are raised to this power at reload (0.75 is word2vec's
            unigram distortion).
        unsatisfiable: "raise" (default) raises UnsatisfiableRowError for a positive that
            cannot get its negatives; "fill" pads its missing negatives with ``fill_id``.
        fill_id: the id used by unsatisfiable="fill".
        device: "auto" (a GPU when one and cupy are present, else the CPU), "cpu", "cuda",
            "cuda:N", or "emulated" (the CUDA kernels run on the CPU, for tests). Results
            are the same ids and features on every device for the same seed.
        memory_budget: bytes of feature columns the CUDA backend copies to the GPU; the
            rest are read from pinned host memory (None: half the free GPU memory).
        max_negatives: the most negatives one request may ask for (sum of its counts).
        stream: on a GPU, the torch.cuda.Stream the sampler's kernels run on (default: a
            non-blocking stream of its own). Either way the caller's current stream waits
            for a request's results through an event, never the host.

    RecIS's other keyword arguments (``use_positive``, ``ignore_invalid_dedup_tag``,
    ``profiling`` and the ``rpc_*`` options) are accepted and ignored; any other keyword is
    a TypeError.
    """

    def __init__(self, sample_tag: str, dedup_tag: str, weight_tag: str, skey_name: str | None = None,
                 put_back: bool = True, *, seed: int | None = None, weight_exponent: float = 1.0,
                 unsatisfiable: str = "raise", fill_id: int = -1, device: str = "auto",
                 memory_budget: int | None = None, max_negatives: int = DEFAULT_MAX_NEGATIVES,
                 stream: torch.cuda.Stream | None = None,
                 **recis_options):
        self.config = SamplerConfig.from_arguments(
            recis_options=recis_options, owner=type(self).__name__, sample_tag=sample_tag, dedup_tag=dedup_tag,
            weight_tag=weight_tag, skey_name=skey_name, put_back=put_back, seed=seed,
            weight_exponent=weight_exponent, unsatisfiable=unsatisfiable, fill_id=fill_id, device=device,
            memory_budget=memory_budget, max_negatives=max_negatives)
        self._transport = InProcessTransport(Engine(self.config, select_backend(device, memory_budget, stream)))

    @property
    def engine(self) -> Engine:
        """The engine behind this sampler (its backend, loaded table and statistics)."""
        return self._transport.engine

    def __reduce__(self):
        """Pickled (DataLoader workers under spawn or forkserver, multiprocessing) only
        without a table: the table lives in this process's memory, and copying it into each
        worker is what the node's sampling server exists to avoid."""
        if self.engine.loaded:
            raise TypeError(
                "a NegativeSampler with a loaded table cannot be pickled: its table lives in this process's "
                "memory. DataLoader workers started with spawn/forkserver pickle their dataset; use "
                "LocalRpcDataSampler there (each worker becomes a client of the node's sampling server), or fork "
                "workers (multiprocessing_context='fork'), which share the table, or reload() in each worker")
        return _unloaded_sampler, (self.config,)


def _unloaded_sampler(config: SamplerConfig) -> NegativeSampler:
    """A NegativeSampler of ``config`` with no table (the other end of ``__reduce__``)."""
    sampler = NegativeSampler.__new__(NegativeSampler)
    sampler.config = config
    sampler._transport = InProcessTransport(Engine(config, select_backend(config.device, config.memory_budget)))
    return sampler


def _positives_of(ids, sample_cnts, sample_tag_ragged_tensor) -> int:
    """The number of positives behind a combined id vector."""
    if isinstance(sample_cnts, (int, np.integer)) and not isinstance(sample_cnts, bool):
        counts = np.array([int(sample_cnts)])
    else:
        counts = int64_array(sample_cnts, "sample_cnts")
    if counts.shape[0] > 1:
        return counts.shape[0]
    if sample_tag_ragged_tensor is not None:
        return ragged_rows(sample_tag_ragged_tensor, "sample_tag_ragged_tensor")[0].shape[0] - 1
    total = int64_array(ids, "ids").shape[0]
    per = int(counts[0]) + 1 if counts.shape[0] else 0
    if per <= 0 or total % per:
        raise RequestError(f"ids has {total} entries, not a multiple of sample_cnts + 1 = {per}")
    return total // per
