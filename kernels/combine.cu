// Each origin entry followed by its sampled entries (RecIS's combine_vector_with_sample_counts).
// The CUDA twin of gpu_negsample/backends/cpu/combine.py.
#include "rows.cuh"

// One thread per output entry; uniform_count < 0 when the counts differ.
extern "C" __global__ void combine_with_counts(const i64* __restrict__ origin, const i64* __restrict__ sampled,
                                               const i64* __restrict__ sampled_offsets, i64 n_rows,
                                               i64 uniform_count, i64* __restrict__ out) {
  GN_GRID_STRIDE(t, sampled_offsets[n_rows] + n_rows) {
    const i64 i = row_of_entry(sampled_offsets, n_rows, uniform_count, t);
    const i64 q = t - (sampled_offsets[i] + i);
    out[t] = q == 0 ? origin[i] : sampled[sampled_offsets[i] + q - 1];
  }
}
