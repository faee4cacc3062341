// CUDA runtime glue of the cuda backend: see cuda_runtime.h.
#include "backends/cuda/cuda_runtime.h"

#include <memory>
#include <mutex>
#include <string>
#include <cstdint>
#include <vector>

namespace anvil::cuda {

constexpr const char* kRuntimeName = "cuda";
#include "backends/gpu/gpu_runtime_impl.inc"

namespace {

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

}  // namespace anvil::cuda
