// OpenCL as the opencl backend sees it: devices (discovered and described at run time),
// one context + in-order queue per device, buffers (zero-copy wraps of host memory on
// devices that share it), programs built from the OpenCL C embedded in the library with
// their parameters as -D defines and cached in memory and on disk, kernel launches, and
// OpenCL errors turned into a Status that names the call and the error. No op math here.
//
// Devices. anvil numbers the OpenCL devices of every platform in one list; index 0 is the
// default device (the one host operands run on). ANVIL_OPENCL_DEVICE (or select_device()
// before first use) picks the default:
//   "2"          the third device of the list (platform order, then device order)
//   "0:1"        platform 0, device 1
//   "cpu"/"gpu"/"accelerator"   the first device of that type
//   "pocl", "NVIDIA", ...       the first device whose "platform / device" name contains it
// The chosen device moves to index 0, the others follow in list order. A spec that matches
// nothing is an error (every call fails with the list of devices), never a silent fallback.
//
// Operands. An op call runs on the device of its DeviceType::opencl operands (TensorRef
// .data is the cl_mem, .offset the element offset), or, when its operands are host memory
// (torch CPU tensors with anvil.force(backend="opencl")), on the default device: host memory
// is wrapped with CL_MEM_USE_HOST_PTR, which is zero-copy on devices that share host memory
// (CPU devices such as PoCL; CL_DEVICE_HOST_UNIFIED_MEMORY) and a driver copy elsewhere.
// Ops on opencl operands are asynchronous (enqueued on the device's queue, like CUDA
// streams); ops on host operands return after the results are visible to the host.
//
// Programs. build_program(device, "gemm_opencl", options) compiles the embedded source
// kernels/gemm/gemm_opencl.cl with `options` (the -D defines of its parameters) once per
// (context, source, options) and keeps it in memory. The program binary is also kept on
// disk, keyed by device, vendor, driver and platform version, source hash and options:
//   folder: ANVIL_OPENCL_CACHE_DIR, else $XDG_CACHE_HOME/anvil/opencl, else
//           $HOME/.cache/anvil/opencl (created 0700); ANVIL_OPENCL_CACHE=0 disables it.
//   files are written to a temporary name and renamed into place (atomic: concurrent
//   processes never see a partial file); a file that is not ours (owner, group/world
//   writable), fails its checksum, is truncated, or was made for another device, driver,
//   source or options is ignored and rebuilt from source, never loaded.
#pragma once

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "anvil/status.h"
#include "anvil/tensor.h"

namespace anvil::opencl {

// ------------------------------------------------------------------ errors
// "CL_INVALID_WORK_GROUP_SIZE" for -54; "CL_UNKNOWN_ERROR" for codes it does not know.
const char* error_name(cl_int code);
// Ok for CL_SUCCESS; else "<what> failed: CL_... (code)". Out-of-memory codes map to
// StatusCode::out_of_memory, the rest to runtime_error.
Status check(cl_int code, const char* what);

// ------------------------------------------------------------------ devices
struct DeviceInfo {
  int index = 0;                 // anvil's index (Device{opencl, index})
  int platform_index = 0, device_index = 0;  // as the ICD loader lists them
  cl_platform_id platform = nullptr;
  cl_device_id id = nullptr;
  cl_device_type type = 0;
  std::string name, vendor, driver_version, device_version, opencl_c_version;
  std::string platform_name, platform_version, extensions;
  uint32_t vendor_id = 0;
  int compute_units = 0;
  int64_t max_work_group_size = 0;
  std::array<int64_t, 3> max_work_item_sizes{};
  int64_t local_mem_bytes = 0;   // CL_DEVICE_LOCAL_MEM_SIZE
  bool local_mem_dedicated = false;  // CL_LOCAL (on-chip); false: emulated in global memory (CPUs)
  int64_t global_mem_bytes = 0, max_alloc_bytes = 0;
  int64_t base_addr_align_bytes = 0;  // CL_DEVICE_MEM_BASE_ADDR_ALIGN / 8 (sub-buffer origins)
  int preferred_vector_width_float = 1;
  bool host_unified_memory = false;   // buffers live in host memory: USE_HOST_PTR is zero-copy
  bool fp16 = false, fp64 = false;    // cl_khr_fp16 / cl_khr_fp64

  bool is_cpu() const { return (type & CL_DEVICE_TYPE_CPU) != 0; }
  bool is_gpu() const { return (type & CL_DEVICE_TYPE_GPU) != 0; }
  const char* type_name() const;  // "cpu", "gpu", "accelerator", "other"
  // Identity of the compiled code: platform, device, vendor and driver versions. Keys the
  // disk program cache and the tuning database.
  std::string key() const;
  // "opencl:0 pthread-skylake-avx512 (PoCL 3.1, cpu, 2 CUs, 14.5 GiB, host memory)".
  std::string describe() const;
};

// Ok when at least one device was found and ANVIL_OPENCL_DEVICE (if set) is valid.
Status available();
// Every device, one per line-ish, for backends().
std::string describe();
int device_count();
Status device_info(int device, const DeviceInfo** out);
// Picks the default device (see the spec syntax above). Only before the first use of the
// backend (an error afterwards: existing buffers would change device).
Status select_device(const std::string& spec);

// ------------------------------------------------------------------ context, queue
// One context and one in-order queue per device, created on first use and kept for the
// life of the process. OpenCL queues are thread-safe for enqueues.
struct DeviceContext {
  int index = 0;
  const DeviceInfo* info = nullptr;
  cl_context context = nullptr;
  cl_command_queue queue = nullptr;
};
Status device_context(int device, DeviceContext** out);

// ------------------------------------------------------------------ memory (DeviceMemory hooks)
// `mem` values are cl_mem handles passed as void* (TensorRef::data of opencl tensors).
Status malloc_device(int device, int64_t bytes, void** out);
Status free_device(int device, void* mem);
Status copy_to_device(int device, void* dst_mem, const void* host_src, int64_t bytes);
Status copy_to_host(int device, void* host_dst, const void* src_mem, int64_t bytes);
Status synchronize(int device);

// ------------------------------------------------------------------ operands of one op call
// An operand as a kernel receives it: a buffer and the element offset of element 0.
struct Operand {
  cl_mem mem = nullptr;
  int64_t offset = 0;  // in elements of the tensor's dtype
};

// The device an op call runs on, from its lead operand: the opencl index, or the default
// device (0) for host operands. Every operand must be on the same device (checked by bind).
int device_of(const TensorRef& lead);

// Host operands are taken only when the user forced the opencl backend or one of its
// kernels (anvil::set_overrides / anvil.force, else ANVIL_BACKEND / ANVIL_KERNEL): the
// opencl records' can_implement returns this for host memory, so that neither priority order
// nor an autotune hook ever picks opencl over the host backends on CPU tensors.
Status host_operands_allowed();

// The opencl records' device check of one call: every operand on one opencl device or all
// on host memory (then only when host_operands_allowed()), and that device present.
Status operands_usable(std::initializer_list<const TensorRef*> operands);

// Binds the tensors of one op call to buffers on one device and, at finish(), makes host
// outputs visible. Use one per call:
//   Operands ops(device_of(args.a));  ANVIL_RETURN_IF_ERROR(ops.status());
//   Operand a; ANVIL_RETURN_IF_ERROR(ops.bind(args.a, Access::read, &a)); ...
//   (enqueue kernels on ops.queue()) ...
//   return ops.finish();
// Host tensors are wrapped over exactly the bytes their view spans (never beyond). Such a
// buffer is only element-aligned (PoCL runs kernels on the host pointer as given): kernels
// read operands with scalar accesses or vloadN/vstoreN, never through a cast to a vector
// pointer (workspace buffers have the device's base alignment).
// finish() on a call with host operands maps and unmaps each written wrap (the OpenCL rule
// that makes USE_HOST_PTR memory current; no copy on host-memory devices) and waits for the
// queue; on opencl operands it only flushes. The destructor releases the wraps (OpenCL keeps
// them alive until enqueued commands are done).
enum class Access { read, write, read_write };
class Operands {
 public:
  explicit Operands(int device);
  ~Operands();
  Operands(const Operands&) = delete;
  Operands& operator=(const Operands&) = delete;
  const Status& status() const { return status_; }
  const DeviceContext& context() const { return *ctx_; }
  cl_command_queue queue() const { return ctx_->queue; }
  int device() const { return device_; }
  // `name` is used in error messages ("a", "grad_c").
  Status bind(const TensorRef& t, Access access, Operand* out, const char* name = "operand");
  Status finish();

 private:
  struct Wrap {
    cl_mem mem;
    bool written;
    int64_t bytes;
  };
  int device_;
  DeviceContext* ctx_ = nullptr;
  Status status_;
  std::vector<Wrap> wraps_;
  bool host_ = false, finished_ = false;
};

// Scratch buffers for one call (packed panels and the like), from a per-device pool:
// allocations are reused across calls (fresh device allocations cost page faults on CPU
// devices). A buffer goes back to the pool when the Workspace is destroyed; the queue is
// in order, so a later call's commands that reuse it run after this call's commands.
class Workspace {
 public:
  explicit Workspace(int device) : device_(device) {}
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  // At least `bytes` (> 0), valid until the workspace is destroyed.
  Status allocate(int64_t bytes, cl_mem* out);

 private:
  static constexpr int kMaxBlocks = 8;
  int device_;
  cl_mem blocks_[kMaxBlocks] = {};
  int64_t sizes_[kMaxBlocks] = {};
  int count_ = 0;
};

// ------------------------------------------------------------------ embedded OpenCL C
// The sources of kernels/*/*_opencl.cl, embedded at build time (cmake/AnvilEmbedOpenCL.cmake),
// by file stem ("gemm_opencl"); null when there is no such source.
const char* embedded_source(std::string_view name);
std::vector<std::string> embedded_source_names();

// ------------------------------------------------------------------ programs and kernels
// Build options from parameters, in a canonical order: Defines().add("MWI", 8).str()
// gives "-DMWI=8". Values are integers or identifiers.
class Defines {
 public:
  Defines& add(const std::string& name, int64_t value);
  Defines& add(const std::string& name, const std::string& value);
  Defines& flag(const std::string& option);  // a bare option such as "-cl-mad-enable"
  std::string str() const;

 private:
  std::vector<std::string> items_;
};

enum class CacheUse {
  normal,       // memory, then disk, then build (and store on disk)
  no_disk,      // memory, then build; nothing read from or written to disk
  fresh_build,  // always build from source (bypassing memory and disk); stores on disk
  uncached,     // build from source; nothing read or stored (timing a cold compile)
};

// The program of embedded source `source` (a name from embedded_source_names()) built for
// `device` with `options`. Build errors come back with the build log. The program is owned
// by the cache (valid until clear_memory_cache()), except with fresh_build and uncached,
// where the caller owns it and releases it with clReleaseProgram.
Status build_program(int device, std::string_view source, const std::string& options, cl_program* out,
                     CacheUse use = CacheUse::normal);

// A kernel of a cached program, leased for one launch: cl_kernel objects are not safe to
// set arguments on from two threads, so each launch takes one from a per-program pool and
// gives it back when the lease ends (arguments are captured at enqueue time).
class Kernel {
 public:
  Kernel() = default;
  ~Kernel();
  Kernel(const Kernel&) = delete;
  Kernel& operator=(const Kernel&) = delete;
  Status create(int device, std::string_view source, const std::string& options, const char* kernel_name);
  cl_kernel get() const { return kernel_; }
  const char* name() const { return name_; }

  // Sets arguments 0, 1, ... from values (cl_mem, int, long, float, ...): each is passed by
  // address with sizeof(value). Use LocalMemory{bytes} for a __local argument.
  template <class... Args> Status args(const Args&... values) {
    cl_uint index = 0;
    Status status;
    ((status.ok() ? (void)(status = set_arg(index++, values)) : (void)0), ...);
    return status;
  }
  // Enqueues over `global` work-items in work-groups of `local` (dims = 1..3; a zero local
  // size lets the driver pick). Global sizes are rounded up to multiples of local by the
  // caller; a launch over zero work-items is a no-op. `event` may be null.
  Status launch(cl_command_queue queue, int dims, const size_t* global, const size_t* local,
                cl_event* event = nullptr) const;

 private:
  template <class T> Status set_arg(cl_uint index, const T& value);
  void* pool_ = nullptr;
  cl_kernel kernel_ = nullptr;
  const char* name_ = "";
};

struct LocalMemory {
  size_t bytes;
};

template <class T> Status Kernel::set_arg(cl_uint index, const T& value) {
  if constexpr (std::is_same_v<T, LocalMemory>)
    return check(clSetKernelArg(kernel_, index, value.bytes, nullptr), "clSetKernelArg (local)");
  else
    return check(clSetKernelArg(kernel_, index, sizeof(T), &value), "clSetKernelArg");
}

// ------------------------------------------------------------------ program cache
struct CacheStats {
  int64_t memory_hits = 0;
  int64_t disk_hits = 0;      // programs created from a disk binary
  int64_t disk_rejected = 0;  // files found but ignored (corrupt, stale, unsafe)
  int64_t builds = 0;         // programs compiled from source
  double build_ms = 0;        // total time in clBuildProgram from source
  double disk_load_ms = 0;    // total time to read + create + build from binary
  std::string last_rejection; // why the last rejected file was ignored
};
CacheStats cache_stats();
// The folder in use ("" when the disk cache is disabled or the folder is unusable).
std::string cache_dir();
// Overrides ANVIL_OPENCL_CACHE_DIR for the process ("" restores the default); tests.
void set_cache_dir(const std::string& dir);
// Forgets the in-memory programs (they stay alive for kernels in use); tests and the
// benchmark use it to time a disk load.
void clear_memory_cache();
// Path of the disk cache file for (device, source, options), whether or not it exists.
std::string cache_file(int device, std::string_view source, const std::string& options);

// ------------------------------------------------------------------ small utilities
// Round `x` up to a multiple of `to` (> 0).
inline size_t round_up(int64_t x, int64_t to) { return size_t((x + to - 1) / to * to); }
// 64-bit FNV-1a, for cache keys and checksums.
uint64_t hash64(std::string_view data, uint64_t seed = 0xcbf29ce484222325ull);
// The per-user folder for anvil's OpenCL files (the program cache's parent of "programs/"
// and the tuning database's "tuning/"), created 0700; "" if unusable.
std::string user_cache_root();

}  // namespace anvil::opencl
