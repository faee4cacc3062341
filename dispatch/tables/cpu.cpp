// Registration table of the cpu backend: host memory; kernels check the ISA they need.
#include "backends/cpu/cpu_runtime.h"
#include "dispatch/kernel_record.h"

namespace anvil::cpu_gemm {
void add_gemm_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::cpu_gemm
namespace anvil::cpu_conv {
void add_conv2d_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::cpu_conv
namespace anvil::cpu_attention {
void add_attention_kernels(dispatch::KernelTables& tables);
}  // namespace anvil::cpu_attention

namespace anvil::dispatch {

void register_cpu(KernelTables& tables) {
  tables.add_backend({"cpu", {DeviceType::host}, [] {
                        const cpu::CpuInfo& info = cpu::cpu_info();
                        if (!info.avx2 && !info.avx512) return unsupported("needs AVX2 or AVX-512 (" + info.describe() + ")");
                        return Status::Ok();
                      },
                      [] { return cpu::cpu_info().describe(); }});
  cpu_gemm::add_gemm_kernels(tables);
  cpu_conv::add_conv2d_kernels(tables);
  cpu_attention::add_attention_kernels(tables);
}

}  // namespace anvil::dispatch
