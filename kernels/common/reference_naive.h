// Naive same-precision (f32-accumulating) versions of the reference kernels. Tests use
// their error against the f64 oracle as the yardstick of the relative accuracy tier.
#pragma once

#include "anvil/ops.h"

namespace anvil::reference {

Status naive_f32(const GemmArgs& args);
Status naive_f32(const GemmBackwardArgs& args);
Status naive_f32(const Conv2dArgs& args);
Status naive_f32(const Conv2dBackwardArgs& args);
Status naive_f32(const AttentionArgs& args);
Status naive_f32(const AttentionBackwardArgs& args);

}  // namespace anvil::reference
