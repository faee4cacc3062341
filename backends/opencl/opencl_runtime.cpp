// OpenCL runtime glue of the opencl backend: see opencl_runtime.h.
#include "backends/opencl/opencl_runtime.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "anvil/dispatch.h"
#include "kernels/common/checks.h"

namespace anvil::opencl {

// The generated table of embedded sources (build/generated/anvil_opencl_sources.cpp).
struct EmbeddedSource {
  const char* name;
  const char* text;
};
extern const EmbeddedSource kEmbeddedSources[];
extern const int kEmbeddedSourceCount;

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// ------------------------------------------------------------------ device queries
std::string device_string(cl_device_id d, cl_device_info what) {
  size_t size = 0;
  if (clGetDeviceInfo(d, what, 0, nullptr, &size) != CL_SUCCESS || size == 0) return "";
  std::string s(size, '\0');
  if (clGetDeviceInfo(d, what, size, s.data(), nullptr) != CL_SUCCESS) return "";
  while (!s.empty() && (s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string platform_string(cl_platform_id p, cl_platform_info what) {
  size_t size = 0;
  if (clGetPlatformInfo(p, what, 0, nullptr, &size) != CL_SUCCESS || size == 0) return "";
  std::string s(size, '\0');
  if (clGetPlatformInfo(p, what, size, s.data(), nullptr) != CL_SUCCESS) return "";
  while (!s.empty() && (s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

template <class T> T device_value(cl_device_id d, cl_device_info what, T fallback = T{}) {
  T v{};
  return clGetDeviceInfo(d, what, sizeof v, &v, nullptr) == CL_SUCCESS ? v : fallback;
}

DeviceInfo read_device(cl_platform_id p, cl_device_id d, int platform_index, int device_index) {
  DeviceInfo info;
  info.platform = p;
  info.id = d;
  info.platform_index = platform_index;
  info.device_index = device_index;
  info.type = device_value<cl_device_type>(d, CL_DEVICE_TYPE);
  info.name = device_string(d, CL_DEVICE_NAME);
  info.vendor = device_string(d, CL_DEVICE_VENDOR);
  info.driver_version = device_string(d, CL_DRIVER_VERSION);
  info.device_version = device_string(d, CL_DEVICE_VERSION);
  info.opencl_c_version = device_string(d, CL_DEVICE_OPENCL_C_VERSION);
  info.extensions = device_string(d, CL_DEVICE_EXTENSIONS);
  info.platform_name = platform_string(p, CL_PLATFORM_NAME);
  info.platform_version = platform_string(p, CL_PLATFORM_VERSION);
  info.vendor_id = device_value<cl_uint>(d, CL_DEVICE_VENDOR_ID);
  info.compute_units = int(device_value<cl_uint>(d, CL_DEVICE_MAX_COMPUTE_UNITS));
  info.max_work_group_size = int64_t(device_value<size_t>(d, CL_DEVICE_MAX_WORK_GROUP_SIZE));
  size_t sizes[3] = {1, 1, 1};
  (void)clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_ITEM_SIZES, sizeof sizes, sizes, nullptr);
  for (int i = 0; i < 3; ++i) info.max_work_item_sizes[size_t(i)] = int64_t(sizes[i]);
  info.local_mem_dedicated = device_value<cl_device_local_mem_type>(d, CL_DEVICE_LOCAL_MEM_TYPE) == CL_LOCAL;
  info.local_mem_bytes = int64_t(device_value<cl_ulong>(d, CL_DEVICE_LOCAL_MEM_SIZE));
  info.global_mem_bytes = int64_t(device_value<cl_ulong>(d, CL_DEVICE_GLOBAL_MEM_SIZE));
  info.max_alloc_bytes = int64_t(device_value<cl_ulong>(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE));
  info.base_addr_align_bytes = int64_t(device_value<cl_uint>(d, CL_DEVICE_MEM_BASE_ADDR_ALIGN)) / 8;
  info.preferred_vector_width_float = int(device_value<cl_uint>(d, CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT, 1));
  // CL_DEVICE_HOST_UNIFIED_MEMORY is deprecated in 2.0 but still answered; CPU devices run
  // in the host's memory whatever they say.
  info.host_unified_memory = device_value<cl_bool>(d, CL_DEVICE_HOST_UNIFIED_MEMORY) == CL_TRUE || info.is_cpu();
  const std::string ext = " " + info.extensions + " ";
  info.fp16 = ext.find(" cl_khr_fp16 ") != std::string::npos;
  info.fp64 = ext.find(" cl_khr_fp64 ") != std::string::npos;
  return info;
}

// ------------------------------------------------------------------ the device table
struct Runtime {
  std::mutex mutex;
  bool discovered = false;
  Status status;                                  // discovery or device selection failure
  std::vector<std::unique_ptr<DeviceInfo>> devices;  // in anvil order (default first)
  std::vector<std::unique_ptr<DeviceContext>> contexts;  // by anvil index; null until used
  bool any_context = false;
};

Runtime& runtime() {
  static Runtime* r = new Runtime;  // never destroyed: kernels may run during static destruction
  return *r;
}

std::string list_devices(const std::vector<std::unique_ptr<DeviceInfo>>& devices) {
  std::string out;
  for (const auto& d : devices)
    out += (out.empty() ? "" : "; ") + std::to_string(d->index) + " = " + std::to_string(d->platform_index) + ":" +
           std::to_string(d->device_index) + " " + d->platform_name + " / " + d->name + " (" + d->type_name() + ")";
  return out.empty() ? "none" : out;
}

// Moves the device `spec` names to the front; an error naming the valid choices otherwise.
Status apply_selection(std::vector<std::unique_ptr<DeviceInfo>>& devices, const std::string& spec,
                       const char* source) {
  if (spec.empty()) return Status::Ok();
  int found = -1;
  const std::string want = lower(spec);
  const bool numeric = !spec.empty() && spec.find_first_not_of("0123456789") == std::string::npos;
  const auto colon = spec.find(':');
  const bool pair = colon != std::string::npos && colon > 0 &&
                    spec.substr(0, colon).find_first_not_of("0123456789") == std::string::npos &&
                    colon + 1 < spec.size() &&
                    spec.substr(colon + 1).find_first_not_of("0123456789") == std::string::npos;
  for (size_t i = 0; i < devices.size() && found < 0; ++i) {
    const DeviceInfo& d = *devices[i];
    if (numeric) {
      if (std::to_string(i) == spec) found = int(i);
    } else if (pair) {
      if (std::to_string(d.platform_index) + ":" + std::to_string(d.device_index) == spec) found = int(i);
    } else if (want == "cpu" || want == "gpu" || want == "accelerator") {
      if (want == d.type_name()) found = int(i);
    } else if (lower(d.platform_name + " / " + d.name).find(want) != std::string::npos) {
      found = int(i);
    }
  }
  if (found < 0)
    return invalid_argument(std::string(source) + ": no OpenCL device matches '" + spec +
                            "' (use an index, platform:device, cpu/gpu/accelerator or part of a name); devices: " +
                            list_devices(devices));
  std::rotate(devices.begin(), devices.begin() + found, devices.begin() + found + 1);
  for (size_t i = 0; i < devices.size(); ++i) devices[i]->index = int(i);
  return Status::Ok();
}

// Discovers once (under the runtime mutex).
void discover_locked(Runtime& r) {
  if (r.discovered) return;
  r.discovered = true;
  cl_uint platform_count = 0;
  cl_int err = clGetPlatformIDs(0, nullptr, &platform_count);
  if (err == -1001 /* CL_PLATFORM_NOT_FOUND_KHR */ || (err == CL_SUCCESS && platform_count == 0)) {
    r.status = unsupported("no OpenCL platform found (the ICD loader found no vendor driver in /etc/OpenCL/vendors)");
    return;
  }
  if (err != CL_SUCCESS) {
    r.status = check(err, "clGetPlatformIDs");
    return;
  }
  std::vector<cl_platform_id> platforms(platform_count);
  r.status = check(clGetPlatformIDs(platform_count, platforms.data(), nullptr), "clGetPlatformIDs");
  if (!r.status.ok()) return;
  for (cl_uint p = 0; p < platform_count; ++p) {
    cl_uint count = 0;
    if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, nullptr, &count) != CL_SUCCESS || count == 0) continue;
    std::vector<cl_device_id> ids(count);
    if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, count, ids.data(), nullptr) != CL_SUCCESS) continue;
    for (cl_uint d = 0; d < count; ++d) {
      auto info = std::make_unique<DeviceInfo>(read_device(platforms[p], ids[d], int(p), int(d)));
      info->index = int(r.devices.size());
      r.devices.push_back(std::move(info));
    }
  }
  if (r.devices.empty()) {
    r.status = unsupported("no OpenCL device found on " + std::to_string(platform_count) + " platform(s)");
    return;
  }
  const char* env = std::getenv("ANVIL_OPENCL_DEVICE");
  r.status = apply_selection(r.devices, env ? env : "", "ANVIL_OPENCL_DEVICE");
  r.contexts.resize(r.devices.size());
}

// ANVIL_OPENCL_PROFILE=1: every launch waits for its kernel and prints its device time
// (diagnostics only: it serialises the queue).
bool profiling() {
  static const bool on = [] {
    const char* v = std::getenv("ANVIL_OPENCL_PROFILE");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}

Status discovered(Runtime** out) {
  Runtime& r = runtime();
  std::lock_guard lock(r.mutex);
  discover_locked(r);
  *out = &r;
  return r.status;
}

}  // namespace

// ------------------------------------------------------------------ errors
const char* error_name(cl_int code) {
  switch (code) {
#define ANVIL_CL_ERROR(name) \
  case name: return #name;
    ANVIL_CL_ERROR(CL_SUCCESS)
    ANVIL_CL_ERROR(CL_DEVICE_NOT_FOUND)
    ANVIL_CL_ERROR(CL_DEVICE_NOT_AVAILABLE)
    ANVIL_CL_ERROR(CL_COMPILER_NOT_AVAILABLE)
    ANVIL_CL_ERROR(CL_MEM_OBJECT_ALLOCATION_FAILURE)
    ANVIL_CL_ERROR(CL_OUT_OF_RESOURCES)
    ANVIL_CL_ERROR(CL_OUT_OF_HOST_MEMORY)
    ANVIL_CL_ERROR(CL_PROFILING_INFO_NOT_AVAILABLE)
    ANVIL_CL_ERROR(CL_MEM_COPY_OVERLAP)
    ANVIL_CL_ERROR(CL_IMAGE_FORMAT_MISMATCH)
    ANVIL_CL_ERROR(CL_IMAGE_FORMAT_NOT_SUPPORTED)
    ANVIL_CL_ERROR(CL_BUILD_PROGRAM_FAILURE)
    ANVIL_CL_ERROR(CL_MAP_FAILURE)
    ANVIL_CL_ERROR(CL_MISALIGNED_SUB_BUFFER_OFFSET)
    ANVIL_CL_ERROR(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
    ANVIL_CL_ERROR(CL_COMPILE_PROGRAM_FAILURE)
    ANVIL_CL_ERROR(CL_LINKER_NOT_AVAILABLE)
    ANVIL_CL_ERROR(CL_LINK_PROGRAM_FAILURE)
    ANVIL_CL_ERROR(CL_DEVICE_PARTITION_FAILED)
    ANVIL_CL_ERROR(CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
    ANVIL_CL_ERROR(CL_INVALID_VALUE)
    ANVIL_CL_ERROR(CL_INVALID_DEVICE_TYPE)
    ANVIL_CL_ERROR(CL_INVALID_PLATFORM)
    ANVIL_CL_ERROR(CL_INVALID_DEVICE)
    ANVIL_CL_ERROR(CL_INVALID_CONTEXT)
    ANVIL_CL_ERROR(CL_INVALID_QUEUE_PROPERTIES)
    ANVIL_CL_ERROR(CL_INVALID_COMMAND_QUEUE)
    ANVIL_CL_ERROR(CL_INVALID_HOST_PTR)
    ANVIL_CL_ERROR(CL_INVALID_MEM_OBJECT)
    ANVIL_CL_ERROR(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)
    ANVIL_CL_ERROR(CL_INVALID_IMAGE_SIZE)
    ANVIL_CL_ERROR(CL_INVALID_SAMPLER)
    ANVIL_CL_ERROR(CL_INVALID_BINARY)
    ANVIL_CL_ERROR(CL_INVALID_BUILD_OPTIONS)
    ANVIL_CL_ERROR(CL_INVALID_PROGRAM)
    ANVIL_CL_ERROR(CL_INVALID_PROGRAM_EXECUTABLE)
    ANVIL_CL_ERROR(CL_INVALID_KERNEL_NAME)
    ANVIL_CL_ERROR(CL_INVALID_KERNEL_DEFINITION)
    ANVIL_CL_ERROR(CL_INVALID_KERNEL)
    ANVIL_CL_ERROR(CL_INVALID_ARG_INDEX)
    ANVIL_CL_ERROR(CL_INVALID_ARG_VALUE)
    ANVIL_CL_ERROR(CL_INVALID_ARG_SIZE)
    ANVIL_CL_ERROR(CL_INVALID_KERNEL_ARGS)
    ANVIL_CL_ERROR(CL_INVALID_WORK_DIMENSION)
    ANVIL_CL_ERROR(CL_INVALID_WORK_GROUP_SIZE)
    ANVIL_CL_ERROR(CL_INVALID_WORK_ITEM_SIZE)
    ANVIL_CL_ERROR(CL_INVALID_GLOBAL_OFFSET)
    ANVIL_CL_ERROR(CL_INVALID_EVENT_WAIT_LIST)
    ANVIL_CL_ERROR(CL_INVALID_EVENT)
    ANVIL_CL_ERROR(CL_INVALID_OPERATION)
    ANVIL_CL_ERROR(CL_INVALID_GL_OBJECT)
    ANVIL_CL_ERROR(CL_INVALID_BUFFER_SIZE)
    ANVIL_CL_ERROR(CL_INVALID_MIP_LEVEL)
    ANVIL_CL_ERROR(CL_INVALID_GLOBAL_WORK_SIZE)
    ANVIL_CL_ERROR(CL_INVALID_PROPERTY)
    ANVIL_CL_ERROR(CL_INVALID_IMAGE_DESCRIPTOR)
    ANVIL_CL_ERROR(CL_INVALID_COMPILER_OPTIONS)
    ANVIL_CL_ERROR(CL_INVALID_LINKER_OPTIONS)
    ANVIL_CL_ERROR(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef ANVIL_CL_ERROR
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "CL_UNKNOWN_ERROR";
  }
}

Status check(cl_int code, const char* what) {
  if (code == CL_SUCCESS) return Status::Ok();
  const bool oom = code == CL_OUT_OF_HOST_MEMORY || code == CL_MEM_OBJECT_ALLOCATION_FAILURE ||
                   code == CL_OUT_OF_RESOURCES;
  return {oom ? StatusCode::out_of_memory : StatusCode::runtime_error,
          std::string(what) + " failed: " + error_name(code) + " (" + std::to_string(code) + ")"};
}

// ------------------------------------------------------------------ devices
const char* DeviceInfo::type_name() const {
  if (type & CL_DEVICE_TYPE_GPU) return "gpu";
  if (type & CL_DEVICE_TYPE_CPU) return "cpu";
  if (type & CL_DEVICE_TYPE_ACCELERATOR) return "accelerator";
  return "other";
}

std::string DeviceInfo::key() const {
  return platform_name + " | " + platform_version + " | " + vendor + " | " + name + " | " + device_version +
         " | driver " + driver_version;
}

std::string DeviceInfo::describe() const {
  char mem[32];
  std::snprintf(mem, sizeof mem, "%.1f GiB", double(global_mem_bytes) / double(1 << 30));
  return "opencl:" + std::to_string(index) + " " + name + " (" + platform_name + " " + driver_version + ", " +
         type_name() + ", " + std::to_string(compute_units) + " CUs, " + mem + ", " +
         std::to_string(local_mem_bytes / 1024) + " KiB local" + (local_mem_dedicated ? "" : " (in global memory)") +
         (host_unified_memory ? ", host memory" : "") + (fp16 ? ", fp16" : "") + ")";
}

Status available() {
  Runtime* r = nullptr;
  return discovered(&r);
}

std::string describe() {
  Runtime* r = nullptr;
  if (!discovered(&r).ok()) return "";
  std::string out;
  for (const auto& d : r->devices) out += (out.empty() ? "" : "; ") + d->describe();
  return out;
}

int device_count() {
  Runtime* r = nullptr;
  return discovered(&r).ok() ? int(r->devices.size()) : 0;
}

Status device_info(int device, const DeviceInfo** out) {
  Runtime* r = nullptr;
  ANVIL_RETURN_IF_ERROR(discovered(&r));
  if (device < 0 || device >= int(r->devices.size()))
    return invalid_argument("opencl device " + std::to_string(device) + " does not exist (" +
                            std::to_string(r->devices.size()) + " found: " + list_devices(r->devices) + ")");
  *out = r->devices[size_t(device)].get();
  return Status::Ok();
}

Status select_device(const std::string& spec) {
  Runtime& r = runtime();
  std::lock_guard lock(r.mutex);
  discover_locked(r);
  if (r.devices.empty()) return r.status;
  // Validate on a copy first: an unknown spec is reported as such whatever the state.
  std::vector<std::unique_ptr<DeviceInfo>> trial;
  for (const auto& d : r.devices) trial.push_back(std::make_unique<DeviceInfo>(*d));
  ANVIL_RETURN_IF_ERROR(apply_selection(trial, spec, "opencl select_device"));
  if (r.any_context) {
    if (trial[0]->id == r.devices[0]->id) return Status::Ok();  // already the default
    return invalid_argument("opencl: select_device('" + spec +
                            "') after the backend has been used; select the device before the first op");
  }
  // A valid selection also clears an invalid ANVIL_OPENCL_DEVICE.
  const Status s = apply_selection(r.devices, spec, "opencl select_device");
  if (s.ok()) r.status = Status::Ok();
  return s;
}

// ------------------------------------------------------------------ contexts
Status device_context(int device, DeviceContext** out) {
  Runtime& r = runtime();
  std::lock_guard lock(r.mutex);
  discover_locked(r);
  ANVIL_RETURN_IF_ERROR(r.status);
  if (device < 0 || device >= int(r.devices.size()))
    return invalid_argument("opencl device " + std::to_string(device) + " does not exist (" +
                            std::to_string(r.devices.size()) + " found: " + list_devices(r.devices) + ")");
  auto& slot = r.contexts[size_t(device)];
  if (!slot) {
    const DeviceInfo& info = *r.devices[size_t(device)];
    const cl_context_properties props[] = {CL_CONTEXT_PLATFORM, reinterpret_cast<cl_context_properties>(info.platform),
                                           0};
    cl_int err = CL_SUCCESS;
    cl_context context = clCreateContext(props, 1, &info.id, nullptr, nullptr, &err);
    ANVIL_RETURN_IF_ERROR(check(err, "clCreateContext"));
    cl_command_queue queue = clCreateCommandQueue(context, info.id, profiling() ? CL_QUEUE_PROFILING_ENABLE : 0, &err);
    if (err != CL_SUCCESS) {
      clReleaseContext(context);
      return check(err, "clCreateCommandQueue");
    }
    auto ctx = std::make_unique<DeviceContext>();
    ctx->index = device;
    ctx->info = &info;
    ctx->context = context;
    ctx->queue = queue;
    slot = std::move(ctx);
    r.any_context = true;
  }
  *out = slot.get();
  return Status::Ok();
}

// ------------------------------------------------------------------ memory
Status malloc_device(int device, int64_t bytes, void** out) {
  *out = nullptr;
  DeviceContext* ctx = nullptr;
  ANVIL_RETURN_IF_ERROR(device_context(device, &ctx));
  if (bytes <= 0) return Status::Ok();
  if (bytes > ctx->info->max_alloc_bytes)
    return {StatusCode::out_of_memory, "opencl: " + std::to_string(bytes) + " bytes is more than the device's " +
                                           "CL_DEVICE_MAX_MEM_ALLOC_SIZE (" +
                                           std::to_string(ctx->info->max_alloc_bytes) + ")"};
  cl_int err = CL_SUCCESS;
  cl_mem mem = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, size_t(bytes), nullptr, &err);
  ANVIL_RETURN_IF_ERROR(check(err, "clCreateBuffer"));
  *out = mem;
  return Status::Ok();
}

Status free_device(int device, void* mem) {
  if (!mem) return Status::Ok();
  return check(clReleaseMemObject(static_cast<cl_mem>(mem)), "clReleaseMemObject");
}

Status copy_to_device(int device, void* dst_mem, const void* host_src, int64_t bytes) {
  if (bytes <= 0) return Status::Ok();
  DeviceContext* ctx = nullptr;
  ANVIL_RETURN_IF_ERROR(device_context(device, &ctx));
  return check(clEnqueueWriteBuffer(ctx->queue, static_cast<cl_mem>(dst_mem), CL_TRUE, 0, size_t(bytes), host_src, 0,
                                    nullptr, nullptr),
               "clEnqueueWriteBuffer");
}

Status copy_to_host(int device, void* host_dst, const void* src_mem, int64_t bytes) {
  if (bytes <= 0) return Status::Ok();
  DeviceContext* ctx = nullptr;
  ANVIL_RETURN_IF_ERROR(device_context(device, &ctx));
  return check(clEnqueueReadBuffer(ctx->queue, static_cast<cl_mem>(const_cast<void*>(src_mem)), CL_TRUE, 0,
                                   size_t(bytes), host_dst, 0, nullptr, nullptr),
               "clEnqueueReadBuffer");
}

Status synchronize(int device) {
  DeviceContext* ctx = nullptr;
  ANVIL_RETURN_IF_ERROR(device_context(device, &ctx));
  return check(clFinish(ctx->queue), "clFinish");
}

// ------------------------------------------------------------------ operands
int device_of(const TensorRef& lead) { return lead.device.type == DeviceType::opencl ? lead.device.index : 0; }

Status host_operands_allowed() {
  // The same precedence as the registry: API overrides over the environment, per field.
  const Overrides api = current_overrides();
  static const std::string env_backend = std::getenv("ANVIL_BACKEND") ? std::getenv("ANVIL_BACKEND") : "";
  static const std::string env_kernels = std::getenv("ANVIL_KERNEL") ? std::getenv("ANVIL_KERNEL") : "";
  const std::string& backend = api.backend.empty() ? env_backend : api.backend;
  const std::string& kernels = api.kernels.empty() ? env_kernels : api.kernels;
  if (backend == "opencl" || kernels.find(".opencl") != std::string::npos) return Status::Ok();
  return unsupported("host memory: the opencl backend runs on it only when forced (backend or kernel)");
}

Status operands_usable(std::initializer_list<const TensorRef*> operands) {
  const TensorRef& lead = **operands.begin();
  for (const TensorRef* t : operands) {
    if (t->device.type != DeviceType::opencl && t->device.type != DeviceType::host)
      return unsupported(std::string("operand on ") + device_type_name(t->device.type) +
                         " memory (the opencl backend takes opencl buffers or host memory)");
    if (t->device != lead.device) return invalid_argument("operands are on different devices");
  }
  if (lead.device.type == DeviceType::host) ANVIL_RETURN_IF_ERROR(host_operands_allowed());
  const DeviceInfo* info = nullptr;
  return device_info(device_of(lead), &info);
}

Operands::Operands(int device) : device_(device) { status_ = device_context(device, &ctx_); }

Operands::~Operands() {
  // Host memory must not be touched by the device once the call returns: wait for the
  // commands that use the wraps when finish() did not (an error path).
  if (host_ && !finished_ && ctx_) (void)clFinish(ctx_->queue);
  for (const Wrap& w : wraps_) clReleaseMemObject(w.mem);
}

Status Operands::bind(const TensorRef& t, Access access, Operand* out, const char* name) {
  *out = {};
  ANVIL_RETURN_IF_ERROR(status_);
  const int64_t span = checks::element_span(t);  // from the buffer's element 0, offset included
  int64_t span_bytes = 0;
  if (span < 0 || !checks::checked_mul(span, dtype_size(t.dtype), &span_bytes))
    return invalid_argument(std::string(name) + ": byte extent overflows int64");
  if (t.device.type == DeviceType::opencl) {
    if (t.device.index != device_)
      return invalid_argument(std::string(name) + ": on opencl device " + std::to_string(t.device.index) +
                              ", the call runs on opencl device " + std::to_string(device_));
    out->mem = static_cast<cl_mem>(t.data);
    out->offset = t.offset;
    if (span == 0 || !out->mem) return Status::Ok();
    size_t size = 0;
    ANVIL_RETURN_IF_ERROR(
        check(clGetMemObjectInfo(out->mem, CL_MEM_SIZE, sizeof size, &size, nullptr), "clGetMemObjectInfo"));
    if (span_bytes > int64_t(size))
      return invalid_argument(std::string(name) + ": the view reaches byte " + std::to_string(span_bytes) +
                              " of a cl_mem of " + std::to_string(size) + " bytes");
    return Status::Ok();
  }
  if (t.device.type != DeviceType::host)
    return invalid_argument(std::string(name) + ": the opencl backend takes opencl or host memory, not " +
                            device_type_name(t.device.type));
  host_ = true;
  if (span == 0 || !t.data) return Status::Ok();  // empty view: a null buffer, never read
  // Wrap exactly the bytes the view reaches from its element 0.
  const int64_t bytes = span_bytes - t.offset * dtype_size(t.dtype);
  const cl_mem_flags flags = CL_MEM_USE_HOST_PTR | (access == Access::read ? CL_MEM_READ_ONLY : CL_MEM_READ_WRITE);
  cl_int err = CL_SUCCESS;
  cl_mem mem = clCreateBuffer(ctx_->context, flags, size_t(bytes), t.ptr(), &err);
  ANVIL_RETURN_IF_ERROR(check(err, (std::string("clCreateBuffer (USE_HOST_PTR, ") + name + ")").c_str()));
  wraps_.push_back({mem, access != Access::read, bytes});
  out->mem = mem;
  out->offset = 0;
  return Status::Ok();
}

Status Operands::finish() {
  ANVIL_RETURN_IF_ERROR(status_);
  finished_ = true;
  if (!host_) return check(clFlush(ctx_->queue), "clFlush");
  Status status;
  for (const Wrap& w : wraps_) {
    if (!w.written) continue;
    cl_int err = CL_SUCCESS;
    void* p = clEnqueueMapBuffer(ctx_->queue, w.mem, CL_TRUE, CL_MAP_READ, 0, size_t(w.bytes), 0, nullptr, nullptr,
                                 &err);
    if (err != CL_SUCCESS) {
      if (status.ok()) status = check(err, "clEnqueueMapBuffer (host output)");
      continue;
    }
    err = clEnqueueUnmapMemObject(ctx_->queue, w.mem, p, 0, nullptr, nullptr);
    if (status.ok()) status = check(err, "clEnqueueUnmapMemObject");
  }
  const Status done = check(clFinish(ctx_->queue), "clFinish");
  return status.ok() ? done : status;
}

// ------------------------------------------------------------------ workspace pool
namespace {
struct PoolBlock {
  cl_mem mem;
  int64_t bytes;
  bool in_use;
};
struct WorkspacePool {
  std::mutex mutex;
  std::map<int, std::vector<PoolBlock>> blocks;  // by device
};
WorkspacePool& workspace_pool() {
  static WorkspacePool* pool = new WorkspacePool;
  return *pool;
}
constexpr size_t kMaxFreeBlocks = 6;  // per device; more are released
}  // namespace

Status Workspace::allocate(int64_t bytes, cl_mem* out) {
  *out = nullptr;
  if (bytes <= 0) return Status::Ok();
  if (count_ == kMaxBlocks) return {StatusCode::runtime_error, "opencl workspace: more than 8 blocks in one call"};
  DeviceContext* ctx = nullptr;
  ANVIL_RETURN_IF_ERROR(device_context(device_, &ctx));
  WorkspacePool& pool = workspace_pool();
  {
    std::lock_guard lock(pool.mutex);
    auto& blocks = pool.blocks[device_];
    PoolBlock* best = nullptr;
    for (PoolBlock& b : blocks)
      if (!b.in_use && b.bytes >= bytes && (!best || b.bytes < best->bytes)) best = &b;
    if (best) {
      best->in_use = true;
      *out = best->mem;
      blocks_[count_] = best->mem;
      sizes_[count_++] = best->bytes;
      return Status::Ok();
    }
  }
  if (bytes > ctx->info->max_alloc_bytes)
    return {StatusCode::out_of_memory, "opencl workspace of " + std::to_string(bytes) +
                                           " bytes exceeds CL_DEVICE_MAX_MEM_ALLOC_SIZE (" +
                                           std::to_string(ctx->info->max_alloc_bytes) + ")"};
  cl_int err = CL_SUCCESS;
  cl_mem mem = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, size_t(bytes), nullptr, &err);
  ANVIL_RETURN_IF_ERROR(check(err, "clCreateBuffer (workspace)"));
  {
    std::lock_guard lock(pool.mutex);
    pool.blocks[device_].push_back({mem, bytes, true});
  }
  *out = mem;
  blocks_[count_] = mem;
  sizes_[count_++] = bytes;
  return Status::Ok();
}

Workspace::~Workspace() {
  if (count_ == 0) return;
  WorkspacePool& pool = workspace_pool();
  std::lock_guard lock(pool.mutex);
  auto& blocks = pool.blocks[device_];
  for (int i = 0; i < count_; ++i)
    for (PoolBlock& b : blocks)
      if (b.mem == blocks_[i]) b.in_use = false;
  // Keep the largest free blocks; release the rest (the queue keeps them alive for work
  // still enqueued).
  size_t free_count = 0;
  for (const PoolBlock& b : blocks) free_count += !b.in_use;
  while (free_count > kMaxFreeBlocks) {
    auto smallest = blocks.end();
    for (auto it = blocks.begin(); it != blocks.end(); ++it)
      if (!it->in_use && (smallest == blocks.end() || it->bytes < smallest->bytes)) smallest = it;
    clReleaseMemObject(smallest->mem);
    blocks.erase(smallest);
    --free_count;
  }
}

// ------------------------------------------------------------------ embedded sources
const char* embedded_source(std::string_view name) {
  for (int i = 0; i < kEmbeddedSourceCount; ++i)
    if (name == kEmbeddedSources[i].name) return kEmbeddedSources[i].text;
  return nullptr;
}

std::vector<std::string> embedded_source_names() {
  std::vector<std::string> names;
  for (int i = 0; i < kEmbeddedSourceCount; ++i) names.push_back(kEmbeddedSources[i].name);
  return names;
}

// ------------------------------------------------------------------ defines
Defines& Defines::add(const std::string& name, int64_t value) {
  items_.push_back("-D" + name + "=" + std::to_string(value));
  return *this;
}
Defines& Defines::add(const std::string& name, const std::string& value) {
  items_.push_back("-D" + name + "=" + value);
  return *this;
}
Defines& Defines::flag(const std::string& option) {
  items_.push_back(option);
  return *this;
}
std::string Defines::str() const {
  std::vector<std::string> sorted = items_;
  std::sort(sorted.begin(), sorted.end());
  std::string out;
  for (const std::string& s : sorted) out += (out.empty() ? "" : " ") + s;
  return out;
}

uint64_t hash64(std::string_view data, uint64_t seed) {
  uint64_t h = seed;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  // Final avalanche (splitmix64), so that similar keys give unrelated file names.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

// ------------------------------------------------------------------ the disk cache
namespace {

struct DiskCacheConfig {
  std::mutex mutex;
  bool resolved = false;
  std::string override_dir;  // set_cache_dir
  std::string root;          // "" = disabled
  std::string why_disabled;
};
DiskCacheConfig& disk_config() {
  static DiskCacheConfig* c = new DiskCacheConfig;
  return *c;
}

// mkdir -p with owner-only permissions for the folders it creates; then the leaf must be
// a directory owned by this user and not writable by group or others.
bool make_private_dir(const std::string& path, std::string* why) {
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    partial = path.substr(0, pos);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
      *why = "cannot create " + partial + ": " + std::strerror(errno);
      return false;
    }
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    *why = path + " is not a directory";
    return false;
  }
  if (st.st_uid != ::geteuid()) {
    *why = path + " is owned by another user";
    return false;
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    *why = path + " is writable by group or others";
    return false;
  }
  return true;
}

std::string resolve_root(const std::string& override_dir) {
  if (!override_dir.empty()) return override_dir;
  if (const char* d = std::getenv("ANVIL_OPENCL_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/anvil/opencl";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/anvil/opencl";
  return "";
}

// The programs folder, or "" (disk cache off).
std::string programs_dir() {
  DiskCacheConfig& c = disk_config();
  std::lock_guard lock(c.mutex);
  if (!c.resolved) {
    c.resolved = true;
    const char* off = std::getenv("ANVIL_OPENCL_CACHE");
    const std::string root = resolve_root(c.override_dir);
    if (off && std::string(off) == "0") c.why_disabled = "ANVIL_OPENCL_CACHE=0";
    else if (root.empty()) c.why_disabled = "no cache folder (set ANVIL_OPENCL_CACHE_DIR or HOME)";
    else if (!root.empty() && root[0] != '/') c.why_disabled = "cache folder '" + root + "' is not an absolute path";
    else if (make_private_dir(root, &c.why_disabled) && make_private_dir(root + "/programs", &c.why_disabled))
      c.root = root;
  }
  return c.root.empty() ? "" : c.root + "/programs";
}

constexpr char kMagic[8] = {'A', 'N', 'V', 'L', 'C', 'L', 'P', '1'};

std::string program_key(const DeviceInfo& info, std::string_view source_name, std::string_view source,
                        const std::string& options) {
  return "anvil opencl program v1\ndevice: " + info.key() + "\nsource: " + std::string(source_name) + " " +
         hex64(hash64(source)) + " (" + std::to_string(source.size()) + " bytes)\noptions: " + options + "\n";
}

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}
uint64_t get_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// The payload of `path` if it is a valid cache file for `key`; else empty with `why`.
std::string read_cache_file(const std::string& path, const std::string& key, std::string* why) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    *why = errno == ENOENT ? "" : "cannot open: " + std::string(std::strerror(errno));
    return "";
  }
  struct stat st {};
  std::string data;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) *why = "not a regular file";
  else if (st.st_uid != ::geteuid()) *why = "owned by another user";
  else if (st.st_mode & (S_IWGRP | S_IWOTH)) *why = "writable by group or others";
  else if (st.st_size > (int64_t(1) << 30)) *why = "larger than 1 GiB";
  else {
    data.resize(size_t(st.st_size));
    size_t got = 0;
    while (got < data.size()) {
      const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
      if (n <= 0) break;
      got += size_t(n);
    }
    if (got != data.size()) *why = "short read";
  }
  ::close(fd);
  if (!why->empty()) return "";
  // Layout: magic (8) | key length (8) | key | payload length (8) | payload hash (8) | payload
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const size_t size = data.size();
  if (size < 16 || std::memcmp(p, kMagic, 8) != 0) {
    *why = "not an anvil program cache file (bad magic or truncated)";
    return "";
  }
  const uint64_t key_len = get_u64(p + 8);
  if (key_len > size || 16 + key_len + 16 > size) {
    *why = "truncated (key)";
    return "";
  }
  if (std::string_view(data.data() + 16, size_t(key_len)) != key) {
    *why = "stale: made for another device, driver, source or options";
    return "";
  }
  const size_t at = size_t(16 + key_len);
  const uint64_t payload_len = get_u64(p + at), payload_hash = get_u64(p + at + 8);
  if (payload_len != size - at - 16) {
    *why = "truncated (payload of " + std::to_string(size - at - 16) + " bytes, header says " +
           std::to_string(payload_len) + ")";
    return "";
  }
  std::string payload = data.substr(at + 16);
  if (hash64(payload) != payload_hash) {
    *why = "checksum mismatch (corrupt)";
    return "";
  }
  return payload;
}

// Writes atomically: a private temporary file in the same folder, renamed into place.
// Failure is not an error for the caller (the cache is an optimisation).
void write_cache_file(const std::string& path, const std::string& key, const std::string& payload) {
  std::string data(kMagic, 8);
  put_u64(data, key.size());
  data += key;
  put_u64(data, payload.size());
  put_u64(data, hash64(payload));
  data += payload;
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." +
                          std::to_string(std::hash<std::thread::id>{}(std::this_thread::get_id()) % 100000) + "." +
                          std::to_string(counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return;
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n <= 0) break;
    done += size_t(n);
  }
  const bool ok = done == data.size() && ::close(fd) == 0;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) ::unlink(tmp.c_str());
}

// ------------------------------------------------------------------ the memory cache
struct KernelPool {
  std::mutex mutex;
  std::vector<cl_kernel> free;
};

struct ProgramEntry {
  std::mutex mutex;   // held while building
  bool built = false;
  cl_program program = nullptr;
  std::map<std::string, std::unique_ptr<KernelPool>> kernels;  // by kernel name, under mutex
  // Last owner gone (no lease, not in the cache): enqueued commands hold their own
  // references, so releasing here is safe.
  ~ProgramEntry() {
    for (auto& [name, pool] : kernels)
      for (cl_kernel k : pool->free) clReleaseKernel(k);
    if (program) clReleaseProgram(program);
  }
};

struct ProgramCache {
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<ProgramEntry>> entries;  // device|source|options
  CacheStats stats;
};
ProgramCache& program_cache() {
  static ProgramCache* c = new ProgramCache;
  return *c;
}

std::string build_log(cl_program program, cl_device_id device) {
  size_t size = 0;
  if (clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, 0, nullptr, &size) != CL_SUCCESS || !size) return "";
  std::string log(size, '\0');
  (void)clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, size, log.data(), nullptr);
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  if (log.size() > 4000) log = log.substr(0, 4000) + "\n...";
  return log;
}

Status build_from_source(const DeviceContext& ctx, std::string_view name, const char* source,
                         const std::string& options, cl_program* out) {
  cl_int err = CL_SUCCESS;
  const char* sources[] = {source};
  cl_program program = clCreateProgramWithSource(ctx.context, 1, sources, nullptr, &err);
  ANVIL_RETURN_IF_ERROR(check(err, "clCreateProgramWithSource"));
  err = clBuildProgram(program, 1, &ctx.info->id, options.c_str(), nullptr, nullptr);
  if (err != CL_SUCCESS) {
    Status s = check(err, "clBuildProgram");
    const std::string log = build_log(program, ctx.info->id);
    clReleaseProgram(program);
    return {s.code(), s.message() + " for " + std::string(name) + " with '" + options + "'" +
                          (log.empty() ? "" : ":\n" + log)};
  }
  *out = program;
  return Status::Ok();
}

// A program from a binary payload; null (and `why`) if the driver refuses it.
cl_program build_from_binary(const DeviceContext& ctx, const std::string& payload, const std::string& options,
                             std::string* why) {
  const size_t size = payload.size();
  const auto* bytes = reinterpret_cast<const unsigned char*>(payload.data());
  cl_int binary_status = CL_SUCCESS, err = CL_SUCCESS;
  cl_program program = clCreateProgramWithBinary(ctx.context, 1, &ctx.info->id, &size, &bytes, &binary_status, &err);
  if (err != CL_SUCCESS || binary_status != CL_SUCCESS) {
    *why = std::string("driver refused the binary: ") + error_name(err != CL_SUCCESS ? err : binary_status);
    if (program) clReleaseProgram(program);
    return nullptr;
  }
  err = clBuildProgram(program, 1, &ctx.info->id, options.c_str(), nullptr, nullptr);
  if (err != CL_SUCCESS) {
    *why = std::string("clBuildProgram of the binary failed: ") + error_name(err);
    clReleaseProgram(program);
    return nullptr;
  }
  return program;
}

std::string program_binary(const DeviceContext& ctx, cl_program program) {
  size_t size = 0;
  if (clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, nullptr) != CL_SUCCESS || !size) return "";
  std::string binary(size, '\0');
  unsigned char* ptr = reinterpret_cast<unsigned char*>(binary.data());
  if (clGetProgramInfo(program, CL_PROGRAM_BINARIES, sizeof ptr, &ptr, nullptr) != CL_SUCCESS) return "";
  return binary;
}

std::string cache_path(const std::string& dir, const std::string& key) { return dir + "/" + hex64(hash64(key)) + ".clbin"; }

// Builds (or loads) the program of an entry; called with the entry's mutex held.
Status build_entry(ProgramEntry& entry, const DeviceContext& ctx, std::string_view name, const std::string& options,
                   CacheUse use) {
  const char* source = embedded_source(name);
  if (!source)
    return {StatusCode::not_found, "opencl: no embedded OpenCL source named '" + std::string(name) + "'"};
  ProgramCache& cache = program_cache();
  const std::string dir = use == CacheUse::no_disk || use == CacheUse::uncached ? "" : programs_dir();
  const std::string key = program_key(*ctx.info, name, source, options);
  const std::string path = dir.empty() ? "" : cache_path(dir, key);
  if (!path.empty() && use == CacheUse::normal) {
    const double t0 = now_ms();
    std::string why;
    const std::string payload = read_cache_file(path, key, &why);
    cl_program program = payload.empty() ? nullptr : build_from_binary(ctx, payload, options, &why);
    if (program) {
      std::lock_guard lock(cache.mutex);
      cache.stats.disk_hits++;
      cache.stats.disk_load_ms += now_ms() - t0;
      entry.program = program;
      return Status::Ok();
    }
    if (!why.empty()) {
      std::lock_guard lock(cache.mutex);
      cache.stats.disk_rejected++;
      cache.stats.last_rejection = path + ": " + why;
      if (std::getenv("ANVIL_LOG")) std::fprintf(stderr, "anvil: opencl program cache: ignoring %s: %s\n", path.c_str(), why.c_str());
    }
  }
  const double t0 = now_ms();
  cl_program program = nullptr;
  ANVIL_RETURN_IF_ERROR(build_from_source(ctx, name, source, options, &program));
  {
    std::lock_guard lock(cache.mutex);
    cache.stats.builds++;
    cache.stats.build_ms += now_ms() - t0;
  }
  entry.program = program;
  if (!path.empty()) {
    const std::string binary = program_binary(ctx, program);
    if (!binary.empty()) write_cache_file(path, key, binary);
  }
  return Status::Ok();
}

Status program_entry(int device, std::string_view source, const std::string& options, CacheUse use,
                     std::shared_ptr<ProgramEntry>* out) {
  DeviceContext* ctx = nullptr;
  ANVIL_RETURN_IF_ERROR(device_context(device, &ctx));
  ProgramCache& cache = program_cache();
  std::shared_ptr<ProgramEntry> entry;
  if (use == CacheUse::fresh_build || use == CacheUse::uncached) {
    entry = std::make_shared<ProgramEntry>();
  } else {
    const std::string id = std::to_string(device) + "|" + std::string(source) + "|" + options;
    std::lock_guard lock(cache.mutex);
    auto& slot = cache.entries[id];
    if (!slot) slot = std::make_shared<ProgramEntry>();
    else if (slot->built) cache.stats.memory_hits++;
    entry = slot;
  }
  std::lock_guard lock(entry->mutex);
  if (!entry->built) {
    ANVIL_RETURN_IF_ERROR(build_entry(*entry, *ctx, source, options, use));
    entry->built = true;
  }
  *out = entry;
  return Status::Ok();
}

}  // namespace

Status build_program(int device, std::string_view source, const std::string& options, cl_program* out,
                     CacheUse use) {
  std::shared_ptr<ProgramEntry> entry;
  ANVIL_RETURN_IF_ERROR(program_entry(device, source, options, use, &entry));
  *out = entry->program;
  // fresh_build, uncached: the entry dies here, the caller owns a reference of its own.
  if (use == CacheUse::fresh_build || use == CacheUse::uncached) clRetainProgram(entry->program);
  return Status::Ok();
}

CacheStats cache_stats() {
  ProgramCache& cache = program_cache();
  std::lock_guard lock(cache.mutex);
  return cache.stats;
}

std::string cache_dir() { return programs_dir(); }

std::string user_cache_root() {
  const std::string programs = programs_dir();
  return programs.empty() ? "" : programs.substr(0, programs.size() - std::string("/programs").size());
}

void set_cache_dir(const std::string& dir) {
  DiskCacheConfig& c = disk_config();
  std::lock_guard lock(c.mutex);
  c.override_dir = dir;
  c.resolved = false;
  c.root.clear();
  c.why_disabled.clear();
}

void clear_memory_cache() {
  ProgramCache& cache = program_cache();
  std::lock_guard lock(cache.mutex);
  // Entries still referenced by a leased Kernel stay alive through its shared_ptr; the
  // programs themselves are kept (released with the process) since kernels may use them.
  cache.entries.clear();
}

std::string cache_file(int device, std::string_view source, const std::string& options) {
  const DeviceInfo* info = nullptr;
  const char* text = embedded_source(source);
  const std::string dir = programs_dir();
  if (!text || dir.empty() || !device_info(device, &info).ok()) return "";
  return cache_path(dir, program_key(*info, source, text, options));
}

// ------------------------------------------------------------------ kernels
namespace {
struct LeasedPool {
  std::shared_ptr<ProgramEntry> entry;  // keeps the program alive
  KernelPool* pool;
};
}  // namespace

Status Kernel::create(int device, std::string_view source, const std::string& options, const char* kernel_name) {
  if (kernel_) return {StatusCode::runtime_error, "opencl Kernel::create called twice"};
  std::shared_ptr<ProgramEntry> entry;
  ANVIL_RETURN_IF_ERROR(program_entry(device, source, options, CacheUse::normal, &entry));
  KernelPool* pool = nullptr;
  {
    std::lock_guard lock(entry->mutex);
    auto& slot = entry->kernels[kernel_name];
    if (!slot) slot = std::make_unique<KernelPool>();
    pool = slot.get();
  }
  cl_kernel k = nullptr;
  {
    std::lock_guard lock(pool->mutex);
    if (!pool->free.empty()) {
      k = pool->free.back();
      pool->free.pop_back();
    }
  }
  if (!k) {
    cl_int err = CL_SUCCESS;
    k = clCreateKernel(entry->program, kernel_name, &err);
    ANVIL_RETURN_IF_ERROR(check(err, (std::string("clCreateKernel (") + kernel_name + ")").c_str()));
  }
  kernel_ = k;
  name_ = kernel_name;
  pool_ = new LeasedPool{std::move(entry), pool};
  return Status::Ok();
}

Kernel::~Kernel() {
  if (!pool_) return;
  auto* leased = static_cast<LeasedPool*>(pool_);
  {
    std::lock_guard lock(leased->pool->mutex);
    leased->pool->free.push_back(kernel_);
  }
  delete leased;
}

Status Kernel::launch(cl_command_queue queue, int dims, const size_t* global, const size_t* local,
                      cl_event* event) const {
  for (int i = 0; i < dims; ++i)
    if (global[i] == 0) return Status::Ok();
  bool driver_local = true;
  for (int i = 0; local && i < dims; ++i) driver_local = driver_local && local[i] == 0;
  cl_event profiled = nullptr;
  const cl_int err = clEnqueueNDRangeKernel(queue, kernel_, cl_uint(dims), nullptr, global,
                                            driver_local ? nullptr : local, 0, nullptr,
                                            event || !profiling() ? event : &profiled);
  if (err == CL_SUCCESS && profiled) {
    cl_ulong start = 0, end = 0;
    clWaitForEvents(1, &profiled);
    clGetEventProfilingInfo(profiled, CL_PROFILING_COMMAND_START, sizeof start, &start, nullptr);
    clGetEventProfilingInfo(profiled, CL_PROFILING_COMMAND_END, sizeof end, &end, nullptr);
    clReleaseEvent(profiled);
    std::fprintf(stderr, "anvil: opencl %s global %zux%zux%zu: %.3f ms\n", name_, global[0], dims > 1 ? global[1] : 1,
                 dims > 2 ? global[2] : 1, double(end - start) * 1e-6);
  }
  if (err == CL_SUCCESS) return Status::Ok();
  std::string what = std::string("clEnqueueNDRangeKernel (") + name_ + ", global";
  for (int i = 0; i < dims; ++i) what += (i ? "x" : " ") + std::to_string(global[i]);
  if (!driver_local) {
    what += ", local";
    for (int i = 0; i < dims; ++i) what += (i ? "x" : " ") + std::to_string(local[i]);
  }
  return check(err, (what + ")").c_str());
}

}  // namespace anvil::opencl
