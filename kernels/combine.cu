// Each origin entry followed by its sampled entries (RecIS's combine_vector_with_sample_counts).
#include "types.cuh"

// One thread per output entry: row i owns out[sampled_offsets[i] + i ... sampled_offsets[i + 1] + i].
extern "C" __global__ void combine_with_counts(const i64* __restrict__ origin, const i64* __restrict__ sampled,
                                               const i64* __restrict__ sampled_offsets, i64 n_rows,
                                               i64* __restrict__ out) {
  GN_GRID_STRIDE(t, sampled_offsets[n_rows] + n_rows) {
    // the row whose output range [sampled_offsets[i] + i, sampled_offsets[i + 1] + i + 1) holds t
    i64 lo = 0, hi = n_rows;
    while (hi - lo > 1) {
      const i64 mid = (lo + hi) >> 1;
      if (sampled_offsets[mid] + mid <= t) lo = mid; else hi = mid;
    }
    const i64 q = t - (sampled_offsets[lo] + lo);
    out[t] = q == 0 ? origin[lo] : sampled[sampled_offsets[lo] + q - 1];
  }
}
