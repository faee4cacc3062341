// Every registered kernel of every op, on every shape of the shared test sweep
// (bench/shapes/*.csv, tag "test"), against the f64 reference:
//   exact tier    small-integer inputs give bit-exact results (GEMM, conv2d);
//   relative tier random normal inputs: max error <= 2x (3x for gradients) the error
//                 of the naive f32-accumulating implementation + 1e-5;
// with NaN-poisoned outputs, guard regions, untouched padding, run-to-run determinism,
// and the >30%-zeros rule. Layout variants (transposes, padded leading dims, base
// offsets, NHWC, broadcast batch, masks) rotate across the shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <thread>
#include <utility>

#include "tests/cpp/test_support.h"

namespace anvil::test {
namespace {

constexpr double kFloor = 1e-5;

std::string printable(const testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

// Cases a sweep ran: a kernel may declare some cases outside its domain (can_implement
// refuses them, another kernel takes them), but it must run at least one case of its sweep.
struct SweepCount {
  std::string kernel;
  int ran = 0;
  ~SweepCount() { EXPECT_GT(ran, 0) << kernel << " accepted none of its sweep's cases"; }
};

// Kernels of a backend that cannot run on this machine (no device) skip their sweeps.
#define SKIP_UNLESS_AVAILABLE(kernel)                                    \
  if (const Status why = kernel_available(kernel); !why.ok()) {          \
    GTEST_SKIP() << (kernel) << ": " << why.message();                   \
  }

void expect_result(SweepCount& count, const HarnessResult& r, Values values, double factor, bool zeros_expected,
                   const std::string& rep) {
  if (r.skipped) return;
  ++count.ran;
  ASSERT_TRUE(r.failure.empty()) << r.failure;
  EXPECT_TRUE(r.guards_ok) << rep;
  EXPECT_TRUE(r.deterministic) << "two runs differ bitwise\n" << rep;
  if (!zeros_expected) EXPECT_FALSE(r.untrusted) << "more than 30% zeros: untrusted result\n" << rep;
  if (values == Values::small_ints)
    EXPECT_TRUE(r.bit_exact) << "exact tier: not bit-exact (max error " << r.kernel_error << ")\n" << rep;
  else
    EXPECT_LE(r.kernel_error, factor * r.naive_error + kFloor)
        << "relative tier: error " << r.kernel_error << " vs naive " << r.naive_error << "\n" << rep;
}

// Logical (rows, cols) matrix, stored transposed or not, with padded leading dimension.
TensorSpec matrix(const std::string& name, int64_t batch, int64_t rows, int64_t cols, bool transposed, int64_t pad,
                  int64_t offset, TensorSpec::Role role = TensorSpec::input) {
  std::vector<int64_t> stored = transposed ? std::vector<int64_t>{cols, rows} : std::vector<int64_t>{rows, cols};
  if (batch != 1) stored.insert(stored.begin(), batch);
  TensorSpec s = padded(name, stored, pad, offset, role);
  if (transposed) {
    const size_t r = s.shape.size() - 2;
    std::swap(s.shape[r], s.shape[r + 1]);
    std::swap(s.strides[r], s.strides[r + 1]);
  }
  return s;
}

// ------------------------------------------------------------------ GEMM
class GemmKernel : public testing::TestWithParam<std::string> {};

void run_gemm_sweep(const std::string& kernel, Values values) {
  SKIP_UNLESS_AVAILABLE(kernel);
  SweepCount count{kernel};
  const DType dtype = dtype_of_kernel(kernel);
  const auto shapes = load_shapes("gemm", "test");
  ASSERT_GE(shapes.size(), 24u);
  int index = 0;
  for (const ShapeRow& row : shapes) {
    const int i = index++;
    const int64_t batch = as_int(row, "batch"), m = as_int(row, "m"), n = as_int(row, "n"), k = as_int(row, "k");
    const bool ta = i % 4 & 1, tb = i % 4 & 2, bias = i % 2, broadcast_b = batch > 1 && i % 3 == 0;
    const int64_t pad = i % 3, offset = (i % 2) * 5;
    const double beta = std::array<double, 3>{0.0, 1.0, values == Values::small_ints ? 2.0 : 3.14}[size_t(i % 3)];
    const double alpha = values == Values::small_ints ? 1.0 : 1.5;
    std::vector<TensorSpec> specs = {
        matrix("a", batch, m, k, ta, pad, offset), matrix("b", broadcast_b ? 1 : batch, k, n, tb, pad, 0),
        matrix("c", batch, m, n, false, pad, offset, beta != 0 ? TensorSpec::in_out : TensorSpec::output)};
    if (bias) specs.push_back(packed("bias", {n}));
    const auto build = [&](const std::vector<TensorRef>& t) {
      GemmArgs args{t[0], t[1], t[2], std::nullopt, alpha, beta};
      if (bias) args.bias = t[3];
      return args;
    };
    const uint64_t seed = 1000 + uint64_t(i);
    const auto r = run_case<GemmArgs>(kernel, dtype, specs, values, seed, build);
    const bool zeros_expected = m == 0 || n == 0 || k == 0 || batch == 0;
    expect_result(count, r, values, 2.0, zeros_expected,
                  repro(kernel, dtype, specs, seed, "alpha=" + std::to_string(alpha) + " beta=" + std::to_string(beta)));
  }
}

// The backend part of a kernel name ("gemm.f32.<backend>.<name>"), and whether that
// backend runs on host memory (the tests below build host buffers).
std::string backend_of_kernel(const std::string& kernel) {
  const size_t first = kernel.find('.'), second = kernel.find('.', first + 1), third = kernel.find('.', second + 1);
  return kernel.substr(second + 1, third - second - 1);
}
bool runs_on_host(const std::string& kernel) {
  const std::string backend = backend_of_kernel(kernel);
  for (const BackendInfo& b : backends())
    if (b.name == backend)
      return std::find(b.device_types.begin(), b.device_types.end(), DeviceType::host) != b.device_types.end();
  return false;
}

// Repeated calls may reuse a validated selection (dispatch) or a bound primitive (oneapi);
// each call must still read and write its own buffers. With n = k = 1 the backward's
// grad_a product (grad_c @ b^T) has the forward's descriptors, so a backend that caches
// per descriptor shares one plan between the two and must rebind it.
TEST_P(GemmKernel, RepeatedCallsFollowTheirBuffers) {
  const std::string kernel = GetParam();
  SKIP_UNLESS_AVAILABLE(kernel);
  if (dtype_of_kernel(kernel) != DType::f32) GTEST_SKIP() << "f32 kernels cover the call path";
  const std::string backend = backend_of_kernel(kernel);
  if (!runs_on_host(kernel)) GTEST_SKIP() << backend << " does not run on host memory";
  for (const auto& [m, n, k] : {std::array<int64_t, 3>{5, 1, 1}, std::array<int64_t, 3>{16, 16, 16}}) {
    SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k));
    struct Set {
      std::vector<float> a, b, c;
    };
    const auto make_set = [&](float base) {
      Set s{std::vector<float>(size_t(m * k)), std::vector<float>(size_t(k * n)), std::vector<float>(size_t(m * n), NAN)};
      for (size_t i = 0; i < s.a.size(); ++i) s.a[i] = base + float(i % 5);
      for (size_t i = 0; i < s.b.size(); ++i) s.b[i] = float(i % 3) - 1;
      return s;
    };
    Set one = make_set(1), two = make_set(-4);
    const auto args = [&](Set& s) {
      return GemmArgs{TensorRef::contiguous(s.a.data(), DType::f32, {m, k}),
                      TensorRef::contiguous(s.b.data(), DType::f32, {k, n}),
                      TensorRef::contiguous(s.c.data(), DType::f32, {m, n})};
    };
    const auto expect_product = [&](const Set& s, const char* step) {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double want = 0;
          for (int64_t p = 0; p < k; ++p) want += double(s.a[size_t(i * k + p)]) * double(s.b[size_t(p * n + j)]);
          ASSERT_EQ(s.c[size_t(i * n + j)], float(want)) << step << " at (" << i << ", " << j << ")";
        }
    };
    ScopedOverrides force({"", kernel});
    ScopedOverrides force_backend_too({backend, kernel});  // the backward runs on the same backend
    ASSERT_TRUE(gemm(args(one)).ok());
    expect_product(one, "first call");
    ASSERT_TRUE(gemm(args(two)).ok());
    expect_product(two, "other buffers");
    ASSERT_TRUE(gemm(args(one)).ok());
    expect_product(one, "first buffers again");
    std::vector<float> grad_a(size_t(m * k), NAN);
    GemmBackwardArgs backward{args(two).a, args(two).b, TensorRef::contiguous(two.c.data(), DType::f32, {m, n})};
    backward.grad_a = TensorRef::contiguous(grad_a.data(), DType::f32, {m, k});
    if (const Status s = gemm_backward(backward); !s.ok()) EXPECT_EQ(s.code(), StatusCode::unsupported) << s.message();
    std::fill(one.c.begin(), one.c.end(), NAN);
    ASSERT_TRUE(gemm(args(one)).ok());
    expect_product(one, "the same call, after a backward on other buffers");
    one.a[0] += 7;  // same buffers, new contents
    ASSERT_TRUE(gemm(args(one)).ok());
    expect_product(one, "changed contents");
    ASSERT_TRUE(gemm(args(one)).ok());
    expect_product(one, "the same call again");
  }
}

// An output of 16 MiB, 64-byte aligned: large enough for kernels that store C past the
// caches (the cpu f32 kernels' non-temporal stores of whole tiles), with beta and bias read
// on the way. Small integers keep every sum exact.
TEST_P(GemmKernel, LargeAlignedOutputIsExact) {
  const std::string kernel = GetParam();
  SKIP_UNLESS_AVAILABLE(kernel);
  if (dtype_of_kernel(kernel) != DType::f32) GTEST_SKIP() << "f32 kernels cover the store path";
  if (!runs_on_host(kernel)) GTEST_SKIP() << backend_of_kernel(kernel) << " does not run on host memory";
  constexpr int64_t m = 2048, n = 2048, k = 5;
  std::vector<float> a(size_t(m * k)), b(size_t(k * n)), bias(static_cast<size_t>(n));
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i % 7) - 3);
  for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i % 5) - 2);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = float(i % 4);
  const std::unique_ptr<float, decltype(&std::free)> c(
      static_cast<float*>(std::aligned_alloc(64, size_t(m * n) * sizeof(float))), &std::free);
  ASSERT_TRUE(c);
  for (int64_t i = 0; i < m * n; ++i) c.get()[i] = float(i % 3);
  GemmArgs args{TensorRef::contiguous(a.data(), DType::f32, {m, k}), TensorRef::contiguous(b.data(), DType::f32, {k, n}),
                TensorRef::contiguous(c.get(), DType::f32, {m, n})};
  args.bias = TensorRef::contiguous(bias.data(), DType::f32, {n});
  args.alpha = 2.0;
  args.beta = -1.0;
  ScopedOverrides force({"", kernel});
  ASSERT_TRUE(gemm(args).ok());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double product = 0;
      for (int64_t p = 0; p < k; ++p) product += double(a[size_t(i * k + p)]) * double(b[size_t(p * n + j)]);
      const double want = 2.0 * product - double((i * n + j) % 3) + double(bias[size_t(j)]);
      ASSERT_EQ(c.get()[i * n + j], float(want)) << "at (" << i << ", " << j << ")";
    }
}

TEST_P(GemmKernel, ExactTier) { run_gemm_sweep(GetParam(), Values::small_ints); }
TEST_P(GemmKernel, RelativeTier) { run_gemm_sweep(GetParam(), Values::normal); }
INSTANTIATE_TEST_SUITE_P(All, GemmKernel, testing::ValuesIn(kernel_names(Op::gemm)), printable);

class GemmBackwardKernel : public testing::TestWithParam<std::string> {};

void run_gemm_backward_sweep(const std::string& kernel, Values values) {
  SKIP_UNLESS_AVAILABLE(kernel);
  SweepCount count{kernel};
  const DType dtype = dtype_of_kernel(kernel);
  int index = 0;
  for (const ShapeRow& row : load_shapes("gemm", "test")) {
    const int i = index++;
    const int64_t batch = as_int(row, "batch"), m = as_int(row, "m"), n = as_int(row, "n"), k = as_int(row, "k");
    const bool ta = i % 4 & 1, tb = i % 4 & 2, broadcast_b = batch > 1 && i % 2 == 0;
    const int64_t pad = i % 2;
    const int64_t b_batch = broadcast_b ? 1 : batch;
    std::vector<TensorSpec> specs = {matrix("a", batch, m, k, ta, pad, 3), matrix("b", b_batch, k, n, tb, pad, 0),
                                     matrix("grad_c", batch, m, n, false, pad, 0),
                                     matrix("grad_a", batch, m, k, false, 0, 0, TensorSpec::output),
                                     matrix("grad_b", b_batch, k, n, false, 0, 0, TensorSpec::output),
                                     packed("grad_bias", {n}, TensorSpec::output)};
    const auto build = [&](const std::vector<TensorRef>& t) {
      return GemmBackwardArgs{t[0], t[1], t[2], t[3], t[4], t[5], 1.0};
    };
    const uint64_t seed = 2000 + uint64_t(i);
    const auto r = run_case<GemmBackwardArgs>(kernel, dtype, specs, values, seed, build);
    expect_result(count, r, values, 3.0, m == 0 || n == 0 || k == 0, repro(kernel, dtype, specs, seed));
  }
}

TEST_P(GemmBackwardKernel, ExactTier) { run_gemm_backward_sweep(GetParam(), Values::small_ints); }
TEST_P(GemmBackwardKernel, RelativeTier) { run_gemm_backward_sweep(GetParam(), Values::normal); }
INSTANTIATE_TEST_SUITE_P(All, GemmBackwardKernel, testing::ValuesIn(kernel_names(Op::gemm_backward)), printable);

// ------------------------------------------------------------------ conv2d
// Logical NCHW image in NCHW or NHWC memory.
TensorSpec image(const std::string& name, int64_t n, int64_t c, int64_t h, int64_t w, bool nhwc,
                 TensorSpec::Role role = TensorSpec::input) {
  TensorSpec s = packed(name, {n, c, h, w}, role);
  if (nhwc) {
    const int64_t C = std::max<int64_t>(c, 1), H = std::max<int64_t>(h, 1), W = std::max<int64_t>(w, 1);
    s.strides = {H * W * C, 1, W * C, C};
  }
  return s;
}

struct ConvCase {
  int64_t n, c, h, w, k, r, s, groups;
  Conv2dParams params;
  int64_t p, q;
};

ConvCase conv_case(const ShapeRow& row) {
  ConvCase cc{};
  cc.n = as_int(row, "n"), cc.c = as_int(row, "c"), cc.h = as_int(row, "h"), cc.w = as_int(row, "w");
  cc.k = as_int(row, "k"), cc.r = as_int(row, "r"), cc.s = as_int(row, "s"), cc.groups = as_int(row, "groups");
  const int64_t stride = as_int(row, "stride"), pad = as_int(row, "pad"), dil = as_int(row, "dilation");
  cc.params = {stride, stride, pad, pad, dil, dil, cc.groups};
  cc.p = conv_output_size(cc.h, cc.r, stride, pad, dil);
  cc.q = conv_output_size(cc.w, cc.s, stride, pad, dil);
  return cc;
}

class Conv2dKernel : public testing::TestWithParam<std::string> {};

void run_conv_sweep(const std::string& kernel, Values values) {
  SKIP_UNLESS_AVAILABLE(kernel);
  SweepCount count{kernel};
  const DType dtype = dtype_of_kernel(kernel);
  const auto shapes = load_shapes("conv2d", "test");
  ASSERT_GE(shapes.size(), 24u);
  int index = 0;
  for (const ShapeRow& row : shapes)
    for (bool nhwc : {false, true}) {
      const int i = index++;
      const ConvCase cc = conv_case(row);
      const bool bias = i % 3 != 0;
      std::vector<TensorSpec> specs = {image("input", cc.n, cc.c, cc.h, cc.w, nhwc),
                                       image("weight", cc.k, cc.groups ? cc.c / cc.groups : 0, cc.r, cc.s, nhwc),
                                       image("output", cc.n, cc.k, cc.p, cc.q, nhwc, TensorSpec::output)};
      if (bias) specs.push_back(packed("bias", {cc.k}));
      const auto build = [&](const std::vector<TensorRef>& t) {
        Conv2dArgs args{t[0], t[1], t[2], std::nullopt, cc.params};
        if (bias) args.bias = t[3];
        return args;
      };
      const uint64_t seed = 3000 + uint64_t(i);
      const auto r = run_case<Conv2dArgs>(kernel, dtype, specs, values, seed, build);
      const bool zeros_expected = cc.n == 0 || cc.k == 0 || cc.c == 0;
      expect_result(count, r, values, 2.0, zeros_expected,
                    repro(kernel, dtype, specs, seed, row.at("name") + (nhwc ? " nhwc" : " nchw")));
    }
}

// An input view whose elements overlap (H and W both step 3 floats: torch's as_strided)
// is valid input; oneDNN cannot describe it (found by the fuzzer). The kernel must match
// the reference bit for bit on small integers.
TEST_P(Conv2dKernel, OverlappingInputView) {
  const std::string kernel = GetParam();
  SKIP_UNLESS_AVAILABLE(kernel);
  if (dtype_of_kernel(kernel) != DType::f32) GTEST_SKIP() << "f32 kernels cover the layout";
  if (!runs_on_host(kernel)) GTEST_SKIP() << backend_of_kernel(kernel) << " does not run on host memory";
  std::vector<float> x(24), w{1, -2, 3};
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 7) - 3);
  const Conv2dParams params{1, 3, 0, 2, 2, 2, 1};  // stride (1, 3), pad (0, 2), dilation (2, 2)
  const auto run = [&](const std::string& name, std::vector<float>& y) {
    Conv2dArgs a{TensorRef::strided(x.data(), DType::f32, {1, 3, 3, 2}, {9, 1, 3, 3}),
                 TensorRef::contiguous(w.data(), DType::f32, {1, 3, 1, 1}),
                 TensorRef::strided(y.data(), DType::f32, {1, 1, 3, 2}, {6, 1, 2, 1}), std::nullopt, params};
    ScopedOverrides force({"", name});
    return conv2d(a);
  };
  std::vector<float> got(6, NAN), want(6, NAN);
  ASSERT_TRUE(run("conv2d.f32.reference", want).ok());
  const Status s = run(kernel, got);
  if (s.code() == StatusCode::unsupported) GTEST_SKIP() << s.message();  // refusing is allowed; failing is not
  ASSERT_TRUE(s.ok()) << s.message();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i]) << "element " << i;
}

// An empty batch may come with no data at all (null pointers): a kernel must return Ok
// (or refuse), never fail. The cpu conv2d once reported out-of-memory here, taking the
// null image for a failed scratch allocation.
TEST_P(Conv2dKernel, EmptyBatchWithoutData) {
  const std::string kernel = GetParam();
  SKIP_UNLESS_AVAILABLE(kernel);
  if (dtype_of_kernel(kernel) != DType::f32) GTEST_SKIP() << "f32 kernels cover the call path";
  if (!runs_on_host(kernel)) GTEST_SKIP() << backend_of_kernel(kernel) << " does not run on host memory";
  std::vector<float> w(2 * 3 * 3 * 3, 1.0f);
  for (const Layout layout : {Layout::nhwc, Layout::nchw}) {
    Conv2dArgs a{image_tensor(nullptr, DType::f32, layout, 0, 3, 5, 5),
                 TensorRef::contiguous(w.data(), DType::f32, {2, 3, 3, 3}),
                 image_tensor(nullptr, DType::f32, layout, 0, 2, 5, 5), std::nullopt,
                 Conv2dParams{1, 1, 1, 1, 1, 1, 1}};
    ScopedOverrides force({"", kernel});
    const Status s = conv2d(a);
    EXPECT_TRUE(s.ok() || s.code() == StatusCode::unsupported) << s.message();
  }
}

TEST_P(Conv2dKernel, ExactTier) { run_conv_sweep(GetParam(), Values::small_ints); }
TEST_P(Conv2dKernel, RelativeTier) { run_conv_sweep(GetParam(), Values::normal); }
INSTANTIATE_TEST_SUITE_P(All, Conv2dKernel, testing::ValuesIn(kernel_names(Op::conv2d)), printable);

class Conv2dBackwardKernel : public testing::TestWithParam<std::string> {};

void run_conv_backward_sweep(const std::string& kernel, Values values) {
  SKIP_UNLESS_AVAILABLE(kernel);
  SweepCount count{kernel};
  const DType dtype = dtype_of_kernel(kernel);
  int index = 0;
  for (const ShapeRow& row : load_shapes("conv2d", "test")) {
    const int i = index++;
    const bool nhwc = i % 2;
    const ConvCase cc = conv_case(row);
    std::vector<TensorSpec> specs = {image("grad_output", cc.n, cc.k, cc.p, cc.q, nhwc),
                                     image("input", cc.n, cc.c, cc.h, cc.w, nhwc),
                                     image("weight", cc.k, cc.groups ? cc.c / cc.groups : 0, cc.r, cc.s, nhwc),
                                     image("grad_input", cc.n, cc.c, cc.h, cc.w, nhwc, TensorSpec::output),
                                     image("grad_weight", cc.k, cc.groups ? cc.c / cc.groups : 0, cc.r, cc.s, nhwc,
                                           TensorSpec::output),
                                     packed("grad_bias", {cc.k}, TensorSpec::output)};
    const auto build = [&](const std::vector<TensorRef>& t) {
      return Conv2dBackwardArgs{t[0], t[1], t[2], t[3], t[4], t[5], cc.params};
    };
    const uint64_t seed = 4000 + uint64_t(i);
    const auto r = run_case<Conv2dBackwardArgs>(kernel, dtype, specs, values, seed, build);
    // Input pixels no filter tap reaches (stride > kernel span) legitimately get zero gradient.
    const bool zeros_expected = cc.n == 0 || cc.k == 0 || cc.c == 0 || cc.params.stride_h > 1;
    expect_result(count, r, values, 3.0, zeros_expected, repro(kernel, dtype, specs, seed, row.at("name")));
  }
}

TEST_P(Conv2dBackwardKernel, ExactTier) { run_conv_backward_sweep(GetParam(), Values::small_ints); }
TEST_P(Conv2dBackwardKernel, RelativeTier) { run_conv_backward_sweep(GetParam(), Values::normal); }
INSTANTIATE_TEST_SUITE_P(All, Conv2dBackwardKernel, testing::ValuesIn(kernel_names(Op::conv2d_backward)), printable);

// ------------------------------------------------------------------ attention
struct AttentionCase {
  int64_t b, h, hkv, lq, lk, e, ev;
  bool causal;
  int mask_kind;  // 0 none, 1 boolean (B, 1, Lq, Lk), 2 additive (Lq, Lk) with some -inf
};

AttentionCase attention_case(const ShapeRow& row, int i) {
  AttentionCase c{};
  c.b = as_int(row, "batch"), c.h = as_int(row, "heads"), c.hkv = as_int(row, "kv_heads");
  c.lq = as_int(row, "seq_q"), c.lk = as_int(row, "seq_k"), c.e = as_int(row, "head_dim");
  c.ev = i % 7 == 3 ? c.e / 2 + 1 : c.e;
  c.causal = as_int(row, "causal") != 0;
  c.mask_kind = c.causal ? 0 : i % 3;
  return c;
}

void add_mask(std::vector<TensorSpec>& specs, const AttentionCase& c) {
  if (c.mask_kind == 1) {
    TensorSpec m = packed("mask", {c.b, 1, c.lq, c.lk});
    m.dtype_override = DType::boolean;
    m.generator = [](std::mt19937_64& rng) { return double(std::uniform_real_distribution<>(0, 1)(rng) < 0.8); };
    specs.push_back(m);
  } else if (c.mask_kind == 2) {
    TensorSpec m = packed("mask", {c.lq, c.lk});
    m.generator = [](std::mt19937_64& rng) {
      const double u = std::uniform_real_distribution<>(0, 1)(rng);
      return u < 0.05 ? -INFINITY : u - 0.5;
    };
    specs.push_back(m);
  }
}

class AttentionKernel : public testing::TestWithParam<std::string> {};

TEST_P(AttentionKernel, RelativeTier) {
  const std::string kernel = GetParam();
  SKIP_UNLESS_AVAILABLE(kernel);
  SweepCount count{kernel};
  const DType dtype = dtype_of_kernel(kernel);
  const auto shapes = load_shapes("attention", "test");
  ASSERT_GE(shapes.size(), 24u);
  int index = 0;
  for (const ShapeRow& row : shapes) {
    const int i = index++;
    const AttentionCase c = attention_case(row, i);
    // q is stored (B, Lq, H, E) (the torch (B, L, H, E).transpose(1, 2) pattern) on odd cases.
    TensorSpec q = packed("q", {c.b, c.h, c.lq, c.e});
    if (i % 2) {
      const int64_t H = std::max<int64_t>(c.h, 1), E = std::max<int64_t>(c.e, 1), L = std::max<int64_t>(c.lq, 1);
      q.strides = {L * H * E, E, H * E, 1};
    }
    std::vector<TensorSpec> specs = {q, padded("k", {c.b, c.hkv, c.lk, c.e}, i % 3, 0),
                                     packed("v", {c.b, c.hkv, c.lk, c.ev}),
                                     packed("out", {c.b, c.h, c.lq, c.ev}, TensorSpec::output),
                                     packed("lse", {c.b, c.h, c.lq}, TensorSpec::output)};
    specs[4].dtype_override = DType::f32;
    add_mask(specs, c);
    const auto build = [&](const std::vector<TensorRef>& t) {
      AttentionArgs args{t[0], t[1], t[2], t[3], t[4], std::nullopt, c.causal, std::nullopt};
      if (c.mask_kind) args.mask = t[5];
      return args;
    };
    const uint64_t seed = 5000 + uint64_t(i);
    const auto r = run_case<AttentionArgs>(kernel, dtype, specs, Values::normal, seed, build);
    const bool zeros_expected = c.b == 0 || c.lq == 0 || c.lk == 0 || c.h == 0;
    expect_result(count, r, Values::normal, 2.0, zeros_expected, repro(kernel, dtype, specs, seed));
  }
}
// The first call of a fresh thread may be an empty one (no keys, or no batch): a kernel
// that keeps per-thread buffers must not take an empty buffer for a failed allocation
// (found by the fuzzer: its first input ran on a thread whose scratch was still empty).
TEST_P(AttentionKernel, EmptyCallOnAFreshThread) {
  const std::string kernel = GetParam();
  SKIP_UNLESS_AVAILABLE(kernel);
  if (dtype_of_kernel(kernel) != DType::f32) GTEST_SKIP() << "f32 kernels cover the call path";
  if (!runs_on_host(kernel)) GTEST_SKIP() << backend_of_kernel(kernel) << " does not run on host memory";
  for (const auto& [batch, seq_k] : {std::pair<int64_t, int64_t>{1, 0}, {0, 7}}) {
    std::vector<float> q(size_t(batch * 2 * 5 * 8), 1.0f), kv(size_t(batch * 2 * seq_k * 8) + 1, 1.0f),
        out(size_t(batch * 2 * 5 * 8), NAN);
    Status status;
    std::thread fresh([&] {
      ScopedOverrides force({"", kernel});
      AttentionArgs a{TensorRef::contiguous(q.data(), DType::f32, {batch, 2, 5, 8}),
                      TensorRef::contiguous(kv.data(), DType::f32, {batch, 2, seq_k, 8}),
                      TensorRef::contiguous(kv.data(), DType::f32, {batch, 2, seq_k, 8}),
                      TensorRef::contiguous(out.data(), DType::f32, {batch, 2, 5, 8})};
      status = attention(a);
    });
    fresh.join();
    ASSERT_TRUE(status.ok() || status.code() == StatusCode::unsupported) << status.message();
    if (status.ok())
      for (float o : out) EXPECT_EQ(o, 0.0f) << "no keys: every row is fully masked, out = 0";
  }
}

// A NaN score poisons its query's row and nothing else: a NaN in query row 2 makes that
// row's every score NaN, so its output row is NaN while the others match the reference;
// a NaN in one key makes every row NaN (each attends it). The cpu kernel's softmax keeps
// NaN out of its running maxima, so NaN reaches the output only through P.
TEST_P(AttentionKernel, NanScorePoisonsItsRows) {
  const std::string kernel = GetParam();
  SKIP_UNLESS_AVAILABLE(kernel);
  if (dtype_of_kernel(kernel) != DType::f32) GTEST_SKIP() << "f32 kernels cover the softmax";
  if (!runs_on_host(kernel)) GTEST_SKIP() << backend_of_kernel(kernel) << " does not run on host memory";
  constexpr int64_t kQueries = 5, kKeys = 40, kDim = 8;
  std::vector<float> q(size_t(kQueries * kDim)), k(size_t(kKeys * kDim)), v(size_t(kKeys * kDim));
  for (size_t i = 0; i < q.size(); ++i) q[i] = float(int(i * 7 % 11) - 5) / 8;
  for (size_t i = 0; i < k.size(); ++i) k[i] = float(int(i * 5 % 13) - 6) / 8;
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(int(i * 3 % 7) - 3) / 4;
  const auto run = [&](const std::string& name, const std::vector<float>& qs, const std::vector<float>& ks) {
    std::vector<float> out(size_t(kQueries * kDim), 12345.0f);
    ScopedOverrides force({"", name});
    AttentionArgs a{TensorRef::contiguous(const_cast<float*>(qs.data()), DType::f32, {1, 1, kQueries, kDim}),
                    TensorRef::contiguous(const_cast<float*>(ks.data()), DType::f32, {1, 1, kKeys, kDim}),
                    TensorRef::contiguous(v.data(), DType::f32, {1, 1, kKeys, kDim}),
                    TensorRef::contiguous(out.data(), DType::f32, {1, 1, kQueries, kDim})};
    EXPECT_TRUE(attention(a).ok());
    return out;
  };
  std::vector<float> q_nan = q, k_nan = k;
  q_nan[2 * kDim + 3] = NAN;
  k_nan[7 * kDim] = NAN;
  const std::vector<float> want = run("attention.f32.reference", q, k);
  const std::vector<float> got = run(kernel, q_nan, k);
  for (int64_t i = 0; i < kQueries; ++i)
    for (int64_t e = 0; e < kDim; ++e) {
      const float x = got[size_t(i * kDim + e)], w = want[size_t(i * kDim + e)];
      if (i == 2) EXPECT_TRUE(std::isnan(x)) << "row 2, dim " << e << ": " << x;
      else EXPECT_NEAR(x, w, 1e-5 + 1e-5 * std::abs(w)) << "row " << i << ", dim " << e;
    }
  for (float x : run(kernel, q, k_nan)) EXPECT_TRUE(std::isnan(x)) << x;
}

INSTANTIATE_TEST_SUITE_P(All, AttentionKernel, testing::ValuesIn(kernel_names(Op::attention)), printable);

class AttentionBackwardKernel : public testing::TestWithParam<std::string> {};

TEST_P(AttentionBackwardKernel, RelativeTier) {
  const std::string kernel = GetParam();
  SKIP_UNLESS_AVAILABLE(kernel);
  SweepCount count{kernel};
  const DType dtype = dtype_of_kernel(kernel);
  int index = 0;
  for (const ShapeRow& row : load_shapes("attention", "test")) {
    const int i = index++;
    const AttentionCase c = attention_case(row, i);
    std::vector<TensorSpec> specs = {packed("q", {c.b, c.h, c.lq, c.e}),
                                     packed("k", {c.b, c.hkv, c.lk, c.e}),
                                     packed("v", {c.b, c.hkv, c.lk, c.ev}),
                                     packed("out", {c.b, c.h, c.lq, c.ev}),
                                     padded("grad_out", {c.b, c.h, c.lq, c.ev}, i % 2, 0),
                                     packed("lse", {c.b, c.h, c.lq}),
                                     packed("grad_q", {c.b, c.h, c.lq, c.e}, TensorSpec::output),
                                     packed("grad_k", {c.b, c.hkv, c.lk, c.e}, TensorSpec::output),
                                     packed("grad_v", {c.b, c.hkv, c.lk, c.ev}, TensorSpec::output)};
    specs[5].dtype_override = DType::f32;
    add_mask(specs, c);
    const bool has_mask = c.mask_kind != 0;
    const auto build = [&](const std::vector<TensorRef>& t) {
      AttentionBackwardArgs args{t[0], t[1], t[2], t[3], t[4], t[5], std::nullopt, c.causal, std::nullopt,
                                 t[6], t[7], t[8]};
      if (has_mask) args.mask = t[9];
      return args;
    };
    // out and lse are those of the forward on the same q, k, v (f64 reference).
    const auto prepare = [&](std::vector<std::vector<double>>& vals) {
      auto view = [&](size_t i, DType d, void* data) {
        TensorRef t;
        t.data = data;
        t.dtype = d;
        t.rank = int(specs[i].shape.size());
        for (size_t j = 0; j < specs[i].shape.size(); ++j) {
          t.shape[j] = specs[i].shape[j];
          t.strides[j] = specs[i].strides[j];
        }
        t.offset = specs[i].offset;
        return t;
      };
      std::vector<float> lse(vals[5].size());
      std::vector<uint8_t> mask_bytes;
      AttentionArgs fwd{view(0, DType::f64, vals[0].data()), view(1, DType::f64, vals[1].data()),
                        view(2, DType::f64, vals[2].data()), view(3, DType::f64, vals[3].data()),
                        view(5, DType::f32, lse.data()), std::nullopt, c.causal, std::nullopt};
      if (has_mask) {
        if (c.mask_kind == 1) {
          for (double x : vals[9]) mask_bytes.push_back(x != 0 && !std::isnan(x));
          fwd.mask = view(9, DType::boolean, mask_bytes.data());
        } else {
          fwd.mask = view(9, DType::f64, vals[9].data());
        }
      }
      ScopedOverrides force({"", "attention.f64.reference"});
      ASSERT_TRUE(attention(fwd).ok());
      for (size_t j = 0; j < lse.size(); ++j) vals[5][j] = lse[j];
    };
    const uint64_t seed = 6000 + uint64_t(i);
    const auto r = run_case<AttentionBackwardArgs>(kernel, dtype, specs, Values::normal, seed, build, prepare);
    // seq_k == 1 makes softmax constant (dq = dk = 0); causal and masks leave keys unattended.
    const bool zeros_expected = c.b == 0 || c.lq == 0 || c.lk <= 1 || c.h == 0 || c.causal || c.mask_kind;
    expect_result(count, r, Values::normal, 3.0, zeros_expected, repro(kernel, dtype, specs, seed));
  }
}
INSTANTIATE_TEST_SUITE_P(All, AttentionBackwardKernel, testing::ValuesIn(kernel_names(Op::attention_backward)),
                         printable);

}  // namespace
}  // namespace anvil::test
