// The index and the exclusion set as the sampling kernels read them: structs of 8-byte
// fields (pointers and counts) written by the host into one small device buffer.
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
  const i64* own_rows;
  i64 use_batch;
  const i64* batch_slots;
  i64 batch_capacity;
  const u64* batch_head_mass;
  const u64* batch_tail_mass;
  const i64* batch_table_start;
  const u32* batch_alias;
};
