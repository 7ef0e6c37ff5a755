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
from .backends.kernel_constants import STATUS_NO_CANDIDATE
from .backends.protocol import Allocator, SampleInputs, host_empty
from .backends.status import RequestStatus
from .columns import read_table_input
from .config import SamplerConfig
from .errors import NotLoadedError, RequestError, UnsatisfiableRowError
from .hashing import probe
from .index import Index, build_index
from .request import id_values, int64_scalar, ragged_rows, row_of_position, row_plan, sample_counts
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
class Prepared:
    """A sampling request as the engine checked it: the backend's inputs, and what the error
    messages need (host offsets and counts; ids and categories as given)."""

    inputs: SampleInputs
    index: Index           # whose categories the segments number
    counts: np.ndarray     # host, one per row
    own_offsets: np.ndarray  # what each row excludes (none without avoid_conflict)
    own_ids: object        # host array or device tensor
    cat_offsets: np.ndarray
    cats: object
    positives: object      # the backend array of the positives (fused requests)
    staged: dict           # every staged input, extras included


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
        self.last_attempts: int | None = None  # alias draws of the last request, where the backend counts them

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
                                cfg.weight_exponent, self.backend.allocate_host,
                                keep_owned=not self.backend.packs_every_array)
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
    def sample_ids(self, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor=None,
                   avoid_conflict=True, avoid_conflict_with_all_dedup_tags=False, stream: RandomStream | None = None):
        """Negative ids (a backend array, positive 0's first); draws come from ``stream``
        (default: the engine's own)."""
        state = self.state
        with self.backend.request() as rq:
            prepared, draw = self._draw(state, rq, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                                        avoid_conflict, avoid_conflict_with_all_dedup_tags, stream)
            self._raise_for(rq.finish(draw.status), prepared)
        return draw.ids

    def fused_sample(self, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor=None, default_value=-1,
                     avoid_conflict=True, avoid_conflict_with_all_dedup_tags=False, return_log_q=False,
                     stream: RandomStream | None = None, alloc: Allocator = host_empty):
        """sample_ids -> valid ids -> combine -> pack in one request on one table: (negatives,
        valid positives, combined ids, features, counts, float32 log q or None) as backend
        arrays; host arrays of the negatives, valid ids, combined ids and features come from ``alloc``."""
        state = self.state
        default_value = int64_scalar(default_value, "default_value")
        b = self.backend
        with b.request() as rq:
            prepared = self._prepare(state, rq, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                                     avoid_conflict, avoid_conflict_with_all_dedup_tags, stream or self.stream,
                                     one_id_per_row=True, stage_counts=True)
            inputs, positives = prepared.inputs, prepared.positives
            # every array handed back comes from alloc: the server's lands in the client's block
            draw = b.sample(rq, inputs, alloc)
            valid = b.valid_ids(rq, state.placed_index, positives, default_value, alloc)
            ids = b.combine(rq, valid, inputs.out_offsets, _uniform(inputs), draw.ids, alloc)
            features = self._gather(state, rq, ids, default_value, alloc)
            log_q = None
            if return_log_q:
                # q of the positives themselves, not of the default id that replaced absent ones
                raw = b.combine(rq, positives, inputs.out_offsets, _uniform(inputs), draw.ids)
                log_q = b.log_q(rq, inputs.ix, inputs.req_offsets, draw.req_segs, inputs.out_offsets,
                                _uniform(inputs), raw)
            status = rq.finish(draw.status)
            self._raise_for(status, prepared)
            self._raise_for_missing(status, ids, default_value)
        return draw.ids, valid, ids, features, prepared.staged["counts"], log_q

    def _draw(self, state: LoadedTable, rq, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
              avoid_conflict, avoid_conflict_with_all_dedup_tags, stream):
        prepared = self._prepare(state, rq, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                                 avoid_conflict, avoid_conflict_with_all_dedup_tags, stream or self.stream)
        return prepared, self.backend.sample(rq, prepared.inputs)

    def _draw_with(self, state: LoadedTable, rq, positives, sample_cnts, sample_tag_ragged_tensor, **extra):
        """A draw without exclusion from a throwaway stream, with extra inputs staged alongside."""
        prepared = self._prepare(state, rq, positives, sample_cnts, sample_tag_ragged_tensor, False, False,
                                 RandomStream(0), **extra)
        return prepared, self.backend.sample(rq, prepared.inputs)

    def _prepare(self, state: LoadedTable, rq, dedup_tag_ragged_tensor, sample_cnts, sample_tag_ragged_tensor,
                 avoid_conflict, avoid_all, stream: RandomStream, one_id_per_row: bool = False,
                 stage_counts: bool = False, **extra) -> Prepared:
        """The host-side checks of a sampling request (shapes, counts, categories per row) and
        its inputs (with ``extra`` arrays, the positives when ``one_id_per_row``, the counts,
        which no kernel reads, when ``stage_counts`` returns them) staged on the backend in
        one upload. Values that need the index (unknown categories, rows
        without candidates) are checked by the kernels and raised by ``_raise_for``."""
        keep = self.backend.keeps_device_tensors
        own_offsets, own_ids = ragged_rows(dedup_tag_ragged_tensor, "dedup_tag_ragged_tensor", keep)
        n = own_offsets.shape[0] - 1
        if one_id_per_row and own_ids.shape[0] != n:
            raise RequestError("sample() needs exactly one dedup id per positive row")
        counts = sample_counts(sample_cnts, n, self.config.max_negatives)
        if sample_tag_ragged_tensor is None:
            index, placed = state.global_index()
            cat_offsets, cats = np.arange(n + 1, dtype=np.int64), np.full(n, index.categories[0], np.int64)
        else:
            index, placed = state.index, state.placed_index
            cat_offsets, cats = ragged_rows(sample_tag_ragged_tensor, "sample_tag_ragged_tensor", keep)
            if cat_offsets.shape[0] - 1 != n:
                raise RequestError(f"sample_tag_ragged_tensor has {cat_offsets.shape[0] - 1} rows but there are "
                                   f"{n} positives")
        out_offsets = np.empty(n + 1, dtype=np.int64)
        row, uniform = row_plan(cat_offsets, counts, not self.config.put_back, out_offsets)
        if row >= 0 and not self.config.put_back:
            raise RequestError(
                f"positive row {row} has {int(cat_offsets[row + 1] - cat_offsets[row])} categories; sampling "
                "without replacement (put_back=False) takes exactly one category per positive"
            )
        if row >= 0:
            raise RequestError(f"positive row {row} has no category; give at least one sample tag per positive")
        excluded_offsets, excluded = own_offsets, own_ids
        if not avoid_conflict:
            excluded_offsets, excluded = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if one_id_per_row and not avoid_conflict:
            extra["positives"] = own_ids  # (else they are the excluded ids, staged once)
        if stage_counts:
            extra["counts"] = counts
        staged = rq.inputs(own_offsets=excluded_offsets, own_ids=excluded, req_offsets=cat_offsets, req_cats=cats,
                           out_offsets=out_offsets, **extra)
        inputs = SampleInputs(placed, staged["own_offsets"], staged["own_ids"], staged["req_offsets"],
                              staged["req_cats"], staged["out_offsets"], n, int(out_offsets[-1]), uniform,
                              bool(avoid_conflict and avoid_all),
                              not self.config.put_back, stream.next_call(), stream.key, self.config.fill_id)
        return Prepared(inputs, index, counts, excluded_offsets, excluded, cat_offsets, cats,
                        staged.get("positives", staged["own_ids"]), staged)

    def _raise_for(self, status: RequestStatus, p: Prepared) -> None:
        """The errors a request's kernels reported, in the order a user fixes them."""
        self.last_attempts = status.attempts if self.backend.count_attempts else None
        if status.unknown:
            pos = status.first_unknown
            value = int(self.backend.to_host(p.cats[pos:pos + 1])[0])
            raise RequestError(
                f"positive row {row_of_position(p.cat_offsets, pos)}: category {value} is not in the table "
                f"({status.unknown} unknown value(s)); only categories of column {self.config.sample_tag!r} can be "
                "sampled"
            )
        if status.failed and self.config.unsatisfiable == "raise":
            row = status.first_failed
            lo, hi = int(p.own_offsets[row]), int(p.own_offsets[row + 1])
            excluded = self.backend.to_host(p.own_ids[lo:hi]).tolist()[:8]
            cats = self.backend.to_host(p.cats[int(p.cat_offsets[row]):int(p.cat_offsets[row + 1])]).tolist()[:8]
            if status.first_failed_status == STATUS_NO_CANDIDATE:
                why = "every candidate of its categories is excluded or has zero weight"
            else:
                why = f"fewer than {int(p.counts[row])} distinct candidates remain (put_back=False)"
            raise UnsatisfiableRowError(
                f"positive row {row} (excluded ids {excluded}, categories {cats}) cannot get "
                f"{int(p.counts[row])} negatives: {why}; {status.failed} row(s) fail in all. Lower the count, disable "
                "avoid_conflict_with_all_dedup_tags, or pass unsatisfiable='fill' to pad such rows with fill_id"
            )

    def _raise_for_missing(self, status: RequestStatus, ids, default_value: int) -> None:
        if status.missing:
            pos = status.first_missing
            raise RequestError(
                f"pack_feature: {status.missing} id(s) are not in the table (first: "
                f"{int(self.backend.to_host(ids[pos:pos + 1])[0])} at position {pos}) and default_value "
                f"{default_value} is not a {self.config.dedup_tag!r} id of the table either; pass a default_value "
                "that is in the table (the same one given to valid_sample_ids)"
            )

    def log_q(self, ids, sample_cnts, sample_tag_ragged_tensor, n_positives: int):
        """float32 log q (a backend array) of combined ids (each positive followed by its negatives)."""
        state = self.state
        ids = id_values(ids, "ids", self.backend.keeps_device_tensors)
        # n_positives sizes the arrays below: bounded by the ids before anything is allocated
        # (a server's client sends it as a number of its own)
        if not 0 <= n_positives <= ids.shape[0]:
            raise RequestError(f"log q of {n_positives} positives: ids has {ids.shape[0]} entries, each positive "
                               f"followed by its negatives, so between 0 and {ids.shape[0]} positives")
        counts = sample_counts(sample_cnts, n_positives, self.config.max_negatives)
        sampled_offsets = np.zeros(n_positives + 1, dtype=np.int64)
        np.cumsum(counts, out=sampled_offsets[1:])
        if ids.shape[0] != n_positives + int(sampled_offsets[-1]):
            raise RequestError(f"ids has {ids.shape[0]} entries; positives + sum(sample_cnts) = "
                               f"{n_positives + int(sampled_offsets[-1])}")
        with self.backend.request() as rq:
            # A request of no draws resolves the categories; the ids and their offsets ride along.
            prepared, draw = self._draw_with(state, rq, np.zeros(n_positives, np.int64), 0, sample_tag_ragged_tensor,
                                             ids=ids, sampled_offsets=sampled_offsets)
            uniform = int(counts[0]) if n_positives and (counts == counts[0]).all() else -1
            out = self.backend.log_q(rq, prepared.inputs.ix, prepared.inputs.req_offsets, draw.req_segs,
                                     prepared.staged["sampled_offsets"], uniform, prepared.staged["ids"])
            self._raise_for(rq.finish(draw.status), prepared)
        return out

    # ---- lookups -------------------------------------------------------------------------
    def valid_sample_ids(self, ids, default_value):
        state = self.state
        default_value = int64_scalar(default_value, "default_value")
        with self.backend.request() as rq:
            staged = rq.inputs(ids=id_values(ids, "ids", self.backend.keeps_device_tensors))["ids"]
            out = self.backend.valid_ids(rq, state.placed_index, staged, default_value)
            rq.finish()
        return out

    def combine_vector_with_sample_counts(self, origin, sample_cnts, sampled):
        keep = self.backend.keeps_device_tensors
        origin, sampled = id_values(origin, "origin_vector", keep), id_values(sampled, "sampled_vector", keep)
        counts = sample_counts(sample_cnts, origin.shape[0], self.config.max_negatives)
        if counts.sum() != sampled.shape[0]:
            raise RequestError(
                f"sampled_vector has {sampled.shape[0]} entries but sample_cnts add up to {int(counts.sum())}"
            )
        offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        uniform = int(counts[0]) if counts.shape[0] and (counts == counts[0]).all() else -1
        with self.backend.request() as rq:
            staged = rq.inputs(origin=origin, sampled=sampled, offsets=offsets)
            out = self.backend.combine(rq, staged["origin"], staged["offsets"], uniform, staged["sampled"])
            rq.finish()
        return out

    def pack_feature(self, ids, default_value=-1, alloc: Allocator = host_empty) -> dict:
        """Every column at the given ids (absent ids take default_value's row); host outputs
        come from ``alloc``."""
        state = self.state
        default_value = int64_scalar(default_value, "default_value")
        with self.backend.request() as rq:
            staged = rq.inputs(ids=id_values(ids, "ids", self.backend.keeps_device_tensors))["ids"]
            features = self._gather(state, rq, staged, default_value, alloc)
            self._raise_for_missing(rq.finish(), staged, default_value)
        return features

    def _gather(self, state: LoadedTable, rq, ids, default_value: int, alloc: Allocator) -> dict:
        """The features of ids on ``state``; absent ids (counted when default_value is absent
        too, an error the caller raises from the request's status) take default_value's row."""
        # one probe on this thread, not a parallel region for one id (one profile of a 4096x10
        # fused sample on the H200 machine's 16-core host spent 1.8 ms per call there)
        default_row = int(probe(state.index.arrays.id_slots, np.int64(default_value)))
        return self.backend.gather_ids(rq, state.placed_index, state.columns, ids, max(default_row, 0), default_row < 0,
                                       alloc)


def _uniform(inputs: SampleInputs) -> int:
    """The combine kernels' uniform count: every row's count, or -1 when they differ."""
    return inputs.uniform_count if inputs.uniform_count > 0 or inputs.n_draws == 0 else -1


