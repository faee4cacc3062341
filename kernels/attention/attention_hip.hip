// Attention on HIP device memory (AMD GPUs). The lowering and the records are the shared GPU
// code (attention_gpu.inc, also compiled by nvcc for the cuda backend), the SIMT kernels are
// in attention_hip_simt.hip (attention_gpu_simt.inc); this file adds the hip backend's
// matrix-core forward: FlashAttention-2 order on MFMA (attention_hip_flash.hip).
#include "kernels/attention/attention_gpu.inc"

#include "kernels/attention/attention_hip.h"

namespace anvil::gpu_attention {
inline namespace ANVIL_GPU_ABI {

std::span<const FlashKernel> flash_kernels() {
  static constexpr FlashKernel kKernels[] = {
      {"flash_mfma", 150, hip_attention::flash_mfma_accepts, hip_attention::run_flash_mfma},
  };
  return kKernels;
}

}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu_attention

namespace anvil::hip_attention {
void add_attention_kernels(dispatch::KernelTables& tables) { gpu_attention::add_attention_kernels(tables); }
}  // namespace anvil::hip_attention
