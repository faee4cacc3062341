// cuda conv2d: the direct SIMT kernels for every layout, dtype, group count and geometry
// are the shared GPU code (conv2d_gpu_direct.inc, also compiled by hipcc for the hip
// backend); this file adds the tensor-core implicit GEMM forward for f16/bf16 channels-last
// images (sm_80 and newer, mma.sync).
#include "kernels/conv2d/conv2d_gpu_direct.inc"

namespace anvil::gpu_conv {
inline namespace ANVIL_GPU_ABI {
namespace {

// ------------------------------------------------------------------ config
constexpr int kWarpSize = 32;
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
  ANVIL_RETURN_IF_ERROR(channels_last_chunks(args.input, kName, "input"));
  ANVIL_RETURN_IF_ERROR(channels_last_chunks(args.output, kName, "output"));
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
}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu_conv

namespace anvil::cuda_conv {

// Priorities: the direct kernels (100) run every call; the tensor-core implicit GEMM (150)
// is taken ahead of them for the channels-last f16/bf16 calls it accepts.
void add_conv2d_kernels(dispatch::KernelTables& tables) {
  constexpr int kImplicitGemmPriority = 150;
  gpu_conv::add_direct_conv2d_kernels(tables);
  for (DType dtype : {DType::f16, DType::bf16})
    tables.add(dispatch::KernelRecord<Conv2dArgs>{dispatch::kernel_name(Op::conv2d, dtype, "cuda", "implicit_gemm_sm80"),
                                                  "cuda", dtype, kImplicitGemmPriority, &gpu_conv::implicit_gemm_accepts,
                                                  &gpu_conv::implicit_gemm_run});
}

}  // namespace anvil::cuda_conv
