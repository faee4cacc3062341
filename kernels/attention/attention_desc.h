// Attention descriptor: the shape a call implies and the rules it must satisfy.
#pragma once

#include <array>
#include <string>

#include "anvil/ops.h"

namespace anvil::attention_desc {

struct Shape {
  int64_t batch, heads, kv_heads, seq_q, seq_k, head_dim, value_dim;
  int64_t group() const { return kv_heads > 0 ? heads / kv_heads : 0; }  // query heads per kv head
};

Shape shape_of(const TensorRef& q, const TensorRef& k, const TensorRef& v);
double scale_of(const std::optional<double>& scale, int64_t head_dim);

// Strides of the mask broadcast to (B, H, Lq, Lk): 0 on broadcast dims.
std::array<int64_t, 4> mask_strides(const TensorRef& mask);

Status validate(const AttentionArgs& args);
Status validate(const AttentionBackwardArgs& args);

std::string describe(const AttentionArgs& args);
std::string describe(const AttentionBackwardArgs& args);

}  // namespace anvil::attention_desc
