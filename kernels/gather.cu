// Feature gather: dense rows as machine words (coalesced: consecutive threads read
// consecutive words of a row), ragged rows (lengths -> scan on the host side -> copy),
// strings to fixed-width byte rows. The CUDA twin of backends/cpu/gather.py.
#include "types.cuh"

template <typename W>
GN_INLINE void gather_words(const W* __restrict__ values, i64 width, const i64* __restrict__ rows, i64 n_rows,
                            W* __restrict__ out) {
  GN_GRID_STRIDE(t, n_rows * width) {
    const i64 i = t / width, c = t - i * width;
    out[t] = values[rows[i] * width + c];
  }
}

// out[i, :] = values[rows[i], :], a row being `width` words of 1, 2, 4, 8 or 16 bytes.
extern "C" __global__ void gather_words_1(const u8* values, i64 width, const i64* rows, i64 n_rows, u8* out) {
  gather_words(values, width, rows, n_rows, out);
}
extern "C" __global__ void gather_words_2(const u16* values, i64 width, const i64* rows, i64 n_rows, u16* out) {
  gather_words(values, width, rows, n_rows, out);
}
extern "C" __global__ void gather_words_4(const u32* values, i64 width, const i64* rows, i64 n_rows, u32* out) {
  gather_words(values, width, rows, n_rows, out);
}
extern "C" __global__ void gather_words_8(const u64* values, i64 width, const i64* rows, i64 n_rows, u64* out) {
  gather_words(values, width, rows, n_rows, out);
}
extern "C" __global__ void gather_words_16(const uint4* values, i64 width, const i64* rows, i64 n_rows, uint4* out) {
  gather_words(values, width, rows, n_rows, out);
}

// out_lengths[i] = length of row rows[i] of a ragged column.
extern "C" __global__ void gather_lengths(const i64* __restrict__ offsets, const i64* __restrict__ rows, i64 n_rows,
                                          i64* __restrict__ out_lengths) {
  GN_GRID_STRIDE(i, n_rows) { out_lengths[i] = offsets[rows[i] + 1] - offsets[rows[i]]; }
}

template <typename W>
GN_INLINE void gather_ragged(const W* __restrict__ values, const i64* __restrict__ offsets,
                             const i64* __restrict__ rows, i64 n_rows, const i64* __restrict__ out_offsets,
                             W* __restrict__ out) {
  GN_GRID_STRIDE(i, n_rows) {
    const i64 src = offsets[rows[i]], dst = out_offsets[i];
    for (i64 q = 0; q < out_offsets[i + 1] - dst; ++q) out[dst + q] = values[src + q];
  }
}

// Ragged values of 1, 2, 4 or 8 bytes: row i's values to out[out_offsets[i]:out_offsets[i + 1]].
extern "C" __global__ void gather_ragged_1(const u8* values, const i64* offsets, const i64* rows, i64 n_rows,
                                           const i64* out_offsets, u8* out) {
  gather_ragged(values, offsets, rows, n_rows, out_offsets, out);
}
extern "C" __global__ void gather_ragged_2(const u16* values, const i64* offsets, const i64* rows, i64 n_rows,
                                           const i64* out_offsets, u16* out) {
  gather_ragged(values, offsets, rows, n_rows, out_offsets, out);
}
extern "C" __global__ void gather_ragged_4(const u32* values, const i64* offsets, const i64* rows, i64 n_rows,
                                           const i64* out_offsets, u32* out) {
  gather_ragged(values, offsets, rows, n_rows, out_offsets, out);
}
extern "C" __global__ void gather_ragged_8(const u64* values, const i64* offsets, const i64* rows, i64 n_rows,
                                           const i64* out_offsets, u64* out) {
  gather_ragged(values, offsets, rows, n_rows, out_offsets, out);
}

// Row i's bytes into out[i, :width] (out zero-filled beforehand, width >= the longest row).
extern "C" __global__ void strings_to_fixed_width(const u8* __restrict__ data, const i64* __restrict__ offsets,
                                                  i64 n_rows, i64 width, u8* __restrict__ out) {
  GN_GRID_STRIDE(i, n_rows) {
    const i64 lo = offsets[i];
    for (i64 q = 0; q < offsets[i + 1] - lo; ++q) out[i * width + q] = data[lo + q];
  }
}
