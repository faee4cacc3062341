// Registration table of the oneapi backend: oneDNN primitives on host memory (its CPU
// engine). Priorities are measured against the cpu backend on the same machine (README):
// oneDNN's convolutions beat anvil's cpu conv2d; anvil's own GEMM and attention stay first.
#include "backends/oneapi/oneapi_runtime.h"
#include "dispatch/kernel_record.h"

namespace anvil::oneapi_gemm {
void add_gemm_kernels(dispatch::KernelTables& tables, int priority);
}  // namespace anvil::oneapi_gemm
namespace anvil::oneapi_conv {
void add_conv2d_kernels(dispatch::KernelTables& tables, int priority);
}  // namespace anvil::oneapi_conv
namespace anvil::oneapi_attention {
void add_attention_kernels(dispatch::KernelTables& tables, int priority);
}  // namespace anvil::oneapi_attention

namespace anvil::dispatch {

void register_oneapi(KernelTables& tables) {
  tables.add_backend({"oneapi", {DeviceType::host}, [] { return oneapi::available(); }});
  oneapi_gemm::add_gemm_kernels(tables, 50);
  oneapi_conv::add_conv2d_kernels(tables, 50);
  oneapi_attention::add_attention_kernels(tables, 50);
}

}  // namespace anvil::dispatch
