// Autograd for torch.ops.anvil.{gemm, conv2d, attention_forward}, in C++.
//
// Registered for DispatchKey::Autograd, so a call pays no Python: the Python
// register_autograd formulas this replaces cost about 7 us per call (20 us with
// requires_grad), as much as the whole of torch.mm at 64x64. Forward and backward are the
// ops themselves, reached through the dispatcher (below autograd), so that torch.compile
// traces them like any aten op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace anvil::torch_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <class Signature> c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// An undefined tensor (no gradient) where the mask says the input needs none.
at::Tensor masked(bool wanted, const at::Tensor& grad) { return wanted ? grad : at::Tensor(); }

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const std::optional<at::Tensor>& t) { return t && requires_grad(*t); }

// Whether a call records a graph node: grad mode on and some input requiring a gradient.
// Without one, Function::apply would still allocate its node and context and save the
// inputs (about 2 us, a sixth of a 64x64 gemm through torch.ops); the op is then called
// below autograd directly, as aten's own autograd kernels do.
template <class... Inputs> bool records_graph(const Inputs&... inputs) {
  return at::GradMode::is_enabled() && (requires_grad(inputs) || ...);
}

// ------------------------------------------------------------------ gemm
using GemmSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
using GemmBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                             const at::Tensor&, std::array<bool, 3>);

// The forward op below autograd, looked up once (by the node's forward and by the direct call).
const c10::TypedOperatorHandle<GemmSignature>& gemm_op() {
  static const auto handle = op<GemmSignature>("anvil::gemm");
  return handle;
}

struct GemmFunction : torch::autograd::Function<GemmFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                            const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({a, b});
    ctx->saved_data["has_bias"] = bias.has_value();
    return gemm_op().call(a, b, bias);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    static const auto gemm_backward = op<GemmBackwardSignature>("anvil::gemm_backward");
    const auto [ga, gb, gbias] = gemm_backward.call(grads[0], saved[0], saved[1], mask);
    return {masked(mask[0], ga), masked(mask[1], gb), masked(mask[2], gbias)};
  }
};

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  if (records_graph(a, b, bias)) return GemmFunction::apply(a, b, bias);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return gemm_op().call(a, b, bias);
}

// ------------------------------------------------------------------ conv2d
using Conv2dSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t);
using Conv2dBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
    int64_t, std::array<bool, 3>);

const c10::TypedOperatorHandle<Conv2dSignature>& conv2d_op() {
  static const auto handle = op<Conv2dSignature>("anvil::conv2d");
  return handle;
}

struct Conv2dFunction : torch::autograd::Function<Conv2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    return conv2d_op().call(input, weight, bias, stride, padding, dilation, groups);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    static const auto conv2d_backward = op<Conv2dBackwardSignature>("anvil::conv2d_backward");
    const auto [gi, gw, gb] = conv2d_backward.call(
        grads[0], saved[0], saved[1], ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
        ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt(), mask);
    return {masked(mask[0], gi), masked(mask[1], gw), masked(mask[2], gb), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  if (records_graph(input, weight, bias))
    return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return conv2d_op().call(input, weight, bias, stride, padding, dilation, groups);
}

// ------------------------------------------------------------------ attention
using AttentionSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               const std::optional<at::Tensor>&, bool,
                                                               std::optional<double>);
using AttentionBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, bool, std::optional<double>);

const c10::TypedOperatorHandle<AttentionSignature>& attention_op() {
  static const auto handle = op<AttentionSignature>("anvil::attention_forward");
  return handle;
}

// Outputs (out, lse); lse is not differentiable and the mask takes no gradient.
struct AttentionFunction : torch::autograd::Function<AttentionFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& mask, bool is_causal, std::optional<double> scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, lse] = attention_op().call(q, k, v, mask, is_causal, scale);
    ctx->save_for_backward({q, k, v, out, lse, mask.value_or(at::Tensor())});
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> mask = saved[5].defined() ? std::optional<at::Tensor>(saved[5]) : std::nullopt;
    const c10::IValue scale = ctx->saved_data["scale"];
    static const auto attention_backward = op<AttentionBackwardSignature>("anvil::attention_backward");
    const auto [dq, dk, dv] = attention_backward.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], mask,
                                                      ctx->saved_data["is_causal"].toBool(),
                                                      scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()));
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& mask, bool is_causal,
                                                     std::optional<double> scale) {
  if (!records_graph(q, k, v)) {  // (the mask takes no gradient)
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return attention_op().call(q, k, v, mask, is_causal, scale);
  }
  const variable_list outs = AttentionFunction::apply(q, k, v, mask, is_causal, scale);
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(anvil, Autograd, m) {
  m.impl("gemm", &gemm);
  m.impl("conv2d", &conv2d);
  m.impl("attention_forward", &attention_forward);
}

}  // namespace anvil::torch_ext
