// GEMM on CUDA device memory. The lowering, the SIMT kernel, the backward and the records
// are the shared GPU code (gemm_gpu.inc, also compiled by hipcc for the hip backend); this
// file adds the cuda backend's tensor-core mainloops, best first: TMA + wgmma on sm_90a
// (gemm_cuda_sm90.cu), then mma.sync on sm_80 and newer (gemm_cuda_sm80.cu).
#include "kernels/gemm/gemm_gpu.inc"

#include "kernels/gemm/gemm_cuda.h"

namespace anvil::gpu_gemm {
inline namespace ANVIL_GPU_ABI {

std::span<const Mainloop> matrix_core_mainloops() {
  static constexpr Mainloop kMainloops[] = {
      {"sm90_wgmma", 200, cuda_gemm::sm90_accepts, cuda_gemm::run_sm90},
      {"sm80_mma", 150, cuda_gemm::sm80_accepts, cuda_gemm::run_sm80},
  };
  return kMainloops;
}

}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu_gemm

namespace anvil::cuda_gemm {
void add_gemm_kernels(dispatch::KernelTables& tables) { gpu_gemm::add_gemm_kernels(tables); }
}  // namespace anvil::cuda_gemm
