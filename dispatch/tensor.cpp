#include <string>

#include "anvil/tensor.h"
#include "anvil/status.h"

namespace anvil {

namespace {
TensorRef make(const void* data, DType dtype, std::initializer_list<int64_t> shape, Device device) {
  TensorRef t;
  t.data = const_cast<void*>(data);  // inputs are never written; one view type for both
  t.dtype = dtype;
  t.rank = int(shape.size() <= size_t(kMaxRank) ? shape.size() : size_t(kMaxRank));
  int i = 0;
  for (int64_t d : shape) {
    if (i == t.rank) break;
    t.shape[i++] = d;
  }
  t.device = device;
  return t;
}
}  // namespace

TensorRef TensorRef::contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                                Device device) {
  TensorRef t = make(data, dtype, shape, device);
  int64_t stride = 1;
  for (int i = t.rank - 1; i >= 0; --i) {
    t.strides[i] = stride;
    stride *= t.shape[i] > 0 ? t.shape[i] : 1;
  }
  return t;
}

TensorRef TensorRef::strided(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                             std::initializer_list<int64_t> strides, Device device) {
  TensorRef t = make(data, dtype, shape, device);
  int i = 0;
  for (int64_t s : strides) {
    if (i == t.rank) break;
    t.strides[i++] = s;
  }
  return t;
}

int64_t TensorRef::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= shape[i];
  return n;
}

bool TensorRef::is_contiguous() const {
  int64_t expected = 1;
  for (int i = rank - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

std::string TensorRef::to_string() const {
  std::string s = std::string(dtype_name(dtype)) + "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  s += "]{";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(strides[i]);
  s += "}";
  if (offset) s += "+" + std::to_string(offset);
  if (device.type != DeviceType::host)
    s += "@" + std::string(device_type_name(device.type)) + ":" + std::to_string(device.index);
  return s;
}

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::ok: return "ok";
    case StatusCode::invalid_argument: return "invalid_argument";
    case StatusCode::unsupported: return "unsupported";
    case StatusCode::not_found: return "not_found";
    case StatusCode::out_of_memory: return "out_of_memory";
    case StatusCode::runtime_error: return "runtime_error";
  }
  return "?";
}

}  // namespace anvil
