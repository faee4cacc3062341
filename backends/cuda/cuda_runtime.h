// The CUDA device as the cuda backend sees it: device properties read at run time, the
// stream a call runs on (the caller's, e.g. torch's current stream), stream-ordered
// workspaces, and CUDA errors turned into a Status that names the call. No op math here.
// What is not CUDA-specific is shared with the hip backend (backends/gpu/).
//
// Nothing here synchronises the device: ops are enqueued on the caller's stream and are
// safe to capture in a CUDA graph (workspaces come from cudaMallocAsync on that stream).
#pragma once

#include <cstdint>
#include <string>

#include "backends/gpu/gpu_api.h"

#include "anvil/status.h"
#include "anvil/tensor.h"

namespace anvil::cuda {

// Ok when the CUDA runtime finds at least one device; otherwise why not.
Status available();
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 227 KiB smem/block), driver 13.0, ...".
std::string describe();

// Properties of one device, read once with cudaGetDeviceProperties.
struct DeviceProps {
  int index = 0;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;  // compute capability
  int64_t smem_per_block_optin = 0;  // bytes a block may use after cudaFuncSetAttribute
  int64_t l2_bytes = 0;
  std::string name;
  int compute_capability() const { return cc_major * 10 + cc_minor; }
  // The names the code shared with the hip backend reads (kernels/*/*_gpu*).
  int multiprocessors() const { return sm_count; }
  int64_t max_shared_bytes() const { return smem_per_block_optin; }
};
// Properties of `device`; an error if it does not exist.
Status device_props(int device, const DeviceProps** props);

// check, check_launch, current_stream / set_stream, DeviceGuard, Workspace and the memory
// calls are the same code on both GPU vendors: backends/gpu/gpu_runtime_decl.inc.
#include "backends/gpu/gpu_runtime_decl.inc"

}  // namespace anvil::cuda
