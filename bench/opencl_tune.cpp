// anvil-opencl-tune: searches the opencl GEMM's parameter space (gemm_opencl.cl defines)
// for one device and stores the fastest correct configuration in the device's tuning
// database (backends/opencl/opencl_tuning.h), which then overrides the shipped defaults.
//
//   anvil-opencl-tune [--device=I] [--size=N[,N...]] [--seconds=S] [--max-configs=C] [--dry-run]
//
// Each configuration is compiled (through the program cache), checked against anvil's
// host GEMM on the first size, then timed (median of --reps runs per size, after a
// warm-up); the score is the mean GFLOP/s over the sizes. Progress is printed per
// configuration; the search stops after --seconds (default 600) or --max-configs, and
// keeps the best found so far. The current configuration is measured first, so a stored
// result is never slower than what the device had.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "anvil/anvil.h"
#include "backends/opencl/opencl_runtime.h"
#include "backends/opencl/opencl_tuning.h"
#include "kernels/gemm/gemm_opencl.h"

namespace {

using anvil::Status;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Options {
  int device = 0;
  std::vector<int64_t> sizes = {1024};
  double seconds = 600;
  int max_configs = 1 << 30;
  int reps = 5;
  bool dry_run = false;
};

bool take(const std::string& arg, const char* name, std::string* value) {
  const std::string prefix = std::string("--") + name + "=";
  if (arg.rfind(prefix, 0) != 0) return false;
  *value = arg.substr(prefix.size());
  return true;
}

// One square problem on device buffers (timing without host wraps).
struct Problem {
  int64_t n;
  std::vector<float> a, b, want;
  void *da = nullptr, *db = nullptr, *dc = nullptr;
  anvil::Device dev;

  Problem(int64_t size, int device) : n(size), dev{anvil::DeviceType::opencl, device} {
    std::mt19937_64 rng(11);
    std::normal_distribution<float> d(0.0f, 1.0f);
    a.resize(size_t(n * n));
    b.resize(size_t(n * n));
    for (float& x : a) x = d(rng);
    for (float& x : b) x = d(rng);
  }
  ~Problem() {
    for (void* p : {da, db, dc}) (void)anvil::device_free(dev, p);
  }
  Status upload() {
    const int64_t bytes = n * n * 4;
    ANVIL_RETURN_IF_ERROR(anvil::device_malloc(dev, bytes, &da));
    ANVIL_RETURN_IF_ERROR(anvil::device_malloc(dev, bytes, &db));
    ANVIL_RETURN_IF_ERROR(anvil::device_malloc(dev, bytes, &dc));
    ANVIL_RETURN_IF_ERROR(anvil::copy_to_device(dev, da, a.data(), bytes));
    return anvil::copy_to_device(dev, db, b.data(), bytes);
  }
  anvil::GemmArgs args(void* pa, void* pb, void* pc, anvil::Device device) const {
    anvil::GemmArgs g;
    g.a = anvil::TensorRef::contiguous(pa, anvil::DType::f32, {n, n}, device);
    g.b = anvil::TensorRef::contiguous(pb, anvil::DType::f32, {n, n}, device);
    g.c = anvil::TensorRef::contiguous(pc, anvil::DType::f32, {n, n}, device);
    return g;
  }
  // The host result (anvil's default host kernel) that every configuration must match.
  Status reference() {
    want.assign(size_t(n * n), 0.0f);
    return anvil::gemm(args(a.data(), b.data(), want.data(), {}));
  }
  // Max error relative to the magnitude of the row's terms, over sampled elements.
  Status check(const anvil::opencl_gemm::Config& cfg) {
    std::vector<float> got(size_t(n * n), NAN);
    ANVIL_RETURN_IF_ERROR(anvil::copy_to_device(dev, dc, got.data(), n * n * 4));
    ANVIL_RETURN_IF_ERROR(anvil::opencl_gemm::run_with_config(args(da, db, dc, dev), cfg));
    ANVIL_RETURN_IF_ERROR(anvil::copy_to_host(dev, got.data(), dc, n * n * 4));
    for (size_t i = 0; i < got.size(); i += 97) {
      if (!(std::abs(got[i] - want[i]) <= 1e-3f * (1.0f + std::abs(want[i]))))
        return {anvil::StatusCode::runtime_error, "wrong result at element " + std::to_string(i) + ": " +
                                                      std::to_string(got[i]) + " vs " + std::to_string(want[i])};
    }
    return Status::Ok();
  }
  // Median milliseconds of `reps` runs after one warm-up.
  Status time(const anvil::opencl_gemm::Config& cfg, int reps, double* ms) {
    const anvil::GemmArgs g = args(da, db, dc, dev);
    ANVIL_RETURN_IF_ERROR(anvil::opencl_gemm::run_with_config(g, cfg));
    ANVIL_RETURN_IF_ERROR(anvil::synchronize(dev));
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      ANVIL_RETURN_IF_ERROR(anvil::opencl_gemm::run_with_config(g, cfg));
      ANVIL_RETURN_IF_ERROR(anvil::synchronize(dev));
      t.push_back(seconds_since(t0) * 1e3);
    }
    std::sort(t.begin(), t.end());
    *ms = t[t.size() / 2];
    return Status::Ok();
  }
};

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string v;
    if (take(arg, "device", &v)) opt.device = std::stoi(v);
    else if (take(arg, "seconds", &v)) opt.seconds = std::stod(v);
    else if (take(arg, "max-configs", &v)) opt.max_configs = std::stoi(v);
    else if (take(arg, "reps", &v)) opt.reps = std::max(1, std::stoi(v));
    else if (take(arg, "size", &v)) {
      opt.sizes.clear();
      size_t pos = 0;
      while (pos < v.size()) {
        const size_t comma = v.find(',', pos);
        opt.sizes.push_back(std::stoll(v.substr(pos, comma - pos)));
        pos = comma == std::string::npos ? v.size() : comma + 1;
      }
    } else if (arg == "--dry-run") opt.dry_run = true;
    else {
      std::fprintf(stderr,
                   "usage: anvil-opencl-tune [--device=I] [--size=N[,N...]] [--seconds=S] [--max-configs=C] "
                   "[--reps=R] [--dry-run]\n");
      return 2;
    }
  }
  const anvil::opencl::DeviceInfo* info = nullptr;
  if (Status s = anvil::opencl::device_info(opt.device, &info); !s.ok()) {
    std::fprintf(stderr, "anvil-opencl-tune: %s\n", s.message().c_str());
    return 1;
  }
  std::string origin;
  const anvil::opencl_gemm::Config current = anvil::opencl_gemm::config_for(opt.device, &origin);
  std::vector<anvil::opencl_gemm::Config> space = anvil::opencl_gemm::search_space(*info);
  space.erase(std::remove(space.begin(), space.end(), current), space.end());
  space.insert(space.begin(), current);
  if (int(space.size()) > opt.max_configs) space.resize(size_t(opt.max_configs));
  std::printf("device: %s\ncurrent: %s  [%s]\nsearch: %zu configurations, sizes", info->describe().c_str(),
              current.str().c_str(), origin.c_str(), space.size());
  for (int64_t s : opt.sizes) std::printf(" %lld", static_cast<long long>(s));
  std::printf(", at most %.0f s\n", opt.seconds);

  std::vector<std::unique_ptr<Problem>> problems;
  for (int64_t s : opt.sizes) {
    problems.push_back(std::make_unique<Problem>(s, opt.device));
    Status st = problems.back()->upload();
    if (st.ok() && problems.size() == 1) st = problems.back()->reference();
    if (!st.ok()) {
      std::fprintf(stderr, "anvil-opencl-tune: setup failed: %s\n", st.message().c_str());
      return 1;
    }
  }
  const auto start = Clock::now();
  double best_score = 0, current_score = 0;
  anvil::opencl_gemm::Config best = current;
  size_t tried = 0;
  for (const auto& cfg : space) {
    if (seconds_since(start) > opt.seconds) {
      std::printf("time bound of %.0f s reached after %zu of %zu configurations\n", opt.seconds, tried, space.size());
      break;
    }
    ++tried;
    const auto t0 = Clock::now();
    Status st = problems[0]->check(cfg);
    const double compile_s = seconds_since(t0);
    double score = 0;
    std::string detail;
    for (auto& p : problems) {
      if (!st.ok()) break;
      double ms = 0;
      st = p->time(cfg, opt.reps, &ms);
      const double gflops = 2.0 * double(p->n) * double(p->n) * double(p->n) / (ms * 1e6);
      score += gflops / double(problems.size());
      char buf[64];
      std::snprintf(buf, sizeof buf, " %lld:%.1f", static_cast<long long>(p->n), gflops);
      detail += buf;
    }
    if (st.ok() && score > best_score) {
      best_score = score;
      best = cfg;
    }
    if (tried == 1) current_score = st.ok() ? score : 0;
    std::printf("[%3zu/%zu %5.0fs] %-62s %s%s (first run %.0f ms; best %.1f GFLOP/s)\n", tried, space.size(),
                seconds_since(start), cfg.str().c_str(), st.ok() ? "GFLOP/s" : "FAILED: ",
                st.ok() ? detail.c_str() : st.message().c_str(), compile_s * 1e3, best_score);
    std::fflush(stdout);
  }
  // The first measurement of a process runs cold (thread start-up, first page faults): time
  // the current and the best configuration again, side by side, before deciding.
  const auto score_of = [&](const anvil::opencl_gemm::Config& cfg) {
    double score = 0;
    for (auto& p : problems) {
      double ms = 0;
      if (!p->time(cfg, opt.reps, &ms).ok()) return 0.0;
      score += 2.0 * double(p->n) * double(p->n) * double(p->n) / (ms * 1e6) / double(problems.size());
    }
    return score;
  };
  if (!(best == current)) {
    current_score = score_of(current);
    best_score = score_of(best);
    if (best_score < current_score * 1.03) {
      std::printf("re-measured: %s %.1f GFLOP/s is not 3%% faster than the current %.1f; keeping the current\n",
                  best.str().c_str(), best_score, current_score);
      best = current;
      best_score = current_score;
    }
  }
  std::printf("best: %s  %.1f GFLOP/s (current %.1f)\n", best.str().c_str(), best_score, current_score);
  if (opt.dry_run) return 0;
  char note[160];
  std::snprintf(note, sizeof note, "anvil-opencl-tune: %.1f GFLOP/s f32 at sizes", best_score);
  std::string full = note;
  for (int64_t s : opt.sizes) full += " " + std::to_string(s);
  full += ", " + std::to_string(tried) + " configurations tried";
  if (Status s = anvil::opencl::store_params(opt.device, "gemm", best.params(), full); !s.ok()) {
    std::fprintf(stderr, "anvil-opencl-tune: %s\n", s.message().c_str());
    return 1;
  }
  std::printf("stored in %s\n", anvil::opencl::tuning_file(opt.device).c_str());
  return 0;
}
