// Kernel records and the per-op tables they are collected in. This is the one dispatch
// header kernel files include: a kernel file ends with its registration rows.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "anvil/dispatch.h"

namespace anvil::dispatch {

template <class Args> struct KernelRecord {
  std::string name;          // <op>.<dtype>.<backend>[.<variant>]
  std::string backend;
  DType dtype;
  int priority;              // higher is tried first
  Status (*can_implement)(const Args&);  // Ok, or why this kernel cannot run the call
  Status (*run)(const Args&);            // called only after validation and can_implement
  // Measured priority per shape class, when the kernel is faster for some calls than for
  // others relative to its rivals (e.g. oneDNN's matmul vs anvil's decode path); null:
  // `priority` for every call.
  int (*priority_for)(const Args&) = nullptr;
  // Ok if this machine has what the kernel needs beyond its backend (the CPU's ISA for a
  // cpu variant), else why not; null: it runs wherever its backend does.
  Status (*runs_here)() = nullptr;

  int priority_of(const Args& args) const { return priority_for ? priority_for(args) : priority; }
};

// How anvil reaches the memory and streams of a device type it does not share with the
// host (cuda, hip): for anvil's tests and benchmarks and for C++ users without a framework.
struct DeviceMemory {
  Status (*allocate)(int device, int64_t bytes, void** out);
  Status (*release)(int device, void* data);
  Status (*to_device)(int device, void* dst, const void* src, int64_t bytes);
  Status (*to_host)(int device, void* dst, const void* src, int64_t bytes);
  Status (*synchronize)(int device);
  void (*set_stream)(void* stream);  // the calling thread's stream for this backend's ops
  void* (*stream)();
};

struct BackendRecord {
  std::string name;
  std::vector<DeviceType> device_types;  // where its kernels can read and write operands
  // Ok if the backend can run now (device present, runtime loaded); else why not.
  std::function<Status()> available;
  // What it runs on when available ("oneDNN 3.2.0, CPU engine ..."), for backends(); may be empty.
  std::function<std::string()> describe;
  // Set by backends whose device types are not host memory.
  const DeviceMemory* memory = nullptr;
};

// Per-op tables, filled by the backends' registration functions.
class KernelTables {
 public:
  void add_backend(BackendRecord backend) { backends_.push_back(std::move(backend)); }
  void add(KernelRecord<GemmArgs> r) { gemm_.push_back(std::move(r)); }
  void add(KernelRecord<GemmBackwardArgs> r) { gemm_backward_.push_back(std::move(r)); }
  void add(KernelRecord<Conv2dArgs> r) { conv2d_.push_back(std::move(r)); }
  void add(KernelRecord<Conv2dBackwardArgs> r) { conv2d_backward_.push_back(std::move(r)); }
  void add(KernelRecord<AttentionArgs> r) { attention_.push_back(std::move(r)); }
  void add(KernelRecord<AttentionBackwardArgs> r) { attention_backward_.push_back(std::move(r)); }

  template <class Args> std::vector<KernelRecord<Args>>& table();
  template <class Args> const std::vector<KernelRecord<Args>>& table() const {
    return const_cast<KernelTables*>(this)->table<Args>();
  }
  const std::vector<BackendRecord>& backends() const { return backends_; }

 private:
  std::vector<BackendRecord> backends_;
  std::vector<KernelRecord<GemmArgs>> gemm_;
  std::vector<KernelRecord<GemmBackwardArgs>> gemm_backward_;
  std::vector<KernelRecord<Conv2dArgs>> conv2d_;
  std::vector<KernelRecord<Conv2dBackwardArgs>> conv2d_backward_;
  std::vector<KernelRecord<AttentionArgs>> attention_;
  std::vector<KernelRecord<AttentionBackwardArgs>> attention_backward_;
};

template <> inline std::vector<KernelRecord<GemmArgs>>& KernelTables::table() { return gemm_; }
template <> inline std::vector<KernelRecord<GemmBackwardArgs>>& KernelTables::table() {
  return gemm_backward_;
}
template <> inline std::vector<KernelRecord<Conv2dArgs>>& KernelTables::table() { return conv2d_; }
template <> inline std::vector<KernelRecord<Conv2dBackwardArgs>>& KernelTables::table() {
  return conv2d_backward_;
}
template <> inline std::vector<KernelRecord<AttentionArgs>>& KernelTables::table() {
  return attention_;
}
template <> inline std::vector<KernelRecord<AttentionBackwardArgs>>& KernelTables::table() {
  return attention_backward_;
}

// Name of a kernel: <op>.<dtype>.<backend>[.<variant>].
inline std::string kernel_name(Op op, DType dtype, const std::string& backend,
                               const std::string& variant = "") {
  std::string name = std::string(op_name(op)) + "." + dtype_name(dtype) + "." + backend;
  return variant.empty() ? name : name + "." + variant;
}

}  // namespace anvil::dispatch
