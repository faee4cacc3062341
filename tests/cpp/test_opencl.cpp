// The opencl backend beyond the shared kernel sweeps (test_kernels.cpp runs those on the
// device through DeviceCopy): errors that name the call, device selection, the program
// cache against corrupt, truncated, stale, unsafe and concurrently written files, the
// tuning database, host operands (zero-copy wraps: the torch CPU-tensor path), every
// kernel configuration on tile edges, bad input on opencl buffers, and a 2^31 offset.
// Suites are named opencl_* so that --gtest_filter='*opencl*' selects them.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "anvil/anvil.h"
#include "backends/opencl/opencl_runtime.h"
#include "backends/opencl/opencl_tuning.h"
#include "kernels/gemm/gemm_opencl.h"

namespace anvil::test {
namespace {

#define SKIP_WITHOUT_OPENCL()                                                  \
  if (const Status why = opencl::available(); !why.ok()) {                     \
    GTEST_SKIP() << "no OpenCL device: " << why.message();                     \
  }

std::string temp_dir(const std::string& tag) {
  char tmpl[] = "/tmp/anvil-opencl-test-XXXXXX";
  const char* dir = ::mkdtemp(tmpl);
  return dir ? std::string(dir) + "/" + tag : "";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& data, mode_t mode = 0600) {
  ::unlink(path.c_str());
  {
    std::ofstream out(path, std::ios::binary);
    out << data;
  }
  ::chmod(path.c_str(), mode);
}

// Points the disk cache at a fresh folder for one test, then back to the default.
class ScopedCacheDir {
 public:
  explicit ScopedCacheDir(const std::string& tag) : dir_(temp_dir(tag)) {
    opencl::set_cache_dir(dir_);
    opencl::clear_memory_cache();
  }
  ~ScopedCacheDir() {
    opencl::set_cache_dir("");
    opencl::clear_memory_cache();
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

// ------------------------------------------------------------------ runtime
TEST(opencl_runtime, ErrorsNameTheCallAndTheError) {
  const Status s = opencl::check(CL_INVALID_WORK_GROUP_SIZE, "clEnqueueNDRangeKernel (gemm_tiles)");
  EXPECT_EQ(s.code(), StatusCode::runtime_error);
  EXPECT_NE(s.message().find("clEnqueueNDRangeKernel (gemm_tiles)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("CL_INVALID_WORK_GROUP_SIZE (-54)"), std::string::npos) << s.message();
  EXPECT_EQ(opencl::check(CL_MEM_OBJECT_ALLOCATION_FAILURE, "clCreateBuffer").code(), StatusCode::out_of_memory);
  EXPECT_TRUE(opencl::check(CL_SUCCESS, "x").ok());
  EXPECT_STREQ(opencl::error_name(-12345), "CL_UNKNOWN_ERROR");
}

TEST(opencl_runtime, DevicePropertiesAreReadAtRunTime) {
  SKIP_WITHOUT_OPENCL();
  ASSERT_GT(opencl::device_count(), 0);
  const opencl::DeviceInfo* info = nullptr;
  ASSERT_TRUE(opencl::device_info(0, &info).ok());
  EXPECT_FALSE(info->name.empty());
  EXPECT_FALSE(info->driver_version.empty());
  EXPECT_GT(info->compute_units, 0);
  EXPECT_GT(info->max_work_group_size, 0);
  EXPECT_GT(info->max_alloc_bytes, 0);
  EXPECT_NE(opencl::describe().find(info->name), std::string::npos);
  const Status missing = opencl::device_info(opencl::device_count(), &info);
  EXPECT_EQ(missing.code(), StatusCode::invalid_argument);
  EXPECT_NE(missing.message().find("does not exist"), std::string::npos);
}

TEST(opencl_runtime, DeviceSelectionIsValidated) {
  SKIP_WITHOUT_OPENCL();
  const Status bad = opencl::select_device("no-such-opencl-device-xyz");
  EXPECT_EQ(bad.code(), StatusCode::invalid_argument);
  EXPECT_NE(bad.message().find("no OpenCL device matches"), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("devices: 0 = "), std::string::npos) << bad.message();  // lists the valid ones
  // The default device itself is always a valid choice, before or after first use.
  const opencl::DeviceInfo* info = nullptr;
  ASSERT_TRUE(opencl::device_info(0, &info).ok());
  EXPECT_TRUE(opencl::select_device(std::to_string(info->platform_index) + ":" + std::to_string(info->device_index)).ok());
  EXPECT_TRUE(opencl::select_device(info->type_name()).ok() || opencl::device_count() > 1);
}

// ANVIL_OPENCL_DEVICE=bogus (ctest opencl_device_env_invalid): the backend is unavailable
// with a message that lists the devices, and a forced call fails with it, never silently
// running elsewhere.
TEST(opencl_env, InvalidDeviceIsAnErrorListingDevices) {
  const char* env = std::getenv("ANVIL_OPENCL_DEVICE");
  if (!env) GTEST_SKIP() << "run by ctest with ANVIL_OPENCL_DEVICE set";
  const Status s = opencl::available();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("ANVIL_OPENCL_DEVICE"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(env), std::string::npos) << s.message();
  std::vector<float> a(4, 1.0f), b(4, 1.0f), c(4, NAN);
  ScopedOverrides force({"opencl", ""});
  ASSERT_TRUE(force.status().ok());
  const Status run = gemm(gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, 2, 2, 2, 1.0, a.data(), 2,
                                              b.data(), 2, 0.0, c.data(), 2));
  EXPECT_FALSE(run.ok());
  EXPECT_NE(run.message().find("ANVIL_OPENCL_DEVICE"), std::string::npos) << run.message();
  EXPECT_TRUE(std::isnan(c[0])) << "nothing is written on error";
}

// ANVIL_OPENCL_GEMM_PARAMS=MWI=0 (ctest opencl_gemm_params_env_invalid): rejected with the
// parameter named, never applied.
TEST(opencl_env, InvalidGemmParamsAreRejected) {
  const char* env = std::getenv("ANVIL_OPENCL_GEMM_PARAMS");
  if (!env) GTEST_SKIP() << "run by ctest with ANVIL_OPENCL_GEMM_PARAMS set";
  SKIP_WITHOUT_OPENCL();
  std::vector<float> a(4, 1.0f), b(4, 1.0f), c(4, NAN);
  ScopedOverrides force({"opencl", ""});
  const Status run = gemm(gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, 2, 2, 2, 1.0, a.data(), 2,
                                              b.data(), 2, 0.0, c.data(), 2));
  EXPECT_FALSE(run.ok());
  EXPECT_NE(run.message().find("ANVIL_OPENCL_GEMM_PARAMS"), std::string::npos) << run.message();
  EXPECT_TRUE(std::isnan(c[0]));
}

// ------------------------------------------------------------------ program cache
constexpr const char* kSource = "gemm_opencl";

struct Delta {
  opencl::CacheStats before = opencl::cache_stats();
  int64_t builds() const { return opencl::cache_stats().builds - before.builds; }
  int64_t hits() const { return opencl::cache_stats().disk_hits - before.disk_hits; }
  int64_t rejected() const { return opencl::cache_stats().disk_rejected - before.disk_rejected; }
};

// Builds `options` through the cache (memory cleared first, so the disk is consulted).
Status build(const std::string& options) {
  opencl::clear_memory_cache();
  cl_program program = nullptr;
  return opencl::build_program(0, kSource, options, &program);
}

// A small gemm through the program built with the device's configuration.
void expect_gemm_works() {
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6, 7, 8}, c(4, NAN);
  ScopedOverrides force({"", "gemm.f32.opencl.tiled"});
  ASSERT_TRUE(gemm(gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, 2, 2, 2, 1.0, a.data(), 2,
                                       b.data(), 2, 0.0, c.data(), 2))
                  .ok());
  EXPECT_EQ(c, (std::vector<float>{19, 22, 43, 50}));
}

TEST(opencl_cache, HitsAfterFirstBuildAndRebuildsBadFiles) {
  SKIP_WITHOUT_OPENCL();
  ScopedCacheDir cache("cache");
  ASSERT_FALSE(opencl::cache_dir().empty()) << "cache folder unusable: " << cache.dir();
  struct stat st {};
  ASSERT_EQ(::stat(cache.dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u) << "the cache folder is private";

  const std::string options = opencl_gemm::build_options(opencl_gemm::config_for(0), DType::f32);
  const std::string path = opencl::cache_file(0, kSource, options);
  {
    Delta d;
    ASSERT_TRUE(build(options).ok());
    EXPECT_EQ(d.builds(), 1);
    EXPECT_EQ(d.hits(), 0);
  }
  ASSERT_EQ(::stat(path.c_str(), &st), 0) << path;
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string good = read_file(path);
  {
    Delta d;
    ASSERT_TRUE(build(options).ok());
    EXPECT_EQ(d.hits(), 1) << "second build loads from disk";
    EXPECT_EQ(d.builds(), 0);
  }

  struct Bad {
    const char* what;
    std::string data;
    mode_t mode;
    const char* reason;
  };
  std::string flipped = good;
  flipped[flipped.size() - 10] ^= 0x5a;  // inside the payload
  std::string other_options = good;
  const auto at = other_options.find("options: ");
  ASSERT_NE(at, std::string::npos);
  other_options.replace(at, 9, "options= ");  // a key for something else
  std::string garbage(4096, '\0');
  std::mt19937 rng(1);
  for (char& ch : garbage) ch = char(rng());
  const Bad cases[] = {
      {"corrupt payload", flipped, 0600, "checksum"},
      {"truncated", good.substr(0, good.size() / 2), 0600, "truncated"},
      {"empty", "", 0600, "bad magic"},
      {"garbage", garbage, 0600, "bad magic"},
      {"stale key", other_options, 0600, "stale"},
      {"group/world writable", good, 0666, "writable by group or others"},
  };
  for (const Bad& bad : cases) {
    SCOPED_TRACE(bad.what);
    write_file(path, bad.data, bad.mode);
    Delta d;
    ASSERT_TRUE(build(options).ok());
    EXPECT_EQ(d.rejected(), 1);
    EXPECT_EQ(d.hits(), 0);
    EXPECT_EQ(d.builds(), 1) << "rebuilt from source";
    EXPECT_NE(opencl::cache_stats().last_rejection.find(bad.reason), std::string::npos)
        << opencl::cache_stats().last_rejection;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << "replaced by a fresh private file";
    Delta again;
    ASSERT_TRUE(build(options).ok());
    EXPECT_EQ(again.hits(), 1) << "the rewritten file is valid";
  }

  // A file with a valid header and checksum whose binary the driver refuses.
  {
    uint64_t key_len = 0;
    for (int i = 7; i >= 0; --i) key_len = (key_len << 8) | static_cast<unsigned char>(good[8 + size_t(i)]);
    const std::string prefix = good.substr(0, 16 + key_len);
    const std::string payload = "this is not a program binary";
    std::string file = prefix;
    for (uint64_t v : {uint64_t(payload.size()), opencl::hash64(payload)})
      for (int i = 0; i < 8; ++i) file.push_back(char((v >> (8 * i)) & 0xff));
    file += payload;
    write_file(path, file);
    Delta d;
    ASSERT_TRUE(build(options).ok());
    EXPECT_EQ(d.rejected(), 1);
    EXPECT_EQ(d.builds(), 1);
    EXPECT_NE(opencl::cache_stats().last_rejection.find("binary"), std::string::npos)
        << opencl::cache_stats().last_rejection;
  }
  // A symlink in place of the file is not followed.
  {
    const std::string target = cache.dir() + "/elsewhere.bin";
    write_file(target, good);
    ::unlink(path.c_str());
    ASSERT_EQ(::symlink(target.c_str(), path.c_str()), 0);
    Delta d;
    ASSERT_TRUE(build(options).ok());
    EXPECT_EQ(d.rejected(), 1);
    EXPECT_EQ(d.builds(), 1);
  }
  expect_gemm_works();
}

// Concurrent writers and readers of one cache file: writes are atomic (temporary file +
// rename), so a reader never sees a partial file.
TEST(opencl_cache, ConcurrentWritersNeverExposePartialFiles) {
  SKIP_WITHOUT_OPENCL();
  ScopedCacheDir cache("concurrent");
  const std::string options = opencl_gemm::build_options(opencl_gemm::config_for(0), DType::bf16);
  ASSERT_TRUE(build(options).ok());
  Delta d;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 3; ++i) {
        cl_program program = nullptr;
        if (!opencl::build_program(0, kSource, options, &program, opencl::CacheUse::fresh_build).ok()) ++failures;
        else clReleaseProgram(program);
      }
    });
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        opencl::clear_memory_cache();
        cl_program program = nullptr;
        if (!opencl::build_program(0, kSource, options, &program).ok()) ++failures;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(d.rejected(), 0) << opencl::cache_stats().last_rejection;
  // No temporary files are left behind.
  int leftovers = 0;
  for (const auto& e : std::filesystem::directory_iterator(opencl::cache_dir()))
    leftovers += e.path().string().find(".tmp.") != std::string::npos;
  EXPECT_EQ(leftovers, 0);
}

TEST(opencl_cache, DisabledByEnvironmentOrUnsafeFolder) {
  SKIP_WITHOUT_OPENCL();
  const std::string dir = temp_dir("shared");
  ASSERT_EQ(::mkdir(dir.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0777), 0);
  opencl::set_cache_dir(dir);
  EXPECT_EQ(opencl::cache_dir(), "") << "a world-writable folder is not used";
  opencl::set_cache_dir("relative/path");
  EXPECT_EQ(opencl::cache_dir(), "");
  opencl::set_cache_dir("");
  opencl::clear_memory_cache();
  expect_gemm_works();  // still builds (from source) without a disk cache
}

// ------------------------------------------------------------------ tuning database
TEST(opencl_tuning, TunedEntriesOverrideDefaultsOnlyForTheirDevice) {
  SKIP_WITHOUT_OPENCL();
  ScopedCacheDir cache("tuning");
  const opencl::ParamsLookup shipped = opencl::lookup_params(0, "gemm");
  ASSERT_FALSE(shipped.params.empty()) << "a shipped default matches every device type";
  EXPECT_EQ(shipped.origin.rfind("default", 0), 0u) << shipped.origin;
  opencl_gemm::Config tuned;
  tuned.mwi = 5, tuned.nwi = 16, tuned.vw = 8;
  ASSERT_TRUE(opencl::store_params(0, "gemm", tuned.params(), "test").ok());
  opencl::ParamsLookup found = opencl::lookup_params(0, "gemm");
  EXPECT_EQ(found.params, tuned.params());
  EXPECT_EQ(found.origin.rfind("tuned", 0), 0u) << found.origin;
  const std::string path = opencl::tuning_file(0);
  const std::string content = read_file(path);
  // Made for another device: ignored.
  std::string other = content;
  other.replace(other.find("# device: ") + 10, 0, "another ");
  write_file(path, other);
  EXPECT_EQ(opencl::lookup_params(0, "gemm").params, shipped.params);
  // Group writable: ignored.
  write_file(path, content, 0666);
  EXPECT_EQ(opencl::lookup_params(0, "gemm").params, shipped.params);
  // Unparsable entry: ignored, never half-applied.
  write_file(path, content.substr(0, content.find("gemm :")) + "gemm : MWI=5 NWI=oops\n");
  EXPECT_EQ(opencl::lookup_params(0, "gemm").params, shipped.params);
  opencl::Params p;
  EXPECT_FALSE(opencl::parse_params("MWI", &p).ok());
  EXPECT_FALSE(opencl::parse_params("MWI=1x", &p).ok());
  EXPECT_TRUE(opencl::parse_params("MWI=1,NWI=2 VW=1", &p).ok());
  EXPECT_EQ(p.size(), 3u);
}

// ------------------------------------------------------------------ GEMM specifics
// Exact-tier values: small integers, so every configuration must be bit-exact.
std::vector<float> small_ints(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(-3, 3);
  std::vector<float> v(n);
  for (float& x : v) x = float(d(rng));
  return v;
}

// Row-major reference with strides (double accumulation).
void reference_gemm(int64_t batch, int64_t m, int64_t n, int64_t k, const std::vector<float>& a, int64_t a_batch,
                    int64_t a_row, int64_t a_col, const std::vector<float>& b, int64_t b_batch, int64_t b_row,
                    int64_t b_col, std::vector<float>& c, float alpha, float beta, const std::vector<float>* bias) {
  for (int64_t p = 0; p < batch; ++p)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t q = 0; q < k; ++q)
          s += double(a[size_t(p * a_batch + i * a_row + q * a_col)]) * double(b[size_t(p * b_batch + q * b_row + j * b_col)]);
        float& out = c[size_t((p * m + i) * n + j)];
        double v = alpha * s + (beta != 0 ? beta * double(out) : 0.0) + (bias ? double((*bias)[size_t(j)]) : 0.0);
        out = float(v);
      }
}

// Every configuration of the search space (and a few edge configurations) on shapes
// around its tile sizes, on opencl buffers, with transposes, a broadcast batch and bias.
TEST(opencl_gemm, EveryConfigurationIsExactOnTileEdges) {
  SKIP_WITHOUT_OPENCL();
  const opencl::DeviceInfo* info = nullptr;
  ASSERT_TRUE(opencl::device_info(0, &info).ok());
  std::vector<opencl_gemm::Config> configs = {opencl_gemm::config_for(0)};
  const opencl_gemm::Config extra[] = {
      {6, 16, 8, 4, 1, 1, 16, 0},  // the shipped default of CPU devices without AVX-512
      {4, 4, 4, 2, 16, 16, 16, 1}, // the shipped default of GPUs
      {5, 8, 4, 3, 1, 1, 6, 0},    // odd tile, odd k unroll
      {3, 4, 1, 1, 1, 1, 16, 0},   // scalar rows
      {4, 8, 4, 2, 2, 2, 4, 1},    // work-groups with local-memory staging
      {2, 4, 2, 2, 4, 2, 8, 1},
  };
  for (const auto& c : extra)
    if (opencl_gemm::valid_for(c, *info).ok()) configs.push_back(c);
  const Device dev{DeviceType::opencl, 0};
  int index = 0;
  for (const opencl_gemm::Config& cfg : configs) {
    const int64_t shapes[][4] = {{1, int64_t(cfg.mwi) * 2 + 1, int64_t(cfg.nwi) + 1, 17},
                                 {2, int64_t(cfg.mwi) - 1 + 1, int64_t(cfg.nwi) * 2 - 1, int64_t(cfg.kwg) + 1},
                                 {3, int64_t(cfg.mwi) * cfg.mdimc + 1, int64_t(cfg.nwi) * cfg.ndimc, 1},
                                 {1, 33, 65, 0}};
    for (const auto& sh : shapes) {
      const int64_t batch = sh[0], m = sh[1], n = sh[2], k = sh[3];
      const bool ta = index % 2, tb = index % 3 == 1, broadcast_b = batch > 1 && index % 2 == 0;
      const bool bias_on = index % 2 == 1;
      const float beta = index % 3 == 2 ? 2.0f : 0.0f;
      ++index;
      SCOPED_TRACE("config " + cfg.str() + " batch=" + std::to_string(batch) + " m=" + std::to_string(m) +
                   " n=" + std::to_string(n) + " k=" + std::to_string(k) + (ta ? " ta" : "") + (tb ? " tb" : ""));
      const int64_t bb = broadcast_b ? 1 : batch;
      std::vector<float> a = small_ints(size_t(batch * m * std::max<int64_t>(k, 1)), 1);
      std::vector<float> b = small_ints(size_t(bb * std::max<int64_t>(k, 1) * n), 2);
      std::vector<float> bias = small_ints(size_t(n), 3), c0 = small_ints(size_t(batch * m * n), 4);
      const int64_t ka = std::max<int64_t>(k, 1);
      // a stored (m, k) or transposed (k, m); b stored (k, n) or (n, k).
      const int64_t a_row = ta ? 1 : ka, a_col = ta ? m : 1, b_row = tb ? 1 : n, b_col = tb ? ka : 1;
      std::vector<float> want = c0;
      reference_gemm(batch, m, n, k, a, m * ka, a_row, a_col, b, broadcast_b ? 0 : ka * n, b_row, b_col, want, 1.0f,
                     beta, bias_on ? &bias : nullptr);
      void *da = nullptr, *db = nullptr, *dc = nullptr, *dbias = nullptr;
      ASSERT_TRUE(device_malloc(dev, int64_t(a.size()) * 4, &da).ok());
      ASSERT_TRUE(device_malloc(dev, int64_t(b.size()) * 4, &db).ok());
      ASSERT_TRUE(device_malloc(dev, int64_t(c0.size()) * 4 + 4, &dc).ok());
      ASSERT_TRUE(device_malloc(dev, int64_t(bias.size()) * 4, &dbias).ok());
      ASSERT_TRUE(copy_to_device(dev, da, a.data(), int64_t(a.size()) * 4).ok());
      ASSERT_TRUE(copy_to_device(dev, db, b.data(), int64_t(b.size()) * 4).ok());
      std::vector<float> c_host(c0.size() + 1, NAN);  // element 0: a guard before the view (offset 1)
      std::copy(c0.begin(), c0.end(), c_host.begin() + 1);
      if (beta == 0) std::fill(c_host.begin() + 1, c_host.end(), NAN);
      ASSERT_TRUE(copy_to_device(dev, dc, c_host.data(), int64_t(c_host.size()) * 4).ok());
      ASSERT_TRUE(copy_to_device(dev, dbias, bias.data(), int64_t(bias.size()) * 4).ok());
      GemmArgs args;
      args.a = batch > 1 ? TensorRef::strided(da, DType::f32, {batch, m, k}, {m * ka, a_row, a_col}, dev)
                         : TensorRef::strided(da, DType::f32, {m, k}, {a_row, a_col}, dev);
      args.b = bb > 1 ? TensorRef::strided(db, DType::f32, {bb, k, n}, {ka * n, b_row, b_col}, dev)
                      : TensorRef::strided(db, DType::f32, {k, n}, {b_row, b_col}, dev);
      args.c = batch > 1 ? TensorRef::contiguous(dc, DType::f32, {batch, m, n}, dev)
                         : TensorRef::contiguous(dc, DType::f32, {m, n}, dev);
      args.c.offset = 1;
      if (bias_on) args.bias = TensorRef::contiguous(dbias, DType::f32, {n}, dev);
      args.beta = beta;
      ASSERT_TRUE(opencl_gemm::run_with_config(args, cfg).ok());
      std::vector<float> got(c_host.size());
      ASSERT_TRUE(copy_to_host(dev, got.data(), dc, int64_t(got.size()) * 4).ok());
      EXPECT_TRUE(std::isnan(got[0])) << "the element before the view was written";
      int wrong = 0;
      for (size_t i = 0; i < want.size(); ++i) wrong += got[i + 1] != want[i];
      EXPECT_EQ(wrong, 0);
      for (void* p : {da, db, dc, dbias}) (void)device_free(dev, p);
    }
  }
}

// Host operands (torch CPU tensors with anvil.force(backend="opencl")): wrapped with
// USE_HOST_PTR, results visible on return, nothing outside the views touched; never chosen
// by default over the host backends.
TEST(opencl_gemm, HostOperandsRunWhenForcedOnly) {
  SKIP_WITHOUT_OPENCL();
  const int64_t m = 37, n = 45, k = 29, lda = k + 3, ldc = n + 2;
  std::vector<float> a(size_t(m * lda) + 8, NAN), b = small_ints(size_t(k * n), 6), c(size_t(m * ldc) + 8, NAN);
  const std::vector<float> vals = small_ints(size_t(m * k), 5);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) a[size_t(4 + i * lda + j)] = vals[size_t(i * k + j)];
  GemmArgs args = gemm_args_row_major(DType::f32, Transpose::no, Transpose::no, m, n, k, 1.0, a.data() + 4, lda,
                                      b.data(), n, 0.0, c.data() + 4, ldc);
  std::string chosen;
  ASSERT_TRUE(select_kernel(args, &chosen).ok());
  EXPECT_EQ(chosen.find(".opencl"), std::string::npos) << "opencl picked by default on host memory: " << chosen;
  {
    ScopedOverrides force({"opencl", ""});
    ASSERT_TRUE(select_kernel(args, &chosen).ok());
    EXPECT_EQ(chosen, "gemm.f32.opencl.tiled");
    ASSERT_TRUE(gemm(args).ok());
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = c[size_t(4 + i * ldc + j)];
      if (j >= n) {
        ASSERT_TRUE(std::isnan(got)) << "padding written at " << i << "," << j;
        continue;
      }
      double want = 0;
      for (int64_t q = 0; q < k; ++q) want += double(vals[size_t(i * k + q)]) * b[size_t(q * n + j)];
      ASSERT_EQ(got, float(want)) << i << "," << j;
    }
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(std::isnan(c[size_t(i)]) && std::isnan(c[c.size() - 1 - size_t(i)]));
  // Backward on host operands too.
  std::vector<float> ga(size_t(m * k), NAN), gb(size_t(k * n), NAN), gbias(size_t(n), NAN), gc = small_ints(size_t(m * n), 7);
  GemmBackwardArgs bw{TensorRef::contiguous(vals.data(), DType::f32, {m, k}),
                      TensorRef::contiguous(b.data(), DType::f32, {k, n}),
                      TensorRef::contiguous(gc.data(), DType::f32, {m, n}),
                      TensorRef::contiguous(ga.data(), DType::f32, {m, k}),
                      TensorRef::contiguous(gb.data(), DType::f32, {k, n}),
                      TensorRef::contiguous(gbias.data(), DType::f32, {n}), 1.0};
  ScopedOverrides force({"opencl", ""});
  ASSERT_TRUE(gemm_backward(bw).ok());
  double sum0 = 0;
  for (int64_t i = 0; i < m; ++i) sum0 += gc[size_t(i * n)];
  EXPECT_EQ(gbias[0], float(sum0));
  double ga00 = 0;
  for (int64_t j = 0; j < n; ++j) ga00 += double(gc[size_t(j)]) * b[size_t(j)];
  EXPECT_EQ(ga[0], float(ga00));
}

TEST(opencl_gemm, BadInputOnOpenclBuffersIsRejectedWithoutWriting) {
  SKIP_WITHOUT_OPENCL();
  const Device dev{DeviceType::opencl, 0};
  void *da = nullptr, *dc = nullptr;
  ASSERT_TRUE(device_malloc(dev, 16 * 16 * 4, &da).ok());
  ASSERT_TRUE(device_malloc(dev, 16 * 16 * 4, &dc).ok());
  std::vector<float> nan(256, NAN), back(256);
  ASSERT_TRUE(copy_to_device(dev, dc, nan.data(), 256 * 4).ok());
  ScopedOverrides force({"", "gemm.f32.opencl.tiled"});
  // The view of a reaches past the end of its cl_mem.
  GemmArgs args;
  args.a = TensorRef::contiguous(da, DType::f32, {16, 16}, dev);
  args.a.offset = 1;
  args.b = TensorRef::contiguous(da, DType::f32, {16, 16}, dev);
  args.c = TensorRef::contiguous(dc, DType::f32, {16, 16}, dev);
  Status s = gemm(args);
  EXPECT_EQ(s.code(), StatusCode::invalid_argument) << s.message();
  EXPECT_NE(s.message().find("a: the view reaches byte"), std::string::npos) << s.message();
  // Mixed host and opencl operands.
  std::vector<float> host(256, 1.0f);
  args.a = TensorRef::contiguous(host.data(), DType::f32, {16, 16});
  s = gemm(args);
  EXPECT_EQ(s.code(), StatusCode::invalid_argument) << s.message();
  // A device index that does not exist.
  args.a = TensorRef::contiguous(da, DType::f32, {16, 16}, {DeviceType::opencl, 99});
  args.b = TensorRef::contiguous(da, DType::f32, {16, 16}, {DeviceType::opencl, 99});
  args.c = TensorRef::contiguous(dc, DType::f32, {16, 16}, {DeviceType::opencl, 99});
  s = gemm(args);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("opencl device 99 does not exist"), std::string::npos) << s.message();
  ASSERT_TRUE(copy_to_host(dev, back.data(), dc, 256 * 4).ok());
  for (float x : back) ASSERT_TRUE(std::isnan(x)) << "c written on error";
  for (void* p : {da, dc}) (void)device_free(dev, p);
}

// Beyond 2^31: a bf16 operand at element offset 2^31 + 5 of one 4 GiB buffer (only the
// touched pages are ever written, so the host commits a few KiB).
TEST(opencl_gemm, OffsetBeyond2Pow31) {
  SKIP_WITHOUT_OPENCL();
  const opencl::DeviceInfo* info = nullptr;
  ASSERT_TRUE(opencl::device_info(0, &info).ok());
  const int64_t offset = (int64_t(1) << 31) + 5, m = 9, n = 11, k = 13;
  const int64_t bytes = (offset + m * k) * 2;
  if (bytes > info->max_alloc_bytes)
    GTEST_SKIP() << "CL_DEVICE_MAX_MEM_ALLOC_SIZE " << info->max_alloc_bytes << " < " << bytes;
  const Device dev{DeviceType::opencl, 0};
  void *big = nullptr, *db = nullptr, *dc = nullptr;
  if (!device_malloc(dev, bytes, &big).ok()) GTEST_SKIP() << "cannot allocate " << bytes << " bytes";
  opencl::DeviceContext* ctx = nullptr;
  ASSERT_TRUE(opencl::device_context(0, &ctx).ok());
  const std::vector<float> af = small_ints(size_t(m * k), 8), bf = small_ints(size_t(k * n), 9);
  std::vector<bfloat16> a, b;
  for (float x : af) a.push_back(to_bfloat16(x));
  for (float x : bf) b.push_back(to_bfloat16(x));
  ASSERT_EQ(clEnqueueWriteBuffer(ctx->queue, static_cast<cl_mem>(big), CL_TRUE, size_t(offset) * 2, a.size() * 2,
                                 a.data(), 0, nullptr, nullptr),
            CL_SUCCESS);
  ASSERT_TRUE(device_malloc(dev, int64_t(b.size()) * 2, &db).ok());
  ASSERT_TRUE(device_malloc(dev, m * n * 2, &dc).ok());
  ASSERT_TRUE(copy_to_device(dev, db, b.data(), int64_t(b.size()) * 2).ok());
  GemmArgs args;
  args.a = TensorRef::contiguous(big, DType::bf16, {m, k}, dev);
  args.a.offset = offset;
  args.b = TensorRef::contiguous(db, DType::bf16, {k, n}, dev);
  args.c = TensorRef::contiguous(dc, DType::bf16, {m, n}, dev);
  ScopedOverrides force({"", "gemm.bf16.opencl.tiled"});
  ASSERT_TRUE(gemm(args).ok());
  std::vector<bfloat16> c(size_t(m * n));
  ASSERT_TRUE(copy_to_host(dev, c.data(), dc, m * n * 2).ok());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double want = 0;
      for (int64_t q = 0; q < k; ++q) want += double(af[size_t(i * k + q)]) * bf[size_t(q * n + j)];
      ASSERT_EQ(to_float(c[size_t(i * n + j)]), to_float(to_bfloat16(float(want)))) << i << "," << j;
    }
  for (void* p : {big, db, dc}) (void)device_free(dev, p);
}

// The same through host memory (the torch path), which is not bounded by the device's
// allocation limit: a bf16 view at element offset 2^31 + 5 of a 4 GiB+ reservation (pages
// are committed only where written), forced onto the opencl backend.
TEST(opencl_gemm, HostOffsetBeyond2Pow31) {
  SKIP_WITHOUT_OPENCL();
  const int64_t offset = (int64_t(1) << 31) + 5, m = 9, n = 11, k = 13;
  const size_t bytes = size_t(offset + m * k) * 2;
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) GTEST_SKIP() << "cannot reserve " << bytes << " bytes of address space";
  auto* big = static_cast<bfloat16*>(base);
  const std::vector<float> af = small_ints(size_t(m * k), 8), bf = small_ints(size_t(k * n), 9);
  for (size_t i = 0; i < af.size(); ++i) big[size_t(offset) + i] = to_bfloat16(af[i]);
  std::vector<bfloat16> b, c(size_t(m * n), to_bfloat16(NAN));
  for (float x : bf) b.push_back(to_bfloat16(x));
  GemmArgs args;
  args.a = TensorRef::contiguous(big, DType::bf16, {m, k});
  args.a.offset = offset;
  args.b = TensorRef::contiguous(b.data(), DType::bf16, {k, n});
  args.c = TensorRef::contiguous(c.data(), DType::bf16, {m, n});
  {
    ScopedOverrides force({"", "gemm.bf16.opencl.tiled"});
    const Status s = gemm(args);
    ASSERT_TRUE(s.ok()) << s.message();
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double want = 0;
      for (int64_t q = 0; q < k; ++q) want += double(af[size_t(i * k + q)]) * bf[size_t(q * n + j)];
      ASSERT_EQ(to_float(c[size_t(i * n + j)]), to_float(to_bfloat16(float(want)))) << i << "," << j;
    }
  ::munmap(base, bytes);
}

}  // namespace
}  // namespace anvil::test
