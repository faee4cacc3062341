// The ops: GEMM, 2-D convolution, attention, each with its backward.
//
// Every entry validates its arguments (Status names the argument and the rule),
// asks the dispatch registry for a kernel, and runs it. On error nothing is written.
// Dimensions may be zero. All size math is int64 and overflow-checked.
#pragma once

#include <optional>

#include "anvil/status.h"
#include "anvil/tensor.h"

namespace anvil {

// ----------------------------------------------------------------------------- GEMM
// c = alpha * a @ b + beta * c (+ bias broadcast over rows).
//   a: (M, K) or (batch, M, K)     b: (K, N) or (batch, K, N)     c: (M, N) or (batch, M, N)
// Transposes and leading dimensions are strides: a transposed A is a view with
// strides {1, lda}. A batch dimension of size 1 (or stride 0) in a or b broadcasts.
// When beta == 0, c is not read (NaN in c does not propagate), as in BLAS.
struct GemmArgs {
  TensorRef a, b, c;
  std::optional<TensorRef> bias;  // (N)
  double alpha = 1.0;
  double beta = 0.0;
};

// Gradients of c = alpha * a @ b + bias, given grad_c (same shape as c).
// Each requested gradient is written (overwritten, not accumulated). A gradient of an
// operand broadcast over the batch is summed over the batch.
struct GemmBackwardArgs {
  TensorRef a, b, grad_c;
  std::optional<TensorRef> grad_a, grad_b, grad_bias;
  double alpha = 1.0;
};

enum class Transpose : uint8_t { no, yes };

// BLAS-style row-major convenience: C(MxN) = alpha * op(A) op(B) + beta * C.
GemmArgs gemm_args_row_major(DType dtype, Transpose trans_a, Transpose trans_b, int64_t m,
                             int64_t n, int64_t k, double alpha, const void* a, int64_t lda,
                             const void* b, int64_t ldb, double beta, void* c, int64_t ldc);

Status gemm(const GemmArgs& args);
Status gemm_backward(const GemmBackwardArgs& args);

// ----------------------------------------------------------------------------- conv2d
// Logical dims are always NCHW; the memory layout (NCHW, NHWC or any other) is in the
// strides. Cross-correlation, as in torch.nn.functional.conv2d.
//   input (N, C, H, W)   weight (K, C / groups, R, S)   bias (K)   output (N, K, P, Q)
//   P = (H + 2*pad_h - dil_h*(R-1) - 1) / stride_h + 1, likewise Q.
struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
};

struct Conv2dArgs {
  TensorRef input, weight, output;
  std::optional<TensorRef> bias;
  Conv2dParams params;
};

struct Conv2dBackwardArgs {
  TensorRef grad_output, input, weight;
  std::optional<TensorRef> grad_input, grad_weight, grad_bias;
  Conv2dParams params;
};

enum class Layout : uint8_t { nchw, nhwc, strided };

// Logical-NCHW view of a packed NCHW or NHWC buffer.
TensorRef image_tensor(const void* data, DType dtype, Layout layout, int64_t n, int64_t c,
                       int64_t h, int64_t w, Device device = {});
Layout layout_of(const TensorRef& image);

// Output extent of one spatial dimension, or -1 if the window does not fit.
int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                         int64_t dilation);

Status conv2d(const Conv2dArgs& args);
Status conv2d_backward(const Conv2dBackwardArgs& args);

// ----------------------------------------------------------------------------- attention
// out = softmax(scale * q @ k^T + mask) @ v, per (batch, head); GQA/MQA when kv_heads
// divides heads (query head h reads kv head h / (heads / kv_heads)).
//   q (B, H, Lq, E)   k (B, Hkv, Lk, E)   v (B, Hkv, Lk, Ev)   out (B, H, Lq, Ev)
//   lse (B, H, Lq), f32: log-sum-exp of each scaled, masked score row (-inf if fully masked)
// mask: rank <= 4, broadcastable to (B, H, Lq, Lk); boolean (true = attend) or additive
// (same dtype as q). causal: query i attends keys j <= i (top-left aligned, as torch).
// Fully masked rows give out = 0.
struct AttentionArgs {
  TensorRef q, k, v, out;
  std::optional<TensorRef> lse;
  std::optional<TensorRef> mask;
  bool causal = false;
  std::optional<double> scale;  // default 1 / sqrt(E)
};

struct AttentionBackwardArgs {
  TensorRef q, k, v, out, grad_out, lse;
  std::optional<TensorRef> mask;
  bool causal = false;
  std::optional<double> scale;
  TensorRef grad_q, grad_k, grad_v;
};

Status attention(const AttentionArgs& args);
Status attention_backward(const AttentionBackwardArgs& args);

}  // namespace anvil
