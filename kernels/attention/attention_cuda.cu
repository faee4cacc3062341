// Attention on CUDA device memory: the lowering of AttentionArgs / AttentionBackwardArgs to
// cuda_attention::Problem (device pointers and element strides, the mask broadcast to
// (B, H, Lq, Lk) with stride 0 on broadcast dims), and the registry records of the cuda
// attention kernels. The kernels are in attention_cuda_simt.cu (every dtype and shape, and
// the backward) and attention_cuda_flash.cu (tensor cores, bf16/f16 forward).
#include <array>
#include <optional>

#include "backends/cuda/cuda_runtime.h"
#include "dispatch/kernel_record.h"
#include "kernels/attention/attention_cuda.h"
#include "kernels/attention/attention_desc.h"

namespace anvil::cuda_attention {
namespace {

// ------------------------------------------------------------------ lowering
// A validated rank-4 (batch, heads, length, dim) tensor; ptr() includes the view's offset.
Operand operand_of(const TensorRef& t) {
  Operand o;
  o.data = t.ptr();
  o.batch_stride = t.strides[0];
  o.head_stride = t.strides[1];
  o.row_stride = t.strides[2];
  o.col_stride = t.strides[3];
  return o;
}

// lse (batch, heads, lq): no dim, so col_stride stays unused.
Operand lse_operand_of(const TensorRef& t) {
  Operand o;
  o.data = t.ptr();
  o.batch_stride = t.strides[0];
  o.head_stride = t.strides[1];
  o.row_stride = t.strides[2];
  return o;
}

// The forward problem of validated operands. Stream and device are the caller's: run() sets
// the stream once the device guard is in place.
Problem problem_of(const TensorRef& q, const TensorRef& k, const TensorRef& v, const TensorRef& out,
                   const TensorRef* lse, const std::optional<TensorRef>& mask, bool causal,
                   const std::optional<double>& scale) {
  const attention_desc::Shape s = attention_desc::shape_of(q, k, v);
  Problem p;
  p.dtype = q.dtype;
  p.batch = s.batch, p.heads = s.heads, p.kv_heads = s.kv_heads;
  p.lq = s.seq_q, p.lk = s.seq_k, p.head_dim = s.head_dim, p.value_dim = s.value_dim;
  p.q = operand_of(q), p.k = operand_of(k), p.v = operand_of(v), p.out = operand_of(out);
  if (lse) p.lse = lse_operand_of(*lse);
  if (mask) {
    // Right-aligned to (B, H, Lq, Lk); missing and size-1 dims get stride 0.
    const std::array<int64_t, 4> strides = attention_desc::mask_strides(*mask);
    p.mask.data = mask->ptr();
    p.mask.batch_stride = strides[0];
    p.mask.head_stride = strides[1];
    p.mask.row_stride = strides[2];
    p.mask.col_stride = strides[3];
    p.mask_key_stride = strides[3];
    p.mask_is_bool = mask->dtype == DType::boolean;
  }
  p.causal = causal;
  p.scale = float(attention_desc::scale_of(scale, s.head_dim));
  p.device = q.device.index;
  return p;
}

Problem problem_of(const AttentionArgs& args) {
  return problem_of(args.q, args.k, args.v, args.out, args.lse ? &*args.lse : nullptr, args.mask, args.causal,
                    args.scale);
}

BackwardProblem problem_of(const AttentionBackwardArgs& args) {
  BackwardProblem p;
  p.forward = problem_of(args.q, args.k, args.v, args.out, &args.lse, args.mask, args.causal, args.scale);
  p.grad_out = operand_of(args.grad_out);
  p.grad_q = operand_of(args.grad_q);
  p.grad_k = operand_of(args.grad_k);
  p.grad_v = operand_of(args.grad_v);
  return p;
}

// ------------------------------------------------------------------ records
Status simt_can_implement(const AttentionArgs& args) { return simt_accepts(problem_of(args)); }
Status simt_run(const AttentionArgs& args) {
  Problem p = problem_of(args);
  cuda::DeviceGuard guard(p.device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  p.stream = cuda::current_stream();
  return run_simt_forward(p);
}

Status simt_backward_can_implement(const AttentionBackwardArgs& args) {
  return simt_accepts(problem_of(args).forward);
}
Status simt_backward_run(const AttentionBackwardArgs& args) {
  BackwardProblem p = problem_of(args);
  cuda::DeviceGuard guard(p.forward.device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  p.forward.stream = cuda::current_stream();
  return run_simt_backward(p);
}

Status flash_sm80_can_implement(const AttentionArgs& args) { return flash_sm80_accepts(problem_of(args)); }
Status flash_sm80_run(const AttentionArgs& args) {
  Problem p = problem_of(args);
  cuda::DeviceGuard guard(p.device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  p.stream = cuda::current_stream();
  return run_flash_sm80(p);
}

}  // namespace

// The flash kernel (tensor cores, bf16/f16, head dims 64 and 128, no user mask) above the
// SIMT one, which takes every dtype, head dim, stride and mask, and is the only backward.
void add_attention_kernels(dispatch::KernelTables& tables) {
  constexpr int kSimtPriority = 100, kFlashPriority = 150;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    tables.add(dispatch::KernelRecord<AttentionArgs>{dispatch::kernel_name(Op::attention, dtype, "cuda", "simt"),
                                                     "cuda", dtype, kSimtPriority, &simt_can_implement, &simt_run});
    tables.add(dispatch::KernelRecord<AttentionBackwardArgs>{
        dispatch::kernel_name(Op::attention_backward, dtype, "cuda", "simt"), "cuda", dtype, kSimtPriority,
        &simt_backward_can_implement, &simt_backward_run});
  }
  for (DType dtype : {DType::f16, DType::bf16})
    tables.add(dispatch::KernelRecord<AttentionArgs>{dispatch::kernel_name(Op::attention, dtype, "cuda", "flash_sm80"),
                                                     "cuda", dtype, kFlashPriority, &flash_sm80_can_implement,
                                                     &flash_sm80_run});
}

}  // namespace anvil::cuda_attention
