"""What a request excludes, as the sampling kernels read it; built on the host for both backends.

Row-wise exclusion: each positive excludes its own dedup ids. Batch-wide exclusion
(``avoid_conflict_with_all_dedup_tags``): every row excludes every positive id of the
request; its per-segment excluded masses are computed once per call. Every tail whose
excluded mass is more than half of it (a *heavy* tail, where rejection would stall) is drawn
from the per-call prefix sums of its weights with the excluded items at weight 0, by binary
search, so draws there need no rejection of the batch's ids. The weights are integers, so
the sums are exact in any order (the CUDA backend makes them with one scan over every
position) and a search picks exactly the item the exact scan would for the same target.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numba as nb
import numpy as np

from ..hashing import EMPTY_KEY, build_hash_table, probe


class Exclusion(NamedTuple):
    """What a request excludes, as the kernel reads it.

    Row-wise: row i excludes own_ids[own_offsets[i]:own_offsets[i+1]] (own_rows: their table
    rows, -1 if absent). Batch-wide (use_batch): every id in the hash set batch_slots;
    batch_head_mass / batch_tail_mass per segment; in each heavy tail (heavy_tail) lo:hi,
    batch_cum[p + 1] - batch_cum[lo] (in uint64) is the weight of positions lo..p with the
    batch's ids at 0. Entries outside heavy tails are not read (and, on the CPU, not written).
    """

    own_offsets: np.ndarray
    own_ids: np.ndarray
    own_rows: np.ndarray
    use_batch: bool
    batch_slots: np.ndarray
    batch_head_mass: np.ndarray
    batch_tail_mass: np.ndarray
    batch_cum: np.ndarray


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


@nb.njit(inline="always", cache=True)
def heavy_tail(ix, seg, out):
    """Whether the batch's ids, of tail mass `out` in seg, hold more than half of seg's tail
    mass (and not all of it): such a tail is drawn from the per-call prefix sums, any other
    from its alias table. out is a number, not the mass array: an array argument would be
    reference-counted at every draw that asks (an atomic on a line both cores share)."""
    tail_mass = ix.seg_total[seg] - ix.seg_head_mass[seg]
    remaining = tail_mass - out
    return out > 0 and 0 < remaining < tail_mass - remaining


@nb.njit(parallel=True, nogil=True, cache=True)
def _fill_prefix_sums(ix, batch_slots, tail_out, cum):
    for seg in nb.prange(tail_out.shape[0]):
        if not heavy_tail(ix, seg, tail_out[seg]):
            continue
        lo = ix.seg_offsets[seg] + ix.seg_head[seg]
        acc = np.uint64(0)
        cum[lo] = acc
        for p in range(lo, ix.seg_offsets[seg + 1]):
            if probe(batch_slots, ix.seg_ids[p]) < 0:
                acc += ix.seg_weights[p]
            cum[p + 1] = acc


def batch_prefix_sums(ix, batch_slots, tail_out) -> np.ndarray:
    """Exclusion.batch_cum: the heavy tails' prefix sums without the batch's ids (each tail
    from 0 at its first position; only differences within a tail are read)."""
    cum = np.empty(ix.seg_ids.shape[0] + 1, dtype=np.uint64)
    _fill_prefix_sums(ix, batch_slots, tail_out, cum)
    return cum


def batch_set(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash slots, distinct ids) of the ids every row of a batch-wide request excludes.
    INT64_MIN is left out: it is the hash set's empty marker, and never a table id."""
    unique = np.unique(ids)
    unique = unique[unique != EMPTY_KEY]
    return build_hash_table(unique)[0], unique


@functools.lru_cache(maxsize=16)
def _no_batch(n_seg: int) -> tuple:
    """The batch-wide fields of a row-wise Exclusion (an empty set, no masses, no prefix
    sums), made once per segment count: the kernels only read them."""
    return (np.full((2, 2), EMPTY_KEY, dtype=np.int64), np.zeros(n_seg, np.uint64), np.zeros(n_seg, np.uint64),
            np.zeros(1, np.uint64))


def exclusion(ix, own_offsets, own_ids, own_rows, batch) -> Exclusion:
    """The Exclusion of a request (host arrays); batch is None or (hash slots, unique ids) of
    the ids every row excludes. Its per-segment masses and prefix sums are built here, on
    the host, for the CPU backend (the CUDA backend builds them with kernels)."""
    n_seg = ix.seg_total.shape[0]
    if batch is None:
        return Exclusion(own_offsets, own_ids, own_rows, False, *_no_batch(n_seg))
    batch_slots, unique_ids = batch
    head_out, tail_out = batch_exclusion(ix, unique_ids, n_seg)
    return Exclusion(own_offsets, own_ids, own_rows, True, batch_slots, head_out, tail_out,
                     batch_prefix_sums(ix, batch_slots, tail_out))


