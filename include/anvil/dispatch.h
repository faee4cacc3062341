// The dispatch registry as seen from outside: list kernels, explain a choice, force a
// backend or a kernel.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "anvil/ops.h"

namespace anvil {

// Op names as they appear in kernel names ("gemm.f32.reference").
enum class Op : uint8_t { gemm, gemm_backward, conv2d, conv2d_backward, attention, attention_backward };
const char* op_name(Op op);

struct KernelInfo {
  std::string name;     // <op>.<dtype>.<backend>[.<variant>]
  Op op;
  std::string backend;
  DType dtype;
  int priority;         // higher is tried first
  // Whether this machine has what the kernel needs beyond its backend (BackendInfo), such
  // as the ISA of a cpu variant (amx, avx512bf16); if not, why not.
  bool runs_here = true;
  std::string not_here;
};

// Every registered kernel, in selection order per op.
std::vector<KernelInfo> kernels();
// Backends compiled into this build, and whether each can run here right now.
struct BackendInfo {
  std::string name;
  bool available;
  std::string detail;  // why not available, or the device it found
  std::vector<DeviceType> device_types;  // memory its kernels read and write
};
std::vector<BackendInfo> backends();

// Every candidate for this call, in order, with "taken" / "refused: <reason>".
std::string explain(const GemmArgs& args);
std::string explain(const GemmBackwardArgs& args);
std::string explain(const Conv2dArgs& args);
std::string explain(const Conv2dBackwardArgs& args);
std::string explain(const AttentionArgs& args);
std::string explain(const AttentionBackwardArgs& args);

// Name of the kernel a call would run, or the error it would return.
Status select_kernel(const GemmArgs& args, std::string* name);
Status select_kernel(const Conv2dArgs& args, std::string* name);
Status select_kernel(const AttentionArgs& args, std::string* name);

// Process-wide overrides; they take precedence over ANVIL_BACKEND / ANVIL_KERNEL.
// An empty string clears. `kernels` is a comma-separated list of kernel names, at most
// one per (op, dtype). Unknown names are rejected with the list of valid ones.
struct Overrides {
  std::string backend;
  std::string kernels;
};
Status set_overrides(const Overrides& overrides);
Overrides current_overrides();

// RAII: force for a scope, then restore what was there before.
class ScopedOverrides {
 public:
  explicit ScopedOverrides(const Overrides& overrides);
  ~ScopedOverrides();
  ScopedOverrides(const ScopedOverrides&) = delete;
  ScopedOverrides& operator=(const ScopedOverrides&) = delete;
  const Status& status() const { return status_; }

 private:
  Overrides previous_;
  Status status_;
};

}  // namespace anvil
