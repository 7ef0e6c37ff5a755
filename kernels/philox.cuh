// Philox4x32-10 and the integer helpers every draw decision uses. Bit for bit the same as
// gpu_negsample/rng.py: key (k0, k1) = the seed's low and high words; counter
// (call, row, draw, attempt). See kernels/README.md for how the four words are spent.
#pragma once
#include "types.cuh"

struct Philox4 {
  u32 r0, r1, r2, r3;
};

GN_INLINE Philox4 philox4x32_10(u32 c0, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1) {
  const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += W0;
      k1 += W1;
    }
    const u32 hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
    const u32 hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
    const u32 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{c0, c1, c2, c3};
}

// High 64 bits of a 64x64-bit product: a uniform u scaled to [0, n) without bias beyond 2^-64.
GN_INLINE u64 mulhi64(u64 a, u64 b) { return __umul64hi(a, b); }

// floor(r * total / 2^32) for a 32-bit r and total < 2^63, exactly.
GN_INLINE u64 mul32hi(u32 r, u64 total) {
  return (u64)r * (total >> 32) + (((u64)r * (total & 0xFFFFFFFFull)) >> 32);
}

GN_INLINE u64 uniform64(const Philox4& r) { return (u64)r.r0 | ((u64)r.r1 << 32); }
