// cuda conv2d: direct SIMT kernels for every layout, dtype, group count and geometry, and a
// tensor-core implicit GEMM forward for f16/bf16 channels-last images (sm_80 and newer).
//
//   forward      out[n, k, p, q]   = bias[k] + sum_(r, s, c in k's group) in[n, c, y(p, r), x(q, s)] * w[k, c, r, s]
//   grad input   dI[n, c, y, x]    = sum_(r, s, k in c's group, (p, q) reading (y, x) through (r, s)) dO[n, k, p, q] * w[k, c, r, s]
//   grad weight  dW[k, c, r, s]    = sum_(n, p, q reading inside the image) dO[n, k, p, q] * in[n, c, y(p, r), x(q, s)]
//   grad bias    dB[k]             = sum_(n, p, q) dO[n, k, p, q]
// with y(p, r) = p * stride_h - pad_h + r * dilation_h (likewise x). Operands are logical
// NCHW; the memory layout (NCHW, NHWC or any other) is in the strides, read as given.
//
// Every output element is written exactly once by one thread (or one warp / block for the
// gradient reductions), accumulating in f32 in a fixed order: no atomics, and results are
// bitwise identical run to run. Empty reductions (no channels, taps all in the padding,
// no output pixels) give bias or 0, as the reference does. Global offsets are int64 and
// every kernel walks its work with a grid-stride loop over an int64 count on a 1-D grid.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_runtime.h"
#include "dispatch/kernel_record.h"
#include "kernels/conv2d/conv2d_desc.h"

namespace anvil::cuda_conv {
namespace {

// ------------------------------------------------------------------ config
// Direct kernels.
constexpr int kDirectThreads = 256;
constexpr int kChannelsPerThread = 8;   // output channels one thread of the direct kernel accumulates
constexpr int kReduceThreads = 256;     // grad-weight and grad-bias blocks
constexpr int kWarpSize = 32;
constexpr int kBlocksPerSm = 32;        // grid cap: enough resident work, the rest by grid-stride
static_assert(kDirectThreads % kWarpSize == 0 && kReduceThreads % kWarpSize == 0);
static_assert((kReduceThreads & (kReduceThreads - 1)) == 0, "grad-bias tree reduction halves the block");

// Implicit GEMM (sm_80 mma.sync): C (M = N*P*Q pixels, N_gemm = K channels) =
// A (M, K_gemm = R*S*C taps, gathered from the NHWC image) @ B^T, B = weight as (K, K_gemm).
constexpr int kBlockM = 128, kBlockN = 64, kBlockK = 32;   // (BLK_M, BLK_N, BLK_K) per block
constexpr int kWarpsM = 2, kWarpsN = 2;
constexpr int kGemmThreads = kWarpsM * kWarpsN * kWarpSize;
constexpr int kWarpTileM = kBlockM / kWarpsM, kWarpTileN = kBlockN / kWarpsN;  // (64, 32) per warp
constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;                                // mma.sync m16n8k16
constexpr int kFragsM = kWarpTileM / kMmaM, kFragsN = kWarpTileN / kMmaN;      // (4, 4) mmas per k-step
constexpr int kChunkElems = 8;                       // one 16-byte cp.async of 16-bit elements
constexpr int kChunksPerRow = kBlockK / kChunkElems;  // 16-byte chunks per smem tile row
constexpr int kStages = 3;                         // cp.async pipeline depth
constexpr int kAChunksPerThread = kBlockM * kChunksPerRow / kGemmThreads;
constexpr int kBChunksPerThread = kBlockN * kChunksPerRow / kGemmThreads;
static_assert(kBlockM % (kWarpsM * kMmaM) == 0 && kBlockN % (kWarpsN * 2 * kMmaN) == 0);
static_assert(kBlockK % kMmaK == 0 && kChunksPerRow == 4, "the smem swizzle below permutes 4 chunks per row");
static_assert(kBlockM * kChunksPerRow % kGemmThreads == 0 && kBlockN * kChunksPerRow % kGemmThreads == 0);
static_assert(kGemmThreads % kChunksPerRow == 0, "a thread keeps one chunk column for all its rows");
static_assert(kStages >= 2 && kStages * (kBlockM + kBlockN) * kBlockK * 2 <= 48 * 1024, "static smem limit");

// ------------------------------------------------------------------ elements
template <class T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
// Floor division for any sign of a, b > 0.
__device__ __forceinline__ int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

struct ImageStrides {  // element strides of a logical (n, c, h, w) image
  int64_t n, c, h, w;
};
ImageStrides strides_of(const TensorRef& t) { return {t.strides[0], t.strides[1], t.strides[2], t.strides[3]}; }

struct Geometry {
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};
Geometry geometry_of(const Conv2dParams& p) {
  return {p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w};
}

// The source row (or column) a tap reads for one output position, if any.
// Forward: src = out * stride - pad + tap * dilation, inside [0, extent).
// Transposed (grad input, `out` is an input position): the output position that reads
// `out` through `tap`: (out + pad - tap * dilation) / stride when that divides exactly and
// lands inside [0, extent).
template <bool kTransposed>
__device__ __forceinline__ bool source_coord(int64_t out, int64_t tap, int64_t stride, int64_t pad, int64_t dilation,
                                             int64_t extent, int64_t* src) {
  if constexpr (!kTransposed) {
    *src = out * stride - pad + tap * dilation;
    return *src >= 0 && *src < extent;
  } else {
    const int64_t num = out + pad - tap * dilation;
    if (num < 0 || num % stride != 0) return false;
    *src = num / stride;
    return *src < extent;
  }
}

// The output positions o in [0, out_extent) whose tap reads inside the image:
// 0 <= o * stride - pad + tap * dilation < in_extent.
struct TapRange {
  int64_t first, count;
};
__device__ __forceinline__ TapRange tap_range(int64_t tap, int64_t stride, int64_t pad, int64_t dilation,
                                              int64_t in_extent, int64_t out_extent) {
  const int64_t lo = pad - tap * dilation;                   // o * stride >= lo
  const int64_t hi = in_extent - 1 + pad - tap * dilation;  // o * stride <= hi
  const int64_t first = max64(0, -floor_div(-lo, stride));
  const int64_t last = min64(out_extent - 1, floor_div(hi, stride));
  return {first, max64(0, last - first + 1)};
}

// A position (n, y, x) in an (?, ny, nx) box, x fastest, stepped by a fixed linear stride
// without a division per step (mixed-radix addition; each digit carries at most once).
struct PixelWalk {
  int64_t n, y, x;
  int64_t ny, nx;
  int64_t dn, dy, dx;
  __device__ PixelWalk(int64_t start, int64_t step, int64_t ny_, int64_t nx_) : ny(ny_), nx(nx_) {
    x = start % nx, y = start / nx % ny, n = start / nx / ny;
    dx = step % nx, dy = step / nx % ny, dn = step / nx / ny;
  }
  __device__ void advance() {
    x += dx;
    int64_t carry = x >= nx ? 1 : 0;
    x -= carry * nx;
    y += dy + carry;
    carry = y >= ny ? 1 : 0;
    y -= carry * ny;
    n += dn + carry;
  }
};

// ------------------------------------------------------------------ direct forward / grad input
// One kernel for both: each thread owns kChannelsPerThread consecutive channels of one
// output pixel (all in one group) and reduces over (r, s, source channel of the group).
// Adjacent threads take adjacent pixels of the same channel block, so their weight loads are
// one broadcast address and their image loads walk neighbouring pixels.
//   forward:    source = input (H, W),        out channels = K (per group kg), reduced = C/G
//   grad input: source = grad_output (P, Q),  out channels = C (per group cg), reduced = K/G,
//               source positions by the transposed mapping.
// The weights are first packed (pack_direct_weight_kernel) so that the kChannelsPerThread
// weights one thread needs per (tap, reduced channel) are contiguous: one or two 16-byte
// loads instead of kChannelsPerThread strided ones.
//   packed: (group, channel block, r, s, reduced channel, kChannelsPerThread), zero past the
//   group's channels.
static_assert(kChannelsPerThread == 8, "load_packed_weights reads 8 weights as 16-byte vectors");

// weight[k, c, r, s] seen from the two roles: the element of out channel `o` and reduced
// channel `i` of group g is at
//   (g * out_group_step + o) * w_out + (g * reduced_group_step + i) * w_reduced + r * w_r + s * w_s
// forward: out = k (global), reduced = c (in group); grad input: out = c (in group), reduced = k (global).
template <class T> struct WeightRoles {
  const T* weight;
  int64_t w_out, w_reduced, w_r, w_s;
  int64_t out_group_step, reduced_group_step;
};

template <class T>
__global__ void __launch_bounds__(kDirectThreads)
    pack_direct_weight_kernel(const WeightRoles<T> w, int64_t groups, int64_t out_per_group, int64_t reduced_per_group,
                              int64_t taps_r, int64_t taps_s, T* packed) {
  const int64_t blocks_per_group = ceil_div(out_per_group, kChannelsPerThread);
  const int64_t count = groups * blocks_per_group * taps_r * taps_s * reduced_per_group * kChannelsPerThread;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < count;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = idx;
    const int64_t j = rest % kChannelsPerThread;
    rest /= kChannelsPerThread;
    const int64_t i = rest % reduced_per_group;
    rest /= reduced_per_group;
    const int64_t s = rest % taps_s;
    rest /= taps_s;
    const int64_t r = rest % taps_r;
    rest /= taps_r;
    const int64_t o = rest % blocks_per_group * kChannelsPerThread + j;
    const int64_t g = rest / blocks_per_group;
    packed[idx] = o < out_per_group ? w.weight[(g * w.out_group_step + o) * w.w_out +
                                               (g * w.reduced_group_step + i) * w.w_reduced + r * w.w_r + s * w.w_s]
                                    : from_f32<T>(0.0f);
  }
}

__device__ __forceinline__ float2 to_f32x2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 to_f32x2(__nv_bfloat162 v) { return __bfloat1622float2(v); }

// The 8 packed weights at p (16-byte aligned: the workspace is, and rows are 8 elements).
template <class T> __device__ __forceinline__ void load_packed_weights(const T* p, float (&w)[kChannelsPerThread]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
    w[0] = lo.x, w[1] = lo.y, w[2] = lo.z, w[3] = lo.w, w[4] = hi.x, w[5] = hi.y, w[6] = hi.z, w[7] = hi.w;
  } else {
    using T2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T2* pairs = reinterpret_cast<const T2*>(&raw);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float2 f = to_f32x2(pairs[q]);
      w[2 * q] = f.x, w[2 * q + 1] = f.y;
    }
  }
}

template <class T> struct DirectArgs {
  const T* src;
  ImageStrides src_stride;
  int64_t src_h, src_w;
  T* dst;
  ImageStrides dst_stride;
  int64_t dst_n, dst_h, dst_w;
  int64_t groups, out_per_group, reduced_per_group;
  const T* packed;  // see pack_direct_weight_kernel
  int64_t taps_r, taps_s;
  Geometry geo;
  const T* bias;  // forward only; null: none
  int64_t bias_stride;
};

template <class T, bool kTransposed>
__global__ void __launch_bounds__(kDirectThreads) direct_conv_kernel(const DirectArgs<T> a) {
  const int64_t blocks_per_group = ceil_div(a.out_per_group, kChannelsPerThread);
  const int64_t items = a.groups * blocks_per_group * a.dst_n * a.dst_h * a.dst_w;
  const int64_t packed_tap = a.reduced_per_group * kChannelsPerThread;  // packed elements per (r, s)
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = item;
    const int64_t x = rest % a.dst_w;
    rest /= a.dst_w;
    const int64_t y = rest % a.dst_h;
    rest /= a.dst_h;
    const int64_t n = rest % a.dst_n;
    rest /= a.dst_n;  // channel block, group-major: (group, block in group)
    const int64_t group = rest / blocks_per_group;
    const int64_t first_in_group = rest % blocks_per_group * kChannelsPerThread;
    const int valid = int(min64(kChannelsPerThread, a.out_per_group - first_in_group));
    const int64_t out0 = group * a.out_per_group + first_in_group;
    const int64_t reduced0 = group * a.reduced_per_group;  // first source channel of the group
    const T* packed_block = a.packed + rest * a.taps_r * a.taps_s * packed_tap;

    float acc[kChannelsPerThread];
#pragma unroll
    for (int j = 0; j < kChannelsPerThread; ++j)
      acc[j] = (a.bias != nullptr && j < valid) ? to_f32(a.bias[(out0 + j) * a.bias_stride]) : 0.0f;

    for (int64_t r = 0; r < a.taps_r; ++r) {
      int64_t sy;
      if (!source_coord<kTransposed>(y, r, a.geo.stride_h, a.geo.pad_h, a.geo.dilation_h, a.src_h, &sy)) continue;
      for (int64_t s = 0; s < a.taps_s; ++s) {
        int64_t sx;
        if (!source_coord<kTransposed>(x, s, a.geo.stride_w, a.geo.pad_w, a.geo.dilation_w, a.src_w, &sx)) continue;
        const T* src = a.src + n * a.src_stride.n + reduced0 * a.src_stride.c + sy * a.src_stride.h + sx * a.src_stride.w;
        const T* w = packed_block + (r * a.taps_s + s) * packed_tap;
        for (int64_t i = 0; i < a.reduced_per_group; ++i) {
          const float v = to_f32(src[i * a.src_stride.c]);
          float wi[kChannelsPerThread];
          load_packed_weights(w + i * kChannelsPerThread, wi);
#pragma unroll
          for (int j = 0; j < kChannelsPerThread; ++j) acc[j] = fmaf(v, wi[j], acc[j]);
        }
      }
    }

    T* dst = a.dst + n * a.dst_stride.n + out0 * a.dst_stride.c + y * a.dst_stride.h + x * a.dst_stride.w;
#pragma unroll
    for (int j = 0; j < kChannelsPerThread; ++j)
      if (j < valid) dst[j * a.dst_stride.c] = from_f32<T>(acc[j]);
  }
}

// ------------------------------------------------------------------ grad weight
// One block per 32 weight elements, ordered (k, r, s, c) with c fastest: lane l owns element
// e0 + l and warp w sums the pixels w, w + 8, ... of the (n, p, q) box whose taps land inside
// the image; the 8 warp partials are then added in warp order. Lanes of one warp usually share
// (k, r, s), so they read one grad_output value (broadcast) and neighbouring input channels
// (contiguous in NHWC). The order of every sum is fixed: no atomics, bitwise reproducible.
constexpr int kPixelSlices = kReduceThreads / kWarpSize;

template <class T> struct WeightGradArgs {
  const T* grad_out;
  ImageStrides g;
  const T* input;
  ImageStrides in;
  T* grad_weight;
  ImageStrides gw;  // (k, c, r, s)
  int64_t n, h, w, k, cg, kg, r, s, p, q;
  Geometry geo;
};

template <class T> __global__ void __launch_bounds__(kReduceThreads) weight_grad_kernel(const WeightGradArgs<T> a) {
  __shared__ float partial[kPixelSlices][kWarpSize];
  const int lane = int(threadIdx.x % kWarpSize), slice = int(threadIdx.x / kWarpSize);
  const int64_t elements = a.k * a.r * a.s * a.cg;
  // The loop bound depends on the block only, so every thread reaches the barriers.
  for (int64_t e0 = int64_t(blockIdx.x) * kWarpSize; e0 < elements; e0 += int64_t(gridDim.x) * kWarpSize) {
    const int64_t e = e0 + lane;
    const bool active = e < elements;
    const int64_t c = e % a.cg, ts = e / a.cg % a.s, tr = e / a.cg / a.s % a.r, k = e / a.cg / a.s / a.r;
    float acc = 0.0f;
    if (active) {
      const TapRange rows = tap_range(tr, a.geo.stride_h, a.geo.pad_h, a.geo.dilation_h, a.h, a.p);
      const TapRange cols = tap_range(ts, a.geo.stride_w, a.geo.pad_w, a.geo.dilation_w, a.w, a.q);
      const int64_t count = a.n * rows.count * cols.count;
      if (count > 0) {
        const T* g = a.grad_out + k * a.g.c;
        const T* in = a.input + (k / a.kg * a.cg + c) * a.in.c;
        PixelWalk at(slice, kPixelSlices, rows.count, cols.count);
        for (int64_t i = slice; i < count; i += kPixelSlices, at.advance()) {
          const int64_t op = rows.first + at.y, oq = cols.first + at.x;
          const int64_t iy = op * a.geo.stride_h - a.geo.pad_h + tr * a.geo.dilation_h;
          const int64_t ix = oq * a.geo.stride_w - a.geo.pad_w + ts * a.geo.dilation_w;
          acc = fmaf(to_f32(g[at.n * a.g.n + op * a.g.h + oq * a.g.w]),
                     to_f32(in[at.n * a.in.n + iy * a.in.h + ix * a.in.w]), acc);
        }
      }
    }
    partial[slice][lane] = acc;
    __syncthreads();
    if (slice == 0 && active) {
      float sum = partial[0][lane];
#pragma unroll
      for (int w = 1; w < kPixelSlices; ++w) sum += partial[w][lane];
      a.grad_weight[k * a.gw.n + c * a.gw.c + tr * a.gw.h + ts * a.gw.w] = from_f32<T>(sum);
    }
    __syncthreads();  // partial is read before the next elements overwrite it
  }
}

// ------------------------------------------------------------------ grad bias
// One block per channel: thread t sums pixels t, t+256, ... of (n, p, q), then a fixed
// shared-memory tree adds the partial sums.
template <class T> struct BiasGradArgs {
  const T* grad_out;
  ImageStrides g;
  T* grad_bias;
  int64_t bias_stride;
  int64_t n, k, p, q;
};

template <class T> __global__ void __launch_bounds__(kReduceThreads) bias_grad_kernel(const BiasGradArgs<T> a) {
  __shared__ float partial[kReduceThreads];
  const int t = int(threadIdx.x);
  const int64_t pixels = a.n * a.p * a.q;
  for (int64_t k = blockIdx.x; k < a.k; k += gridDim.x) {  // uniform per block: barriers are safe
    float acc = 0.0f;
    if (pixels > 0) {
      const T* g = a.grad_out + k * a.g.c;
      PixelWalk at(t, kReduceThreads, a.p, a.q);
      for (int64_t i = t; i < pixels; i += kReduceThreads, at.advance())
        acc += to_f32(g[at.n * a.g.n + at.y * a.g.h + at.x * a.g.w]);
    }
    partial[t] = acc;
    __syncthreads();
    for (int width = kReduceThreads / 2; width > 0; width /= 2) {
      if (t < width) partial[t] += partial[t + width];
      __syncthreads();
    }
    if (t == 0) a.grad_bias[k * a.bias_stride] = from_f32<T>(partial[0]);
    __syncthreads();  // partial[0] is read before the next channel overwrites it
  }
}

// ------------------------------------------------------------------ implicit GEMM (sm_80+)
// Per block: a (BLK_M pixels, BLK_N channels) tile of the output, K_gemm walked BLK_K at a
// time through a kStages-deep cp.async pipeline. K_gemm is ordered (r, s, c), c fastest, so with
// C % 8 == 0 each 16-byte chunk is 8 channels of one tap of one pixel: contiguous in an NHWC
// image, or all padding (zero-filled by cp.async with src-size 0).
// Smem tiles are rows of 4 chunks (64 bytes); chunk j of row i is stored at j ^ ((i >> 1) & 3)
// so the 8 rows one ldmatrix reads fall on 8 different 16-byte bank groups.
template <class T> struct ImplicitGemmArgs {
  const T* input;  // NHWC: channel stride 1
  int64_t in_n, in_h, in_w;  // strides of n, h, w (elements)
  int64_t h, w;
  int c;           // input channels (R * S * C < 2^31)
  const T* weight;  // (K, K_gemm) row-major workspace, K_gemm = (r, s, c)
  T* output;        // NHWC: channel stride 1
  int64_t out_n, out_h, out_w;
  int64_t p, q, k;
  int s;           // filter width
  int64_t m;       // N * P * Q
  int k_gemm;      // R * S * C
  int64_t tiles_n;
  Geometry geo;
  const T* bias;  // null: none
  int64_t bias_stride;
};

__device__ __forceinline__ int swizzle(int row, int chunk) { return row * kChunksPerRow + (chunk ^ ((row >> 1) & 3)); }

__device__ __forceinline__ void cp_async_16(uint4* smem, const void* gmem, bool fill) {
  const unsigned dst = unsigned(__cvta_generic_to_shared(smem));
  const int src_bytes = fill ? 16 : 0;  // 0: nothing is read, the 16 bytes are zeroed
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(const uint4* smem, uint32_t (&r)[4]) {
  const unsigned addr = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a (16x16, row) @ b (16x8, col), f32 accumulators.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<T, __half>);
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <class T> __device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// The image pixel one A row reads, fixed for the whole K_gemm walk.
struct ARow {
  int64_t base;    // offset of (n, 0, 0) in the image
  int64_t y0, x0;  // input row / column of tap (0, 0); may be in the padding
  bool valid;      // row < M
};

template <class T>
__global__ void __launch_bounds__(kGemmThreads) implicit_gemm_kernel(const ImplicitGemmArgs<T> a) {
  __shared__ uint4 smem_a[kStages][kBlockM * kChunksPerRow];  // (BLK_M, BLK_K) per stage, swizzled
  __shared__ uint4 smem_b[kStages][kBlockN * kChunksPerRow];  // (BLK_N, BLK_K) per stage, swizzled

  const int tid = int(threadIdx.x), lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int warp_m = warp / kWarpsN, warp_n = warp % kWarpsN;
  const int64_t tile_m = int64_t(blockIdx.x) / a.tiles_n, tile_n = int64_t(blockIdx.x) % a.tiles_n;
  const int64_t m0 = tile_m * kBlockM, n0 = tile_n * kBlockN;

  // This thread's load slots: chunk column `chunk`, A rows first_row + i * rows_step.
  const int chunk = tid % kChunksPerRow;
  const int first_row = tid / kChunksPerRow;
  constexpr int kRowsStep = kGemmThreads / kChunksPerRow;
  ARow rows[kAChunksPerThread];
#pragma unroll
  for (int i = 0; i < kAChunksPerThread; ++i) {
    const int64_t m = m0 + first_row + i * kRowsStep;
    const int64_t q = m % a.q, p = m / a.q % a.p, n = m / a.q / a.p;
    rows[i] = {n * a.in_n, p * a.geo.stride_h - a.geo.pad_h, q * a.geo.stride_w - a.geo.pad_w, m < a.m};
  }

  const auto load_stage = [&](int stage, int k_tile) {
    const int kk = k_tile * kBlockK + chunk * kChunkElems;  // first K_gemm index of the chunk
    const bool k_valid = kk < a.k_gemm;
    const int tap = kk / a.c, c = kk - tap * a.c;
    const int tap_r = tap / a.s, tap_s = tap - tap_r * a.s;
#pragma unroll
    for (int i = 0; i < kAChunksPerThread; ++i) {
      const int row = first_row + i * kRowsStep;
      const int64_t y = rows[i].y0 + tap_r * a.geo.dilation_h, x = rows[i].x0 + tap_s * a.geo.dilation_w;
      const bool inside = rows[i].valid && k_valid && y >= 0 && y < a.h && x >= 0 && x < a.w;
      const T* src = inside ? a.input + rows[i].base + y * a.in_h + x * a.in_w + c : a.input;
      cp_async_16(&smem_a[stage][swizzle(row, chunk)], src, inside);
    }
#pragma unroll
    for (int i = 0; i < kBChunksPerThread; ++i) {
      const int row = first_row + i * kRowsStep;
      const int64_t out_channel = n0 + row;
      const bool inside = k_valid && out_channel < a.k;
      const T* src = inside ? a.weight + out_channel * a.k_gemm + kk : a.weight;
      cp_async_16(&smem_b[stage][swizzle(row, chunk)], src, inside);
    }
  };

  float acc[kFragsM][kFragsN][4] = {};
  const int k_tiles = int(ceil_div(a.k_gemm, kBlockK));
  // One commit group per k-tile (empty past the end), so "all but the newest kStages - 2
  // groups complete" means tile kt has landed.
#pragma unroll
  for (int stage = 0; stage < kStages - 1; ++stage) {
    if (stage < k_tiles) load_stage(stage, stage);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    // Tile kt is visible to all threads, and every warp is done with iteration kt - 1, whose
    // stage the load below overwrites.
    __syncthreads();
    if (kt + kStages - 1 < k_tiles) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
    cp_async_commit();
    const uint4* tile_a = smem_a[kt % kStages];
    const uint4* tile_b = smem_b[kt % kStages];
#pragma unroll
    for (int ks = 0; ks < kBlockK / kMmaK; ++ks) {
      uint32_t frag_a[kFragsM][4];
      uint32_t frag_b[kFragsN][2];
      // A 16x16: matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15) in mma's a0..a3 order.
#pragma unroll
      for (int fm = 0; fm < kFragsM; ++fm) {
        const int row = warp_m * kWarpTileM + fm * kMmaM + lane % 8 + (lane / 8) % 2 * 8;
        ldmatrix_x4(&tile_a[swizzle(row, ks * 2 + lane / 16)], frag_a[fm]);
      }
      // B stored (n, k): one x4 gives two n8 tiles, each as (k 0-7, k 8-15).
#pragma unroll
      for (int fn = 0; fn < kFragsN; fn += 2) {
        const int row = warp_n * kWarpTileN + fn * kMmaN + lane % 8 + lane / 16 * 8;
        uint32_t r[4];
        ldmatrix_x4(&tile_b[swizzle(row, ks * 2 + (lane / 8) % 2)], r);
        frag_b[fn][0] = r[0], frag_b[fn][1] = r[1], frag_b[fn + 1][0] = r[2], frag_b[fn + 1][1] = r[3];
      }
#pragma unroll
      for (int fm = 0; fm < kFragsM; ++fm)
#pragma unroll
        for (int fn = 0; fn < kFragsN; ++fn) mma_16816<T>(acc[fm][fn], frag_a[fm], frag_b[fn][0], frag_b[fn][1]);
    }
  }

  // Accumulator (fm, fn): c0, c1 at row lane/4, columns 2*(lane%4) + {0, 1}; c2, c3 at row + 8.
  // K % 8 == 0, so a column pair is either inside the output or wholly past it.
#pragma unroll
  for (int fm = 0; fm < kFragsM; ++fm)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t m = m0 + warp_m * kWarpTileM + fm * kMmaM + lane / 4 + half * 8;
      if (m >= a.m) continue;
      const int64_t q = m % a.q, p = m / a.q % a.p, n = m / a.q / a.p;
      T* out = a.output + n * a.out_n + p * a.out_h + q * a.out_w;
#pragma unroll
      for (int fn = 0; fn < kFragsN; ++fn) {
        const int64_t channel = n0 + warp_n * kWarpTileN + fn * kMmaN + (lane % 4) * 2;
        if (channel >= a.k) continue;
        float lo = acc[fm][fn][half * 2], hi = acc[fm][fn][half * 2 + 1];
        if (a.bias != nullptr) {
          lo += to_f32(a.bias[channel * a.bias_stride]);
          hi += to_f32(a.bias[(channel + 1) * a.bias_stride]);
        }
        *reinterpret_cast<uint32_t*>(out + channel) = pack_pair<T>(lo, hi);
      }
    }
}

// weight (K, C, R, S), any strides -> dense (K, (r, s, c)), the implicit GEMM's B operand.
template <class T>
__global__ void __launch_bounds__(kDirectThreads) reorder_weight_kernel(const T* weight, ImageStrides ws, int64_t k,
                                                                        int64_t c, int64_t r, int64_t s, T* out) {
  const int64_t count = k * r * s * c;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ch = i % c, ts = i / c % s, tr = i / c / s % r, kk = i / c / s / r;
    out[i] = weight[kk * ws.n + ch * ws.c + tr * ws.h + ts * ws.w];
  }
}

// ------------------------------------------------------------------ host launchers
struct Launch {
  cudaStream_t stream;
  int64_t max_blocks;  // grid cap; grid-stride loops cover the rest
};

unsigned grid_for(int64_t work_items, int threads_per_item_group, const Launch& l) {
  return unsigned(std::clamp<int64_t>(ceil_div(work_items, threads_per_item_group), 1, l.max_blocks));
}

// Calls fn(T{}) with T the device element type of dtype.
template <class Fn> Status with_element_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn(float{});
    case DType::f16: return fn(__half{});
    case DType::bf16: return fn(__nv_bfloat16{});
    default: return unsupported(std::string("cuda conv2d: dtype ") + dtype_name(dtype) + " is not supported");
  }
}

// Makes the operands' device current and reads the launch settings.
struct Context {
  std::optional<cuda::DeviceGuard> guard;
  Launch launch{};
  const cuda::DeviceProps* props = nullptr;
};
Status enter(int device, Context* ctx) {
  ctx->guard.emplace(device);
  ANVIL_RETURN_IF_ERROR(ctx->guard->status());
  ANVIL_RETURN_IF_ERROR(cuda::device_props(device, &ctx->props));
  ctx->launch = {cuda::current_stream(), std::max<int64_t>(1, int64_t(ctx->props->sm_count) * kBlocksPerSm)};
  return Status::Ok();
}

// Packs the weights for the direct kernel (in a stream-ordered workspace) and launches it.
template <class T, bool kTransposed>
Status launch_direct(DirectArgs<T> a, const WeightRoles<T>& roles, const Launch& l, const char* what) {
  const int64_t blocks = a.groups * ceil_div(a.out_per_group, kChannelsPerThread);
  const int64_t items = blocks * a.dst_n * a.dst_h * a.dst_w;
  if (items == 0) return Status::Ok();
  cuda::Workspace workspace(l.stream);
  const int64_t packed_elems = blocks * a.taps_r * a.taps_s * a.reduced_per_group * kChannelsPerThread;
  if (packed_elems > 0) {  // else the reduction is empty and the kernel reads no weight
    void* packed = nullptr;
    ANVIL_RETURN_IF_ERROR(workspace.allocate(packed_elems * int64_t(sizeof(T)), &packed));
    pack_direct_weight_kernel<T><<<grid_for(packed_elems, kDirectThreads, l), kDirectThreads, 0, l.stream>>>(
        roles, a.groups, a.out_per_group, a.reduced_per_group, a.taps_r, a.taps_s, static_cast<T*>(packed));
    ANVIL_RETURN_IF_ERROR(cuda::check_launch("conv2d direct weight packing kernel"));
    a.packed = static_cast<const T*>(packed);
  }
  direct_conv_kernel<T, kTransposed><<<grid_for(items, kDirectThreads, l), kDirectThreads, 0, l.stream>>>(a);
  return cuda::check_launch(what);
}

template <class T> Status forward_direct(const Conv2dArgs& args, const Launch& l) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const TensorRef &in = args.input, &wt = args.weight, &out = args.output;
  DirectArgs<T> a{};
  a.src = in.ptr<const T>(), a.src_stride = strides_of(in), a.src_h = sh.h, a.src_w = sh.w;
  a.dst = out.ptr<T>(), a.dst_stride = strides_of(out), a.dst_n = sh.n, a.dst_h = sh.p, a.dst_w = sh.q;
  a.groups = sh.groups, a.out_per_group = sh.k_per_group(), a.reduced_per_group = sh.c_per_group();
  a.taps_r = sh.r, a.taps_s = sh.s, a.geo = geometry_of(args.params);
  if (args.bias) a.bias = args.bias->ptr<const T>(), a.bias_stride = args.bias->strides[0];
  const WeightRoles<T> roles{wt.ptr<const T>(), wt.strides[0], wt.strides[1], wt.strides[2], wt.strides[3],
                             sh.k_per_group(), 0};
  return launch_direct<T, false>(a, roles, l, "conv2d direct forward kernel");
}

template <class T> Status grad_input_direct(const Conv2dBackwardArgs& args, const Launch& l) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const TensorRef &g = args.grad_output, &wt = args.weight, &gi = *args.grad_input;
  DirectArgs<T> a{};
  a.src = g.ptr<const T>(), a.src_stride = strides_of(g), a.src_h = sh.p, a.src_w = sh.q;
  a.dst = gi.ptr<T>(), a.dst_stride = strides_of(gi), a.dst_n = sh.n, a.dst_h = sh.h, a.dst_w = sh.w;
  a.groups = sh.groups, a.out_per_group = sh.c_per_group(), a.reduced_per_group = sh.k_per_group();
  a.taps_r = sh.r, a.taps_s = sh.s, a.geo = geometry_of(args.params);
  const WeightRoles<T> roles{wt.ptr<const T>(), wt.strides[1], wt.strides[0], wt.strides[2], wt.strides[3],
                             0, sh.k_per_group()};
  return launch_direct<T, true>(a, roles, l, "conv2d direct grad_input kernel");
}

template <class T> Status grad_weight_direct(const Conv2dBackwardArgs& args, const Launch& l) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const TensorRef& gw = *args.grad_weight;
  WeightGradArgs<T> a{};
  a.grad_out = args.grad_output.ptr<const T>(), a.g = strides_of(args.grad_output);
  a.input = args.input.ptr<const T>(), a.in = strides_of(args.input);
  a.grad_weight = gw.ptr<T>(), a.gw = strides_of(gw);
  a.n = sh.n, a.h = sh.h, a.w = sh.w, a.k = sh.k, a.cg = sh.c_per_group(), a.kg = sh.k_per_group();
  a.r = sh.r, a.s = sh.s, a.p = sh.p, a.q = sh.q, a.geo = geometry_of(args.params);
  const int64_t elements = a.k * a.r * a.s * a.cg;
  if (elements == 0) return Status::Ok();
  weight_grad_kernel<T><<<grid_for(elements, kWarpSize, l), kReduceThreads, 0, l.stream>>>(a);
  return cuda::check_launch("conv2d direct grad_weight kernel");
}

template <class T> Status grad_bias_direct(const Conv2dBackwardArgs& args, const Launch& l) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  BiasGradArgs<T> a{};
  a.grad_out = args.grad_output.ptr<const T>(), a.g = strides_of(args.grad_output);
  a.grad_bias = args.grad_bias->ptr<T>(), a.bias_stride = args.grad_bias->strides[0];
  a.n = sh.n, a.k = sh.k, a.p = sh.p, a.q = sh.q;
  if (a.k == 0) return Status::Ok();
  bias_grad_kernel<T><<<grid_for(a.k, 1, l), kReduceThreads, 0, l.stream>>>(a);
  return cuda::check_launch("conv2d direct grad_bias kernel");
}

template <class T> Status implicit_gemm_forward(const Conv2dArgs& args, const Launch& l) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const TensorRef &in = args.input, &wt = args.weight, &out = args.output;
  ImplicitGemmArgs<T> a{};
  a.input = in.ptr<const T>(), a.in_n = in.strides[0], a.in_h = in.strides[2], a.in_w = in.strides[3];
  a.h = sh.h, a.w = sh.w, a.c = int(sh.c);
  a.output = out.ptr<T>(), a.out_n = out.strides[0], a.out_h = out.strides[2], a.out_w = out.strides[3];
  a.p = sh.p, a.q = sh.q, a.k = sh.k, a.s = int(sh.s);
  a.m = sh.n * sh.p * sh.q;
  a.k_gemm = int(sh.r * sh.s * sh.c);
  a.tiles_n = ceil_div(sh.k, kBlockN);
  a.geo = geometry_of(args.params);
  if (args.bias) a.bias = args.bias->ptr<const T>(), a.bias_stride = args.bias->strides[0];
  const int64_t tiles = ceil_div(a.m, kBlockM) * a.tiles_n;
  if (tiles == 0) return Status::Ok();

  cuda::Workspace workspace(l.stream);
  void* packed = nullptr;
  const int64_t weight_elems = sh.k * int64_t(a.k_gemm);
  ANVIL_RETURN_IF_ERROR(workspace.allocate(weight_elems * int64_t(sizeof(T)), &packed));
  reorder_weight_kernel<T><<<grid_for(weight_elems, kDirectThreads, l), kDirectThreads, 0, l.stream>>>(
      wt.ptr<const T>(), strides_of(wt), sh.k, sh.c, sh.r, sh.s, static_cast<T*>(packed));
  ANVIL_RETURN_IF_ERROR(cuda::check_launch("conv2d implicit_gemm weight reorder kernel"));
  a.weight = static_cast<const T*>(packed);
  implicit_gemm_kernel<T><<<unsigned(tiles), kGemmThreads, 0, l.stream>>>(a);
  return cuda::check_launch("conv2d implicit_gemm_sm80 kernel");
}

// ------------------------------------------------------------------ records
// All operands on one cuda device (the registry checks the device type of the first).
Status on_one_device(std::initializer_list<const TensorRef*> operands) {
  const Device first = (*operands.begin())->device;
  for (const TensorRef* t : operands) {
    if (t == nullptr) continue;
    if (t->device.type != DeviceType::cuda)
      return unsupported(std::string("cuda conv2d: an operand is on ") + device_type_name(t->device.type) +
                         ", not a cuda device");
    if (t->device.index != first.index)
      return unsupported("cuda conv2d: operands are on cuda devices " + std::to_string(first.index) + " and " +
                         std::to_string(t->device.index));
  }
  return Status::Ok();
}

const TensorRef* opt(const std::optional<TensorRef>& t) { return t ? &*t : nullptr; }

Status element_type_supported(DType dtype) {
  if (dtype == DType::f32 || dtype == DType::f16 || dtype == DType::bf16) return Status::Ok();
  return unsupported(std::string("cuda conv2d: dtype ") + dtype_name(dtype) + " is not supported");
}

// The direct kernels take any sizes, strides, groups and geometry (int64 offsets, grid-stride
// loops); they only need the operands on one cuda device in f32, f16 or bf16.
Status direct_accepts(const Conv2dArgs& args) {
  ANVIL_RETURN_IF_ERROR(element_type_supported(args.input.dtype));
  return on_one_device({&args.input, &args.weight, &args.output, opt(args.bias)});
}
Status direct_backward_accepts(const Conv2dBackwardArgs& args) {
  ANVIL_RETURN_IF_ERROR(element_type_supported(args.input.dtype));
  return on_one_device({&args.input, &args.weight, &args.grad_output, opt(args.grad_input), opt(args.grad_weight),
                        opt(args.grad_bias)});
}

Status forward_direct_run(const Conv2dArgs& args) {
  if (args.output.numel() == 0) return Status::Ok();
  Context ctx;
  ANVIL_RETURN_IF_ERROR(enter(args.input.device.index, &ctx));
  return with_element_type(args.input.dtype, [&](auto zero) { return forward_direct<decltype(zero)>(args, ctx.launch); });
}

Status backward_direct_run(const Conv2dBackwardArgs& args) {
  const bool grad_input = args.grad_input && args.grad_input->numel() > 0;
  const bool grad_weight = args.grad_weight && args.grad_weight->numel() > 0;
  const bool grad_bias = args.grad_bias && args.grad_bias->numel() > 0;
  if (!grad_input && !grad_weight && !grad_bias) return Status::Ok();
  Context ctx;
  ANVIL_RETURN_IF_ERROR(enter(args.input.device.index, &ctx));
  return with_element_type(args.input.dtype, [&](auto zero) {
    using T = decltype(zero);
    if (grad_input) ANVIL_RETURN_IF_ERROR(grad_input_direct<T>(args, ctx.launch));
    if (grad_weight) ANVIL_RETURN_IF_ERROR(grad_weight_direct<T>(args, ctx.launch));
    if (grad_bias) ANVIL_RETURN_IF_ERROR(grad_bias_direct<T>(args, ctx.launch));
    return Status::Ok();
  });
}

// Channels-last with 16-byte chunks: channel stride 1, every other stride (of a dim longer
// than 1) a multiple of 8 elements, element 0 16-byte aligned.
Status channels_last_chunks(const TensorRef& t, const char* name) {
  const auto misaligned = [&] {
    return unsupported(std::string("cuda conv2d implicit_gemm_sm80: ") + name + " " + t.to_string() +
                       " is not channels-last with 16-byte aligned pixels (channel stride 1, other strides "
                       "multiples of 8, 16-byte aligned start)");
  };
  if (t.shape[1] > 1 && t.strides[1] != 1) return misaligned();
  for (int d : {0, 2, 3})
    if (t.shape[d] > 1 && t.strides[d] % kChunkElems != 0) return misaligned();
  if (reinterpret_cast<uintptr_t>(t.ptr<const void>()) % 16 != 0) return misaligned();
  return Status::Ok();
}

Status implicit_gemm_accepts(const Conv2dArgs& args) {
  ANVIL_RETURN_IF_ERROR(on_one_device({&args.input, &args.weight, &args.output, opt(args.bias)}));
  const char* kName = "cuda conv2d implicit_gemm_sm80: ";
  if (args.input.dtype != DType::f16 && args.input.dtype != DType::bf16)
    return unsupported(std::string(kName) + "tensor cores need f16 or bf16, got " + dtype_name(args.input.dtype));
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  if (sh.groups != 1) return unsupported(std::string(kName) + "grouped convolution (groups > 1) is not supported");
  if (sh.c == 0 || sh.c % kChunkElems != 0)
    return unsupported(std::string(kName) + "input channels must be a positive multiple of 8, got " +
                       std::to_string(sh.c));
  if (sh.k % kChunkElems != 0)
    return unsupported(std::string(kName) + "output channels must be a multiple of 8, got " + std::to_string(sh.k));
  if (sh.r == 0 || sh.s == 0) return unsupported(std::string(kName) + "the filter has no taps");
  if (sh.r * sh.s * sh.c > INT32_MAX - kBlockK)
    return unsupported(std::string(kName) + "R*S*C above 2^31 is not supported");
  if (ceil_div(sh.n * sh.p * sh.q, kBlockM) * ceil_div(sh.k, kBlockN) > INT32_MAX)
    return unsupported(std::string(kName) + "more than 2^31 output tiles");
  ANVIL_RETURN_IF_ERROR(channels_last_chunks(args.input, "input"));
  ANVIL_RETURN_IF_ERROR(channels_last_chunks(args.output, "output"));
  const cuda::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(cuda::device_props(args.input.device.index, &props));
  if (props->compute_capability() < 80)
    return unsupported(std::string(kName) + "needs compute capability 8.0 (mma.sync bf16/f16, cp.async), device " +
                       std::to_string(props->index) + " is " + std::to_string(props->cc_major) + "." +
                       std::to_string(props->cc_minor));
  return Status::Ok();
}

Status implicit_gemm_run(const Conv2dArgs& args) {
  if (args.output.numel() == 0) return Status::Ok();
  Context ctx;
  ANVIL_RETURN_IF_ERROR(enter(args.input.device.index, &ctx));
  if (args.input.dtype == DType::bf16) return implicit_gemm_forward<__nv_bfloat16>(args, ctx.launch);
  return implicit_gemm_forward<__half>(args, ctx.launch);
}

}  // namespace

// Priorities: the direct kernels (100) run every call; the tensor-core implicit GEMM (150)
// is taken ahead of them for the channels-last f16/bf16 calls it accepts.
void add_conv2d_kernels(dispatch::KernelTables& tables) {
  constexpr int kDirectPriority = 100, kImplicitGemmPriority = 150;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    tables.add(dispatch::KernelRecord<Conv2dArgs>{dispatch::kernel_name(Op::conv2d, dtype, "cuda", "direct"), "cuda",
                                                  dtype, kDirectPriority, &direct_accepts, &forward_direct_run});
    tables.add(dispatch::KernelRecord<Conv2dBackwardArgs>{
        dispatch::kernel_name(Op::conv2d_backward, dtype, "cuda", "direct"), "cuda", dtype, kDirectPriority,
        &direct_backward_accepts, &backward_direct_run});
  }
  for (DType dtype : {DType::f16, DType::bf16})
    tables.add(dispatch::KernelRecord<Conv2dArgs>{dispatch::kernel_name(Op::conv2d, dtype, "cuda", "implicit_gemm_sm80"),
                                                  "cuda", dtype, kImplicitGemmPriority, &implicit_gemm_accepts,
                                                  &implicit_gemm_run});
}

}  // namespace anvil::cuda_conv
