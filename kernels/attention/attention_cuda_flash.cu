// FlashAttention-2 forward on tensor cores (mma.sync m16n8k16, f32 accumulate) for bf16
// and f16, sm_80 and newer (the same code runs on sm_90a).
//
// One CTA = BLK_M (128) query rows of one (batch, head), 4 warps; warp w owns rows
// [32w, 32w + 32) as two m16 tiles, so every row's softmax statistics live in one warp
// (a row is spread over the 4 lanes of a quad) and no cross-warp reduction is needed; the
// two m16 tiles share every K and V fragment a warp reads. The CTA walks the keys in
// double-buffered tiles of BLK_N (64 for d = 128, 128 for d = 64) and computes each tile
// in two steps of STEP_N = BLK_N / 2 keys:
//
//   S (32, STEP_N)   = Q (32, D) K^T          per warp, f32 registers, Q and K by ldmatrix
//   online softmax over S rows                f32: running max m, running sum l
//   P (32, STEP_N)   = exp2(S * scale*log2e - m), rounded to the element type in
//                      registers: S's accumulator layout of two n8 tiles is exactly
//                      the A-operand layout of one k16 step (the FA2 register trick)
//   O (32, D)       += P V                    f32 registers, V by ldmatrix.trans
//
// Registers per thread: O 2*(D/8)*4 and S 2*(STEP_N/8)*4 floats (d = 128: 128 + 32,
// d = 64: 64 + 64). Whole-tile steps (S of 64 more floats) spill past 255 registers.
// Q stays in shared memory (in registers it would not fit beside O).
//
// Shared memory (element type T, 2 bytes): Q (BLK_M, D) + 2 stages of K (BLK_N, D) and
// V (BLK_N, D): d = 128: 32 + 2*(16 + 16) KiB = 96 KiB; d = 64: 16 + 2*(16 + 16) = 80 KiB.
// Every row is stored as 16-byte chunks with chunk' = chunk ^ (row % 8), so the 8 rows an
// ldmatrix phase reads (and the 8 rows a quad-striped store writes) hit distinct banks.
// The epilogue reuses each warp's own 32 rows of the Q buffer to stage O for 16-byte stores.
//
// Pipeline: tile j+1 of K and V is fetched with cp.async into the other stage while tile j
// is computed; one __syncthreads per tile both publishes tile j and retires the stage that
// the next fetch overwrites. Out-of-range rows are zero-filled (cp.async src-size 0) and
// out-of-range / causal-masked keys get S = -inf before the softmax; rows >= lq are never
// stored. causal (top-left, as torch): query i sees keys j <= i, so tiles whose first key
// is past the CTA's last row are never loaded, a warp skips steps past its own last row,
// and only steps crossing the warp's diagonal (or lk) pay for the mask.
// GQA: head h reads kv head h / (heads / kv_heads) straight from K and V.

#include <cmath>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backends/cuda/cuda_runtime.h"
#include "kernels/attention/attention_cuda.h"

namespace anvil::cuda_attention {
namespace {

// ---------------------------------------------------------------------------------------
// Config

constexpr int kWarpSize = 32;
constexpr int kChunkElems = 8;  // 16-byte chunk of 2-byte elements: one cp.async / ldmatrix row
constexpr int kSwizzleRows = 8;  // rows in one ldmatrix 8x8 matrix
constexpr int64_t kMaxLength = int64_t(1) << 30;  // lq, lk: row indices + a tile stay in int
constexpr int kMaxGridYZ = 65535;
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kLog2e = 1.442695040888963407f;

template <typename T, int HEAD_DIM>
struct FlashConfig {
  static constexpr int kBlockM = 128;                          // query rows per CTA
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kWarpRows = kBlockM / kWarps;           // 32 rows per warp
  static constexpr int kMTiles = kWarpRows / 16;               // m16 tiles per warp
  static constexpr int kBlockN = HEAD_DIM == 64 ? 128 : 64;    // keys per K/V tile
  static constexpr int kStepN = kBlockN / 2;                   // keys per S / softmax / PV step
  static constexpr int kNTiles = kStepN / 8;                   // n8 tiles of S per m16 tile
  static constexpr int kDTiles = HEAD_DIM / 8;                 // n8 tiles of O per m16 tile
  static constexpr int kChunksPerRow = HEAD_DIM / kChunkElems;
  static constexpr int kStages = 2;
  static constexpr int kQElems = kBlockM * HEAD_DIM;           // (BLK_M, D)
  static constexpr int kKVElems = kBlockN * HEAD_DIM;          // (BLK_N, D)
  static constexpr int kSmemBytes =
      int((kQElems + 2 * kStages * kKVElems) * sizeof(T));     // Q + stages of K and V

  static_assert(sizeof(T) == 2, "16-bit element types only");
  static_assert(HEAD_DIM == 64 || HEAD_DIM == 128, "head_dim 64 or 128");
  static_assert(kWarpRows % 16 == 0 && kStepN % 16 == 0 && HEAD_DIM % 16 == 0,
                "mma m16n8k16 tiling");
  static_assert(kBlockN % kStepN == 0, "a K/V tile is whole steps");
  static_assert(kChunksPerRow >= kSwizzleRows, "the XOR swizzle must stay inside a row");
  static_assert((kBlockM * kChunksPerRow) % kThreads == 0, "Q tile splits evenly");
  static_assert((kBlockN * kChunksPerRow) % kThreads == 0, "K/V tile splits evenly");
  static_assert((kWarpRows * kChunksPerRow) % kWarpSize == 0, "O rows split evenly");
};

// Pointers and element strides of one launch; lengths fit in int (checked on the host).
template <typename T>
struct FlashParams {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  float* lse;  // may be null
  int64_t q_batch, q_head, q_row;
  int64_t k_batch, k_head, k_row;
  int64_t v_batch, v_head, v_row;
  int64_t o_batch, o_head, o_row;
  int64_t lse_batch, lse_head, lse_row;
  int lq, lk;
  int heads_per_kv;
  float scale_log2;  // scale * log2(e): softmax runs in exp2
  bool causal;
};

// ---------------------------------------------------------------------------------------
// Device primitives

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Element offset of (row, col) in a (rows, HEAD_DIM) swizzled tile.
template <int HEAD_DIM>
__device__ __forceinline__ int swizzled(int row, int col) {
  const int chunk = (col / kChunkElems) ^ (row % kSwizzleRows);
  return row * HEAD_DIM + chunk * kChunkElems + col % kChunkElems;
}

// 16 bytes global -> shared; valid == false zero-fills without reading `src`.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// 2^x on the SFU (max relative error ~2^-22, far below P's 16-bit rounding); -inf -> 0.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The mma and the f32 -> 16-bit pair conversion per element type. pack(lo, hi) puts `lo`
// in the low half, the lower column of an mma fragment pair.
template <typename T>
struct Element;

template <>
struct Element<__half> {
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

template <>
struct Element<__nv_bfloat16> {
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

// ---------------------------------------------------------------------------------------
// Load: a (ROWS, HEAD_DIM) tile whose row 0 is `src`; rows >= rows_valid are zero-filled.
// Thread t copies chunk t % CHUNKS of rows t / CHUNKS + i * kRowStep: the column and the
// swizzle key (kRowStep is a multiple of 8) are fixed per thread, and the source pointer
// advances by one add per copy.

template <typename Cfg, int ROWS, int HEAD_DIM, typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t row_stride,
                                          int rows_valid, int tid) {
  constexpr int kRowStep = Cfg::kThreads / Cfg::kChunksPerRow;
  static_assert(Cfg::kThreads % Cfg::kChunksPerRow == 0 && kRowStep % kSwizzleRows == 0,
                "a thread keeps its column and swizzle key");
  static_assert(ROWS % kRowStep == 0, "the tile splits evenly over the threads");
  const int row0 = tid / Cfg::kChunksPerRow;
  const int col = (tid % Cfg::kChunksPerRow) * kChunkElems;
  const uint32_t dst = smem_addr(tile + swizzled<HEAD_DIM>(row0, col));
  const T* from = src + int64_t(row0) * row_stride + col;
  const int64_t step = int64_t(kRowStep) * row_stride;
#pragma unroll
  for (int i = 0; i < ROWS / kRowStep; ++i) {
    const bool valid = row0 + i * kRowStep < rows_valid;
    cp_async_16(dst + uint32_t(i * kRowStep * HEAD_DIM * int(sizeof(T))), valid ? from : src,
                valid);
    from += step;
  }
}

// ---------------------------------------------------------------------------------------
// The kernel: grid (query blocks, heads, batch), Cfg::kThreads threads.

template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(FlashConfig<T, HEAD_DIM>::kThreads)
    flash_forward_kernel(const FlashParams<T> p) {
  using Cfg = FlashConfig<T, HEAD_DIM>;
  using E = Element<T>;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kStepN = Cfg::kStepN;
  constexpr int kMTiles = Cfg::kMTiles, kNTiles = Cfg::kNTiles, kDTiles = Cfg::kDTiles;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* const sQ = reinterpret_cast<T*>(smem_raw);  // (BLK_M, D)
  T* const sK = sQ + Cfg::kQElems;                // kStages x (BLK_N, D)
  T* const sV = sK + Cfg::kStages * Cfg::kKVElems;  // kStages x (BLK_N, D)

  const int tid = threadIdx.x;
  const int warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int quad_row = lane / 4;  // mma "groupID": fragment row (and row + 8)
  const int quad_col = lane % 4;  // fragment columns 2*quad_col, 2*quad_col + 1

  // Causal CTAs near the end of the sequence do the most work: start them first.
  const int m_block = p.causal ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
  const int head = blockIdx.y, batch = blockIdx.z;
  const int kv_head = head / p.heads_per_kv;
  const int m0 = m_block * kBlockM;
  const int warp_m0 = m0 + warp * Cfg::kWarpRows;  // this warp's first query row

  const T* q = p.q + int64_t(batch) * p.q_batch + int64_t(head) * p.q_head;
  const T* k = p.k + int64_t(batch) * p.k_batch + int64_t(kv_head) * p.k_head;
  const T* v = p.v + int64_t(batch) * p.v_batch + int64_t(kv_head) * p.v_head;

  // Keys this CTA needs: [0, n_end). causal: its last row m0 + BLK_M - 1 sees keys <= it.
  const int n_end = p.causal ? min(p.lk, m0 + kBlockM) : p.lk;
  const int n_blocks = (n_end + kBlockN - 1) / kBlockN;

  load_tile<Cfg, kBlockM, HEAD_DIM>(sQ, q + int64_t(m0) * p.q_row, p.q_row, p.lq - m0, tid);
  if (n_blocks > 0) {
    load_tile<Cfg, kBlockN, HEAD_DIM>(sK, k, p.k_row, p.lk, tid);
    load_tile<Cfg, kBlockN, HEAD_DIM>(sV, v, p.v_row, p.lk, tid);
  }
  cp_async_commit();

  float acc_o[kMTiles][kDTiles][4];  // O (32, D) of this warp, mma C layout
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.0f;
  // Per fragment row [mt][half] (half 0: row quad_row, 1: row quad_row + 8): the running
  // max of scale*log2e*S (log2 units) and this lane's share of the running sum of P.
  float row_max[kMTiles][2], row_sum[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      row_max[mt][half] = -INFINITY;
      row_sum[mt][half] = 0.0f;
    }

  // ldmatrix addressing. Lane l addresses row l % 8 of 8x8 matrix l / 8; every other row
  // term is a multiple of 8, so the swizzle key is lane % 8. At 16-column step kk the lane
  // reads logical chunk 2kk + h (h: its matrix's column half), stored at chunk
  // (2kk + h) ^ (lane % 8) = (2kk & ~7) + ((2kk & 7) ^ h ^ (lane % 8)). In bytes the XOR
  // only touches bits 4-6 of a row offset (rows are 128 or 256 bytes), so one per-lane
  // tile offset `lane_off` = row * ROW_BYTES + (h ^ lane % 8) * 16 serves every step:
  //   offset(row0, kk) = (lane_off ^ (2kk & 7) * 16) + row0 * ROW_BYTES + (2kk & ~7) * 16
  // (one register per operand instead of one address per unrolled step).
  constexpr int kRowBytes = HEAD_DIM * int(sizeof(T));
  constexpr int kChunkBytes = kChunkElems * int(sizeof(T));
  static_assert(kRowBytes % (kSwizzleRows * kChunkBytes) == 0, "row offsets keep bits 4-6 clear");
  const int ld_row = lane % 8, ld_mat = lane / 8;
  // Q (A operand): matrices 0, 2 rows 0-7, 1, 3 rows 8-15; 2, 3 the second 8 columns.
  const uint32_t q_lane_off = uint32_t((warp * Cfg::kWarpRows + lane % 16) * kRowBytes +
                                       ((ld_mat / 2) ^ ld_row) * kChunkBytes);
  // K (B operand, keys x dims): matrices 0, 1 keys 0-7, 2, 3 keys 8-15; 1, 3 dims 8-15.
  const uint32_t k_lane_off =
      uint32_t(((ld_mat / 2) * 8 + ld_row) * kRowBytes + ((ld_mat % 2) ^ ld_row) * kChunkBytes);
  // V (B operand via .trans): matrices 0, 2 keys 0-7, 1, 3 keys 8-15; 2, 3 dims 8-15.
  const uint32_t v_lane_off =
      uint32_t(((ld_mat % 2) * 8 + ld_row) * kRowBytes + ((ld_mat / 2) ^ ld_row) * kChunkBytes);
  auto ld_addr = [](uint32_t tile, uint32_t lane_off, int row0, int kk) {
    return tile + (lane_off ^ uint32_t((2 * kk & 7) * kChunkBytes)) +
           uint32_t(row0 * kRowBytes + (2 * kk & ~7) * kChunkBytes);
  };
  const uint32_t sQ_addr = smem_addr(sQ);

  for (int j = 0; j < n_blocks; ++j) {
    cp_async_wait_all();
    __syncthreads();  // tile j visible to all; every warp is done with tile j - 1's stage
    if (j + 1 < n_blocks) {
      const int stage = (j + 1) % Cfg::kStages;
      const int n_next = (j + 1) * kBlockN;
      load_tile<Cfg, kBlockN, HEAD_DIM>(sK + stage * Cfg::kKVElems,
                                        k + int64_t(n_next) * p.k_row, p.k_row,
                                        p.lk - n_next, tid);
      load_tile<Cfg, kBlockN, HEAD_DIM>(sV + stage * Cfg::kKVElems,
                                        v + int64_t(n_next) * p.v_row, p.v_row,
                                        p.lk - n_next, tid);
    }
    cp_async_commit();

    const uint32_t sK_addr = smem_addr(sK + (j % Cfg::kStages) * Cfg::kKVElems);
    const uint32_t sV_addr = smem_addr(sV + (j % Cfg::kStages) * Cfg::kKVElems);
    // Not unrolled: overlapping the two steps' registers would spill.
#pragma unroll 1
    for (int step = 0; step < kBlockN / kStepN; ++step) {
      const int n0 = j * kBlockN + step * kStepN;  // first key of this step
      // Keys past lk, or (causal) past this warp's last row, would all get P = 0: the step
      // and the steps after it change nothing.
      if (n0 >= p.lk || (p.causal && n0 > warp_m0 + Cfg::kWarpRows - 1)) break;

      // ---- S (32, STEP_N) = Q (32, D) K^T ----
      float acc_s[kMTiles][kNTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] = 0.0f;

#pragma unroll
      for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
        // A (16, 16) of Q: matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15), lanes 0-15 the
        // first 8 columns.
        uint32_t q_frag[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          ldmatrix_x4(q_frag[mt], ld_addr(sQ_addr, q_lane_off, mt * 16, kk));
        }
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
          // B (16, 16 keys) of K^T, K row-major (keys, D) is B "col"-major: matrix m holds
          // keys 8*(m/2).. and dims 8*(m%2)..: regs {0,1} key tile 2np, {2,3} key tile 2np+1.
          uint32_t k_frag[4];
          ldmatrix_x4(k_frag, ld_addr(sK_addr, k_lane_off, step * kStepN + np * 16, kk));
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            E::mma(acc_s[mt][2 * np], q_frag[mt], k_frag[0], k_frag[1]);
            E::mma(acc_s[mt][2 * np + 1], q_frag[mt], k_frag[2], k_frag[3]);
          }
        }
      }

      // ---- scale (to log2 units) and mask ----
      // Masks are needed where the step runs past lk or, causal, crosses this warp's diagonal.
      const bool mask_keys = n0 + kStepN > p.lk;
      const bool mask_causal = p.causal && n0 + kStepN - 1 > warp_m0;
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float s = acc_s[mt][nt][e] * p.scale_log2;
            if (mask_keys || mask_causal) {
              const int row = warp_m0 + mt * 16 + quad_row + (e / 2) * 8;
              const int col = n0 + nt * 8 + quad_col * 2 + e % 2;
              if (col >= p.lk || (p.causal && col > row)) s = -INFINITY;
            }
            acc_s[mt][nt][e] = s;
          }

      // ---- online softmax: rescale O and l by exp2(m_old - m_new), P = exp2(S - m_new) ----
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float tile_max = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
            tile_max = fmaxf(tile_max,
                             fmaxf(acc_s[mt][nt][2 * half], acc_s[mt][nt][2 * half + 1]));
          // The 4 lanes of a quad share the row.
          tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
          tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
          const float new_max = fmaxf(row_max[mt][half], tile_max);
          // A row with no key yet keeps max -inf: subtract 0 instead so exp2 gives 0, not NaN.
          const float base = new_max == -INFINITY ? 0.0f : new_max;
          const float rescale = exp2_approx(row_max[mt][half] - base);
          row_max[mt][half] = new_max;
          float sum = row_sum[mt][half] * rescale;
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int e = 2 * half; e < 2 * half + 2; ++e) {
              const float prob = exp2_approx(acc_s[mt][nt][e] - base);
              acc_s[mt][nt][e] = prob;
              sum += prob;
            }
          row_sum[mt][half] = sum;
#pragma unroll
          for (int dt = 0; dt < kDTiles; ++dt) {
            acc_o[mt][dt][2 * half] *= rescale;
            acc_o[mt][dt][2 * half + 1] *= rescale;
          }
        }

      // ---- P to the element type, in the A layout: the C fragments of key tiles 2kc and
      // 2kc+1 are A's (cols 0-7 | 8-15) x (rows 0-7 | 8-15) registers of key step kc ----
      uint32_t p_frag[kMTiles][kNTiles / 2][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int kc = 0; kc < kNTiles / 2; ++kc) {
          p_frag[mt][kc][0] = E::pack(acc_s[mt][2 * kc][0], acc_s[mt][2 * kc][1]);
          p_frag[mt][kc][1] = E::pack(acc_s[mt][2 * kc][2], acc_s[mt][2 * kc][3]);
          p_frag[mt][kc][2] = E::pack(acc_s[mt][2 * kc + 1][0], acc_s[mt][2 * kc + 1][1]);
          p_frag[mt][kc][3] = E::pack(acc_s[mt][2 * kc + 1][2], acc_s[mt][2 * kc + 1][3]);
        }

      // ---- O (32, D) += P (32, STEP_N) V (STEP_N, D) ----
#pragma unroll
      for (int kc = 0; kc < kNTiles / 2; ++kc)
#pragma unroll
        for (int dp = 0; dp < kDTiles / 2; ++dp) {
          // B (16 keys, 16 dims) of V row-major (keys, D) via .trans: matrix m holds keys
          // 8*(m%2).. and dims 8*(m/2)..: regs {0,1} dim tile 2dp, {2,3} dim tile 2dp+1.
          uint32_t v_frag[4];
          ldmatrix_x4_trans(v_frag, ld_addr(sV_addr, v_lane_off, step * kStepN + kc * 16, dp));
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            E::mma(acc_o[mt][2 * dp], p_frag[mt][kc], v_frag[0], v_frag[1]);
            E::mma(acc_o[mt][2 * dp + 1], p_frag[mt][kc], v_frag[2], v_frag[3]);
          }
        }
    }
  }

  // ---- Store: O / l and lse = ln(2) * m + ln(l); a row that saw no key: 0 and -inf ----
  // Q's smem is reused for staging: wait for every copy into it (Q itself when n_blocks is
  // 0, issued by all threads) and for every warp's last ldmatrix of it.
  cp_async_wait_all();
  __syncthreads();

  T* const sO = sQ;  // this warp writes and reads only its own rows [32w, 32w + 32)
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = row_sum[mt][half];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int local_row = warp * Cfg::kWarpRows + mt * 16 + quad_row + half * 8;
      const int row = m0 + local_row;
      if (p.lse != nullptr && quad_col == 0 && row < p.lq) {
        const float lse = sum > 0.0f ? row_max[mt][half] * kLn2 + logf(sum) : -INFINITY;
        p.lse[int64_t(batch) * p.lse_batch + int64_t(head) * p.lse_head +
              int64_t(row) * p.lse_row] = lse;
      }
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        const uint32_t packed = E::pack(acc_o[mt][dt][2 * half] * inv_sum,
                                        acc_o[mt][dt][2 * half + 1] * inv_sum);
        *reinterpret_cast<uint32_t*>(sO + swizzled<HEAD_DIM>(local_row, dt * 8 + quad_col * 2)) =
            packed;
      }
    }
  __syncwarp();

  T* const out = p.out + int64_t(batch) * p.o_batch + int64_t(head) * p.o_head;
  constexpr int kStoresPerLane = Cfg::kWarpRows * Cfg::kChunksPerRow / kWarpSize;
#pragma unroll
  for (int i = 0; i < kStoresPerLane; ++i) {
    const int idx = lane + i * kWarpSize;
    const int local_row = warp * Cfg::kWarpRows + idx / Cfg::kChunksPerRow;
    const int col = (idx % Cfg::kChunksPerRow) * kChunkElems;
    const int row = m0 + local_row;
    if (row < p.lq) {
      *reinterpret_cast<uint4*>(out + int64_t(row) * p.o_row + col) =
          *reinterpret_cast<const uint4*>(sO + swizzled<HEAD_DIM>(local_row, col));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Host launcher

int64_t flash_smem_bytes(int64_t head_dim) {
  return head_dim == 64 ? FlashConfig<__half, 64>::kSmemBytes
                        : FlashConfig<__half, 128>::kSmemBytes;
}

Status operand_fits(const Operand& o, const char* name) {
  const std::string n = name;
  if (o.col_stride != 1)
    return unsupported("flash_sm80: " + n + " col_stride " + std::to_string(o.col_stride) +
                       " is not 1");
  if (o.batch_stride % kChunkElems != 0 || o.head_stride % kChunkElems != 0 ||
      o.row_stride % kChunkElems != 0)
    return unsupported("flash_sm80: " + n + " batch/head/row strides (" +
                       std::to_string(o.batch_stride) + ", " + std::to_string(o.head_stride) +
                       ", " + std::to_string(o.row_stride) +
                       ") are not multiples of 8 elements (16 bytes)");
  if (reinterpret_cast<uintptr_t>(o.data) % 16 != 0)
    return unsupported("flash_sm80: " + n + " data is not 16-byte aligned");
  return Status::Ok();
}

template <typename T, int HEAD_DIM>
Status launch(const Problem& p) {
  using Cfg = FlashConfig<T, HEAD_DIM>;
  FlashParams<T> f;
  f.q = static_cast<const T*>(p.q.data);
  f.k = static_cast<const T*>(p.k.data);
  f.v = static_cast<const T*>(p.v.data);
  f.out = static_cast<T*>(p.out.data);
  f.lse = static_cast<float*>(p.lse.data);
  f.q_batch = p.q.batch_stride, f.q_head = p.q.head_stride, f.q_row = p.q.row_stride;
  f.k_batch = p.k.batch_stride, f.k_head = p.k.head_stride, f.k_row = p.k.row_stride;
  f.v_batch = p.v.batch_stride, f.v_head = p.v.head_stride, f.v_row = p.v.row_stride;
  f.o_batch = p.out.batch_stride, f.o_head = p.out.head_stride, f.o_row = p.out.row_stride;
  f.lse_batch = p.lse.batch_stride, f.lse_head = p.lse.head_stride, f.lse_row = p.lse.row_stride;
  f.lq = int(p.lq);
  f.lk = int(p.lk);
  f.heads_per_kv = int(p.heads / p.kv_heads);
  f.scale_log2 = p.scale * kLog2e;
  f.causal = p.causal;

  auto* kernel = flash_forward_kernel<T, HEAD_DIM>;
  constexpr int kDefaultSmemLimit = 48 * 1024;
  if (Cfg::kSmemBytes > kDefaultSmemLimit) {
    ANVIL_RETURN_IF_ERROR(cuda::check(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             Cfg::kSmemBytes),
        "cudaFuncSetAttribute (flash_sm80 dynamic shared memory)"));
  }
  const dim3 grid(unsigned((p.lq + Cfg::kBlockM - 1) / Cfg::kBlockM), unsigned(p.heads),
                  unsigned(p.batch));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, p.stream>>>(f);
  return cuda::check_launch("flash_sm80 launch");
}

}  // namespace

Status flash_sm80_accepts(const Problem& p) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    return unsupported(std::string("flash_sm80: dtype ") + dtype_name(p.dtype) +
                       " is not bf16 or f16");
  if (p.head_dim != p.value_dim)
    return unsupported("flash_sm80: head_dim " + std::to_string(p.head_dim) +
                       " != value_dim " + std::to_string(p.value_dim));
  if (p.head_dim != 64 && p.head_dim != 128)
    return unsupported("flash_sm80: head_dim " + std::to_string(p.head_dim) +
                       " is not 64 or 128");
  if (p.mask.data != nullptr) return unsupported("flash_sm80: a user mask is not supported");
  if (p.batch < 0 || p.heads < 0 || p.kv_heads < 0 || p.lq < 0 || p.lk < 0)
    return invalid_argument("flash_sm80: negative batch, heads, kv_heads, lq or lk");
  if (p.heads > 0 && (p.kv_heads <= 0 || p.heads % p.kv_heads != 0))
    return invalid_argument("flash_sm80: heads " + std::to_string(p.heads) +
                            " is not a multiple of kv_heads " + std::to_string(p.kv_heads));
  if (p.lq > kMaxLength || p.lk > kMaxLength)
    return unsupported("flash_sm80: lq or lk above 2^30");
  if (p.heads > kMaxGridYZ || p.batch > kMaxGridYZ)
    return unsupported("flash_sm80: heads or batch above 65535 (grid y/z limit)");
  ANVIL_RETURN_IF_ERROR(operand_fits(p.q, "q"));
  ANVIL_RETURN_IF_ERROR(operand_fits(p.k, "k"));
  ANVIL_RETURN_IF_ERROR(operand_fits(p.v, "v"));
  ANVIL_RETURN_IF_ERROR(operand_fits(p.out, "out"));
  if (reinterpret_cast<uintptr_t>(p.lse.data) % alignof(float) != 0)
    return unsupported("flash_sm80: lse data is not 4-byte aligned");

  const cuda::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(cuda::device_props(p.device, &props));
  if (props->compute_capability() < 80)
    return unsupported("flash_sm80: needs compute capability 8.0 or newer, device " +
                       std::to_string(p.device) + " is " + std::to_string(props->cc_major) +
                       "." + std::to_string(props->cc_minor));
  const int64_t smem = flash_smem_bytes(p.head_dim);
  if (smem > props->smem_per_block_optin)
    return unsupported("flash_sm80: needs " + std::to_string(smem) +
                       " bytes of shared memory per block, device allows " +
                       std::to_string(props->smem_per_block_optin));
  return Status::Ok();
}

Status run_flash_sm80(const Problem& p) {
  ANVIL_RETURN_IF_ERROR(flash_sm80_accepts(p));
  if (p.batch == 0 || p.heads == 0 || p.lq == 0) return Status::Ok();
  cuda::DeviceGuard guard(p.device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64)
    return bf16 ? launch<__nv_bfloat16, 64>(p) : launch<__half, 64>(p);
  return bf16 ? launch<__nv_bfloat16, 128>(p) : launch<__half, 128>(p);
}

}  // namespace anvil::cuda_attention
