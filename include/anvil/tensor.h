// TensorRef: a non-owning, strided view of memory on one device.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "anvil/dtype.h"

namespace anvil {

enum class DeviceType : uint8_t { host, cuda, hip, xpu, opencl };

constexpr const char* device_type_name(DeviceType type) {
  switch (type) {
    case DeviceType::host: return "host";
    case DeviceType::cuda: return "cuda";
    case DeviceType::hip: return "hip";
    case DeviceType::xpu: return "xpu";
    case DeviceType::opencl: return "opencl";
  }
  return "?";
}

struct Device {
  DeviceType type = DeviceType::host;
  int index = 0;
  friend bool operator==(const Device&, const Device&) = default;
};

inline constexpr int kMaxRank = 6;

// Element (i0, i1, ...) lives at byte address
//   data + (offset + sum_k i_k * strides[k]) * dtype_size(dtype)
// for pointer devices (host, cuda, hip, xpu). For OpenCL, `data` is the cl_mem handle and
// `offset` the element offset into it. Strides are in elements and may be 0 (broadcast).
struct TensorRef {
  void* data = nullptr;
  DType dtype = DType::f32;
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};
  std::array<int64_t, kMaxRank> strides{};
  int64_t offset = 0;
  Device device{};

  // Row-major contiguous view.
  static TensorRef contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                              Device device = {});
  static TensorRef strided(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                           std::initializer_list<int64_t> strides, Device device = {});

  // Dimension i; negative i counts from the back.
  int64_t dim(int i) const { return shape[i < 0 ? rank + i : i]; }
  int64_t stride(int i) const { return strides[i < 0 ? rank + i : i]; }
  int64_t numel() const;
  bool is_contiguous() const;

  // Host address of element 0 (pointer devices only); null for a null (empty) view.
  template <class T = void> T* ptr() const {
    if (!data) return nullptr;
    return reinterpret_cast<T*>(static_cast<char*>(data) + offset * dtype_size(dtype));
  }

  // "f32[2, 3]{3, 1}" (the repro form used in errors and logs).
  std::string to_string() const;
};

}  // namespace anvil
