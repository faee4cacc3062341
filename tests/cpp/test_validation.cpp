// Bad input, per op: every class in TESTING.md gives a clear error naming the argument,
// never a crash and never a write to the outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "tests/cpp/test_support.h"

namespace anvil::test {
namespace {

struct BadCase {
  std::string what;     // the bad-input class
  std::string message;  // a substring the error must contain (names the argument)
};

// Storage big enough for every case; outputs poisoned so a write would show.
struct Arena {
  std::vector<float> in1 = std::vector<float>(4096, 1.0f), in2 = std::vector<float>(4096, 1.0f);
  std::vector<float> in3 = std::vector<float>(4096, 1.0f), out = std::vector<float>(4096, NAN);
  std::vector<float> out2 = std::vector<float>(4096, NAN), out3 = std::vector<float>(4096, NAN);
  bool outputs_untouched() const {
    for (const auto* v : {&out, &out2, &out3})
      for (float x : *v)
        if (!std::isnan(x)) return false;
    return true;
  }
};

template <class Args>
void expect_rejected(const std::function<Status(const Args&)>& op, const std::function<Args(Arena&)>& valid,
                     const std::function<void(Args&, Arena&)>& breaker, const BadCase& bad) {
  Arena arena;
  {
    Arena ok_arena;
    ASSERT_TRUE(op(valid(ok_arena)).ok()) << "the valid base case must pass";
  }
  Args args = valid(arena);
  breaker(args, arena);
  const Status s = op(args);
  EXPECT_FALSE(s.ok()) << bad.what;
  EXPECT_NE(s.message().find(bad.message), std::string::npos) << bad.what << ": got '" << s.message() << "'";
  EXPECT_TRUE(arena.outputs_untouched()) << bad.what << ": an output was written on error";
}

constexpr int64_t kHuge = int64_t(1) << 62;

// ------------------------------------------------------------------ gemm
GemmArgs valid_gemm(Arena& a) {
  GemmArgs args{TensorRef::contiguous(a.in1.data(), DType::f32, {4, 3}),
                TensorRef::contiguous(a.in2.data(), DType::f32, {3, 5}),
                TensorRef::contiguous(a.out.data(), DType::f32, {4, 5})};
  args.bias = TensorRef::contiguous(a.in3.data(), DType::f32, {5});
  return args;
}

struct GemmBad {
  BadCase bad;
  std::function<void(GemmArgs&, Arena&)> breaker;
};

class GemmValidation : public testing::TestWithParam<GemmBad> {};
TEST_P(GemmValidation, Rejected) {
  expect_rejected<GemmArgs>([](const GemmArgs& a) { return gemm(a); }, valid_gemm, GetParam().breaker, GetParam().bad);
}
INSTANTIATE_TEST_SUITE_P(
    BadInput, GemmValidation,
    testing::Values(
        GemmBad{{"wrong rank", "a: expected rank 2..3, got rank 1"}, [](GemmArgs& g, Arena&) { g.a.rank = 1; }},
        GemmBad{{"dim mismatch", "b: dimension 0 is 4 but the inner dimension K of a is 3"},
                [](GemmArgs& g, Arena&) { g.b.shape[0] = 4; }},
        GemmBad{{"output dim mismatch", "c: dimension 1 is 6 but N"}, [](GemmArgs& g, Arena&) { g.c.shape[1] = 6; g.c.strides[0] = 6; }},
        GemmBad{{"dtype mismatch", "b: dtype f16 does not match a dtype f32"},
                [](GemmArgs& g, Arena&) { g.b.dtype = DType::f16; }},
        GemmBad{{"bias dtype", "bias: dtype bf16"}, [](GemmArgs& g, Arena&) { g.bias->dtype = DType::bf16; }},
        GemmBad{{"bias size", "bias: dimension 0 is 4 but N"}, [](GemmArgs& g, Arena&) { g.bias->shape[0] = 4; }},
        GemmBad{{"mixed devices", "b: is on device cuda:0 but a is on host:0"},
                [](GemmArgs& g, Arena&) { g.b.device = {DeviceType::cuda, 0}; }},
        GemmBad{{"leading dim too small", "a: leading dimension too small"},
                [](GemmArgs& g, Arena&) { g.a.strides[0] = 2; }},
        GemmBad{{"output overlap", "c: output elements overlap"}, [](GemmArgs& g, Arena&) { g.c.strides[0] = 3; }},
        GemmBad{{"broadcast output", "c: output elements overlap"}, [](GemmArgs& g, Arena&) { g.c.strides[0] = 0; }},
        GemmBad{{"negative stride", "a: stride of dimension 1 is negative"},
                [](GemmArgs& g, Arena&) { g.a.strides[1] = -1; }},
        GemmBad{{"negative dim", "a: dimension 0 is negative"}, [](GemmArgs& g, Arena&) { g.a.shape[0] = -4; }},
        GemmBad{{"null pointer", "b: data is a null pointer"}, [](GemmArgs& g, Arena&) { g.b.data = nullptr; }},
        GemmBad{{"size overflow", "a: byte extent overflows int64"},
                [](GemmArgs& g, Arena&) { g.a.strides[0] = kHuge; }},
        GemmBad{{"element count overflow", "element count overflows int64"},
                [](GemmArgs& g, Arena&) { g.a.shape[0] = kHuge; g.a.shape[1] = 8; g.a.strides = {0, 0}; }},
        GemmBad{{"output aliases input", "c: output memory overlaps input a"},
                [](GemmArgs& g, Arena& a) { g.c.data = a.in1.data(); }},
        GemmBad{{"batch mismatch", "a: batch 3 neither matches the output batch 2"},
                [](GemmArgs& g, Arena&) {
                  g.a = TensorRef::contiguous(g.a.data, DType::f32, {3, 4, 3});
                  g.c = TensorRef::contiguous(g.c.data, DType::f32, {2, 4, 5});
                }},
        GemmBad{{"non-finite alpha", "alpha: must be finite"}, [](GemmArgs& g, Arena&) { g.alpha = INFINITY; }},
        GemmBad{{"boolean dtype", "a: expected a floating dtype"},
                [](GemmArgs& g, Arena&) { g.a.dtype = g.b.dtype = g.c.dtype = g.bias->dtype = DType::boolean; }}),
    [](const testing::TestParamInfo<GemmBad>& info) { return "case" + std::to_string(info.index); });

TEST(GemmValidation, ForcedKernelWithUnsupportedDtype) {
  Arena arena;
  GemmArgs args = valid_gemm(arena);
  for (TensorRef* t : {&args.a, &args.b, &args.c}) t->device = {DeviceType::opencl, 0};
  args.bias->device = {DeviceType::opencl, 0};
  ScopedOverrides force({"", "gemm.f32.reference"});
  const Status s = gemm(args);
  EXPECT_EQ(s.code(), StatusCode::unsupported);
  EXPECT_NE(s.message().find("forced kernel gemm.f32.reference refuses"), std::string::npos) << s.message();
  EXPECT_TRUE(arena.outputs_untouched());
}

TEST(GemmValidation, BackwardRejectsMisshapenAndAliasedGradients) {
  Arena a;
  GemmBackwardArgs args{TensorRef::contiguous(a.in1.data(), DType::f32, {4, 3}),
                        TensorRef::contiguous(a.in2.data(), DType::f32, {3, 5}),
                        TensorRef::contiguous(a.in3.data(), DType::f32, {4, 5}),
                        TensorRef::contiguous(a.out.data(), DType::f32, {4, 3}),
                        TensorRef::contiguous(a.out2.data(), DType::f32, {3, 5}),
                        TensorRef::contiguous(a.out3.data(), DType::f32, {5})};
  GemmBackwardArgs bad = args;
  bad.grad_a->shape[1] = 2;
  Status s = gemm_backward(bad);
  EXPECT_NE(s.message().find("grad_a: shape"), std::string::npos) << s.message();
  bad = args;
  bad.grad_b->data = a.out.data();
  s = gemm_backward(bad);
  EXPECT_NE(s.message().find("grad_b: output memory overlaps input grad_a"), std::string::npos) << s.message();
  bad = args;
  bad.grad_c.shape[1] = 4;
  s = gemm_backward(bad);
  EXPECT_NE(s.message().find("grad_c: dimension 1 is 4"), std::string::npos) << s.message();
  EXPECT_TRUE(a.outputs_untouched());
}

// ------------------------------------------------------------------ conv2d
Conv2dArgs valid_conv(Arena& a) {
  Conv2dArgs args{TensorRef::contiguous(a.in1.data(), DType::f32, {1, 4, 6, 6}),
                  TensorRef::contiguous(a.in2.data(), DType::f32, {2, 2, 3, 3}),
                  TensorRef::contiguous(a.out.data(), DType::f32, {1, 2, 6, 6})};
  args.bias = TensorRef::contiguous(a.in3.data(), DType::f32, {2});
  args.params = {1, 1, 1, 1, 1, 1, 2};
  return args;
}

struct ConvBad {
  BadCase bad;
  std::function<void(Conv2dArgs&, Arena&)> breaker;
};

class Conv2dValidation : public testing::TestWithParam<ConvBad> {};
TEST_P(Conv2dValidation, Rejected) {
  expect_rejected<Conv2dArgs>([](const Conv2dArgs& a) { return conv2d(a); }, valid_conv, GetParam().breaker,
                              GetParam().bad);
}
INSTANTIATE_TEST_SUITE_P(
    BadInput, Conv2dValidation,
    testing::Values(
        ConvBad{{"wrong rank", "input: expected rank 4, got rank 3"}, [](Conv2dArgs& c, Arena&) { c.input.rank = 3; }},
        ConvBad{{"channel mismatch", "weight: dimension 1 is 3 but input channels / groups is 2"},
                [](Conv2dArgs& c, Arena&) { c.weight.shape[1] = 3; }},
        ConvBad{{"output shape", "output: dimension 2 is 5 but the output height P is 6"},
                [](Conv2dArgs& c, Arena&) { c.output.shape[2] = 5; }},
        ConvBad{{"dtype mismatch", "weight: dtype f16 does not match input dtype f32"},
                [](Conv2dArgs& c, Arena&) { c.weight.dtype = DType::f16; }},
        ConvBad{{"mixed devices", "output: is on device xpu:0"},
                [](Conv2dArgs& c, Arena&) { c.output.device = {DeviceType::xpu, 0}; }},
        ConvBad{{"stride 0", "stride: must be positive"}, [](Conv2dArgs& c, Arena&) { c.params.stride_w = 0; }},
        ConvBad{{"dilation 0", "dilation: must be positive"}, [](Conv2dArgs& c, Arena&) { c.params.dilation_h = 0; }},
        ConvBad{{"groups 0", "groups: must be positive"}, [](Conv2dArgs& c, Arena&) { c.params.groups = 0; }},
        ConvBad{{"groups not dividing", "groups: input channels 4 are not divisible by groups 3"},
                [](Conv2dArgs& c, Arena&) { c.params.groups = 3; }},
        ConvBad{{"negative padding", "padding: must be non-negative"}, [](Conv2dArgs& c, Arena&) { c.params.pad_h = -1; }},
        ConvBad{{"kernel larger than input", "input: spatial size 6x6"},
                [](Conv2dArgs& c, Arena&) { c.params.pad_h = c.params.pad_w = 0; c.params.dilation_h = 4; }},
        ConvBad{{"null pointer", "weight: data is a null pointer"}, [](Conv2dArgs& c, Arena&) { c.weight.data = nullptr; }},
        ConvBad{{"size overflow", "input: byte extent overflows int64"},
                [](Conv2dArgs& c, Arena&) { c.input.strides[0] = kHuge; c.input.shape[0] = 4; c.output.shape[0] = 4; }},
        ConvBad{{"huge padding", "values above 2^31 are refused"}, [](Conv2dArgs& c, Arena&) { c.params.pad_w = kHuge; }},
        ConvBad{{"output aliases input", "output: output memory overlaps input weight"},
                [](Conv2dArgs& c, Arena& a) { c.output.data = a.in2.data(); }},
        ConvBad{{"bias size", "bias: dimension 0 is 3"}, [](Conv2dArgs& c, Arena&) { c.bias->shape[0] = 3; }}),
    [](const testing::TestParamInfo<ConvBad>& info) { return "case" + std::to_string(info.index); });

TEST(Conv2dValidation, BackwardRejectsBadGradients) {
  Arena a;
  Conv2dArgs f = valid_conv(a);
  Conv2dBackwardArgs args{TensorRef::contiguous(a.in3.data(), DType::f32, {1, 2, 6, 6}), f.input, f.weight,
                          TensorRef::contiguous(a.out.data(), DType::f32, {1, 4, 6, 6}),
                          TensorRef::contiguous(a.out2.data(), DType::f32, {2, 2, 3, 3}),
                          TensorRef::contiguous(a.out3.data(), DType::f32, {2}), f.params};
  auto bad = args;
  bad.grad_weight->shape[0] = 3;
  EXPECT_NE(conv2d_backward(bad).message().find("grad_weight: dimension 0 is 3"), std::string::npos);
  bad = args;
  bad.grad_output.shape[3] = 5;
  EXPECT_NE(conv2d_backward(bad).message().find("grad_output: dimension 3 is 5"), std::string::npos);
  bad = args;
  bad.grad_input->data = a.in1.data();
  EXPECT_NE(conv2d_backward(bad).message().find("grad_input: output memory overlaps input input"), std::string::npos);
  bad = args;
  bad.params.stride_h = -2;
  EXPECT_NE(conv2d_backward(bad).message().find("stride: must be positive"), std::string::npos);
  EXPECT_TRUE(a.outputs_untouched());
}

// ------------------------------------------------------------------ attention
AttentionArgs valid_attention(Arena& a) {
  AttentionArgs args{TensorRef::contiguous(a.in1.data(), DType::f32, {1, 4, 5, 8}),
                     TensorRef::contiguous(a.in2.data(), DType::f32, {1, 2, 7, 8}),
                     TensorRef::contiguous(a.in3.data(), DType::f32, {1, 2, 7, 8}),
                     TensorRef::contiguous(a.out.data(), DType::f32, {1, 4, 5, 8}),
                     TensorRef::contiguous(a.out2.data(), DType::f32, {1, 4, 5})};
  return args;
}

struct AttentionBad {
  BadCase bad;
  std::function<void(AttentionArgs&, Arena&)> breaker;
};

class AttentionValidation : public testing::TestWithParam<AttentionBad> {};
TEST_P(AttentionValidation, Rejected) {
  expect_rejected<AttentionArgs>([](const AttentionArgs& a) { return attention(a); }, valid_attention,
                                 GetParam().breaker, GetParam().bad);
}
INSTANTIATE_TEST_SUITE_P(
    BadInput, AttentionValidation,
    testing::Values(
        AttentionBad{{"wrong rank", "q: expected rank 4, got rank 3"}, [](AttentionArgs& x, Arena&) { x.q.rank = 3; }},
        AttentionBad{{"head dim mismatch", "k: dimension 3 is 6 but the head dim of q is 8"},
                     [](AttentionArgs& x, Arena&) { x.k.shape[3] = 6; }},
        AttentionBad{{"kv heads not dividing", "k: kv heads 3 must divide the query heads 4"},
                     [](AttentionArgs& x, Arena&) { x.k.shape[1] = 3; x.v.shape[1] = 3; }},
        AttentionBad{{"seq mismatch", "v: dimension 2 is 6 but seq_k of k is 7"},
                     [](AttentionArgs& x, Arena&) { x.v.shape[2] = 6; }},
        AttentionBad{{"dtype mismatch", "v: dtype bf16 does not match q dtype f32"},
                     [](AttentionArgs& x, Arena&) { x.v.dtype = DType::bf16; }},
        AttentionBad{{"lse dtype", "lse: expected dtype f32, got f64"}, [](AttentionArgs& x, Arena&) { x.lse->dtype = DType::f64; }},
        AttentionBad{{"mixed devices", "k: is on device cuda:1"},
                     [](AttentionArgs& x, Arena&) { x.k.device = {DeviceType::cuda, 1}; }},
        AttentionBad{{"output shape", "out: dimension 3 is 7"}, [](AttentionArgs& x, Arena&) { x.out.shape[3] = 7; }},
        AttentionBad{{"mask not broadcastable", "mask: dimension 0 is 4, not broadcastable to 5"},
                     [](AttentionArgs& x, Arena& a) { x.mask = TensorRef::contiguous(a.in3.data(), DType::f32, {4, 7}); }},
        AttentionBad{{"mask dtype", "mask: dtype f16 does not match q (an additive mask)"},
                     [](AttentionArgs& x, Arena& a) { x.mask = TensorRef::contiguous(a.in3.data(), DType::f16, {5, 7}); }},
        AttentionBad{{"mask with causal", "mask: cannot be combined with causal=true"},
                     [](AttentionArgs& x, Arena& a) {
                       x.mask = TensorRef::contiguous(a.in3.data(), DType::f32, {5, 7});
                       x.causal = true;
                     }},
        AttentionBad{{"null pointer", "q: data is a null pointer"}, [](AttentionArgs& x, Arena&) { x.q.data = nullptr; }},
        AttentionBad{{"size overflow", "k: byte extent overflows int64"}, [](AttentionArgs& x, Arena&) { x.k.strides[2] = kHuge; }},
        AttentionBad{{"output aliases input", "out: output memory overlaps input v"},
                     [](AttentionArgs& x, Arena& a) { x.out.data = a.in3.data(); }},
        AttentionBad{{"non-finite scale", "scale: must be finite"}, [](AttentionArgs& x, Arena&) { x.scale = NAN; }},
        AttentionBad{{"boolean q", "q: expected a floating dtype"},
                     [](AttentionArgs& x, Arena&) { x.q.dtype = x.k.dtype = x.v.dtype = x.out.dtype = DType::boolean; }}),
    [](const testing::TestParamInfo<AttentionBad>& info) { return "case" + std::to_string(info.index); });

TEST(AttentionValidation, BackwardRejectsBadGradients) {
  Arena a;
  std::vector<float> lse(64, 0.0f), grad_out(4096, 0.0f);
  AttentionArgs f = valid_attention(a);
  AttentionBackwardArgs args{f.q, f.k, f.v,
                             TensorRef::contiguous(grad_out.data() + 1024, DType::f32, {1, 4, 5, 8}),
                             TensorRef::contiguous(grad_out.data(), DType::f32, {1, 4, 5, 8}),
                             TensorRef::contiguous(lse.data(), DType::f32, {1, 4, 5}), std::nullopt, false,
                             std::nullopt,
                             TensorRef::contiguous(a.out.data(), DType::f32, {1, 4, 5, 8}),
                             TensorRef::contiguous(a.out2.data(), DType::f32, {1, 2, 7, 8}),
                             TensorRef::contiguous(a.out3.data(), DType::f32, {1, 2, 7, 8})};
  auto bad = args;
  bad.grad_k.shape[1] = 4;
  EXPECT_NE(attention_backward(bad).message().find("grad_k: dimension 1 is 4 but k is 2"), std::string::npos)
      << attention_backward(bad).message();
  bad = args;
  bad.grad_v.data = a.out2.data();
  EXPECT_NE(attention_backward(bad).message().find("grad_k: output memory overlaps input grad_v"), std::string::npos);
  bad = args;
  bad.lse.shape[2] = 4;
  EXPECT_NE(attention_backward(bad).message().find("lse: dimension 2 is 4 but seq_q is 5"), std::string::npos);
  EXPECT_TRUE(a.outputs_untouched());
}

}  // namespace
}  // namespace anvil::test
