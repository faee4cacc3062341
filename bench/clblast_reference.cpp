// CLBlast reference rows of anvil-bench: see clblast_reference.h.
#include "bench/clblast_reference.h"

#include <clblast.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "backends/opencl/opencl_runtime.h"

namespace anvil::bench {
namespace {

// clblast_tuner_xgemm's best of ~640 configurations on the development machine
// (PERFORMANCE.md), saving hours of tuning in CI.
const std::unordered_map<std::string, size_t> kTunedXgemm = {
    {"GEMMK", 0}, {"KREG", 1},  {"KWG", 32},  {"KWI", 2},  {"MDIMA", 16}, {"MDIMC", 8}, {"MWG", 64}, {"NDIMB", 16},
    {"NDIMC", 8}, {"NWG", 128}, {"SA", 0},    {"SB", 0},   {"STRM", 1},   {"STRN", 0},  {"VWM", 4},  {"VWN", 8}};

// CLBlast's own Xgemm parameters for the device, read once before any override.
const std::unordered_map<std::string, size_t>* untuned_xgemm(cl_device_id device) {
  static std::once_flag once;
  static std::unordered_map<std::string, size_t> params;
  static bool ok = false;
  std::call_once(once, [&] {
    ok = clblast::RetrieveParameters(device, "Xgemm", clblast::Precision::kSingle, params) ==
         clblast::StatusCode::kSuccess;
  });
  return ok ? &params : nullptr;
}

struct Buffers {
  cl_mem a = nullptr, b = nullptr, c = nullptr;
  ~Buffers() {
    for (cl_mem m : {a, b, c})
      if (m) clReleaseMemObject(m);
  }
};

}  // namespace

std::function<void()> clblast_sgemm(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c,
                                    bool tuned, std::string* error) {
  opencl::DeviceContext* ctx = nullptr;
  if (Status s = opencl::device_context(0, &ctx); !s.ok()) {
    *error = s.message();
    return {};
  }
  const auto* untuned = untuned_xgemm(ctx->info->id);
  if (!untuned) {
    *error = "clblast::RetrieveParameters(Xgemm) failed";
    return {};
  }
  const auto& params = tuned ? kTunedXgemm : *untuned;
  if (clblast::OverrideParameters(ctx->info->id, "Xgemm", clblast::Precision::kSingle, params) !=
      clblast::StatusCode::kSuccess) {
    *error = "clblast::OverrideParameters(Xgemm) failed";
    return {};
  }
  // Buffers of the driver's own allocation: CLBlast's kernels assume the device's base
  // alignment, which host arrays wrapped with USE_HOST_PTR do not have (PoCL runs kernels on
  // the host pointer as given). Inputs are uploaded once; the result is read back once, for
  // the check after the first run. On host-memory devices these buffers are host memory too.
  auto buffers = std::make_shared<Buffers>();
  cl_int err = CL_SUCCESS;
  const auto create = [&](int64_t count, const float* init) -> cl_mem {
    cl_mem mem = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, size_t(count) * 4, nullptr, &err);
    if (err == CL_SUCCESS && init)
      err = clEnqueueWriteBuffer(ctx->queue, mem, CL_TRUE, 0, size_t(count) * 4, init, 0, nullptr, nullptr);
    return err == CL_SUCCESS ? mem : nullptr;
  };
  buffers->a = create(m * k, a);
  buffers->b = create(k * n, b);
  buffers->c = create(m * n, nullptr);
  if (!buffers->a || !buffers->b || !buffers->c) {
    *error = std::string("clCreateBuffer/clEnqueueWriteBuffer failed: ") + opencl::error_name(err);
    return {};
  }
  cl_command_queue queue = ctx->queue;
  auto first = std::make_shared<bool>(true);
  return [=]() {
    cl_command_queue q = queue;
    const auto status = clblast::Gemm<float>(clblast::Layout::kRowMajor, clblast::Transpose::kNo,
                                             clblast::Transpose::kNo, size_t(m), size_t(n), size_t(k), 1.0f,
                                             buffers->a, 0, size_t(k), buffers->b, 0, size_t(n), 0.0f, buffers->c, 0,
                                             size_t(n), &q, nullptr);
    if (status != clblast::StatusCode::kSuccess) {
      std::fprintf(stderr, "anvil-bench: clblast::Gemm failed (%d)\n", int(status));
      return;
    }
    if (*first) {  // the check's run (untimed): bring the result to the host array
      *first = false;
      clEnqueueReadBuffer(q, buffers->c, CL_TRUE, 0, size_t(m * n) * 4, c, 0, nullptr, nullptr);
    }
    clFinish(q);
  };
}

}  // namespace anvil::bench
