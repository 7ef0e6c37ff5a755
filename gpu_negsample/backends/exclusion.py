"""What a request excludes, as the sampling kernels read it; built on the host for both backends.

Row-wise exclusion: each positive excludes its own dedup ids. Batch-wide exclusion
(``avoid_conflict_with_all_dedup_tags``): every row excludes every positive id of the
request; its per-segment excluded masses are computed once per call, and every tail whose
excluded mass is more than half of it gets a per-call alias table with the excluded items
at weight 0, so draws there need no rejection.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numba as nb
import numpy as np

from ..alias import build_alias
from ..hashing import EMPTY_KEY, build_hash_table, probe


class Exclusion(NamedTuple):
    """What a request excludes, as the kernel reads it.

    Row-wise: row i excludes own_ids[own_offsets[i]:own_offsets[i+1]] (own_rows: their table
    rows, -1 if absent). Batch-wide (use_batch): every id in the hash set batch_slots;
    batch_head_mass / batch_tail_mass per segment; batch_table_start[s] >= 0 where the tail
    of segment s has a per-call alias table in batch_alias.
    """

    own_offsets: np.ndarray
    own_ids: np.ndarray
    own_rows: np.ndarray
    use_batch: bool
    batch_slots: np.ndarray
    batch_head_mass: np.ndarray
    batch_tail_mass: np.ndarray
    batch_table_start: np.ndarray
    batch_alias: np.ndarray


@nb.njit(inline="always", cache=True)
def mass_in(ix, seg, row):
    """(head, tail) weight of table row `row` inside segment seg (one of them is 0)."""
    w = np.uint64(0)
    for p in range(ix.item_cat_offsets[row], ix.item_cat_offsets[row + 1]):
        if ix.item_seg[p] == seg:
            w = ix.item_weights[p]
            break
    lo = ix.seg_offsets[seg]
    for h in range(ix.seg_head[seg]):
        if ix.seg_rows[lo + h] == row:
            return w, np.uint64(0)
    return np.uint64(0), w


@nb.njit(cache=True)
def batch_exclusion(ix, unique_ids, n_seg):
    """Per segment: (head, tail) mass of the batch-excluded ids in it."""
    head = np.zeros(n_seg, dtype=np.uint64)
    tail = np.zeros(n_seg, dtype=np.uint64)
    for e in range(unique_ids.shape[0]):
        row = probe(ix.id_slots, unique_ids[e])
        if row < 0:
            continue
        for p in range(ix.item_cat_offsets[row], ix.item_cat_offsets[row + 1]):
            seg = ix.item_seg[p]
            h, t = mass_in(ix, seg, row)
            head[seg] += h
            tail[seg] += t
    return head, tail


@nb.njit(cache=True)
def _heavy_tails(ix, tail_out):
    """Start of each per-call table (-1: none) for tails whose excluded mass is more than
    half of them, and the total size of those tables."""
    n_seg = tail_out.shape[0]
    start = np.full(n_seg, -1, dtype=np.int64)
    size = 0
    for seg in range(n_seg):
        tail_mass = ix.seg_total[seg] - ix.seg_head_mass[seg]
        remaining = tail_mass - tail_out[seg]
        if tail_out[seg] > 0 and 0 < remaining < tail_mass - remaining:
            start[seg] = size
            size += ix.seg_offsets[seg + 1] - ix.seg_offsets[seg] - ix.seg_head[seg]
    return start, size


@nb.njit(parallel=True, nogil=True, cache=True)
def _fill_batch_tables(ix, batch_slots, start, tables):
    for seg in nb.prange(start.shape[0]):
        if start[seg] < 0:
            continue
        lo = ix.seg_offsets[seg] + ix.seg_head[seg]
        hi = ix.seg_offsets[seg + 1]
        w = ix.seg_weights[lo:hi].copy()
        for p in range(lo, hi):
            if probe(batch_slots, ix.seg_ids[p]) >= 0:
                w[p - lo] = 0
        build_alias(w, tables[start[seg]: start[seg] + hi - lo])


def batch_tables(ix, batch_slots, tail_out):
    """Per-call tail alias tables without the excluded ids, where tail rejection would stall."""
    start, size = _heavy_tails(ix, tail_out)
    tables = np.empty((size, 2), dtype=np.uint32)
    _fill_batch_tables(ix, batch_slots, start, tables)
    return start, tables


def batch_set(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash slots, distinct ids) of the ids every row of a batch-wide request excludes.
    INT64_MIN is left out: it is the hash set's empty marker, and never a table id."""
    unique = np.unique(ids)
    unique = unique[unique != EMPTY_KEY]
    return build_hash_table(unique)[0], unique


@functools.lru_cache(maxsize=16)
def _no_batch(n_seg: int) -> tuple:
    """The batch-wide fields of a row-wise Exclusion (an empty set, no masses, no tables),
    made once per segment count: the kernels only read them."""
    return (np.full((2, 2), EMPTY_KEY, dtype=np.int64), np.zeros(n_seg, np.uint64), np.zeros(n_seg, np.uint64),
            np.full(n_seg, -1, np.int64), np.zeros((0, 2), np.uint32))


def exclusion(ix, own_offsets, own_ids, own_rows, batch) -> Exclusion:
    """The Exclusion of a request (host arrays); batch is None or (hash slots, unique ids) of
    the ids every row excludes. Its per-segment masses and per-call tables are built here, on
    the host, for both backends."""
    n_seg = ix.seg_total.shape[0]
    if batch is None:
        return Exclusion(own_offsets, own_ids, own_rows, False, *_no_batch(n_seg))
    batch_slots, unique_ids = batch
    head_out, tail_out = batch_exclusion(ix, unique_ids, n_seg)
    start, tables = batch_tables(ix, batch_slots, tail_out)
    return Exclusion(own_offsets, own_ids, own_rows, True, batch_slots, head_out, tail_out, start, tables)


