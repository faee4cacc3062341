#include "kernels/gemm/gemm_desc.h"

#include <cmath>

#include "kernels/common/checks.h"

namespace anvil::gemm_desc {
namespace {

int64_t batch_of(const TensorRef& t) { return t.rank == 3 ? t.shape[0] : 1; }

// Batch of an operand must equal the output's batch or be 1 (broadcast).
Status batch_matches(const TensorRef& t, const char* name, int64_t batch) {
  const int64_t b = batch_of(t);
  if (b == batch || b == 1) return Status::Ok();
  return invalid_argument(std::string(name) + ": batch " + std::to_string(b) +
                          " neither matches the output batch " + std::to_string(batch) +
                          " nor is 1 (" + t.to_string() + ")");
}

Status check_operands(const TensorRef& a, const TensorRef& b) {
  ANVIL_RETURN_IF_ERROR(checks::tensor(a, "a", 2, 3));
  ANVIL_RETURN_IF_ERROR(checks::tensor(b, "b", 2, 3));
  ANVIL_RETURN_IF_ERROR(checks::floating_dtype(a, "a"));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(b, "b", a, "a"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(b, "b", a, "a"));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(b, "b", -2, a.dim(-1), "the inner dimension K of a"));
  ANVIL_RETURN_IF_ERROR(checks::leading_dimension(a, "a"));
  ANVIL_RETURN_IF_ERROR(checks::leading_dimension(b, "b"));
  return Status::Ok();
}

// An output (or the gradient of `like`) with the same shape as `like`, no overlap,
// and no aliasing with any input.
Status check_output(const TensorRef& out, const char* name, const TensorRef& dtype_ref,
                    std::initializer_list<std::pair<const TensorRef*, const char*>> inputs) {
  ANVIL_RETURN_IF_ERROR(checks::output_tensor(out, name, 1, 3));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(out, name, dtype_ref, "a"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(out, name, dtype_ref, "a"));
  for (const auto& [in, in_name] : inputs)
    ANVIL_RETURN_IF_ERROR(checks::no_alias(out, name, *in, in_name));
  return Status::Ok();
}

Status check_bias(const TensorRef& bias, const char* name, const TensorRef& a, int64_t n) {
  ANVIL_RETURN_IF_ERROR(checks::tensor(bias, name, 1, 1));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(bias, name, a, "a"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(bias, name, a, "a"));
  return checks::dim_equals(bias, name, 0, n, "N (the columns of b)");
}

Status check_same_shape(const TensorRef& t, const char* name, const TensorRef& like,
                        const char* like_name) {
  bool same = t.rank == like.rank;
  for (int i = 0; same && i < t.rank; ++i) same = t.shape[i] == like.shape[i];
  if (same) return Status::Ok();
  return invalid_argument(std::string(name) + ": shape " + t.to_string() + " must equal the shape of " +
                          like_name + " " + like.to_string());
}

}  // namespace

Shape shape_of(const GemmArgs& args) {
  return {batch_of(args.c), args.a.dim(-2), args.b.dim(-1), args.a.dim(-1)};
}

Shape shape_of(const GemmBackwardArgs& args) {
  return {batch_of(args.grad_c), args.a.dim(-2), args.b.dim(-1), args.a.dim(-1)};
}

Status validate(const GemmArgs& args) {
  ANVIL_RETURN_IF_ERROR(check_operands(args.a, args.b));
  const TensorRef& c = args.c;
  ANVIL_RETURN_IF_ERROR(checks::output_tensor(c, "c", 2, 3));
  const int64_t batch = batch_of(c);
  if (c.rank == 2 && (batch_of(args.a) > 1 || batch_of(args.b) > 1))
    return invalid_argument("c: rank 2 output but a or b has a batch dimension > 1 (" +
                            c.to_string() + ")");
  ANVIL_RETURN_IF_ERROR(batch_matches(args.a, "a", batch));
  ANVIL_RETURN_IF_ERROR(batch_matches(args.b, "b", batch));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(c, "c", -2, args.a.dim(-2), "M (the rows of a)"));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(c, "c", -1, args.b.dim(-1), "N (the columns of b)"));
  ANVIL_RETURN_IF_ERROR(check_output(c, "c", args.a, {{&args.a, "a"}, {&args.b, "b"}}));
  if (args.bias) {
    ANVIL_RETURN_IF_ERROR(check_bias(*args.bias, "bias", args.a, args.b.dim(-1)));
    ANVIL_RETURN_IF_ERROR(checks::no_alias(c, "c", *args.bias, "bias"));
  }
  if (!std::isfinite(args.alpha)) return invalid_argument("alpha: must be finite");
  if (!std::isfinite(args.beta)) return invalid_argument("beta: must be finite");
  return Status::Ok();
}

Status validate(const GemmBackwardArgs& args) {
  ANVIL_RETURN_IF_ERROR(check_operands(args.a, args.b));
  const TensorRef& g = args.grad_c;
  ANVIL_RETURN_IF_ERROR(checks::tensor(g, "grad_c", 2, 3));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(g, "grad_c", args.a, "a"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(g, "grad_c", args.a, "a"));
  const int64_t batch = batch_of(g);
  ANVIL_RETURN_IF_ERROR(batch_matches(args.a, "a", batch));
  ANVIL_RETURN_IF_ERROR(batch_matches(args.b, "b", batch));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(g, "grad_c", -2, args.a.dim(-2), "M (the rows of a)"));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(g, "grad_c", -1, args.b.dim(-1), "N (the columns of b)"));
  const std::initializer_list<std::pair<const TensorRef*, const char*>> inputs = {
      {&args.a, "a"}, {&args.b, "b"}, {&args.grad_c, "grad_c"}};
  if (args.grad_a) {
    ANVIL_RETURN_IF_ERROR(check_output(*args.grad_a, "grad_a", args.a, inputs));
    ANVIL_RETURN_IF_ERROR(check_same_shape(*args.grad_a, "grad_a", args.a, "a"));
  }
  if (args.grad_b) {
    ANVIL_RETURN_IF_ERROR(check_output(*args.grad_b, "grad_b", args.a, inputs));
    ANVIL_RETURN_IF_ERROR(check_same_shape(*args.grad_b, "grad_b", args.b, "b"));
  }
  if (args.grad_bias) {
    ANVIL_RETURN_IF_ERROR(check_output(*args.grad_bias, "grad_bias", args.a, inputs));
    ANVIL_RETURN_IF_ERROR(check_bias(*args.grad_bias, "grad_bias", args.a, args.b.dim(-1)));
  }
  // Gradients must not overlap one another either.
  if (args.grad_a && args.grad_b)
    ANVIL_RETURN_IF_ERROR(checks::no_alias(*args.grad_b, "grad_b", *args.grad_a, "grad_a"));
  if (args.grad_bias && args.grad_a)
    ANVIL_RETURN_IF_ERROR(checks::no_alias(*args.grad_bias, "grad_bias", *args.grad_a, "grad_a"));
  if (args.grad_bias && args.grad_b)
    ANVIL_RETURN_IF_ERROR(checks::no_alias(*args.grad_bias, "grad_bias", *args.grad_b, "grad_b"));
  if (!std::isfinite(args.alpha)) return invalid_argument("alpha: must be finite");
  return Status::Ok();
}

std::string describe(const GemmArgs& args) {
  std::string s = "a=" + args.a.to_string() + " b=" + args.b.to_string() + " c=" + args.c.to_string();
  if (args.bias) s += " bias=" + args.bias->to_string();
  char scalars[64];
  std::snprintf(scalars, sizeof scalars, " alpha=%g beta=%g", args.alpha, args.beta);
  return s + scalars;
}

std::string describe(const GemmBackwardArgs& args) {
  std::string s = "a=" + args.a.to_string() + " b=" + args.b.to_string() +
                  " grad_c=" + args.grad_c.to_string();
  s += args.grad_a ? " grad_a=" + args.grad_a->to_string() : " grad_a=none";
  s += args.grad_b ? " grad_b=" + args.grad_b->to_string() : " grad_b=none";
  s += args.grad_bias ? " grad_bias=" + args.grad_bias->to_string() : " grad_bias=none";
  return s;
}

}  // namespace anvil::gemm_desc
