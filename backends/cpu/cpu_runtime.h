// The host CPU as the cpu backend sees it: ISA features and cache sizes read at run time,
// and the thread budget of a call. No op math here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace anvil::cpu {

struct CpuInfo {
  bool avx2 = false;         // avx2 + fma + f16c
  bool avx512 = false;       // avx512f + bw + vl + dq
  bool avx512_bf16 = false;  // vdpbf16ps
  // AMX: amx_tile + amx_bf16 in CPUID and the tile state enabled by the OS (XCR0 bits 17, 18).
  // On Linux a process must also be granted the tile data state once (arch_prctl
  // ARCH_REQ_XCOMP_PERM) before it touches a tile register; amx_refused says why not.
  bool amx_bf16 = false;
  bool amx_permitted = false;
  std::string amx_refused;
  int64_t l1d_bytes = 32 * 1024, l2_bytes = 1024 * 1024, l3_bytes = 8 * 1024 * 1024;
  std::string describe() const;
};

const CpuInfo& cpu_info();

// Threads for the next parallel region: the configured budget, or 1 when already inside
// a parallel region (never oversubscribe).
int threads_for_call();

// 64-byte aligned scratch that grows and is reused per calling thread (packing buffers),
// in slots 0-7: 0-2 the GEMM driver (attention uses 0-1 outside it), 3-7 conv2d.
void* scratch(size_t bytes, int slot);

}  // namespace anvil::cpu
