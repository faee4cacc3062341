// The public op entries: each is validate -> select -> run through the registry.
#include "anvil/ops.h"

#include "dispatch/registry.h"

namespace anvil {

Status gemm(const GemmArgs& args) { return dispatch::run_op(args); }
Status gemm_backward(const GemmBackwardArgs& args) { return dispatch::run_op(args); }
Status conv2d(const Conv2dArgs& args) { return dispatch::run_op(args); }
Status conv2d_backward(const Conv2dBackwardArgs& args) { return dispatch::run_op(args); }
Status attention(const AttentionArgs& args) { return dispatch::run_op(args); }
Status attention_backward(const AttentionBackwardArgs& args) { return dispatch::run_op(args); }

std::string explain(const GemmArgs& args) { return dispatch::explain_op(args); }
std::string explain(const GemmBackwardArgs& args) { return dispatch::explain_op(args); }
std::string explain(const Conv2dArgs& args) { return dispatch::explain_op(args); }
std::string explain(const Conv2dBackwardArgs& args) { return dispatch::explain_op(args); }
std::string explain(const AttentionArgs& args) { return dispatch::explain_op(args); }
std::string explain(const AttentionBackwardArgs& args) { return dispatch::explain_op(args); }

namespace {
template <class Args> Status selected_name(const Args& args, std::string* name) {
  const dispatch::KernelRecord<Args>* kernel = nullptr;
  ANVIL_RETURN_IF_ERROR(dispatch::select_op(args, &kernel));
  *name = kernel->name;
  return Status::Ok();
}
}  // namespace

Status select_kernel(const GemmArgs& args, std::string* name) { return selected_name(args, name); }
Status select_kernel(const Conv2dArgs& args, std::string* name) { return selected_name(args, name); }
Status select_kernel(const AttentionArgs& args, std::string* name) { return selected_name(args, name); }

GemmArgs gemm_args_row_major(DType dtype, Transpose trans_a, Transpose trans_b, int64_t m, int64_t n,
                             int64_t k, double alpha, const void* a, int64_t lda, const void* b,
                             int64_t ldb, double beta, void* c, int64_t ldc) {
  GemmArgs args;
  // op(A) is (M, K): A stored (M, K) with row stride lda, or (K, M) transposed.
  args.a = trans_a == Transpose::no ? TensorRef::strided(a, dtype, {m, k}, {lda, 1})
                                    : TensorRef::strided(a, dtype, {m, k}, {1, lda});
  args.b = trans_b == Transpose::no ? TensorRef::strided(b, dtype, {k, n}, {ldb, 1})
                                    : TensorRef::strided(b, dtype, {k, n}, {1, ldb});
  args.c = TensorRef::strided(c, dtype, {m, n}, {ldc, 1});
  args.alpha = alpha;
  args.beta = beta;
  return args;
}

}  // namespace anvil
