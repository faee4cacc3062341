#include "kernels/conv2d/conv2d_desc.h"

#include "kernels/common/checks.h"

namespace anvil {

int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t span = dilation * (kernel - 1) + 1;
  const int64_t padded = in + 2 * pad;
  if (stride <= 0 || padded < span) return -1;
  return (padded - span) / stride + 1;
}

TensorRef image_tensor(const void* data, DType dtype, Layout layout, int64_t n, int64_t c,
                       int64_t h, int64_t w, Device device) {
  if (layout == Layout::nhwc)
    return TensorRef::strided(data, dtype, {n, c, h, w}, {h * w * c, 1, w * c, c}, device);
  return TensorRef::contiguous(data, dtype, {n, c, h, w}, device);
}

Layout layout_of(const TensorRef& t) {
  if (t.rank != 4) return Layout::strided;
  const int64_t n = t.shape[0], c = t.shape[1], h = t.shape[2], w = t.shape[3];
  (void)n;
  // A dim of size 1 may carry any stride without changing the layout.
  auto stride_ok = [&](int dim, int64_t expected) { return t.shape[dim] <= 1 || t.strides[dim] == expected; };
  if (stride_ok(3, 1) && stride_ok(2, w) && stride_ok(1, h * w) && stride_ok(0, c * h * w))
    return Layout::nchw;
  if (stride_ok(1, 1) && stride_ok(3, c) && stride_ok(2, w * c) && stride_ok(0, h * w * c))
    return Layout::nhwc;
  return Layout::strided;
}

namespace conv2d_desc {
namespace {

Status check_output_shape(const TensorRef& t, const char* name, const Shape& s) {
  const int64_t expected[4] = {s.n, s.k, s.p, s.q};
  const char* what[4] = {"the batch N of input", "the output channels K of weight",
                         "the output height P", "the output width Q"};
  for (int i = 0; i < 4; ++i) ANVIL_RETURN_IF_ERROR(checks::dim_equals(t, name, i, expected[i], what[i]));
  return Status::Ok();
}

Status check_same_shape(const TensorRef& t, const char* name, const TensorRef& like, const char* like_name) {
  for (int i = 0; i < 4; ++i) ANVIL_RETURN_IF_ERROR(checks::dim_equals(t, name, i, like.shape[i], like_name));
  return Status::Ok();
}

Status check_bias(const TensorRef& bias, const char* name, const TensorRef& input, int64_t k) {
  ANVIL_RETURN_IF_ERROR(checks::tensor(bias, name, 1, 1));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(bias, name, input, "input"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(bias, name, input, "input"));
  return checks::dim_equals(bias, name, 0, k, "the output channels K of weight");
}

// input, weight and params; computes the shape (output extents must be >= 1).
Status check_problem(const TensorRef& input, const TensorRef& weight, const Conv2dParams& params,
                     Shape* shape) {
  ANVIL_RETURN_IF_ERROR(validate_params(params));
  ANVIL_RETURN_IF_ERROR(checks::tensor(input, "input", 4, 4));
  ANVIL_RETURN_IF_ERROR(checks::tensor(weight, "weight", 4, 4));
  ANVIL_RETURN_IF_ERROR(checks::floating_dtype(input, "input"));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(weight, "weight", input, "input"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(weight, "weight", input, "input"));
  const int64_t g = params.groups;
  if (input.shape[1] % g != 0)
    return invalid_argument("groups: input channels " + std::to_string(input.shape[1]) +
                            " are not divisible by groups " + std::to_string(g));
  if (weight.shape[0] % g != 0)
    return invalid_argument("groups: weight output channels " + std::to_string(weight.shape[0]) +
                            " are not divisible by groups " + std::to_string(g));
  ANVIL_RETURN_IF_ERROR(checks::dim_equals(weight, "weight", 1, input.shape[1] / g,
                                           "input channels / groups"));
  *shape = shape_of(input, weight, params);
  if (shape->p < 1 || shape->q < 1)
    return invalid_argument("input: spatial size " + std::to_string(shape->h) + "x" +
                            std::to_string(shape->w) + " (padded by " + std::to_string(params.pad_h) +
                            "," + std::to_string(params.pad_w) + ") is smaller than the dilated kernel " +
                            std::to_string(shape->r) + "x" + std::to_string(shape->s));
  return Status::Ok();
}

}  // namespace

Shape shape_of(const TensorRef& input, const TensorRef& weight, const Conv2dParams& params) {
  Shape s{};
  s.n = input.shape[0], s.c = input.shape[1], s.h = input.shape[2], s.w = input.shape[3];
  s.k = weight.shape[0], s.r = weight.shape[2], s.s = weight.shape[3];
  s.groups = params.groups;
  s.p = conv_output_size(s.h, s.r, params.stride_h, params.pad_h, params.dilation_h);
  s.q = conv_output_size(s.w, s.s, params.stride_w, params.pad_w, params.dilation_w);
  return s;
}

Status validate_params(const Conv2dParams& p) {
  if (p.stride_h <= 0 || p.stride_w <= 0)
    return invalid_argument("stride: must be positive, got (" + std::to_string(p.stride_h) + ", " +
                            std::to_string(p.stride_w) + ")");
  if (p.pad_h < 0 || p.pad_w < 0)
    return invalid_argument("padding: must be non-negative, got (" + std::to_string(p.pad_h) + ", " +
                            std::to_string(p.pad_w) + ")");
  if (p.dilation_h <= 0 || p.dilation_w <= 0)
    return invalid_argument("dilation: must be positive, got (" + std::to_string(p.dilation_h) + ", " +
                            std::to_string(p.dilation_w) + ")");
  if (p.groups <= 0) return invalid_argument("groups: must be positive, got " + std::to_string(p.groups));
  constexpr int64_t kLimit = int64_t(1) << 31;  // keeps (in + 2*pad) and dilation*(R-1) in int64
  if (p.stride_h > kLimit || p.stride_w > kLimit || p.pad_h > kLimit || p.pad_w > kLimit ||
      p.dilation_h > kLimit || p.dilation_w > kLimit)
    return invalid_argument("stride/padding/dilation: values above 2^31 are refused");
  return Status::Ok();
}

Status validate(const Conv2dArgs& args) {
  Shape s;
  ANVIL_RETURN_IF_ERROR(check_problem(args.input, args.weight, args.params, &s));
  ANVIL_RETURN_IF_ERROR(checks::output_tensor(args.output, "output", 4, 4));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(args.output, "output", args.input, "input"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(args.output, "output", args.input, "input"));
  ANVIL_RETURN_IF_ERROR(check_output_shape(args.output, "output", s));
  ANVIL_RETURN_IF_ERROR(checks::no_alias(args.output, "output", args.input, "input"));
  ANVIL_RETURN_IF_ERROR(checks::no_alias(args.output, "output", args.weight, "weight"));
  if (args.bias) {
    ANVIL_RETURN_IF_ERROR(check_bias(*args.bias, "bias", args.input, s.k));
    ANVIL_RETURN_IF_ERROR(checks::no_alias(args.output, "output", *args.bias, "bias"));
  }
  return Status::Ok();
}

Status validate(const Conv2dBackwardArgs& args) {
  Shape s;
  ANVIL_RETURN_IF_ERROR(check_problem(args.input, args.weight, args.params, &s));
  const TensorRef& g = args.grad_output;
  ANVIL_RETURN_IF_ERROR(checks::tensor(g, "grad_output", 4, 4));
  ANVIL_RETURN_IF_ERROR(checks::same_dtype(g, "grad_output", args.input, "input"));
  ANVIL_RETURN_IF_ERROR(checks::same_device(g, "grad_output", args.input, "input"));
  ANVIL_RETURN_IF_ERROR(check_output_shape(g, "grad_output", s));
  struct Out {
    const std::optional<TensorRef>& t;
    const char* name;
  };
  const Out outs[] = {{args.grad_input, "grad_input"}, {args.grad_weight, "grad_weight"},
                      {args.grad_bias, "grad_bias"}};
  for (const Out& o : outs) {
    if (!o.t) continue;
    ANVIL_RETURN_IF_ERROR(checks::output_tensor(*o.t, o.name, 1, 4));
    ANVIL_RETURN_IF_ERROR(checks::same_dtype(*o.t, o.name, args.input, "input"));
    ANVIL_RETURN_IF_ERROR(checks::same_device(*o.t, o.name, args.input, "input"));
    ANVIL_RETURN_IF_ERROR(checks::no_alias(*o.t, o.name, args.input, "input"));
    ANVIL_RETURN_IF_ERROR(checks::no_alias(*o.t, o.name, args.weight, "weight"));
    ANVIL_RETURN_IF_ERROR(checks::no_alias(*o.t, o.name, g, "grad_output"));
    for (const Out& other : outs)
      if (&other != &o && other.t) ANVIL_RETURN_IF_ERROR(checks::no_alias(*o.t, o.name, *other.t, other.name));
  }
  if (args.grad_input) {
    ANVIL_RETURN_IF_ERROR(checks::tensor(*args.grad_input, "grad_input", 4, 4));
    ANVIL_RETURN_IF_ERROR(check_same_shape(*args.grad_input, "grad_input", args.input, "input"));
  }
  if (args.grad_weight) {
    ANVIL_RETURN_IF_ERROR(checks::tensor(*args.grad_weight, "grad_weight", 4, 4));
    ANVIL_RETURN_IF_ERROR(check_same_shape(*args.grad_weight, "grad_weight", args.weight, "weight"));
  }
  if (args.grad_bias) ANVIL_RETURN_IF_ERROR(check_bias(*args.grad_bias, "grad_bias", args.input, s.k));
  return Status::Ok();
}

std::string describe(const Conv2dArgs& args) {
  const Conv2dParams& p = args.params;
  char buf[160];
  std::snprintf(buf, sizeof buf, " stride=(%lld,%lld) pad=(%lld,%lld) dilation=(%lld,%lld) groups=%lld",
                (long long)p.stride_h, (long long)p.stride_w, (long long)p.pad_h, (long long)p.pad_w,
                (long long)p.dilation_h, (long long)p.dilation_w, (long long)p.groups);
  std::string s = "input=" + args.input.to_string() + " weight=" + args.weight.to_string() +
                  " output=" + args.output.to_string();
  if (args.bias) s += " bias=" + args.bias->to_string();
  return s + buf;
}

std::string describe(const Conv2dBackwardArgs& args) {
  Conv2dArgs forward{args.input, args.weight, args.grad_output, std::nullopt, args.params};
  std::string s = describe(forward);
  s += args.grad_input ? " grad_input=" + args.grad_input->to_string() : " grad_input=none";
  s += args.grad_weight ? " grad_weight=" + args.grad_weight->to_string() : " grad_weight=none";
  s += args.grad_bias ? " grad_bias=" + args.grad_bias->to_string() : " grad_bias=none";
  return s;
}

}  // namespace conv2d_desc
}  // namespace anvil
