// Fixed-width integer names shared by every kernel. NVRTC has no <cstdint>; the CPU
// emulation (emulation/cuda_shim.h) maps the same names to the same widths.
#pragma once

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define GN_INLINE __forceinline__ __device__

// Grid-stride loop: the same kernel runs correctly on any grid the host picks.
#define GN_GRID_STRIDE(t, n) \
  for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < (n); t += (i64)gridDim.x * blockDim.x)
