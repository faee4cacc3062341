// Registration table of the reference backend: host memory, always available.
#include "dispatch/kernel_record.h"

namespace anvil::reference {
void add_gemm_kernels(dispatch::KernelTables& tables);
void add_conv2d_kernels(dispatch::KernelTables& tables);
void add_attention_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::reference

namespace anvil::dispatch {

void register_reference(KernelTables& tables) {
  tables.add_backend({"reference", {DeviceType::host}, [] { return Status::Ok(); }});
  reference::add_gemm_kernels(tables);
  reference::add_conv2d_kernels(tables);
  reference::add_attention_kernels(tables);
}

}  // namespace anvil::dispatch
