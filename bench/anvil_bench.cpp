// anvil-bench: anvil's kernels and the reference libraries on the same shapes, in one
// process, so that ratios (not absolute times) carry the result.
//
// Shapes come from bench/shapes/*.csv (shared with the tests). Every benchmark checks a
// sample of its first result against an f64 computation before it times anything and
// refuses to report a number for a wrong kernel. Run with
//   --benchmark_repetitions=10 --benchmark_enable_random_interleaving=true
// (what ci/run-provider does) so that implementations alternate and medians compare.
//
// Own flags: --shapes-dir=DIR, --ops=peak,gemm,conv2d,attention,
//            --max-reference-gflop=X (reference kernels above X GFLOP are not timed; 0.1),
//            --time-reference (also time anvil's reference kernel where it is not the
//            default, within that bound: ratios against it show a backend's speed-up)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "anvil/anvil.h"
#include "bench/shape_file.h"
#ifdef ANVIL_BENCH_ONEDNN
#include "bench/onednn_reference.h"
#endif

#ifdef ANVIL_BENCH_OPENBLAS
#include <cblas.h>
#endif
#ifdef ANVIL_BENCH_OPENCL
#include <unistd.h>

#include "backends/opencl/opencl_runtime.h"
#include "kernels/gemm/gemm_opencl.h"
#endif
#ifdef ANVIL_BENCH_CLBLAST
#include "bench/clblast_reference.h"
#endif
#include <omp.h>

namespace anvil::bench {
double fma_loop_avx512(int64_t iterations, float* sink);
}

namespace {

using Row = anvil::shapes::Row;

struct Options {
  std::string shapes_dir = ANVIL_SHAPES_DIR;
  std::string ops = "peak,gemm,conv2d,attention";
  double max_reference_gflop = 0.1;
  bool time_reference = false;
};
Options options;

std::vector<Row> load_shapes(const std::string& name, const std::vector<std::string>& tags) {
  return anvil::shapes::load(options.shapes_dir + "/" + name + ".csv", tags);
}
int64_t num(const Row& r, const char* key) { return std::stoll(r.at(key)); }

std::vector<float> random_floats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Sampled check of a result against f64 sums: `exact(i, &bound)` returns the exact value
// of output element i and the sum of absolute terms, which bounds f32 rounding error.
bool spot_check(const float* out, size_t count, const std::function<double(size_t, double*)>& exact,
                std::string* why) {
  std::mt19937_64 rng(7);
  for (int s = 0; s < 64 && count > 0; ++s) {
    const size_t i = size_t(rng() % count);
    double bound = 0;
    const double want = exact(i, &bound);
    if (!(std::abs(double(out[i]) - want) <= 1e-4 * bound + 1e-5)) {
      *why = "element " + std::to_string(i) + " is " + std::to_string(out[i]) + ", expected " + std::to_string(want);
      return false;
    }
  }
  return true;
}

bool too_large_for(const std::string& kernel, double flops) {
  return kernel.find(".reference") != std::string::npos && flops > options.max_reference_gflop * 1e9;
}

void set_flops(benchmark::State& state, double flops) {
  state.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

// The kernels to time for a call: the one anvil selects by default, then the one each
// other backend that runs here would take when forced (so that every backend of the build
// is compared with the same reference libraries). The reference backend is left out
// unless --time-reference asks for it; otherwise it is timed only when it is the default.
template <class Args> std::vector<std::string> kernels_to_time(const Args& args) {
  std::vector<std::string> names;
  std::string kernel;
  if (anvil::select_kernel(args, &kernel).ok()) names.push_back(kernel);
  for (const anvil::BackendInfo& backend : anvil::backends()) {
    if (!backend.available || (backend.name == "reference" && !options.time_reference)) continue;
    anvil::ScopedOverrides force({backend.name, ""});
    if (anvil::select_kernel(args, &kernel).ok() && std::find(names.begin(), names.end(), kernel) == names.end())
      names.push_back(kernel);
  }
  return names;
}

// A reference library's row: make() sets the call up (untimed), its first result is
// checked, then the call is timed.
void register_library_row(const std::string& name, double flops, std::function<bool(std::string*)> check,
                          std::function<std::function<void()>()> make) {
  benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    const std::function<void()> run = make();
    run();
    std::string why;
    if (!check(&why)) return state.SkipWithError(("wrong result: " + why).c_str());
    for (auto _ : state) run();
    set_flops(state, flops);
  })->Unit(benchmark::kMillisecond)->UseRealTime();
}

// An anvil kernel and a reference library alternated call by call (the order flips every
// pair), so that both see the same machine state. Medians of separate rows on a shared
// 2-vCPU machine drift by several percent between runs, which hides the few-percent goals
// (oneapi >= 0.98x the oneDNN primitive called directly); the ratio of each pair does
// not. Counters: paired_ratio (reference time / anvil time, the median over the pairs of
// one repetition), anvil_ms and reference_ms (medians); compare.py prints them as a row
// "<anvil kernel> vs <reference> (paired)". Both calls' first results are checked first.
void register_paired_row(const std::string& op_shape, const std::string& kernel, const std::string& reference,
                         std::function<bool(std::string*)> check, std::function<anvil::Status()> anvil_call,
                         std::function<std::function<void()>()> make_reference) {
  const std::string name = op_shape + "paired:" + kernel + " vs " + reference;
  benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    anvil::ScopedOverrides force({"", kernel});
    std::string why;
    if (!anvil_call().ok() || !check(&why)) return state.SkipWithError(("anvil: wrong result: " + why).c_str());
    const std::function<void()> reference_call = make_reference();
    reference_call();
    if (!check(&why)) return state.SkipWithError((reference + ": wrong result: " + why).c_str());
    using clock = std::chrono::steady_clock;
    const auto timed = [](const auto& call) {
      const auto start = clock::now();
      call();
      return std::chrono::duration<double>(clock::now() - start).count();
    };
    std::vector<double> anvil_s, reference_s, ratios;
    bool anvil_first = true;
    for (auto _ : state) {
      double a, r;
      if (anvil_first) {
        a = timed([&] { benchmark::DoNotOptimize(anvil_call()); });
        r = timed(reference_call);
      } else {
        r = timed(reference_call);
        a = timed([&] { benchmark::DoNotOptimize(anvil_call()); });
      }
      anvil_first = !anvil_first;
      state.SetIterationTime(a);
      anvil_s.push_back(a);
      reference_s.push_back(r);
      ratios.push_back(r / a);
    }
    const auto median = [](std::vector<double> v) {
      std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(v.size() / 2), v.end());
      return v[v.size() / 2];
    };
    state.counters["paired_ratio"] = median(ratios);
    state.counters["anvil_ms"] = 1e3 * median(anvil_s);
    state.counters["reference_ms"] = 1e3 * median(reference_s);
  })->Unit(benchmark::kMillisecond)->UseManualTime();
}

// ------------------------------------------------------------------ GEMM
struct GemmData {
  int64_t m, n, k;
  std::vector<float> a, b, c;
  GemmData(int64_t m_, int64_t n_, int64_t k_)
      : m(m_), n(n_), k(k_), a(random_floats(size_t(m * k), 1)), b(random_floats(size_t(k * n), 2)),
        c(size_t(m * n), NAN) {}
  anvil::GemmArgs args() {
    return anvil::gemm_args_row_major(anvil::DType::f32, anvil::Transpose::no, anvil::Transpose::no, m, n, k, 1.0,
                                      a.data(), k, b.data(), n, 0.0, c.data(), n);
  }
  bool check(std::string* why) const {
    return spot_check(c.data(), c.size(), [&](size_t idx, double* bound) {
      const int64_t i = int64_t(idx) / n, j = int64_t(idx) % n;
      double sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double t = double(a[size_t(i * k + p)]) * double(b[size_t(p * n + j)]);
        sum += t;
        *bound += std::abs(t);
      }
      return sum;
    }, why);
  }
};

void register_gemm() {
  for (const Row& row : load_shapes("gemm", {"small", "square", "llm", "skinny"})) {
    const int64_t m = num(row, "m"), n = num(row, "n"), k = num(row, "k");
    const std::string shape = std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k);
    const double flops = 2.0 * double(m) * double(n) * double(k);
    auto data = std::make_shared<GemmData>(m, n, k);
    for (const std::string& kernel : kernels_to_time(data->args())) {
      if (too_large_for(kernel, flops)) {
        std::fprintf(stderr, "anvil-bench: gemm %s: %s not timed (reference kernel, %.1f GFLOP)\n", shape.c_str(),
                     kernel.c_str(), flops * 1e-9);
        continue;
      }
      benchmark::RegisterBenchmark(("gemm/" + shape + "/anvil:" + kernel).c_str(), [=](benchmark::State& state) {
        anvil::ScopedOverrides force({"", kernel});
        std::string why;
        if (!anvil::gemm(data->args()).ok() || !data->check(&why)) return state.SkipWithError(("wrong result: " + why).c_str());
        for (auto _ : state) benchmark::DoNotOptimize(anvil::gemm(data->args()));
        set_flops(state, flops);
      })->Unit(benchmark::kMillisecond)->UseRealTime();
    }
    const auto check = [data](std::string* why) { return data->check(why); };
#ifdef ANVIL_BENCH_ONEDNN
    const auto onednn = [=] { return anvil::bench::onednn_matmul(m, n, k, data->a.data(), data->b.data(), data->c.data()); };
    register_library_row("gemm/" + shape + "/onednn", flops, check, onednn);
    for (const std::string& kernel : kernels_to_time(data->args()))
      if (kernel.find(".oneapi.") != std::string::npos)
        register_paired_row("gemm/" + shape + "/", kernel, "onednn", check,
                            [=, args = data->args()] { return anvil::gemm(args); }, onednn);
#endif
#ifdef ANVIL_BENCH_OPENBLAS
    register_library_row("gemm/" + shape + "/openblas", flops, check, [=]() -> std::function<void()> {
      return [=] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(m), int(n), int(k), 1.0f, data->a.data(), int(k),
                    data->b.data(), int(n), 0.0f, data->c.data(), int(n));
      };
    });
#endif
#ifdef ANVIL_BENCH_CLBLAST
    // CLBlast on the opencl backend's device: its own parameters, and its tuner's (PERFORMANCE.md).
    for (bool tuned : {false, true})
      register_library_row("gemm/" + shape + (tuned ? "/clblast-tuned" : "/clblast"), flops, check,
                           [=]() -> std::function<void()> {
                             std::fill(data->c.begin(), data->c.end(), NAN);  // the check must see CLBlast's result
                             std::string error;
                             auto run = anvil::bench::clblast_sgemm(m, n, k, data->a.data(), data->b.data(),
                                                                    data->c.data(), tuned, &error);
                             if (!run) std::fprintf(stderr, "anvil-bench: clblast: %s\n", error.c_str());
                             return run ? run : [] {};
                           });
#endif
  }
}

// The machine's FMA-loop peak with every thread (AVX-512 hosts); compare.py reports each
// anvil GEMM's throughput as a share of it.
void register_peak() {
  if (!__builtin_cpu_supports("avx512f")) return;
  benchmark::RegisterBenchmark("peak/fma-loop/avx512", [](benchmark::State& state) {
    constexpr int64_t kIterations = 1 << 22;
    const int threads = omp_get_max_threads();
    double flops = 0;
    for (auto _ : state) {
      float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : flops)
      flops += anvil::bench::fma_loop_avx512(kIterations, &sink);
      benchmark::DoNotOptimize(sink);
    }
    state.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsRate);
    state.counters["threads"] = threads;
  })->Unit(benchmark::kMillisecond)->UseRealTime();
}

// bf16 against anvil's own f32 on the same shape: the "anvil-f32" implementation acts as
// the reference, so the ratio is the bf16 speed-up (goal >= 1.8x with vdpbf16ps).
void register_gemm_bf16() {
  for (const Row& row : load_shapes("gemm", {"square"})) {
    const int64_t m = num(row, "m"), n = num(row, "n"), k = num(row, "k");
    const std::string shape = std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + "-bf16";
    const double flops = 2.0 * double(m) * double(n) * double(k);
    auto f32 = std::make_shared<GemmData>(m, n, k);
    struct Bf16 {
      std::vector<anvil::bfloat16> a, b, c;
    };
    auto half = std::make_shared<Bf16>();
    for (float x : f32->a) half->a.push_back(anvil::to_bfloat16(x));
    for (float x : f32->b) half->b.push_back(anvil::to_bfloat16(x));
    half->c.resize(size_t(m * n));
    auto args = [=] {
      return anvil::gemm_args_row_major(anvil::DType::bf16, anvil::Transpose::no, anvil::Transpose::no, m, n, k, 1.0,
                                        half->a.data(), k, half->b.data(), n, 0.0, half->c.data(), n);
    };
    std::string f32_kernel;
    if (!anvil::select_kernel(f32->args(), &f32_kernel).ok() || too_large_for(f32_kernel, flops)) continue;
    for (const std::string& kernel : kernels_to_time(args())) {
      if (too_large_for(kernel, flops)) continue;
      benchmark::RegisterBenchmark(("gemm/" + shape + "/anvil:" + kernel).c_str(), [=](benchmark::State& state) {
        anvil::ScopedOverrides force({"", kernel});
        if (!anvil::gemm(args()).ok()) return state.SkipWithError("gemm failed");
        std::vector<float> out(half->c.size());
        for (size_t i = 0; i < out.size(); ++i) out[i] = anvil::to_float(half->c[i]);
        std::string why;
        // Inputs are the bf16-rounded values; the check allows the output's bf16 rounding.
        const bool ok = spot_check(out.data(), out.size(), [&](size_t idx, double* bound) {
          const int64_t i = int64_t(idx) / n, j = int64_t(idx) % n;
          double sum = 0;
          for (int64_t p = 0; p < k; ++p) {
            const double t = double(anvil::to_float(half->a[size_t(i * k + p)])) * double(anvil::to_float(half->b[size_t(p * n + j)]));
            sum += t;
            *bound += std::abs(t);
          }
          *bound *= 40;  // 1e-4 * 40 = 4e-3 ~ bf16 half-ulp relative to the magnitude sum
          return sum;
        }, &why);
        if (!ok) return state.SkipWithError(("wrong result: " + why).c_str());
        for (auto _ : state) benchmark::DoNotOptimize(anvil::gemm(args()));
        set_flops(state, flops);
      })->Unit(benchmark::kMillisecond)->UseRealTime();
    }
    benchmark::RegisterBenchmark(("gemm/" + shape + "/anvil-f32").c_str(), [=](benchmark::State& state) {
      anvil::ScopedOverrides force({"", f32_kernel});
      for (auto _ : state) benchmark::DoNotOptimize(anvil::gemm(f32->args()));
      set_flops(state, flops);
    })->Unit(benchmark::kMillisecond)->UseRealTime();
  }
}

// ------------------------------------------------------------------ conv2d (NHWC, f32)
void register_conv2d() {
  for (int64_t batch : {1, 8})
    for (const Row& row : load_shapes("conv2d", {"resnet50"})) {
      const int64_t n = batch, c = num(row, "c"), h = num(row, "h"), w = num(row, "w"), k = num(row, "k");
      const int64_t r = num(row, "r"), s = num(row, "s"), stride = num(row, "stride"), pad = num(row, "pad");
      const int64_t p = anvil::conv_output_size(h, r, stride, pad, 1), q = anvil::conv_output_size(w, s, stride, pad, 1);
      const double flops = 2.0 * double(n * k * p * q) * double(c * r * s);
      struct Data {
        std::vector<float> in, wt, out;
      };
      auto d = std::make_shared<Data>(Data{random_floats(size_t(n * c * h * w), 3), random_floats(size_t(k * c * r * s), 4),
                                           std::vector<float>(size_t(n * k * p * q), NAN)});
      auto args = [=] {
        anvil::Conv2dArgs a;
        a.input = anvil::image_tensor(d->in.data(), anvil::DType::f32, anvil::Layout::nhwc, n, c, h, w);
        // weight (K, C, R, S) stored KRSC, as torch channels_last
        a.weight = anvil::TensorRef::strided(d->wt.data(), anvil::DType::f32, {k, c, r, s}, {r * s * c, 1, s * c, c});
        a.output = anvil::image_tensor(d->out.data(), anvil::DType::f32, anvil::Layout::nhwc, n, k, p, q);
        a.params = {stride, stride, pad, pad, 1, 1, 1};
        return a;
      };
      const std::string prefix = "conv2d/" + row.at("name") + "-n" + std::to_string(n) + "/";
      const auto check = [=](std::string* why) {
        return spot_check(d->out.data(), d->out.size(), [&](size_t idx, double* bound) {
          const int64_t kk = int64_t(idx) % k, x = int64_t(idx) / k % q, y = int64_t(idx) / (k * q) % p,
                        nn = int64_t(idx) / (k * q * p);
          double sum = 0;
          for (int64_t rr = 0; rr < r; ++rr)
            for (int64_t ss = 0; ss < s; ++ss) {
              const int64_t iy = y * stride - pad + rr, ix = x * stride - pad + ss;
              if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
              for (int64_t cc = 0; cc < c; ++cc) {
                const double t = double(d->in[size_t(((nn * h + iy) * w + ix) * c + cc)]) *
                                 double(d->wt[size_t(((kk * r + rr) * s + ss) * c + cc)]);
                sum += t;
                *bound += std::abs(t);
              }
            }
          return sum;
        }, why);
      };
      for (const std::string& kernel : kernels_to_time(args())) {
        const std::string name = prefix + "anvil:" + kernel;
        if (too_large_for(kernel, flops)) {
          std::fprintf(stderr, "anvil-bench: %s not timed (reference kernel, %.1f GFLOP)\n", name.c_str(), flops * 1e-9);
          continue;
        }
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
          anvil::ScopedOverrides force({"", kernel});
          std::string why;
          if (!anvil::conv2d(args()).ok()) return state.SkipWithError("conv2d failed");
          if (!check(&why)) return state.SkipWithError(("wrong result: " + why).c_str());
          for (auto _ : state) benchmark::DoNotOptimize(anvil::conv2d(args()));
          set_flops(state, flops);
        })->Unit(benchmark::kMillisecond)->UseRealTime();
      }
#ifdef ANVIL_BENCH_ONEDNN
      const auto onednn = [=](bool prepacked) {
        return [=] {
          return anvil::bench::onednn_conv_nhwc(n, c, h, w, k, r, s, stride, pad, d->in.data(), d->wt.data(),
                                                d->out.data(), prepacked);
        };
      };
      for (bool prepacked : {false, true})
        register_library_row(prefix + (prepacked ? "onednn-prepacked" : "onednn"), flops, check, onednn(prepacked));
      // anvil's oneapi conv reorders the caller's weights every call, as the unpacked row does.
      for (const std::string& kernel : kernels_to_time(args()))
        if (kernel.find(".oneapi.") != std::string::npos)
          register_paired_row(prefix, kernel, "onednn", check, [=, call = args()] { return anvil::conv2d(call); },
                              onednn(false));
#endif
    }
}

// ------------------------------------------------------------------ attention (f32)
void register_attention() {
  for (const Row& row : load_shapes("attention", {"bench"})) {
    const int64_t b = num(row, "batch"), h = num(row, "heads"), hkv = num(row, "kv_heads"), lq = num(row, "seq_q"),
                  lk = num(row, "seq_k"), e = num(row, "head_dim");
    const bool causal = num(row, "causal") != 0;
    const double flops = 4.0 * double(b * h) * double(lq) * double(lk) * double(e) * (causal ? 0.5 : 1.0);
    struct Data {
      std::vector<float> q, k, v, out;
    };
    auto d = std::make_shared<Data>(Data{random_floats(size_t(b * h * lq * e), 5), random_floats(size_t(b * hkv * lk * e), 6),
                                         random_floats(size_t(b * hkv * lk * e), 7), std::vector<float>(size_t(b * h * lq * e), NAN)});
    auto args = [=] {
      anvil::AttentionArgs a;
      a.q = anvil::TensorRef::contiguous(d->q.data(), anvil::DType::f32, {b, h, lq, e});
      a.k = anvil::TensorRef::contiguous(d->k.data(), anvil::DType::f32, {b, hkv, lk, e});
      a.v = anvil::TensorRef::contiguous(d->v.data(), anvil::DType::f32, {b, hkv, lk, e});
      a.out = anvil::TensorRef::contiguous(d->out.data(), anvil::DType::f32, {b, h, lq, e});
      a.causal = causal;
      return a;
    };
    for (const std::string& kernel : kernels_to_time(args())) {
      const std::string name = "attention/b" + std::to_string(b) + "h" + std::to_string(h) + "s" + std::to_string(lq) +
                               "d" + std::to_string(e) + (causal ? "c" : "") + "/anvil:" + kernel;
      if (too_large_for(kernel, flops)) {
        std::fprintf(stderr, "anvil-bench: %s not timed (reference kernel, %.1f GFLOP)\n", name.c_str(), flops * 1e-9);
        continue;
      }
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
        anvil::ScopedOverrides force({"", kernel});
        if (!anvil::attention(args()).ok()) return state.SkipWithError("attention failed");
        for (auto _ : state) benchmark::DoNotOptimize(anvil::attention(args()));
        set_flops(state, flops);
      })->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
}

#ifdef ANVIL_BENCH_OPENCL
// The opencl program cache: compiling gemm_opencl.cl from source (cold: a unique define
// keeps the driver's own cache out of it) vs loading anvil's cached binary from disk.
// compare.py reports the ratio compile / load.
void register_opencl_program_cache() {
  if (!anvil::opencl::available().ok()) return;
  const std::string options =
      anvil::opencl_gemm::build_options(anvil::opencl_gemm::config_for(0), anvil::DType::f32);
  benchmark::RegisterBenchmark("opencl_program/gemm_opencl/compile-from-source", [=](benchmark::State& state) {
    static int nonce = 0;
    for (auto _ : state) {
      cl_program program = nullptr;
      const std::string cold =
          options + " -DANVIL_COLD_BUILD=" + std::to_string(int64_t(::getpid()) * 1000000 + nonce++);
      const anvil::Status s = anvil::opencl::build_program(0, "gemm_opencl", cold, &program, anvil::opencl::CacheUse::uncached);
      if (!s.ok()) return state.SkipWithError(s.message().c_str());
      clReleaseProgram(program);
    }
  })->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
  benchmark::RegisterBenchmark("opencl_program/gemm_opencl/anvil:disk-cache-load", [=](benchmark::State& state) {
    cl_program program = nullptr;
    if (!anvil::opencl::build_program(0, "gemm_opencl", options, &program).ok())  // makes sure the file exists
      return state.SkipWithError("build failed");
    for (auto _ : state) {
      state.PauseTiming();
      anvil::opencl::clear_memory_cache();
      const int64_t hits = anvil::opencl::cache_stats().disk_hits;
      state.ResumeTiming();
      const anvil::Status s = anvil::opencl::build_program(0, "gemm_opencl", options, &program);
      if (!s.ok()) return state.SkipWithError(s.message().c_str());
      if (anvil::opencl::cache_stats().disk_hits != hits + 1) return state.SkipWithError("not a disk cache hit");
    }
  })->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
}

// What this process's opencl program cache did, for the log (a second run of anvil-bench
// loads every program from disk).
void report_opencl_program_cache() {
  if (!anvil::opencl::available().ok()) return;
  const anvil::opencl::CacheStats s = anvil::opencl::cache_stats();
  std::fprintf(stderr,
               "anvil-bench: opencl program cache (%s): %lld programs loaded from disk (%.1f ms each), %lld compiled "
               "from source (%.1f ms each), %lld cache files rejected\n",
               anvil::opencl::cache_dir().empty() ? "disk cache off" : anvil::opencl::cache_dir().c_str(),
               static_cast<long long>(s.disk_hits), s.disk_hits ? s.disk_load_ms / double(s.disk_hits) : 0.0,
               static_cast<long long>(s.builds), s.builds ? s.build_ms / double(s.builds) : 0.0,
               static_cast<long long>(s.disk_rejected));
}
#endif

bool take_flag(const std::string& arg, const std::string& name, std::string* value) {
  const std::string prefix = "--" + name + "=";
  if (arg.rfind(prefix, 0) != 0) return false;
  *value = arg.substr(prefix.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
#ifdef ANVIL_BENCH_OPENBLAS
  // OpenBLAS 0.3.21 takes CPUs it does not know (Sapphire Rapids) for a Prescott and runs
  // SSE3 kernels; the core in use goes into the output so that a ratio is read with it
  // (ci/run-provider sets OPENBLAS_CORETYPE from the CPU's flags).
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
#endif
  for (int i = 1; i < argc; ++i) {
    std::string value;
    if (take_flag(argv[i], "shapes-dir", &value)) options.shapes_dir = value;
    else if (take_flag(argv[i], "ops", &value)) options.ops = value;
    else if (take_flag(argv[i], "max-reference-gflop", &value)) options.max_reference_gflop = std::stod(value);
    else if (std::string(argv[i]) == "--time-reference") options.time_reference = true;
    else {
      std::fprintf(stderr, "anvil-bench: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  const auto wants = [](const char* op) { return ("," + options.ops + ",").find(std::string(",") + op + ",") != std::string::npos; };
  if (wants("peak")) register_peak();
  if (wants("gemm")) register_gemm();
  if (wants("gemm")) register_gemm_bf16();
  if (wants("conv2d")) register_conv2d();
  if (wants("attention")) register_attention();
#ifdef ANVIL_BENCH_OPENCL
  if (wants("gemm")) register_opencl_program_cache();
#endif
  benchmark::RunSpecifiedBenchmarks();
#ifdef ANVIL_BENCH_OPENCL
  report_opencl_program_cache();
#endif
  benchmark::Shutdown();
  return 0;
}
