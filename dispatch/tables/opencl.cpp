// Registration table of the opencl backend: kernels in OpenCL C, compiled at run time for
// the device and cached (backends/opencl/opencl_runtime.h).
//
// Memory: OpenCL buffers (DeviceType::opencl: TensorRef.data is the cl_mem, .offset the
// element offset), and host memory, wrapped per call with CL_MEM_USE_HOST_PTR (zero-copy on
// devices that share host memory, such as PoCL's CPU device) so that torch CPU tensors run
// here when the user forces the backend (anvil.force(backend="opencl")).
//
// Priorities: on opencl buffers the opencl kernels are the only candidates. On host memory
// every opencl record ranks below the reference backend (priority 0), so it is never picked
// by default over the cpu, oneapi or reference kernels; only a forced backend or kernel
// selects it there.
#include "backends/opencl/opencl_runtime.h"
#include "dispatch/kernel_record.h"

namespace anvil::opencl_gemm {
void add_gemm_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::opencl_gemm
namespace anvil::opencl_conv2d {
void add_conv2d_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::opencl_conv2d
namespace anvil::opencl_attention {
void add_attention_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::opencl_attention

namespace anvil::dispatch {
namespace {

const DeviceMemory opencl_memory = {
    opencl::malloc_device,
    opencl::free_device,
    opencl::copy_to_device,
    opencl::copy_to_host,
    opencl::synchronize,
    // Ops enqueue on anvil's in-order queue of each device; a caller's queue is not taken.
    [](void*) {},
    []() -> void* {
      opencl::DeviceContext* ctx = nullptr;
      return opencl::device_context(0, &ctx).ok() ? static_cast<void*>(ctx->queue) : nullptr;
    },
};

}  // namespace

void register_opencl(KernelTables& tables) {
  BackendRecord backend{"opencl", {DeviceType::opencl, DeviceType::host}, [] { return opencl::available(); },
                        [] { return opencl::describe(); }};
  backend.memory = &opencl_memory;
  tables.add_backend(std::move(backend));
  opencl_gemm::add_gemm_kernels(tables);
  opencl_conv2d::add_conv2d_kernels(tables);
  opencl_attention::add_attention_kernels(tables);
}

}  // namespace anvil::dispatch
