// GEMM descriptor: the shape a call implies and the rules it must satisfy.
#pragma once

#include <string>

#include "anvil/ops.h"

namespace anvil::gemm_desc {

struct Shape {
  int64_t batch, m, n, k;
};

Shape shape_of(const GemmArgs& args);
Shape shape_of(const GemmBackwardArgs& args);

// Stride between batch entries of a (batch?, rows, cols) operand: 0 when it has no batch
// dimension or a batch of 1, so that it broadcasts.
inline int64_t batch_stride(const TensorRef& t) {
  return t.rank == 3 && t.shape[0] > 1 ? t.strides[0] : 0;
}

Status validate(const GemmArgs& args);
Status validate(const GemmBackwardArgs& args);

std::string describe(const GemmArgs& args);
std::string describe(const GemmBackwardArgs& args);

}  // namespace anvil::gemm_desc
