// Device-side portability for the GPU code shared by the cuda and hip backends: compiled by
// nvcc for NVIDIA and by hipcc (clang -x hip) for AMD CDNA. It gives one spelling for
//   - the runtime (gpu_api.h: gpuStream_t, gpuMallocAsync, ...) and the device headers,
//   - the hardware warp: gpu::kWarpSize, 32 on NVIDIA, 64 on CDNA (a compile-time constant),
//   - lane groups: gpu::kLaneGroup = 32 lanes that reduce and broadcast together with
//     group_max / group_sum / group_broadcast. A group is a warp on NVIDIA and half a
//     wavefront on CDNA, so SIMT kernels written for 32 lanes keep their tile shapes (and
//     their shared-memory footprint) on both,
//   - 16-bit element types (gpu::half, gpu::bfloat16) and their f32 conversions,
//   - launch bounds and the dynamic shared-memory (LDS) opt-in.
// The backend a shared file belongs to (runtime namespace, name, device type) is in
// gpu_backend.h. What is vendor-specific by nature (mma.sync / wgmma / MFMA mainloops,
// their shared-memory layouts) stays in the vendor's own files.
#pragma once

#include <cstdint>
#include <type_traits>

#include "backends/gpu/gpu_api.h"

#if ANVIL_GPU_HIP
#include <hip/hip_bfloat16.h>
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

// __launch_bounds__(threads, min blocks per multiprocessor). HIP's second argument means
// something else (minimum waves per execution unit), so on AMD only the thread count is
// passed; register budgets there come from the thread count alone.
#if ANVIL_GPU_HIP
#define ANVIL_LAUNCH_BOUNDS(threads, min_blocks) __launch_bounds__(threads)
#else
#define ANVIL_LAUNCH_BOUNDS(threads, min_blocks) __launch_bounds__(threads, min_blocks)
#endif

namespace anvil::gpu {
inline namespace ANVIL_GPU_ABI {

// ------------------------------------------------------------------ warps and lane groups
#if ANVIL_GPU_HIP
// The device pass knows the wavefront size of the target; the host pass assumes CDNA's.
#if defined(__AMDGCN_WAVEFRONT_SIZE)
inline constexpr int kWarpSize = __AMDGCN_WAVEFRONT_SIZE;
#else
inline constexpr int kWarpSize = 64;
#endif
#else
inline constexpr int kWarpSize = 32;
#endif
inline constexpr int kLaneGroup = 32;
static_assert(kWarpSize % kLaneGroup == 0, "a warp or wavefront holds whole lane groups");

// Lanes of a group are tid % kLaneGroup; groups never straddle a warp. On NVIDIA a group is
// the whole warp, so every lane of the warp must call (full-mask shuffles); on AMD only the
// 32 lanes of the group take part (width-32 ds_bpermute / DPP), so a group may skip a
// shuffle that the other half of its wavefront executes.
__device__ __forceinline__ float group_shfl_xor(float x, int mask) {
#if ANVIL_GPU_HIP
  return __shfl_xor(x, mask, kLaneGroup);
#else
  return __shfl_xor_sync(0xffffffffu, x, mask, kLaneGroup);
#endif
}
__device__ __forceinline__ float group_broadcast(float x, int lane) {
#if ANVIL_GPU_HIP
  return __shfl(x, lane, kLaneGroup);
#else
  return __shfl_sync(0xffffffffu, x, lane, kLaneGroup);
#endif
}
__device__ __forceinline__ float group_max(float x) {
#pragma unroll
  for (int s = kLaneGroup / 2; s > 0; s /= 2) x = fmaxf(x, group_shfl_xor(x, s));
  return x;
}
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int s = kLaneGroup / 2; s > 0; s /= 2) x += group_shfl_xor(x, s);
  return x;
}

// ------------------------------------------------------------------ 16-bit elements
#if ANVIL_GPU_HIP
using half = __half;
using bfloat16 = hip_bfloat16;
#else
using half = __half;
using bfloat16 = __nv_bfloat16;
#endif

template <class T> __device__ __forceinline__ float to_f32(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, half>) return __half2float(x);
#if ANVIL_GPU_HIP
  else return float(x);  // hip_bfloat16: exact widening
#else
  else return __bfloat162float(x);
#endif
}
// Round to nearest even (NaN stays NaN).
template <class T> __device__ __forceinline__ T from_f32(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, half>) return __float2half_rn(x);
#if ANVIL_GPU_HIP
  else return hip_bfloat16(x);  // round to nearest even, NaN kept quiet
#else
  else return __float2bfloat16_rn(x);
#endif
}

// ------------------------------------------------------------------ launches
// Lets `kernel` use `bytes` of dynamic shared memory past the default limit (48 KiB on
// NVIDIA). On AMD a workgroup may use the whole LDS without opting in (the launchers check
// `bytes` against the device's LDS first), so there is nothing to call.
template <class Kernel> gpuError_t allow_dynamic_shared(Kernel kernel, int bytes) {
#if ANVIL_GPU_HIP
  (void)kernel, (void)bytes;
  return hipSuccess;
#else
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
#endif
}

}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu
