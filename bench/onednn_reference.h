// oneDNN called directly, as an application would: the primitive and its memory objects
// made once, then executed. anvil-bench times these beside anvil's oneapi kernels (which
// run the same primitives through anvil's dispatch) to measure what anvil adds.
#pragma once

#include <cstdint>
#include <functional>

namespace anvil::bench {

// C (M, N) = A (M, K) @ B (K, N), f32, row-major and dense.
std::function<void()> onednn_matmul(int64_t m, int64_t n, int64_t k, float* a, float* b, float* c);

// NHWC f32 convolution with KRSC weights (torch channels_last): the weights are reordered
// into the primitive's format on every call, as anvil must for a weight it does not own,
// unless prepacked is true (the reorder is done once, outside the timing).
std::function<void()> onednn_conv_nhwc(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t r, int64_t s,
                                       int64_t stride, int64_t pad, float* input, float* weight, float* output,
                                       bool prepacked);

}  // namespace anvil::bench
