// bf16/f16 GEMM for Hopper (sm_90a): TMA loads completing on mbarriers, wgmma from
// 128B-swizzled shared memory, producer/consumer warp specialisation, 2-CTA clusters that
// multicast the B tile, and a persistent, L2-grouped tile scheduler. f32 accumulation.
//
// Block tile (BLK_M, BLK_N, BLK_K) = (128, 256, 64). Why this shape: per k-block it loads
// 48 KB of operands for 2*128*256*64 flops, twice the flops per byte of (128, 128), which
// keeps the L2 -> SM traffic under what the tensor cores need at full rate; its 128 f32
// accumulators per consumer thread fit the 232 registers setmaxnreg gives the consumers
// (ptxas: 168 registers at entry, no spills), and it is the shape of CUTLASS's and cuBLAS's
// large bf16 Hopper kernels.
//
// Warp roles, 384 threads = 3 warpgroups:
//   warpgroup 0      producer: setmaxnreg.dec to 40; one thread waits for a free stage and
//                    issues the TMA loads of A and B into it.
//   warpgroups 1, 2  consumers: setmaxnreg.inc to 232; warpgroup w owns rows [64w, 64w+64)
//                    of the tile, 4 x wgmma.m64n256k16 per k-block, 128 f32 accumulators
//                    per thread; then the epilogue for its (64, 256) half.
// Pipeline: STAGES = 4 stage buffers in a ring. full[s]: 1 arrival (the producer's
// arrive.expect_tx) + the TMA byte count. empty[s]: one arrival per consumer warpgroup of
// every CTA in the cluster, made once that warpgroup's wgmmas reading stage s completed
// (wgmma.wait_group 1 after issuing the next k-block, so the tensor cores never idle on it).
// Cluster (CLUSTER_M, 1) = (2, 1): the two CTAs of a cluster take vertically adjacent tiles
// that share one B tile; each loads half of that B tile and multicasts it to both, which
// cuts the L2 -> SM traffic per CTA from 48 KB to 32 KB per k-block (measured on an H100 at
// 8192^3: 1.45 ms with clusters of 2 against 1.65 ms without).
// Scheduler: grid = the clusters that fit on the device at once (persistent); cluster
// units ((CLUSTER_M x BLK_M) x BLK_N tile pairs, batch outermost) are walked in groups of
// RASTER_ROWS tile rows, m fastest inside a group, so the ~132 tiles in flight cover a
// compact (16 x 8) block of c and reuse A and B panels from L2.
// Epilogue: out = alpha * acc + beta * c + bias in f32, rounded once. With beta == 0 and
// rows of c that TMA can address, each consumer stages (64, 128) halves in shared memory
// and TMA-stores them, so the stores drain while the next tile's mainloop runs (about 9%
// faster than register stores at 4096^3); otherwise it stores straight from registers.
//
// Shared memory: STAGES * (A 16 KB + B 32 KB) = 192 KB, + CONSUMERS * 16 KB store staging,
// + 2 * STAGES * 8 B of mbarriers, + 1 KB slack to align everything to 1024 B (the 128B
// swizzle pattern repeats every 8 rows of 128 B; TMA and wgmma assume atoms at 1024-byte
// boundaries) = 230,464 B of the 232,448 B (227 KB) an H100 block may opt into.
//
// Shared-memory operand layouts (all 128B swizzle: the 16-byte chunk c of a 128-byte row r
// sits at chunk c ^ (r % 8); TMA writes it that way and wgmma undoes it from the address):
//   K-major (A with unit col stride; B with unit row stride, e.g. a Linear weight^T):
//     one box (BLK_K, rows): row r (an m or n index) = 64 k-values = 128 B at offset r*128.
//     wgmma canonical ((8,m),(T,2k)):((8T,SBO),(1,T)), T = 8 elements: rows 128 B apart,
//     8-row groups SBO = 1024 B apart; LBO unused for swizzled K-major (set to 16 B).
//     Advancing k by 16 inside the 128-byte row adds 32 B to the start address (the swizzle
//     is applied to the final address bits, so sub-row offsets stay valid).
//   MN-major (A with unit row stride, i.e. a transposed A; B with unit col stride, i.e.
//     row-major (K, N)): boxes of (64 mn, BLK_K) = 8 KB; in box j, k-row r = 64 mn-values
//     = 128 B at offset j*8192 + r*128.
//     wgmma canonical ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)): 64 contiguous mn-values per
//     row, the next 64 mn-values LBO = 8192 B away (next box), 8-k-row groups SBO = 1024 B
//     apart. Advancing k by 16 adds 16 rows = 2048 B. wgmma's transpose bit (imm-trans-a /
//     imm-trans-b = 1) selects this layout.
// Edges: TMA zero-fills box elements outside (K, M/N, batch), so partial tiles and the last
// partial k-block multiply zeros; register stores are predicated on m < M and n < N, and
// TMA stores are clipped to (N, M, batch).
#include <cuda.h>  // CUtensorMap and its enums only: the driver entry point comes from the runtime
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <mutex>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_runtime.h"
#include "kernels/gemm/gemm_cuda.h"

namespace anvil::cuda_gemm {
namespace {

// ------------------------------------------------------------------ config
constexpr int BLK_M = 128, BLK_N = 256, BLK_K = 64;
constexpr int STAGES = 4;
constexpr int CLUSTER_M = 2;  // CTAs per cluster along m, sharing (multicasting) the B tile; 1 also works
constexpr int CONSUMERS = 2;  // consumer warpgroups
constexpr int WARPGROUP = 128;
constexpr int THREADS = WARPGROUP * (1 + CONSUMERS);
constexpr int WGMMA_M = 64, WGMMA_N = 256, WGMMA_K = 16;
constexpr int ELEM_BYTES = 2;                         // bf16 / f16
constexpr int SWIZZLE_BYTES = 128;                    // one swizzled row
constexpr int ROW_ELEMS = SWIZZLE_BYTES / ELEM_BYTES;  // 64 elements per swizzled row
constexpr int ATOM_BYTES = 8 * SWIZZLE_BYTES;         // 1024: one repeat of the swizzle pattern
constexpr int MN_BOX_BYTES = ROW_ELEMS * BLK_K * ELEM_BYTES;  // 8 KB: one MN-major (64, BLK_K) box
constexpr int A_BYTES = BLK_M * BLK_K * ELEM_BYTES;   // 16 KB  (BLK_M, BLK_K)
constexpr int B_BYTES = BLK_N * BLK_K * ELEM_BYTES;   // 32 KB  (BLK_N, BLK_K)
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;        // 48 KB
constexpr int STORE_COLS = 128;                       // c columns a consumer stages per TMA store
constexpr int STORE_BYTES = WGMMA_M * STORE_COLS * ELEM_BYTES;  // 16 KB per consumer: 2 boxes (64, 64)
constexpr int BARRIER_BYTES = 2 * STAGES * 8;
constexpr int SMEM_ALIGN = 1024;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + CONSUMERS * STORE_BYTES + BARRIER_BYTES + SMEM_ALIGN;
constexpr int ACCS = WGMMA_M * WGMMA_N / WARPGROUP;  // 128 f32 accumulators per consumer thread
constexpr int PRODUCER_REGS = 40, CONSUMER_REGS = 232;
constexpr int RASTER_ROWS = 16;  // tile rows per L2 raster group
constexpr int MAX_DEVICES = 64;

static_assert(BLK_K * ELEM_BYTES == SWIZZLE_BYTES, "a K-major stage row is exactly one 128-byte swizzled row");
static_assert(BLK_M == CONSUMERS * WGMMA_M && BLK_N == WGMMA_N, "each consumer warpgroup owns (64, BLK_N)");
static_assert(BLK_K % WGMMA_K == 0, "whole wgmma k-steps per k-block");
template <int CLUSTER> constexpr bool CLUSTER_OK =
    CLUSTER >= 1 && BLK_N % (ROW_ELEMS * CLUSTER) == 0 && BLK_N / CLUSTER <= 256 && RASTER_ROWS % CLUSTER == 0;
static_assert(WGMMA_M % ROW_ELEMS == 0 && CLUSTER_OK<CLUSTER_M>, "whole MN-major boxes, B shares of <= 256 rows");
static_assert(BLK_M <= 256, "TMA boxes are at most 256 rows");
static_assert(A_BYTES % ATOM_BYTES == 0 && STAGE_BYTES % ATOM_BYTES == 0, "swizzle atoms stay 1024-byte aligned");
static_assert(SMEM_BYTES <= 232448, "fits the 227 KB an sm_90 block may opt into");
static_assert(WGMMA_N % STORE_COLS == 0 && STORE_COLS % ROW_ELEMS == 0, "whole store boxes");
static_assert(PRODUCER_REGS * WARPGROUP + CONSUMER_REGS * WARPGROUP * CONSUMERS <= 65536, "register file");
static_assert(ACCS == 128 && MN_BOX_BYTES % ATOM_BYTES == 0, "the wgmma operand list and MN-major boxes below");

// What the kernel needs besides the two tensor maps. Sizes are int: the host refuses
// dimensions >= 2^30 (TMA coordinates are int32).
struct Params {
  void* c = nullptr;
  int64_t c_batch_stride = 0, c_row_stride = 0;
  const void* bias = nullptr;
  int64_t bias_stride = 0;
  float alpha = 1.0f, beta = 0.0f;
  int m = 0, n = 0, k_blocks = 0;
  int a_batch_fixed = 0, b_batch_fixed = 0;  // 1: the operand has one batch entry (coordinate 0)
  int c_pairs_aligned = 0;                   // every (even column, +1) pair of c is 4-byte aligned
  int c_tma = 0;                             // 1: beta == 0 and tmap_c is valid: stores go through TMA
  int tiles_n = 0, cluster_rows = 0;         // cluster_rows = ceil(tiles_m / cluster size)
  int units = 0;                             // batch * cluster_rows * tiles_n
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

template <class T> struct Elem;
template <> struct Elem<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  static __device__ Pair pack(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
  static __device__ float low(Pair x) { return __low2float(x); }
  static __device__ float high(Pair x) { return __high2float(x); }
};
template <> struct Elem<__half> {
  using Pair = __half2;
  static __device__ float to_float(__half x) { return __half2float(x); }
  static __device__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ Pair pack(float lo, float hi) { return __floats2half2_rn(lo, hi); }
  static __device__ float low(Pair x) { return __low2float(x); }
  static __device__ float high(Pair x) { return __high2float(x); }
};

// ------------------------------------------------------------------ sm_90a primitives
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// Arrives on the barrier at the same offset in CTA `cta` of the cluster (possibly this one).
// Default (.release.cta) semantics, as CUTLASS's ClusterBarrier: the arrival only says that
// this warpgroup's wgmmas finished reading the stage, which needs no memory fence (a
// .release.cluster arrive costs a MEMBAR.GPU per k-block).
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t cta) {
  asm volatile(
      "{\n.reg .b32 remote;\n"
      "mapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}" ::"r"(bar),
      "r"(cta)
      : "memory");
}
__device__ __forceinline__ void mbar_arrive_local(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Returns once the phase of parity `parity` has completed (a fresh barrier counts its
// phase "before 0", parity 1, as completed).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap& map, uint32_t bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
// Writes the box at the same offset in every CTA of `cta_mask`, completing bytes on the
// barrier at the same offset in each.
__device__ __forceinline__ void tma_load_multicast(uint32_t dst, const CUtensorMap& map, uint32_t bar, uint16_t cta_mask,
                                                   int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
      "[%0], [%1, {%4, %5, %6}], [%2], %3;" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(bar), "h"(cta_mask), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// Bulk tensor store of the box at smem `src` (written by this CTA's threads, fenced with
// fence.proxy.async) to coordinates (c0, c1, c2); clipped to the tensor's bounds.
__device__ __forceinline__ void tma_store(const CUtensorMap& map, uint32_t src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];" ::"l"(
                   reinterpret_cast<uint64_t>(&map)),
               "r"(src), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// This thread's bulk stores have finished reading shared memory.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
// Barrier `id` (1 + consumer index; 0 is __syncthreads) over one warpgroup.
__device__ __forceinline__ void warpgroup_barrier(int id) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "n"(WARPGROUP) : "memory");
}

__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

template <int REGS> __device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGS));
}
template <int REGS> __device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(REGS));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int PENDING> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(PENDING) : "memory");
}
// Keeps the compiler from moving accumulator reads or writes across the async wgmma window.
__device__ __forceinline__ void fence_accumulators(float (&d)[ACCS]) {
#pragma unroll
  for (int i = 0; i < ACCS; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory matrix descriptor (PTX "Matrix Descriptor Format"): bits 0-13 start
// address >> 4, 16-29 leading byte offset >> 4, 32-45 stride byte offset >> 4, 49-51 base
// offset (0: atoms are 1024-byte aligned), 62-63 swizzle (1 = 128B).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return uint64_t((addr & 0x3FFFF) >> 4) | uint64_t((lbo_bytes & 0x3FFFF) >> 4) << 16 |
         uint64_t((sbo_bytes & 0x3FFFF) >> 4) << 32 | uint64_t(1) << 62;
}
template <bool MN_MAJOR> __device__ __forceinline__ uint64_t operand_desc(uint32_t addr) {
  return MN_MAJOR ? smem_desc(addr, MN_BOX_BYTES, ATOM_BYTES) : smem_desc(addr, 16, ATOM_BYTES);
}
// Bytes between consecutive wgmma k-steps inside one stage buffer.
template <bool MN_MAJOR> constexpr uint32_t K_STEP_BYTES = MN_MAJOR ? WGMMA_K * SWIZZLE_BYTES : WGMMA_K * ELEM_BYTES;

#define ANVIL_WGMMA_D_REGS                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                       \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "              \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "              \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "              \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "              \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "              \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "  \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define ANVIL_WGMMA_D_OPERANDS                                                                     \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),  \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),         \
  "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),       \
  "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),       \
  "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),       \
  "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),       \
  "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),       \
  "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),       \
  "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),       \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]),       \
  "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),       \
  "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]),       \
  "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]),       \
  "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]),       \
  "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),               \
  "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]),              \
  "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),              \
  "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]),              \
  "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define ANVIL_WGMMA_M64N256K16(TYPE)                                                         \
  asm volatile(                                                                              \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                          \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " " ANVIL_WGMMA_D_REGS   \
      ", %128, %129, p, 1, 1, %131, %132;\n}"                                                \
      : ANVIL_WGMMA_D_OPERANDS                                                               \
      : "l"(desc_a), "l"(desc_b), "r"(1), "n"(TRANS_A), "n"(TRANS_B))

// d (64, 256) += A (64, 16) @ B (16, 256), both read from shared memory through descriptors.
// The wgmma D fragment: d[j*4 + i*2 + e] is row 16*warp + lane/4 + 8*i, column
// 8*j + 2*(lane%4) + e of the (64, 256) tile.
template <class T, int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[ACCS], uint64_t desc_a, uint64_t desc_b) {
  static_assert(ACCS == 128, "the operand list below is written for n = 256");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) ANVIL_WGMMA_M64N256K16("bf16");
  else ANVIL_WGMMA_M64N256K16("f16");
}
#undef ANVIL_WGMMA_M64N256K16
#undef ANVIL_WGMMA_D_OPERANDS
#undef ANVIL_WGMMA_D_REGS

// ------------------------------------------------------------------ schedule
struct Tile {
  int batch, m0, n0;
};

// Unit u -> this CTA's tile. Units go batch-major; inside a batch, groups of RASTER_ROWS
// tile rows are walked with m fastest, so consecutive units (the ones in flight together)
// share A rows and B columns.
template <int CLUSTER> __device__ __forceinline__ Tile tile_of(int unit, const Params& p, int cta_rank) {
  constexpr int GROUP = RASTER_ROWS / CLUSTER;  // cluster rows per group
  const int per_batch = p.cluster_rows * p.tiles_n;
  const int batch = unit / per_batch;
  const int r = unit - batch * per_batch;
  const int group_units = GROUP * p.tiles_n;
  const int group = r / group_units;
  const int first_row = group * GROUP;
  const int rows = min(GROUP, p.cluster_rows - first_row);
  const int in_group = r - group * group_units;
  const int cluster_row = first_row + in_group % rows;
  const int tile_col = in_group / rows;
  return {batch, (cluster_row * CLUSTER + cta_rank) * BLK_M, tile_col * BLK_N};
}

// ------------------------------------------------------------------ load (producer)
template <bool A_MN, bool B_MN, int CLUSTER>
__device__ void produce(const CUtensorMap& tmap_a, const CUtensorMap& tmap_b, const Params& p, uint32_t ring,
                        uint32_t full0, uint32_t empty0, int cta_rank, int cluster, int clusters) {
  uint32_t stage = 0, phase = 0;
  for (int unit = cluster; unit < p.units; unit += clusters) {
    const Tile t = tile_of<CLUSTER>(unit, p, cta_rank);
    const int a_batch = p.a_batch_fixed ? 0 : t.batch, b_batch = p.b_batch_fixed ? 0 : t.batch;
    for (int kb = 0; kb < p.k_blocks; ++kb) {
      const uint32_t full = full0 + 8 * stage;
      mbar_wait(empty0 + 8 * stage, phase ^ 1);
      mbar_arrive_expect_tx(full, STAGE_BYTES);  // A + all of B, half of it from the peer CTA
      const uint32_t a_dst = ring + stage * STAGE_BYTES, b_dst = a_dst + A_BYTES;
      const int k0 = kb * BLK_K;
      if constexpr (A_MN) {
#pragma unroll
        for (int j = 0; j < BLK_M / ROW_ELEMS; ++j)
          tma_load(a_dst + j * MN_BOX_BYTES, tmap_a, full, t.m0 + j * ROW_ELEMS, k0, a_batch);
      } else {
        tma_load(a_dst, tmap_a, full, k0, t.m0, a_batch);
      }
      // This CTA's share of the B tile: n columns [rank, rank + 1) * BLK_N / CLUSTER.
      constexpr int SHARE_N = BLK_N / CLUSTER;
      const auto load_b = [&](uint32_t dst, int c0, int c1) {
        if constexpr (CLUSTER > 1) tma_load_multicast(dst, tmap_b, full, (1u << CLUSTER) - 1, c0, c1, b_batch);
        else tma_load(dst, tmap_b, full, c0, c1, b_batch);
      };
      if constexpr (B_MN) {
#pragma unroll
        for (int i = 0; i < SHARE_N / ROW_ELEMS; ++i) {
          const int box = cta_rank * (SHARE_N / ROW_ELEMS) + i;
          load_b(b_dst + box * MN_BOX_BYTES, t.n0 + box * ROW_ELEMS, k0);
        }
      } else {
        load_b(b_dst + cta_rank * SHARE_N * SWIZZLE_BYTES, k0, t.n0 + cta_rank * SHARE_N);
      }
      if (++stage == STAGES) stage = 0, phase ^= 1;
    }
  }
  // Drain: wait until every consumer (of both CTAs) released every stage, so no remote
  // arrival can land in this CTA's shared memory after it exits.
  for (int s = 0; s < STAGES; ++s) {
    mbar_wait(empty0 + 8 * stage, phase ^ 1);
    if (++stage == STAGES) stage = 0, phase ^= 1;
  }
}

// ------------------------------------------------------------------ store (epilogue)
// c = alpha * acc + beta * c + bias for this warpgroup's (64, 256) part at (m0w, n0), from
// the wgmma D fragment: acc[j*4 + i*2 + e] is row 16*warp + lane/4 + 8*i, column
// 8*j + 2*(lane%4) + e. Interior tiles with 4-byte aligned column pairs store pairs with no
// per-element checks; edge tiles check every element (kept apart so the unrolled code
// stays small).
template <class T>
__device__ __forceinline__ void store_tile(const float (&acc)[ACCS], const Params& p, int batch, int m0w, int n0) {
  using E = Elem<T>;
  using Pair = typename E::Pair;
  const int lane = int(threadIdx.x) % 32, warp = (int(threadIdx.x) % WARPGROUP) / 32;
  const int row0 = m0w + warp * 16 + lane / 4;
  const int col0 = n0 + 2 * (lane % 4);
  T* const c = static_cast<T*>(p.c) + int64_t(batch) * p.c_batch_stride;
  T* const rows[2] = {c + int64_t(row0) * p.c_row_stride, c + int64_t(row0 + 8) * p.c_row_stride};
  const T* const bias = static_cast<const T*>(p.bias);
  const bool read_c = p.beta != 0.0f;
  const float alpha = p.alpha, beta = p.beta;

  if (p.c_pairs_aligned && m0w + WGMMA_M <= p.m && n0 + WGMMA_N <= p.n) {
#pragma unroll
    for (int j = 0; j < WGMMA_N / 8; ++j) {
      const int col = col0 + 8 * j;
      float bias0 = 0.0f, bias1 = 0.0f;
      if (bias) {
        bias0 = E::to_float(bias[int64_t(col) * p.bias_stride]);
        bias1 = E::to_float(bias[int64_t(col + 1) * p.bias_stride]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        Pair* out = reinterpret_cast<Pair*>(rows[i] + col);
        float v0 = alpha * acc[j * 4 + i * 2], v1 = alpha * acc[j * 4 + i * 2 + 1];
        if (read_c) {
          const Pair old = *out;
          v0 += beta * E::low(old), v1 += beta * E::high(old);
        }
        *out = E::pack(v0 + bias0, v1 + bias1);
      }
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < WGMMA_N / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = col0 + 8 * j + e;
      if (col >= p.n) continue;
      const float bias_v = bias ? E::to_float(bias[int64_t(col) * p.bias_stride]) : 0.0f;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (row0 + 8 * i >= p.m) continue;
        T* out = rows[i] + col;
        float v = alpha * acc[j * 4 + i * 2 + e];
        if (read_c) v += beta * E::to_float(*out);
        *out = E::from_float(v + bias_v);
      }
    }
  }
}

// beta == 0 and a TMA-able c: the (64, 256) part goes out in two rounds of (64, 128)
// through this warpgroup's 16 KB staging buffer, as two (64 n, 64 m) boxes in the 128B
// swizzled layout (row r, 16-byte chunk c at r*128 + (c ^ r%8)*16: the 8 rows one store
// instruction writes hit 8 different bank groups). TMA clips rows >= M and columns >= N, and
// the stores drain while the consumers go on to the next tile.
template <class T>
__device__ __forceinline__ void store_tile_tma(const float (&acc)[ACCS], const Params& p, const CUtensorMap& tmap_c,
                                               uint32_t staging, int batch, int m0w, int n0, int wg) {
  using E = Elem<T>;
  using Pair = typename E::Pair;
  const int lane = int(threadIdx.x) % 32, warp = (int(threadIdx.x) % WARPGROUP) / 32;
  const bool leader = threadIdx.x % WARPGROUP == 0;
  const T* const bias = static_cast<const T*>(p.bias);
  const int row_lo = warp * 16 + lane / 4;  // and row_lo + 8; both have row % 8 == lane / 4
  const uint32_t thread_offset = uint32_t(row_lo) * SWIZZLE_BYTES + (lane % 4) * 4;
#pragma unroll
  for (int h = 0; h < WGMMA_N / STORE_COLS; ++h) {
    if (leader) bulk_wait_read();  // the previous round's boxes have left the staging buffer
    warpgroup_barrier(1 + wg);
#pragma unroll
    for (int jj = 0; jj < STORE_COLS / 8; ++jj) {
      const int j = h * (STORE_COLS / 8) + jj;
      const int col = n0 + 8 * j + 2 * (lane % 4);
      float bias0 = 0.0f, bias1 = 0.0f;
      if (bias) {
        if (col < p.n) bias0 = E::to_float(bias[int64_t(col) * p.bias_stride]);
        if (col + 1 < p.n) bias1 = E::to_float(bias[int64_t(col + 1) * p.bias_stride]);
      }
      const uint32_t chunk = uint32_t((jj % 8) ^ (lane / 4)) * 16;
      const uint32_t box = staging + (jj / 8) * (WGMMA_M * SWIZZLE_BYTES);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const Pair v = E::pack(p.alpha * acc[j * 4 + i * 2] + bias0, p.alpha * acc[j * 4 + i * 2 + 1] + bias1);
        st_shared_u32(box + thread_offset + i * 8 * SWIZZLE_BYTES + chunk, reinterpret_cast<const uint32_t&>(v));
      }
    }
    fence_proxy_async();  // make the generic-proxy writes visible to the TMA engine
    warpgroup_barrier(1 + wg);
    if (leader) {
#pragma unroll
      for (int b = 0; b < STORE_COLS / ROW_ELEMS; ++b) {
        const int n_box = n0 + h * STORE_COLS + b * ROW_ELEMS;
        if (m0w < p.m && n_box < p.n) tma_store(tmap_c, staging + b * (WGMMA_M * SWIZZLE_BYTES), n_box, m0w, batch);
      }
      bulk_commit();
    }
  }
}

// ------------------------------------------------------------------ compute (consumers)
template <class T, bool A_MN, bool B_MN, int CLUSTER>
__device__ void consume(const Params& p, const CUtensorMap& tmap_c, uint32_t ring, uint32_t staging0, uint32_t full0,
                        uint32_t empty0, int cta_rank, int cluster, int clusters) {
  const int wg = int(threadIdx.x) / WARPGROUP - 1;  // this warpgroup's rows: [64 wg, 64 wg + 64) of the tile
  // Both layouts put the warpgroup's 64 rows of A 8 KB into the stage's A buffer: 64 K-major
  // rows of 128 B, or the wg-th MN-major box.
  const uint32_t a_offset = A_MN ? wg * (WGMMA_M / ROW_ELEMS) * MN_BOX_BYTES : wg * WGMMA_M * SWIZZLE_BYTES;
  const bool signals = threadIdx.x % WARPGROUP == 0;
  const auto release = [&](uint32_t stage) {
    if (!signals) return;
    if constexpr (CLUSTER > 1) {
#pragma unroll
      for (int cta = 0; cta < CLUSTER; ++cta) mbar_arrive_cluster(empty0 + 8 * stage, cta);
    } else {
      mbar_arrive_local(empty0 + 8 * stage);
    }
  };

  float acc[ACCS];
  uint32_t stage = 0, phase = 0;
  for (int unit = cluster; unit < p.units; unit += clusters) {
    const Tile t = tile_of<CLUSTER>(unit, p, cta_rank);
#pragma unroll
    for (int i = 0; i < ACCS; ++i) acc[i] = 0.0f;
    fence_accumulators(acc);
    uint32_t previous = 0;
    for (int kb = 0; kb < p.k_blocks; ++kb) {
      mbar_wait(full0 + 8 * stage, phase);
      const uint32_t a_base = ring + stage * STAGE_BYTES + a_offset;
      const uint32_t b_base = ring + stage * STAGE_BYTES + A_BYTES;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BLK_K / WGMMA_K; ++kk)
        wgmma_m64n256k16<T, A_MN ? 1 : 0, B_MN ? 1 : 0>(acc, operand_desc<A_MN>(a_base + kk * K_STEP_BYTES<A_MN>),
                                                       operand_desc<B_MN>(b_base + kk * K_STEP_BYTES<B_MN>));
      wgmma_commit();
      // The previous k-block's wgmmas are done once at most this one is pending.
      wgmma_wait<1>();
      if (kb > 0) release(previous);
      previous = stage;
      if (++stage == STAGES) stage = 0, phase ^= 1;
    }
    wgmma_wait<0>();
    fence_accumulators(acc);
    if (p.k_blocks > 0) release(previous);
    if (p.c_tma)
      store_tile_tma<T>(acc, p, tmap_c, staging0 + wg * STORE_BYTES, t.batch, t.m0 + wg * WGMMA_M, t.n0, wg);
    else
      store_tile<T>(acc, p, t.batch, t.m0 + wg * WGMMA_M, t.n0);
  }
  // Shared memory must outlive the last stores' reads of the staging buffer.
  if (p.c_tma && threadIdx.x % WARPGROUP == 0) bulk_wait();
}

#endif  // __CUDA_ARCH__ && __CUDA_ARCH_FEAT_SM90_ALL

// A: K-major (A_MN = false) or M-major; B: K-major (B_MN = false) or N-major; CLUSTER
// CTAs per cluster along m.
template <class T, bool A_MN, bool B_MN, int CLUSTER>
__global__ void __launch_bounds__(THREADS, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap tmap_a, const __grid_constant__ CUtensorMap tmap_b,
                     const __grid_constant__ CUtensorMap tmap_c, const Params p) {
  static_assert(CLUSTER_OK<CLUSTER>, "cluster size must split the B tile into 64-column boxes");
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem[];
  const uint32_t ring = (smem_u32(smem) + SMEM_ALIGN - 1) & ~uint32_t(SMEM_ALIGN - 1);
  const uint32_t staging0 = ring + STAGES * STAGE_BYTES;  // CONSUMERS x STORE_BYTES, 1024-aligned
  const uint32_t full0 = staging0 + CONSUMERS * STORE_BYTES, empty0 = full0 + 8 * STAGES;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, CONSUMERS * CLUSTER);
    }
    // Make the initialised barriers visible to the TMA unit and to the peer CTA.
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;" ::: "memory");
  }
  const int cta_rank = CLUSTER > 1 ? int(cluster_ctarank()) : 0;
  const int cluster = int(blockIdx.x) / CLUSTER, clusters = int(gridDim.x) / CLUSTER;
  if constexpr (CLUSTER > 1) cluster_sync();
  else __syncthreads();

  if (threadIdx.x < WARPGROUP) {
    setmaxnreg_dec<PRODUCER_REGS>();
    if (threadIdx.x == 0) {
      asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&tmap_a)) : "memory");
      asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&tmap_b)) : "memory");
      if (p.c_tma) asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&tmap_c)) : "memory");
      produce<A_MN, B_MN, CLUSTER>(tmap_a, tmap_b, p, ring, full0, empty0, cta_rank, cluster, clusters);
    }
  } else {
    setmaxnreg_inc<CONSUMER_REGS>();
    consume<T, A_MN, B_MN, CLUSTER>(p, tmap_c, ring, staging0, full0, empty0, cta_rank, cluster, clusters);
  }
#endif
}

// ------------------------------------------------------------------ host: tensor maps
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver the runtime loaded (no link against libcuda).
Status encode_tiled_fn(EncodeTiledFn* out) {
  struct Entry {
    void* fn = nullptr;
    cudaError_t error = cudaSuccess;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  };
  static const Entry entry = [] {
    Entry e;
    e.error = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &e.fn, 12000, cudaEnableDefault, &e.found);
    return e;
  }();
  ANVIL_RETURN_IF_ERROR(cuda::check(entry.error, "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)"));
  if (entry.found != cudaDriverEntryPointSuccess || entry.fn == nullptr)
    return unsupported("the CUDA driver has no cuTensorMapEncodeTiled (TMA needs driver >= 12.0)");
  *out = reinterpret_cast<EncodeTiledFn>(entry.fn);
  return Status::Ok();
}

// One operand as TMA sees it: (inner, outer, batch) with inner contiguous. Strides in
// elements; a dimension of extent 1 has no stride that matters, so any value is accepted
// there and replaced by a legal one.
struct OperandView {
  const char* name;  // "a" / "b", for messages
  bool mn_major;     // the inner dimension is m (A) or n (B)
  bool usable;       // the inner dimension has unit stride (or extent 1)
  const void* data;
  int64_t inner, outer, batch;
  int64_t outer_stride, batch_stride;
  uint32_t box_inner, box_outer;
};

// TMA rules (cuTensorMapEncodeTiled): base 16-byte aligned, strides multiples of 16 bytes
// below 2^40; extents below 2^32 (ours below 2^30 for int32 coordinates).
Status encode_operand(const OperandView& v, CUtensorMapDataType dtype, CUtensorMap* map, bool* batch_fixed) {
  const std::string name = v.name;
  if (reinterpret_cast<uintptr_t>(v.data) % 16 != 0) return unsupported(name + ": TMA needs a 16-byte aligned base pointer");
  constexpr int64_t STRIDE_LIMIT = int64_t(1) << 40;
  int64_t outer_bytes = 0;
  if (v.outer > 1) {
    if (v.outer_stride <= 0 || v.outer_stride * ELEM_BYTES % 16 != 0 || v.outer_stride * ELEM_BYTES >= STRIDE_LIMIT)
      return unsupported(name + ": TMA needs its non-unit stride (" + std::to_string(v.outer_stride) +
                         " elements) positive and a multiple of 16 bytes");
    outer_bytes = v.outer_stride * ELEM_BYTES;
  } else {
    outer_bytes = (v.inner * ELEM_BYTES + 15) / 16 * 16;
  }
  const bool fixed = v.batch == 1 || v.batch_stride == 0;  // one batch entry, or broadcast
  int64_t batch_bytes = outer_bytes * v.outer;
  if (!fixed) {
    if (v.batch_stride < 0 || v.batch_stride * ELEM_BYTES % 16 != 0 || v.batch_stride * ELEM_BYTES >= STRIDE_LIMIT)
      return unsupported(name + ": TMA needs its batch stride (" + std::to_string(v.batch_stride) +
                         " elements) a multiple of 16 bytes, or 0 to broadcast");
    batch_bytes = v.batch_stride * ELEM_BYTES;
  }
  if (outer_bytes >= STRIDE_LIMIT || batch_bytes >= STRIDE_LIMIT)
    return unsupported(name + ": TMA strides must be below 2^40 bytes");

  EncodeTiledFn encode = nullptr;
  ANVIL_RETURN_IF_ERROR(encode_tiled_fn(&encode));
  const cuuint64_t dims[3] = {cuuint64_t(v.inner), cuuint64_t(v.outer), cuuint64_t(fixed ? 1 : v.batch)};
  const cuuint64_t strides[2] = {cuuint64_t(outer_bytes), cuuint64_t(batch_bytes)};
  const cuuint32_t box[3] = {v.box_inner, v.box_outer, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult r = encode(map, dtype, 3, const_cast<void*>(v.data), dims, strides, box, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return unsupported(name + ": cuTensorMapEncodeTiled refused the view (CUresult " + std::to_string(int(r)) + ")");
  *batch_fixed = fixed;
  return Status::Ok();
}

// The views of each operand; a view is usable when its inner dimension has unit stride (or
// extent 1: that stride is never used). A (m, k): K-major (unit col stride) or M-major
// (unit row stride). B (k, n): N-major (unit col stride, row-major) or K-major (unit row
// stride). Boxes: K-major (BLK_K, rows), one TMA per tile (for B, one per CTA's share of the
// cluster's tile); MN-major (64, BLK_K), one TMA per 64 m or n.
OperandView a_view(const Problem& p, bool mn_major) {
  if (mn_major)
    return {"a", true, p.a.row_stride == 1 || p.m == 1, p.a.data, p.m, p.k, p.batch, p.a.col_stride,
            p.a.batch_stride, ROW_ELEMS, BLK_K};
  return {"a", false, p.a.col_stride == 1 || p.k == 1, p.a.data, p.k, p.m, p.batch, p.a.row_stride,
          p.a.batch_stride, BLK_K, BLK_M};
}
OperandView b_view(const Problem& p, bool mn_major, int cluster) {
  if (mn_major)
    return {"b", true, p.b.col_stride == 1 || p.n == 1, p.b.data, p.n, p.k, p.batch, p.b.row_stride,
            p.b.batch_stride, ROW_ELEMS, BLK_K};
  return {"b", false, p.b.row_stride == 1 || p.k == 1, p.b.data, p.k, p.n, p.batch, p.b.col_stride,
          p.b.batch_stride, BLK_K, uint32_t(BLK_N / cluster)};
}

// Encodes the first usable view that TMA accepts, the preferred one first; when neither
// encodes, the reason is the preferred (usable) view's.
Status plan_operand(const OperandView& preferred, const OperandView& other, CUtensorMapDataType dtype,
                    CUtensorMap* map, bool* mn_major, bool* batch_fixed) {
  if (!preferred.usable && !other.usable)
    return unsupported(std::string(preferred.name) + ": TMA needs a unit stride in one of its two dimensions");
  const Status first = preferred.usable ? encode_operand(preferred, dtype, map, batch_fixed) : Status::Ok();
  if (preferred.usable && first.ok()) {
    *mn_major = preferred.mn_major;
    return first;
  }
  if (!other.usable) return first;
  const Status second = encode_operand(other, dtype, map, batch_fixed);
  if (second.ok()) *mn_major = other.mn_major;
  return second.ok() || !preferred.usable ? second : first;
}

struct Plan {
  CUtensorMap a, b, c;  // c: valid when params.c_tma
  bool a_mn = false, b_mn = false;
  Params params;
};

Status make_plan(const Problem& p, int cluster, Plan* plan) {
  const CUtensorMapDataType dtype =
      p.dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  bool a_fixed = false, b_fixed = false;
  // Ties (a single row or column) go K-major for A and N-major for B: the layouts of a
  // plain row-major a @ b.
  ANVIL_RETURN_IF_ERROR(plan_operand(a_view(p, false), a_view(p, true), dtype, &plan->a, &plan->a_mn, &a_fixed));
  ANVIL_RETURN_IF_ERROR(
      plan_operand(b_view(p, true, cluster), b_view(p, false, cluster), dtype, &plan->b, &plan->b_mn, &b_fixed));
  const int64_t tiles_m = (p.m + BLK_M - 1) / BLK_M, tiles_n = (p.n + BLK_N - 1) / BLK_N;
  const int64_t cluster_rows = (tiles_m + cluster - 1) / cluster;
  const int64_t units = p.batch * cluster_rows * tiles_n;
  if (units > INT_MAX) return unsupported("more than 2^31 - 1 tiles");
  Params& k = plan->params;
  k.c = p.c.data;
  k.c_batch_stride = p.c.batch_stride, k.c_row_stride = p.c.row_stride;
  k.bias = p.bias, k.bias_stride = p.bias_stride;
  k.alpha = p.alpha, k.beta = p.beta;
  k.m = int(p.m), k.n = int(p.n), k.k_blocks = int((p.k + BLK_K - 1) / BLK_K);
  k.a_batch_fixed = a_fixed, k.b_batch_fixed = b_fixed;
  k.c_pairs_aligned = reinterpret_cast<uintptr_t>(p.c.data) % 4 == 0 && p.c.row_stride % 2 == 0 &&
                      (p.batch == 1 || p.c.batch_stride % 2 == 0);
  k.tiles_n = int(tiles_n), k.cluster_rows = int(cluster_rows), k.units = int(units);
  // c through TMA stores when nothing reads it and TMA can address it; else register stores.
  // A TMA store writes whole 16-byte granules at the end of a row (seen on an H100: n = 129
  // also wrote columns 129..135 of each row), so rows must end on a 16-byte boundary.
  plan->c = {};
  k.c_tma = 0;
  if (p.beta == 0.0f && p.n * ELEM_BYTES % 16 == 0 && (p.batch == 1 || p.c.batch_stride != 0)) {
    const OperandView c_view{"c", false, true, p.c.data, p.n, p.m, p.batch, p.c.row_stride, p.c.batch_stride,
                             ROW_ELEMS, WGMMA_M};
    bool c_fixed = false;
    k.c_tma = encode_operand(c_view, dtype, &plan->c, &c_fixed).ok() ? 1 : 0;
  }
  return Status::Ok();
}

// ------------------------------------------------------------------ host: launch
cudaLaunchConfig_t launch_config(int clusters, int cluster, cudaStream_t stream, cudaLaunchAttribute* attribute) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(clusters * cluster));
  config.blockDim = dim3(THREADS);
  config.dynamicSmemBytes = SMEM_BYTES;
  config.stream = stream;
  *attribute = {};
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = unsigned(cluster), attribute->val.clusterDim.y = 1, attribute->val.clusterDim.z = 1;
  config.attrs = attribute, config.numAttrs = 1;
  return config;
}

// Once per device and instantiation: the dynamic shared-memory opt-in, and how many
// clusters fit on the device at once (the persistent grid).
template <class T, bool A_MN, bool B_MN, int CLUSTER>
Status kernel_setup(int device, int sm_count, int* resident_clusters) {
  static std::once_flag once[MAX_DEVICES];
  static cudaError_t error[MAX_DEVICES];
  static int clusters[MAX_DEVICES];
  if (device < 0 || device >= MAX_DEVICES)
    return unsupported("sm90 gemm supports device indices below " + std::to_string(MAX_DEVICES));
  std::call_once(once[device], [&] {
    const auto kernel = gemm_sm90_kernel<T, A_MN, B_MN, CLUSTER>;
    error[device] = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES);
    clusters[device] = std::max(1, sm_count / CLUSTER);
    if (error[device] != cudaSuccess) return;
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = launch_config(clusters[device], CLUSTER, nullptr, &attribute);
    int fit = 0;
    if (cudaOccupancyMaxActiveClusters(&fit, kernel, &config) == cudaSuccess && fit > 0)
      clusters[device] = std::min(clusters[device], fit);
    else
      (void)cudaGetLastError();  // the query is only a hint; keep its error out of the next check
  });
  *resident_clusters = clusters[device];
  return cuda::check(error[device], "cudaFuncSetAttribute(gemm_sm90, MaxDynamicSharedMemorySize)");
}

template <class T, bool A_MN, bool B_MN, int CLUSTER> Status launch(const Plan& plan, const Problem& p, int sm_count) {
  int resident = 0;
  ANVIL_RETURN_IF_ERROR((kernel_setup<T, A_MN, B_MN, CLUSTER>(p.device, sm_count, &resident)));
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config = launch_config(std::min(resident, plan.params.units), CLUSTER, p.stream, &attribute);
  return cuda::check(cudaLaunchKernelEx(&config, gemm_sm90_kernel<T, A_MN, B_MN, CLUSTER>, plan.a, plan.b, plan.c, plan.params),
                     "gemm_sm90 launch");
}

template <class T, int CLUSTER> Status launch_layout(const Plan& plan, const Problem& p, int sm_count) {
  if (plan.a_mn)
    return plan.b_mn ? launch<T, true, true, CLUSTER>(plan, p, sm_count) : launch<T, true, false, CLUSTER>(plan, p, sm_count);
  return plan.b_mn ? launch<T, false, true, CLUSTER>(plan, p, sm_count) : launch<T, false, false, CLUSTER>(plan, p, sm_count);
}

// Everything but the tensor maps; sets `props`.
Status check_problem(const Problem& p, const cuda::DeviceProps** props) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    return unsupported(std::string("sm90 wgmma takes bf16 and f16, not ") + dtype_name(p.dtype));
  if (p.sum_batches) return unsupported("sums over the batch run on the SIMT kernel");
  ANVIL_RETURN_IF_ERROR(cuda::device_props(p.device, props));
  if ((*props)->cc_major != 9)
    return unsupported("wgmma/TMA kernel is built for sm_90a; device has compute capability " +
                       std::to_string((*props)->cc_major) + "." + std::to_string((*props)->cc_minor));
  if ((*props)->smem_per_block_optin < SMEM_BYTES)
    return unsupported("needs " + std::to_string(SMEM_BYTES) + " bytes of shared memory per block, device allows " +
                       std::to_string((*props)->smem_per_block_optin));
  if (p.c.col_stride != 1) return unsupported("c needs unit column stride");
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.batch < 0) return invalid_argument("negative dimension");
  if (p.k == 0) return unsupported("k == 0 is only an epilogue (the SIMT kernel does it)");
  constexpr int64_t DIM_LIMIT = int64_t(1) << 30;
  if (p.m >= DIM_LIMIT || p.n >= DIM_LIMIT || p.k >= DIM_LIMIT || p.batch >= DIM_LIMIT)
    return unsupported("m, n, k and batch must be below 2^30 (int32 TMA coordinates)");
  return Status::Ok();
}

bool empty_output(const Problem& p) { return !p.sum_batches && (p.m == 0 || p.n == 0 || p.batch == 0); }

template <int CLUSTER> Status run_with_cluster(const Problem& p) {
  if (empty_output(p)) return Status::Ok();
  const cuda::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(check_problem(p, &props));
  Plan plan;
  ANVIL_RETURN_IF_ERROR(make_plan(p, CLUSTER, &plan));
  if (p.dtype == DType::bf16) return launch_layout<__nv_bfloat16, CLUSTER>(plan, p, props->sm_count);
  return launch_layout<__half, CLUSTER>(plan, p, props->sm_count);
}

}  // namespace

Status sm90_accepts(const Problem& p) {
  if (empty_output(p)) return Status::Ok();
  const cuda::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(check_problem(p, &props));
  Plan plan;
  return make_plan(p, CLUSTER_M, &plan);
}

Status run_sm90(const Problem& p) { return run_with_cluster<CLUSTER_M>(p); }

}  // namespace anvil::cuda_gemm
