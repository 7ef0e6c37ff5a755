"""The sampling index: id -> row hash, category -> segment CSR, per-segment alias tables.

Built once per ``reload`` on the CPU (numba); the CUDA backend mirrors the same arrays.

Weights become integers here: every (item, category) weight w is scaled by one power of
two so that the sum of all weights is at most 2**62, and floored (a positive weight never
below 1). All masses the sampler adds, subtracts and compares at run time are sums of
these integers, so they are exact and associative: any thread order, on either backend,
gets the same answers. The alias tables are built from the same integers.

Each segment is split into a *head*, its HEAD_SIZE heaviest items stored first (heaviest
first), and a *tail*, the rest in table order, with one alias table over the tail. The
sampler draws from the head by an exact scan of at most HEAD_SIZE items, so excluding or
drawing popular items never makes tail rejection stall: this bounds the expected alias
draws per negative when popular positives are excluded from their own category (see
ARCHITECTURE.md, "Skew").
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import NamedTuple

import numba as nb
import numpy as np

from .alias import build_alias
from .errors import TableError
from .hashing import build_hash_table
from .table import SamplingColumns

log = logging.getLogger(__name__)

MASS_BITS = 62
HEAD_SIZE = 8


class IndexArrays(NamedTuple):
    """Flat arrays of the index, passed as one tuple to the kernels."""

    id_slots: np.ndarray        # (cap, 2) int64: id -> table row
    cat_slots: np.ndarray       # (cap, 2) int64: category -> segment
    seg_offsets: np.ndarray     # int64 (S + 1): segment s holds positions seg_offsets[s]:seg_offsets[s+1]
    seg_rows: np.ndarray        # int64 (P): table row of each position
    seg_ids: np.ndarray         # int64 (P): item id of each position
    seg_weights: np.ndarray     # uint64 (P): integer weight of each position
    seg_alias: np.ndarray       # uint32 (P, 2): tail positions: (threshold, alias local to the tail)
    seg_total: np.ndarray       # uint64 (S): integer weight of each segment
    seg_head: np.ndarray        # int64 (S): head size; the head is seg_offsets[s]:seg_offsets[s]+seg_head[s]
    seg_head_mass: np.ndarray   # uint64 (S): integer weight of the head
    item_cat_offsets: np.ndarray  # int64 (N + 1): row r's (segment, weight) pairs
    item_seg: np.ndarray        # int64 (P)
    item_weights: np.ndarray    # uint64 (P)


class Index:
    """The sampling index of one table; ``arrays`` feeds the kernels."""

    def __init__(self, arrays: IndexArrays, categories: np.ndarray, weight_scale_log2: int):
        self.arrays = arrays
        self.categories = categories  # segment -> category value
        self.weight_scale_log2 = weight_scale_log2

    @property
    def segment_count(self) -> int:
        return self.categories.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays) + self.categories.nbytes

    def describe(self) -> str:
        head_share = float(self.arrays.seg_head_mass.sum()) / max(float(self.arrays.seg_total.sum()), 1.0)
        return (
            f"{self.segment_count:,} categories (their {HEAD_SIZE} heaviest items hold {100 * head_share:.0f} % "
            "of the weight), "
            f"{self.arrays.seg_ids.shape[0]:,} (item, category) pairs, {self.nbytes / 2**20:,.1f} MiB index"
        )


def quantize_weights(weights: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer weights (uint64) and the power of two they were scaled by."""
    total = float(weights.sum())
    if total <= 0:
        return np.zeros(weights.shape[0], dtype=np.uint64), 0
    scale_log2 = int(np.floor(MASS_BITS - np.log2(total)))
    ints = np.empty(weights.shape[0], dtype=np.uint64)
    # A total just under a power of two can round up past 2**62 in float64; one step back.
    if _scale(weights, *_powers_of_two(scale_log2), ints) + weights.shape[0] > 2.0 ** 63 - 2.0 ** 40:
        scale_log2 -= 1
        _scale(weights, *_powers_of_two(scale_log2), ints)
    return ints, scale_log2


def _powers_of_two(e: int) -> tuple[float, float]:
    """Two normal floats whose product is 2**e, e >= -1022 (so a weight times the first, then
    the second, is ldexp(weight, e): scaling by a normal power of two rounds only where the
    result is subnormal, once, as ldexp does). ldexp itself is a library call per weight,
    ~8x slower."""
    first = min(e, 1023)
    return 2.0 ** first, 2.0 ** (e - first)


@nb.njit(nogil=True, cache=True)
def _scale(weights, first, second, out):
    """out = floor(weights * first * second) as uint64, a positive weight never below 1, in
    one pass; returns the sum of the floors (float64, for the caller's overflow check).
    Serial: a pass this short loses more waiting for a second thread on a busy machine
    than it gains."""
    total = 0.0
    for i in range(weights.shape[0]):
        scaled = math.floor(weights[i] * first * second)
        total += scaled
        q = np.uint64(scaled)
        out[i] = np.uint64(1) if q == 0 and weights[i] > 0 else q
    return total


def segments_of(categories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct categories, segment of each pair) as np.unique(return_inverse=True) gives.

    Category values usually span a small range (ids of a taxonomy): then a presence table
    over that range does it in O(pairs) without the sort of a million values."""
    n = categories.shape[0]
    if n == 0:
        return categories[:0].astype(np.int64), np.zeros(0, np.int64)
    lo, hi = int(categories.min()), int(categories.max())
    if hi - lo >= 4 * n + 1024:
        distinct, inverse = np.unique(categories, return_inverse=True)
        return distinct, inverse.astype(np.int64).reshape(-1)
    return _segments_in_range(np.ascontiguousarray(categories, dtype=np.int64), np.int64(lo), hi - lo + 1)


@nb.njit(parallel=True, nogil=True, cache=True)
def _segments_in_range(categories, lo, span):
    """segments_of for values in [lo, lo + span): a presence table over the range (the
    differences fit in int64 because the range is small)."""
    present = np.zeros(span, dtype=np.bool_)
    for i in nb.prange(categories.shape[0]):
        present[categories[i] - lo] = True
    segment_of_value = np.empty(span, dtype=np.int64)
    count = 0
    for v in range(span):
        segment_of_value[v] = count
        if present[v]:
            count += 1
    distinct = np.empty(count, dtype=np.int64)
    for v in range(span):
        if present[v]:
            distinct[segment_of_value[v]] = lo + v
    segment = np.empty(categories.shape[0], dtype=np.int64)
    for i in nb.prange(categories.shape[0]):
        segment[i] = segment_of_value[categories[i] - lo]
    return distinct, segment


@nb.njit(nogil=True, cache=True)
def _bucket_by_segment(pair_seg, pair_weights, cat_offsets, ids, n_seg, seg_rows, seg_ids, seg_weights):
    """Counting sort of (item, category) pairs by segment into seg_rows, seg_ids and
    seg_weights (one entry per pair), rows ascending inside each segment.

    The outputs come from numpy, not from numba: numpy asks for huge pages for large
    arrays, and this sort, writing to 3 x segments places at once, ran ~20 % slower alone
    and ~1.7x slower inside a reload (1M pairs) into numba's own arrays, on 4 KiB pages
    (TLB misses, by every sign)."""
    n_pairs = pair_seg.shape[0]
    seg_offsets = np.zeros(n_seg + 1, dtype=np.int64)
    seg_total = np.zeros(n_seg, dtype=np.uint64)
    for p in range(n_pairs):
        seg_offsets[pair_seg[p] + 1] += 1
        seg_total[pair_seg[p]] += pair_weights[p]
    for s in range(n_seg):
        seg_offsets[s + 1] += seg_offsets[s]
    fill = seg_offsets[:-1].copy()
    for row in range(cat_offsets.shape[0] - 1):
        for p in range(cat_offsets[row], cat_offsets[row + 1]):
            s = pair_seg[p]
            at = fill[s]
            fill[s] += 1
            seg_rows[at] = row
            seg_ids[at] = ids[row]
            seg_weights[at] = pair_weights[p]
    return seg_offsets, seg_total


@nb.njit(parallel=True, nogil=True, cache=True)
def _split_heads(seg_offsets, seg_rows, seg_ids, seg_weights, head_size, seg_head, seg_head_mass):
    """Move each segment's heaviest items (ties: lower row first) to its front, heaviest
    first; the tail keeps table order. One pass finds the head (kept sorted by insertion),
    a second moves the tail back over the head's positions, in place."""
    for s in nb.prange(seg_offsets.shape[0] - 1):
        lo = seg_offsets[s]
        hi = seg_offsets[s + 1]
        h = min(head_size, hi - lo)
        at = np.empty(h, dtype=np.int64)  # head positions, heaviest first
        n_at = 0
        for p in range(lo, hi):
            w = seg_weights[p]
            if n_at == h and w <= seg_weights[at[h - 1]]:
                continue  # an equal weight further on loses the tie
            k = min(n_at, h - 1)
            while k > 0 and seg_weights[at[k - 1]] < w:
                at[k] = at[k - 1]
                k -= 1
            at[k] = p
            n_at = min(n_at + 1, h)
        rows = seg_rows[at]
        ids = seg_ids[at]
        weights = seg_weights[at]
        head = np.sort(at)
        write = hi - 1
        k = h - 1
        for p in range(hi - 1, lo - 1, -1):
            if k >= 0 and p == head[k]:
                k -= 1
                continue
            seg_rows[write] = seg_rows[p]
            seg_ids[write] = seg_ids[p]
            seg_weights[write] = seg_weights[p]
            write -= 1
        mass = np.uint64(0)
        for k in range(h):
            seg_rows[lo + k] = rows[k]
            seg_ids[lo + k] = ids[k]
            seg_weights[lo + k] = weights[k]
            mass += weights[k]
        seg_head[s] = h
        seg_head_mass[s] = mass


@nb.njit(parallel=True, nogil=True, cache=True)
def _build_tail_alias(seg_offsets, seg_weights, seg_total, seg_head, seg_head_mass, seg_alias):
    """Each tail's alias table; slots with no table (heads, tails of zero weight) are zeroed,
    so the bytes are deterministic (they are never read)."""
    for s in nb.prange(seg_offsets.shape[0] - 1):
        lo = seg_offsets[s] + seg_head[s]
        hi = seg_offsets[s + 1]
        built = lo if seg_total[s] > seg_head_mass[s] else hi
        seg_alias[seg_offsets[s]:built] = 0
        if built == lo:
            build_alias(seg_weights[lo:hi], seg_alias[lo:hi])


class _IdHash(threading.Thread):
    """The id hash table, built on its own thread: its serial insert waits on one cache
    miss per id and depends on nothing but the ids, so the pair sort runs on the other
    core meanwhile (numba's nogil kernels release the GIL). It opens no parallel region,
    so two threads never launch one at once (numba's workqueue layer would abort)."""

    def __init__(self, ids: np.ndarray):
        super().__init__(name="gpu_negsample-id-hash", daemon=True)
        self._ids = ids
        self._result = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._result = build_hash_table(self._ids, all_threads=False)
        except BaseException as exc:  # re-raised on the caller's thread by result()
            self._error = exc

    def result(self) -> tuple[np.ndarray, tuple[int, int] | None]:
        self.join()
        if self._error is not None:
            raise self._error
        return self._result


def build_index(sc: SamplingColumns, sample_tag: str) -> Index:
    """Index of validated sampling columns; raises TableError for duplicate ids and all-zero categories."""
    t0 = time.perf_counter()
    id_hash = _IdHash(sc.ids)
    try:
        categories, pair_seg = segments_of(sc.categories)
        pair_weights, scale_log2 = quantize_weights(sc.weights)
        n_seg = categories.shape[0]
        n_pairs = pair_seg.shape[0]
        seg_rows, seg_ids = np.empty(n_pairs, dtype=np.int64), np.empty(n_pairs, dtype=np.int64)
        seg_weights = np.empty(n_pairs, dtype=np.uint64)
        seg_offsets, seg_total = _bucket_by_segment(pair_seg, pair_weights, sc.cat_offsets, sc.ids, n_seg,
                                                    seg_rows, seg_ids, seg_weights)
    finally:
        id_slots, duplicate = id_hash.result()
    if duplicate is not None:
        a, b = duplicate
        raise TableError(f"dedup_tag id {int(sc.ids[a])} appears in rows {a} and {b}; ids must be unique")
    empty = np.flatnonzero(seg_total == 0)
    if empty.size:
        raise TableError(
            f"column {sample_tag!r}: category {int(categories[empty[0]])} has only zero weights, so nothing "
            f"in it can be sampled ({empty.size} such categories); give it a positive weight or drop its rows"
        )
    seg_head = np.empty(n_seg, dtype=np.int64)
    seg_head_mass = np.empty(n_seg, dtype=np.uint64)
    _split_heads(seg_offsets, seg_rows, seg_ids, seg_weights, HEAD_SIZE, seg_head, seg_head_mass)
    seg_alias = np.empty((seg_ids.shape[0], 2), dtype=np.uint32)
    _build_tail_alias(seg_offsets, seg_weights, seg_total, seg_head, seg_head_mass, seg_alias)
    cat_slots, _ = build_hash_table(categories)
    arrays = IndexArrays(
        id_slots=id_slots, cat_slots=cat_slots, seg_offsets=seg_offsets, seg_rows=seg_rows,
        seg_ids=seg_ids, seg_weights=seg_weights, seg_alias=seg_alias, seg_total=seg_total,
        seg_head=seg_head, seg_head_mass=seg_head_mass, item_cat_offsets=np.ascontiguousarray(sc.cat_offsets, dtype=np.int64),
        item_seg=pair_seg, item_weights=pair_weights,
    )
    index = Index(arrays, categories, scale_log2)
    log.debug("index built in %.3f s: %s", time.perf_counter() - t0, index.describe())
    return index
