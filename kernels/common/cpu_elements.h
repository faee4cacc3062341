// Element access by runtime dtype for the cpu kernels' setup and write-back loops (not
// their inner loops): f32, f16 and bf16 read as f32, and f32 rounded once on store.
#pragma once

#include "anvil/tensor.h"

namespace anvil::cpu_elements {

// Element `index` (in elements from the view's origin) of t, as f32.
inline float load(const TensorRef& t, int64_t index) {
  const char* p = t.ptr<const char>() + index * dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::f16: return to_float(*reinterpret_cast<const float16*>(p));
    case DType::bf16: return to_float(*reinterpret_cast<const bfloat16*>(p));
    default: return *reinterpret_cast<const float*>(p);
  }
}

inline void store(const TensorRef& t, int64_t index, float v) {
  char* p = t.ptr<char>() + index * dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::f16: *reinterpret_cast<float16*>(p) = to_float16(v); break;
    case DType::bf16: *reinterpret_cast<bfloat16*>(p) = to_bfloat16(v); break;
    default: *reinterpret_cast<float*>(p) = v;
  }
}

// p + n, except that an empty operand's null pointer stays null (offsetting null is UB).
template <class T> T* advance(T* p, int64_t n) { return p ? p + n : p; }

}  // namespace anvil::cpu_elements
