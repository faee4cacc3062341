// CUDA runtime glue of the cuda backend: see cuda_runtime.h.
#include "backends/cuda/cuda_runtime.h"

#include <memory>
#include <mutex>
#include <string>
#include <cstdint>
#include <vector>

namespace anvil::cuda {
namespace {

thread_local cudaStream_t tls_stream = nullptr;

// Properties of every device, read once: cudaGetDeviceProperties costs tens of µs.
struct DeviceTable {
  Status status;
  std::vector<DeviceProps> props;
};

const DeviceTable& device_table() {
  static const DeviceTable table = [] {
    DeviceTable t;
    int count = 0;
    t.status = check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    if (!t.status.ok()) return t;
    if (count == 0) {
      t.status = {StatusCode::unsupported, "no CUDA device found"};
      return t;
    }
    for (int d = 0; d < count; ++d) {
      cudaDeviceProp p{};
      t.status = check(cudaGetDeviceProperties(&p, d), "cudaGetDeviceProperties");
      if (!t.status.ok()) return t;
      DeviceProps props;
      props.index = d;
      props.sm_count = p.multiProcessorCount;
      props.cc_major = p.major;
      props.cc_minor = p.minor;
      props.smem_per_block_optin = int64_t(p.sharedMemPerBlockOptin);
      props.l2_bytes = p.l2CacheSize;
      props.name = p.name;
      t.props.push_back(props);
    }
    return t;
  }();
  return table;
}

}  // namespace

Status check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return Status::Ok();
  const StatusCode code = error == cudaErrorMemoryAllocation ? StatusCode::out_of_memory : StatusCode::runtime_error;
  return {code, std::string(what) + " failed: " + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) + ")"};
}

Status check_launch(const char* kernel) {
  // cudaGetLastError also clears a sticky-free launch error, so the next call starts clean.
  const cudaError_t error = cudaGetLastError();
  if (error == cudaSuccess) return Status::Ok();
  return check(error, (std::string(kernel) + " launch").c_str());
}

Status available() { return device_table().status; }

Status device_props(int device, const DeviceProps** props) {
  const DeviceTable& t = device_table();
  ANVIL_RETURN_IF_ERROR(t.status);
  if (device < 0 || device >= int(t.props.size()))
    return invalid_argument("cuda device " + std::to_string(device) + " does not exist (" +
                            std::to_string(t.props.size()) + " found)");
  *props = &t.props[size_t(device)];
  return Status::Ok();
}

std::string describe() {
  const DeviceTable& t = device_table();
  if (!t.status.ok() || t.props.empty()) return "";
  int driver = 0, runtime = 0;
  (void)cudaDriverGetVersion(&driver);
  (void)cudaRuntimeGetVersion(&runtime);
  std::string out;
  for (const DeviceProps& p : t.props) {
    if (!out.empty()) out += "; ";
    out += "cuda:" + std::to_string(p.index) + " " + p.name + " (sm_" + std::to_string(p.compute_capability()) +
           ", " + std::to_string(p.sm_count) + " SMs, " + std::to_string(p.smem_per_block_optin / 1024) +
           " KiB smem/block, " + std::to_string(p.l2_bytes >> 20) + " MiB L2)";
  }
  out += ", driver " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) + ", runtime " +
         std::to_string(runtime / 1000) + "." + std::to_string(runtime % 1000 / 10);
  return out;
}

cudaStream_t current_stream() { return tls_stream; }
void set_stream(cudaStream_t stream) { tls_stream = stream; }

DeviceGuard::DeviceGuard(int device) {
  status_ = check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (status_.ok() && previous_ != device) status_ = check(cudaSetDevice(device), "cudaSetDevice");
  if (!status_.ok() || previous_ == device) previous_ = -1;
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

Workspace::~Workspace() {
  for (int i = 0; i < count_; ++i) (void)cudaFreeAsync(blocks_[i], stream_);
}

// The default memory pool gives freed blocks back to the driver at every synchronisation
// unless told to keep them; then each call's workspace would be a fresh cudaMalloc-sized
// cost (~0.1 ms measured per conv2d call on an H100). Keep them, once per device.
static Status keep_pool_memory() {
  int device = 0;
  ANVIL_RETURN_IF_ERROR(check(cudaGetDevice(&device), "cudaGetDevice"));
  static std::mutex mutex;
  static std::vector<int> done;
  std::lock_guard<std::mutex> lock(mutex);
  for (int d : done)
    if (d == device) return Status::Ok();
  cudaMemPool_t pool;
  ANVIL_RETURN_IF_ERROR(check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool"));
  uint64_t keep = UINT64_MAX;
  ANVIL_RETURN_IF_ERROR(
      check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute"));
  done.push_back(device);
  return Status::Ok();
}

Status Workspace::allocate(int64_t bytes, void** out) {
  *out = nullptr;
  if (bytes <= 0) return Status::Ok();
  ANVIL_RETURN_IF_ERROR(keep_pool_memory());
  if (count_ == kMaxBlocks) return {StatusCode::runtime_error, "cuda workspace: more than 8 blocks in one call"};
  ANVIL_RETURN_IF_ERROR(check(cudaMallocAsync(out, size_t(bytes), stream_), "cudaMallocAsync (workspace)"));
  blocks_[count_++] = *out;
  return Status::Ok();
}

Status malloc_device(int device, int64_t bytes, void** out) {
  DeviceGuard guard(device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  *out = nullptr;
  if (bytes <= 0) return Status::Ok();
  return check(cudaMalloc(out, size_t(bytes)), "cudaMalloc");
}

Status free_device(int device, void* p) {
  if (!p) return Status::Ok();
  DeviceGuard guard(device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  return check(cudaFree(p), "cudaFree");
}

Status copy(void* dst, const void* src, int64_t bytes, cudaMemcpyKind kind) {
  if (bytes <= 0) return Status::Ok();
  return check(cudaMemcpy(dst, src, size_t(bytes), kind), "cudaMemcpy");
}

Status synchronize(int device) {
  DeviceGuard guard(device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  return check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

}  // namespace anvil::cuda
