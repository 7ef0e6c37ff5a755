"""Category-conditional alias sampling with exclusion: the numba (CPU) kernel.

One positive row is one unit of work; row ``i``'s draw ``j`` reads Philox counters
(call, i, j, attempt) only, so results do not depend on how rows are spread over threads.
The CUDA kernel (kernels/, a later layer) implements the same steps in the same order.

Per positive row with categories c_1..c_m and excluded ids E:

1. remaining mass R_k = total(c_k) - weight of E inside c_k (exact integers); if the
   dominant item of c_k is in E, c_k's table without the dominant is used.
2. per draw j: attempt 0's word r3 picks c_k with probability R_k / sum(R) (m > 1 only);
3. if R_k is at least half of the chosen table's mass, alias draws with rejection of E
   (and, without replacement, of ids already drawn for this row), at most MAX_ATTEMPTS;
   otherwise, or when the attempts run out, an exact scan of the segment picks the
   target mass among the remaining items. Expected alias draws per negative <= 2.
4. without replacement the drawn item's mass leaves R and the dominant flag updates.

Batch-wide exclusion (one excluded set for every row) gets, once per call, an alias table
of every category whose excluded mass is more than half of it, with the excluded items at
weight 0: those draws are then exact alias draws, not scans.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from typing import NamedTuple

from ..alias import build_alias
from ..hashing import probe
from ..rng import MASK32, SHIFT32, mul32hi, mulhi64, philox4x32_10

MAX_ATTEMPTS = 32
STATUS_OK = 0
STATUS_NO_CANDIDATE = 1   # every candidate of the row is excluded (or has zero weight)
STATUS_TOO_FEW = 2        # without replacement: fewer distinct candidates than asked


class Exclusion(NamedTuple):
    """What a request excludes, as the kernel reads it.

    Row-wise: row i excludes own_ids[own_offsets[i]:own_offsets[i+1]] (own_rows: their table
    rows, -1 if absent). Batch-wide (use_batch): every id in the hash set batch_slots;
    batch_mass / batch_dominant_out per segment; batch_table_start[s] >= 0 where segment s
    has a per-call alias table in batch_alias.
    """

    own_offsets: np.ndarray
    own_ids: np.ndarray
    own_rows: np.ndarray
    use_batch: bool
    batch_slots: np.ndarray
    batch_mass: np.ndarray
    batch_dominant_out: np.ndarray
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
def _own_excluded_mass(ix, seg, own_rows, own_lo, own_hi):
    """(mass of the row's own excluded items inside seg, whether seg's dominant is among them).

    own_rows are the table rows of the excluded ids (-1: not in the table), looked up for
    the whole request beforehand so those hash probes overlap instead of stalling each row.
    """
    mass = np.uint64(0)
    dominant_out = False
    for e in range(own_lo, own_hi):
        row = own_rows[e]
        repeated = False
        for f in range(own_lo, e):
            if own_rows[f] == row:
                repeated = True
                break
        if repeated or row < 0:
            continue
        for p in range(ix.item_cat_offsets[row], ix.item_cat_offsets[row + 1]):
            if ix.item_seg[p] == seg:
                mass += ix.item_weights[p]
        if ix.seg_dom_row[seg] == row:
            dominant_out = True
    return mass, dominant_out


@nb.njit(inline="always", cache=True)
def _uniform64(r):
    return r[0] | (r[1] << SHIFT32)


@nb.njit(inline="always", cache=True)
def _alias_table(ix, ex, seg, dominant_out):
    """(alias array, first slot, mass) of the table that draws in seg use."""
    if ex.use_batch and ex.batch_table_start[seg] >= 0:
        return ex.batch_alias, ex.batch_table_start[seg], ix.seg_total[seg] - ex.batch_mass[seg]
    if dominant_out and ix.seg_nodom_start[seg] >= 0:
        return ix.nodom_alias, ix.seg_nodom_start[seg], ix.seg_total[seg] - ix.seg_dom_weight[seg]
    return ix.seg_alias, ix.seg_offsets[seg], ix.seg_total[seg]


@nb.njit(inline="always", cache=True)
def _draw_in_segment(ix, ex, seg, remaining, dominant_out, r_first, call, row, j, k0, k1,
                     own_lo, own_hi, distinct, out, out_lo):
    """Position (in the segment arrays) of one accepted draw, and the alias attempts it took."""
    lo = ix.seg_offsets[seg]
    size = nb.uint64(ix.seg_offsets[seg + 1] - lo)
    alias, base, table_mass = _alias_table(ix, ex, seg, dominant_out)
    r = r_first
    attempts = 0
    if remaining >= table_mass - remaining:  # acceptance >= 1/2
        for a in range(MAX_ATTEMPTS):
            if a > 0:
                r = philox4x32_10(call, row, j, nb.uint64(a), k0, k1)
            attempts += 1
            slot = nb.int64(mulhi64(_uniform64(r), size))
            local = slot if r[2] < alias[base + slot, 0] else nb.int64(alias[base + slot, 1])
            p = lo + local
            item_id = ix.seg_ids[p]
            if _is_excluded(item_id, ex, own_lo, own_hi):
                continue
            if distinct and _drawn_before(item_id, out, out_lo, j):
                continue
            return p, attempts
        r = philox4x32_10(call, row, j, nb.uint64(MAX_ATTEMPTS), k0, k1)
    target = mulhi64(_uniform64(r), remaining)
    for p in range(lo, ix.seg_offsets[seg + 1]):
        w = ix.seg_weights[p]
        if w == 0:
            continue
        item_id = ix.seg_ids[p]
        if _is_excluded(item_id, ex, own_lo, own_hi):
            continue
        if distinct and _drawn_before(item_id, out, out_lo, j):
            continue
        if target < w:
            return p, attempts
        target -= w
    return nb.int64(-1), attempts


@nb.njit(inline="always", cache=True)
def _pick_category(r, remaining, total, m):
    """Index of the category attempt 0's word r3 selects, by remaining mass."""
    if m == 1:
        return 0
    target = mul32hi(r[3], total)
    acc = np.uint64(0)
    for k in range(m):
        acc += remaining[k]
        if target < acc:
            return k
    return m - 1


@nb.njit(inline="always", cache=True)
def _first_attempts(ix, ex, req_segs, c_lo, m, remaining, dominant_out, total, call, row, k0, k1, count, spec):
    """Attempt 0 of every draw of a row, before any of them is checked.

    Writing all alias slots first, then all candidate ids, turns one long chain of
    dependent cache misses per draw into independent loads the CPU overlaps. spec[j] =
    (category index, candidate position or -1 where the exact scan must decide, r2).
    """
    for j in range(count):
        r = philox4x32_10(call, row, nb.uint64(j), nb.uint64(0), k0, k1)
        k = _pick_category(r, remaining, total, m)
        seg = req_segs[c_lo + k]
        spec[j, 0] = k
        spec[j, 1] = -1
        _, _, table_mass = _alias_table(ix, ex, seg, dominant_out[k])
        if remaining[k] >= table_mass - remaining[k]:
            size = nb.uint64(ix.seg_offsets[seg + 1] - ix.seg_offsets[seg])
            spec[j, 1] = nb.int64(mulhi64(_uniform64(r), size))
            spec[j, 2] = nb.int64(r[2])
    for j in range(count):
        slot = spec[j, 1]
        if slot < 0:
            continue
        seg = req_segs[c_lo + spec[j, 0]]
        alias, base, _ = _alias_table(ix, ex, seg, dominant_out[spec[j, 0]])
        local = slot if nb.uint64(spec[j, 2]) < alias[base + slot, 0] else nb.int64(alias[base + slot, 1])
        spec[j, 1] = ix.seg_offsets[seg] + local


@nb.njit(parallel=True, nogil=True, cache=True)
def sample_rows(ix, ex, req_offsets, req_segs, counts, out_offsets, distinct,
                call, k0, k1, fill_id, out, status, attempts):
    """Fill out[out_offsets[i]:out_offsets[i]+counts[i]] with row i's negatives.

    status[i] gets STATUS_*; unfilled slots of a failed row hold fill_id; attempts[i]
    counts the alias draws row i made (exact scans count none).
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
        m = req_offsets[i + 1] - c_lo
        own_lo = ex.own_offsets[i]
        own_hi = ex.own_offsets[i + 1]
        remaining = np.empty(m, dtype=np.uint64)
        dominant_out = np.empty(m, dtype=np.bool_)
        total = np.uint64(0)
        for k in range(m):
            seg = req_segs[c_lo + k]
            if ex.use_batch:
                mass = ex.batch_mass[seg]
                dom = ex.batch_dominant_out[seg]
            else:
                mass, dom = _own_excluded_mass(ix, seg, ex.own_rows, own_lo, own_hi)
            remaining[k] = ix.seg_total[seg] - mass
            dominant_out[k] = dom
            total += remaining[k]
        if total == 0:
            status[i] = STATUS_NO_CANDIDATE
            for q in range(count):
                out[o + q] = fill_id
            continue
        if not distinct:
            # Draws with replacement are independent: attempt 0 of all of them first.
            spec = np.empty((count, 3), dtype=np.int64)
            _first_attempts(ix, ex, req_segs, c_lo, m, remaining, dominant_out, total, call, row, k0, k1, count, spec)
            for j in range(count):
                p = spec[j, 1]
                if p >= 0:
                    attempts[i] += 1
                    item_id = ix.seg_ids[p]
                    if not _is_excluded(item_id, ex, own_lo, own_hi):
                        out[o + j] = item_id
                        continue
                k = spec[j, 0]
                r = philox4x32_10(call, row, nb.uint64(j), nb.uint64(0), k0, k1)
                p, used = _draw_in_segment(ix, ex, req_segs[c_lo + k], remaining[k], dominant_out[k], r, call,
                                           row, nb.uint64(j), k0, k1, own_lo, own_hi, False, out, o)
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
            k = _pick_category(r, remaining, total, m)
            seg = req_segs[c_lo + k]
            p, used = _draw_in_segment(ix, ex, seg, remaining[k], dominant_out[k], r, call, row, nb.uint64(j),
                                       k0, k1, own_lo, own_hi, True, out, o)
            attempts[i] += used
            out[o + j] = ix.seg_ids[p]
            w = ix.seg_weights[p]
            remaining[k] -= w
            total -= w
            if ix.seg_rows[p] == ix.seg_dom_row[seg]:
                dominant_out[k] = True


@nb.njit(cache=True)
def batch_exclusion(ix, unique_ids, n_seg):
    """Per segment: mass of the batch-excluded ids in it, and whether its dominant is excluded."""
    mass = np.zeros(n_seg, dtype=np.uint64)
    dominant_out = np.zeros(n_seg, dtype=np.bool_)
    for e in range(unique_ids.shape[0]):
        row = probe(ix.id_slots, unique_ids[e])
        if row < 0:
            continue
        for p in range(ix.item_cat_offsets[row], ix.item_cat_offsets[row + 1]):
            seg = ix.item_seg[p]
            mass[seg] += ix.item_weights[p]
            if ix.seg_dom_row[seg] == row:
                dominant_out[seg] = True
    return mass, dominant_out


@nb.njit(cache=True)
def _heavy_segments(ix, mass, dominant_out):
    """Start of each per-call table (-1: none) for segments whose excluded mass leaves less
    than half of the table they would use, and the total size of those tables."""
    n_seg = mass.shape[0]
    start = np.full(n_seg, -1, dtype=np.int64)
    size = 0
    for seg in range(n_seg):
        if mass[seg] == 0:
            continue
        remaining = ix.seg_total[seg] - mass[seg]
        table_mass = ix.seg_total[seg]
        if dominant_out[seg] and ix.seg_nodom_start[seg] >= 0:
            table_mass -= ix.seg_dom_weight[seg]
        if 0 < remaining < table_mass - remaining:
            start[seg] = size
            size += ix.seg_offsets[seg + 1] - ix.seg_offsets[seg]
    return start, size


@nb.njit(parallel=True, nogil=True, cache=True)
def _fill_batch_tables(ix, batch_slots, start, tables):
    for seg in nb.prange(start.shape[0]):
        if start[seg] < 0:
            continue
        lo = ix.seg_offsets[seg]
        hi = ix.seg_offsets[seg + 1]
        w = ix.seg_weights[lo:hi].copy()
        for p in range(lo, hi):
            if probe(batch_slots, ix.seg_ids[p]) >= 0:
                w[p - lo] = 0
        build_alias(w, tables[start[seg]: start[seg] + hi - lo])


def batch_tables(ix, batch_slots, mass, dominant_out):
    """Per-call alias tables without the excluded ids, for segments where rejection would stall."""
    start, size = _heavy_segments(ix, mass, dominant_out)
    tables = np.empty((size, 2), dtype=np.uint32)
    _fill_batch_tables(ix, batch_slots, start, tables)
    return start, tables


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
