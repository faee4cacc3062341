// The dispatch registry: selection, overrides, explain, refusal reasons, thread safety.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <regex>
#include <thread>

#include "dispatch/registry.h"
#include "tests/cpp/test_support.h"

namespace anvil::test {
namespace {

struct SmallGemm {
  std::vector<float> a = std::vector<float>(6, 1.0f), b = std::vector<float>(6, 2.0f), c = std::vector<float>(4, NAN);
  GemmArgs args() {
    return {TensorRef::contiguous(a.data(), DType::f32, {2, 3}), TensorRef::contiguous(b.data(), DType::f32, {3, 2}),
            TensorRef::contiguous(c.data(), DType::f32, {2, 2})};
  }
};

TEST(Registry, KernelNamesAreParseable) {
  const std::regex pattern(R"(^(gemm|gemm_backward|conv2d|conv2d_backward|attention|attention_backward)\.(f32|f16|bf16|f64)\.[a-z0-9_]+(\.[A-Za-z0-9_x]+)?$)");
  const auto all = kernels();
  ASSERT_FALSE(all.empty());
  for (const KernelInfo& k : all) {
    EXPECT_TRUE(std::regex_match(k.name, pattern)) << k.name;
    EXPECT_EQ(k.name.substr(0, k.name.find('.')), op_name(k.op));
    EXPECT_EQ(dtype_of_kernel(k.name), k.dtype) << k.name;
  }
  // Every op has a reference kernel for every reference dtype.
  for (Op op : {Op::gemm, Op::gemm_backward, Op::conv2d, Op::conv2d_backward, Op::attention, Op::attention_backward})
    for (const char* d : {"f32", "f16", "bf16", "f64"}) {
      const std::string name = std::string(op_name(op)) + "." + d + ".reference";
      EXPECT_TRUE(std::any_of(all.begin(), all.end(), [&](const KernelInfo& k) { return k.name == name; })) << name;
    }
}

TEST(Registry, TablesAreInPriorityOrder) {
  const auto all = kernels();
  for (size_t i = 1; i < all.size(); ++i)
    if (all[i].op == all[i - 1].op) EXPECT_GE(all[i - 1].priority, all[i].priority) << all[i].name;
}

TEST(Registry, SelectsAKernelForHostF32) {
  SmallGemm g;
  std::string name;
  ASSERT_TRUE(select_kernel(g.args(), &name).ok());
  EXPECT_EQ(name.substr(0, 9), "gemm.f32.");
  ASSERT_TRUE(gemm(g.args()).ok());
  for (float x : g.c) EXPECT_EQ(x, 6.0f);
}

TEST(Registry, RefusesOperandsOnADeviceNoBackendRuns) {
  SmallGemm g;
  GemmArgs args = g.args();
  for (TensorRef* t : {&args.a, &args.b, &args.c}) t->device = {DeviceType::hip, 0};
  const Status s = gemm(args);
  EXPECT_EQ(s.code(), StatusCode::unsupported);
  EXPECT_NE(s.message().find("does not run on hip memory"), std::string::npos) << s.message();
  EXPECT_TRUE(std::isnan(g.c[0]));  // nothing written
}

TEST(Registry, ForcedKernelRunsAndRefusalIsAnErrorNotAFallback) {
  SmallGemm g;
  {
    ScopedOverrides force({"", "gemm.f32.reference"});
    ASSERT_TRUE(force.status().ok());
    std::string name;
    ASSERT_TRUE(select_kernel(g.args(), &name).ok());
    EXPECT_EQ(name, "gemm.f32.reference");
  }
  // A forced kernel for another dtype: the call fails and says why.
  std::vector<uint16_t> a(6), b(6), c(4, 0x7e00);
  GemmArgs half{TensorRef::contiguous(a.data(), DType::f16, {2, 3}), TensorRef::contiguous(b.data(), DType::f16, {3, 2}),
                TensorRef::contiguous(c.data(), DType::f16, {2, 2})};
  ScopedOverrides force({"", "gemm.f32.reference"});
  std::string name;
  const Status s = select_kernel(half, &name);
  // No kernel forced for gemm.f16: the f16 call selects normally.
  EXPECT_TRUE(s.ok()) << s.message();
  ScopedOverrides force_other({"", "gemm.f16.reference"});
  // A forced kernel that refuses: devices it cannot run on.
  for (TensorRef* t : {&half.a, &half.b, &half.c}) t->device = {DeviceType::cuda, 0};
  const Status refused = gemm(half);
  EXPECT_EQ(refused.code(), StatusCode::unsupported);
  EXPECT_NE(refused.message().find("forced kernel gemm.f16.reference refuses this call"), std::string::npos)
      << refused.message();
  EXPECT_EQ(c[0], 0x7e00);
}

TEST(Registry, UnknownOverrideNamesListTheValidOnes) {
  Status s = set_overrides({"no_such_backend", ""});
  EXPECT_EQ(s.code(), StatusCode::not_found);
  EXPECT_NE(s.message().find("valid backends in this build: reference"), std::string::npos) << s.message();
  s = set_overrides({"", "gemm.f32.nope"});
  EXPECT_EQ(s.code(), StatusCode::not_found);
  EXPECT_NE(s.message().find("gemm.f32.reference"), std::string::npos) << s.message();
  s = set_overrides({"", "gemm.f32.reference,gemm.f32.reference"});
  EXPECT_EQ(s.code(), StatusCode::invalid_argument);
  EXPECT_TRUE(set_overrides({"", ""}).ok());
}

TEST(Registry, ForcedBackendNarrowsSelection) {
  SmallGemm g;
  ScopedOverrides force({"reference", ""});
  ASSERT_TRUE(force.status().ok());
  std::string name;
  ASSERT_TRUE(select_kernel(g.args(), &name).ok());
  EXPECT_EQ(name, "gemm.f32.reference");
  EXPECT_NE(explain(g.args()).find("overrides: forced backend reference"), std::string::npos);
}

TEST(Registry, ScopedOverridesRestore) {
  ASSERT_TRUE(set_overrides({"", ""}).ok());
  {
    ScopedOverrides outer({"reference", ""});
    {
      ScopedOverrides inner({"", "conv2d.f32.reference"});
      EXPECT_EQ(current_overrides().kernels, "conv2d.f32.reference");
    }
    EXPECT_EQ(current_overrides().backend, "reference");
  }
  EXPECT_EQ(current_overrides().backend, "");
}

TEST(Registry, ExplainListsEveryCandidateWithAVerdict) {
  SmallGemm g;
  const std::string text = explain(g.args());
  EXPECT_NE(text.find("gemm f32 on host:0"), std::string::npos) << text;
  EXPECT_NE(text.find("taken   gemm.f32."), std::string::npos) << text;
  for (const std::string& name : kernel_names(Op::gemm))
    if (dtype_of_kernel(name) == DType::f32) EXPECT_NE(text.find(name), std::string::npos) << name << "\n" << text;
  // Refusals carry a reason.
  GemmArgs on_gpu = g.args();
  // (hip: a device type no backend in this tree runs on yet)
  for (TensorRef* t : {&on_gpu.a, &on_gpu.b, &on_gpu.c}) t->device = {DeviceType::hip, 0};
  const std::string refused = explain(on_gpu);
  EXPECT_NE(refused.find("refused gemm.f32.reference"), std::string::npos) << refused;
  EXPECT_NE(refused.find("does not run on hip memory"), std::string::npos) << refused;
  EXPECT_NE(refused.find("error: no kernel can run this call"), std::string::npos) << refused;
  // An invalid call says so instead of listing candidates.
  GemmArgs bad = g.args();
  bad.b.shape[0] = 4;
  EXPECT_NE(explain(bad).find("invalid call"), std::string::npos);
}

TEST(Registry, AutotuneHookCanReorderAcceptableCandidates) {
  SmallGemm g;
  std::atomic<int> calls{0};
  dispatch::set_autotune_hook<GemmArgs>(
      [&](const GemmArgs&, const std::vector<const dispatch::KernelRecord<GemmArgs>*>& acceptable) {
        ++calls;
        EXPECT_FALSE(acceptable.empty());
        return int(acceptable.size()) - 1;  // the last acceptable one
      });
  std::string name;
  ASSERT_TRUE(select_kernel(g.args(), &name).ok());
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(name, "gemm.f32.reference");  // the last acceptable candidate is the oracle
  dispatch::set_autotune_hook<GemmArgs>(nullptr);
}

// A repeated identical call reuses its selection (dispatch/selection_memo.h); everything
// that may change the answer must still be seen.
TEST(Registry, RepeatedCallsSeeOverrideHookAndPointerChanges) {
  SmallGemm g;
  std::string first, again;
  ASSERT_TRUE(select_kernel(g.args(), &first).ok());
  ASSERT_TRUE(select_kernel(g.args(), &again).ok());
  EXPECT_EQ(first, again);
  {
    ScopedOverrides force({"", "gemm.f32.reference"});
    ASSERT_TRUE(select_kernel(g.args(), &again).ok());
    EXPECT_EQ(again, "gemm.f32.reference");
  }
  ASSERT_TRUE(select_kernel(g.args(), &again).ok());
  EXPECT_EQ(again, first);

  // A hook set after the call was remembered is asked on every call from then on.
  std::atomic<int> calls{0};
  dispatch::set_autotune_hook<GemmArgs>(
      [&](const GemmArgs&, const std::vector<const dispatch::KernelRecord<GemmArgs>*>&) {
        ++calls;
        return 0;
      });
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(select_kernel(g.args(), &again).ok());
  EXPECT_EQ(calls.load(), 3);
  dispatch::set_autotune_hook<GemmArgs>(nullptr);

  // The same shapes with c moved onto a: validated again, and refused.
  GemmArgs aliased = g.args();
  ASSERT_TRUE(gemm(aliased).ok());
  aliased.c.data = g.a.data();
  const Status s = gemm(aliased);
  EXPECT_EQ(s.code(), StatusCode::invalid_argument);
  EXPECT_NE(s.message().find("overlaps"), std::string::npos) << s.message();
  // A refusal is not remembered: the same bad call fails again, with the same error.
  EXPECT_EQ(gemm(aliased).message(), s.message());
}

TEST(Registry, ConcurrentCallsAndOverrideChangesAreSafe) {
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        SmallGemm g;
        if (t == 0 && i % 10 == 0) (void)set_overrides({i % 20 ? "reference" : "", ""});
        if (!gemm(g.args()).ok() || g.c[3] != 6.0f) ++failures;
        (void)explain(g.args());
      }
    });
  for (auto& th : threads) th.join();
  (void)set_overrides({"", ""});
  EXPECT_EQ(failures.load(), 0);
}

TEST(Registry, BackendsReportAvailability) {
  const auto list = backends();
  ASSERT_FALSE(list.empty());
  EXPECT_EQ(list[0].name, "reference");
  EXPECT_TRUE(list[0].available);
}

// Run by ctest with ANVIL_KERNEL / ANVIL_BACKEND set (see tests/CMakeLists.txt).
TEST(EnvOverride, InvalidNamesFailEveryCall) {
  const char* kernel = std::getenv("ANVIL_KERNEL");
  if (!kernel || std::string(kernel) != "gemm.f32.bogus") GTEST_SKIP() << "run by ctest with ANVIL_KERNEL=gemm.f32.bogus";
  SmallGemm g;
  const Status s = gemm(g.args());
  EXPECT_EQ(s.code(), StatusCode::not_found);
  EXPECT_NE(s.message().find("ANVIL_KERNEL: unknown kernel 'gemm.f32.bogus'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("gemm.f32.reference"), std::string::npos);
  EXPECT_TRUE(std::isnan(g.c[0]));
}

TEST(EnvOverride, ValidKernelIsForced) {
  const char* kernel = std::getenv("ANVIL_KERNEL");
  if (!kernel || std::string(kernel) != "gemm.f32.reference") GTEST_SKIP() << "run by ctest with ANVIL_KERNEL=gemm.f32.reference";
  SmallGemm g;
  EXPECT_NE(explain(g.args()).find("overrides: forced kernel gemm.f32.reference"), std::string::npos);
  ASSERT_TRUE(gemm(g.args()).ok());
  // The API takes precedence over the environment, field by field.
  ScopedOverrides api({"", "gemm.f32.reference"});
  EXPECT_TRUE(api.status().ok());
}

}  // namespace
}  // namespace anvil::test

namespace anvil::test {
namespace {

// Run by ctest with ANVIL_CPU_ISA=avx2: the AVX-512 kernels must refuse (with the reason)
// and the AVX2 kernel must be chosen, as on a CPU without AVX-512.
// A record may rank itself per shape class (measured priorities): with both the cpu and
// oneapi backends, decode-shaped GEMM goes to anvil's streamed cpu path and larger M to
// oneDNN, and explain says the priority was chosen for the shape.
TEST(Registry, PrioritiesPerShapeClass) {
  const auto infos = backends();
  const auto usable = [&](const char* name) {
    return std::any_of(infos.begin(), infos.end(), [&](const BackendInfo& b) { return b.name == name && b.available; });
  };
  if (!usable("cpu") || !usable("oneapi")) GTEST_SKIP() << "needs the cpu and oneapi backends";
  // GEMM: the cpu kernel streams B (unpacked) for few rows: from 17 to 64 rows only where B
  // is large (16 MiB and up).
  struct GemmCase {
    int64_t m, n, k;
    std::string expected;
  };
  for (const GemmCase& g : {GemmCase{1, 32, 32, "gemm.f32.cpu."}, GemmCase{64, 32, 32, "gemm.f32.oneapi.matmul"},
                            GemmCase{64, 4096, 1024, "gemm.f32.cpu."}, GemmCase{65, 4096, 1024, "gemm.f32.oneapi."}}) {
    std::vector<float> a(size_t(g.m * g.k), 1.0f), b(size_t(g.k * g.n), 1.0f), c(size_t(g.m * g.n), NAN);
    const GemmArgs args = gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, g.m, g.n, g.k, 1.0, a.data(),
                                              g.k, b.data(), g.n, 0.0, c.data(), g.n);
    std::string kernel;
    ASSERT_TRUE(select_kernel(args, &kernel).ok());
    EXPECT_EQ(kernel.rfind(g.expected, 0), 0u) << g.m << "x" << g.n << "x" << g.k << " chose " << kernel;
    EXPECT_NE(explain(args).find("for this shape]"), std::string::npos) << explain(args);
  }
  // conv2d: the cpu kernel ranks above oneDNN where it runs with the weights as A (few
  // pixels against many filters, KRSC weights), and below it elsewhere.
  for (const auto& [filters, expected] :
       {std::pair<int64_t, std::string>{512, "conv2d.f32.cpu."}, {16, "conv2d.f32.oneapi."}}) {
    std::vector<float> x(size_t(7 * 7 * 64), 1.0f), w(size_t(filters * 9 * 64), 1.0f), y(size_t(7 * 7 * filters), NAN);
    Conv2dArgs args;
    args.input = image_tensor(x.data(), DType::f32, Layout::nhwc, 1, 64, 7, 7);
    args.weight = image_tensor(w.data(), DType::f32, Layout::nhwc, filters, 64, 3, 3);
    args.output = image_tensor(y.data(), DType::f32, Layout::nhwc, 1, filters, 7, 7);
    args.params.pad_h = args.params.pad_w = 1;
    std::string kernel;
    ASSERT_TRUE(select_kernel(args, &kernel).ok());
    EXPECT_EQ(kernel.rfind(expected, 0), 0u) << filters << " filters chose " << kernel;
  }
}

TEST(CpuIsaCap, Avx2HostChoosesAvx2Kernels) {
  const char* cap = std::getenv("ANVIL_CPU_ISA");
  if (!cap || std::string(cap) != "avx2") GTEST_SKIP() << "run by ctest with ANVIL_CPU_ISA=avx2";
  const auto all = kernels();
  if (std::none_of(all.begin(), all.end(), [](const KernelInfo& k) { return k.backend == "cpu"; }))
    GTEST_SKIP() << "no cpu backend in this build";
  ScopedOverrides cpu_only({"cpu", ""});  // other backends (oneapi) may rank above the cpu ones
  SmallGemm g;
  const std::string text = explain(g.args());
  EXPECT_NE(text.find("taken   gemm.f32.cpu.avx2"), std::string::npos) << text;
  EXPECT_NE(text.find("refused gemm.f32.cpu.avx512"), std::string::npos) << text;
  EXPECT_NE(text.find("this CPU lacks avx512"), std::string::npos) << text;
  ASSERT_TRUE(gemm(g.args()).ok());
  EXPECT_EQ(g.c[3], 6.0f);
}

}  // namespace
}  // namespace anvil::test
