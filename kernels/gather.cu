// Feature gather for a pack request, every column of a kind in one launch (the host writes
// a descriptor per column, views.cuh). The CUDA twin of backends/cpu/gather.py.
//   gather_dense    a thread per output word: consecutive threads read consecutive words of
//                   a row, so loads and stores coalesce (and rows stream from pinned memory).
//   ragged_lengths  a thread per (column, row): lengths for the offsets scan, string widths.
//   gather_ragged   a warp per (column, row): 32 lanes copy a row's values side by side, so
//                   a row is read in few transactions even over PCIe (pinned columns).
#include "views.cuh"

template <typename W>
GN_INLINE void copy_word(u8* dst, i64 to, const u8* src, i64 from) {
  reinterpret_cast<W*>(dst)[to] = reinterpret_cast<const W*>(src)[from];
}

// dst[to] = src[from] for elements of `bytes` bytes (1, 2, 4, 8 or 16).
GN_INLINE void copy_element(u8* dst, i64 to, const u8* src, i64 from, i64 bytes) {
  switch (bytes) {
    case 16: copy_word<uint4>(dst, to, src, from); break;
    case 8: copy_word<u64>(dst, to, src, from); break;
    case 4: copy_word<u32>(dst, to, src, from); break;
    case 2: copy_word<u16>(dst, to, src, from); break;
    default: dst[to] = src[from];
  }
}

// The column whose words contain word t (first_word ascending, cols[0].first_word == 0).
GN_INLINE i64 column_of_word(const DenseColumn* cols, i64 n_cols, i64 t) {
  i64 lo = 0, hi = n_cols;
  while (hi - lo > 1) {
    const i64 mid = (lo + hi) >> 1;
    if (cols[mid].first_word <= t) lo = mid; else hi = mid;
  }
  return lo;
}

extern "C" __global__ void gather_dense(const DenseColumn* __restrict__ cols, i64 n_cols,
                                        const i64* __restrict__ rows, i64 n_rows, i64 total_words) {
  GN_GRID_STRIDE(t, total_words) {
    const DenseColumn col = cols[column_of_word(cols, n_cols, t)];
    const i64 w = t - col.first_word;
    const i64 i = div_nonneg(w, col.row_words);
    copy_element(col.dst, w, col.src, rows[i] * col.row_words + (w - i * col.row_words), col.word_bytes);
  }
}

// Ragged column c's row lengths go to lengths[c * (n_rows + 1) + 1 + i], with a 0 in front, for
// the scan that makes them offsets; a string column's longest row to max_length[c]. That word
// only grows, and only rows longer than what is already there make an atomic, so a column's
// threads rarely contend for it.
extern "C" __global__ void ragged_lengths(const RaggedColumn* __restrict__ cols, i64 n_cols,
                                          const i64* __restrict__ rows, i64 n_rows, i64* __restrict__ lengths,
                                          u64* __restrict__ max_length) {
  GN_GRID_STRIDE(t, n_cols * n_rows) {
    const i64 c = div_nonneg(t, n_rows), i = t - c * n_rows;
    const RaggedColumn col = cols[c];
    const i64 r = rows[i];
    const i64 length = col.offsets[r + 1] - col.offsets[r];
    if (col.width == 0) {
      lengths[c * (n_rows + 1) + 1 + i] = length;
      if (i == 0) lengths[c * (n_rows + 1)] = 0;
    } else if ((u64)length > max_length[c]) {
      atomicMax(&max_length[c], (u64)length);
    }
  }
}

extern "C" __global__ void gather_ragged(const RaggedColumn* __restrict__ cols, i64 n_cols,
                                         const i64* __restrict__ rows, i64 n_rows) {
  GN_GRID_STRIDE(t, n_cols * n_rows * 32) {
    const i64 lane = t & 31, item = t >> 5;
    const i64 c = div_nonneg(item, n_rows), i = item - c * n_rows;
    const RaggedColumn col = cols[c];
    const i64 r = rows[i];
    const i64 src = col.offsets[r], length = col.offsets[r + 1] - src;
    if (col.width == 0) {
      const i64 dst = col.out_offsets[i];
      for (i64 q = lane; q < length; q += 32) copy_element(col.out, dst + q, col.values, src + q, col.value_bytes);
    } else {
      const i64 dst = i * col.width;
      for (i64 q = lane; q < col.width; q += 32) col.out[dst + q] = q < length ? col.values[src + q] : 0;
    }
  }
}
