"""The engine: one pipeline (load -> index -> sample -> valid -> combine -> pack) over a backend.

The engine owns request validation and the loaded state; a backend (``backends/``)
supplies the kernels. ``reload`` builds the new table and index aside and swaps one
reference, so a request always sees one whole table, never a half-loaded one.
"""
from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .backends import CpuBackend
from .backends.protocol import Allocator, host_empty
from .backends.kernel_constants import STATUS_NO_CANDIDATE
from .columns import read_table_input
from .errors import NotLoadedError, RequestError, UnsatisfiableRowError
from .config import SamplerConfig
from .backends.cpu.lookup import lookup
from .hashing import EMPTY_KEY, build_hash_table
from .index import Index, build_index
from .request import int64_array, int64_scalar, ragged_rows, row_of_position, sample_counts
from .rng import split_seed
from .table import SamplingColumns, Table, build_table

log = logging.getLogger("gpu_negsample")

PROGRESS_MIN_ROWS = 1_000_000


class LoadedTable:
    """A table and its index, placed by the backend, and (built on first use) the
    one-category index for requests without categories."""

    def __init__(self, table: Table, index: Index, sample_tag: str, backend) -> None:
        self.table = table
        self.index = index
        self.backend = backend
        self.placed_index = backend.place_index(index)
        self.columns, self.placement = backend.place_table(table)
        self._sample_tag = sample_tag
        self._global = (index, self.placed_index) if index.segment_count == 1 else None
        self._lock = threading.Lock()

    def global_index(self) -> tuple[Index, object]:
        """(index, its placed form) of the whole table as one category."""
        with self._lock:
            if self._global is None:
                sc = self.table.sampling
                n = sc.ids.shape[0]
                rows = np.repeat(np.arange(n), np.diff(sc.cat_offsets))
                per_item = np.bincount(rows, weights=sc.weights, minlength=n)
                single = SamplingColumns(sc.ids, np.arange(n + 1, dtype=np.int64), np.zeros(n, np.int64), per_item)
                index = build_index(single, self._sample_tag)
                self._global = (index, self.backend.place_index(index))
            return self._global


class RandomStream:
    """The Philox key and call counter one caller's draws come from. A server keeps one per
    client, so a client's results depend on its seed and its own calls only."""

    def __init__(self, seed: int):
        self.seed = int(seed) & (2**64 - 1)
        self.key = split_seed(self.seed)
        self._calls = itertools.count()

    def next_call(self) -> int:
        return next(self._calls)


@dataclass
class Categories:
    """A request's categories resolved to segments of one index."""

    index: Index
    placed: object        # the index as the backend holds it
    offsets: np.ndarray   # int64, positives + 1
    segments: np.ndarray  # int64


class Engine:
    """Table state plus the sampling pipeline, for one ``SamplerConfig``.

    Every request reads the current table once (``self.state``) and uses that one
    ``LoadedTable`` to its end, so a ``reload`` that swaps tables meanwhile can never give
    one answer parts of two tables. ``NegativeSampler`` and the node server both drive it.
    """

    def __init__(self, config: SamplerConfig, backend=None):
        self.config = config
        self.seed = secrets.randbits(64) if config.seed is None else config.seed
        self.backend = backend or CpuBackend()
        self.stream = RandomStream(self.seed)
        self._state: LoadedTable | None = None
        self.last_attempts = 0  # alias draws made by the last sample call (for benchmarks)

    # ---- loading -------------------------------------------------------------------------
    def reload(self, data, progress: bool | None = None) -> None:
        """Load a table; the bar (validate, index, place) shows for tables of PROGRESS_MIN_ROWS rows or more."""
        self.swap(self.build_state(data, progress))

    def swap(self, state: LoadedTable) -> None:
        """Make a built table current: one reference assignment, so a request in flight keeps
        the table it started with and the next one sees the new table whole."""
        self._state = state

    def build_state(self, data, progress: bool | None = None) -> LoadedTable:
        """Read, validate, index and place a table aside, without touching the current one."""
        cfg = self.config
        t0 = time.perf_counter()
        columns = read_table_input(data)
        rows = next(iter(columns.values())).row_count if columns else 0
        show = progress if progress is not None else rows >= PROGRESS_MIN_ROWS
        with tqdm(total=3, desc=f"reload {rows:,} rows", unit="step", disable=not show, leave=False) as bar:
            bar.set_postfix_str("validating")
            table = build_table(columns, cfg.sample_tag, cfg.dedup_tag, cfg.weight_tag, cfg.skey_name,
                                cfg.weight_exponent, self.backend.allocate_host)
            bar.update()
            bar.set_postfix_str("indexing")
            index = build_index(table.sampling, cfg.sample_tag)
            bar.update()
            bar.set_postfix_str("placing")
            state = LoadedTable(table, index, cfg.sample_tag, self.backend)
        log.info("loaded %s; %s in %.2f s", table.describe(), index.describe(), time.perf_counter() - t0)
        log.debug("%s", state.placement.describe())
        return state

    @property
    def loaded(self) -> bool:
        return self._state is not None

    @property
    def state(self) -> LoadedTable:
        """The current table: read once per request."""
        state = self._state
        if state is None:
            raise NotLoadedError("no table is loaded: call reload(neg_data) first")
        return state

    def describe(self) -> str:
        """The loaded table, its index, the backend, and where each column lives."""
        state = self.state
        return (f"table: {state.table.describe()}\nindex: {state.index.describe()}\n"
                f"backend: {self.backend.name}\n{state.placement.describe()}")

    # ---- sampling ------------------------------------------------------------------------
    def resolve_categories(self, state: LoadedTable, sample_tag_ragged_tensor, n_positives: int) -> Categories:
        if sample_tag_ragged_tensor is None:
            return Categories(*state.global_index(), np.arange(n_positives + 1, dtype=np.int64),
                              np.zeros(n_positives, dtype=np.int64))
        offsets, cats = ragged_rows(sample_tag_ragged_tensor, "sample_tag_ragged_tensor")
        if offsets.shape[0] - 1 != n_positives:
            raise RequestError(
                f"sample_tag_ragged_tensor has {offsets.shape[0] - 1} rows but there are {n_positives} positives"
            )
        segments = lookup(state.index.arrays.cat_slots, cats)  # on the host: unknown ones are reported
        unknown = np.flatnonzero(segments < 0)
        if unknown.size:
            pos = int(unknown[0])
            raise RequestError(
                f"positive row {row_of_position(offsets, pos)}: category {int(cats[pos])} is not in the table "
                f"({unknown.size} unknown value(s)); only categories of column {self.config.sample_tag!r} can be sampled"
            )
        return Categories(state.index, state.placed_index, offsets, segments)

    def sample_ids(self, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor=None,
                   avoid_conflict=True, avoid_conflict_with_all_dedup_tags=False, stream: RandomStream | None = None):
        """Negative ids (a backend array, positive 0's first); draws come from ``stream``
        (default: the engine's own)."""
        return self._sample(self.state, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                            avoid_conflict, avoid_conflict_with_all_dedup_tags, stream)[0]

    def _sample(self, state: LoadedTable, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                avoid_conflict, avoid_conflict_with_all_dedup_tags, stream):
        """(negatives, resolved categories, counts) of one sample request on ``state``."""
        stream = stream or self.stream
        own_offsets, own_ids = ragged_rows(dedup_tag_ragged_tensor, "dedup_tag_ragged_tensor")
        n = own_offsets.shape[0] - 1
        counts = sample_counts(sample_cnts, n, self.config.max_negatives)
        cats = self.resolve_categories(state, sample_tag_ragged_tensor, n)
        per_row = np.diff(cats.offsets)
        wanted = counts > 0
        if not self.config.put_back:
            bad = np.flatnonzero(wanted & (per_row != 1))
            if bad.size:
                row = int(bad[0])
                raise RequestError(
                    f"positive row {row} has {int(per_row[row])} categories; sampling without replacement "
                    "(put_back=False) takes exactly one category per positive"
                )
        bad = np.flatnonzero(wanted & (per_row == 0))
        if bad.size:
            raise RequestError(f"positive row {int(bad[0])} has no category; give at least one sample tag per positive")
        batch = None
        if not avoid_conflict:
            own_offsets = np.zeros(n + 1, dtype=np.int64)
            own_ids = np.zeros(0, dtype=np.int64)
        elif avoid_conflict_with_all_dedup_tags:
            unique = np.unique(own_ids)
            unique = unique[unique != EMPTY_KEY]  # never a table id; the hash set's empty marker
            batch = (build_hash_table(unique)[0], unique)
        out = self.backend.sample(
            cats.placed, cats.offsets, cats.segments, counts, own_offsets, own_ids, batch,
            not self.config.put_back, stream.next_call(), stream.key, self.config.fill_id)
        self.last_attempts = out.attempts
        if out.n_failed and self.config.unsatisfiable == "raise":
            raise self._unsatisfiable_error(out.first_failed, out.first_status, out.n_failed, counts,
                                            own_offsets, own_ids, cats)
        return out.ids, cats, counts

    def fused_sample(self, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor=None, default_value=-1,
                     avoid_conflict=True, avoid_conflict_with_all_dedup_tags=False, return_log_q=False,
                     stream: RandomStream | None = None, alloc: Allocator = host_empty):
        """sample_ids -> valid ids -> combine -> pack in one call, on one table: (negatives,
        valid positives, combined ids, features, counts, log q or None), as backend arrays;
        the features' host arrays come from ``alloc``."""
        state = self.state
        offsets, pos = ragged_rows(dedup_tag_ragged_tensor, "dedup_tag_ragged_tensor")
        if pos.shape[0] != offsets.shape[0] - 1:
            raise RequestError("sample() needs exactly one dedup id per positive row")
        neg, cats, counts = self._sample(state, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                                         avoid_conflict, avoid_conflict_with_all_dedup_tags, stream)
        valid = self._valid(state, pos, default_value)
        ids = self.backend.combine(valid, counts, neg)
        features = self._pack(state, ids, default_value, alloc)
        log_q = None
        if return_log_q:
            # q of the positives themselves, not of the default id that replaced absent ones
            raw = self.backend.combine(pos, counts, neg)
            log_q = self._log_q(cats, counts, raw)
        return neg, valid, ids, features, counts, log_q

    def _unsatisfiable_error(self, row, status, n_failed, counts, own_offsets, own_ids, cats):
        row_cats = cats.index.categories[cats.segments[cats.offsets[row]:cats.offsets[row + 1]]].tolist()
        excluded = own_ids[own_offsets[row]:own_offsets[row + 1]].tolist()
        if status == STATUS_NO_CANDIDATE:
            why = "every candidate of its categories is excluded or has zero weight"
        else:
            why = f"fewer than {int(counts[row])} distinct candidates remain (put_back=False)"
        return UnsatisfiableRowError(
            f"positive row {row} (excluded ids {excluded[:8]}, categories {row_cats[:8]}) cannot get "
            f"{int(counts[row])} negatives: {why}; {n_failed} row(s) fail in all. Lower the count, disable "
            "avoid_conflict_with_all_dedup_tags, or pass unsatisfiable='fill' to pad such rows with fill_id"
        )

    def log_q(self, ids, sample_cnts, sample_tag_ragged_tensor, n_positives: int):
        """log q (float32 backend array) for combined ids (each positive followed by its negatives)."""
        state = self.state
        counts = sample_counts(sample_cnts, n_positives, self.config.max_negatives)
        cats = self.resolve_categories(state, sample_tag_ragged_tensor, n_positives)
        return self._log_q(cats, counts, int64_array(ids, "ids"))

    def _log_q(self, cats: Categories, counts: np.ndarray, ids):
        item_offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts + 1, out=item_offsets[1:])
        if ids.shape[0] != item_offsets[-1]:
            raise RequestError(f"ids has {ids.shape[0]} entries; positives + sum(sample_cnts) = {int(item_offsets[-1])}")
        return self.backend.log_q(cats.placed, cats.offsets, cats.segments, item_offsets, ids).astype(np.float32)

    # ---- lookups -------------------------------------------------------------------------
    def valid_sample_ids(self, ids, default_value) -> np.ndarray:
        return self._valid(self.state, int64_array(ids, "ids"), default_value)

    def _valid(self, state: LoadedTable, ids, default_value):
        return self.backend.valid_ids(state.placed_index, ids, int64_scalar(default_value, "default_value"))

    def combine_vector_with_sample_counts(self, origin, sample_cnts, sampled) -> np.ndarray:
        origin = int64_array(origin, "origin_vector")
        sampled = int64_array(sampled, "sampled_vector")
        counts = sample_counts(sample_cnts, origin.shape[0], self.config.max_negatives)
        if counts.sum() != sampled.shape[0]:
            raise RequestError(
                f"sampled_vector has {sampled.shape[0]} entries but sample_cnts add up to {int(counts.sum())}"
            )
        return self.backend.combine(origin, counts, sampled)

    def pack_feature(self, ids, default_value=-1, alloc: Allocator = host_empty) -> dict:
        """Every column at the given ids (absent ids take default_value's row); host outputs
        come from ``alloc``."""
        return self._pack(self.state, int64_array(ids, "ids"), default_value, alloc)

    def _pack(self, state: LoadedTable, ids, default_value, alloc: Allocator) -> dict:
        """pack_feature of checked ids (a host int64 array or a backend array of this request) on ``state``."""
        default_value = int64_scalar(default_value, "default_value")
        id_slots = state.index.arrays.id_slots
        default_row = int(lookup(id_slots, np.array([default_value], dtype=np.int64))[0])
        rows, missing = self.backend.rows_or_default(state.placed_index, ids, max(default_row, 0))
        if missing and default_row < 0:
            ids = self.backend.to_host(ids)
            found = lookup(id_slots, ids)
            pos = int(np.flatnonzero(found < 0)[0])
            raise RequestError(
                f"pack_feature: {missing} id(s) are not in the table (first: {int(ids[pos])} at position {pos}) "
                f"and default_value {default_value} is not a {self.config.dedup_tag!r} id of the table either; pass a "
                "default_value that is in the table (the same one given to valid_sample_ids)"
            )
        return self.backend.gather_table(state.columns, rows, alloc)
