// Category-conditional alias sampling with exclusion: the CUDA twin of
// gpu_negsample/backends/cpu/sample.py. Every decision is the same integer arithmetic
// on the same Philox words, so both paths return the same ids for the same seed.
//
// part_masses      one thread per positive: its categories resolved to segments, the
//                  remaining (head, tail) mass of each after exclusion, and the row total.
// sample_put_back  one thread per negative (draws with replacement are independent).
// sample_distinct  one thread per positive (each draw removes its item's mass).
// batch_exclusion  batch-wide exclusion, one thread per excluded id: the request's hash set
//                  of them and each distinct id's (head, tail) mass per segment.
// batch_weights    batch-wide exclusion, one thread per segment position: its weight with the
//                  excluded ids at 0, which the host's cumsum turns into the prefix sums that
//                  tails the excluded ids hold more than half of are drawn from.
#include "hash_probe.cuh"
#include "philox.cuh"
#include "rows.cuh"
#include "views.cuh"

#define GN_MAX_ATTEMPTS 32
#define GN_STATUS_NO_CANDIDATE 1
#define GN_STATUS_TOO_FEW 2

// failed[0]: failed rows, failed[1]: first failed row (starts at ~0), failed[2]: tail draws made
// (alias picks, or prefix-sum picks in a heavy tail).
GN_INLINE void report_failure(signed char* status, u64* failed, i64 row, signed char why) {
  status[row] = why;
  atomicAdd(&failed[0], 1ull);
  atomicMin(&failed[1], (u64)row);
}

// What identifies one draw's random numbers and its exclusion set.
struct DrawContext {
  u32 call, row, draw, k0, k1;
  i64 own_lo, own_hi;
};

GN_INLINE bool is_excluded(const ExclusionView& ex, const DrawContext& d, i64 item_id) {
  if (ex.use_batch) return probe(ex.batch_slots, ex.batch_capacity, item_id) >= 0;
  for (i64 e = d.own_lo; e < d.own_hi; ++e)
    if (ex.own_ids[e] == item_id) return true;
  return false;
}

GN_INLINE bool drawn_before(const i64* out, i64 out_lo, i64 n_drawn, i64 item_id) {
  for (i64 q = out_lo; q < out_lo + n_drawn; ++q)
    if (out[q] == item_id) return true;
  return false;
}

// Adds table row `row`'s weight inside segment seg to head or tail, where the row sits.
GN_INLINE void add_mass_in(const IndexView& ix, i64 seg, i64 row, u64& head, u64& tail) {
  u64 w = 0;
  for (i64 p = ix.item_cat_offsets[row]; p < ix.item_cat_offsets[row + 1]; ++p)
    if (ix.item_seg[p] == seg) {
      w = ix.item_weights[p];
      break;
    }
  const i64 lo = ix.seg_offsets[seg];
  for (i64 h = 0; h < ix.seg_head[seg]; ++h)
    if (ix.seg_rows[lo + h] == row) {
      head += w;
      return;
    }
  tail += w;
}

GN_INLINE i64 scan(const IndexView& ix, const ExclusionView& ex, const DrawContext& d, i64 lo, i64 hi,
                   u64 target, bool distinct, const i64* out, i64 out_lo) {
  for (i64 p = lo; p < hi; ++p) {
    const u64 w = ix.seg_weights[p];
    if (w == 0) continue;
    const i64 item_id = ix.seg_ids[p];
    if (is_excluded(ex, d, item_id)) continue;
    if (distinct && drawn_before(out, out_lo, d.draw, item_id)) continue;
    if (target < w) return p;
    target -= w;
  }
  return -1;
}

// Whether the batch's ids hold more than half of seg's tail mass (and not all of it), as
// gpu_negsample/backends/exclusion.py's heavy_tail: such a tail is drawn from the prefix sums.
GN_INLINE bool heavy_tail(const IndexView& ix, i64 seg, u64 out) {
  const u64 tail_mass = ix.seg_total[seg] - ix.seg_head_mass[seg];
  const u64 remaining = tail_mass - out;
  return out > 0 && remaining > 0 && remaining < tail_mass - remaining;
}

// The first position p in lo..hi-1 with cum[p + 1] - cum[lo] > target (u64 differences, so a
// wrapped sum is harmless): where target falls among the summed weights, as scan finds it.
// The answer stays in a..a+n-1; the steps depend only on hi - lo (a select, no divergence),
// as backends/cpu/sample.py's _prefix_search.
GN_INLINE i64 prefix_search(const u64* cum, i64 lo, i64 hi, u64 target) {
  const u64 base = cum[lo];
  i64 a = lo;
  for (i64 n = hi - lo; n > 1;) {
    const i64 half = n >> 1;
    a += cum[a + half] - base <= target ? half : 0;
    n -= half;
  }
  return a;
}

// Position in the tail lo..hi-1 one draw with words r picks: in a heavy tail where
// mulhi64(uniform64, table_mass) falls among the weights without the batch's ids, else the
// alias table's pick (uniform64 picks the slot, r2 keeps it or takes its alias).
GN_INLINE i64 tail_pick(const IndexView& ix, const ExclusionView& ex, bool heavy, i64 lo, i64 hi, u64 table_mass,
                        const Philox4& r) {
  if (heavy) return prefix_search(ex.batch_cum, lo, hi, mulhi64(uniform64(r), table_mass));
  const i64 slot = (i64)mulhi64(uniform64(r), (u64)(hi - lo));
  const uint2 entry = reinterpret_cast<const uint2*>(ix.seg_alias)[lo + slot];
  return lo + (r.r2 < entry.x ? slot : (i64)entry.y);
}

// Position (in the segment arrays) of one accepted draw from the head or tail of seg;
// adds the tail draws it made to attempts.
GN_INLINE i64 draw_from_part(const IndexView& ix, const ExclusionView& ex, const DrawContext& d, i64 seg,
                             bool tail, u64 remaining, Philox4 r, bool distinct, const i64* out, i64 out_lo,
                             u64& attempts) {
  const i64 head_lo = ix.seg_offsets[seg];
  const i64 tail_lo = head_lo + ix.seg_head[seg];
  if (!tail) return scan(ix, ex, d, head_lo, tail_lo, mulhi64(uniform64(r), remaining), distinct, out, out_lo);
  const i64 hi = ix.seg_offsets[seg + 1];
  u64 table_mass = ix.seg_total[seg] - ix.seg_head_mass[seg];
  const bool heavy = ex.use_batch && heavy_tail(ix, seg, ex.batch_tail_mass[seg]);
  if (heavy) table_mass -= ex.batch_tail_mass[seg];
  if (remaining >= table_mass - remaining) {  // acceptance >= 1/2: draws with rejection
    for (u32 a = 0; a < GN_MAX_ATTEMPTS; ++a) {
      if (a > 0) r = philox4x32_10(d.call, d.row, d.draw, a, d.k0, d.k1);
      ++attempts;
      const i64 p = tail_pick(ix, ex, heavy, tail_lo, hi, table_mass, r);
      const i64 item_id = ix.seg_ids[p];
      if (is_excluded(ex, d, item_id)) continue;
      if (distinct && drawn_before(out, out_lo, d.draw, item_id)) continue;
      return p;
    }
    r = philox4x32_10(d.call, d.row, d.draw, GN_MAX_ATTEMPTS, d.k0, d.k1);
  }
  return scan(ix, ex, d, tail_lo, hi, mulhi64(uniform64(r), remaining), distinct, out, out_lo);
}

// ---- batch-wide exclusion (the CUDA twin of gpu_negsample/backends/exclusion.py) ----------

// batch_slots: (capacity, 2), every key word GN_EMPTY_KEY; batch_mass: (2, n_seg) zeros, the
// head masses then the tail masses. Ids absent from the table join the set and weigh nothing.
extern "C" __global__ void batch_exclusion(const IndexView* __restrict__ ixp, const i64* __restrict__ ids, i64 n_ids,
                                           i64* __restrict__ batch_slots, i64 batch_capacity,
                                           u64* __restrict__ batch_mass, i64 n_seg) {
  const IndexView ix = *ixp;
  GN_GRID_STRIDE(t, n_ids) {
    const i64 id = ids[t];
    if (id == GN_EMPTY_KEY || !insert_key(batch_slots, batch_capacity, id)) continue;  // repeats count once
    const i64 row = probe(ix.id_slots, ix.id_capacity, id);
    if (row < 0) continue;
    for (i64 p = ix.item_cat_offsets[row]; p < ix.item_cat_offsets[row + 1]; ++p) {
      const i64 seg = ix.item_seg[p];
      u64 head = 0, tail = 0;
      add_mass_in(ix, seg, row, head, tail);
      if (head) atomicAdd(&batch_mass[seg], head);
      if (tail) atomicAdd(&batch_mass[n_seg + seg], tail);
    }
  }
}

// cum[0] = 0 and cum[p + 1] = the weight of segment position p with the batch's ids at 0,
// for all n_pos positions: a position's segment (is its tail heavy?) would take a search of
// seg_offsets, dearer than this probe of the request's small hash set. The inclusive cumsum
// the host queues next turns cum into ExclusionView's batch_cum.
extern "C" __global__ void batch_weights(const IndexView* __restrict__ ixp, const i64* __restrict__ batch_slots,
                                         i64 batch_capacity, i64 n_pos, u64* __restrict__ cum) {
  const IndexView ix = *ixp;
  GN_GRID_STRIDE(t, n_pos + 1) {
    if (t == 0) {
      cum[0] = 0;
      continue;
    }
    const u64 w = ix.seg_weights[t - 1];
    cum[t] = w && probe(batch_slots, batch_capacity, ix.seg_ids[t - 1]) >= 0 ? 0ull : w;
  }
}

// req_segs[k] = the segment of category req_cats[k]; an unknown category is counted in
// unknown[0] (unknown[1]: its first position, starting at ~0) and weighs nothing.
extern "C" __global__ void part_masses(const IndexView* __restrict__ ixp,
                                       const i64* __restrict__ own_offsets, const i64* __restrict__ own_ids,
                                       i64 use_batch, const i64* __restrict__ batch_slots, i64 batch_capacity,
                                       const u64* __restrict__ batch_head_mass, const u64* __restrict__ batch_tail_mass,
                                       const u64* __restrict__ batch_cum,
                                       const i64* __restrict__ req_offsets, const i64* __restrict__ req_cats,
                                       i64 n_rows, i64* __restrict__ req_segs, u64* __restrict__ remaining,
                                       u64* __restrict__ row_total, u64* __restrict__ unknown) {
  const IndexView ix = *ixp;
  const ExclusionView ex{own_offsets, own_ids, use_batch, batch_slots, batch_capacity,
                         batch_head_mass, batch_tail_mass, batch_cum};
  GN_GRID_STRIDE(i, n_rows) {
    u64 total = 0;
    const i64 own_lo = ex.own_offsets[i], own_hi = ex.own_offsets[i + 1];
    for (i64 k = req_offsets[i]; k < req_offsets[i + 1]; ++k) {
      const i64 seg = probe(ix.cat_slots, ix.cat_capacity, req_cats[k]);
      req_segs[k] = seg;
      u64 head = 0, tail = 0;
      if (seg < 0) {
        atomicAdd(&unknown[0], 1ull);
        atomicMin(&unknown[1], (u64)k);
      } else {
        u64 head_out = 0, tail_out = 0;
        if (ex.use_batch) {
          head_out = ex.batch_head_mass[seg];
          tail_out = ex.batch_tail_mass[seg];
        } else {
          // Each distinct excluded id once; ids absent from the table weigh nothing.
          for (i64 e = own_lo; e < own_hi; ++e) {
            const i64 id = ex.own_ids[e];
            bool repeated = false;
            for (i64 f = own_lo; f < e && !repeated; ++f) repeated = ex.own_ids[f] == id;
            const i64 row = repeated ? -1 : probe(ix.id_slots, ix.id_capacity, id);
            if (row >= 0) add_mass_in(ix, seg, row, head_out, tail_out);
          }
        }
        head = ix.seg_head_mass[seg] - head_out;
        tail = ix.seg_total[seg] - ix.seg_head_mass[seg] - tail_out;
      }
      remaining[2 * k] = head;
      remaining[2 * k + 1] = tail;
      total += head + tail;
    }
    row_total[i] = total;
  }
}

extern "C" __global__ void sample_put_back(const IndexView* __restrict__ ixp,
                                           const i64* __restrict__ own_offsets, const i64* __restrict__ own_ids,
                                           i64 use_batch, const i64* __restrict__ batch_slots, i64 batch_capacity,
                                           const u64* __restrict__ batch_head_mass, const u64* __restrict__ batch_tail_mass,
                                           const u64* __restrict__ batch_cum,
                                           const i64* __restrict__ req_offsets, const i64* __restrict__ req_segs,
                                           const u64* __restrict__ remaining, const u64* __restrict__ row_total,
                                           const i64* __restrict__ out_offsets, i64 n_rows, i64 uniform_count,
                                           u32 call, u32 k0, u32 k1, i64 fill_id, i64 count_attempts,
                                           i64* __restrict__ out, signed char* __restrict__ status,
                                           u64* __restrict__ failed) {
  const IndexView ix = *ixp;
  const ExclusionView ex{own_offsets, own_ids, use_batch, batch_slots, batch_capacity,
                         batch_head_mass, batch_tail_mass, batch_cum};
  GN_GRID_STRIDE(t, out_offsets[n_rows]) {
    const i64 i = row_of_draw(out_offsets, n_rows, uniform_count, t);
    const i64 j = uniform_count > 0 ? t - i * uniform_count : t - out_offsets[i];
    const u64 total = row_total[i];
    if (total == 0) {
      out[t] = fill_id;
      if (j == 0) report_failure(status, failed, i, GN_STATUS_NO_CANDIDATE);
      continue;
    }
    const DrawContext d{call, (u32)i, (u32)j, k0, k1, ex.own_offsets[i], ex.own_offsets[i + 1]};
    const Philox4 r = philox4x32_10(call, (u32)i, (u32)j, 0, k0, k1);
    // The part (head or tail of one category) whose running remaining mass passes target.
    const u64 target = mul32hi(r.r3, total);
    const i64 q_lo = 2 * req_offsets[i], q_hi = 2 * req_offsets[i + 1];
    i64 q = q_hi - 1;
    u64 acc = 0;
    for (i64 p = q_lo; p < q_hi; ++p) {
      acc += remaining[p];
      if (target < acc) {
        q = p;
        break;
      }
    }
    u64 attempts = 0;
    const i64 p = draw_from_part(ix, ex, d, req_segs[q >> 1], (q & 1) == 1, remaining[q], r, false, out, 0,
                                 attempts);
    out[t] = p >= 0 ? ix.seg_ids[p] : fill_id;
    if (count_attempts && attempts) atomicAdd(&failed[2], attempts);
  }
}

extern "C" __global__ void sample_distinct(const IndexView* __restrict__ ixp,
                                           const i64* __restrict__ own_offsets, const i64* __restrict__ own_ids,
                                           i64 use_batch, const i64* __restrict__ batch_slots, i64 batch_capacity,
                                           const u64* __restrict__ batch_head_mass, const u64* __restrict__ batch_tail_mass,
                                           const u64* __restrict__ batch_cum,
                                           const i64* __restrict__ req_offsets, const i64* __restrict__ req_segs,
                                           const u64* __restrict__ remaining, const u64* __restrict__ row_total,
                                           const i64* __restrict__ out_offsets, i64 n_rows, u32 call, u32 k0,
                                           u32 k1, i64 fill_id, i64 count_attempts, i64* __restrict__ out,
                                           signed char* __restrict__ status, u64* __restrict__ failed) {
  const IndexView ix = *ixp;
  const ExclusionView ex{own_offsets, own_ids, use_batch, batch_slots, batch_capacity,
                         batch_head_mass, batch_tail_mass, batch_cum};
  GN_GRID_STRIDE(i, n_rows) {
    const i64 o = out_offsets[i], count = out_offsets[i + 1] - o;
    if (count == 0) continue;
    // Without replacement a positive has exactly one category (the engine checks): 2 parts.
    const i64 k = req_offsets[i];
    const i64 seg = req_segs[k];
    u64 head = remaining[2 * k], tail = remaining[2 * k + 1];
    u64 total = row_total[i];
    if (total == 0) {
      for (i64 j = 0; j < count; ++j) out[o + j] = fill_id;
      report_failure(status, failed, i, GN_STATUS_NO_CANDIDATE);
      continue;
    }
    u64 attempts = 0;
    for (i64 j = 0; j < count; ++j) {
      if (total == 0) {
        for (i64 q = j; q < count; ++q) out[o + q] = fill_id;
        report_failure(status, failed, i, GN_STATUS_TOO_FEW);
        break;
      }
      const DrawContext d{call, (u32)i, (u32)j, k0, k1, ex.own_offsets[i], ex.own_offsets[i + 1]};
      const Philox4 r = philox4x32_10(call, (u32)i, (u32)j, 0, k0, k1);
      const bool from_tail = mul32hi(r.r3, total) >= head;
      const i64 p = draw_from_part(ix, ex, d, seg, from_tail, from_tail ? tail : head, r, true, out, o, attempts);
      if (p < 0) {  // unreachable while the masses are exact; never read out of bounds
        out[o + j] = fill_id;
        continue;
      }
      out[o + j] = ix.seg_ids[p];
      (from_tail ? tail : head) -= ix.seg_weights[p];
      total -= ix.seg_weights[p];
    }
    if (count_attempts && attempts) atomicAdd(&failed[2], attempts);
  }
}
