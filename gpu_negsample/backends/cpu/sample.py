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
   A heavy tail of batch-wide exclusion (exclusion.heavy_tail) draws by binary search in
   the call's prefix sums without E instead of its alias table, with the same rejection.
   Excluding popular items takes mass from heads, not tails, so the tail's acceptance
   stays high: expected alias draws per negative <= 2 for any popularity skew.
4. without replacement the drawn item's mass leaves its part.

Exclusion (row-wise or batch-wide) is described by ``backends.exclusion.Exclusion``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ...hashing import probe
from ...rng import MASK32, SHIFT32, mul32hi, mulhi64, philox4x32_10, philox_lanes
from ..exclusion import heavy_tail, mass_in
from ..kernel_constants import MAX_ATTEMPTS, STATUS_NO_CANDIDATE, STATUS_OK, STATUS_TOO_FEW
from ..status import NONE, Counter
from ...memory_hints import prefetch
from .atomics import fetch_add

# The request counter words the kernels fill (status.py); a thread's tally uses the same offsets.
FAILED, FIRST_FAILED, ATTEMPTS = int(Counter.FAILED), int(Counter.FIRST_FAILED), int(Counter.ATTEMPTS)
UNKNOWN, FIRST_UNKNOWN = int(Counter.UNKNOWN), int(Counter.FIRST_UNKNOWN)
TALLY_WORDS = FIRST_UNKNOWN + 1

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
def _maybe_drawn(item_id, drawn_bits):
    """False when item_id is certainly not among a row's outputs so far: drawn_bits has bit
    id mod 64 set for each of them (a one-word filter; a set bit still needs the search).
    Most rejection checks of a row's tail draws end here instead of in a search of up to
    every earlier output of the row, whose loop and exit branch were ~10 % of the kernel."""
    return (drawn_bits >> (item_id & 63)) & 1 != 0


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
def _scan(ix, ex, lo, hi, target, own_lo, own_hi, distinct, out, out_lo, j, by_position=False, drawn_positions=0):
    """Exact draw: the position in lo:hi where target falls among the remaining weights.

    distinct: ids already drawn for the row are skipped too, found by a search of its
    outputs out[out_lo:out_lo + j], or with by_position (a head: at most HEAD_SIZE <= 64
    positions) by the bits of drawn_positions (bit h: position lo + h drawn): ids are
    unique and a head holds no item of its tail, so an item of the head was drawn before
    exactly when its position was."""
    for p in range(lo, hi):
        w = ix.seg_weights[p]
        if w == 0:
            continue
        if by_position and (nb.uint64(drawn_positions) >> nb.uint64(p - lo)) & 1:
            continue
        item_id = ix.seg_ids[p]
        if _is_excluded(item_id, ex, own_lo, own_hi):
            continue
        if distinct and not by_position and _drawn_before(item_id, out, out_lo, j):
            continue
        if target < w:
            return p
        target -= w
    return nb.int64(-1)


@nb.njit(inline="always", cache=True)
def _scan_weights(ix, lo, hi, target):
    """_scan where nothing in lo:hi is excluded or drawn: the position where target falls
    among the weights, without reading ids (a zero weight never holds target: unsigned)."""
    for p in range(lo, hi):
        w = ix.seg_weights[p]
        if target < w:
            return p
        target -= w
    return nb.int64(-1)


@nb.njit(inline="always", cache=True)
def _scan_head(ix, ex, seg, remaining, target, own_lo, own_hi, distinct, out, out_lo, j, by_position=False,
               drawn_positions=0):
    """_scan over seg's head, whose remaining mass is `remaining`."""
    lo = ix.seg_offsets[seg]
    hi = lo + ix.seg_head[seg]
    if remaining == ix.seg_head_mass[seg]:
        # The head has all its mass: no excluded or drawn item in it has a weight (their
        # weights leave remaining), so _scan's id checks would skip nothing.
        return _scan_weights(ix, lo, hi, target)
    return _scan(ix, ex, lo, hi, target, own_lo, own_hi, distinct, out, out_lo, j, by_position, drawn_positions)


@nb.njit(inline="always", cache=True)
def _tail_table(ix, ex, seg):
    """(heavy?, mass) of what tail draws in seg pick from: the call's prefix sums without
    the batch's ids where seg's tail is heavy (exclusion.heavy_tail), else the tail's alias
    table. A flag, not the array, so no array reference (reference-counted by numba) is
    made per draw."""
    tail_mass = ix.seg_total[seg] - ix.seg_head_mass[seg]
    if ex.use_batch and heavy_tail(ix, seg, ex.batch_tail_mass[seg]):
        return True, tail_mass - ex.batch_tail_mass[seg]
    return False, tail_mass


@nb.njit(inline="always", cache=True)
def _prefix_search(ex, lo, hi, target):
    """The first position p in lo:hi with cum[p + 1] - cum[lo] > target, cum = ex.batch_cum
    (differences in uint64, so a wrapped sum is harmless): where target falls among the
    weights the prefix sums add, as _scan finds it; target must be below cum[hi] - cum[lo].

    The answer stays in a:a + n; each step keeps its first half or moves past it. The steps
    depend only on hi - lo, not on the loaded sums (a select, not a branch), so no step is
    mispredicted and the searches of consecutive draws (_speculate) overlap their misses.
    ex.batch_cum is read through ex, not taken as an argument: an array argument would be
    reference-counted (an atomic on a line both cores share) per draw."""
    base = ex.batch_cum[lo]
    a = lo
    n = hi - lo
    while n > 1:
        half = n >> 1
        a += half if ex.batch_cum[a + half] - base <= target else 0
        n -= half
    return a


@nb.njit(inline="always", cache=True)
def _tail_pick(ix, ex, heavy, lo, hi, table_mass, r):
    """Position in the tail lo:hi that one draw with words r picks: in a heavy tail the
    item where target mulhi64(uniform64, table_mass) falls (the pick of _scan's exact draw
    at that target, the batch's ids at weight 0), else the alias table's pick (uniform64
    picks the slot, r2 decides between it and its alias)."""
    if heavy:
        return _prefix_search(ex, lo, hi, mulhi64(_uniform64(r), table_mass))
    slot = nb.int64(mulhi64(_uniform64(r), nb.uint64(hi - lo)))
    return lo + (slot if r[2] < ix.seg_alias[lo + slot, 0] else nb.int64(ix.seg_alias[lo + slot, 1]))


@nb.njit(inline="always", cache=True)
def _draw(ix, ex, seg, tail, remaining, r_first, call, row, j, k0, k1, own_lo, own_hi, distinct, out, out_lo,
          first=-1, first_id=0, drawn_bits=-1):
    """Position (in the segment arrays) of one accepted draw from a part, and the tail draws
    (alias or prefix-sum picks) it took.

    first >= 0 is attempt 0's tail pick and first_id its item id, already loaded by
    _speculate; -1 computes them here. drawn_bits: the row's filter of its outputs so far
    (_maybe_drawn; -1: all bits set, so every id is searched).
    """
    if not tail:
        return _scan_head(ix, ex, seg, remaining, mulhi64(_uniform64(r_first), remaining), own_lo, own_hi, distinct,
                          out, out_lo, j), 0
    tail_lo = ix.seg_offsets[seg] + ix.seg_head[seg]
    hi = ix.seg_offsets[seg + 1]
    heavy, table_mass = _tail_table(ix, ex, seg)
    r = r_first
    attempts = 0
    if remaining >= table_mass - remaining:  # acceptance >= 1/2
        for a in range(MAX_ATTEMPTS):
            attempts += 1
            if a == 0 and first >= 0:
                p = first
                item_id = first_id
            else:
                if a > 0:
                    r = philox4x32_10(call, row, j, nb.uint64(a), k0, k1)
                p = _tail_pick(ix, ex, heavy, tail_lo, hi, table_mass, r)
                item_id = ix.seg_ids[p]
            if _is_excluded(item_id, ex, own_lo, own_hi):
                continue
            if distinct and _maybe_drawn(item_id, drawn_bits) and _drawn_before(item_id, out, out_lo, j):
                continue
            return p, attempts
        r = philox4x32_10(call, row, j, nb.uint64(MAX_ATTEMPTS), k0, k1)
    return _scan(ix, ex, tail_lo, hi, mulhi64(_uniform64(r), remaining),
                 own_lo, own_hi, distinct, out, out_lo, j), attempts


@nb.njit(inline="always", cache=True)
def _pick_part(r, remaining, lo, total, parts):
    """Index of the part (of remaining[lo:lo + parts]) attempt 0's word r3 selects, by remaining mass."""
    target = mul32hi(r[3], total)
    acc = np.uint64(0)
    for q in range(parts):
        acc += remaining[lo + q]
        if target < acc:
            return q
    return parts - 1


# Rows per block of the sampling kernels: a block's attempt-0 loads are issued in tight loops
# over all of its draws (hundreds of independent cache misses in flight) before any draw is
# decided; its scratch (~50 bytes a draw) stays in L2 until the decisions read it back.
BLOCK_ROWS = 64


@nb.njit(inline="always", cache=True)
def _prefetch_alias(ix, ex, seg, r):
    """Start loading the alias entry that attempt 0 (words r) of a tail draw in seg reads,
    as soon as the draw's words exist: _speculate then finds it in cache. (A heavy tail's
    binary search has no single line to load ahead: its first steps are shared and cached.)"""
    heavy, _ = _tail_table(ix, ex, seg)
    if heavy:
        return
    tail_lo = ix.seg_offsets[seg] + ix.seg_head[seg]
    size = nb.uint64(ix.seg_offsets[seg + 1] - tail_lo)
    prefetch(ix.seg_alias, tail_lo + nb.int64(mulhi64(_uniform64(r), size)))


@nb.njit(inline="always", cache=True)
def _speculate(ix, ex, seg_of, words, first, first_id, first_w, n):
    """Attempt 0's tail pick (_tail_pick) of each of n draws, as if each went to its segment's tail:
    first[t] = its position in the segment arrays (first_id[t] its item id and, unless
    first_w is empty, first_w[t] its weight), or -1 (no tail, or seg_of[t] < 0).
    The scratch arrays are a thread's, sized for its largest block: n is this block's.

    Only loads, no decisions: the decisions (which part, alias or exact scan, accepted or
    not) are made afterwards in draw order, exactly as without this pass, so the result is
    the same; what changes is that the misses of all draws overlap. The alias entries were
    prefetched as the words were made (_prefetch_alias); the first loop prefetches the ids
    and weights they name, the second reads them.
    """
    weights = first_w.shape[0] > 0  # without replacement; sized for the largest block, not n
    for t in range(n):
        first[t] = -1
        seg = seg_of[t]
        if seg < 0:
            continue
        tail_lo = ix.seg_offsets[seg] + ix.seg_head[seg]
        hi = ix.seg_offsets[seg + 1]
        if hi == tail_lo:
            continue
        heavy, table_mass = _tail_table(ix, ex, seg)
        p = _tail_pick(ix, ex, heavy, tail_lo, hi, table_mass, _stored_words(words, t))
        first[t] = p
        prefetch(ix.seg_ids, p)
        if weights:
            prefetch(ix.seg_weights, p)
    for t in range(n):
        if first[t] >= 0:
            first_id[t] = ix.seg_ids[first[t]]
            if weights:
                first_w[t] = ix.seg_weights[first[t]]


@nb.njit(inline="always", cache=True)
def _touch_excluded_rows(ix, own_rows, lo, hi, scratch):
    """Load, for every excluded row in own_rows[lo:hi], the lines _own_excluded_mass reads
    (its (segment, weight) pairs), in two loops of independent loads; scratch keeps what was
    read so the loads stay. The masses are then computed from cache, row by row."""
    for e in range(lo, hi):
        row = own_rows[e]
        scratch[e - lo] = ix.item_cat_offsets[row] if row >= 0 else -1
    for e in range(lo, hi):
        p = scratch[e - lo]
        if p >= 0:
            scratch[e - lo] = ix.item_seg[p] ^ nb.int64(ix.item_weights[p])


@nb.njit(inline="always", cache=True)
def _prefetch_head(ix, seg):
    """Start loading seg's head (its weights and ids, at most HEAD_SIZE of each: one or two
    lines apiece). A head scan is decided in draw order, its loads behind a branch on the
    previous draw, so a head not yet in cache (a category this call's earlier blocks did not
    draw from) would be one serialised miss per line; prefetched with the block's part
    masses, those misses overlap."""
    lo = ix.seg_offsets[seg]
    last = lo + max(ix.seg_head[seg] - 1, 0)
    prefetch(ix.seg_weights, lo)
    prefetch(ix.seg_weights, last)
    prefetch(ix.seg_ids, lo)
    prefetch(ix.seg_ids, last)


@nb.njit(inline="always", cache=True)
def _block_masses(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, lo, hi, touched):
    """Rows lo:hi's categories as segments (req_segs, -1: unknown), excluded ids as table
    rows (own_rows, -1: absent; row-wise exclusion only), and part masses:
    remaining[2k], remaining[2k + 1] = the head and tail mass of category k left after the
    row's exclusion; row_total[i] = the sum over row i's parts (the CUDA kernel part_masses).

    Each step is a loop of independent loads over the whole block (hash probes, then the
    excluded rows' (segment, weight) lines), so their misses overlap; it runs inside the
    draw kernel's block, so a request is one parallel region, not one per step.
    own_rows is the kernel's own argument, not reached through ex: numba's parallel loops
    crash writing to an array taken from a tuple argument. touched: scratch of at least the
    block's excluded-id count.
    """
    for k in range(req_offsets[lo], req_offsets[hi]):
        req_segs[k] = probe(ix.cat_slots, req_cats[k])
    if not ex.use_batch:
        e_lo = ex.own_offsets[lo]
        e_hi = ex.own_offsets[hi]
        for e in range(e_lo, e_hi):
            own_rows[e] = probe(ix.id_slots, ex.own_ids[e])
        _touch_excluded_rows(ix, own_rows, e_lo, e_hi, touched)
    for i in range(lo, hi):
        own_lo = ex.own_offsets[i]
        own_hi = ex.own_offsets[i + 1]
        total = np.uint64(0)
        for k in range(req_offsets[i], req_offsets[i + 1]):
            seg = req_segs[k]
            if seg < 0:  # an unknown category weighs nothing (as in part_masses); the engine raises for it
                remaining[2 * k] = 0
                remaining[2 * k + 1] = 0
                continue
            if ex.use_batch:
                head_out = ex.batch_head_mass[seg]
                tail_out = ex.batch_tail_mass[seg]
            else:
                head_out, tail_out = _own_excluded_mass(ix, seg, own_rows, own_lo, own_hi)
            remaining[2 * k] = ix.seg_head_mass[seg] - head_out
            remaining[2 * k + 1] = ix.seg_total[seg] - ix.seg_head_mass[seg] - tail_out
            total += remaining[2 * k] + remaining[2 * k + 1]
            _prefetch_head(ix, seg)
        row_total[i] = total


@nb.njit(inline="always", cache=True)
def _block_words(call, k0, k1, out_offsets, lo, hi, lanes, words):
    """Attempt 0's Philox words of every draw of rows lo:hi into words[:, t] (t: the draw's
    position in the block), in one vectorised pass (philox_lanes): the same words as one
    philox4x32_10 call per draw, ~3x faster. lanes is scratch for their Philox counters (row, draw index)."""
    o_lo = out_offsets[lo]
    for i in range(lo, hi):
        o = out_offsets[i]
        for j in range(out_offsets[i + 1] - o):
            lanes[0, o + j - o_lo] = nb.uint32(i)  # counters are taken modulo 2**32 (rng.py)
            lanes[1, o + j - o_lo] = nb.uint32(j)
    philox_lanes(call, lanes[0], lanes[1], nb.uint64(0), k0, k1, words, out_offsets[hi] - o_lo)


@nb.njit(inline="always", cache=True)
def _stored_words(words, t):
    """Draw t's attempt-0 words, as the tuple philox4x32_10 returns."""
    return nb.uint64(words[0, t]), nb.uint64(words[1, t]), nb.uint64(words[2, t]), nb.uint64(words[3, t])


@nb.njit(inline="always", cache=True)
def _fail_row(status, why, out, lo, hi, fill_id):
    status[0] = why
    out[lo:hi] = fill_id


@nb.njit(inline="always", cache=True)
def _chunk_plan(n_rows, out_offsets, own_offsets, threads):
    """(blocks, chunks, most draws in a block, most excluded ids in a block) of a request:
    the kernels' parallel loop runs one chunk per thread, which allocates its scratch once
    per call, sized for the largest block, and then takes the next block not yet taken
    (_next_block) until none is left: a thread the machine's other work holds up leaves its
    share to the other (a fixed split of the blocks would wait for it).
    threads is numba.get_num_threads() of the caller, passed in: called here, it would
    keep numba from caching the kernel (a ctypes pointer)."""
    n_blocks = (n_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    most_draws = 0
    most_excluded = 0
    for b in range(n_blocks):
        lo = b * BLOCK_ROWS
        hi = min(lo + BLOCK_ROWS, n_rows)
        most_draws = max(most_draws, out_offsets[hi] - out_offsets[lo])
        most_excluded = max(most_excluded, own_offsets[hi] - own_offsets[lo])
    return n_blocks, min(max(threads, 1), n_blocks), most_draws, most_excluded


@nb.njit(inline="always", cache=True)
def _chunk_scratch(draws, excluded, weights):
    """A thread's scratch for blocks of up to `draws` draws and `excluded` excluded ids:
    Philox counters and attempt-0 words, the segment a draw's tail pick is in (-1: none),
    the speculated pick, its id and (when weights: without replacement, where each drawn
    weight leaves its part) its weight, the part a draw takes, _block_masses' loads, and
    the thread's tally of counter words (_tally_block)."""
    tally = np.zeros(TALLY_WORDS, dtype=np.uint64)
    tally[FIRST_FAILED] = NONE
    tally[FIRST_UNKNOWN] = NONE
    return (np.empty((2, draws), dtype=np.uint32), np.empty((4, draws), dtype=np.uint32),
            np.empty(draws, dtype=np.int64), np.empty(draws, dtype=np.int64), np.empty(draws, dtype=np.int64),
            np.empty(draws if weights else 0, dtype=np.uint64), np.empty(draws, dtype=np.int64),
            np.empty(excluded, dtype=np.int64), tally)


@nb.njit(inline="always", cache=True)
def _tally_block(req_offsets, req_segs, status, lo, hi, tally):
    """Add rows lo:hi's unknown categories (req_segs -1) and failed rows to a thread's tally
    while the block's rows are in its cache: the host then reads a few words per thread,
    not the request's arrays (written by both cores, so each line read would be a transfer
    from the other core). A thread takes its blocks in row order, so a first position, once
    set, stays."""
    for k in range(req_offsets[lo], req_offsets[hi]):
        if req_segs[k] < 0:
            if tally[UNKNOWN] == 0:
                tally[FIRST_UNKNOWN] = k
            tally[UNKNOWN] += 1
    for i in range(lo, hi):
        if status[i] != STATUS_OK:
            if tally[FAILED] == 0:
                tally[FIRST_FAILED] = i
            tally[FAILED] += 1


@nb.njit(inline="always", cache=True)
def _report(tallies, counters):
    """The threads' tallies into the request's counter words (counts add, first positions take the least)."""
    for c in range(tallies.shape[0]):
        for w in (FAILED, ATTEMPTS, UNKNOWN):
            counters[w] += tallies[c, w]
        for w in (FIRST_FAILED, FIRST_UNKNOWN):
            counters[w] = min(counters[w], tallies[c, w])


@nb.njit(inline="always", cache=True)
def _next_block(taken, n_blocks, n_rows):
    """(lo, hi) rows of the next block no thread has taken yet, or (0, 0) when none is left.
    taken[0] counts the blocks handed out; each thread gets its blocks in increasing order."""
    b = fetch_add(taken, 0, 1)
    if b >= n_blocks:
        return 0, 0
    return b * BLOCK_ROWS, min(b * BLOCK_ROWS + BLOCK_ROWS, n_rows)


@nb.njit(parallel=True, nogil=True, cache=True)
def sample_put_back(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                    call, k0, k1, fill_id, out, status, counters, threads):
    """Row i's negatives with replacement into out[out_offsets[i]:out_offsets[i + 1]].

    status[i] gets STATUS_*; a failed row's slots hold fill_id; counters (the request's
    words, status.Counter) get the failed rows, the unknown categories (req_segs -1) and
    the tail draws made (alias picks, or prefix-sum picks in a heavy tail; head and exact
    scans count none), the first failed row and
    unknown position; threads: the caller's numba.get_num_threads(). The CUDA twin runs a thread
    per draw; here a thread takes BLOCK_ROWS rows at a time: every draw's part and head
    scan first (the words of attempt 0; heads are a few hot lines), then _speculate issues
    the tail draws' alias loads all together, then each draw is decided in order: the same
    decisions, their memory loads overlapped.
    """
    call = nb.uint64(call) & MASK32
    n_rows = row_total.shape[0]
    n_blocks, n_chunks, most_draws, most_excluded = _chunk_plan(n_rows, out_offsets, ex.own_offsets, threads)
    tallies = np.empty((n_chunks, TALLY_WORDS), dtype=np.uint64)
    taken = np.zeros(1, dtype=np.int64)
    for c in nb.prange(n_chunks):
        lanes, words, seg_of, first, first_id, first_w, part, touched, tally = _chunk_scratch(most_draws,
                                                                                             most_excluded, False)
        while True:
            lo, hi = _next_block(taken, n_blocks, n_rows)
            if lo == hi:
                break
            _put_back_block(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                            call, k0, k1, fill_id, out, status, tally, lo, hi, lanes, words, seg_of, first,
                            first_id, first_w, part, touched)
            _tally_block(req_offsets, req_segs, status, lo, hi, tally)
        tallies[c] = tally
    _report(tallies, counters)


@nb.njit(inline="always", cache=True)
def _block_start(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                 call, k0, k1, lo, hi, lanes, words, touched):
    """What both kernels do first for rows lo:hi: their part masses (_block_masses) and their
    draws' attempt-0 words (_block_words). Returns the block's first output slot and its draw count."""
    _block_masses(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, lo, hi, touched)
    _block_words(call, k0, k1, out_offsets, lo, hi, lanes, words)
    return out_offsets[lo], out_offsets[hi] - out_offsets[lo]


@nb.njit(inline="always", cache=True)
def _put_back_block(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                    call, k0, k1, fill_id, out, status, tally, lo, hi, lanes, words, seg_of, first, first_id,
                    first_w, part, touched):
    """sample_put_back's rows lo:hi, with a thread's scratch (part[t] = -1: the head scan decided
    draw t); the alias draws made go to tally[ATTEMPTS]."""
    o_lo, n = _block_start(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                           call, k0, k1, lo, hi, lanes, words, touched)
    for i in range(lo, hi):
        o = out_offsets[i]
        status[i] = STATUS_OK
        total = row_total[i]
        c_lo = req_offsets[i]
        r_lo = 2 * c_lo  # the row's parts: remaining[r_lo:2 * req_offsets[i + 1]] (indices: a slice is reference-counted)
        for j in range(out_offsets[i + 1] - o):
            t = o + j - o_lo
            seg_of[t] = -1
            if total == 0:
                part[t] = -1
                continue
            r = _stored_words(words, t)
            q = _pick_part(r, remaining, r_lo, total, 2 * (req_offsets[i + 1] - c_lo))
            seg = req_segs[c_lo + (q >> 1)]
            part[t] = q
            if (q & 1) == 0:  # head: an exact scan over a few hot lines, decided now
                p, _ = _draw(ix, ex, seg, False, remaining[r_lo + q], r, call, nb.uint64(i), nb.uint64(j), k0, k1,
                             ex.own_offsets[i], ex.own_offsets[i + 1], False, out, o)
                out[o + j] = ix.seg_ids[p]
                part[t] = -1
                continue
            _, table_mass = _tail_table(ix, ex, seg)
            if remaining[r_lo + q] >= table_mass - remaining[r_lo + q]:
                seg_of[t] = seg
                _prefetch_alias(ix, ex, seg, r)
    _speculate(ix, ex, seg_of, words, first, first_id, first_w, n)
    for i in range(lo, hi):
        o = out_offsets[i]
        count = out_offsets[i + 1] - o
        if count == 0:
            continue
        if row_total[i] == 0:
            _fail_row(status[i:i + 1], STATUS_NO_CANDIDATE, out, o, o + count, fill_id)
            continue
        c_lo = req_offsets[i]
        for j in range(count):
            t = o + j - o_lo
            q = part[t]
            if q < 0:
                continue
            p, used = _draw(ix, ex, req_segs[c_lo + (q >> 1)], True, remaining[2 * c_lo + q], _stored_words(words, t), call, nb.uint64(i),
                            nb.uint64(j), k0, k1, ex.own_offsets[i], ex.own_offsets[i + 1], False, out, o,
                            first[t], first_id[t])
            tally[ATTEMPTS] += used
            out[o + j] = ix.seg_ids[p]


@nb.njit(parallel=True, nogil=True, cache=True)
def sample_distinct(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                    call, k0, k1, fill_id, out, status, counters, threads):
    """Row i's distinct negatives (one category per row: two parts) into
    out[out_offsets[i]:out_offsets[i + 1]]; each drawn item's mass leaves its part.
    status, fill and counters as in sample_put_back.

    Each draw depends on the ones before it (which items are gone, how much mass is left),
    but attempt 0's alias pick does not: a thread takes BLOCK_ROWS rows at a time, computes
    every draw's attempt-0 words, lets _speculate load every pick from the row's tail
    together, then decides the draws in order as the CUDA twin does, one thread per row.
    """
    call = nb.uint64(call) & MASK32
    n_rows = row_total.shape[0]
    n_blocks, n_chunks, most_draws, most_excluded = _chunk_plan(n_rows, out_offsets, ex.own_offsets, threads)
    tallies = np.empty((n_chunks, TALLY_WORDS), dtype=np.uint64)
    taken = np.zeros(1, dtype=np.int64)
    for c in nb.prange(n_chunks):
        lanes, words, seg_of, first, first_id, first_w, _, touched, tally = _chunk_scratch(most_draws, most_excluded,
                                                                                          True)
        while True:
            lo, hi = _next_block(taken, n_blocks, n_rows)
            if lo == hi:
                break
            _distinct_block(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                            call, k0, k1, fill_id, out, status, tally, lo, hi, lanes, words, seg_of, first,
                            first_id, first_w, touched)
            _tally_block(req_offsets, req_segs, status, lo, hi, tally)
        tallies[c] = tally
    _report(tallies, counters)


@nb.njit(inline="always", cache=True)
def _distinct_block(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                    call, k0, k1, fill_id, out, status, tally, lo, hi, lanes, words, seg_of, first, first_id,
                    first_w, touched):
    """sample_distinct's rows lo:hi, with a thread's scratch; the alias draws made go to tally[ATTEMPTS]."""
    o_lo, n = _block_start(ix, ex, own_rows, req_offsets, req_cats, req_segs, remaining, row_total, out_offsets,
                           call, k0, k1, lo, hi, lanes, words, touched)
    for i in range(lo, hi):
        o = out_offsets[i]
        seg = req_segs[req_offsets[i]] if row_total[i] > 0 else -1
        for j in range(out_offsets[i + 1] - o):
            t = o + j - o_lo
            seg_of[t] = seg
            if seg >= 0:
                _prefetch_alias(ix, ex, seg, _stored_words(words, t))
    _speculate(ix, ex, seg_of, words, first, first_id, first_w, n)
    for i in range(lo, hi):
        o = out_offsets[i]
        count = out_offsets[i + 1] - o
        status[i] = STATUS_OK
        if count == 0:
            continue
        total = row_total[i]
        if total == 0:
            _fail_row(status[i:i + 1], STATUS_NO_CANDIDATE, out, o, o + count, fill_id)
            continue
        c_lo = req_offsets[i]
        seg = req_segs[c_lo]
        own_lo = ex.own_offsets[i]
        own_hi = ex.own_offsets[i + 1]
        head = remaining[2 * c_lo]  # this row's own part masses, drawn down
        tail = remaining[2 * c_lo + 1]
        head_drawn = nb.uint64(0)  # bit h: head position h drawn for this row
        drawn_bits = nb.int64(0)  # bit id mod 64: an id of this row's outputs (_maybe_drawn)
        for j in range(count):
            if total == 0:
                _fail_row(status[i:i + 1], STATUS_TOO_FEW, out, o + j, o + count, fill_id)
                break
            t = o + j - o_lo
            r = _stored_words(words, t)
            from_tail = mul32hi(r[3], total) >= head
            if from_tail:
                p, used = _draw(ix, ex, seg, True, tail, r, call, nb.uint64(i), nb.uint64(j), k0, k1, own_lo,
                                own_hi, True, out, o, first[t], first_id[t], drawn_bits)
                tally[ATTEMPTS] += used
            else:
                p = _scan_head(ix, ex, seg, head, mulhi64(_uniform64(r), head), own_lo, own_hi, True, out, o, j,
                               True, head_drawn)
                if p >= 0:
                    head_drawn |= nb.uint64(1) << nb.uint64(p - ix.seg_offsets[seg])
            out[o + j] = first_id[t] if p == first[t] else ix.seg_ids[p]
            drawn_bits |= nb.int64(1) << (out[o + j] & 63)
            w = first_w[t] if p == first[t] else ix.seg_weights[p]  # the pick's weight: speculated, not a miss here
            if from_tail:
                tail -= w
            else:
                head -= w
            total -= w
