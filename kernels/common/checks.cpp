#include "kernels/common/checks.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <numeric>
#include <vector>

namespace anvil::checks {
namespace {

std::string prefix(const char* name) { return std::string(name) + ": "; }

}  // namespace

bool checked_mul(int64_t a, int64_t b, int64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

int64_t element_span(const TensorRef& t) {
  int64_t last = t.offset;
  for (int i = 0; i < t.rank; ++i) {
    if (t.shape[i] == 0) return 0;
    int64_t reach;
    if (!checked_mul(t.shape[i] - 1, t.strides[i], &reach)) return -1;
    if (__builtin_add_overflow(last, reach, &last)) return -1;
  }
  return last + 1;
}

Status tensor(const TensorRef& t, const char* name, int min_rank, int max_rank) {
  if (t.rank < min_rank || t.rank > max_rank) {
    std::string expected = min_rank == max_rank
                               ? std::to_string(min_rank)
                               : std::to_string(min_rank) + ".." + std::to_string(max_rank);
    return invalid_argument(prefix(name) + "expected rank " + expected + ", got rank " +
                            std::to_string(t.rank) + " (" + t.to_string() + ")");
  }
  int64_t numel = 1;
  for (int i = 0; i < t.rank; ++i) {
    if (t.shape[i] < 0)
      return invalid_argument(prefix(name) + "dimension " + std::to_string(i) +
                              " is negative (" + t.to_string() + ")");
    if (t.strides[i] < 0)
      return invalid_argument(prefix(name) + "stride of dimension " + std::to_string(i) +
                              " is negative (" + t.to_string() + ")");
    if (!checked_mul(numel, t.shape[i], &numel))
      return invalid_argument(prefix(name) + "element count overflows int64 (" +
                              t.to_string() + ")");
  }
  if (t.offset < 0) return invalid_argument(prefix(name) + "offset is negative");
  const int64_t span = element_span(t);
  int64_t bytes;
  if (span < 0 || !checked_mul(span, dtype_size(t.dtype), &bytes))
    return invalid_argument(prefix(name) + "byte extent overflows int64 (" + t.to_string() + ")");
  if (numel > 0 && t.data == nullptr) return invalid_argument(prefix(name) + "data is a null pointer");
  return Status::Ok();
}

Status output_tensor(const TensorRef& t, const char* name, int min_rank, int max_rank) {
  ANVIL_RETURN_IF_ERROR(tensor(t, name, min_rank, max_rank));
  // Sort the non-trivial dims by stride; each stride must step over everything the
  // smaller ones reach, or two elements share an address.
  std::array<int, kMaxRank> dims{};
  int count = 0;
  for (int i = 0; i < t.rank; ++i)
    if (t.shape[i] > 1) dims[size_t(count++)] = i;
  std::sort(dims.begin(), dims.begin() + count, [&](int x, int y) { return t.strides[x] < t.strides[y]; });
  int64_t reach = 1;  // elements covered by the dims seen so far
  for (int j = 0; j < count; ++j) {
    const int d = dims[size_t(j)];
    if (t.strides[d] < reach)
      return invalid_argument(prefix(name) + "output elements overlap (stride " +
                              std::to_string(t.strides[d]) + " of dimension " + std::to_string(d) +
                              " is smaller than " + std::to_string(reach) + "): " + t.to_string());
    if (!checked_mul(t.strides[d], t.shape[d], &reach)) reach = INT64_MAX;  // nothing can lie beyond it
  }
  return Status::Ok();
}

Status dtype_is(const TensorRef& t, const char* name, DType expected) {
  if (t.dtype == expected) return Status::Ok();
  return invalid_argument(prefix(name) + "expected dtype " + dtype_name(expected) + ", got " +
                          dtype_name(t.dtype));
}

Status floating_dtype(const TensorRef& t, const char* name) {
  if (is_floating(t.dtype)) return Status::Ok();
  return invalid_argument(prefix(name) + "expected a floating dtype (f32, f16, bf16, f64), got " +
                          dtype_name(t.dtype));
}

Status same_dtype(const TensorRef& t, const char* name, const TensorRef& ref, const char* ref_name) {
  if (t.dtype == ref.dtype) return Status::Ok();
  return invalid_argument(prefix(name) + "dtype " + dtype_name(t.dtype) + " does not match " +
                          ref_name + " dtype " + dtype_name(ref.dtype));
}

Status same_device(const TensorRef& t, const char* name, const TensorRef& ref, const char* ref_name) {
  if (t.device == ref.device) return Status::Ok();
  return invalid_argument(prefix(name) + "is on device " + device_type_name(t.device.type) + ":" +
                          std::to_string(t.device.index) + " but " + ref_name + " is on " +
                          device_type_name(ref.device.type) + ":" + std::to_string(ref.device.index));
}

Status dim_equals(const TensorRef& t, const char* name, int dim, int64_t expected, const char* what) {
  if (t.dim(dim) == expected) return Status::Ok();
  return invalid_argument(prefix(name) + "dimension " + std::to_string(dim < 0 ? t.rank + dim : dim) +
                          " is " + std::to_string(t.dim(dim)) + " but " + what + " is " +
                          std::to_string(expected) + " (" + t.to_string() + ")");
}

Status leading_dimension(const TensorRef& t, const char* name) {
  if (t.rank < 2) return Status::Ok();
  const int64_t rows = t.dim(-2), cols = t.dim(-1);
  const int64_t row_stride = t.stride(-2), col_stride = t.stride(-1);
  if (rows <= 1 || cols <= 1 || row_stride == 0 || col_stride == 0) return Status::Ok();
  if (row_stride >= cols * col_stride || col_stride >= rows * row_stride) return Status::Ok();
  const bool row_major = col_stride <= row_stride;
  return invalid_argument(
      prefix(name) + "leading dimension too small: " +
      (row_major ? "row stride " + std::to_string(row_stride) + " < " + std::to_string(cols) +
                       " columns * column stride " + std::to_string(col_stride)
                 : "column stride " + std::to_string(col_stride) + " < " + std::to_string(rows) +
                       " rows * row stride " + std::to_string(row_stride)) +
      " (" + t.to_string() + ")");
}

Status no_alias(const TensorRef& out, const char* out_name, const TensorRef& in, const char* in_name) {
  if (!(out.device == in.device) || out.data == nullptr || in.data == nullptr) return Status::Ok();
  const int64_t out_span = element_span(out), in_span = element_span(in);
  if (out_span <= 0 || in_span <= 0) return Status::Ok();
  if (out.device.type == DeviceType::opencl) {
    if (out.data != in.data) return Status::Ok();  // distinct cl_mem objects
  }
  const auto lo = [](const TensorRef& t) {
    return reinterpret_cast<uintptr_t>(t.data) + uintptr_t(t.offset * dtype_size(t.dtype));
  };
  const uintptr_t out_lo = lo(out), out_hi = reinterpret_cast<uintptr_t>(out.data) +
                                             uintptr_t(out_span * dtype_size(out.dtype));
  const uintptr_t in_lo = lo(in), in_hi = reinterpret_cast<uintptr_t>(in.data) +
                                          uintptr_t(in_span * dtype_size(in.dtype));
  if (out_lo < in_hi && in_lo < out_hi)
    return invalid_argument(std::string(out_name) + ": output memory overlaps input " + in_name);
  return Status::Ok();
}

}  // namespace anvil::checks
