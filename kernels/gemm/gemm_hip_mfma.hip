// bf16/f16 GEMM on MFMA (CDNA2 gfx90a, CDNA3 gfx94x) with f32 accumulation: the hip
// backend's matrix-core mainloop (gemm_hip_mfma.h) with the GEMM's operand loaders and
// epilogue. The A tile is staged from either layout of a (k contiguous: row-major a; rows
// contiguous: transposed a), the B^T tile from either layout of b (k contiguous: transposed
// b; columns contiguous: row-major b).
//
// Epilogue: accumulator r of MFMA tile (i, j) is c element (acc_row(i, r), acc_col(j)); the
// 32 lanes of a half-wavefront hold 32 consecutive columns of one row, so stores of a
// row-major c are coalesced. c = alpha * acc (+ beta * c) (+ bias), rounded once.
#include <cstdint>
#include <string>

#include "backends/gpu/gpu_backend.h"
#include "kernels/gemm/gemm_hip.h"
#include "kernels/gemm/gemm_hip_mfma.h"

namespace anvil::hip_gemm {
namespace {

using namespace anvil::hip_mfma;

constexpr int kMaxGridYZ = 65535;

struct KernelParams {
  Problem p;
};

// A_K: a.col_stride == 1 (else a.row_stride == 1). B_K: b.row_stride == 1, i.e. b^T rows
// are k-contiguous (else b.col_stride == 1).
template <class T, bool A_K, bool B_K>
__global__ void __launch_bounds__(kThreads) gemm_mfma_kernel(const KernelParams params) {
  __shared__ u32x4 lds[kLdsChunks];
  const Problem& p = params.p;
  const int64_t m0 = int64_t(blockIdx.y) * kBlockM, n0 = int64_t(blockIdx.x) * kBlockN;
  const int64_t batch = blockIdx.z;
  const uint16_t* a = static_cast<const uint16_t*>(p.a.data) + batch * p.a.batch_stride;
  const uint16_t* b = static_cast<const uint16_t*>(p.b.data) + batch * p.b.batch_stride;

  using LoadA = std::conditional_t<A_K, KContiguous<T>, RowsContiguous<T>>;
  using LoadB = std::conditional_t<B_K, KContiguous<T>, RowsContiguous<T>>;
  const LoadA load_a{a, A_K ? p.a.row_stride : p.a.col_stride, p.m, p.k, m0};
  const LoadB load_b{b, B_K ? p.b.col_stride : p.b.row_stride, p.n, p.k, n0};

  floatx16 acc[kTilesM][kTilesN];
#pragma unroll
  for (int i = 0; i < kTilesM; ++i)
#pragma unroll
    for (int j = 0; j < kTilesN; ++j) acc[i][j] = floatx16{};
  mainloop<T>(load_a, load_b, (p.k + kBlockK - 1) / kBlockK, acc, lds);

  T* c = static_cast<T*>(p.c.data) + batch * p.c.batch_stride;
  const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
  for (int i = 0; i < kTilesM; ++i)
#pragma unroll
    for (int j = 0; j < kTilesN; ++j) {
      const int64_t col = n0 + acc_col(j);
      if (col >= p.n) continue;
      const float bias_value = bias ? gpu::to_f32(bias[col * p.bias_stride]) : 0.0f;
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        const int64_t row = m0 + acc_row(i, r);
        if (row >= p.m) continue;
        T* out = c + row * p.c.row_stride + col * p.c.col_stride;
        float v = p.alpha * acc[i][j][r];
        if (p.beta != 0.0f) v += p.beta * gpu::to_f32(*out);
        *out = gpu::from_f32<T>(v + bias_value);
      }
    }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T, bool A_K, bool B_K> Status launch(const Problem& p) {
  const dim3 grid(unsigned((p.n + kBlockN - 1) / kBlockN), unsigned((p.m + kBlockM - 1) / kBlockM), unsigned(p.batch));
  gemm_mfma_kernel<T, A_K, B_K><<<grid, kThreads, 0, p.stream>>>(KernelParams{p});
  return hip::check_launch("gemm_mfma");
}

}  // namespace

Status mfma_arch_supported(const std::string& gfx, const char* kernel) {
  for (const char* arch : {"gfx90a", "gfx940", "gfx941", "gfx942"})
    if (gfx == arch) return Status::Ok();
  return unsupported(std::string(kernel) + ": needs v_mfma_f32_32x32x8{bf16_1k,f16} (gfx90a, gfx94x); the device is " +
                     gfx);
}

Status mfma_accepts(const Problem& p) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    return unsupported(std::string("mfma takes bf16 and f16, not ") + dtype_name(p.dtype));
  if (p.sum_batches) return unsupported("sums over the batch run on the SIMT kernel");
  const hip::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(hip::device_props(p.device, &props));
  ANVIL_RETURN_IF_ERROR(mfma_arch_supported(props->gfx(), "gemm mfma"));
  if (props->lds_per_workgroup < int64_t(sizeof(u32x4)) * kLdsChunks)
    return unsupported("gemm mfma needs " + std::to_string(sizeof(u32x4) * kLdsChunks) + " bytes of LDS per workgroup");
  if (p.batch > kMaxGridYZ) return unsupported("batch > 65535 (grid z limit)");
  if (p.m > int64_t(kMaxGridYZ) * kBlockM) return unsupported("m > 65535 * 128 (grid y limit)");
  const bool a_ok = (p.a.col_stride == 1 && p.a.row_stride % kChunk == 0) ||
                    (p.a.row_stride == 1 && p.a.col_stride % kChunk == 0);
  const bool b_ok = (p.b.col_stride == 1 && p.b.row_stride % kChunk == 0) ||
                    (p.b.row_stride == 1 && p.b.col_stride % kChunk == 0);
  if (!a_ok || !b_ok)
    return unsupported(std::string(a_ok ? "b" : "a") +
                       ": needs one unit stride and the other a multiple of 8 elements (16-byte chunks)");
  if (p.a.batch_stride % kChunk || p.b.batch_stride % kChunk || !aligned16(p.a.data) || !aligned16(p.b.data))
    return unsupported("a and b need 16-byte aligned base pointers and batch strides");
  return Status::Ok();
}

Status run_mfma(const Problem& p) {
  if (p.m == 0 || p.n == 0 || p.batch == 0) return Status::Ok();
  // k contiguous where it is (ties, e.g. a single column, go k-contiguous).
  const bool a_k = p.a.col_stride == 1 && p.a.row_stride % kChunk == 0;
  const bool b_k = !(p.b.col_stride == 1 && p.b.row_stride % kChunk == 0);
  const auto dispatch = [&]<class T>() {
    if (a_k) return b_k ? launch<T, true, true>(p) : launch<T, true, false>(p);
    return b_k ? launch<T, false, true>(p) : launch<T, false, false>(p);
  };
  return p.dtype == DType::bf16 ? dispatch.template operator()<gpu::bfloat16>()
                                : dispatch.template operator()<gpu::half>();
}

}  // namespace anvil::hip_gemm
