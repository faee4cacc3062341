#include "kernels/attention/attention_desc.h"

#include <cmath>

#include "kernels/common/checks.h"

namespace anvil::attention_desc {
namespace {

Status check_shape4(const TensorRef& t, const char* name, const std::array<int64_t, 4>& expected) {
  static const char* what[4] = {"the batch of q", "the heads of q", "seq_q", "the value dim of v"};
  for (int i = 0; i < 4; ++i) ANVIL_RETURN_IF_ERROR(checks::dim_equals(t, name, i, expected[i], what[i]));
  return Status::Ok();
}

Status check_mask(const TensorRef& mask, const TensorRef& q, const Shape& s) {
  ANVIL_RETURN_IF_ERROR(checks::tensor(mask, "mask", 1, 4));
  if (mask.dtype != DType::boolean)
    ANVIL_RETURN_IF_ERROR(checks::same_dtype(mask, "mask", q, "q (an additive mask)"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(mask, "mask", q, "q"));
  const int64_t target[4] = {s.batch, s.heads, s.seq_q, s.seq_k};
  for (int i = 0; i < mask.rank; ++i) {
    const int64_t d = mask.shape[i], want = target[4 - mask.rank + i];
    if (d != want && d != 1)
      return invalid_argument("mask: dimension " + std::to_string(i) + " is " + std::to_string(d) +
                              ", not broadcastable to " + std::to_string(want) + " (" + mask.to_string() +
                              " vs (B, H, Lq, Lk) = (" + std::to_string(s.batch) + ", " +
                              std::to_string(s.heads) + ", " + std::to_string(s.seq_q) + ", " +
                              std::to_string(s.seq_k) + "))");
  }
  return Status::Ok();
}

// q, k, v, mask, causal and scale: the part shared by forward and backward.
Status check_problem(const TensorRef& q, const TensorRef& k, const TensorRef& v,
                     const std::optional<TensorRef>& mask, bool causal,
                     const std::optional<double>& scale, Shape* shape) {
  ANVIL_RETURN_IF_ERROR(checks::tensor(q, "q", 4, 4));
  ANVIL_RETURN_IF_ERROR(checks::tensor(k, "k", 4, 4));
  ANVIL_RETURN_IF_ERROR(checks::tensor(v, "v", 4, 4));
  ANVIL_RETURN_IF_ERROR(checks::floating_dtype(q, "q"));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(k, "k", q, "q"));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(v, "v", q, "q"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(k, "k", q, "q"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(v, "v", q, "q"));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(k, "k", 0, q.shape[0], "the batch of q"));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(v, "v", 0, q.shape[0], "the batch of q"));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(k, "k", 3, q.shape[3], "the head dim of q"));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(v, "v", 1, k.shape[1], "the kv heads of k"));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(v, "v", 2, k.shape[2], "seq_k of k"));
  const int64_t heads = q.shape[1], kv_heads = k.shape[1];
  if (kv_heads == 0 ? heads != 0 : heads % kv_heads != 0)
    return invalid_argument("k: kv heads " + std::to_string(kv_heads) + " must divide the query heads " +
                            std::to_string(heads) + " (GQA/MQA)");
  *shape = shape_of(q, k, v);
  if (mask) {
    if (causal) return invalid_argument("mask: cannot be combined with causal=true (as in torch)");
    ANVIL_RETURN_IF_ERROR(check_mask(*mask, q, *shape));
  }
  if (scale && !std::isfinite(*scale)) return invalid_argument("scale: must be finite");
  return Status::Ok();
}

Status check_lse(const TensorRef& lse, const char* name, const TensorRef& q, const Shape& s, bool output) {
  ANVIL_RETURN_IF_ERROR(output ? checks::output_tensor(lse, name, 3, 3) : checks::tensor(lse, name, 3, 3));
  ANVIL_RETURN_IF_ERROR(checks::dtype_is(lse, name, DType::f32));
  ANVIL_RETURN_IF_ERROR(checks::same_device(lse, name, q, "q"));
  const int64_t expected[3] = {s.batch, s.heads, s.seq_q};
  static const char* what[3] = {"the batch of q", "the heads of q", "seq_q"};
  for (int i = 0; i < 3; ++i) ANVIL_RETURN_IF_ERROR(checks::dim_equals(lse, name, i, expected[i], what[i]));
  return Status::Ok();
}

Status check_output(const TensorRef& out, const char* name, const TensorRef& like_dtype,
                    std::initializer_list<std::pair<const TensorRef*, const char*>> inputs) {
  ANVIL_RETURN_IF_ERROR(checks::output_tensor(out, name, 1, 4));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(out, name, like_dtype, "q"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(out, name, like_dtype, "q"));
  for (const auto& [in, in_name] : inputs)
    if (in) ANVIL_RETURN_IF_ERROR(checks::no_alias(out, name, *in, in_name));
  return Status::Ok();
}

}  // namespace

Shape shape_of(const TensorRef& q, const TensorRef& k, const TensorRef& v) {
  return {q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3]};
}

double scale_of(const std::optional<double>& scale, int64_t head_dim) {
  if (scale) return *scale;
  return head_dim > 0 ? 1.0 / std::sqrt(double(head_dim)) : 1.0;
}

std::array<int64_t, 4> mask_strides(const TensorRef& mask) {
  std::array<int64_t, 4> strides{0, 0, 0, 0};
  for (int i = 0; i < mask.rank; ++i)
    strides[4 - mask.rank + i] = mask.shape[i] == 1 ? 0 : mask.strides[i];
  return strides;
}

Status validate(const AttentionArgs& args) {
  Shape s;
  ANVIL_RETURN_IF_ERROR(check_problem(args.q, args.k, args.v, args.mask, args.causal, args.scale, &s));
  const TensorRef* mask = args.mask ? &*args.mask : nullptr;
  ANVIL_RETURN_IF_ERROR(check_output(args.out, "out", args.q,
                                     {{&args.q, "q"}, {&args.k, "k"}, {&args.v, "v"}, {mask, "mask"}}));
  if (args.out.rank != 4) return invalid_argument("out: expected rank 4, got rank " + std::to_string(args.out.rank));
  ANVIL_RETURN_IF_ERROR(check_shape4(args.out, "out", {s.batch, s.heads, s.seq_q, s.value_dim}));
  if (args.lse) {
    ANVIL_RETURN_IF_ERROR(check_lse(*args.lse, "lse", args.q, s, true));
    for (auto [in, name] : {std::pair{&args.q, "q"}, {&args.k, "k"}, {&args.v, "v"}, {&args.out, "out"}})
      ANVIL_RETURN_IF_ERROR(checks::no_alias(*args.lse, "lse", *in, name));
    if (mask) ANVIL_RETURN_IF_ERROR(checks::no_alias(*args.lse, "lse", *mask, "mask"));
  }
  return Status::Ok();
}

Status validate(const AttentionBackwardArgs& args) {
  Shape s;
  ANVIL_RETURN_IF_ERROR(check_problem(args.q, args.k, args.v, args.mask, args.causal, args.scale, &s));
  for (auto [t, name] : {std::pair{&args.out, "out"}, {&args.grad_out, "grad_out"}}) {
    ANVIL_RETURN_IF_ERROR(checks::tensor(*t, name, 4, 4));
    ANVIL_RETURN_IF_ERROR(checks::same_dtype(*t, name, args.q, "q"));
    ANVIL_RETURN_IF_ERROR(checks::same_device(*t, name, args.q, "q"));
    ANVIL_RETURN_IF_ERROR(check_shape4(*t, name, {s.batch, s.heads, s.seq_q, s.value_dim}));
  }
  ANVIL_RETURN_IF_ERROR(check_lse(args.lse, "lse", args.q, s, false));
  const TensorRef* mask = args.mask ? &*args.mask : nullptr;
  const std::initializer_list<std::pair<const TensorRef*, const char*>> inputs = {
      {&args.q, "q"},     {&args.k, "k"},     {&args.v, "v"},     {&args.out, "out"},
      {&args.grad_out, "grad_out"}, {&args.lse, "lse"}, {mask, "mask"}};
  struct Grad {
    const TensorRef& t;
    const char* name;
    const TensorRef& like;
    const char* like_name;
  };
  const Grad grads[] = {{args.grad_q, "grad_q", args.q, "q"},
                        {args.grad_k, "grad_k", args.k, "k"},
                        {args.grad_v, "grad_v", args.v, "v"}};
  for (const Grad& g : grads) {
    ANVIL_RETURN_IF_ERROR(check_output(g.t, g.name, args.q, inputs));
    if (g.t.rank != 4) return invalid_argument(std::string(g.name) + ": expected rank 4");
    for (int i = 0; i < 4; ++i)
      ANVIL_RETURN_IF_ERROR(checks::dim_equals(g.t, g.name, i, g.like.shape[i], g.like_name));
    for (const Grad& other : grads)
      if (&other != &g) ANVIL_RETURN_IF_ERROR(checks::no_alias(g.t, g.name, other.t, other.name));
  }
  return Status::Ok();
}

std::string describe(const AttentionArgs& args) {
  std::string s = "q=" + args.q.to_string() + " k=" + args.k.to_string() + " v=" + args.v.to_string() +
                  " out=" + args.out.to_string();
  if (args.mask) s += " mask=" + args.mask->to_string();
  s += args.causal ? " causal" : "";
  if (args.scale) s += " scale=" + std::to_string(*args.scale);
  return s;
}

std::string describe(const AttentionBackwardArgs& args) {
  AttentionArgs forward{args.q, args.k, args.v, args.out, args.lse, args.mask, args.causal, args.scale};
  return describe(forward) + " grad_out=" + args.grad_out.to_string();
}

}  // namespace anvil::attention_desc
