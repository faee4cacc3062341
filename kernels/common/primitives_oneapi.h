// The oneDNN primitives the oneapi kernels are composed of, each created once per
// distinct descriptor (backends/oneapi PrimitiveCache) and run on anvil's thread budget.
// All take Operands (strided views, see oneapi_runtime.h) and return a Status naming the
// primitive on failure; none of them allocates.

#pragma once

#include <optional>

#include "backends/oneapi/oneapi_runtime.h"

namespace anvil::oneapi {

// dst = alpha * src @ weights (+ bias) + beta * dst, over matching leading (batch) dims,
// where a dim of 1 in src or weights broadcasts. Accumulates in f32; beta == 0 does not
// read dst. bias has dst's rank with every dim but the last 1.
struct MatmulEpilogue {
  double alpha = 1.0;
  double beta = 0.0;
  std::optional<Operand> bias;
};
Status matmul(const Operand& src, const Operand& weights, const Operand& dst, const MatmulEpilogue& epilogue = {});

// dst = src with its dims of size 1 in dst summed over (f32 accumulation).
Status reduce_sum(const Operand& src, const Operand& dst);

// dst = factor * dst, in place.
Status scale(const Operand& dst, double factor);

// dst = src, converting dtype and layout.
Status reorder(const Operand& src, const Operand& dst);

// dst = src0 + src1, src1 broadcast on its dims of size 1; dst may be src0.
Status add(const Operand& src0, const Operand& src1, const Operand& dst);

// Softmax along the last dim, and its backward:
// diff_src = dst * (diff_dst - sum(diff_dst * dst)) along the last dim.
Status softmax(const Operand& src, const Operand& dst);
Status softmax_backward(const Operand& dst, const Operand& diff_dst, const Operand& diff_src);

// Writes zeros to every element of dst (host loop; for gradients of empty products).
Status fill_zero(const Operand& dst);

// Copies src into dense row-major memory at dst (host loop; any strides, 0 included, which
// oneDNN's primitives do not take).
void gather_dense(const Operand& src, void* dst);

}  // namespace anvil::oneapi
