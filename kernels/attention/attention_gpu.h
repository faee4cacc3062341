// The GPU attention problem, shared by the cuda and hip backends: an AttentionArgs lowered
// to device pointers and element strides, the SIMT launchers both vendors compile from one
// source (attention_gpu_simt.inc: any dtype, head dim, mask; the backward), and the
// interface of each vendor's matrix-core forward kernels (cuda: flash_sm80 on mma.sync;
// hip: flash_mfma). Each launcher's `*_accepts` says why it cannot run a problem.
#pragma once

#include <cstdint>
#include <span>

#include "anvil/dtype.h"
#include "anvil/status.h"
#include "backends/gpu/gpu_api.h"

namespace anvil::dispatch {
class KernelTables;
}  // namespace anvil::dispatch

namespace anvil::gpu_attention {
inline namespace ANVIL_GPU_ABI {

// A (batch, heads, length, dim) operand; strides in elements, the last one is `dim`'s.
struct Operand {
  void* data = nullptr;
  int64_t batch_stride = 0, head_stride = 0, row_stride = 0, col_stride = 1;
};

// out = softmax(scale * q k^T [+ mask]) v per (batch, head); head h reads kv head
// h / (heads / kv_heads). causal: query i attends keys j <= i (top-left, as torch).
// Rows with no key attended give out = 0 and lse = -inf.
struct Problem {
  DType dtype = DType::f32;  // of q, k, v, out (and grad_* in the backward)
  int64_t batch = 0, heads = 0, kv_heads = 0, lq = 0, lk = 0, head_dim = 0, value_dim = 0;
  Operand q, k, v, out;
  Operand lse;  // f32 (batch, heads, lq) with dim-less strides (col_stride unused); data may be null
  // Optional mask broadcast to (batch, heads, lq, lk): strides may be 0. Boolean (uint8,
  // non-zero = attend) when mask_is_bool, else additive of `dtype`.
  Operand mask;
  int64_t mask_key_stride = 0;  // stride along lk (the mask's last dim)
  bool mask_is_bool = false;
  bool causal = false;
  float scale = 1.0f;
  gpuStream_t stream = nullptr;
  int device = 0;
};

// Gradients given grad_out and the forward's lse. grad_k / grad_v of a kv head sum over
// its query heads.
struct BackwardProblem {
  Problem forward;  // q, k, v, out, lse (read), mask, causal, scale
  Operand grad_out, grad_q, grad_k, grad_v;
};

Status simt_accepts(const Problem& p);
Status run_simt_forward(const Problem& p);
Status run_simt_backward(const BackwardProblem& p);

// A matrix-core forward kernel of one vendor (bf16 and f16): its name in kernel names, its
// registry priority (the SIMT kernel has 100) and its entry points.
struct FlashKernel {
  const char* variant;
  int priority;
  Status (*accepts)(const Problem&);
  Status (*run)(const Problem&);
};
// Defined by each vendor's attention file: its matrix-core forward kernels (at most 2).
std::span<const FlashKernel> flash_kernels();

// The SIMT records (forward and backward) and one per flash kernel (attention_gpu.inc).
void add_attention_kernels(dispatch::KernelTables& tables);

}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu_attention
