// conv2d descriptor: the shape a call implies and the rules it must satisfy.
#pragma once

#include <string>

#include "anvil/ops.h"

namespace anvil::conv2d_desc {

struct Shape {
  int64_t n, c, h, w;  // input
  int64_t k, r, s;     // output channels, filter height, width
  int64_t p, q;        // output height, width
  int64_t groups;
  int64_t c_per_group() const { return groups > 0 ? c / groups : 0; }
  int64_t k_per_group() const { return groups > 0 ? k / groups : 0; }
};

Shape shape_of(const TensorRef& input, const TensorRef& weight, const Conv2dParams& params);

Status validate_params(const Conv2dParams& params);
Status validate(const Conv2dArgs& args);
Status validate(const Conv2dBackwardArgs& args);

std::string describe(const Conv2dArgs& args);
std::string describe(const Conv2dBackwardArgs& args);

}  // namespace anvil::conv2d_desc
