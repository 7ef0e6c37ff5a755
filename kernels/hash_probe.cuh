// Probe of the open-addressing (key, value) tables built by gpu_negsample/hashing.py:
// capacity a power of two, home slot splitmix64(key) & (capacity - 1), linear probing,
// empty slots hold INT64_MIN. A slot is 16 bytes, read with one vector load.
#pragma once
#include "types.cuh"

#define GN_EMPTY_KEY (-9223372036854775807LL - 1)
#define GN_NOT_FOUND (-1LL)

GN_INLINE u64 splitmix64(i64 key) {
  u64 z = (u64)key;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// GN_EMPTY_KEY is never present: it would match an empty slot, whose value word is not a row.
GN_INLINE i64 probe(const i64* __restrict__ slots, i64 capacity, i64 key) {
  if (key == GN_EMPTY_KEY) return GN_NOT_FOUND;
  const longlong2* pairs = reinterpret_cast<const longlong2*>(slots);
  const u64 mask = (u64)capacity - 1;
  for (u64 slot = splitmix64(key) & mask;; slot = (slot + 1) & mask) {
    const longlong2 held = pairs[slot];
    if (held.x == key) return held.y;
    if (held.x == GN_EMPTY_KEY) return GN_NOT_FOUND;
  }
}

// Inserts key into a per-request set of such slots (every key word starting as GN_EMPTY_KEY);
// the value word becomes 0, so probe() finds the key (>= 0). True when this call inserted
// it, false when another thread had: each distinct key is inserted by exactly one thread.
GN_INLINE bool insert_key(i64* __restrict__ slots, i64 capacity, i64 key) {
  const u64 mask = (u64)capacity - 1;
  for (u64 slot = splitmix64(key) & mask;; slot = (slot + 1) & mask) {
    u64* word = reinterpret_cast<u64*>(slots + 2 * slot);
    const u64 held = atomicCAS(word, (u64)GN_EMPTY_KEY, (u64)key);
    if (held == (u64)GN_EMPTY_KEY) {
      slots[2 * slot + 1] = 0;
      return true;
    }
    if (held == (u64)key) return false;
  }
}
