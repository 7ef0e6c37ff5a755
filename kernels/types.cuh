// Fixed-width integer names shared by every kernel. NVRTC has no <cstdint>; the CPU
// emulation (emulation/cuda_shim.h) maps the same names to the same widths.
#pragma once

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define GN_INLINE __forceinline__ __device__

// a / b for a >= 0, b > 0, in 32-bit arithmetic when both fit (a 64-bit division costs
// several times a 32-bit one on a GPU, and row-of-draw / row-of-word divisions run per item).
GN_INLINE i64 div_nonneg(i64 a, i64 b) {
  return ((u64)(a | b) >> 32) == 0 ? (i64)((u32)a / (u32)b) : a / b;
}

// Grid-stride loop: the same kernel runs correctly on any grid the host picks.
#define GN_GRID_STRIDE(t, n) \
  for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < (n); t += (i64)gridDim.x * blockDim.x)
