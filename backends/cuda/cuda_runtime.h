// The CUDA device as the cuda backend sees it: device properties read at run time, the
// stream a call runs on (the caller's, e.g. torch's current stream), stream-ordered
// workspaces, and CUDA errors turned into a Status that names the call. No op math here.
//
// Nothing here synchronises the device: ops are enqueued on the caller's stream and are
// safe to capture in a CUDA graph (workspaces come from cudaMallocAsync on that stream).
#pragma once

#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

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
};
// Properties of `device`; an error if it does not exist.
Status device_props(int device, const DeviceProps** props);

// Turns a CUDA error into a Status naming `what` ("cudaMemcpyAsync", "gemm_sm80 launch").
Status check(cudaError_t error, const char* what);
// After a <<<...>>> launch: the launch error, if any (does not synchronise).
Status check_launch(const char* kernel);

// The stream ops run on, per thread: the one set by set_stream (anvil::set_cuda_stream),
// else the legacy default stream.
cudaStream_t current_stream();
void set_stream(cudaStream_t stream);

// Makes `device` current for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const Status& status() const { return status_; }

 private:
  int previous_ = -1;
  Status status_;
};

// Scratch memory for one call, allocated and freed in stream order on `stream`
// (cudaMallocAsync / cudaFreeAsync: no device-wide synchronisation, graph-capturable).
class Workspace {
 public:
  explicit Workspace(cudaStream_t stream) : stream_(stream) {}
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  // `bytes` of device memory, 256-byte aligned, valid until the workspace is destroyed.
  Status allocate(int64_t bytes, void** out);

 private:
  static constexpr int kMaxBlocks = 8;
  cudaStream_t stream_;
  void* blocks_[kMaxBlocks] = {};
  int count_ = 0;
};

// Memory for anvil's own tests, benchmarks and C++ users without a framework
// (anvil::device_malloc & co. route here for DeviceType::cuda).
Status malloc_device(int device, int64_t bytes, void** out);
Status free_device(int device, void* p);
Status copy(void* dst, const void* src, int64_t bytes, cudaMemcpyKind kind);
Status synchronize(int device);

}  // namespace anvil::cuda
