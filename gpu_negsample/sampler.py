"""NegativeSampler: RecIS's LocalDataSampler API, in-process."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import combine as _combine
from .backends import CpuBackend
from .backends.select import select_backend
from .engine import Engine
from .errors import RequestError
from .request import ragged_rows


@dataclass
class SampleResult:
    """What one fused ``sample`` call returns (one round trip through a server).

    ``ids`` interleaves each positive with its negatives, ``features`` is the packed
    table of ``ids``, ``log_q`` (when asked for) is aligned with ``ids``.
    """

    negative_ids: torch.Tensor
    positive_ids: torch.Tensor
    ids: torch.Tensor
    features: dict
    sample_counts: torch.Tensor
    log_q: torch.Tensor | None = None


class NegativeSampler:
    """Weighted, category-conditional negative sampler over a table loaded in this process.

    Args:
        sample_tag: category column (int64, one or several per row).
        dedup_tag: item id column (int64, one per row, unique).
        weight_tag: weight column: one per row, or one per category value of the row.
        skey_name: RecIS's sample-key column (strings), kept as a feature; None if absent.
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
    """

    def __init__(self, sample_tag, dedup_tag, weight_tag, skey_name=None, put_back=True, seed=None,
                 weight_exponent=1.0, unsatisfiable="raise", fill_id=-1, device="auto", memory_budget=None,
                 **_recis_options):
        self._engine = Engine(sample_tag, dedup_tag, weight_tag, skey_name, put_back, seed,
                              weight_exponent, unsatisfiable, fill_id, select_backend(device, memory_budget))

    @property
    def seed(self) -> int:
        return self._engine.seed

    @property
    def put_back(self) -> bool:
        return self._engine.put_back

    @property
    def engine(self) -> Engine:
        return self._engine

    def describe(self) -> str:
        """The loaded table, its index, the backend, and where each column lives."""
        state = self._engine.state
        return (f"table: {state.table.describe()}\nindex: {state.index.describe()}\n"
                f"backend: {self._engine.backend.name}\n{state.placement.describe()}")

    def reload(self, neg_data, progress: bool | None = None) -> None:
        """Load a negative table: a RecIS batch (list of dicts), a dict, a pyarrow.Table, or a
        Parquet file / directory. On error the previous table stays loaded."""
        self._engine.reload(neg_data, progress)

    def sample_ids(self, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor=None,
                   avoid_conflict=True, avoid_conflict_with_all_dedup_tags=False) -> torch.Tensor:
        """Negative item ids, int64, positive 0's negatives first.

        ``dedup_tag_ragged_tensor`` has one row per positive (its ids are excluded when
        ``avoid_conflict``); ``sample_cnts`` is an int or one count per positive;
        ``sample_tag_ragged_tensor`` gives each positive's categories (None: the whole
        table). ``avoid_conflict_with_all_dedup_tags`` excludes every positive id of the
        request from every row.
        """
        ids, _, _ = self._engine.sample_ids(dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                                            avoid_conflict, avoid_conflict_with_all_dedup_tags)
        return self._engine.backend.to_torch(ids)

    def valid_sample_ids(self, ids, default_value=-1) -> torch.Tensor:
        """ids with every id that is not in the table replaced by default_value."""
        return self._engine.backend.to_torch(self._engine.valid_sample_ids(ids, default_value))

    def combine_vector_with_sample_counts(self, origin_vector, sample_cnts, sampled_vector) -> torch.Tensor:
        """Each origin entry followed by its sampled entries: [1,2,3], 2, [5..10] -> [1,5,6,2,7,8,3,9,10]."""
        return self._engine.backend.to_torch(
            self._engine.combine_vector_with_sample_counts(origin_vector, sample_cnts, sampled_vector))

    def pack_feature(self, local_data_sample_ids, default_value=-1, decorate_skey=False) -> dict:
        """Every table column at the given ids (absent ids take default_value's row):
        dense -> Tensor, ragged -> RaggedTensor, strings -> numpy array of bytes."""
        if decorate_skey:
            raise NotImplementedError("decorate_skey is not supported (RecIS does not implement it either)")
        return self._engine.pack_feature(local_data_sample_ids, default_value)

    def combine(self, batch, output_sample_table, sample_cnts, keep_positive_columns=False,
                label_column=None) -> list:
        """RecIS's combine; see ``gpu_negsample.combine.combine`` for the two opt-in extras."""
        # The positive batch is the caller's host data: its ragged columns are tiled on the CPU.
        return _combine.combine(batch, output_sample_table, sample_cnts, CpuBackend.gather_ragged,
                                keep_positive_columns, label_column)

    def sampling_log_prob(self, ids, sample_cnts, sample_tag_ragged_tensor=None) -> torch.Tensor:
        """log q for combined ids (each positive followed by its negatives): the log probability
        that the positive's category mixture draws the item, before exclusion (float32)."""
        counts_len = None if isinstance(sample_cnts, int) else len(torch.as_tensor(sample_cnts).reshape(-1))
        n = _positives_of(ids, sample_cnts, counts_len, sample_tag_ragged_tensor)
        logq = self._engine.log_q(ids, sample_cnts, sample_tag_ragged_tensor, n)
        return torch.from_numpy(logq.astype("float32"))

    def sample(self, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor=None, default_value=-1,
               avoid_conflict=True, avoid_conflict_with_all_dedup_tags=False, return_log_q=False) -> SampleResult:
        """sample_ids -> valid_sample_ids -> combine_vector_with_sample_counts -> pack_feature in one call."""
        neg, valid, ids, features, counts, log_q = self._engine.fused_sample(
            dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor, default_value, avoid_conflict,
            avoid_conflict_with_all_dedup_tags, return_log_q)
        to_torch = self._engine.backend.to_torch
        return SampleResult(to_torch(neg), to_torch(valid), to_torch(ids), features, to_torch(counts),
                            None if log_q is None else torch.from_numpy(log_q))


def _positives_of(ids, sample_cnts, counts_len, sample_tag_ragged_tensor) -> int:
    """The number of positives behind a combined id vector."""
    if counts_len is not None and counts_len > 1:
        return counts_len
    if sample_tag_ragged_tensor is not None:
        return ragged_rows(sample_tag_ragged_tensor, "sample_tag_ragged_tensor")[0].shape[0] - 1
    per = (int(sample_cnts) if counts_len is None else int(torch.as_tensor(sample_cnts).reshape(-1)[0])) + 1
    total = len(ids)
    if total % per:
        raise RequestError(f"ids has {total} entries, not a multiple of sample_cnts + 1 = {per}")
    return total // per
