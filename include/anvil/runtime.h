// Process-wide runtime settings.
#pragma once

#include <cstdint>

#include "anvil/status.h"
#include "anvil/tensor.h"

namespace anvil {

// Threads the cpu backend may use per call. 0 (the default) means the OpenMP default
// (OMP_NUM_THREADS or the core count). The torch extension sets this from
// torch.get_num_threads() on each call and uses 1 inside torch's own parallel regions.
void set_cpu_threads(int threads);
int cpu_threads();

// The stream the ops of the backend for `type` (cuda, hip) enqueue on, for the calling
// thread: a cudaStream_t / hipStream_t, null for the legacy default stream. Ops never
// synchronise the device; the torch extension sets torch's current stream on each call.
Status set_stream(DeviceType type, void* stream);
void* current_stream(DeviceType type);

// Memory on a device of a backend that does not share host memory (cuda), for C++ users
// without a framework, tests and benchmarks. Host devices use the C allocator.
// Copies are synchronous with respect to the host.
Status device_malloc(Device device, int64_t bytes, void** out);
Status device_free(Device device, void* data);
Status copy_to_device(Device device, void* dst, const void* host_src, int64_t bytes);
Status copy_to_host(Device device, void* host_dst, const void* src, int64_t bytes);
// Waits for all work on the device.
Status synchronize(Device device);

}  // namespace anvil
