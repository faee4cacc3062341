// hip conv2d: the direct SIMT kernels for every layout, dtype, group count and geometry are
// the shared GPU code (conv2d_gpu_direct.inc, also compiled by nvcc for the cuda backend);
// this file adds the MFMA implicit GEMM forward for f16/bf16 channels-last (NHWC) images
// (gfx90a, gfx94x).
//
// Implicit GEMM: C (M = N*P*Q pixels, N_gemm = K channels) = A (M, K_gemm = R*S*C taps,
// gathered from the NHWC image) @ B^T, B = the weights as a dense (K, K_gemm) matrix
// (reorder_weight_kernel, once per call). The mainloop is the GEMM's (gemm_hip_mfma.h);
// only the A loader differs: K_gemm is ordered (r, s, c) with c fastest, so with C % 8 == 0
// each 16-byte chunk of an A row is 8 channels of one tap of one pixel, contiguous in the
// image or all padding (zero). Each thread's A rows (pixels) are fixed for the whole K walk.
// The epilogue adds the bias and stores through the output's strides (any layout).
#include "kernels/conv2d/conv2d_gpu_direct.inc"

#include "kernels/gemm/gemm_hip.h"
#include "kernels/gemm/gemm_hip_mfma.h"

namespace anvil::gpu_conv {
inline namespace ANVIL_GPU_ABI {
namespace {

using hip_mfma::floatx16;
using hip_mfma::u32x4;

constexpr int kImplicitGemmPriority = 150;

template <class T> struct MfmaConvArgs {
  const uint16_t* input;  // NHWC: channel stride 1
  int64_t in_n, in_h, in_w;  // strides of n, h, w (elements)
  int64_t h, w;
  int c;                  // input channels (R * S * C < 2^31)
  const uint16_t* weight;  // (K, K_gemm) row-major workspace, K_gemm = (r, s, c)
  T* output;
  ImageStrides out;
  int64_t p, q, k;
  int s;                  // filter width
  int64_t m;              // N * P * Q
  int k_gemm;             // R * S * C
  Geometry geo;
  const T* bias;  // null: none
  int64_t bias_stride;
};

// The A operand: rows are output pixels, k is (r, s, c). Thread t owns rows t / 4 + 64 j
// (j < 2) and chunk column t % 4 of every k tile, as hip_mfma::KContiguous does.
template <class T> struct ImageRows {
  static constexpr int kRows = hip_mfma::kChunksPerThread;
  // Copies of the few fields the walk reads (a pointer to the kernel argument would make the
  // compiler copy the argument to scratch memory).
  const uint16_t* input;
  int64_t in_h, in_w, h, w;
  int c, s, k_gemm;
  int64_t dilation_h, dilation_w;
  int64_t base[kRows];           // offset of (n, 0, 0) in the image
  int64_t y0[kRows], x0[kRows];  // input row / column of tap (0, 0); may be in the padding
  bool valid[kRows];             // row < M

  __device__ ImageRows(const MfmaConvArgs<T>& args, int64_t m0)
      : input(args.input), in_h(args.in_h), in_w(args.in_w), h(args.h), w(args.w), c(args.c), s(args.s),
        k_gemm(args.k_gemm), dilation_h(args.geo.dilation_h), dilation_w(args.geo.dilation_w) {
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int chunk = int(threadIdx.x) + j * hip_mfma::kThreads;
      const int64_t m = m0 + chunk / hip_mfma::kChunksPerRow;
      const int64_t q = m % args.q, p = m / args.q % args.p, n = m / args.q / args.p;
      base[j] = n * args.in_n;
      y0[j] = p * args.geo.stride_h - args.geo.pad_h;
      x0[j] = q * args.geo.stride_w - args.geo.pad_w;
      valid[j] = m < args.m;
    }
  }

  __device__ void fetch(int64_t k0, u32x4 (&r)[kRows]) const {
    const int kk = int(k0) + (int(threadIdx.x) % hip_mfma::kChunksPerRow) * hip_mfma::kChunk;
    const bool k_valid = kk < k_gemm;
    const int tap = kk / c, ch = kk - tap * c;
    const int tap_r = tap / s, tap_s = tap - tap_r * s;
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int64_t y = y0[j] + tap_r * dilation_h, x = x0[j] + tap_s * dilation_w;
      const bool inside = valid[j] && k_valid && y >= 0 && y < h && x >= 0 && x < w;
      r[j] = inside ? hip_mfma::load_chunk(input + base[j] + y * in_h + x * in_w + ch) : u32x4{0u, 0u, 0u, 0u};
    }
  }
  __device__ void stash(u32x4* tile, const u32x4 (&r)[kRows]) const {
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int chunk = int(threadIdx.x) + j * hip_mfma::kThreads;
      tile[hip_mfma::chunk_index(chunk / hip_mfma::kChunksPerRow, chunk % hip_mfma::kChunksPerRow)] = r[j];
    }
  }
};

// Block (x, y) = (channel tile, pixel tile).
template <class T>
__global__ void __launch_bounds__(hip_mfma::kThreads) implicit_gemm_mfma_kernel(const MfmaConvArgs<T> a) {
  __shared__ u32x4 lds[hip_mfma::kLdsChunks];
  const int64_t m0 = int64_t(blockIdx.y) * hip_mfma::kBlockM, n0 = int64_t(blockIdx.x) * hip_mfma::kBlockN;
  const ImageRows<T> load_a(a, m0);
  const hip_mfma::KContiguous<T> load_b{a.weight, a.k_gemm, a.k, a.k_gemm, n0};

  floatx16 acc[hip_mfma::kTilesM][hip_mfma::kTilesN];
#pragma unroll
  for (int i = 0; i < hip_mfma::kTilesM; ++i)
#pragma unroll
    for (int j = 0; j < hip_mfma::kTilesN; ++j) acc[i][j] = floatx16{};
  hip_mfma::mainloop<T>(load_a, load_b, (a.k_gemm + hip_mfma::kBlockK - 1) / hip_mfma::kBlockK, acc, lds);

#pragma unroll
  for (int j = 0; j < hip_mfma::kTilesN; ++j) {
    const int64_t channel = n0 + hip_mfma::acc_col(j);
    if (channel >= a.k) continue;
    const float bias = a.bias ? to_f32(a.bias[channel * a.bias_stride]) : 0.0f;
#pragma unroll
    for (int i = 0; i < hip_mfma::kTilesM; ++i)
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        const int64_t m = m0 + hip_mfma::acc_row(i, r);
        if (m >= a.m) continue;
        const int64_t q = m % a.q, p = m / a.q % a.p, n = m / a.q / a.p;
        a.output[n * a.out.n + channel * a.out.c + p * a.out.h + q * a.out.w] = from_f32<T>(acc[i][j][r] + bias);
      }
  }
}

template <class T> Status implicit_gemm_mfma_forward(const Conv2dArgs& args, const Launch& l) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const TensorRef &in = args.input, &wt = args.weight, &out = args.output;
  MfmaConvArgs<T> a{};
  a.input = in.ptr<const uint16_t>(), a.in_n = in.strides[0], a.in_h = in.strides[2], a.in_w = in.strides[3];
  a.h = sh.h, a.w = sh.w, a.c = int(sh.c);
  a.output = out.ptr<T>(), a.out = strides_of(out);
  a.p = sh.p, a.q = sh.q, a.k = sh.k, a.s = int(sh.s);
  a.m = sh.n * sh.p * sh.q;
  a.k_gemm = int(sh.r * sh.s * sh.c);
  a.geo = geometry_of(args.params);
  if (args.bias) a.bias = args.bias->ptr<const T>(), a.bias_stride = args.bias->strides[0];
  const int64_t tiles_m = ceil_div(a.m, hip_mfma::kBlockM), tiles_n = ceil_div(sh.k, hip_mfma::kBlockN);
  if (tiles_m == 0 || tiles_n == 0) return Status::Ok();

  hip::Workspace workspace(l.stream);
  void* packed = nullptr;
  const int64_t weight_elems = sh.k * int64_t(a.k_gemm);
  ANVIL_RETURN_IF_ERROR(workspace.allocate(weight_elems * int64_t(sizeof(T)), &packed));
  reorder_weight_kernel<T><<<grid_for(weight_elems, kDirectThreads, l), kDirectThreads, 0, l.stream>>>(
      wt.ptr<const T>(), strides_of(wt), sh.k, sh.c, sh.r, sh.s, static_cast<T*>(packed));
  ANVIL_RETURN_IF_ERROR(hip::check_launch("conv2d implicit_gemm weight reorder kernel"));
  a.weight = static_cast<const uint16_t*>(packed);
  implicit_gemm_mfma_kernel<T><<<dim3(unsigned(tiles_n), unsigned(tiles_m)), hip_mfma::kThreads, 0, l.stream>>>(a);
  return hip::check_launch("conv2d implicit_gemm_mfma kernel");
}

Status implicit_gemm_mfma_accepts(const Conv2dArgs& args) {
  ANVIL_RETURN_IF_ERROR(on_one_device({&args.input, &args.weight, &args.output, opt(args.bias)}));
  const char* kName = "hip conv2d implicit_gemm_mfma: ";
  if (args.input.dtype != DType::f16 && args.input.dtype != DType::bf16)
    return unsupported(std::string(kName) + "MFMA needs f16 or bf16, got " + dtype_name(args.input.dtype));
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  if (sh.groups != 1) return unsupported(std::string(kName) + "grouped convolution (groups > 1) is not supported");
  if (sh.c == 0 || sh.c % 8 != 0)
    return unsupported(std::string(kName) + "input channels must be a positive multiple of 8, got " +
                       std::to_string(sh.c));
  if (sh.r == 0 || sh.s == 0) return unsupported(std::string(kName) + "the filter has no taps");
  if (sh.r * sh.s * sh.c > INT32_MAX - hip_mfma::kBlockK)
    return unsupported(std::string(kName) + "R*S*C above 2^31 is not supported");
  if (ceil_div(sh.n * sh.p * sh.q, hip_mfma::kBlockM) > 65535 || ceil_div(sh.k, hip_mfma::kBlockN) > 65535)
    return unsupported(std::string(kName) + "more than 65535 pixel or channel tiles (grid limits)");
  ANVIL_RETURN_IF_ERROR(channels_last_chunks(args.input, kName, "input"));
  const hip::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(hip::device_props(args.input.device.index, &props));
  return hip_gemm::mfma_arch_supported(props->gfx(), "conv2d implicit_gemm_mfma");
}

Status implicit_gemm_mfma_run(const Conv2dArgs& args) {
  if (args.output.numel() == 0) return Status::Ok();
  Context ctx;
  ANVIL_RETURN_IF_ERROR(enter(args.input.device.index, &ctx));
  if (args.input.dtype == DType::bf16) return implicit_gemm_mfma_forward<gpu::bfloat16>(args, ctx.launch);
  return implicit_gemm_mfma_forward<gpu::half>(args, ctx.launch);
}

}  // namespace
}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu_conv

namespace anvil::hip_conv {

// Priorities: the direct kernels (100) run every call; the MFMA implicit GEMM (150) is taken
// ahead of them for the channels-last f16/bf16 calls it accepts.
void add_conv2d_kernels(dispatch::KernelTables& tables) {
  gpu_conv::add_direct_conv2d_kernels(tables);
  for (DType dtype : {DType::f16, DType::bf16})
    tables.add(dispatch::KernelRecord<Conv2dArgs>{dispatch::kernel_name(Op::conv2d, dtype, "hip", "implicit_gemm_mfma"),
                                                  "hip", dtype, gpu_conv::kImplicitGemmPriority,
                                                  &gpu_conv::implicit_gemm_mfma_accepts,
                                                  &gpu_conv::implicit_gemm_mfma_run});
}

}  // namespace anvil::hip_conv
