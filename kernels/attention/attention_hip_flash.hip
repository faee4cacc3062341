// FlashAttention-2 forward on MFMA (v_mfma_f32_32x32x8{bf16_1k,f16}, f32 accumulate) for
// bf16 and f16 on CDNA2 (gfx90a) and CDNA3 (gfx94x): the hip backend's matrix-core
// attention. The NVIDIA counterpart (attention_cuda_flash.cu, mma.sync) shares the problem,
// the lowering, the records and the online-softmax recurrence, not the register layouts.
//
// One CTA = BLK_M (128) query rows of one (batch, head), 4 wavefronts of 64; wavefront w
// owns queries [32w, 32w + 32). It computes the transposed products, so that a query is a
// lane and its softmax statistics never leave the lane pair (l, l ^ 32):
//
//   S^T (32 keys, 32 queries) = K (32, D) Q^T (D, 32)     A = K from LDS, B = Q^T in registers
//     lane l holds S^T[8 (r / 4) + 4 (l / 32) + r % 4][l % 32], r = 0..15: 16 keys of
//     query l % 32; lane l ^ 32 holds the other 16. Row max and sum: 16 registers, then
//     one cross-half shuffle.
//   P^T = exp2(S^T * scale * log2e - m), rounded to the element type in registers.
//     Registers 4t .. 4t + 3 of lane l are keys 8t + 4 (l / 32) + 0..3 of query l % 32:
//     exactly the B operand of k step t of the next product (the MFMA form of FA2's
//     register trick: P never goes through LDS).
//   O^T (D, 32) += V^T (D, 32 keys) P^T (32 keys, 32)     A = V^T from LDS (stored transposed)
//
// Registers per lane: O^T D/32 x 16 and S^T 16 floats, Q^T D/8 x 2 dwords, and the
// prefetched next K/V tile (D = 128: 64 + 16 + 32 + 32).
//
// LDS (16-bit elements): K (BLK_N, D) and V^T (D, BLK_N), BLK_N = 64 keys: 32 KiB at
// D = 128. Rows are 16-byte chunks with chunk' = chunk ^ (row % 8). The next tile is
// fetched into registers while this one is computed, then stored (V transposed on the way
// in: 8 16-bit writes per chunk); two barriers per tile.
//
// causal (top-left, as torch): query i sees keys j <= i. Tiles past the CTA's last query
// are never loaded; a wavefront skips 32-key steps past its last query and masks only the
// steps that cross its diagonal or lk. Rows >= lq are computed on zero Q and never stored;
// keys >= lk are zero in LDS and masked to -inf. A query with no key gets O = 0, lse = -inf.
// GQA: head h reads kv head h / (heads / kv_heads).
#include <cmath>
#include <cstdint>
#include <string>

#include "backends/gpu/gpu_backend.h"
#include "kernels/attention/attention_hip.h"
#include "kernels/gemm/gemm_hip.h"
#include "kernels/gemm/gemm_hip_mfma.h"

namespace anvil::hip_attention {
namespace {

using hip_mfma::floatx16;
using hip_mfma::mfma_32x32x8;
using hip_mfma::u32x2;
using hip_mfma::u32x4;

constexpr int kWave = 64;
constexpr int kChunk = 8;  // 16-bit elements per 16-byte chunk
constexpr int64_t kMaxLength = int64_t(1) << 30;
constexpr int kMaxGridYZ = 65535;
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kLog2e = 1.442695040888963407f;

template <int D> struct FlashConfig {
  static constexpr int kBlockM = 128;                     // queries per CTA
  static constexpr int kWaves = 4;
  static constexpr int kThreads = kWaves * kWave;
  static constexpr int kWaveRows = kBlockM / kWaves;      // 32 queries per wavefront
  static constexpr int kBlockN = 64;                      // keys per LDS tile
  static constexpr int kStepN = 32;                       // keys per S^T product
  static constexpr int kDSteps = D / 8;                   // k steps of S^T = K Q^T
  static constexpr int kDTiles = D / 32;                  // 32-row MFMA tiles of O^T
  static constexpr int kKChunksPerRow = D / kChunk;       // K tile: a key's D values
  static constexpr int kVtChunksPerRow = kBlockN / kChunk;  // V^T tile: a dim's 64 keys
  static constexpr int kTileChunks = kBlockN * D / kChunk;  // of K, and of V
  static constexpr int kChunksPerThread = kTileChunks / kThreads;
  static constexpr int kLdsBytes = 2 * kTileChunks * 16;

  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  static_assert(kWaveRows == 32, "one 32-wide MFMA tile of queries per wavefront");
  static_assert(kBlockN % kStepN == 0 && kStepN == 32, "S^T steps are one 32-key MFMA tile");
  static_assert(kKChunksPerRow >= 8 && kVtChunksPerRow == 8, "the XOR swizzle stays inside a row");
  static_assert(kTileChunks % kThreads == 0, "K and V tiles split evenly");
};

// Pointers and element strides of one launch; lengths fit in int (checked on the host).
struct FlashParams {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  uint16_t* out;
  float* lse;  // may be null
  int64_t q_batch, q_head, q_row;
  int64_t k_batch, k_head, k_row;
  int64_t v_batch, v_head, v_row;
  int64_t o_batch, o_head, o_row;
  int64_t lse_batch, lse_head, lse_row;
  int lq, lk;
  int heads_per_kv;
  float scale_log2;  // scale * log2(e): the softmax runs in exp2
  bool causal;
};

// Chunk index of (row, chunk) in a swizzled tile with `kPerRow` chunks per row.
template <int kPerRow> __device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * kPerRow + (chunk ^ (row & 7));
}

template <class T> __device__ __forceinline__ uint16_t to_bits(float x) {
  return __builtin_bit_cast(uint16_t, gpu::from_f32<T>(x));
}
template <class T> __device__ __forceinline__ u32x2 pack4(float a, float b, float c, float d) {
  return u32x2{uint32_t(to_bits<T>(a)) | uint32_t(to_bits<T>(b)) << 16,
               uint32_t(to_bits<T>(c)) | uint32_t(to_bits<T>(d)) << 16};
}

template <class T, int D>
__global__ void __launch_bounds__(FlashConfig<D>::kThreads) flash_mfma_kernel(const FlashParams p) {
  using Cfg = FlashConfig<D>;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kStepN = Cfg::kStepN;
  __shared__ u32x4 lds[2 * Cfg::kTileChunks];
  u32x4* const sk = lds;                        // (BLK_N keys, D), swizzled
  u32x4* const svt = lds + Cfg::kTileChunks;    // (D, BLK_N keys), swizzled

  const int tid = int(threadIdx.x);
  const int wave = tid / kWave, lane = tid % kWave;
  const int half = lane / 32;  // which 16 keys of a 32-key step, which 4 of 8 k

  // Causal CTAs near the end of the sequence do the most work: start them first.
  const int m_block = p.causal ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
  const int head = blockIdx.y, batch = blockIdx.z;
  const int kv_head = head / p.heads_per_kv;
  const int m0 = m_block * kBlockM;
  const int wave_q0 = m0 + wave * Cfg::kWaveRows;  // this wavefront's first query
  const int query = wave_q0 + lane % 32;           // this lane's query

  const uint16_t* q = p.q + int64_t(batch) * p.q_batch + int64_t(head) * p.q_head;
  const uint16_t* k = p.k + int64_t(batch) * p.k_batch + int64_t(kv_head) * p.k_head;
  const uint16_t* v = p.v + int64_t(batch) * p.v_batch + int64_t(kv_head) * p.v_head;

  // Q^T as B operands: step s holds Q[query][8s + 4 half .. + 3]; zero past lq.
  u32x2 qf[Cfg::kDSteps];
#pragma unroll
  for (int s = 0; s < Cfg::kDSteps; ++s)
    qf[s] = query < p.lq ? *reinterpret_cast<const u32x2*>(q + int64_t(query) * p.q_row + 8 * s + 4 * half)
                         : u32x2{0u, 0u};

  // Keys this CTA needs: [0, n_end). causal: its last query m0 + BLK_M - 1 sees keys <= it.
  const int n_end = p.causal ? min(p.lk, m0 + kBlockM) : p.lk;
  const int n_blocks = (n_end + kBlockN - 1) / kBlockN;

  // Global -> registers: chunk c of the K (or V) tile is key c / (D/8), dims 8 (c % (D/8)).
  u32x4 rk[Cfg::kChunksPerThread], rv[Cfg::kChunksPerThread];
  auto fetch = [&](int n0) {
#pragma unroll
    for (int j = 0; j < Cfg::kChunksPerThread; ++j) {
      const int c = tid + j * Cfg::kThreads;
      const int key = c / Cfg::kKChunksPerRow, d = (c % Cfg::kKChunksPerRow) * kChunk;
      const bool valid = n0 + key < p.lk;
      rk[j] = valid ? *reinterpret_cast<const u32x4*>(k + int64_t(n0 + key) * p.k_row + d) : u32x4{0u, 0u, 0u, 0u};
      rv[j] = valid ? *reinterpret_cast<const u32x4*>(v + int64_t(n0 + key) * p.v_row + d) : u32x4{0u, 0u, 0u, 0u};
    }
  };
  // Registers -> LDS: K as is, V transposed (dims 8 (c % (D/8)) .. + 7 of one key).
  auto stash = [&]() {
    uint16_t* vt = reinterpret_cast<uint16_t*>(svt);
#pragma unroll
    for (int j = 0; j < Cfg::kChunksPerThread; ++j) {
      const int c = tid + j * Cfg::kThreads;
      const int key = c / Cfg::kKChunksPerRow, chunk = c % Cfg::kKChunksPerRow;
      sk[swizzled<Cfg::kKChunksPerRow>(key, chunk)] = rk[j];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const int d = chunk * kChunk + i;
        vt[swizzled<Cfg::kVtChunksPerRow>(d, key / kChunk) * kChunk + key % kChunk] = hip_mfma::chunk_element(rv[j], i);
      }
    }
  };

  floatx16 acc_o[Cfg::kDTiles];  // O^T (D, 32 queries) of this wavefront
#pragma unroll
  for (int dt = 0; dt < Cfg::kDTiles; ++dt) acc_o[dt] = floatx16{};
  float row_max = -INFINITY;  // running max of scale*log2e*S of this lane's query (log2 units)
  float row_sum = 0.0f;       // this lane's 16-key share of the running sum of P

  if (n_blocks > 0) {
    fetch(0);
    stash();
  }
  __syncthreads();

  for (int j = 0; j < n_blocks; ++j) {
    const int n0 = j * kBlockN;
    if (j + 1 < n_blocks) fetch(n0 + kBlockN);

    // Not unrolled: the two steps' registers would overlap (and the early exit stops it).
#pragma unroll 1
    for (int step = 0; step < kBlockN / kStepN; ++step) {
      const int s0 = n0 + step * kStepN;  // first key of this step
      // Keys past lk, or (causal) past this wavefront's last query, would all get P = 0.
      // Wavefront-uniform: the cross-half shuffles below need both halves.
      if (s0 >= p.lk || (p.causal && s0 > wave_q0 + Cfg::kWaveRows - 1)) break;

      // ---- S^T (32 keys, 32 queries) = K Q^T ----
      floatx16 acc_s = floatx16{};
#pragma unroll
      for (int s = 0; s < Cfg::kDSteps; ++s) {
        const u32x2 kf =
            reinterpret_cast<const u32x2*>(sk + swizzled<Cfg::kKChunksPerRow>(step * kStepN + lane % 32, s))[half];
        acc_s = mfma_32x32x8<T>(kf, qf[s], acc_s);
      }

      // ---- scale (to log2 units) and mask ----
      const bool mask_keys = s0 + kStepN > p.lk;
      const bool mask_causal = p.causal && s0 + kStepN - 1 > wave_q0;
      float tile_max = -INFINITY;
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        float x = acc_s[r] * p.scale_log2;
        if (mask_keys || mask_causal) {
          const int key = s0 + 8 * (r / 4) + 4 * half + r % 4;
          if (key >= p.lk || (p.causal && key > query)) x = -INFINITY;
        }
        acc_s[r] = x;
        tile_max = fmaxf(tile_max, x);
      }
      tile_max = fmaxf(tile_max, __shfl_xor(tile_max, 32));

      // ---- online softmax: rescale O and l by exp2(m_old - m_new), P = exp2(S - m_new) ----
      const float new_max = fmaxf(row_max, tile_max);
      // A query with no key yet keeps max -inf: subtract 0 instead so exp2 gives 0, not NaN.
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float rescale = exp2f(row_max - base);
      row_max = new_max;
      float sum = 0.0f;
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        const float prob = exp2f(acc_s[r] - base);
        acc_s[r] = prob;
        sum += prob;
      }
      row_sum = row_sum * rescale + sum;
#pragma unroll
      for (int dt = 0; dt < Cfg::kDTiles; ++dt) acc_o[dt] *= rescale;

      // ---- O^T (D, 32) += V^T (D, 32 keys) P^T (32 keys, 32) ----
#pragma unroll
      for (int t = 0; t < kStepN / 8; ++t) {
        const u32x2 pf = pack4<T>(acc_s[4 * t], acc_s[4 * t + 1], acc_s[4 * t + 2], acc_s[4 * t + 3]);
        const int key_chunk = (step * kStepN) / kChunk + t;
#pragma unroll
        for (int dt = 0; dt < Cfg::kDTiles; ++dt) {
          const u32x2 vf = reinterpret_cast<const u32x2*>(
              svt + swizzled<Cfg::kVtChunksPerRow>(dt * 32 + lane % 32, key_chunk))[half];
          acc_o[dt] = mfma_32x32x8<T>(vf, pf, acc_o[dt]);
        }
      }
    }

    if (j + 1 < n_blocks) {
      __syncthreads();  // every wavefront is done reading tile j
      stash();
      __syncthreads();  // tile j + 1 is visible to all
    }
  }

  // ---- store: O / l and lse = ln(2) * m + ln(l); a query that saw no key: 0 and -inf ----
  const float total = row_sum + __shfl_xor(row_sum, 32);
  if (query >= p.lq) return;
  const float inv_sum = total > 0.0f ? 1.0f / total : 0.0f;
  if (p.lse != nullptr && half == 0)
    p.lse[int64_t(batch) * p.lse_batch + int64_t(head) * p.lse_head + int64_t(query) * p.lse_row] =
        total > 0.0f ? row_max * kLn2 + logf(total) : -INFINITY;
  uint16_t* out = p.out + int64_t(batch) * p.o_batch + int64_t(head) * p.o_head + int64_t(query) * p.o_row;
#pragma unroll
  for (int dt = 0; dt < Cfg::kDTiles; ++dt)
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      const int d = dt * 32 + 8 * g + 4 * half;
      *reinterpret_cast<u32x2*>(out + d) = pack4<T>(acc_o[dt][4 * g] * inv_sum, acc_o[dt][4 * g + 1] * inv_sum,
                                                    acc_o[dt][4 * g + 2] * inv_sum, acc_o[dt][4 * g + 3] * inv_sum);
    }
}

// ------------------------------------------------------------------ host launcher
Status operand_fits(const Operand& o, const char* name) {
  const std::string n = name;
  if (o.col_stride != 1)
    return unsupported("flash_mfma: " + n + " col_stride " + std::to_string(o.col_stride) + " is not 1");
  if (o.batch_stride % kChunk != 0 || o.head_stride % kChunk != 0 || o.row_stride % kChunk != 0)
    return unsupported("flash_mfma: " + n + " batch/head/row strides (" + std::to_string(o.batch_stride) + ", " +
                       std::to_string(o.head_stride) + ", " + std::to_string(o.row_stride) +
                       ") are not multiples of 8 elements (16 bytes)");
  if (reinterpret_cast<uintptr_t>(o.data) % 16 != 0)
    return unsupported("flash_mfma: " + n + " data is not 16-byte aligned");
  return Status::Ok();
}

template <class T, int D> Status launch(const Problem& p) {
  using Cfg = FlashConfig<D>;
  FlashParams f;
  f.q = static_cast<const uint16_t*>(p.q.data);
  f.k = static_cast<const uint16_t*>(p.k.data);
  f.v = static_cast<const uint16_t*>(p.v.data);
  f.out = static_cast<uint16_t*>(p.out.data);
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
  const dim3 grid(unsigned((p.lq + Cfg::kBlockM - 1) / Cfg::kBlockM), unsigned(p.heads), unsigned(p.batch));
  flash_mfma_kernel<T, D><<<grid, Cfg::kThreads, 0, p.stream>>>(f);
  return hip::check_launch("flash_mfma");
}

}  // namespace

Status flash_mfma_accepts(const Problem& p) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    return unsupported(std::string("flash_mfma: dtype ") + dtype_name(p.dtype) + " is not bf16 or f16");
  if (p.head_dim != p.value_dim)
    return unsupported("flash_mfma: head_dim " + std::to_string(p.head_dim) + " != value_dim " +
                       std::to_string(p.value_dim));
  if (p.head_dim != 64 && p.head_dim != 128)
    return unsupported("flash_mfma: head_dim " + std::to_string(p.head_dim) + " is not 64 or 128");
  if (p.mask.data != nullptr) return unsupported("flash_mfma: a user mask is not supported");
  if (p.batch < 0 || p.heads < 0 || p.kv_heads < 0 || p.lq < 0 || p.lk < 0)
    return invalid_argument("flash_mfma: negative batch, heads, kv_heads, lq or lk");
  if (p.heads > 0 && (p.kv_heads <= 0 || p.heads % p.kv_heads != 0))
    return invalid_argument("flash_mfma: heads " + std::to_string(p.heads) + " is not a multiple of kv_heads " +
                            std::to_string(p.kv_heads));
  if (p.lq > kMaxLength || p.lk > kMaxLength) return unsupported("flash_mfma: lq or lk above 2^30");
  if (p.heads > kMaxGridYZ || p.batch > kMaxGridYZ)
    return unsupported("flash_mfma: heads or batch above 65535 (grid y/z limit)");
  ANVIL_RETURN_IF_ERROR(operand_fits(p.q, "q"));
  ANVIL_RETURN_IF_ERROR(operand_fits(p.k, "k"));
  ANVIL_RETURN_IF_ERROR(operand_fits(p.v, "v"));
  ANVIL_RETURN_IF_ERROR(operand_fits(p.out, "out"));
  if (reinterpret_cast<uintptr_t>(p.lse.data) % alignof(float) != 0)
    return unsupported("flash_mfma: lse data is not 4-byte aligned");
  const hip::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(hip::device_props(p.device, &props));
  ANVIL_RETURN_IF_ERROR(hip_gemm::mfma_arch_supported(props->gfx(), "flash_mfma"));
  const int64_t lds = p.head_dim == 64 ? FlashConfig<64>::kLdsBytes : FlashConfig<128>::kLdsBytes;
  if (lds > props->lds_per_workgroup)
    return unsupported("flash_mfma: needs " + std::to_string(lds) + " bytes of LDS per workgroup, device allows " +
                       std::to_string(props->lds_per_workgroup));
  return Status::Ok();
}

Status run_flash_mfma(const Problem& p) {
  ANVIL_RETURN_IF_ERROR(flash_mfma_accepts(p));
  if (p.batch == 0 || p.heads == 0 || p.lq == 0) return Status::Ok();
  hip::DeviceGuard guard(p.device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64) return bf16 ? launch<gpu::bfloat16, 64>(p) : launch<gpu::half, 64>(p);
  return bf16 ? launch<gpu::bfloat16, 128>(p) : launch<gpu::half, 128>(p);
}

}  // namespace anvil::hip_attention
