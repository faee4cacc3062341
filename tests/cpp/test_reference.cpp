// The oracle itself: the reference kernels against independent, differently written
// loops on exact-integer inputs, and the semantics every backend must share (K = 0,
// empty shapes, NaN propagation, fully masked rows, GQA, causal alignment, 64-bit offsets).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

#include "tests/cpp/test_support.h"

namespace anvil::test {
namespace {

std::vector<float> small_ints(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(-4, 4);
  std::vector<float> v(n);
  for (float& x : v) x = float(d(rng));
  return v;
}

TEST(Reference, GemmMatchesIndependentLoopsExactly) {
  for (auto [m, n, k] : {std::tuple{7, 5, 3}, {17, 33, 61}, {1, 64, 9}}) {
    auto a = small_ints(size_t(k * m), 1), b = small_ints(size_t(n * k), 2), c = small_ints(size_t(m * n), 3);
    auto bias = small_ints(size_t(n), 4);
    std::vector<float> out = c;
    // a stored transposed (K x M), b row-major: C = 2 * A^T B + 3 * C + bias
    GemmArgs args = gemm_args_row_major(DType::f32, Transpose::yes, Transpose::no, m, n, k, 2.0, a.data(), m,
                                        b.data(), n, 3.0, out.data(), n);
    args.bias = TensorRef::contiguous(bias.data(), DType::f32, {n});
    ScopedOverrides force({"", "gemm.f32.reference"});
    ASSERT_TRUE(gemm(args).ok());
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        long long dot = 0;
        for (int p = 0; p < k; ++p) dot += (long long)a[size_t(p * m + i)] * (long long)b[size_t(p * n + j)];
        const long long want = 2 * dot + 3 * (long long)c[size_t(i * n + j)] + (long long)bias[size_t(j)];
        ASSERT_EQ(out[size_t(i * n + j)], float(want)) << i << "," << j;
      }
  }
}

TEST(Reference, GemmWithKZeroGivesBetaCPlusBias) {
  std::vector<float> c = {1, 2, 3, 4}, bias = {10, 20};
  GemmArgs args = gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, 2, 2, 0, 1.0, nullptr, 0, nullptr,
                                      2, 0.5, c.data(), 2);
  args.bias = TensorRef::contiguous(bias.data(), DType::f32, {2});
  ASSERT_TRUE(gemm(args).ok());
  EXPECT_EQ(c, (std::vector<float>{10.5f, 21.0f, 11.5f, 22.0f}));
}

TEST(Reference, GemmBetaZeroDoesNotReadC) {
  std::vector<float> a = {1, 2}, b = {3, 4}, c = {NAN};
  ASSERT_TRUE(gemm(gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, 1, 1, 2, 1.0, a.data(), 2,
                                       b.data(), 1, 0.0, c.data(), 1)).ok());
  EXPECT_EQ(c[0], 11.0f);
}

TEST(Reference, GemmPropagatesNaN) {
  std::vector<float> a = {1, NAN, 1, 1}, b = {1, 1, 1, 1}, c(4, 0.0f);
  ASSERT_TRUE(gemm(gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, 2, 2, 2, 1.0, a.data(), 2,
                                       b.data(), 2, 0.0, c.data(), 2)).ok());
  EXPECT_TRUE(std::isnan(c[0]) && std::isnan(c[1]));
  EXPECT_EQ(c[2], 2.0f);
}

TEST(Reference, GemmEmptyShapesAreValid) {
  std::vector<float> buf(4, NAN);
  for (auto [m, n, k] : {std::tuple{0, 3, 2}, {3, 0, 2}, {0, 0, 0}}) {
    GemmArgs args = gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, m, n, k, 1.0, buf.data(),
                                        std::max(k, 1), buf.data(), std::max(n, 1), 0.0, nullptr, std::max(n, 1));
    EXPECT_TRUE(gemm(args).ok()) << m << " " << n << " " << k;
  }
}

TEST(Reference, ConvMatchesIndependentLoopsExactly) {
  struct P { int n, c, h, w, k, r, s, stride, pad, dil, groups; };
  for (P p : {P{2, 4, 7, 6, 6, 3, 3, 1, 1, 1, 2}, P{1, 3, 9, 9, 5, 3, 3, 2, 2, 2, 1}, P{1, 6, 5, 5, 6, 3, 3, 1, 1, 1, 6}}) {
    const int cg = p.c / p.groups, kg = p.k / p.groups;
    const int oh = (p.h + 2 * p.pad - p.dil * (p.r - 1) - 1) / p.stride + 1;
    const int ow = (p.w + 2 * p.pad - p.dil * (p.s - 1) - 1) / p.stride + 1;
    auto in = small_ints(size_t(p.n * p.c * p.h * p.w), 5), w = small_ints(size_t(p.k * cg * p.r * p.s), 6);
    std::vector<float> out(size_t(p.n * p.k * oh * ow), NAN);
    Conv2dArgs args{image_tensor(in.data(), DType::f32, Layout::nhwc, p.n, p.c, p.h, p.w),
                    TensorRef::contiguous(w.data(), DType::f32, {p.k, cg, p.r, p.s}),
                    image_tensor(out.data(), DType::f32, Layout::nhwc, p.n, p.k, oh, ow), std::nullopt,
                    {p.stride, p.stride, p.pad, p.pad, p.dil, p.dil, p.groups}};
    ScopedOverrides force({"", "conv2d.f32.reference"});
    ASSERT_TRUE(conv2d(args).ok());
    // Independent: pad the NHWC input explicitly, then slide.
    const int ph = p.h + 2 * p.pad, pw = p.w + 2 * p.pad;
    std::vector<long long> padded_in(size_t(p.n * ph * pw * p.c), 0);
    for (int n = 0; n < p.n; ++n)
      for (int y = 0; y < p.h; ++y)
        for (int x = 0; x < p.w; ++x)
          for (int c = 0; c < p.c; ++c)
            padded_in[size_t(((n * ph + y + p.pad) * pw + x + p.pad) * p.c + c)] =
                (long long)in[size_t(((n * p.h + y) * p.w + x) * p.c + c)];
    for (int n = 0; n < p.n; ++n)
      for (int y = 0; y < oh; ++y)
        for (int x = 0; x < ow; ++x)
          for (int k = 0; k < p.k; ++k) {
            long long acc = 0;
            const int g = k / kg;
            for (int r = 0; r < p.r; ++r)
              for (int s = 0; s < p.s; ++s)
                for (int c = 0; c < cg; ++c)
                  acc += padded_in[size_t(((n * ph + y * p.stride + r * p.dil) * pw + x * p.stride + s * p.dil) * p.c +
                                          g * cg + c)] *
                         (long long)w[size_t(((k * cg + c) * p.r + r) * p.s + s)];
            ASSERT_EQ(out[size_t(((n * oh + y) * ow + x) * p.k + k)], float(acc));
          }
  }
}

// Attention written the textbook way: materialise S, softmax, multiply.
std::vector<double> textbook_attention(const std::vector<float>& q, const std::vector<float>& k,
                                       const std::vector<float>& v, int h, int hkv, int lq, int lk, int e,
                                       bool causal) {
  std::vector<double> out(size_t(h * lq * e), 0.0);
  const double scale = 1.0 / std::sqrt(double(e));
  for (int hh = 0; hh < h; ++hh) {
    const int kvh = hh / (h / hkv);
    for (int i = 0; i < lq; ++i) {
      std::vector<double> s(static_cast<size_t>(lk));
      double mx = -INFINITY;
      for (int j = 0; j < lk; ++j) {
        double d = 0;
        for (int x = 0; x < e; ++x) d += double(q[size_t((hh * lq + i) * e + x)]) * double(k[size_t((kvh * lk + j) * e + x)]);
        s[size_t(j)] = causal && j > i ? -INFINITY : d * scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      double z = 0;
      for (double& x : s) z += (x = std::exp(x - mx));
      for (int j = 0; j < lk; ++j)
        for (int x = 0; x < e; ++x) out[size_t((hh * lq + i) * e + x)] += s[size_t(j)] / z * double(v[size_t((kvh * lk + j) * e + x)]);
    }
  }
  return out;
}

TEST(Reference, AttentionMatchesTextbookWithGqaAndCausal) {
  const int h = 4, hkv = 2, lq = 9, lk = 13, e = 8;
  auto q = small_ints(size_t(h * lq * e), 7), k = small_ints(size_t(hkv * lk * e), 8), v = small_ints(size_t(hkv * lk * e), 9);
  for (float& x : q) x *= 0.25f;
  for (bool causal : {false, true}) {
    std::vector<float> out(size_t(h * lq * e), NAN), lse(size_t(h * lq), NAN);
    AttentionArgs args{TensorRef::contiguous(q.data(), DType::f32, {1, h, lq, e}),
                       TensorRef::contiguous(k.data(), DType::f32, {1, hkv, lk, e}),
                       TensorRef::contiguous(v.data(), DType::f32, {1, hkv, lk, e}),
                       TensorRef::contiguous(out.data(), DType::f32, {1, h, lq, e}),
                       TensorRef::contiguous(lse.data(), DType::f32, {1, h, lq}), std::nullopt, causal};
    ScopedOverrides force({"", "attention.f32.reference"});
    ASSERT_TRUE(attention(args).ok());
    const auto want = textbook_attention(q, k, v, h, hkv, lq, lk, e, causal);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 2e-6 * (1 + std::abs(want[i]))) << i;
  }
}

TEST(Reference, FullyMaskedRowsGiveZeroAndMinusInfLse) {
  std::vector<float> q(8, 1.0f), k(8, 1.0f), v(8, 5.0f), out(8, NAN), lse(2, NAN);
  std::vector<uint8_t> mask = {0, 0, 1, 0};  // row 0 fully masked
  AttentionArgs args{TensorRef::contiguous(q.data(), DType::f32, {1, 1, 2, 4}),
                     TensorRef::contiguous(k.data(), DType::f32, {1, 1, 2, 4}),
                     TensorRef::contiguous(v.data(), DType::f32, {1, 1, 2, 4}),
                     TensorRef::contiguous(out.data(), DType::f32, {1, 1, 2, 4}),
                     TensorRef::contiguous(lse.data(), DType::f32, {1, 1, 2}),
                     TensorRef::contiguous(mask.data(), DType::boolean, {2, 2})};
  ASSERT_TRUE(attention(args).ok());
  for (int e = 0; e < 4; ++e) EXPECT_EQ(out[size_t(e)], 0.0f);
  EXPECT_TRUE(std::isinf(lse[0]) && lse[0] < 0);
  for (int e = 4; e < 8; ++e) EXPECT_EQ(out[size_t(e)], 5.0f);
}

TEST(Reference, AttentionPropagatesNaN) {
  std::vector<float> q(8, 1.0f), k(8, 1.0f), v(8, 1.0f), out(8, 0.0f);
  k[0] = NAN;
  AttentionArgs args{TensorRef::contiguous(q.data(), DType::f32, {1, 1, 2, 4}),
                     TensorRef::contiguous(k.data(), DType::f32, {1, 1, 2, 4}),
                     TensorRef::contiguous(v.data(), DType::f32, {1, 1, 2, 4}),
                     TensorRef::contiguous(out.data(), DType::f32, {1, 1, 2, 4})};
  ASSERT_TRUE(attention(args).ok());
  for (float x : out) EXPECT_TRUE(std::isnan(x));
}

// Elements past 2^31 (int64 offsets): a bf16 buffer of 2^31 + 64 elements (4 GiB), read by
// every op of every backend that runs here.
TEST(EveryBackend, OffsetsBeyond2Pow31) {
  const int64_t base = int64_t(1) << 31;
  std::vector<bfloat16> big;
  try {
    big.resize(size_t(base + 64), to_bfloat16(1.0f));
  } catch (const std::bad_alloc&) {
    GTEST_SKIP() << "not enough memory for a 4 GiB buffer";
  }
  big[size_t(base)] = to_bfloat16(3.0f);  // a[0][0] below
  for (const BackendInfo& backend : backends()) {
    if (!backend.available) continue;
    SCOPED_TRACE("backend " + backend.name);
    // Device backends read a device copy of the same 4 GiB.
    Device device;
    for (DeviceType t : backend.device_types)
      if (t != DeviceType::host) device = {t, 0};
    auto big_copy = std::make_unique<DeviceCopy>(device, big.data(), int64_t(big.size() * sizeof(bfloat16)));
    if (big_copy->status().code() == StatusCode::out_of_memory &&
        std::count(backend.device_types.begin(), backend.device_types.end(), DeviceType::host)) {
      device = {};  // one device buffer cannot hold 4 GiB (opencl on PoCL); the backend also runs on host memory
      big_copy = std::make_unique<DeviceCopy>(device, big.data(), int64_t(big.size() * sizeof(bfloat16)));
    }
    ASSERT_TRUE(big_copy->status().ok()) << big_copy->status().message();
    bfloat16* big_data = static_cast<bfloat16*>(big_copy->data());
    const auto has_kernels = [&](Op op) {
      for (const KernelInfo& k : kernels())
        if (k.op == op && k.backend == backend.name) return true;
      return false;
    };
    ScopedOverrides force({backend.name, ""});
    ASSERT_TRUE(force.status().ok()) << force.status().message();
    std::vector<bfloat16> c(4, to_bfloat16(NAN));
    DeviceCopy c_copy(device, c.data(), int64_t(c.size() * sizeof(bfloat16)));
    ASSERT_TRUE(c_copy.status().ok()) << c_copy.status().message();
    GemmArgs args = gemm_args_row_major(DType::bf16, Transpose::no, Transpose::no, 2, 2, 8, 1.0, big_data, 8,
                                        big_data, 2, 0.0, c_copy.data(), 2);
    for (TensorRef* t : {&args.a, &args.b, &args.c}) t->device = device;
    args.a.offset = base;
    args.b.offset = base + 16;
    ASSERT_TRUE(gemm(args).ok());
    ASSERT_TRUE(c_copy.download().ok());
    EXPECT_EQ(to_float(c[0]), 10.0f);  // 3 + 7 ones
    EXPECT_EQ(to_float(c[3]), 8.0f);

    // conv2d and attention read the same far-away elements.
    if (!has_kernels(Op::conv2d)) continue;  // a backend whose conv2d/attention kernels are yet to come
    std::vector<bfloat16> out(4, to_bfloat16(NAN));
    DeviceCopy out_copy(device, out.data(), int64_t(out.size() * sizeof(bfloat16)));
    ASSERT_TRUE(out_copy.status().ok()) << out_copy.status().message();
    Conv2dArgs conv{image_tensor(big_data, DType::bf16, Layout::nchw, 1, 1, 2, 2, device),
                    TensorRef::contiguous(big_data, DType::bf16, {1, 1, 1, 1}, device),
                    image_tensor(out_copy.data(), DType::bf16, Layout::nchw, 1, 1, 2, 2, device)};
    conv.input.offset = base;
    conv.weight.offset = base + 32;
    ASSERT_TRUE(conv2d(conv).ok());
    ASSERT_TRUE(out_copy.download().ok());
    EXPECT_EQ(to_float(out[0]), 3.0f);
    EXPECT_EQ(to_float(out[1]), 1.0f);
    if (!has_kernels(Op::attention)) continue;
    AttentionArgs att{TensorRef::contiguous(big_data, DType::bf16, {1, 1, 1, 4}, device),
                      TensorRef::contiguous(big_data, DType::bf16, {1, 1, 1, 4}, device),
                      TensorRef::contiguous(big_data, DType::bf16, {1, 1, 1, 4}, device),
                      TensorRef::contiguous(out_copy.data(), DType::bf16, {1, 1, 1, 4}, device)};
    att.q.offset = att.k.offset = att.v.offset = base + 40;
    ASSERT_TRUE(attention(att).ok());
    ASSERT_TRUE(out_copy.download().ok());
    EXPECT_EQ(to_float(out[0]), 1.0f);
  }
}

TEST(Reference, HalfAndBfloat16ConversionsRoundToNearestEven) {
  EXPECT_EQ(to_float16(1.0f).bits, 0x3c00);
  EXPECT_EQ(to_float16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(to_float16(65520.0f).bits, 0x7c00);              // rounds to Inf
  EXPECT_EQ(to_float16(5.9604644775390625e-8f).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(to_float16(2.98023223876953125e-8f).bits, 0x0000);  // half of it: ties to even (0)
  EXPECT_EQ(to_float16(1.0f + 1.0f / 2048).bits, 0x3c00);       // tie -> even
  EXPECT_EQ(to_float16(1.0f + 3.0f / 2048).bits, 0x3c02);       // tie -> even (up)
  EXPECT_TRUE(std::isnan(to_float(to_float16(NAN))));
  for (uint32_t bits = 0; bits < 0x7c00; bits += 7) {
    const float16 h{uint16_t(bits)};
    EXPECT_EQ(to_float16(to_float(h)).bits, h.bits);
  }
  EXPECT_EQ(to_bfloat16(1.0f).bits, 0x3f80);
  EXPECT_EQ(to_bfloat16(bits_float(0x3f808000)).bits, 0x3f80);  // tie -> even
  EXPECT_EQ(to_bfloat16(bits_float(0x3f818000)).bits, 0x3f82);
  EXPECT_TRUE(std::isnan(to_float(to_bfloat16(bits_float(0x7f800001)))));
}

}  // namespace
}  // namespace anvil::test
