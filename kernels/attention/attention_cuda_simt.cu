// SIMT attention and its backward for any dtype (f32, f16, bf16), head dim, value dim,
// strides, GQA/MQA, causal or user mask: the cuda backend's general kernels. Operands are
// staged through shared memory as f32 (converted on load, zero past the edges) and every
// sum accumulates in f32 in a fixed order, so results are bitwise deterministic.
//
// forward   One warp per query row, one CTA per (kFwdWarps rows, head, batch, value slice).
//           Keys come in tiles of kKeys = 32: lane j scores key j0 + j against its row
//           (online softmax: running max m, sum l), then lanes switch to value columns for
//           acc += P V. Value dims past kMaxSlice split into slices that recompute scores.
// backward  (1) D_i = rowsum(dO * O).
//           (2) one CTA per (kv head, kBwdKeys keys): walks every query head of the group
//               and every query tile, recomputes P = exp(S - lse) and dS = P (dP - D), and
//               sums dV += P^T dO, dK += dS^T Q in shared memory; writes each once.
//           (3) one CTA per (head, kBwdRows queries): walks the key tiles, dQ += dS K.
//           (2) and (3) share the (kBwdRows, kBwdKeys) score tile code.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_runtime.h"
#include "kernels/attention/attention_cuda.h"

namespace anvil::cuda_attention {
namespace {

// ------------------------------------------------------------------ config
constexpr int kWarpSize = 32;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Grid limits; every kernel strides over (x, y, z) = (row or key blocks, heads, batch), so
// larger problems loop. Splitting the work this way keeps 64-bit divisions (a subroutine
// call, and spills around it) out of the kernels.
constexpr int64_t kMaxGridX = 2147483647, kMaxGridYZ = 65535;

// Forward: kFwdWarps query rows per CTA, key tiles of kKeys (one per lane), value slices of
// up to kMaxChunks columns per lane.
constexpr int kFwdWarps = 8;
constexpr int kFwdThreads = kFwdWarps * kWarpSize;
constexpr int kKeys = 32;
constexpr int kMaxChunks = 8;
static_assert(kKeys == kWarpSize, "lane j scores key j of the tile");

// Backward: score tiles (kBwdRows, kBwdKeys); lane = key, each warp owns kRowsPerWarp rows.
constexpr int kBwdWarps = 8;
constexpr int kBwdThreads = kBwdWarps * kWarpSize;
constexpr int kBwdRows = 16;
constexpr int kBwdKeys = 32;
constexpr int kRowsPerWarp = kBwdRows / kBwdWarps;
static_assert(kBwdKeys == kWarpSize, "lane j scores key j of the tile");
static_assert(kBwdRows % kBwdWarps == 0, "whole rows per warp");
// Two CTAs per SM caps registers at 128: without the bound ptxas keeps a few loop
// invariants on the stack instead.
constexpr int kBwdMinBlocks = 2;

// kv head of query head h: 32-bit division (simt_accepts bounds heads).
__device__ inline int64_t kv_head_of(int64_t h, int64_t group) { return int64_t(uint32_t(h) / uint32_t(group)); }

// Rows of `n` floats read down a column by the 32 lanes (lane = row) are conflict-free when
// the pitch is odd.
__host__ __device__ constexpr int64_t odd_pitch(int64_t n) { return n | 1; }
__host__ __device__ constexpr int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

int chunks_for(int64_t value_dim) { return value_dim <= 32 ? 1 : value_dim <= 64 ? 2 : value_dim <= 128 ? 4 : 8; }

// Shared memory of the forward, in floats: K tile (kKeys, kp), V tile (kKeys, slice),
// query rows (kFwdWarps, E).
__host__ __device__ constexpr int64_t forward_smem_floats(int64_t head_dim, int64_t slice) {
  return kKeys * odd_pitch(head_dim) + kKeys * slice + kFwdWarps * head_dim;
}

// Shared memory of the backward kernels, offsets in floats.
struct BwdSmem {
  int64_t kp, vp;                          // pitches of head_dim / value_dim rows (odd)
  int64_t k, v, q, dout, p, ds, lse, d;    // tile offsets
  int64_t acc;                             // accumulators start here
  int64_t key_grads_floats, query_grads_floats;  // totals of kernels (2) and (3)
};

__host__ __device__ constexpr BwdSmem bwd_smem(int64_t head_dim, int64_t value_dim) {
  BwdSmem s{};
  s.kp = odd_pitch(head_dim);
  s.vp = odd_pitch(value_dim);
  s.k = 0;                                   // (kBwdKeys, kp)
  s.v = s.k + kBwdKeys * s.kp;               // (kBwdKeys, vp)
  s.q = s.v + kBwdKeys * s.vp;               // (kBwdRows, kp)
  s.dout = s.q + kBwdRows * s.kp;            // (kBwdRows, vp)
  s.p = s.dout + kBwdRows * s.vp;            // (kBwdRows, kBwdKeys)
  s.ds = s.p + kBwdRows * kBwdKeys;          // (kBwdRows, kBwdKeys)
  s.lse = s.ds + kBwdRows * kBwdKeys;        // (kBwdRows)
  s.d = s.lse + kBwdRows;                    // (kBwdRows)
  s.acc = s.d + kBwdRows;
  s.key_grads_floats = s.acc + kBwdKeys * (head_dim + value_dim);  // dK (kBwdKeys, E), dV (kBwdKeys, Ev)
  s.query_grads_floats = s.acc + kBwdRows * head_dim;              // dQ (kBwdRows, E)
  return s;
}

// ------------------------------------------------------------------ element access
template <class T> __device__ inline float to_f32(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else return __bfloat162float(x);
}
template <class T> __device__ inline T from_f32(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}

// Element offset of (b, h, i, e) in a (batch, heads, length, dim) operand.
__device__ inline int64_t offset_of(const Operand& o, int64_t b, int64_t h, int64_t i, int64_t e) {
  return b * o.batch_stride + h * o.head_stride + i * o.row_stride + e * o.col_stride;
}

__device__ inline float warp_max(float x) {
#pragma unroll
  for (int s = kWarpSize / 2; s > 0; s /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, s));
  return x;
}
__device__ inline float warp_sum(float x) {
#pragma unroll
  for (int s = kWarpSize / 2; s > 0; s /= 2) x += __shfl_xor_sync(0xffffffffu, x, s);
  return x;
}

// ------------------------------------------------------------------ load
// Stages rows [row0, row0 + rows) x columns [col0, col0 + cols) of the (b, h) slice of `o`
// into dst (rows, pitch) as f32. Entries at or past (valid_rows, valid_cols) are zero: the
// tile math multiplies them by zero probabilities, and 0 * garbage could be NaN.
// Consecutive threads take consecutive columns: coalesced when the last stride is 1.
template <class T, int kThreads>
__device__ void stage_tile(float* dst, int64_t pitch, int rows, int cols, const Operand& o, int64_t b, int64_t h,
                           int64_t row0, int64_t col0, int64_t valid_rows, int64_t valid_cols) {
  const T* base = static_cast<const T*>(o.data);
  for (int idx = int(threadIdx.x); idx < rows * cols; idx += kThreads) {
    const int r = idx / cols, c = idx % cols;
    float x = 0.0f;
    if (r < valid_rows && c < valid_cols) x = to_f32(base[offset_of(o, b, h, row0 + r, col0 + c)]);
    dst[r * pitch + c] = x;
  }
}

// scale * dot, then the user mask of (b, h, i, j); causal masking is the caller's.
template <class T>
__device__ inline float masked_score(const Problem& p, float dot, int64_t b, int64_t h, int64_t i, int64_t j) {
  float s = p.scale * dot;
  if (p.mask.data) {
    const int64_t at = b * p.mask.batch_stride + h * p.mask.head_stride + i * p.mask.row_stride + j * p.mask_key_stride;
    if (p.mask_is_bool) {
      if (static_cast<const uint8_t*>(p.mask.data)[at] == 0) s = kNegInf;
    } else {
      s += to_f32(static_cast<const T*>(p.mask.data)[at]);
    }
  }
  return s;
}

// ------------------------------------------------------------------ forward
// CTA (x, y, z) = (row block, head, batch), strided; row blocks run last-first so that the
// long causal rows start early. Value slices of kSlice columns run one after the other.
template <class T, int kChunks>
__global__ void __launch_bounds__(kFwdThreads)
    forward_kernel(const Problem p, int64_t group, int64_t row_blocks, int64_t slices) {
  constexpr int kSlice = kChunks * kWarpSize;
  extern __shared__ float smem[];
  const int E = int(p.head_dim), Ev = int(p.value_dim);
  const int64_t kp = odd_pitch(E);
  float* k_tile = smem;                       // (kKeys, kp)
  float* v_tile = k_tile + kKeys * kp;        // (kKeys, kSlice)
  float* q_rows = v_tile + kKeys * kSlice;    // (kFwdWarps, E)
  const int warp = int(threadIdx.x) / kWarpSize, lane = int(threadIdx.x) % kWarpSize;

  for (int64_t b = blockIdx.z; b < p.batch; b += gridDim.z)
  for (int64_t h = blockIdx.y; h < p.heads; h += gridDim.y)
  for (int64_t x = blockIdx.x; x < row_blocks; x += gridDim.x)
  for (int64_t slice = 0; slice < slices; ++slice) {
    const int64_t kvh = kv_head_of(h, group);
    const int64_t i0 = (row_blocks - 1 - x) * kFwdWarps, i = i0 + warp;
    const bool row_valid = i < p.lq;
    const int64_t e0 = slice * kSlice;
    const int64_t width = min_i64(kSlice, Ev - e0);  // value columns of this slice

    __syncthreads();  // the previous item's readers of the tiles are done
    stage_tile<T, kFwdThreads>(q_rows, E, kFwdWarps, E, p.q, b, h, i0, 0, p.lq - i0, E);
    // Keys any row of the block attends: all, or up to its last row's diagonal.
    const int64_t last_row = min_i64(p.lq, i0 + kFwdWarps) - 1;
    const int64_t key_end = p.causal ? min_i64(p.lk, last_row + 1) : p.lk;

    float m = kNegInf, l = 0.0f;  // running max and sum of exp(s - m) of the warp's row
    float acc[kChunks];           // value column e0 + c * 32 + lane
#pragma unroll
    for (int c = 0; c < kChunks; ++c) acc[c] = 0.0f;

    for (int64_t j0 = 0; j0 < key_end; j0 += kKeys) {
      __syncthreads();
      stage_tile<T, kFwdThreads>(k_tile, kp, kKeys, E, p.k, b, kvh, j0, 0, p.lk - j0, E);
      stage_tile<T, kFwdThreads>(v_tile, kSlice, kKeys, kSlice, p.v, b, kvh, j0, e0, p.lk - j0, width);
      __syncthreads();
      // Warp-uniform exits only: the shuffles below need the whole warp.
      if (!row_valid || (p.causal && j0 > i)) continue;

      const int64_t j = j0 + lane;
      float s = kNegInf;
      if (j < p.lk && !(p.causal && j > i)) {
        const float* q_row = q_rows + warp * E;
        const float* k_row = k_tile + lane * kp;
        float dot = 0.0f;
#pragma unroll 8
        for (int e = 0; e < E; ++e) dot = fmaf(q_row[e], k_row[e], dot);
        s = masked_score<T>(p, dot, b, h, i, j);
      }
      const float m_new = fmaxf(m, warp_max(s));
      if (m_new == kNegInf) continue;  // nothing attended so far
      const float alpha = expf(m - m_new);  // 0 while m is -inf
      const float prob = expf(s - m_new);   // 0 for masked keys
      l = l * alpha + warp_sum(prob);
#pragma unroll
      for (int c = 0; c < kChunks; ++c) acc[c] *= alpha;
#pragma unroll 4
      for (int jj = 0; jj < kKeys; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, prob, jj);
        const float* v_row = v_tile + jj * kSlice + lane;
#pragma unroll
        for (int c = 0; c < kChunks; ++c) acc[c] = fmaf(pj, v_row[c * kWarpSize], acc[c]);
      }
      m = m_new;
    }

    if (row_valid) {
      const bool attended = m != kNegInf;  // else out = 0 and lse = -inf
      T* out = static_cast<T*>(p.out.data);
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int64_t col = c * kWarpSize + lane;
        if (col < width) out[offset_of(p.out, b, h, i, e0 + col)] = from_f32<T>(attended ? acc[c] / l : 0.0f);
      }
      if (slice == 0 && p.lse.data && lane == 0)
        static_cast<float*>(p.lse.data)[b * p.lse.batch_stride + h * p.lse.head_stride + i * p.lse.row_stride] =
            attended ? m + logf(l) : kNegInf;
    }
  }
}

// ------------------------------------------------------------------ backward
// (1) D_i = sum_e dO_ie O_ie, dense (batch, heads, lq); one warp per row, CTA (x, y, z) =
// (kBwdWarps rows, head, batch), strided.
template <class T> __global__ void __launch_bounds__(kBwdThreads) row_dot_kernel(const BackwardProblem p, float* d) {
  const Problem& f = p.forward;
  const int warp = int(threadIdx.x) / kWarpSize, lane = int(threadIdx.x) % kWarpSize;
  const T* dout = static_cast<const T*>(p.grad_out.data);
  const T* out = static_cast<const T*>(f.out.data);
  for (int64_t b = blockIdx.z; b < f.batch; b += gridDim.z)
  for (int64_t h = blockIdx.y; h < f.heads; h += gridDim.y)
  for (int64_t i = int64_t(blockIdx.x) * kBwdWarps + warp; i < f.lq; i += int64_t(gridDim.x) * kBwdWarps) {
    const int64_t row = (b * f.heads + h) * f.lq + i;
    float sum = 0.0f;
    for (int64_t e = lane; e < f.value_dim; e += kWarpSize)
      sum = fmaf(to_f32(dout[offset_of(p.grad_out, b, h, i, e)]), to_f32(out[offset_of(f.out, b, h, i, e)]), sum);
    sum = warp_sum(sum);
    if (lane == 0) d[row] = sum;
  }
}

struct BwdTiles {  // a backward CTA's shared memory
  float *k, *v, *q, *dout, *p, *ds, *lse, *d, *acc;
  int64_t kp, vp;
};

__device__ inline BwdTiles bwd_tiles(float* smem, int64_t head_dim, int64_t value_dim) {
  const BwdSmem s = bwd_smem(head_dim, value_dim);
  return {smem + s.k, smem + s.v, smem + s.q, smem + s.dout, smem + s.p,
          smem + s.ds, smem + s.lse, smem + s.d, smem + s.acc, s.kp, s.vp};
}

// The query-side tiles of rows [i0, i0 + kBwdRows) of head h: Q, dO, lse (-inf past lq, so
// those rows get P = 0) and D.
template <class T>
__device__ void stage_query_side(const BackwardProblem& p, const BwdTiles& t, const float* d, int64_t b, int64_t h,
                                 int64_t i0) {
  const Problem& f = p.forward;
  stage_tile<T, kBwdThreads>(t.q, t.kp, kBwdRows, int(f.head_dim), f.q, b, h, i0, 0, f.lq - i0, f.head_dim);
  stage_tile<T, kBwdThreads>(t.dout, t.vp, kBwdRows, int(f.value_dim), p.grad_out, b, h, i0, 0, f.lq - i0,
                             f.value_dim);
  for (int r = int(threadIdx.x); r < kBwdRows; r += kBwdThreads) {
    const int64_t i = i0 + r;
    const bool valid = i < f.lq;
    t.lse[r] = valid ? static_cast<const float*>(f.lse.data)[b * f.lse.batch_stride + h * f.lse.head_stride +
                                                             i * f.lse.row_stride]
                     : kNegInf;
    t.d[r] = valid ? d[(b * f.heads + h) * f.lq + i] : 0.0f;
  }
}

// The key-side tiles of keys [j0, j0 + kBwdKeys) of kv head kvh: K and V.
template <class T>
__device__ void stage_key_side(const Problem& f, const BwdTiles& t, int64_t b, int64_t kvh, int64_t j0) {
  stage_tile<T, kBwdThreads>(t.k, t.kp, kBwdKeys, int(f.head_dim), f.k, b, kvh, j0, 0, f.lk - j0, f.head_dim);
  stage_tile<T, kBwdThreads>(t.v, t.vp, kBwdKeys, int(f.value_dim), f.v, b, kvh, j0, 0, f.lk - j0, f.value_dim);
}

// P and dS of the staged (kBwdRows, kBwdKeys) tile into t.p, t.ds: zero where the pair is
// past the edges, causal-masked, masked, or its row attended nothing (lse = -inf).
// Lane = key; warp w takes rows w, w + kBwdWarps, ... sharing each K / V read.
template <class T>
__device__ void probs_and_grads(const Problem& f, const BwdTiles& t, int64_t b, int64_t h, int64_t i0, int64_t j0) {
  const int warp = int(threadIdx.x) / kWarpSize, lane = int(threadIdx.x) % kWarpSize;
  const int E = int(f.head_dim), Ev = int(f.value_dim);
  float qk[kRowsPerWarp], dov[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) qk[r] = dov[r] = 0.0f;
  const float* k_row = t.k + lane * t.kp;
#pragma unroll 4
  for (int e = 0; e < E; ++e) {
    const float kv = k_row[e];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) qk[r] = fmaf(t.q[(warp + r * kBwdWarps) * t.kp + e], kv, qk[r]);
  }
  const float* v_row = t.v + lane * t.vp;
#pragma unroll 4
  for (int e = 0; e < Ev; ++e) {
    const float vv = v_row[e];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) dov[r] = fmaf(t.dout[(warp + r * kBwdWarps) * t.vp + e], vv, dov[r]);
  }
  const int64_t j = j0 + lane;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp + r * kBwdWarps;
    const int64_t i = i0 + row;
    const float row_lse = t.lse[row];
    float prob = 0.0f, grad = 0.0f;
    if (i < f.lq && j < f.lk && !(f.causal && j > i) && row_lse != kNegInf) {
      const float s = masked_score<T>(f, qk[r], b, h, i, j);
      if (s != kNegInf) {
        prob = expf(s - row_lse);
        grad = prob * (dov[r] - t.d[row]);
      }
    }
    t.p[row * kBwdKeys + lane] = prob;
    t.ds[row * kBwdKeys + lane] = grad;
  }
}

// (2) dK, dV of keys [j0, j0 + kBwdKeys) of kv head (b, kvh), summed over the group's query
// heads and all query rows. CTA (x, y, z) = (key block, kv head, batch), strided; key
// blocks run in order (under causal masking the first see the most rows). Accumulators are
// thread-owned: element idx = tid + k * kBwdThreads of dK (kBwdKeys, E) and of dV
// (kBwdKeys, Ev), so zeroing, sums and stores need no barrier between them.
template <class T>
__global__ void __launch_bounds__(kBwdThreads, kBwdMinBlocks)
    key_grads_kernel(const BackwardProblem p, const float* d, int64_t group, int64_t key_blocks) {
  extern __shared__ float smem[];
  const Problem& f = p.forward;
  const BwdTiles t = bwd_tiles(smem, f.head_dim, f.value_dim);
  const int E = int(f.head_dim), Ev = int(f.value_dim);
  float* dk_acc = t.acc;                 // (kBwdKeys, E)
  float* dv_acc = t.acc + kBwdKeys * E;  // (kBwdKeys, Ev)

  for (int64_t b = blockIdx.z; b < f.batch; b += gridDim.z)
  for (int64_t kvh = blockIdx.y; kvh < f.kv_heads; kvh += gridDim.y)
  for (int64_t key_block = blockIdx.x; key_block < key_blocks; key_block += gridDim.x) {
    const int64_t j0 = key_block * kBwdKeys;
    __syncthreads();  // the previous item's readers of the tiles are done
    stage_key_side<T>(f, t, b, kvh, j0);
    for (int idx = int(threadIdx.x); idx < kBwdKeys * E; idx += kBwdThreads) dk_acc[idx] = 0.0f;
    for (int idx = int(threadIdx.x); idx < kBwdKeys * Ev; idx += kBwdThreads) dv_acc[idx] = 0.0f;
    // Causal: rows before the tile's first key attend none of its keys.
    const int64_t first_row = f.causal ? j0 / kBwdRows * kBwdRows : 0;

    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = kvh * group + g;
      for (int64_t i0 = first_row; i0 < f.lq; i0 += kBwdRows) {
        __syncthreads();
        stage_query_side<T>(p, t, d, b, h, i0);
        __syncthreads();
        probs_and_grads<T>(f, t, b, h, i0, j0);
        __syncthreads();
        for (int idx = int(threadIdx.x); idx < kBwdKeys * E; idx += kBwdThreads) {
          const int c = idx / E, e = idx % E;
          float sum = 0.0f;
#pragma unroll
          for (int r = 0; r < kBwdRows; ++r) sum = fmaf(t.ds[r * kBwdKeys + c], t.q[r * t.kp + e], sum);
          dk_acc[idx] += sum;
        }
        for (int idx = int(threadIdx.x); idx < kBwdKeys * Ev; idx += kBwdThreads) {
          const int c = idx / Ev, e = idx % Ev;
          float sum = 0.0f;
#pragma unroll
          for (int r = 0; r < kBwdRows; ++r) sum = fmaf(t.p[r * kBwdKeys + c], t.dout[r * t.vp + e], sum);
          dv_acc[idx] += sum;
        }
      }
    }

    T* dk = static_cast<T*>(p.grad_k.data);
    T* dv = static_cast<T*>(p.grad_v.data);
    for (int idx = int(threadIdx.x); idx < kBwdKeys * E; idx += kBwdThreads) {
      const int c = idx / E, e = idx % E;
      if (j0 + c < f.lk) dk[offset_of(p.grad_k, b, kvh, j0 + c, e)] = from_f32<T>(f.scale * dk_acc[idx]);
    }
    for (int idx = int(threadIdx.x); idx < kBwdKeys * Ev; idx += kBwdThreads) {
      const int c = idx / Ev, e = idx % Ev;
      if (j0 + c < f.lk) dv[offset_of(p.grad_v, b, kvh, j0 + c, e)] = from_f32<T>(dv_acc[idx]);
    }
  }
}

// (3) dQ of rows [i0, i0 + kBwdRows) of head (b, h) = scale * sum over keys of dS K.
// CTA (x, y, z) = (row block, head, batch), strided; row blocks last-first (long causal
// rows early).
template <class T>
__global__ void __launch_bounds__(kBwdThreads, kBwdMinBlocks)
    query_grads_kernel(const BackwardProblem p, const float* d, int64_t group, int64_t row_blocks) {
  extern __shared__ float smem[];
  const Problem& f = p.forward;
  const BwdTiles t = bwd_tiles(smem, f.head_dim, f.value_dim);
  const int E = int(f.head_dim);
  float* dq_acc = t.acc;  // (kBwdRows, E)

  for (int64_t b = blockIdx.z; b < f.batch; b += gridDim.z)
  for (int64_t h = blockIdx.y; h < f.heads; h += gridDim.y)
  for (int64_t x = blockIdx.x; x < row_blocks; x += gridDim.x) {
    const int64_t kvh = kv_head_of(h, group);
    const int64_t i0 = (row_blocks - 1 - x) * kBwdRows;
    __syncthreads();  // the previous item's readers of the tiles are done
    stage_query_side<T>(p, t, d, b, h, i0);
    for (int idx = int(threadIdx.x); idx < kBwdRows * E; idx += kBwdThreads) dq_acc[idx] = 0.0f;
    const int64_t last_row = min_i64(f.lq, i0 + kBwdRows) - 1;
    const int64_t key_end = f.causal ? min_i64(f.lk, last_row + 1) : f.lk;

    for (int64_t j0 = 0; j0 < key_end; j0 += kBwdKeys) {
      __syncthreads();
      stage_key_side<T>(f, t, b, kvh, j0);
      __syncthreads();
      probs_and_grads<T>(f, t, b, h, i0, j0);
      __syncthreads();
      for (int idx = int(threadIdx.x); idx < kBwdRows * E; idx += kBwdThreads) {
        const int r = idx / E, e = idx % E;
        float sum = 0.0f;
#pragma unroll 8
        for (int c = 0; c < kBwdKeys; ++c) sum = fmaf(t.ds[r * kBwdKeys + c], t.k[c * t.kp + e], sum);
        dq_acc[idx] += sum;
      }
    }

    T* dq = static_cast<T*>(p.grad_q.data);
    for (int idx = int(threadIdx.x); idx < kBwdRows * E; idx += kBwdThreads) {
      const int r = idx / E, e = idx % E;
      if (i0 + r < f.lq) dq[offset_of(p.grad_q, b, h, i0 + r, e)] = from_f32<T>(f.scale * dq_acc[idx]);
    }
  }
}

// ------------------------------------------------------------------ host launchers
template <class Fn> Status with_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn.template operator()<float>();
    case DType::f16: return fn.template operator()<__half>();
    case DType::bf16: return fn.template operator()<__nv_bfloat16>();
    default: return unsupported(std::string("attention.cuda.simt: dtype ") + dtype_name(dtype) + " (f32, f16, bf16 only)");
  }
}

// (blocks, heads, batch), each > 0, capped at the grid limits (the kernels stride).
dim3 grid_of(int64_t blocks, int64_t heads, int64_t batch) {
  return dim3(unsigned(std::min(blocks, kMaxGridX)), unsigned(std::min(heads, kMaxGridYZ)),
              unsigned(std::min(batch, kMaxGridYZ)));
}

// Lets `kernel` use `bytes` of dynamic shared memory (past the 48 KiB default when needed).
template <class Kernel> Status allow_smem(Kernel kernel, int64_t bytes, const char* name) {
  return cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), name);
}

template <class T, int kChunks> Status launch_forward(const Problem& p) {
  constexpr int64_t kSlice = kChunks * kWarpSize;
  const int64_t row_blocks = (p.lq + kFwdWarps - 1) / kFwdWarps;
  const int64_t slices = std::max<int64_t>(1, (p.value_dim + kSlice - 1) / kSlice);  // one even when Ev = 0: lse
  const int64_t bytes = forward_smem_floats(p.head_dim, kSlice) * int64_t(sizeof(float));
  ANVIL_RETURN_IF_ERROR(allow_smem(forward_kernel<T, kChunks>, bytes, "cudaFuncSetAttribute (attention simt forward)"));
  forward_kernel<T, kChunks><<<grid_of(row_blocks, p.heads, p.batch), kFwdThreads, size_t(bytes), p.stream>>>(
      p, p.heads / p.kv_heads, row_blocks, slices);
  return cuda::check_launch("attention simt forward");
}

template <class T> Status launch_backward(const BackwardProblem& bp) {
  const Problem& f = bp.forward;
  const BwdSmem s = bwd_smem(f.head_dim, f.value_dim);
  cuda::Workspace workspace(f.stream);
  const int64_t rows = f.batch * f.heads * f.lq;
  float* d = nullptr;
  if (rows > 0) {
    void* storage = nullptr;
    ANVIL_RETURN_IF_ERROR(workspace.allocate(rows * int64_t(sizeof(float)), &storage));
    d = static_cast<float*>(storage);
    row_dot_kernel<T><<<grid_of((f.lq + kBwdWarps - 1) / kBwdWarps, f.heads, f.batch), kBwdThreads, 0, f.stream>>>(
        bp, d);
    ANVIL_RETURN_IF_ERROR(cuda::check_launch("attention simt backward (rowsum dO * O)"));
  }

  // dK, dV: written even when lq == 0 (sums over no rows are zero).
  const int64_t key_blocks = (f.lk + kBwdKeys - 1) / kBwdKeys;
  if (f.kv_heads > 0 && key_blocks > 0) {
    const int64_t bytes = s.key_grads_floats * int64_t(sizeof(float));
    ANVIL_RETURN_IF_ERROR(allow_smem(key_grads_kernel<T>, bytes, "cudaFuncSetAttribute (attention simt backward dK dV)"));
    key_grads_kernel<T><<<grid_of(key_blocks, f.kv_heads, f.batch), kBwdThreads, size_t(bytes), f.stream>>>(
        bp, d, f.heads / f.kv_heads, key_blocks);
    ANVIL_RETURN_IF_ERROR(cuda::check_launch("attention simt backward dK dV"));
  }

  // dQ: written even when lk == 0.
  const int64_t row_blocks = (f.lq + kBwdRows - 1) / kBwdRows;
  if (f.heads > 0 && row_blocks > 0) {
    const int64_t bytes = s.query_grads_floats * int64_t(sizeof(float));
    ANVIL_RETURN_IF_ERROR(allow_smem(query_grads_kernel<T>, bytes, "cudaFuncSetAttribute (attention simt backward dQ)"));
    query_grads_kernel<T><<<grid_of(row_blocks, f.heads, f.batch), kBwdThreads, size_t(bytes), f.stream>>>(
        bp, d, f.heads / f.kv_heads, row_blocks);
    ANVIL_RETURN_IF_ERROR(cuda::check_launch("attention simt backward dQ"));
  }
  return Status::Ok();
}

}  // namespace

// Refuses only what cannot run: a dtype other than f32/f16/bf16, or head dims whose tiles
// need more shared memory per block than the device has (forward and backward are checked
// together, so that what runs forward also differentiates).
Status simt_accepts(const Problem& p) {
  if (p.dtype != DType::f32 && p.dtype != DType::f16 && p.dtype != DType::bf16)
    return unsupported(std::string("attention.cuda.simt: dtype ") + dtype_name(p.dtype) + " (f32, f16, bf16 only)");
  if (p.head_dim < 0 || p.value_dim < 0) return invalid_argument("attention.cuda.simt: negative head or value dim");
  if (p.heads > INT32_MAX || p.kv_heads > INT32_MAX)
    return unsupported("attention.cuda.simt: more than 2^31 - 1 heads (" + std::to_string(p.heads) + ")");
  const cuda::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(cuda::device_props(p.device, &props));
  const int64_t slice = int64_t(chunks_for(p.value_dim)) * kWarpSize;
  const BwdSmem s = bwd_smem(p.head_dim, p.value_dim);
  const int64_t need = int64_t(sizeof(float)) * std::max({forward_smem_floats(p.head_dim, slice),
                                                          s.key_grads_floats, s.query_grads_floats});
  if (need > props->smem_per_block_optin)
    return unsupported("attention.cuda.simt: head_dim " + std::to_string(p.head_dim) + " and value_dim " +
                       std::to_string(p.value_dim) + " need " + std::to_string(need) +
                       " bytes of shared memory per block (backward tiles), " + props->name + " allows " +
                       std::to_string(props->smem_per_block_optin));
  return Status::Ok();
}

Status run_simt_forward(const Problem& p) {
  ANVIL_RETURN_IF_ERROR(simt_accepts(p));
  if (p.batch == 0 || p.heads == 0 || p.lq == 0) return Status::Ok();
  return with_type(p.dtype, [&]<class T>() -> Status {
    switch (chunks_for(p.value_dim)) {
      case 1: return launch_forward<T, 1>(p);
      case 2: return launch_forward<T, 2>(p);
      case 4: return launch_forward<T, 4>(p);
      default: return launch_forward<T, kMaxChunks>(p);
    }
  });
}

Status run_simt_backward(const BackwardProblem& p) {
  ANVIL_RETURN_IF_ERROR(simt_accepts(p.forward));
  if (p.forward.batch == 0) return Status::Ok();
  return with_type(p.forward.dtype, [&]<class T>() { return launch_backward<T>(p); });
}

}  // namespace anvil::cuda_attention
