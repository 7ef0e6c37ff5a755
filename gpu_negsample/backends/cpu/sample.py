"""Category-conditional alias sampling with exclusion on the CPU: the numba twin of
kernels/sample.cu (``part_masses``, ``sample_put_back``, ``sample_distinct``).

Row ``i``'s draw ``j`` reads Philox counters (call, i, j, attempt) only, so results do not
depend on how rows are spread over threads. The CUDA kernels make the same decisions on
the same words, so both paths return the same ids.

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

Exclusion (row-wise or batch-wide) is described by ``backends.exclusion.Exclusion``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ...hashing import probe
from ...rng import MASK32, SHIFT32, mul32hi, mulhi64, philox4x32_10
from ..exclusion import mass_in
from ..kernel_constants import MAX_ATTEMPTS, STATUS_NO_CANDIDATE, STATUS_OK, STATUS_TOO_FEW

_HEAD_DRAW = -1           # spec[j, 2] of a draw the head scan already decided


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
        h, t = mass_in(ix, seg, row)
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
def part_masses(ix, ex, req_offsets, req_segs, remaining, row_total):
    """remaining[2k], remaining[2k + 1] = the head and tail mass of category k of the request
    (req_segs[k]) left after the row's exclusion; row_total[i] = the sum over row i's parts."""
    for i in nb.prange(req_offsets.shape[0] - 1):
        own_lo = ex.own_offsets[i]
        own_hi = ex.own_offsets[i + 1]
        total = np.uint64(0)
        for k in range(req_offsets[i], req_offsets[i + 1]):
            seg = req_segs[k]
            if ex.use_batch:
                head_out = ex.batch_head_mass[seg]
                tail_out = ex.batch_tail_mass[seg]
            else:
                head_out, tail_out = _own_excluded_mass(ix, seg, ex.own_rows, own_lo, own_hi)
            remaining[2 * k] = ix.seg_head_mass[seg] - head_out
            remaining[2 * k + 1] = ix.seg_total[seg] - ix.seg_head_mass[seg] - tail_out
            total += remaining[2 * k] + remaining[2 * k + 1]
        row_total[i] = total


@nb.njit(parallel=True, nogil=True, cache=True)
def sample_put_back(ix, ex, req_offsets, req_segs, remaining, row_total, out_offsets,
                    call, k0, k1, fill_id, out, status, attempts):
    """Row i's negatives with replacement into out[out_offsets[i]:out_offsets[i + 1]].

    status[i] gets STATUS_*; a failed row's slots hold fill_id; attempts[i] counts the
    alias draws row i made (head and exact scans count none). The CUDA twin runs a thread
    per draw; here a row's draws share one thread, so attempt 0 of all of them is issued
    before any is checked (the same decisions, their memory loads overlapped).
    """
    call = nb.uint64(call) & MASK32
    for i in nb.prange(row_total.shape[0]):
        o = out_offsets[i]
        count = out_offsets[i + 1] - o
        status[i] = STATUS_OK
        attempts[i] = 0
        if count == 0:
            continue
        total = row_total[i]
        if total == 0:
            status[i] = STATUS_NO_CANDIDATE
            out[o:o + count] = fill_id
            continue
        row = nb.uint64(i)
        c_lo = req_offsets[i]
        parts = 2 * (req_offsets[i + 1] - c_lo)
        rem = remaining[2 * c_lo:2 * c_lo + parts]
        own_lo = ex.own_offsets[i]
        own_hi = ex.own_offsets[i + 1]
        spec = np.empty((count, 3), dtype=np.int64)
        _first_attempts(ix, ex, req_segs, c_lo, parts, rem, total, call, row, k0, k1, own_lo, own_hi,
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
            p, used = _draw(ix, ex, req_segs[c_lo + (q >> 1)], True, rem[q], r, call, row,
                            nb.uint64(j), k0, k1, own_lo, own_hi, False, out, o)
            attempts[i] += used - 1 if spec[j, 1] >= 0 else used
            out[o + j] = ix.seg_ids[p]


@nb.njit(parallel=True, nogil=True, cache=True)
def sample_distinct(ix, ex, req_offsets, req_segs, remaining, row_total, out_offsets,
                    call, k0, k1, fill_id, out, status, attempts):
    """Row i's distinct negatives (one category per row: two parts) into
    out[out_offsets[i]:out_offsets[i + 1]]; each drawn item's mass leaves its part.
    status, fill and attempts as in sample_put_back."""
    call = nb.uint64(call) & MASK32
    for i in nb.prange(row_total.shape[0]):
        o = out_offsets[i]
        count = out_offsets[i + 1] - o
        status[i] = STATUS_OK
        attempts[i] = 0
        if count == 0:
            continue
        total = row_total[i]
        if total == 0:
            status[i] = STATUS_NO_CANDIDATE
            out[o:o + count] = fill_id
            continue
        row = nb.uint64(i)
        c_lo = req_offsets[i]
        seg = req_segs[c_lo]
        own_lo = ex.own_offsets[i]
        own_hi = ex.own_offsets[i + 1]
        part = remaining[2 * c_lo:2 * c_lo + 2].copy()  # head, tail: this row's own, drawn down
        for j in range(count):
            if total == 0:
                status[i] = STATUS_TOO_FEW
                out[o + j:o + count] = fill_id
                break
            r = philox4x32_10(call, row, nb.uint64(j), nb.uint64(0), k0, k1)
            q = _pick_part(r, part, total, 2)
            p, used = _draw(ix, ex, seg, q == 1, part[q], r, call, row, nb.uint64(j), k0, k1,
                            own_lo, own_hi, True, out, o)
            attempts[i] += used
            out[o + j] = ix.seg_ids[p]
            part[q] -= ix.seg_weights[p]
            total -= ix.seg_weights[p]
