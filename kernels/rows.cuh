// Which positive row an output position belongs to, for kernels that run a thread per
// output (a draw, or an entry of the combined positive+negatives vector). With one count
// for every row it is a division (32-bit when it fits), else a binary search.
#pragma once
#include "types.cuh"

// Row of draw t: out_offsets[i] <= t < out_offsets[i + 1] (uniform_count > 0: every row draws it).
GN_INLINE i64 row_of_draw(const i64* out_offsets, i64 n_rows, i64 uniform_count, i64 t) {
  if (uniform_count > 0) return div_nonneg(t, uniform_count);
  i64 lo = 0, hi = n_rows;
  while (hi - lo > 1) {
    const i64 mid = (lo + hi) >> 1;
    if (out_offsets[mid] <= t) lo = mid; else hi = mid;
  }
  return lo;
}

// Row of combined entry t: row i owns [sampled_offsets[i] + i, sampled_offsets[i + 1] + i + 1)
// (uniform_count >= 0: every row has that many sampled entries).
GN_INLINE i64 row_of_entry(const i64* sampled_offsets, i64 n_rows, i64 uniform_count, i64 t) {
  if (uniform_count >= 0) return div_nonneg(t, uniform_count + 1);
  i64 lo = 0, hi = n_rows;
  while (hi - lo > 1) {
    const i64 mid = (lo + hi) >> 1;
    if (sampled_offsets[mid] + mid <= t) lo = mid; else hi = mid;
  }
  return lo;
}
