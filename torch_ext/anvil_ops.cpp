// torch.ops.anvil: schemas and CPU impls. Every impl turns tensors into TensorRefs
// (strides kept, so non-contiguous inputs need no copy) and calls the anvil entry point,
// which validates and dispatches through the registry.
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include "anvil/anvil.h"

namespace anvil::torch_ext {
namespace {

// Status -> Python exception (declared here, defined below).
void check(const Status& status);

// torch's "cuda" tensors live on an AMD GPU when torch is a ROCm build (torch.version.hip:
// DispatchKey CUDA, HIP underneath); CMake defines ANVIL_TORCH_HIP=1 then, and anvil's hip
// backend takes them.
#if defined(ANVIL_TORCH_HIP) && ANVIL_TORCH_HIP
constexpr DeviceType kTorchGpu = DeviceType::hip;
#else
constexpr DeviceType kTorchGpu = DeviceType::cuda;
#endif

// The runtime state torch owns for the call's device: on CUDA (or ROCm), torch's current
// stream of the tensor's device (anvil enqueues there and never synchronises); on CPU,
// torch's thread budget, and one thread inside torch's own parallel regions (never
// oversubscribe).
void use_torch_runtime(const at::Tensor& lead) {
  if (lead.is_cuda()) {
    // Through c10's device-guard interface, so this file needs no CUDA or HIP headers (on
    // ROCm the native handle is a hipStream_t).
    const c10::Stream stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(lead.device());
    check(set_stream(kTorchGpu, stream.native_handle()));
    return;
  }
  set_cpu_threads(at::in_parallel_region() ? 1 : at::get_num_threads());
}

// Status -> Python exception: invalid arguments raise ValueError, the rest RuntimeError.
void check(const Status& status) {
  if (status.ok()) return;
  if (status.code() == StatusCode::invalid_argument) TORCH_CHECK_VALUE(false, "anvil.", status.message());
  TORCH_CHECK(false, "anvil.", status.message());
}

DType dtype_of(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    case at::kDouble: return DType::f64;
    case at::kBool: return DType::boolean;
    default: TORCH_CHECK_VALUE(false, "anvil.", op, ": ", name, ": unsupported dtype ", t.scalar_type(),
                               " (anvil takes float32, float16, bfloat16, float64)");
  }
}

Device anvil_device_of(const at::Tensor& t) {
  const int index = t.device().has_index() ? t.device().index() : 0;
  switch (t.device().type()) {
    case at::kCPU: return {DeviceType::host, 0};
    case at::kCUDA: return {kTorchGpu, index};
    case at::kXPU: return {DeviceType::xpu, index};
    default: TORCH_CHECK_VALUE(false, "anvil: tensors on device ", t.device(), " are not supported");
  }
}

TensorRef ref(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() <= kMaxRank, "anvil.", op, ": ", name, ": rank ", t.dim(), " exceeds ", kMaxRank);
  TensorRef r;
  r.data = t.numel() > 0 ? t.data_ptr() : nullptr;
  r.dtype = dtype_of(t, op, name);
  r.rank = int(t.dim());
  for (int i = 0; i < r.rank; ++i) {
    r.shape[i] = t.size(i);
    r.strides[i] = t.stride(i);
  }
  r.device = anvil_device_of(t);
  return r;
}

void check_rank(const at::Tensor& t, int64_t min_rank, int64_t max_rank, const char* op, const char* name,
                const char* layout) {
  TORCH_CHECK_VALUE(t.dim() >= min_rank && t.dim() <= max_rank, "anvil.", op, ": ", name, ": expected ",
                    layout, ", got a tensor of rank ", t.dim());
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref_t, const char* op, const char* name,
                       const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref_t.device(), "anvil.", op, ": ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref_t.device());
}

// ------------------------------------------------------------------ gemm
struct GemmProblem {
  std::vector<int64_t> batch;  // broadcast batch dims of a and b
  int64_t batch_numel = 1, m = 0, n = 0, k = 0;

  std::vector<int64_t> with_matrix(int64_t rows, int64_t cols) const {
    std::vector<int64_t> shape = batch;
    shape.push_back(rows);
    shape.push_back(cols);
    return shape;
  }
};

int64_t batch_numel_of(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t i = 0; i + 2 < t.dim(); ++i) n *= t.size(i);
  return n;
}

GemmProblem gemm_problem(const at::Tensor& a, const at::Tensor& b, const char* op) {
  check_rank(a, 2, kMaxRank, op, "a", "(..., M, K)");
  check_rank(b, 2, kMaxRank, op, "b", "(..., K, N)");
  check_same_device(b, a, op, "b", "a");
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), "anvil.", op, ": b: dtype ", b.scalar_type(),
                    " does not match a dtype ", a.scalar_type());
  TORCH_CHECK_VALUE(a.size(-1) == b.size(-2), "anvil.", op, ": b: dimension -2 is ", b.size(-2),
                    " but the inner dimension K of a is ", a.size(-1));
  GemmProblem p;
  const auto a_batch = a.sizes().slice(0, a.dim() - 2), b_batch = b.sizes().slice(0, b.dim() - 2);
  try {
    const auto inferred = at::infer_size_dimvector(a_batch, b_batch);
    p.batch.assign(inferred.begin(), inferred.end());
  } catch (const c10::Error&) {
    TORCH_CHECK_VALUE(false, "anvil.", op, ": b: batch dims ", b_batch, " do not broadcast with a's ", a_batch);
  }
  for (int64_t d : p.batch) p.batch_numel *= d;
  p.m = a.size(-2), p.k = a.size(-1), p.n = b.size(-1);
  return p;
}

// An (..., R, C) operand as anvil sees it: a plain (R, C) matrix when its batch has one
// entry (it broadcasts over the whole batch), else (batch, R, C) after expanding to the
// broadcast batch. The expanded batch dims collapse into one stride when they are evenly
// spaced; otherwise (partial broadcasting over several batch dims, rare) the expanded
// operand is materialised.
struct BatchedOperand {
  at::Tensor storage;  // keeps a materialised copy alive
  TensorRef ref;
};

BatchedOperand batched(const at::Tensor& t, const GemmProblem& p, const char* op, const char* name) {
  const int64_t rows = t.size(-2), cols = t.size(-1);
  BatchedOperand out{t, ref(t, op, name)};
  if (batch_numel_of(t) == 1) {
    out.ref.rank = 2;
    out.ref.shape = {rows, cols};
    out.ref.strides = {t.stride(-2), t.stride(-1)};
    return out;
  }
  at::Tensor e = t.expand(p.with_matrix(rows, cols));
  // Evenly spaced: from the innermost batch dim out, each stride is the next-inner
  // stride times that dim's size.
  bool evenly_spaced = true;
  int64_t expected = -1, batch_stride = 0;
  for (int64_t i = int64_t(p.batch.size()) - 1; i >= 0 && evenly_spaced; --i) {
    if (e.size(i) == 1) continue;
    if (expected < 0) batch_stride = e.stride(i);
    else evenly_spaced = e.stride(i) == expected;
    expected = e.stride(i) * e.size(i);
  }
  if (!evenly_spaced) {
    out.storage = e.contiguous();
    e = out.storage;
    batch_stride = rows * cols;
  }
  out.ref = ref(e, op, name);
  out.ref.rank = 3;
  out.ref.shape = {p.batch_numel, rows, cols};
  out.ref.strides = {batch_stride, e.stride(-2), e.stride(-1)};
  return out;
}

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  const GemmProblem p = gemm_problem(a, b, "gemm");
  if (bias) {
    check_same_device(*bias, a, "gemm", "bias", "a");
    check_rank(*bias, 1, 1, "gemm", "bias", "(N)");
  }
  at::Tensor out = at::empty(p.with_matrix(p.m, p.n), a.options());
  const BatchedOperand ab = batched(a, p, "gemm", "a");
  const BatchedOperand bb = batched(b, p, "gemm", "b");
  GemmArgs args;
  args.a = ab.ref;
  args.b = bb.ref;
  args.c = ref(out, "gemm", "out");  // contiguous: (batch, M, N) without making a view tensor
  args.c.rank = 3;
  args.c.shape = {p.batch_numel, p.m, p.n};
  args.c.strides = {p.m * p.n, p.n, 1};
  if (bias) args.bias = ref(*bias, "gemm", "bias");
  use_torch_runtime(a);
  check(anvil::gemm(args));
  return out;
}

// The gradient of an operand is computed in the operand's anvil view: (R, C) when it
// broadcasts over the whole batch (anvil sums over the batch), else (batch, R, C),
// summed down to the operand's shape when it broadcast over part of the batch.
at::Tensor operand_gradient_buffer(const TensorRef& view, const at::Tensor& like) {
  if (view.rank == 2) return at::empty({view.shape[0], view.shape[1]}, like.options());
  return at::empty({view.shape[0], view.shape[1], view.shape[2]}, like.options());
}

at::Tensor to_operand_shape(const at::Tensor& grad, const at::Tensor& operand, const GemmProblem& p) {
  if (grad.dim() == 2 || batch_numel_of(operand) == p.batch_numel) return grad.view(operand.sizes());
  return at::sum_to(grad.view(p.with_matrix(operand.size(-2), operand.size(-1))), operand.sizes()).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gemm_backward(const at::Tensor& grad, const at::Tensor& a,
                                                             const at::Tensor& b, std::array<bool, 3> mask) {
  const GemmProblem p = gemm_problem(a, b, "gemm_backward");
  check_same_device(grad, a, "gemm_backward", "grad", "a");
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(p.with_matrix(p.m, p.n)), "anvil.gemm_backward: grad: shape ",
                    grad.sizes(), " must be the output shape ", at::IntArrayRef(p.with_matrix(p.m, p.n)));
  const BatchedOperand ab = batched(a, p, "gemm_backward", "a");
  const BatchedOperand bb = batched(b, p, "gemm_backward", "b");
  const at::Tensor grad_3d = grad.reshape({p.batch_numel, p.m, p.n});  // a view when the batch collapses
  GemmBackwardArgs args;
  args.a = ab.ref;
  args.b = bb.ref;
  args.grad_c = ref(grad_3d, "gemm_backward", "grad");
  // Unrequested gradients are distinct empty tensors (outputs must not alias each other).
  at::Tensor ga = at::empty({0}, a.options()), gb = at::empty({0}, a.options()), gbias = at::empty({0}, a.options());
  if (mask[0]) {
    ga = operand_gradient_buffer(args.a, a);
    args.grad_a = ref(ga, "gemm_backward", "grad_a");
  }
  if (mask[1]) {
    gb = operand_gradient_buffer(args.b, b);
    args.grad_b = ref(gb, "gemm_backward", "grad_b");
  }
  if (mask[2]) {
    gbias = at::empty({p.n}, a.options());
    args.grad_bias = ref(gbias, "gemm_backward", "grad_bias");
  }
  use_torch_runtime(a);
  check(anvil::gemm_backward(args));
  if (mask[0]) ga = to_operand_shape(ga, a, p);
  if (mask[1]) gb = to_operand_shape(gb, b, p);
  return {ga, gb, gbias};
}

// ------------------------------------------------------------------ conv2d
Conv2dParams conv_params(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         int64_t groups, const char* op) {
  auto pair = [&](at::IntArrayRef v, const char* name) {
    TORCH_CHECK_VALUE(v.size() == 1 || v.size() == 2, "anvil.", op, ": ", name,
                      ": expected an int or a pair, got ", v.size(), " values");
    return std::pair<int64_t, int64_t>{v[0], v.size() == 2 ? v[1] : v[0]};
  };
  Conv2dParams p;
  std::tie(p.stride_h, p.stride_w) = pair(stride, "stride");
  std::tie(p.pad_h, p.pad_w) = pair(padding, "padding");
  std::tie(p.dilation_h, p.dilation_w) = pair(dilation, "dilation");
  p.groups = groups;
  return p;
}

void check_conv_inputs(const at::Tensor& input, const at::Tensor& weight, const char* op) {
  check_rank(input, 4, 4, op, "input", "a 4-D (N, C, H, W) tensor");
  check_rank(weight, 4, 4, op, "weight", "a 4-D (K, C/groups, R, S) tensor");
  check_same_device(weight, input, op, "weight", "input");
}

std::vector<int64_t> conv_output_shape(const at::Tensor& input, const at::Tensor& weight, const Conv2dParams& p) {
  return {input.size(0), weight.size(0),
          conv_output_size(input.size(2), weight.size(2), p.stride_h, p.pad_h, p.dilation_h),
          conv_output_size(input.size(3), weight.size(3), p.stride_w, p.pad_w, p.dilation_w)};
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_conv_inputs(input, weight, "conv2d");
  if (bias) check_same_device(*bias, input, "conv2d", "bias", "input");
  const Conv2dParams params = conv_params(stride, padding, dilation, groups, "conv2d");
  Conv2dArgs args;
  args.input = ref(input, "conv2d", "input");
  args.weight = ref(weight, "conv2d", "weight");
  if (bias) args.bias = ref(*bias, "conv2d", "bias");
  args.params = params;
  // Validate before allocating: the output shape is only meaningful for a valid call.
  auto shape = conv_output_shape(input, weight, params);
  for (int64_t& d : shape) d = std::max<int64_t>(d, 0);
  at::Tensor out = at::empty(shape, input.options().memory_format(input.suggest_memory_format()));
  args.output = ref(out, "conv2d", "output");
  use_torch_runtime(input);
  check(anvil::conv2d(args));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> mask) {
  check_conv_inputs(input, weight, "conv2d_backward");
  check_same_device(grad_output, input, "conv2d_backward", "grad_output", "input");
  Conv2dBackwardArgs args;
  args.grad_output = ref(grad_output, "conv2d_backward", "grad_output");
  args.input = ref(input, "conv2d_backward", "input");
  args.weight = ref(weight, "conv2d_backward", "weight");
  args.params = conv_params(stride, padding, dilation, groups, "conv2d_backward");
  at::Tensor gi = at::empty({0}, input.options()), gw = at::empty({0}, input.options()),
             gbias = at::empty({0}, input.options());
  if (mask[0]) {
    gi = at::empty(input.sizes(), input.options().memory_format(input.suggest_memory_format()));
    args.grad_input = ref(gi, "conv2d_backward", "grad_input");
  }
  if (mask[1]) {
    gw = at::empty(weight.sizes(), weight.options());
    args.grad_weight = ref(gw, "conv2d_backward", "grad_weight");
  }
  if (mask[2]) {
    gbias = at::empty({weight.size(0)}, weight.options());
    args.grad_bias = ref(gbias, "conv2d_backward", "grad_bias");
  }
  use_torch_runtime(input);
  check(anvil::conv2d_backward(args));
  return {gi, gw, gbias};
}

// ------------------------------------------------------------------ attention
void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, const char* op) {
  check_rank(q, 4, 4, op, "query", "a 4-D (B, H, L, E) tensor");
  check_rank(k, 4, 4, op, "key", "a 4-D (B, Hkv, S, E) tensor");
  check_rank(v, 4, 4, op, "value", "a 4-D (B, Hkv, S, Ev) tensor");
  check_same_device(k, q, op, "key", "query");
  check_same_device(v, q, op, "value", "query");
  if (mask) {
    check_same_device(*mask, q, op, "attn_mask", "query");
    check_rank(*mask, 1, 4, op, "attn_mask", "a mask broadcastable to (B, H, L, S)");
  }
}

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v, const std::optional<at::Tensor>& mask,
                                                     bool is_causal, std::optional<double> scale) {
  check_attention_inputs(q, k, v, mask, "attention");
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  AttentionArgs args;
  args.q = ref(q, "attention", "query");
  args.k = ref(k, "attention", "key");
  args.v = ref(v, "attention", "value");
  if (mask) args.mask = ref(*mask, "attention", "attn_mask");
  args.out = ref(out, "attention", "out");
  args.lse = ref(lse, "attention", "lse");
  args.causal = is_causal;
  args.scale = scale;
  use_torch_runtime(q);
  check(anvil::attention(args));
  return {out, lse};
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, bool is_causal, std::optional<double> scale) {
  static const auto forward = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("anvil::attention_forward", "")
                                  .typed<decltype(attention_forward)>();
  return std::get<0>(forward.call(q, k, v, mask, is_causal, scale));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& mask, bool is_causal,
    std::optional<double> scale) {
  check_attention_inputs(q, k, v, mask, "attention_backward");
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  AttentionBackwardArgs args;
  args.q = ref(q, "attention_backward", "query");
  args.k = ref(k, "attention_backward", "key");
  args.v = ref(v, "attention_backward", "value");
  args.out = ref(out, "attention_backward", "out");
  args.grad_out = ref(grad_out, "attention_backward", "grad_out");
  args.lse = ref(lse, "attention_backward", "lse");
  if (mask) args.mask = ref(*mask, "attention_backward", "attn_mask");
  args.causal = is_causal;
  args.scale = scale;
  args.grad_q = ref(dq, "attention_backward", "grad_q");
  args.grad_k = ref(dk, "attention_backward", "grad_k");
  args.grad_v = ref(dv, "attention_backward", "grad_v");
  use_torch_runtime(q);
  check(anvil::attention_backward(args));
  return {dq, dk, dv};
}

// ------------------------------------------------------------------ registry helpers
std::vector<std::string> list_kernels() {
  std::vector<std::string> names;
  for (const KernelInfo& k : anvil::kernels()) names.push_back(k.name);
  return names;
}

std::vector<std::string> list_backends() {
  std::vector<std::string> out;
  for (const BackendInfo& b : anvil::backends())
    out.push_back(b.name + (b.available ? ": available" + (b.detail.empty() ? "" : " (" + b.detail + ")")
                                        : ": unavailable: " + b.detail));
  return out;
}

void set_overrides(std::string backend, std::string kernels) { check(anvil::set_overrides({backend, kernels})); }

std::vector<std::string> get_overrides() {
  const Overrides o = anvil::current_overrides();
  return {o.backend, o.kernels};
}

std::string explain_gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  const GemmProblem p = gemm_problem(a, b, "explain");
  at::Tensor out = at::empty({p.batch_numel, p.m, p.n}, a.options());
  GemmArgs args;
  const BatchedOperand ab = batched(a, p, "explain", "a");
  const BatchedOperand bb = batched(b, p, "explain", "b");
  args.a = ab.ref;
  args.b = bb.ref;
  args.c = ref(out, "explain", "c");
  if (bias) args.bias = ref(*bias, "explain", "bias");
  return anvil::explain(args);
}

std::string explain_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_conv_inputs(input, weight, "explain");
  Conv2dArgs args;
  args.params = conv_params(stride, padding, dilation, groups, "explain");
  auto shape = conv_output_shape(input, weight, args.params);
  for (int64_t& d : shape) d = std::max<int64_t>(d, 0);
  at::Tensor out = at::empty(shape, input.options().memory_format(input.suggest_memory_format()));
  args.input = ref(input, "explain", "input");
  args.weight = ref(weight, "explain", "weight");
  if (bias) args.bias = ref(*bias, "explain", "bias");
  args.output = ref(out, "explain", "output");
  return anvil::explain(args);
}

std::string explain_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& mask, bool is_causal, std::optional<double> scale) {
  check_attention_inputs(q, k, v, mask, "explain");
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  AttentionArgs args;
  args.q = ref(q, "explain", "query");
  args.k = ref(k, "explain", "key");
  args.v = ref(v, "explain", "value");
  if (mask) args.mask = ref(*mask, "explain", "attn_mask");
  args.out = ref(out, "explain", "out");
  args.causal = is_causal;
  args.scale = scale;
  return anvil::explain(args);
}

}  // namespace

TORCH_LIBRARY(anvil, m) {
  m.def("gemm(Tensor a, Tensor b, Tensor? bias=None) -> Tensor");
  m.def("gemm_backward(Tensor grad, Tensor a, Tensor b, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, "
        "int[2] dilation=1, int groups=1) -> Tensor");
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("attention_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
        "bool is_causal=False, float? scale=None) -> (Tensor, Tensor)");
  m.def("attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, bool is_causal=False, "
        "float? scale=None) -> Tensor");
  m.def("attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, Tensor lse, "
        "Tensor? attn_mask, bool is_causal, float? scale) -> (Tensor, Tensor, Tensor)");
  // Registry helpers behind anvil.kernels(), anvil.backends(), anvil.force(), anvil.explain().
  m.def("_kernels", &list_kernels);
  m.def("_backends", &list_backends);
  m.def("_set_overrides", &set_overrides);
  m.def("_get_overrides", &get_overrides);
  m.def("_explain_gemm(Tensor a, Tensor b, Tensor? bias=None) -> str");
  m.def("_explain_conv2d(Tensor input, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, "
        "int[2] dilation=1, int groups=1) -> str");
  m.def("_explain_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
        "bool is_causal=False, float? scale=None) -> str");
}

// One set of impls for every device: TensorRefs carry the device, the registry picks the
// backend that runs on it, and outputs are allocated by torch on the inputs' device.
void add_device_impls(torch::Library& m) {
  m.impl("gemm", &gemm);
  m.impl("gemm_backward", &gemm_backward);
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_backward", &conv2d_backward);
  m.impl("attention_forward", &attention_forward);
  m.impl("attention_backward", &attention_backward);
  m.impl("_explain_gemm", &explain_gemm);
  m.impl("_explain_conv2d", &explain_conv2d);
  m.impl("_explain_attention", &explain_attention);
}

TORCH_LIBRARY_IMPL(anvil, CPU, m) { add_device_impls(m); }
TORCH_LIBRARY_IMPL(anvil, CUDA, m) { add_device_impls(m); }

TORCH_LIBRARY_IMPL(anvil, CompositeImplicitAutograd, m) { m.impl("attention", &attention); }

}  // namespace anvil::torch_ext
