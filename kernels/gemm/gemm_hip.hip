// GEMM on HIP device memory (AMD GPUs). The lowering, the SIMT kernel, the backward and the
// records are the shared GPU code (gemm_gpu.inc, also compiled by nvcc for the cuda
// backend); this file adds the hip backend's matrix-core mainloop: MFMA on gfx90a / gfx94x
// (gemm_hip_mfma.hip).
#include "kernels/gemm/gemm_gpu.inc"

#include "kernels/gemm/gemm_hip.h"

namespace anvil::gpu_gemm {
inline namespace ANVIL_GPU_ABI {

std::span<const Mainloop> matrix_core_mainloops() {
  static constexpr Mainloop kMainloops[] = {
      {"mfma", 150, hip_gemm::mfma_accepts, hip_gemm::run_mfma},
  };
  return kMainloops;
}

}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu_gemm

namespace anvil::hip_gemm {
void add_gemm_kernels(dispatch::KernelTables& tables) { gpu_gemm::add_gemm_kernels(tables); }
}  // namespace anvil::hip_gemm
