// libFuzzer target: descriptor validation and tiny runs of every op, checked against the
// reference. The input bytes choose an op, dtype, shapes, strides, offsets, parameters
// and possibly one corruption (bad rank, negative or huge stride, mismatched dim, null
// data, aliasing output). Either validation refuses the call, or the selected kernel's
// result, on a backend the input also chooses among those that run here, must equal the
// f64 reference's (GEMM/conv2d: exactly, on small integers;
// attention: within 1e-3) and nothing outside the output may change. Built with
// -fsanitize=fuzzer,address,undefined (CMake option ANVIL_BUILD_FUZZERS, clang).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "anvil/anvil.h"

namespace {

struct Bytes {
  const uint8_t* p;
  size_t n;
  uint8_t u8() {
    if (!n) return 0;
    --n;
    return *p++;
  }
  int64_t range(int64_t lo, int64_t hi) { return lo + int64_t(u8()) % (hi - lo + 1); }
};

constexpr anvil::DType kDtypes[] = {anvil::DType::f32, anvil::DType::f16, anvil::DType::bf16};

// A buffer of small integers in `dtype`, plus a copy to detect stray writes. It holds
// twice the elements the view needs plus slack: a corrupted shape that validation must
// accept (a bigger but self-consistent view) still stays inside the allocation.
struct Buffer {
  anvil::DType dtype;
  std::vector<unsigned char> bytes, before;
  Buffer(anvil::DType d, int64_t needed, Bytes& in) : dtype(d), bytes(size_t((2 * needed + 64) * anvil::dtype_size(d))) {
    for (int64_t i = 0; i < 2 * needed + 64; ++i) set(i, double(int(in.range(0, 6)) - 3));
    before = bytes;
  }
  void set(int64_t i, double v) {
    void* q = bytes.data() + i * anvil::dtype_size(dtype);
    if (dtype == anvil::DType::f32) *static_cast<float*>(q) = float(v);
    else if (dtype == anvil::DType::f16) *static_cast<anvil::float16*>(q) = anvil::to_float16(float(v));
    else *static_cast<anvil::bfloat16*>(q) = anvil::to_bfloat16(float(v));
  }
  double get(int64_t i) const {
    const void* q = bytes.data() + i * anvil::dtype_size(dtype);
    if (dtype == anvil::DType::f32) return *static_cast<const float*>(q);
    if (dtype == anvil::DType::f16) return anvil::to_float(*static_cast<const anvil::float16*>(q));
    return anvil::to_float(*static_cast<const anvil::bfloat16*>(q));
  }
  void* data() { return bytes.data(); }
};

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_ops: %s\n", what);
  std::abort();
}

// One corruption of a TensorRef, or none. Each must be refused, except a grown dim that
// happens to stay consistent (the slack in Buffer covers it).
void corrupt(anvil::TensorRef& t, Bytes& in) {
  constexpr int kBadRanks[] = {0, 1, 5, 6};  // invalid for every op
  switch (in.range(0, 15)) {
    case 0: t.rank = kBadRanks[in.range(0, 3)]; break;
    case 1: t.strides[size_t(in.range(0, 3))] = -in.range(1, 5); break;
    case 2: t.strides[size_t(in.range(0, 3))] = int64_t(1) << 62; break;  // byte extent overflows
    case 3: t.shape[size_t(in.range(0, 3))] += in.range(1, 3); break;
    case 4: t.data = nullptr; break;
    case 5: t.offset = -in.range(1, 3); break;
    default: break;  // most inputs stay valid
  }
}

// Runs `call` with the default kernel and with the f64-accumulating reference on copies;
// outputs must agree (|a - b| <= tol * (1 + |b|)) where both are finite.
template <class Call>
void compare(Buffer& out, Call call, const char* op, double tol, const std::vector<Buffer*>& inputs) {
  Buffer ref_out = out;
  const anvil::Status got = call(out.data());
  anvil::Status want;
  {
    const std::string name = std::string(op) + "." + anvil::dtype_name(out.dtype) + ".reference";
    anvil::ScopedOverrides force({"", name});
    want = call(ref_out.data());
  }
  // The forced backend may have no kernel for a valid call; it must say so and write nothing.
  const bool refused = !got.ok() && got.code() == anvil::StatusCode::unsupported && want.ok();
  if (got.ok() != want.ok() && !refused) {
    std::fprintf(stderr, "selected kernel: %s\nreference: %s\n", got.ok() ? "ok" : got.message().c_str(),
                 want.ok() ? "ok" : want.message().c_str());
    fail("selected kernel and reference disagree on validity");
  }
  for (Buffer* b : inputs)
    if (b->bytes != b->before) fail("an input was written");
  if (!got.ok()) {
    if (out.bytes != out.before) fail("output written on error");
    return;
  }
  for (size_t i = 0; i < out.bytes.size() / size_t(anvil::dtype_size(out.dtype)); ++i) {
    const double a = out.get(int64_t(i)), b = ref_out.get(int64_t(i));
    if (std::isnan(a) != std::isnan(b)) fail("NaN mismatch");
    if (!std::isnan(a) && std::abs(a - b) > tol * (1 + std::abs(b))) fail("result differs from the reference");
  }
}

void fuzz_gemm(Bytes& in) {
  const anvil::DType dt = kDtypes[in.range(0, 2)];
  const int64_t batch = in.range(1, 3), m = in.range(0, 19), n = in.range(0, 40), k = in.range(0, 19);
  const bool ta = in.range(0, 1), tb = in.range(0, 1);
  const int64_t pad = in.range(0, 2), off = in.range(0, 3);
  const int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad;
  const int64_t a_rows = ta ? k : m, b_rows = tb ? n : k;
  Buffer a(dt, batch * a_rows * std::max<int64_t>(lda, 1) + off + 1, in), b(dt, batch * b_rows * std::max<int64_t>(ldb, 1) + 1, in);
  // c has room for a batch grown by corrupt(): with a and b both broadcast (batch 1) that
  // call is valid and writes every batch entry.
  Buffer c(dt, (batch + 3) * m * n + 1, in), bias(dt, n + 1, in);
  const double beta = double(in.range(0, 2));
  const bool with_bias = in.range(0, 1);
  auto call = [&](void* c_data) {
    anvil::GemmArgs g;
    g.a = ta ? anvil::TensorRef::strided(a.data(), dt, {batch, m, k}, {a_rows * lda, 1, lda})
             : anvil::TensorRef::strided(a.data(), dt, {batch, m, k}, {a_rows * lda, lda, 1});
    g.a.offset = off;
    g.b = tb ? anvil::TensorRef::strided(b.data(), dt, {batch, k, n}, {b_rows * ldb, 1, ldb})
             : anvil::TensorRef::strided(b.data(), dt, {batch, k, n}, {b_rows * ldb, ldb, 1});
    g.c = anvil::TensorRef::contiguous(c_data, dt, {batch, m, n});
    if (with_bias) g.bias = anvil::TensorRef::contiguous(bias.data(), dt, {n});
    g.beta = beta;
    return g;
  };
  Bytes saved = in;
  auto run = [&](void* c_data) {
    Bytes local = saved;
    anvil::GemmArgs g = call(c_data);
    corrupt(local.range(0, 2) == 0 ? g.a : local.range(0, 1) ? g.b : g.c, local);
    return anvil::gemm(g);
  };
  compare(c, run, "gemm", 0.0, {&a, &b, &bias});
}

void fuzz_conv2d(Bytes& in) {
  const anvil::DType dt = kDtypes[in.range(0, 2)];
  const int64_t groups = in.range(1, 3);
  const int64_t n = in.range(0, 2), c = groups * in.range(0, 3), h = in.range(1, 9), w = in.range(1, 9);
  const int64_t k = groups * in.range(0, 3), r = in.range(1, 4), s = in.range(1, 4);
  anvil::Conv2dParams p{in.range(0, 3), in.range(1, 3), in.range(-1, 2), in.range(0, 2), in.range(1, 2), in.range(0, 2),
                        groups + (in.range(0, 9) == 0 ? 1 : 0)};
  const bool nhwc = in.range(0, 1);
  const int64_t oh = std::max<int64_t>(anvil::conv_output_size(h, r, std::max<int64_t>(p.stride_h, 1), std::max<int64_t>(p.pad_h, 0), p.dilation_h), 0);
  const int64_t ow = std::max<int64_t>(anvil::conv_output_size(w, s, std::max<int64_t>(p.stride_w, 1), std::max<int64_t>(p.pad_w, 0), std::max<int64_t>(p.dilation_w, 1)), 0);
  Buffer x(dt, n * c * h * w + 1, in), wt(dt, k * std::max<int64_t>(c / groups, 1) * r * s + 1, in), y(dt, n * k * oh * ow + 1, in);
  const auto layout = nhwc ? anvil::Layout::nhwc : anvil::Layout::nchw;
  Bytes saved = in;
  auto run = [&](void* y_data) {
    Bytes local = saved;
    anvil::Conv2dArgs a{anvil::image_tensor(x.data(), dt, layout, n, c, h, w),
                        anvil::TensorRef::contiguous(wt.data(), dt, {k, groups ? c / groups : 0, r, s}),
                        anvil::image_tensor(y_data, dt, layout, n, k, oh, ow), std::nullopt, p};
    corrupt(local.range(0, 1) ? a.input : a.weight, local);
    if (std::getenv("ANVIL_FUZZ_VERBOSE")) std::fputs(anvil::explain(a).c_str(), stderr);
    return anvil::conv2d(a);
  };
  compare(y, run, "conv2d", 0.0, {&x, &wt});
}

void fuzz_attention(Bytes& in) {
  const anvil::DType dt = kDtypes[in.range(0, 2)];
  const int64_t b = in.range(0, 2), hkv = in.range(1, 2), h = hkv * in.range(1, 3), lq = in.range(0, 20),
                lk = in.range(0, 20), e = in.range(1, 40);
  const bool causal = in.range(0, 1);
  Buffer q(dt, b * h * lq * e + 1, in), kk(dt, b * hkv * lk * e + 1, in), v(dt, b * hkv * lk * e + 1, in);
  Buffer out(dt, b * h * lq * e + 1, in);
  Bytes saved = in;
  auto run = [&](void* out_data) {
    Bytes local = saved;
    anvil::AttentionArgs a{anvil::TensorRef::contiguous(q.data(), dt, {b, h, lq, e}),
                           anvil::TensorRef::contiguous(kk.data(), dt, {b, hkv, lk, e}),
                           anvil::TensorRef::contiguous(v.data(), dt, {b, hkv, lk, e}),
                           anvil::TensorRef::contiguous(out_data, dt, {b, h, lq, e})};
    a.causal = causal;
    corrupt(local.range(0, 1) ? a.k : a.out, local);
    return anvil::attention(a);
  };
  // bf16 rounding of the output: a few ulp at bf16's 8 bits.
  compare(out, run, "attention", dt == anvil::DType::f32 ? 1e-4 : 2e-2, {&q, &kk, &v});
}

}  // namespace

// The backends (other than the reference) this build can run here.
const std::vector<std::string>& backends_under_test() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const anvil::BackendInfo& b : anvil::backends())
      if (b.available && b.name != "reference") out.push_back(b.name);
    if (out.empty()) out.push_back("reference");
    return out;
  }();
  return names;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in{data, size};
  const auto& backends = backends_under_test();
  anvil::ScopedOverrides backend({backends[size_t(in.range(0, int64_t(backends.size()) - 1))], ""});
  switch (in.range(0, 2)) {
    case 0: fuzz_gemm(in); break;
    case 1: fuzz_conv2d(in); break;
    default: fuzz_attention(in); break;
  }
  return 0;
}
