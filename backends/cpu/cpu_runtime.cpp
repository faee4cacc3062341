#include "backends/cpu/cpu_runtime.h"

#include <cpuid.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "anvil/runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace anvil {

namespace {
std::atomic<int> configured_threads{0};
}

void set_cpu_threads(int threads) { configured_threads = threads > 0 ? threads : 0; }

int cpu_threads() {
  const int n = configured_threads.load();
  if (n > 0) return n;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace cpu {
namespace {

int64_t cache_size(int name, int64_t fallback) {
  const long v = sysconf(name);
  return v > 0 ? int64_t(v) : fallback;
}

// amx_tile and amx_bf16 (CPUID.(7,0):EDX bits 24, 22) with the OS saving the tile state
// (XCR0 bit 17 XTILECFG, bit 18 XTILEDATA).
bool amx_bf16_present() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE: xgetbv is usable
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(d & (1u << 24)) || !(d & (1u << 22))) return false;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  constexpr unsigned kTileState = (1u << 17) | (1u << 18);
  return (xcr0_lo & kTileState) == kTileState;
}

// Linux (5.16+) hands out the 8 KiB tile data state per process on request; without the
// grant the first tile instruction faults. Empty when granted, else why not.
std::string request_amx_permission() {
#if defined(__linux__)
  constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return std::string("the OS refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: ") + std::strerror(errno) + ")";
  unsigned long granted = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &granted) != 0 || !(granted & (1ul << kXfeatureXtiledata)))
    return "the OS did not grant the AMX tile state (arch_prctl ARCH_GET_XCOMP_PERM)";
  return "";
#else
  return "";  // elsewhere the XCR0 bits are the OS's consent
#endif
}

CpuInfo detect() {
  CpuInfo info;
  __builtin_cpu_init();
  info.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  info.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  info.avx512_bf16 = info.avx512 && __builtin_cpu_supports("avx512bf16");
  info.amx_bf16 = info.avx512_bf16 && amx_bf16_present();  // the AMX kernel's epilogue is AVX-512
  info.l1d_bytes = cache_size(_SC_LEVEL1_DCACHE_SIZE, info.l1d_bytes);
  info.l2_bytes = cache_size(_SC_LEVEL2_CACHE_SIZE, info.l2_bytes);
  info.l3_bytes = cache_size(_SC_LEVEL3_CACHE_SIZE, info.l3_bytes);
  if (const char* isa = std::getenv("ANVIL_CPU_ISA")) {  // cap the ISA, e.g. to test AVX2 on AVX-512 hosts
    const std::string cap = isa;
    if (cap == "avx2" || cap == "none") info.avx512 = info.avx512_bf16 = false;
    if (cap == "avx512") info.avx512_bf16 = false;
    if (cap == "none") info.avx2 = false;
    if (cap != "amx") info.amx_bf16 = false;
  }
  // Asked once per process, and only when AMX is usable after the cap.
  if (info.amx_bf16) {
    info.amx_refused = request_amx_permission();
    info.amx_permitted = info.amx_refused.empty();
  }
  return info;
}

}  // namespace

std::string CpuInfo::describe() const {
  return std::string(avx512_bf16 ? "avx512+bf16" : avx512 ? "avx512" : avx2 ? "avx2" : "no avx2") +
         (amx_permitted ? "+amx" : amx_bf16 ? " (amx refused by the OS)" : "") + ", L1d " +
         std::to_string(l1d_bytes / 1024) + " KiB, L2 " + std::to_string(l2_bytes / 1024) + " KiB, L3 " +
         std::to_string(l3_bytes / 1024) + " KiB";
}

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

int threads_for_call() {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
#endif
  return cpu_threads();
}

void* scratch(size_t bytes, int slot) {
  struct Buffer {
    void* ptr = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(ptr); }
  };
  thread_local std::vector<Buffer> buffers(8);
  Buffer& b = buffers.at(size_t(slot));
  if (b.size < bytes) {
    std::free(b.ptr);
    const size_t rounded = (bytes + 63) / 64 * 64;
    b.ptr = std::aligned_alloc(64, rounded);
    b.size = b.ptr ? rounded : 0;
  }
  return b.ptr;
}

}  // namespace cpu
}  // namespace anvil
