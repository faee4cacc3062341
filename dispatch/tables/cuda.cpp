// Registration table of the cuda backend: kernels on CUDA device memory, on the calling
// thread's stream (anvil::set_stream). Priorities: the tensor-core kernels (sm_90a wgmma,
// then sm_80 mma.sync) above the SIMT kernels, which take every dtype, stride and shape
// the tensor-core ones refuse.
#include "backends/cuda/cuda_runtime.h"
#include "dispatch/kernel_record.h"

namespace anvil::cuda_gemm {
void add_gemm_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::cuda_gemm
namespace anvil::cuda_conv {
void add_conv2d_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::cuda_conv
namespace anvil::cuda_attention {
void add_attention_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::cuda_attention

namespace anvil::dispatch {
namespace {

const DeviceMemory cuda_memory = {
    cuda::malloc_device,
    cuda::free_device,
    [](int device, void* dst, const void* src, int64_t bytes) {
      cuda::DeviceGuard guard(device);
      ANVIL_RETURN_IF_ERROR(guard.status());
      return cuda::copy(dst, src, bytes, cudaMemcpyHostToDevice);
    },
    [](int device, void* dst, const void* src, int64_t bytes) {
      cuda::DeviceGuard guard(device);
      ANVIL_RETURN_IF_ERROR(guard.status());
      return cuda::copy(dst, src, bytes, cudaMemcpyDeviceToHost);
    },
    cuda::synchronize,
    [](void* stream) { cuda::set_stream(static_cast<cudaStream_t>(stream)); },
    [] { return static_cast<void*>(cuda::current_stream()); },
};

}  // namespace

void register_cuda(KernelTables& tables) {
  BackendRecord backend{"cuda", {DeviceType::cuda}, [] { return cuda::available(); }, [] { return cuda::describe(); }};
  backend.memory = &cuda_memory;
  tables.add_backend(std::move(backend));
  cuda_gemm::add_gemm_kernels(tables);
  cuda_conv::add_conv2d_kernels(tables);
  cuda_attention::add_attention_kernels(tables);
}

}  // namespace anvil::dispatch
