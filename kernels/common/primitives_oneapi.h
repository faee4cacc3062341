// The oneDNN primitives the oneapi kernels are composed of, each created once per
// distinct descriptor (backends/oneapi PrimitiveCache) and run on anvil's thread budget.
// All take Operands (strided views, see oneapi_runtime.h) and return a Status naming the
// primitive on failure; none of them allocates.

#pragma once

#include <array>
#include <optional>
#include <utility>

#include "backends/oneapi/oneapi_runtime.h"

namespace anvil::oneapi {

// One primitive run, as it can be run again on this thread: a caller that repeats a call
// with the very same operands (data pointers included) skips building its key and finding
// its plan. The handles are bound again on each run (a no-op unless another call of the
// same plan moved them). Holds the plan, so its memory objects stay valid.
struct Replay {
  std::shared_ptr<const void> plan;
  const dnnl::primitive* primitive = nullptr;
  const PlanMemories* memories = nullptr;
  std::array<std::pair<PlanMemories::Handle, void*>, 6> handles{};  // (argument's memory, data)
  size_t handle_count = 0;
  int64_t flops = -1;

  explicit operator bool() const { return primitive != nullptr; }
  Status run() const;
};

// dst = alpha * src @ weights (+ bias) + beta * dst, over matching leading (batch) dims,
// where a dim of 1 in src or weights broadcasts. Accumulates in f32; beta == 0 does not
// read dst. bias has dst's rank with every dim but the last 1. replay, when given and
// alpha is 1, receives how to run the same call again.
struct MatmulEpilogue {
  double alpha = 1.0;
  double beta = 0.0;
  std::optional<Operand> bias;
};
Status matmul(const Operand& src, const Operand& weights, const Operand& dst, const MatmulEpilogue& epilogue = {},
              Replay* replay = nullptr);

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
