// Argument checks shared by the op descriptors. Every failure names the argument.
#pragma once

#include <cstdint>
#include <string>

#include "anvil/status.h"
#include "anvil/tensor.h"

namespace anvil::checks {

// Rank in [min_rank, max_rank], dims >= 0, strides >= 0, non-null data when non-empty,
// and a byte extent that fits in int64.
Status tensor(const TensorRef& t, const char* name, int min_rank, int max_rank);
// Like tensor(), and also no two elements share an address (no stride 0, no overlap).
Status output_tensor(const TensorRef& t, const char* name, int min_rank, int max_rank);

Status dtype_is(const TensorRef& t, const char* name, DType expected);
Status floating_dtype(const TensorRef& t, const char* name);
Status same_dtype(const TensorRef& t, const char* name, const TensorRef& ref, const char* ref_name);
Status same_device(const TensorRef& t, const char* name, const TensorRef& ref, const char* ref_name);
Status dim_equals(const TensorRef& t, const char* name, int dim, int64_t expected,
                  const char* what);
// A 2-D matrix view (the last two dims) whose rows or columns overlap: the BLAS
// "leading dimension too small" error.
Status leading_dimension(const TensorRef& t, const char* name);
// Output memory must not overlap an input's memory (host-pointer devices).
Status no_alias(const TensorRef& out, const char* out_name, const TensorRef& in,
                const char* in_name);

// Highest element index reachable in the view plus one (0 if empty); -1 on overflow.
int64_t element_span(const TensorRef& t);
bool checked_mul(int64_t a, int64_t b, int64_t* out);

}  // namespace anvil::checks
