// The MFMA GEMM mainloop of the hip backend (CDNA2 gfx90a, CDNA3 gfx94x), as device
// building blocks: the GEMM (gemm_hip_mfma.hip) and the NHWC implicit-GEMM conv2d
// (conv2d_hip.hip) run the same mainloop with their own operand loaders and epilogues.
// HIP only: the NVIDIA mainloops (mma.sync, wgmma) are in gemm_cuda_sm80.cu / _sm90.cu.
//
// Block tile (BLK_M, BLK_N, BLK_K) = (128, 128, 32), 256 threads = 4 wavefronts of 64 as
// 2 (M) x 2 (N); wavefront w owns a (64, 64) tile of c as 2 x 2 MFMA tiles of (32, 32), each
// the 16 f32 accumulators per lane of v_mfma_f32_32x32x8{bf16_1k,f16}. One MFMA multiplies
// A (32, 8) by B (8, 32):
//   A operand: lane l holds A[l % 32][4 * (l / 32) + 0..3]      (4 16-bit values, 8 bytes)
//   B operand: lane l holds B[4 * (l / 32) + 0..3][l % 32]
//   C / D:     lane l holds C[8 * (r / 4) + 4 * (l / 32) + r % 4][l % 32], r = 0..15
// so both operands are read as 8 contiguous bytes along k from tiles stored k-contiguous:
//   A tile (BLK_M rows, BLK_K k)  and  B^T tile (BLK_N rows, BLK_K k)  in LDS.
// A row of a tile is 4 chunks of 16 bytes; chunk c of row r is stored at c ^ ((r >> 1) & 3)
// so that the 32 rows one MFMA operand read touches spread over the LDS banks.
//
// Pipeline: global -> registers -> LDS, two LDS stages. Tile k+1 is fetched into registers
// while tile k is multiplied, then written to the other stage; one barrier per k tile.
// gfx90a has no asynchronous global-to-LDS copy of 16-byte chunks (cp.async's analogue),
// so the register staging is the double buffer. LDS: 2 stages x (8 + 8) KiB = 32 KiB.
//
// Edges: chunks past the matrix (rows past m / n, k past K) are zero in LDS, so they add
// nothing; a chunk that straddles K is loaded element by element. Epilogues predicate on
// (row, col).
#pragma once

#include <cstdint>
#include <type_traits>

#include "backends/gpu/gpu_portability.h"

static_assert(ANVIL_GPU_HIP, "the MFMA mainloop is HIP code");

// The v_mfma_f32_32x32x8bf16_1k / _f16 instructions exist on gfx90a and gfx94x. In the
// device pass for any other target the mainloop compiles to nothing, and the records
// refuse such devices at run time (hip_gemm::mfma_arch_supported).
#if defined(__HIP_DEVICE_COMPILE__) && \
    (defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__))
#define ANVIL_HIP_MFMA_32X32X8 1
#else
#define ANVIL_HIP_MFMA_32X32X8 0
#endif

namespace anvil::hip_mfma {

typedef float floatx16 __attribute__((ext_vector_type(16)));
typedef unsigned int u32x4 __attribute__((ext_vector_type(4)));  // one 16-byte chunk
typedef unsigned int u32x2 __attribute__((ext_vector_type(2)));  // one MFMA operand (4 x 16 bit)
typedef short shortx4 __attribute__((ext_vector_type(4)));
typedef _Float16 halfx4 __attribute__((ext_vector_type(4)));

// ------------------------------------------------------------------ config
constexpr int kWave = 64;
constexpr int kBlockM = 128, kBlockN = 128, kBlockK = 32;
constexpr int kWavesM = 2, kWavesN = 2;
constexpr int kThreads = kWave * kWavesM * kWavesN;
constexpr int kWaveTileM = kBlockM / kWavesM, kWaveTileN = kBlockN / kWavesN;  // (64, 64)
constexpr int kMfmaM = 32, kMfmaN = 32, kMfmaK = 8;
constexpr int kTilesM = kWaveTileM / kMfmaM, kTilesN = kWaveTileN / kMfmaN;  // 2 x 2 MFMA tiles
constexpr int kChunk = 8;                                // 16-bit elements per 16-byte chunk
constexpr int kChunksPerRow = kBlockK / kChunk;          // 4
constexpr int kTileChunks = kBlockM * kChunksPerRow;     // chunks of one operand tile (512)
constexpr int kChunksPerThread = kTileChunks / kThreads;  // 2
constexpr int kStageChunks = 2 * kTileChunks;            // A + B^T
constexpr int kLdsChunks = 2 * kStageChunks;             // two stages: 32 KiB
static_assert(kBlockM == kBlockN, "A and B^T stage tiles have the same shape");
static_assert(kMfmaK == kChunk, "one MFMA k step is one 16-byte chunk of a row");
static_assert(kChunksPerRow == 4, "the swizzle permutes 4 chunks per row");
static_assert(kTileChunks % kThreads == 0, "every thread copies the same number of chunks");

// Chunk index of (row, chunk) in a swizzled (rows, kBlockK) tile.
__device__ __forceinline__ int chunk_index(int row, int chunk) {
  return row * kChunksPerRow + (chunk ^ ((row >> 1) & 3));
}

// ------------------------------------------------------------------ MFMA per element type
template <class T> __device__ __forceinline__ floatx16 mfma_32x32x8(u32x2 a, u32x2 b, floatx16 c) {
#if ANVIL_HIP_MFMA_32X32X8
  if constexpr (std::is_same_v<T, gpu::bfloat16>)
    return __builtin_amdgcn_mfma_f32_32x32x8bf16_1k(__builtin_bit_cast(shortx4, a), __builtin_bit_cast(shortx4, b),
                                                     c, 0, 0, 0);
  else
    return __builtin_amdgcn_mfma_f32_32x32x8f16(__builtin_bit_cast(halfx4, a), __builtin_bit_cast(halfx4, b), c, 0,
                                                0, 0);
#else
  (void)a, (void)b;
  return c;
#endif
}

// 16-bit values as raw bits: the loaders copy bits, the epilogues convert with gpu::to_f32.
__device__ __forceinline__ u32x4 load_chunk(const void* p) { return *static_cast<const u32x4*>(p); }

// Element i (0..7) of a chunk, and a chunk of the first `valid` elements at p (the rest 0).
// Shifts and selects on whole registers: a local array indexed this way could land in
// scratch memory.
__device__ __forceinline__ uint16_t chunk_element(const u32x4& v, int i) {
  return uint16_t(v[i / 2] >> (16 * (i % 2)));
}
__device__ __forceinline__ u32x4 load_partial_chunk(const uint16_t* p, int valid) {
  u32x4 v = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int i = 0; i < kChunk; ++i)
    if (i < valid) v[i / 2] |= uint32_t(p[i]) << (16 * (i % 2));
  return v;
}

// ------------------------------------------------------------------ loaders
// Each loader fetches one operand's (BLK rows, BLK_K) tile of k tile `k0` into registers
// (kChunksPerThread chunks per thread) and stashes them into a swizzled LDS tile.

// Rows with k contiguous: element (row, k) at base[row * ld + k]; `rows` x `cols` valid.
// Requires base 16-byte aligned and ld % 8 == 0 (whole chunks start aligned).
template <class T> struct KContiguous {
  const uint16_t* base;
  int64_t ld, rows, cols, row0;

  __device__ void fetch(int64_t k0, u32x4 (&r)[kChunksPerThread]) const {
#pragma unroll
    for (int j = 0; j < kChunksPerThread; ++j) {
      const int chunk = int(threadIdx.x) + j * kThreads;
      const int64_t row = row0 + chunk / kChunksPerRow, k = k0 + (chunk % kChunksPerRow) * kChunk;
      u32x4 v = {0u, 0u, 0u, 0u};
      if (row < rows && k < cols) {
        const uint16_t* src = base + row * ld + k;
        if (k + kChunk <= cols) {
          v = load_chunk(src);
        } else {  // the chunk straddles the end of k
          v = load_partial_chunk(src, int(cols - k));
        }
      }
      r[j] = v;
    }
  }
  __device__ void stash(u32x4* tile, const u32x4 (&r)[kChunksPerThread]) const {
#pragma unroll
    for (int j = 0; j < kChunksPerThread; ++j) {
      const int chunk = int(threadIdx.x) + j * kThreads;
      tile[chunk_index(chunk / kChunksPerRow, chunk % kChunksPerRow)] = r[j];
    }
  }
};

// Rows contiguous (the operand transposed in memory): element (row, k) at base[k * ld + row].
// A thread fetches 8 consecutive rows of one k and stashes them as 8 16-bit LDS writes
// (the transpose). Requires base 16-byte aligned and ld % 8 == 0.
template <class T> struct RowsContiguous {
  const uint16_t* base;
  int64_t ld, rows, cols, row0;
  static constexpr int kChunksPerK = kBlockM / kChunk;  // 16 chunks of rows per k

  __device__ void fetch(int64_t k0, u32x4 (&r)[kChunksPerThread]) const {
#pragma unroll
    for (int j = 0; j < kChunksPerThread; ++j) {
      const int chunk = int(threadIdx.x) + j * kThreads;
      const int64_t k = k0 + chunk / kChunksPerK, row = row0 + (chunk % kChunksPerK) * kChunk;
      u32x4 v = {0u, 0u, 0u, 0u};
      if (k < cols && row < rows) {
        const uint16_t* src = base + k * ld + row;
        if (row + kChunk <= rows) {
          v = load_chunk(src);
        } else {  // the chunk straddles the last row
          v = load_partial_chunk(src, int(rows - row));
        }
      }
      r[j] = v;
    }
  }
  __device__ void stash(u32x4* tile, const u32x4 (&r)[kChunksPerThread]) const {
    uint16_t* halves = reinterpret_cast<uint16_t*>(tile);
#pragma unroll
    for (int j = 0; j < kChunksPerThread; ++j) {
      const int chunk = int(threadIdx.x) + j * kThreads;
      const int k = chunk / kChunksPerK, row = (chunk % kChunksPerK) * kChunk;
#pragma unroll
      for (int i = 0; i < kChunk; ++i)
        halves[chunk_index(row + i, k / kChunk) * kChunk + k % kChunk] = chunk_element(r[j], i);
    }
  }
};

// ------------------------------------------------------------------ mainloop
// acc[i][j] += A (rows wave_m + 32 i .., all k) B^T (rows wave_n + 32 j .., all k) over
// k_tiles tiles of BLK_K. `lds` holds kLdsChunks chunks. Every thread of the block calls it.
template <class T, class LoadA, class LoadB>
__device__ __forceinline__ void mainloop(const LoadA& load_a, const LoadB& load_b, int64_t k_tiles,
                                         floatx16 (&acc)[kTilesM][kTilesN], u32x4* lds) {
  const int lane = int(threadIdx.x) % kWave, wave = int(threadIdx.x) / kWave;
  const int wave_m = (wave / kWavesN) * kWaveTileM, wave_n = (wave % kWavesN) * kWaveTileN;
  const int half = lane / 32;  // which 4 k of the 8 this lane's operands hold

  u32x4 ra[kChunksPerThread], rb[kChunksPerThread];
  if (k_tiles > 0) {
    load_a.fetch(0, ra);
    load_b.fetch(0, rb);
    load_a.stash(lds, ra);
    load_b.stash(lds + kTileChunks, rb);
  }
  __syncthreads();
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int stage = int(kt & 1);
    const bool more = kt + 1 < k_tiles;
    if (more) {
      load_a.fetch((kt + 1) * kBlockK, ra);
      load_b.fetch((kt + 1) * kBlockK, rb);
    }
    const u32x4* tile_a = lds + stage * kStageChunks;
    const u32x4* tile_b = tile_a + kTileChunks;
#pragma unroll
    for (int ks = 0; ks < kChunksPerRow; ++ks) {
      u32x2 fa[kTilesM], fb[kTilesN];
#pragma unroll
      for (int i = 0; i < kTilesM; ++i)
        fa[i] = reinterpret_cast<const u32x2*>(tile_a + chunk_index(wave_m + i * kMfmaM + lane % 32, ks))[half];
#pragma unroll
      for (int j = 0; j < kTilesN; ++j)
        fb[j] = reinterpret_cast<const u32x2*>(tile_b + chunk_index(wave_n + j * kMfmaN + lane % 32, ks))[half];
#pragma unroll
      for (int i = 0; i < kTilesM; ++i)
#pragma unroll
        for (int j = 0; j < kTilesN; ++j) acc[i][j] = mfma_32x32x8<T>(fa[i], fb[j], acc[i][j]);
    }
    if (more) {
      u32x4* next = lds + (stage ^ 1) * kStageChunks;
      load_a.stash(next, ra);
      load_b.stash(next + kTileChunks, rb);
    }
    __syncthreads();  // the stage just written is complete; the one just read is free
  }
}

// Row and column (within the block tile) of accumulator r of MFMA tile (i, j) for this lane.
__device__ __forceinline__ int acc_row(int i, int r) {
  const int lane = int(threadIdx.x) % kWave, wave = int(threadIdx.x) / kWave;
  return (wave / kWavesN) * kWaveTileM + i * kMfmaM + 8 * (r / 4) + 4 * (lane / 32) + r % 4;
}
__device__ __forceinline__ int acc_col(int j) {
  const int lane = int(threadIdx.x) % kWave, wave = int(threadIdx.x) / kWave;
  return (wave % kWavesN) * kWaveTileN + j * kMfmaN + lane % 32;
}

}  // namespace anvil::hip_mfma
