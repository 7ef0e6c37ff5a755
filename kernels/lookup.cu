// Hash lookups: id -> table row (or category -> segment), valid ids, rows with a default.
// The CUDA twin of gpu_negsample/backends/cpu/lookup.py.
#include "hash_probe.cuh"

extern "C" __global__ void lookup_rows(const i64* __restrict__ slots, i64 capacity, const i64* __restrict__ keys,
                                       i64 n, i64* __restrict__ out) {
  GN_GRID_STRIDE(i, n) { out[i] = probe(slots, capacity, keys[i]); }
}

extern "C" __global__ void valid_ids(const i64* __restrict__ slots, i64 capacity, const i64* __restrict__ ids,
                                     i64 n, i64 default_id, i64* __restrict__ out) {
  GN_GRID_STRIDE(i, n) {
    const i64 id = ids[i];
    out[i] = probe(slots, capacity, id) >= 0 ? id : default_id;
  }
}

// Rows of ids, default_row where absent. When report is set (the default id itself is not
// in the table: an error the host raises), absent ids are counted in missing[0] and the
// first one's position kept in missing[1] (starting at ~0); otherwise no atomic is made.
extern "C" __global__ void rows_or_default(const i64* __restrict__ slots, i64 capacity, const i64* __restrict__ ids,
                                           i64 n, i64 default_row, i64 report, i64* __restrict__ out,
                                           u64* __restrict__ missing) {
  GN_GRID_STRIDE(i, n) {
    i64 row = probe(slots, capacity, ids[i]);
    if (row < 0) {
      row = default_row;
      if (report) {
        atomicAdd(&missing[0], 1ull);
        atomicMin(&missing[1], (u64)i);
      }
    }
    out[i] = row;
  }
}
