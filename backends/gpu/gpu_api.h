// The GPU runtime API under one spelling for both vendors: gpuStream_t, gpuMallocAsync, ...
// map to cudaStream_t, cudaMallocAsync on NVIDIA and to hipStream_t, hipMallocAsync on AMD.
// Host code only (the runtime glue in backends/cuda and backends/hip, and the host halves
// of the shared kernel files); device-side portability is in gpu_portability.h.
//
// The vendor is the compiler's: hipcc / clang -x hip (__HIP__), or any host compiler given
// __HIP_PLATFORM_AMD__ (CMake sets it on the hip backend's .cpp files only), selects HIP;
// everything else (nvcc, or a host compiler on the cuda backend's files) selects CUDA.
// Only the calls anvil makes are mapped; add one here rather than spelling a vendor name in
// shared code.
#pragma once

#if defined(__HIP__) || defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
#define ANVIL_GPU_HIP 1
#define ANVIL_GPU_CUDA 0
#else
#define ANVIL_GPU_HIP 0
#define ANVIL_GPU_CUDA 1
#endif

// Shared code lives in `inline namespace ANVIL_GPU_ABI` so that the CUDA and HIP builds of
// one source have distinct symbols (a build may link both backends) while callers spell
// the common name (anvil::gpu_gemm::run_simt).
#if ANVIL_GPU_HIP
#define ANVIL_GPU_ABI amd

#include <hip/hip_runtime_api.h>

#define gpuSuccess hipSuccess
#define gpuErrorMemoryAllocation hipErrorOutOfMemory
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuMemPoolAttrReleaseThreshold hipMemPoolAttrReleaseThreshold
#define gpuFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
using gpuError_t = hipError_t;
using gpuStream_t = hipStream_t;
using gpuMemcpyKind = hipMemcpyKind;
using gpuMemPool_t = hipMemPool_t;
using gpuDeviceProp_t = hipDeviceProp_t;
#define gpuGetErrorName hipGetErrorName
#define gpuGetErrorString hipGetErrorString
#define gpuGetLastError hipGetLastError
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuGetDeviceProperties hipGetDeviceProperties
#define gpuGetDevice hipGetDevice
#define gpuSetDevice hipSetDevice
#define gpuDriverGetVersion hipDriverGetVersion
#define gpuRuntimeGetVersion hipRuntimeGetVersion
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMallocAsync hipMallocAsync
#define gpuFreeAsync hipFreeAsync
#define gpuMemcpy hipMemcpy
#define gpuDeviceSynchronize hipDeviceSynchronize
#define gpuDeviceGetDefaultMemPool hipDeviceGetDefaultMemPool
#define gpuMemPoolSetAttribute hipMemPoolSetAttribute
#define gpuFuncSetAttribute hipFuncSetAttribute

#else
#define ANVIL_GPU_ABI nv

#include <cuda_runtime_api.h>

#define gpuSuccess cudaSuccess
#define gpuErrorMemoryAllocation cudaErrorMemoryAllocation
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuMemPoolAttrReleaseThreshold cudaMemPoolAttrReleaseThreshold
#define gpuFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
using gpuError_t = cudaError_t;
using gpuStream_t = cudaStream_t;
using gpuMemcpyKind = cudaMemcpyKind;
using gpuMemPool_t = cudaMemPool_t;
using gpuDeviceProp_t = cudaDeviceProp;
#define gpuGetErrorName cudaGetErrorName
#define gpuGetErrorString cudaGetErrorString
#define gpuGetLastError cudaGetLastError
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define gpuGetDevice cudaGetDevice
#define gpuSetDevice cudaSetDevice
#define gpuDriverGetVersion cudaDriverGetVersion
#define gpuRuntimeGetVersion cudaRuntimeGetVersion
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMallocAsync cudaMallocAsync
#define gpuFreeAsync cudaFreeAsync
#define gpuMemcpy cudaMemcpy
#define gpuDeviceSynchronize cudaDeviceSynchronize
#define gpuDeviceGetDefaultMemPool cudaDeviceGetDefaultMemPool
#define gpuMemPoolSetAttribute cudaMemPoolSetAttribute
#define gpuFuncSetAttribute cudaFuncSetAttribute
#endif

// The vendor's name of a mapped call, for error messages: ANVIL_GPU_NAME(gpuMalloc) is
// "cudaMalloc" or "hipMalloc".
#define ANVIL_GPU_NAME_(x) #x
#define ANVIL_GPU_NAME(x) ANVIL_GPU_NAME_(x)
