// log q of combined ids: the log probability that a positive's category mixture draws each
// item, before exclusion (sampled-softmax correction). The CUDA twin of
// gpu_negsample/backends/cpu/log_q.py; float math, so the two agree to rounding, not bit for bit.
#include "hash_probe.cuh"
#include "rows.cuh"
#include "views.cuh"

// One thread per combined entry t of row i (the positive, then its sampled ids):
// out[t] = log(sum of the item's weights in row i's categories) - log(their total mass),
// computed in double, stored as float.
extern "C" __global__ void log_q_rows(const IndexView* __restrict__ ixp, const i64* __restrict__ req_offsets,
                                      const i64* __restrict__ req_segs, const i64* __restrict__ sampled_offsets,
                                      i64 n_rows, i64 uniform_count, const i64* __restrict__ ids,
                                      float* __restrict__ out) {
  const IndexView ix = *ixp;
  GN_GRID_STRIDE(t, sampled_offsets[n_rows] + n_rows) {
    const i64 i = row_of_entry(sampled_offsets, n_rows, uniform_count, t);
    const i64 c_lo = req_offsets[i], c_hi = req_offsets[i + 1];
    u64 total = 0, mass = 0;
    for (i64 k = c_lo; k < c_hi; ++k)
      if (req_segs[k] >= 0) total += ix.seg_total[req_segs[k]];
    const i64 row = probe(ix.id_slots, ix.id_capacity, ids[t]);
    if (row >= 0)
      for (i64 p = ix.item_cat_offsets[row]; p < ix.item_cat_offsets[row + 1]; ++p)
        for (i64 k = c_lo; k < c_hi; ++k)
          if (ix.item_seg[p] == req_segs[k]) mass += ix.item_weights[p];
    out[t] = (float)((mass == 0 || total == 0) ? -__longlong_as_double(0x7FF0000000000000LL)  // -inf
                                               : log((double)mass) - log((double)total));
  }
}
