// The AMD GPU as the hip backend sees it: device properties read at run time (compute
// units, LDS per workgroup, wavefront size, gfx architecture), the stream a call runs on
// (the caller's, e.g. torch's current stream on a ROCm build of torch), stream-ordered
// workspaces, and HIP errors turned into a Status that names the call. No op math here.
// What is not HIP-specific is shared with the cuda backend (backends/gpu/).
#pragma once

#include <cstdint>
#include <string>

#include "backends/gpu/gpu_api.h"

#include "anvil/status.h"
#include "anvil/tensor.h"

static_assert(ANVIL_GPU_HIP, "backends/hip is compiled for HIP only (hipcc, or __HIP_PLATFORM_AMD__ on the host)");

namespace anvil::hip {

// Ok when the HIP runtime finds at least one device; otherwise why not.
Status available();
// "hip:0 AMD Instinct MI250X (gfx90a:sramecc+:xnack-, 110 CUs, wave64, 64 KiB LDS/workgroup), ...".
std::string describe();

// Properties of one device, read once with hipGetDeviceProperties.
struct DeviceProps {
  int index = 0;
  int cu_count = 0;                // compute units
  int wavefront_size = 0;          // 64 on CDNA, 32 on RDNA
  int64_t lds_per_workgroup = 0;   // bytes of LDS one workgroup may use
  int64_t l2_bytes = 0;
  std::string arch;                // gcnArchName, e.g. "gfx90a:sramecc+:xnack-"
  std::string name;
  // The processor without target features ("gfx90a").
  std::string gfx() const { return arch.substr(0, arch.find(':')); }
  // The names the code shared with the cuda backend reads (kernels/*/*_gpu*).
  int multiprocessors() const { return cu_count; }
  int64_t max_shared_bytes() const { return lds_per_workgroup; }
};
// Properties of `device`; an error if it does not exist.
Status device_props(int device, const DeviceProps** props);

// check, check_launch, current_stream / set_stream, DeviceGuard, Workspace and the memory
// calls are the same code on both GPU vendors: backends/gpu/gpu_runtime_decl.inc.
#include "backends/gpu/gpu_runtime_decl.inc"

}  // namespace anvil::hip
