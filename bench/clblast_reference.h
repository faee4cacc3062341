// CLBlast SGEMM on the opencl backend's default device, as the reference of anvil's
// opencl GEMM rows in anvil-bench: same device, context and queue, on buffers the driver
// allocates (uploaded once; on host-memory devices such as PoCL they are host memory, as
// anvil's zero-copy wraps of the host arrays are), each run finished with clFinish.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace anvil::bench {

// Row-major c (m, n) = a (m, k) @ b (k, n). tuned: CLBlast's Xgemm parameters from
// PERFORMANCE.md (clblast_tuner_xgemm on the development machine), applied with
// clblast::OverrideParameters before the run; otherwise CLBlast's own database values.
// Returns an empty function and sets `error` when CLBlast or the device is unusable.
std::function<void()> clblast_sgemm(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c,
                                    bool tuned, std::string* error);

}  // namespace anvil::bench
