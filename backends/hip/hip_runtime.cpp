// HIP runtime glue of the hip backend: see hip_runtime.h. The device table and describe()
// are HIP's own; the rest is backends/gpu/gpu_runtime_impl.inc, shared with the cuda backend.
#include "backends/hip/hip_runtime.h"

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

// The processors this build compiled its kernels for (CMAKE_HIP_ARCHITECTURES, set by CMake).
#ifndef ANVIL_HIP_ARCHITECTURES
#define ANVIL_HIP_ARCHITECTURES ""
#endif

namespace anvil::hip {

constexpr const char* kRuntimeName = "hip";
#include "backends/gpu/gpu_runtime_impl.inc"

namespace {

// Properties of every device, read once.
struct DeviceTable {
  Status status;
  std::vector<DeviceProps> props;
  std::vector<bool> built_for;  // the build has code for the device's processor
};

// Whether `gfx` ("gfx90a") is one of the build's architectures ("gfx90a,gfx942:xnack-").
bool built_for(const std::string& gfx) {
  const std::string archs = ANVIL_HIP_ARCHITECTURES;
  size_t begin = 0;
  while (begin <= archs.size()) {
    size_t end = archs.find(',', begin);
    if (end == std::string::npos) end = archs.size();
    const std::string arch = archs.substr(begin, end - begin);
    if (arch.substr(0, arch.find(':')) == gfx) return true;
    begin = end + 1;
  }
  return false;
}

const DeviceTable& device_table() {
  static const DeviceTable table = [] {
    DeviceTable t;
    int count = 0;
    t.status = check(hipGetDeviceCount(&count), "hipGetDeviceCount");
    if (!t.status.ok()) return t;
    if (count == 0) {
      t.status = {StatusCode::unsupported, "no HIP device found"};
      return t;
    }
    for (int d = 0; d < count; ++d) {
      hipDeviceProp_t p{};
      t.status = check(hipGetDeviceProperties(&p, d), "hipGetDeviceProperties");
      if (!t.status.ok()) return t;
      DeviceProps props;
      props.index = d;
      props.cu_count = p.multiProcessorCount;
      props.wavefront_size = p.warpSize;
      props.lds_per_workgroup = int64_t(p.sharedMemPerBlock);
      props.l2_bytes = p.l2CacheSize;
      props.arch = p.gcnArchName;
      props.name = p.name;
      t.built_for.push_back(built_for(props.gfx()));
      t.props.push_back(props);
    }
    bool any = false;
    for (bool b : t.built_for) any = any || b;
    if (!any)
      t.status = {StatusCode::unsupported, "no HIP device is one this build has code for: device 0 is " +
                                               t.props[0].arch + ", the build targets " + ANVIL_HIP_ARCHITECTURES +
                                               " (CMAKE_HIP_ARCHITECTURES)"};
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
    return invalid_argument("hip device " + std::to_string(device) + " does not exist (" +
                            std::to_string(t.props.size()) + " found)");
  if (!t.built_for[size_t(device)])
    return unsupported("hip device " + std::to_string(device) + " is " + t.props[size_t(device)].arch +
                       "; this build has code for " + ANVIL_HIP_ARCHITECTURES + " only (CMAKE_HIP_ARCHITECTURES)");
  *props = &t.props[size_t(device)];
  return Status::Ok();
}

std::string describe() {
  const DeviceTable& t = device_table();
  if (!t.status.ok() || t.props.empty()) return "";
  int driver = 0, runtime = 0;
  (void)hipDriverGetVersion(&driver);
  (void)hipRuntimeGetVersion(&runtime);
  std::string out;
  for (const DeviceProps& p : t.props) {
    if (!out.empty()) out += "; ";
    out += "hip:" + std::to_string(p.index) + " " + p.name + " (" + p.arch + ", " + std::to_string(p.cu_count) +
           " CUs, wave" + std::to_string(p.wavefront_size) + ", " + std::to_string(p.lds_per_workgroup / 1024) +
           " KiB LDS/workgroup, " + std::to_string(p.l2_bytes >> 20) + " MiB L2)";
  }
  out += ", driver " + std::to_string(driver) + ", runtime " + std::to_string(runtime);
  return out;
}

}  // namespace anvil::hip
