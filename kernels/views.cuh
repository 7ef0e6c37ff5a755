// Structs the kernels read: the index and the column descriptors of a pack request, which
// the host writes into device memory (8-byte fields only: pointers and counts), and the
// exclusion set of a sampling request, which the sampling kernels assemble from their
// parameters (its arrays are staged with the request, so no struct needs uploading).
// gpu_negsample/backends/kernel_views.py reads the field order from this file, so the
// host and the kernels cannot disagree on the layout.
#pragma once
#include "types.cuh"

struct IndexView {
  const i64* id_slots;
  i64 id_capacity;
  const i64* cat_slots;
  i64 cat_capacity;
  const i64* seg_offsets;
  const i64* seg_rows;
  const i64* seg_ids;
  const u64* seg_weights;
  const u32* seg_alias;
  const u64* seg_total;
  const i64* seg_head;
  const u64* seg_head_mass;
  const i64* item_cat_offsets;
  const i64* item_seg;
  const u64* item_weights;
};

struct ExclusionView {
  const i64* own_offsets;
  const i64* own_ids;
  i64 use_batch;
  const i64* batch_slots;
  i64 batch_capacity;
  const u64* batch_head_mass;
  const u64* batch_tail_mass;
  const u64* batch_cum;
};

// One dense column of a pack request: output row i is source row rows[i], row_words words
// of word_bytes (16, 8, 4, 2 or 1) each; first_word is where the column's words start in
// the sequence of all dense columns' words (one launch gathers them all).
struct DenseColumn {
  const u8* src;
  u8* dst;
  i64 row_words;
  i64 word_bytes;
  i64 first_word;
};

// One ragged or string column of a pack request (a ragged column's weights are one more,
// with its offsets). Measuring (ragged_lengths): only values, offsets, value_bytes and width
// (0: ragged, < 0: strings) are read. Gathering: a ragged column's values go to out at
// out_offsets (n + 1, the scanned lengths); a string column's rows to out as n rows of width
// bytes, NUL-padded.
struct RaggedColumn {
  const u8* values;
  const i64* offsets;
  u8* out;
  i64* out_offsets;
  i64 value_bytes;
  i64 width;
};
