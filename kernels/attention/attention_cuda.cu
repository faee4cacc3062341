// Attention on CUDA device memory. The lowering and the records are the shared GPU code
// (attention_gpu.inc, also compiled by hipcc for the hip backend), the SIMT kernels are in
// attention_cuda_simt.cu (attention_gpu_simt.inc); this file adds the cuda backend's
// tensor-core forward: FlashAttention-2 on mma.sync (attention_cuda_flash.cu).
#include "kernels/attention/attention_gpu.inc"

#include "kernels/attention/attention_cuda.h"

namespace anvil::gpu_attention {
inline namespace ANVIL_GPU_ABI {

std::span<const FlashKernel> flash_kernels() {
  static constexpr FlashKernel kKernels[] = {
      {"flash_sm80", 150, cuda_attention::flash_sm80_accepts, cuda_attention::run_flash_sm80},
  };
  return kKernels;
}

}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu_attention

namespace anvil::cuda_attention {
void add_attention_kernels(dispatch::KernelTables& tables) { gpu_attention::add_attention_kernels(tables); }
}  // namespace anvil::cuda_attention
