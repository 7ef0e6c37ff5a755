"""Category-conditional alias sampling with exclusion: the numba (CPU) kernel.

One positive row is one unit of work; row ``i``'s draw ``j`` reads Philox counters
(call, i, j, attempt) only, so results do not depend on how rows are spread over threads.
The CUDA kernels (kernels/sample.cu) implement the same steps in the same order.

Every category (segment) is a head (its few heaviest items) and a tail (the rest, with
an alias table); see index.py. Per positive row with categories c_1..c_m and excluded
ids E, the 2m *parts* are (head of c_1, tail of c_1, head of c_2, ...):

1. remaining mass of each part = its mass - the weight of E inside it (exact integers);
2. per draw j: attempt 0's word r3 picks a part with probability remaining / total;
3. a head part: an exact scan of its items (at most HEAD_SIZE), skipping E;
   a tail part: if its remaining mass is at least half of its table's mass, alias draws
   with rejection of E (and, without replacement, of ids already drawn for this row), at
   most MAX_ATTEMPTS; otherwise, or when the attempts run out, an exact scan of the tail.
   Excluding popular items takes mass from heads, not tails, so the tail's acceptance
   stays high: expected alias draws per negative <= 2 for any popularity skew.
4. without replacement the drawn item's mass leaves its part.

Batch-wide exclusion (one excluded set for every row) gets, once per call, an alias table
of every tail whose excluded mass is more than half of it, with the excluded items at
weight 0: those draws are then exact alias draws, not scans.
"""
from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from ..alias import build_alias
from ..hashing import probe
from ..rng import MASK32, SHIFT32, mul32hi, mulhi64, philox4x32_10

MAX_ATTEMPTS = 32
STATUS_OK = 0
STATUS_NO_CANDIDATE = 1   # every candidate of the row is excluded (or has zero weight)
STATUS_TOO_FEW = 2        # without replacement: fewer distinct candidates than asked
_HEAD_DRAW = -1           # spec[j, 2] of a draw the head scan already decided


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
def _is_excluded(item_id, ex, own_lo, own_hi):
    if ex.use_batch:
        return probe(ex.batch_slots, item_id) >= 0
    for e in range(own_lo, own_hi):
        if ex.own_ids[e] == item_id:
            return True
    return False


@nb.njit(inline="always", cache=True)
def _drawn_before(item_id, out, out_lo, n_drawn):
    for q in range(out_lo, out_lo + n_drawn):
        if out[q] == item_id:
            return True
    return False


@nb.njit(inline="always", cache=True)
def _mass_in(ix, seg, row):
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


@nb.njit(inline="always", cache=True)
def _own_excluded_mass(ix, seg, own_rows, own_lo, own_hi):
    """(head, tail) mass of the row's own excluded items inside seg.

    own_rows are the table rows of the excluded ids (-1: not in the table), looked up for
    the whole request beforehand so those hash probes overlap instead of stalling each row.
    """
    head = np.uint64(0)
    tail = np.uint64(0)
    for e in range(own_lo, own_hi):
        row = own_rows[e]
        repeated = False
        for f in range(own_lo, e):
            if own_rows[f] == row:
                repeated = True
                break
        if repeated or row < 0:
            continue
        h, t = _mass_in(ix, seg, row)
        head += h
        tail += t
    return head, tail


@nb.njit(inline="always", cache=True)
def _uniform64(r):
    return r[0] | (r[1] << SHIFT32)


@nb.njit(inline="always", cache=True)
def _scan(ix, ex, lo, hi, target, own_lo, own_hi, distinct, out, out_lo, j):
    """Exact draw: the position in lo:hi where target falls among the remaining weights."""
    for p in range(lo, hi):
        w = ix.seg_weights[p]
        if w == 0:
            continue
        item_id = ix.seg_ids[p]
        if _is_excluded(item_id, ex, own_lo, own_hi):
            continue
        if distinct and _drawn_before(item_id, out, out_lo, j):
            continue
        if target < w:
            return p
        target -= w
    return nb.int64(-1)


@nb.njit(inline="always", cache=True)
def _tail_table(ix, ex, seg):
    """(alias array, its first slot, its mass) of the table that tail draws in seg use."""
    tail_mass = ix.seg_total[seg] - ix.seg_head_mass[seg]
    if ex.use_batch and ex.batch_table_start[seg] >= 0:
        return ex.batch_alias, ex.batch_table_start[seg], tail_mass - ex.batch_tail_mass[seg]
    return ix.seg_alias, ix.seg_offsets[seg] + ix.seg_head[seg], tail_mass


@nb.njit(inline="always", cache=True)
def _draw(ix, ex, seg, tail, remaining, r_first, call, row, j, k0, k1, own_lo, own_hi, distinct, out, out_lo):
    """Position (in the segment arrays) of one accepted draw from a part, and the alias attempts it took."""
    head_lo = ix.seg_offsets[seg]
    tail_lo = head_lo + ix.seg_head[seg]
    if not tail:
        return _scan(ix, ex, head_lo, tail_lo, mulhi64(_uniform64(r_first), remaining),
                     own_lo, own_hi, distinct, out, out_lo, j), 0
    hi = ix.seg_offsets[seg + 1]
    size = nb.uint64(hi - tail_lo)
    alias, base, table_mass = _tail_table(ix, ex, seg)
    r = r_first
    attempts = 0
    if remaining >= table_mass - remaining:  # acceptance >= 1/2
        for a in range(MAX_ATTEMPTS):
            if a > 0:
                r = philox4x32_10(call, row, j, nb.uint64(a), k0, k1)
            attempts += 1
            slot = nb.int64(mulhi64(_uniform64(r), size))
            local = slot if r[2] < alias[base + slot, 0] else nb.int64(alias[base + slot, 1])
            p = tail_lo + local
            item_id = ix.seg_ids[p]
            if _is_excluded(item_id, ex, own_lo, own_hi):
                continue
            if distinct and _drawn_before(item_id, out, out_lo, j):
                continue
            return p, attempts
        r = philox4x32_10(call, row, j, nb.uint64(MAX_ATTEMPTS), k0, k1)
    return _scan(ix, ex, tail_lo, hi, mulhi64(_uniform64(r), remaining),
                 own_lo, own_hi, distinct, out, out_lo, j), attempts


@nb.njit(inline="always", cache=True)
def _pick_part(r, remaining, total, parts):
    """Index of the part attempt 0's word r3 selects, by remaining mass."""
    target = mul32hi(r[3], total)
    acc = np.uint64(0)
    for q in range(parts):
        acc += remaining[q]
        if target < acc:
            return q
    return parts - 1


@nb.njit(inline="always", cache=True)
def _first_attempts(ix, ex, req_segs, c_lo, parts, remaining, total, call, row, k0, k1, own_lo, own_hi,
                    out, out_lo, count, spec):
    """Attempt 0 of every draw of a row (with replacement), before any of them is checked.

    Writing all alias slots first, then all candidate ids, turns one long chain of
    dependent cache misses per draw into independent loads the CPU overlaps.
    spec[j] = (part, position or -1 where the tail's exact scan decides, r2 or _HEAD_DRAW).
    """
    for j in range(count):
        r = philox4x32_10(call, row, nb.uint64(j), nb.uint64(0), k0, k1)
        q = _pick_part(r, remaining, total, parts)
        seg = req_segs[c_lo + (q >> 1)]
        spec[j, 0] = q
        spec[j, 1] = -1
        spec[j, 2] = 0
        if (q & 1) == 0:
            p, _ = _draw(ix, ex, seg, False, remaining[q], r, call, row, nb.uint64(j), k0, k1,
                         own_lo, own_hi, False, out, out_lo)
            spec[j, 1] = p
            spec[j, 2] = _HEAD_DRAW
            continue
        _, _, table_mass = _tail_table(ix, ex, seg)
        if remaining[q] >= table_mass - remaining[q]:
            size = nb.uint64(ix.seg_offsets[seg + 1] - ix.seg_offsets[seg] - ix.seg_head[seg])
            spec[j, 1] = nb.int64(mulhi64(_uniform64(r), size))
            spec[j, 2] = nb.int64(r[2])
    for j in range(count):
        slot = spec[j, 1]
        if slot < 0 or spec[j, 2] == _HEAD_DRAW:
            continue
        seg = req_segs[c_lo + (spec[j, 0] >> 1)]
        alias, base, _ = _tail_table(ix, ex, seg)
        local = slot if nb.uint64(spec[j, 2]) < alias[base + slot, 0] else nb.int64(alias[base + slot, 1])
        spec[j, 1] = ix.seg_offsets[seg] + ix.seg_head[seg] + local


@nb.njit(parallel=True, nogil=True, cache=True)
def sample_rows(ix, ex, req_offsets, req_segs, counts, out_offsets, distinct,
                call, k0, k1, fill_id, out, status, attempts):
    """Fill out[out_offsets[i]:out_offsets[i]+counts[i]] with row i's negatives.

    status[i] gets STATUS_*; unfilled slots of a failed row hold fill_id; attempts[i]
    counts the alias draws row i made (head and exact scans count none).
    """
    call = nb.uint64(call) & MASK32
    for i in nb.prange(counts.shape[0]):
        count = counts[i]
        status[i] = STATUS_OK
        attempts[i] = 0
        if count == 0:
            continue
        row = nb.uint64(i)
        o = out_offsets[i]
        c_lo = req_offsets[i]
        parts = 2 * (req_offsets[i + 1] - c_lo)
        own_lo = ex.own_offsets[i]
        own_hi = ex.own_offsets[i + 1]
        remaining = np.empty(parts, dtype=np.uint64)
        total = np.uint64(0)
        for k in range(parts // 2):
            seg = req_segs[c_lo + k]
            if ex.use_batch:
                head_out = ex.batch_head_mass[seg]
                tail_out = ex.batch_tail_mass[seg]
            else:
                head_out, tail_out = _own_excluded_mass(ix, seg, ex.own_rows, own_lo, own_hi)
            remaining[2 * k] = ix.seg_head_mass[seg] - head_out
            remaining[2 * k + 1] = ix.seg_total[seg] - ix.seg_head_mass[seg] - tail_out
            total += remaining[2 * k] + remaining[2 * k + 1]
        if total == 0:
            status[i] = STATUS_NO_CANDIDATE
            for q in range(count):
                out[o + q] = fill_id
            continue
        if not distinct:
            # Draws with replacement are independent: attempt 0 of all of them first.
            spec = np.empty((count, 3), dtype=np.int64)
            _first_attempts(ix, ex, req_segs, c_lo, parts, remaining, total, call, row, k0, k1, own_lo, own_hi,
                            out, o, count, spec)
            for j in range(count):
                p = spec[j, 1]
                if spec[j, 2] == _HEAD_DRAW:
                    out[o + j] = ix.seg_ids[p]
                    continue
                if p >= 0:
                    attempts[i] += 1
                    item_id = ix.seg_ids[p]
                    if not _is_excluded(item_id, ex, own_lo, own_hi):
                        out[o + j] = item_id
                        continue
                q = spec[j, 0]
                r = philox4x32_10(call, row, nb.uint64(j), nb.uint64(0), k0, k1)
                p, used = _draw(ix, ex, req_segs[c_lo + (q >> 1)], True, remaining[q], r, call, row,
                                nb.uint64(j), k0, k1, own_lo, own_hi, False, out, o)
                attempts[i] += used - 1 if spec[j, 1] >= 0 else used
                out[o + j] = ix.seg_ids[p]
            continue
        for j in range(count):
            if total == 0:
                status[i] = STATUS_TOO_FEW
                for q in range(j, count):
                    out[o + q] = fill_id
                break
            r = philox4x32_10(call, row, nb.uint64(j), nb.uint64(0), k0, k1)
            q = _pick_part(r, remaining, total, parts)
            p, used = _draw(ix, ex, req_segs[c_lo + (q >> 1)], (q & 1) == 1, remaining[q], r, call, row,
                            nb.uint64(j), k0, k1, own_lo, own_hi, True, out, o)
            attempts[i] += used
            out[o + j] = ix.seg_ids[p]
            remaining[q] -= ix.seg_weights[p]
            total -= ix.seg_weights[p]


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
            h, t = _mass_in(ix, seg, row)
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


def exclusion(ix, own_offsets, own_ids, own_rows, batch) -> Exclusion:
    """The Exclusion of a request (host arrays); batch is None or (hash slots, unique ids) of
    the ids every row excludes. Its per-segment masses and per-call tables are built here, on
    the host, for both backends."""
    n_seg = ix.seg_total.shape[0]
    if batch is None:
        return Exclusion(own_offsets, own_ids, own_rows, False,
                         np.full((2, 2), np.iinfo(np.int64).min, dtype=np.int64), np.zeros(n_seg, np.uint64),
                         np.zeros(n_seg, np.uint64), np.full(n_seg, -1, np.int64), np.zeros((0, 2), np.uint32))
    batch_slots, unique_ids = batch
    head_out, tail_out = batch_exclusion(ix, unique_ids, n_seg)
    start, tables = batch_tables(ix, batch_slots, tail_out)
    return Exclusion(own_offsets, own_ids, own_rows, True, batch_slots, head_out, tail_out, start, tables)


@nb.njit(parallel=True, nogil=True, cache=True)
def log_q_rows(ix, req_offsets, req_segs, item_offsets, item_ids, out):
    """out[t] = log of the probability that row i's category mixture draws item_ids[t]
    (before exclusion), for t in item_offsets[i]:item_offsets[i+1]."""
    for i in nb.prange(item_offsets.shape[0] - 1):
        c_lo = req_offsets[i]
        c_hi = req_offsets[i + 1]
        total = np.uint64(0)
        for k in range(c_lo, c_hi):
            total += ix.seg_total[req_segs[k]]
        for t in range(item_offsets[i], item_offsets[i + 1]):
            row = probe(ix.id_slots, item_ids[t])
            mass = np.uint64(0)
            if row >= 0:
                for p in range(ix.item_cat_offsets[row], ix.item_cat_offsets[row + 1]):
                    for k in range(c_lo, c_hi):
                        if ix.item_seg[p] == req_segs[k]:
                            mass += ix.item_weights[p]
            if mass == 0 or total == 0:
                out[t] = -np.inf
            else:
                out[t] = np.log(float(mass)) - np.log(float(total))
