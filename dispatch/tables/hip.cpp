// Registration table of the hip backend: kernels on HIP device memory (AMD GPUs; torch's
// "cuda" tensors on a ROCm build of torch), on the calling thread's stream
// (anvil::set_stream(DeviceType::hip, ...)). Priorities: the MFMA kernels above the SIMT
// kernels (shared with the cuda backend), which take every dtype, stride and shape the
// MFMA ones refuse.
#include "backends/hip/hip_runtime.h"
#include "dispatch/kernel_record.h"

namespace anvil::hip_gemm {
void add_gemm_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::hip_gemm
namespace anvil::hip_conv {
void add_conv2d_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::hip_conv
namespace anvil::hip_attention {
void add_attention_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::hip_attention

namespace anvil::dispatch {
namespace {

const DeviceMemory hip_memory = {
    hip::malloc_device,
    hip::free_device,
    [](int device, void* dst, const void* src, int64_t bytes) {
      hip::DeviceGuard guard(device);
      ANVIL_RETURN_IF_ERROR(guard.status());
      return hip::copy(dst, src, bytes, hipMemcpyHostToDevice);
    },
    [](int device, void* dst, const void* src, int64_t bytes) {
      hip::DeviceGuard guard(device);
      ANVIL_RETURN_IF_ERROR(guard.status());
      return hip::copy(dst, src, bytes, hipMemcpyDeviceToHost);
    },
    hip::synchronize,
    [](void* stream) { hip::set_stream(static_cast<hipStream_t>(stream)); },
    [] { return static_cast<void*>(hip::current_stream()); },
};

}  // namespace

void register_hip(KernelTables& tables) {
  BackendRecord backend{"hip", {DeviceType::hip}, [] { return hip::available(); }, [] { return hip::describe(); }};
  backend.memory = &hip_memory;
  tables.add_backend(std::move(backend));
  hip_gemm::add_gemm_kernels(tables);
  hip_conv::add_conv2d_kernels(tables);
  hip_attention::add_attention_kernels(tables);
}

}  // namespace anvil::dispatch
