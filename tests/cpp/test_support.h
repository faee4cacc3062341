// Test support: guarded host buffers, value generators, shape data files, and the
// kernel-vs-oracle harness shared by every op's tests.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "anvil/anvil.h"

namespace anvil::test {

// A host allocation of `elements` items plus a guard region on both sides; the guard
// must be unchanged after any call (memory safety).
class Buffer {
 public:
  Buffer(DType dtype, int64_t elements);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&&) = default;

  void* data() { return bytes_.data() + kGuardBytes; }
  const void* data() const { return bytes_.data() + kGuardBytes; }
  DType dtype() const { return dtype_; }
  int64_t elements() const { return elements_; }
  double get(int64_t i) const;
  void set(int64_t i, double v);
  void fill(double v);
  bool guards_intact() const;
  // The whole allocation, guards included (for device copies).
  void* raw() { return bytes_.data(); }
  int64_t raw_bytes() const { return int64_t(bytes_.size()); }

  static constexpr int64_t kGuardBytes = 64;

 private:
  DType dtype_;
  int64_t elements_;
  std::vector<unsigned char> bytes_;
};

// Shape rows from bench/shapes/<name>.csv (shared with anvil-bench): column -> value.
using ShapeRow = std::map<std::string, std::string>;  // same as anvil::shapes::Row
std::vector<ShapeRow> load_shapes(const std::string& name, const std::string& tag);
int64_t as_int(const ShapeRow& row, const std::string& column);

// One tensor of a test case: its logical shape and strides in a buffer of `span`
// elements; elements of the buffer outside the view are NaN so reads outside the view
// show up in results.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape, strides;
  int64_t offset = 0;
  enum Role { input, output, in_out } role = input;
  DType dtype_override = DType::f64;  // f64 = use the case dtype; else fixed (lse, bool masks)
  std::function<double(std::mt19937_64&)> generator;  // optional custom values (masks)
  int64_t span() const;
};

TensorSpec packed(std::string name, std::vector<int64_t> shape, TensorSpec::Role role = TensorSpec::input);
// Row-major strides with the innermost row padded by `pad` elements and a base offset.
TensorSpec padded(std::string name, std::vector<int64_t> shape, int64_t pad, int64_t offset,
                  TensorSpec::Role role = TensorSpec::input);

enum class Values { small_ints, normal };

// Host bytes mirrored on a device (the host bytes themselves for host devices): uploaded on
// construction, downloaded by download(), freed on destruction.
class DeviceCopy {
 public:
  DeviceCopy(Device device, void* host, int64_t bytes);
  ~DeviceCopy();
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  const Status& status() const { return status_; }
  void* data() const { return device_data_; }
  Status download();

 private:
  Device device_;
  void* host_;
  int64_t bytes_;
  void* device_data_ = nullptr;
  Status status_;
};

// The memory a kernel's backend works on: host, or its backend's first device type.
Device device_of_kernel(const std::string& kernel_name);
// Ok if the kernel can run here (its backend available, and its CPU ISA present for a cpu
// variant); else why not (the caller skips the test).
Status kernel_available(const std::string& kernel_name);

struct HarnessResult {
  double kernel_error = 0, naive_error = 0;  // max |x - oracle| over all outputs
  bool bit_exact = true, deterministic = true, guards_ok = true, untrusted = false;
  bool skipped = false;  // the forced kernel declared this case outside what it implements
  std::string failure;  // first problem found, with a repro line
};

// Runs one case: kernel `kernel_name` (forced) on dtype `dtype`, the f64 reference as the
// oracle on the same (rounded) values, and the naive f32 implementation, via `run`.
// `build` turns the case's TensorRefs (in spec order) into op arguments.
template <class Args>
HarnessResult run_case(const std::string& kernel_name, DType dtype, const std::vector<TensorSpec>& specs,
                       Values values, uint64_t seed,
                       const std::function<Args(const std::vector<TensorRef>&)>& build,
                       const std::function<void(std::vector<std::vector<double>>&)>& prepare = nullptr);

std::string repro(const std::string& kernel, DType dtype, const std::vector<TensorSpec>& specs, uint64_t seed,
                  const std::string& extra = "");

// Names of registered kernels of `op` (all dtypes except f64 unless with_f64).
std::vector<std::string> kernel_names(Op op, bool with_f64 = false);
DType dtype_of_kernel(const std::string& name);

}  // namespace anvil::test
