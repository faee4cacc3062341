// Registration table of the oneapi backend: oneDNN primitives on host memory (its CPU
// engine). Each kernel file sets its priorities from measurements against the cpu backend
// (README "oneapi"): oneDNN's matmul and convolutions are ahead of anvil's cpu kernels
// except for decode-shaped GEMM; anvil's flash attention stays ahead of the composed one.
#include "backends/oneapi/oneapi_runtime.h"
#include "dispatch/kernel_record.h"

namespace anvil::oneapi_gemm {
void add_gemm_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::oneapi_gemm
namespace anvil::oneapi_conv {
void add_conv2d_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::oneapi_conv
namespace anvil::oneapi_attention {
void add_attention_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::oneapi_attention

namespace anvil::dispatch {

void register_oneapi(KernelTables& tables) {
  tables.add_backend({"oneapi", {DeviceType::host}, [] { return oneapi::available(); }, [] { return oneapi::describe(); }});
  oneapi_gemm::add_gemm_kernels(tables);
  oneapi_conv::add_conv2d_kernels(tables);
  oneapi_attention::add_attention_kernels(tables);
}

}  // namespace anvil::dispatch
