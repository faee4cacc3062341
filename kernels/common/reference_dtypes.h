// The dtypes the reference backend implements, and a helper that registers one record
// per dtype from a kernel template.
#pragma once

#include "dispatch/kernel_record.h"

namespace anvil::reference {

inline constexpr int kPriority = 0;  // the oracle: always the last resort

// fn.template operator()<T>() for every reference dtype.
template <class Fn> void for_each_dtype(Fn&& fn) {
  fn.template operator()<float>();
  fn.template operator()<float16>();
  fn.template operator()<bfloat16>();
  fn.template operator()<double>();
}

template <class Args, template <class, class> class Kernel>
void add_records(dispatch::KernelTables& tables, Op op) {
  for_each_dtype([&]<class T>() {
    constexpr DType dtype = ElementTraits<T>::dtype;
    tables.add(dispatch::KernelRecord<Args>{dispatch::kernel_name(op, dtype, "reference"), "reference",
                                            dtype, kPriority, nullptr, &Kernel<T, double>::run});
  });
}

// The same kernel template accumulating in f32: the "naive same-precision implementation"
// whose error bounds the relative tier of the tests. Not registered.
template <template <class, class> class Kernel, class Args> Status run_naive(const Args& args, DType dtype) {
  return visit_floating(dtype, [&]<class T>() { return Kernel<T, float>::run(args); });
}

// Element (i0, i1, ...) of a host view, loaded as f64.
template <class T> inline double load(const TensorRef& t, int64_t index) {
  return ElementTraits<T>::load(t.ptr<const T>() + index);
}
template <class T> inline void store(const TensorRef& t, int64_t index, double value) {
  ElementTraits<T>::store(t.ptr<T>() + index, value);
}

}  // namespace anvil::reference
