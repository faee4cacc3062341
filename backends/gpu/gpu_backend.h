// Which backend a shared GPU source is being compiled for: its runtime (anvil::cuda or
// anvil::hip, the same interface: backends/gpu/gpu_runtime_decl.inc plus device_props),
// its registry name and the device type its kernels read and write. The shared kernel
// files (kernels/<op>/<op>_gpu*.inc) spell gpu::rt, gpu::kBackend and gpu::kDeviceType.
#pragma once

#include "backends/gpu/gpu_portability.h"

#if ANVIL_GPU_HIP
#include "backends/hip/hip_runtime.h"
#else
#include "backends/cuda/cuda_runtime.h"
#endif

namespace anvil::gpu {
inline namespace ANVIL_GPU_ABI {
#if ANVIL_GPU_HIP
namespace rt = ::anvil::hip;
inline constexpr char kBackend[] = "hip";
inline constexpr DeviceType kDeviceType = DeviceType::hip;
#else
namespace rt = ::anvil::cuda;
inline constexpr char kBackend[] = "cuda";
inline constexpr DeviceType kDeviceType = DeviceType::cuda;
#endif
}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu
