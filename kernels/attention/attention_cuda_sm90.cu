// FlashAttention-3-class forward for Hopper (sm_90a) in bf16 and f16: TMA loads completing
// on mbarriers, wgmma with f32 accumulation, one producer and two consumer warpgroups.
// Head dims 64 and 128 (head_dim == value_dim), causal (top-left, as torch), GQA/MQA,
// lq != lk, and the log-sum-exp. Compiled and SASS-checked; NOT yet run on a GPU.
//
// One CTA = BLK_M (128) query rows of one (batch, head); the CTA walks the keys in tiles of
// BLK_N (128). 384 threads = 3 warpgroups:
//   warpgroup 0      producer: setmaxnreg.dec to 24; one thread issues the TMA loads: Q once,
//                    then K and V tiles into two rings of STAGES (2) buffers each.
//   warpgroups 1, 2  consumers: setmaxnreg.inc to 240; warpgroup w owns query rows
//                    [64w, 64w + 64) of the CTA, so every row's softmax statistics live in
//                    one warp (a row is spread over the 4 lanes of a quad, as in flash_sm80).
// Per key tile j, a consumer warpgroup computes
//   S (64, BLK_N)  = Q (64, D) K_j^T       wgmma m64n128k16, A = Q and B = K from smem (K-major)
//   online softmax over S rows             f32, exp2 of S * scale*log2e - m (one FFMA + MUFU)
//   P (64, BLK_N)  rounded to T in registers: the wgmma accumulator layout of S (two n8 column
//                  tiles per k16 step) is exactly the register A-operand layout of wgmma
//   O (64, D)     += P V_j                 wgmma m64nDk16, A = P from registers, B = V from
//                                          smem (MN-major: V's rows are keys, dims contiguous)
// Intra-warpgroup overlap (FA3): step j issues S_j = Q K_j^T and then O += P_{j-1} V_{j-1}
// as two wgmma groups (O first rescaled by exp2(m_{j-2} - m_{j-1})), waits for the first
// (wait_group 1) and runs the softmax of S_j while the tensor cores still compute
// P_{j-1} V_{j-1}; then waits for the second and rounds P_j into the A registers.
// Ping-pong (FA3): the two consumer warpgroups take turns issuing their wgmmas (named
// barriers pass the turn), so one's softmax runs under the other's matrix products.
// Registers per consumer thread: O D/2 (64 at d = 128), S 64, P 32 (as 16-bit pairs); ptxas
// (CUDA 13.0): no spills, up to R236 of the 240 at d = 128, R206 at d = 64.
//
// Shared memory (element type T, 2 bytes), every operand in 128B-swizzled panels of 64
// columns (TMA box (64, rows); 16-byte chunk c of a 128-byte row r at chunk c ^ (r % 8)):
//   Q            D/64 panels of (BLK_M, 64):            d = 128: 32 KiB; d = 64: 16 KiB
//   K, V stages  STAGES x D/64 panels of (BLK_N, 64):    d = 128: 2 x (32 + 32) KiB
//   barriers     q_full, k_full[S], k_empty[S], v_full[S], v_empty[S]
//   + 1 KiB to align the panels to 1024 B (the swizzle atom): 161 KiB at d = 128, 81 at d = 64.
// wgmma operand descriptors, as the verified gemm_cuda_sm90.cu (same encodings):
//   K-major (Q as A, K as B of Q K^T): rows 128 B apart, 8-row groups SBO = 1024 B, LBO
//     unused (16); k16 step kk reads panel kk / 4 at +32 B * (kk % 4).
//   MN-major (V as B of P V, transpose bit set): 64 dims per 128-byte row, the next 64 dims
//     LBO = one panel (BLK_N * 128 B) away, 8-key groups SBO = 1024 B; k16 step kc at
//     +16 rows = 2048 B.
// Pipeline: full barriers count 1 arrival (the producer's arrive.expect_tx) + the TMA bytes
// (a box's full size, zero-filled parts included); empty barriers count one arrival per
// consumer warpgroup, made by its thread 0 once wait_group has retired the wgmmas that read
// the stage (K after S_j, V after P_j V_j).
// Edges: Q, K and V are 4-D tensor maps (D, length, heads, batch), so TMA zero-fills rows
// >= lq or >= lk of each head without touching the next head; keys >= lk get S = -inf, rows
// >= lq are never stored. causal: query i sees keys j <= i; tiles whose first key is past the
// CTA's last row are never loaded, and only tiles crossing a warpgroup's diagonal (or lk)
// pay for the mask. BLK_N == BLK_M keeps every loaded tile partly visible to both
// warpgroups (a fully masked tile would still be correct: P = 0 there).
// GQA: head h reads kv head h / (heads / kv_heads) straight from K and V.
// Epilogue: O / l rounded to T, staged in the warpgroup's own rows of the Q buffer (no other
// warpgroup reads them), then 16-byte stores of rows < lq; lse = ln(2) * m + ln(l) (natural
// log); a row that saw no key (lk == 0) gets out = 0 and lse = -inf.
#include <cuda.h>  // CUtensorMap and its enums only: the driver entry point comes from the runtime
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_runtime.h"
#include "kernels/attention/attention_cuda.h"

namespace anvil::cuda_attention {
namespace {

// ------------------------------------------------------------------ config
constexpr int WARPGROUP = 128;
constexpr int CONSUMERS = 2;  // consumer warpgroups
constexpr int THREADS = WARPGROUP * (1 + CONSUMERS);
constexpr int PRODUCER_REGS = 24, CONSUMER_REGS = 240;  // 24 + 2 * 240 = 3 * 168 (the entry cap)
constexpr int ELEM_BYTES = 2;                          // bf16 / f16
constexpr int SWIZZLE_BYTES = 128;                     // one swizzled row
constexpr int PANEL_COLS = SWIZZLE_BYTES / ELEM_BYTES;  // 64 columns per 128-byte panel row
constexpr int ATOM_BYTES = 8 * SWIZZLE_BYTES;          // 1024: one repeat of the swizzle pattern
constexpr int CHUNK_BYTES = 16;
constexpr int CHUNK_ELEMS = CHUNK_BYTES / ELEM_BYTES;   // 8
constexpr int WGMMA_M = 64, WGMMA_K = 16;
constexpr int SMEM_ALIGN = 1024;
constexpr int64_t MAX_LENGTH = int64_t(1) << 30;  // lq, lk: int32 TMA coordinates and row indices
constexpr int MAX_GRID_YZ = 65535;
constexpr int MAX_DEVICES = 64;
constexpr float LOG2E = 1.442695040888963407f;

static_assert(PRODUCER_REGS * WARPGROUP + CONSUMER_REGS * WARPGROUP * CONSUMERS <= 65536, "register file");
static_assert(PRODUCER_REGS + CONSUMERS * CONSUMER_REGS <= 3 * 168,
              "setmaxnreg.inc blocks unless the producer frees what the consumers take");

template <int HEAD_DIM>
struct Sm90Config {
  static constexpr int BLK_M = CONSUMERS * WGMMA_M;   // 128 query rows per CTA
  static constexpr int BLK_N = 128;                   // keys per K/V tile
  static constexpr int STAGES = 2;
  static constexpr int PANELS = HEAD_DIM / PANEL_COLS;            // 64-column panels of a row
  static constexpr int Q_PANEL_BYTES = BLK_M * SWIZZLE_BYTES;     // (BLK_M, 64): 16 KiB
  static constexpr int KV_PANEL_BYTES = BLK_N * SWIZZLE_BYTES;    // (BLK_N, 64): 16 KiB
  static constexpr int Q_BYTES = PANELS * Q_PANEL_BYTES;          // (BLK_M, D)
  static constexpr int KV_BYTES = PANELS * KV_PANEL_BYTES;        // one K or V stage (BLK_N, D)
  static constexpr int BARRIERS = 1 + 4 * STAGES;
  static constexpr int SMEM_BYTES = Q_BYTES + 2 * STAGES * KV_BYTES + 8 * BARRIERS + SMEM_ALIGN;
  static constexpr int S_ACCS = WGMMA_M * BLK_N / WARPGROUP;      // S (64, BLK_N) f32 per thread: 64
  static constexpr int O_ACCS = WGMMA_M * HEAD_DIM / WARPGROUP;   // O (64, D) f32 per thread
  static constexpr int P_STEPS = BLK_N / WGMMA_K;                 // k16 steps of P V
  static constexpr int ROW_CHUNKS = HEAD_DIM / CHUNK_ELEMS;       // 16-byte chunks of an O row

  static_assert(HEAD_DIM == 64 || HEAD_DIM == 128, "head_dim 64 or 128");
  static_assert(BLK_N == 128, "S = Q K^T is one wgmma m64n128k16 per k16 step (wgmma_ss_n128)");
  static_assert(BLK_N == BLK_M, "every loaded causal tile has a visible key for both warpgroups");
  static_assert(HEAD_DIM % PANEL_COLS == 0 && P_STEPS * WGMMA_K == BLK_N, "whole panels and k16 steps");
  static_assert(PANEL_COLS % WGMMA_K == 0, "a k16 step of Q K^T stays inside one panel");
  static_assert(BLK_M <= 256 && BLK_N <= 256, "TMA boxes are at most 256 rows");
  static_assert(Q_PANEL_BYTES % ATOM_BYTES == 0 && KV_PANEL_BYTES % ATOM_BYTES == 0,
                "swizzle atoms stay 1024-byte aligned");
  static_assert(WGMMA_M * ROW_CHUNKS % WARPGROUP == 0, "O rows split evenly over a warpgroup");
  static_assert(S_ACCS == 64 && (O_ACCS == 32 || O_ACCS == 64), "the wgmma operand lists below");
  static_assert(SMEM_BYTES <= 232448, "fits the 227 KB an sm_90 block may opt into");
};

// What the kernel needs besides the three tensor maps. Lengths fit in int (checked on the
// host). *_head_step / *_batch_step are 1, or 0 where the tensor map has a single entry on
// that dimension (extent 1, or a broadcast stride of 0).
struct Sm90Params {
  void* out = nullptr;
  float* lse = nullptr;  // may be null
  int64_t o_batch = 0, o_head = 0, o_row = 0;
  int64_t lse_batch = 0, lse_head = 0, lse_row = 0;
  int lq = 0, lk = 0, heads_per_kv = 1;
  int q_head_step = 1, q_batch_step = 1, k_head_step = 1, k_batch_step = 1, v_head_step = 1, v_batch_step = 1;
  float scale_log2 = 0.0f;  // scale * log2(e) > 0: softmax runs in exp2
  int causal = 0;
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr float LN2 = 0.693147180559945309f;

// Ping-pong (FA3): the consumer warpgroups take turns issuing their wgmmas, so that one's
// softmax runs while the other's matrix products hold the tensor cores. Named barriers
// SCHEDULER_BARRIER + w (2 warpgroups each) pass the turn; EPILOGUE_BARRIER + w (one
// warpgroup each) order a warpgroup's O staging in shared memory.
constexpr bool PINGPONG = true;
constexpr int EPILOGUE_BARRIER = 1, SCHEDULER_BARRIER = 1 + CONSUMERS;

template <class T> struct Elem;
template <> struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return reinterpret_cast<const uint32_t&>(h);
  }
};
template <> struct Elem<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return reinterpret_cast<const uint32_t&>(h);
  }
};

// ------------------------------------------------------------------ sm_90a primitives
// (the wrappers of gemm_cuda_sm90.cu, verified on an H100)
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
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

// Box at coordinates (c0 = column, c1 = row, c2 = head, c3 = batch) of a 4-D tensor map.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap& map, uint32_t bar, int c0, int c1,
                                            int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap& map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&map)) : "memory");
}

__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ uint4 ld_shared_v4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}
// Named barriers (0 is __syncthreads): bar.sync waits for `threads` arrivals in all,
// bar.arrive adds to them without waiting.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
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
// Keeps the compiler from moving register reads or writes across the async wgmma window:
// every use after this point reads the value the fence hands on.
template <int N> __device__ __forceinline__ void fence_registers(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// 2^x on the SFU (max relative error ~2^-22, far below P's 16-bit rounding); -inf -> 0.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Shared-memory matrix descriptor (PTX "Matrix Descriptor Format"): bits 0-13 start
// address >> 4, 16-29 leading byte offset >> 4, 32-45 stride byte offset >> 4, 49-51 base
// offset (0: atoms are 1024-byte aligned), 62-63 swizzle (1 = 128B).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return uint64_t((addr & 0x3FFFF) >> 4) | uint64_t((lbo_bytes & 0x3FFFF) >> 4) << 16 |
         uint64_t((sbo_bytes & 0x3FFFF) >> 4) << 32 | uint64_t(1) << 62;
}

// wgmma operand lists: d[j*4 + i*2 + e] is row 16*warp + lane/4 + 8*i, column
// 8*j + 2*(lane%4) + e of the (64, N) tile (warp = warp index inside the warpgroup).
#define ANVIL_FA3_D32_REGS                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define ANVIL_FA3_D32_OPERANDS                                                                       \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),    \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),       \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),     \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),     \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define ANVIL_FA3_D64_REGS                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define ANVIL_FA3_D64_OPERANDS                                                                       \
  ANVIL_FA3_D32_OPERANDS, "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),           \
      "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),     \
      "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),     \
      "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]),     \
      "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64, 128) (+)= A (64, 16) @ B (16, 128), both K-major in shared memory; scale_d == 0
// ignores d's old value (the first k16 step of S).
#define ANVIL_FA3_SS_N128(TYPE)                                                                   \
  asm volatile(                                                                                   \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " " ANVIL_FA3_D64_REGS         \
      ", %64, %65, p, 1, 1, 0, 0;\n}"                                                             \
      : ANVIL_FA3_D64_OPERANDS                                                                    \
      : "l"(desc_a), "l"(desc_b), "r"(scale_d))
template <class T>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) ANVIL_FA3_SS_N128("bf16");
  else ANVIL_FA3_SS_N128("f16");
}
#undef ANVIL_FA3_SS_N128

// d (64, N) += A (64, 16) @ B (16, N): A from registers (the m16k16 fragment of each warp's
// 16 rows: {row, col 0-7}, {row + 8, col 0-7}, {row, col 8-15}, {row + 8, col 8-15} as 16-bit
// pairs), B MN-major in shared memory (transpose bit 1).
#define ANVIL_FA3_RS(N, REGS, OPERANDS, A, B, SCALE_D, TYPE)                                    \
  asm volatile(                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE_D ", 0;\n"                                        \
      "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " " REGS ", " A ", " B       \
      ", p, 1, 1, 1;\n}"                                                                         \
      : OPERANDS                                                                                 \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1))
template <class T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b) {
  static_assert(N == 64 || N == 128, "operand lists for n = 64 and n = 128");
  constexpr bool BF16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 128) {
    if constexpr (BF16)
      ANVIL_FA3_RS(128, ANVIL_FA3_D64_REGS, ANVIL_FA3_D64_OPERANDS, "{%64, %65, %66, %67}", "%68", "%69", "bf16");
    else
      ANVIL_FA3_RS(128, ANVIL_FA3_D64_REGS, ANVIL_FA3_D64_OPERANDS, "{%64, %65, %66, %67}", "%68", "%69", "f16");
  } else {
    if constexpr (BF16)
      ANVIL_FA3_RS(64, ANVIL_FA3_D32_REGS, ANVIL_FA3_D32_OPERANDS, "{%32, %33, %34, %35}", "%36", "%37", "bf16");
    else
      ANVIL_FA3_RS(64, ANVIL_FA3_D32_REGS, ANVIL_FA3_D32_OPERANDS, "{%32, %33, %34, %35}", "%36", "%37", "f16");
  }
}
#undef ANVIL_FA3_RS
#undef ANVIL_FA3_D64_OPERANDS
#undef ANVIL_FA3_D64_REGS
#undef ANVIL_FA3_D32_OPERANDS
#undef ANVIL_FA3_D32_REGS

// ------------------------------------------------------------------ shared memory map
template <int HEAD_DIM>
struct Smem {
  using Cfg = Sm90Config<HEAD_DIM>;
  uint32_t q, k, v, bars;  // shared addresses; q, k, v 1024-byte aligned
  __device__ __forceinline__ uint32_t k_stage(int s) const { return k + uint32_t(s * Cfg::KV_BYTES); }
  __device__ __forceinline__ uint32_t v_stage(int s) const { return v + uint32_t(s * Cfg::KV_BYTES); }
  __device__ __forceinline__ uint32_t q_full() const { return bars; }
  __device__ __forceinline__ uint32_t k_full(int s) const { return bars + 8 * (1 + s); }
  __device__ __forceinline__ uint32_t k_empty(int s) const { return bars + 8 * (1 + Cfg::STAGES + s); }
  __device__ __forceinline__ uint32_t v_full(int s) const { return bars + 8 * (1 + 2 * Cfg::STAGES + s); }
  __device__ __forceinline__ uint32_t v_empty(int s) const { return bars + 8 * (1 + 3 * Cfg::STAGES + s); }
};

// ------------------------------------------------------------------ load (producer)
// One thread: Q once, then K_j and V_j for j < n_blocks, each into stage j % STAGES once
// both consumer warpgroups released the tile that used it before.
template <int HEAD_DIM>
__device__ __forceinline__ void produce(const CUtensorMap& tmap_q, const CUtensorMap& tmap_k,
                                        const CUtensorMap& tmap_v, const Sm90Params& p, const Smem<HEAD_DIM>& sm,
                                        int m0, int head, int batch, int n_blocks) {
  using Cfg = Sm90Config<HEAD_DIM>;
  prefetch_tensormap(tmap_q);
  prefetch_tensormap(tmap_k);
  prefetch_tensormap(tmap_v);
  const int kv_head = head / p.heads_per_kv;
  const int q_head = head * p.q_head_step, q_batch = batch * p.q_batch_step;
  const int k_head = kv_head * p.k_head_step, k_batch = batch * p.k_batch_step;
  const int v_head = kv_head * p.v_head_step, v_batch = batch * p.v_batch_step;

  mbar_arrive_expect_tx(sm.q_full(), Cfg::Q_BYTES);
#pragma unroll
  for (int c = 0; c < Cfg::PANELS; ++c)
    tma_load_4d(sm.q + c * Cfg::Q_PANEL_BYTES, tmap_q, sm.q_full(), c * PANEL_COLS, m0, q_head, q_batch);

  for (int j = 0; j < n_blocks; ++j) {
    const int stage = j % Cfg::STAGES;
    const uint32_t parity = uint32_t(j / Cfg::STAGES) & 1;
    const int n0 = j * Cfg::BLK_N;
    mbar_wait(sm.k_empty(stage), parity ^ 1);
    mbar_arrive_expect_tx(sm.k_full(stage), Cfg::KV_BYTES);
#pragma unroll
    for (int c = 0; c < Cfg::PANELS; ++c)
      tma_load_4d(sm.k_stage(stage) + c * Cfg::KV_PANEL_BYTES, tmap_k, sm.k_full(stage), c * PANEL_COLS, n0, k_head,
                  k_batch);
    mbar_wait(sm.v_empty(stage), parity ^ 1);
    mbar_arrive_expect_tx(sm.v_full(stage), Cfg::KV_BYTES);
#pragma unroll
    for (int c = 0; c < Cfg::PANELS; ++c)
      tma_load_4d(sm.v_stage(stage) + c * Cfg::KV_PANEL_BYTES, tmap_v, sm.v_full(stage), c * PANEL_COLS, n0, v_head,
                  v_batch);
  }
}

// ------------------------------------------------------------------ compute (consumers)
// S (64, BLK_N) = Q (64, D) K^T of this warpgroup's rows; K-major A and B.
template <class T, int HEAD_DIM>
__device__ __forceinline__ void issue_qk(float (&s)[64], uint32_t q_rows, uint32_t k_tile) {
  using Cfg = Sm90Config<HEAD_DIM>;
#pragma unroll
  for (int kk = 0; kk < HEAD_DIM / WGMMA_K; ++kk) {
    constexpr int STEPS_PER_PANEL = PANEL_COLS / WGMMA_K;
    const uint32_t offset = uint32_t(kk % STEPS_PER_PANEL) * (WGMMA_K * ELEM_BYTES);
    const int panel = kk / STEPS_PER_PANEL;
    wgmma_ss_n128<T>(s, smem_desc(q_rows + panel * Cfg::Q_PANEL_BYTES + offset, 16, ATOM_BYTES),
                     smem_desc(k_tile + panel * Cfg::KV_PANEL_BYTES + offset, 16, ATOM_BYTES), kk > 0 ? 1 : 0);
  }
}

// O (64, D) += P (64, BLK_N) V (BLK_N, D); P from registers, V MN-major.
template <class T, int HEAD_DIM>
__device__ __forceinline__ void issue_pv(float (&o)[Sm90Config<HEAD_DIM>::O_ACCS],
                                         const uint32_t (&pf)[Sm90Config<HEAD_DIM>::P_STEPS][4], uint32_t v_tile) {
  using Cfg = Sm90Config<HEAD_DIM>;
#pragma unroll
  for (int kc = 0; kc < Cfg::P_STEPS; ++kc)
    wgmma_rs<T, HEAD_DIM>(o, pf[kc], smem_desc(v_tile + kc * WGMMA_K * SWIZZLE_BYTES, Cfg::KV_PANEL_BYTES, ATOM_BYTES));
}

// Keys >= lk and (causal) keys past the row get S = -inf. row0: this thread's first row
// (the second is row0 + 8); col0: its first column n0 + 2 * (lane % 4).
__device__ __forceinline__ void apply_mask(float (&s)[64], int row0, int col0, int lk, bool causal) {
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = col0 + 8 * j + e, row = row0 + 8 * i;
        if (col >= lk || (causal && col > row)) s[j * 4 + i * 2 + e] = -INFINITY;
      }
}

// Online softmax over one tile of raw S for this thread's two rows (i = 0: row0, 1: row0 + 8):
// m (log2 units, scaled) and this thread's share of l are updated, rescale[i] = exp2(m_old -
// m_new) is what O must be multiplied by, and S is replaced by P = exp2(S * c - m_new).
// c = scale * log2(e) > 0, so max(S) * c is the max of the scaled row.
__device__ __forceinline__ void online_softmax(float (&s)[64], float (&m)[2], float (&l)[2], float (&rescale)[2],
                                               float c) {
  float tile_max[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};  // [row][e]: two chains
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 2; ++e) tile_max[i][e] = fmaxf(tile_max[i][e], s[j * 4 + i * 2 + e]);
  float neg_base[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float mx = fmaxf(tile_max[i][0], tile_max[i][1]);
    // The 4 lanes of a quad share the row.
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float new_m = fmaxf(m[i], mx * c);
    // A row with no key yet keeps max -inf: subtract 0 instead so exp2 gives 0, not NaN.
    const float base = new_m == -INFINITY ? 0.0f : new_m;
    rescale[i] = exp2_approx(m[i] - base);
    m[i] = new_m;
    neg_base[i] = -base;
  }
  float sum[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float prob = exp2_approx(fmaf(s[j * 4 + i * 2 + e], c, neg_base[i]));
        s[j * 4 + i * 2 + e] = prob;
        sum[i][e] += prob;
      }
#pragma unroll
  for (int i = 0; i < 2; ++i) l[i] = l[i] * rescale[i] + (sum[i][0] + sum[i][1]);
}

// P (f32 in S's accumulator layout) to T in the A-register layout: k16 step kc is made of S
// column tiles 2kc and 2kc + 1, whose accumulators s[8kc .. 8kc + 7] are, pair by pair,
// A's {row, cols 0-7}, {row + 8, cols 0-7}, {row, cols 8-15}, {row + 8, cols 8-15}.
template <class T, int P_STEPS>
__device__ __forceinline__ void round_p(uint32_t (&pf)[P_STEPS][4], const float (&s)[64]) {
#pragma unroll
  for (int kc = 0; kc < P_STEPS; ++kc)
#pragma unroll
    for (int r = 0; r < 4; ++r) pf[kc][r] = Elem<T>::pack(s[8 * kc + 2 * r], s[8 * kc + 2 * r + 1]);
}

template <class T, int HEAD_DIM>
__device__ __forceinline__ void consume(const Sm90Params& p, const Smem<HEAD_DIM>& sm, int m0, int head, int batch,
                                        int n_blocks) {
  using Cfg = Sm90Config<HEAD_DIM>;
  const int t = int(threadIdx.x) % WARPGROUP;
  const int wg = int(threadIdx.x) / WARPGROUP - 1;  // rows [64 wg, 64 wg + 64) of the CTA
  const int warp = t / 32, lane = t % 32;
  const int wg_m0 = m0 + wg * WGMMA_M;
  const int row0 = wg_m0 + warp * 16 + lane / 4;  // this thread's rows: row0, row0 + 8
  const bool signals = t == 0;                     // arrives on the empty barriers
  const uint32_t q_rows = sm.q + uint32_t(wg * WGMMA_M * SWIZZLE_BYTES);  // this warpgroup's Q rows, every panel
  const float c = p.scale_log2;
  const bool causal = p.causal != 0;

  float o[Cfg::O_ACCS];
#pragma unroll
  for (int i = 0; i < Cfg::O_ACCS; ++i) o[i] = 0.0f;
  float s[Cfg::S_ACCS];
#pragma unroll
  for (int i = 0; i < Cfg::S_ACCS; ++i) s[i] = 0.0f;
  uint32_t pf[Cfg::P_STEPS][4];  // P in the A-register layout
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, rescale[2];

  // Ping-pong turns: a warpgroup issues its wgmmas between begin_turn (its own barrier) and
  // end_turn (the other's). Consumer 0 opens with an arrival on its own barrier and closes
  // with a last sync on it, so each barrier sees as many arrivals as its phases need and
  // none is left pending at exit: barrier 0 gets 128 (opening) + n_blocks x 128 (consumer 1's
  // end_turn) + (n_blocks + 1) x 128 (consumer 0's syncs); barrier 1 n_blocks x (128 + 128).
  // A turn only waits for the other warpgroup's previous turn, which waits for nothing of this
  // one's later work: the two alternate and cannot deadlock.
  const auto begin_turn = [&] {
    if constexpr (PINGPONG) named_barrier_sync(SCHEDULER_BARRIER + wg, 2 * WARPGROUP);
  };
  const auto end_turn = [&] {
    if constexpr (PINGPONG) named_barrier_arrive(SCHEDULER_BARRIER + (CONSUMERS - 1 - wg), 2 * WARPGROUP);
  };
  static_assert(CONSUMERS == 2, "the turn-passing above is written for two consumer warpgroups");

  // Masks are needed where the tile runs past lk or, causal, crosses this warpgroup's diagonal.
  const auto needs_mask = [&](int j) {
    const int n0 = j * Cfg::BLK_N;
    return n0 + Cfg::BLK_N > p.lk || (causal && n0 + Cfg::BLK_N - 1 > wg_m0);
  };
  // One key tile j >= 1: S_j = Q K_j^T and O += P_{j-1} V_{j-1}, the softmax of S_j under the
  // second, then P_j rounded into pf once P_{j-1} V_{j-1} is done with it. K_j's full barrier
  // was waited for by the step before. Why it is written this way (each point seen in SASS):
  //   - the wait for K_{j+1} sits between the softmax and wait_group 0: its try_wait loop is
  //     a basic-block boundary that ptxas does not hoist wait_group 0 across (without it,
  //     ptxas moved wait_group 0 above the softmax to round P_j early, which serialised the
  //     softmax behind P_{j-1} V_{j-1});
  //   - O is rescaled for tile j - 1's max while S_j runs, before P_{j-1} V_{j-1} is issued
  //     (FA3's order), so only the rounding of P_j waits for P_{j-1} V_{j-1};
  //   - the mask is a template argument, not a branch inside the step.
  const auto step = [&](int j, auto mask) {
    const int ks = j % Cfg::STAGES, vs = (j - 1) % Cfg::STAGES;
    begin_turn();
    fence_registers(s);
    wgmma_fence();
    issue_qk<T, HEAD_DIM>(s, q_rows, sm.k_stage(ks));  // S_j
    wgmma_commit();
    fence_registers(o);
#pragma unroll
    for (int d = 0; d < Cfg::O_ACCS; ++d) o[d] *= rescale[(d / 2) % 2];
    mbar_wait(sm.v_full(vs), uint32_t((j - 1) / Cfg::STAGES) & 1);
    fence_registers(o);
    wgmma_fence();
    issue_pv<T, HEAD_DIM>(o, pf, sm.v_stage(vs));  // O += P_{j-1} V_{j-1}
    wgmma_commit();
    end_turn();
    wgmma_wait<1>();  // S_j done; P_{j-1} V_{j-1} may still run
    fence_registers(s);
    if (signals) mbar_arrive(sm.k_empty(ks));
    if constexpr (decltype(mask)::value) apply_mask(s, row0, j * Cfg::BLK_N + 2 * (lane % 4), p.lk, causal);
    online_softmax(s, m, l, rescale, c);
    fence_registers(s);
    if (j + 1 < n_blocks) mbar_wait(sm.k_full((j + 1) % Cfg::STAGES), uint32_t((j + 1) / Cfg::STAGES) & 1);
    wgmma_wait<0>();  // P_{j-1} V_{j-1} done: O and pf are free, and V_{j-1}'s stage
    fence_registers(o);
    fence_registers(s);
    if (signals) mbar_arrive(sm.v_empty(vs));
    round_p<T>(pf, s);
  };

  if (n_blocks > 0) {
    if (PINGPONG && wg == 0) named_barrier_arrive(SCHEDULER_BARRIER, 2 * WARPGROUP);  // consumer 0 starts
    mbar_wait(sm.q_full(), 0);
    // Tile 0: S_0 alone (its rescale, exp2(-inf) = 0, multiplies an O of zeros).
    mbar_wait(sm.k_full(0), 0);
    begin_turn();
    fence_registers(s);
    wgmma_fence();
    issue_qk<T, HEAD_DIM>(s, q_rows, sm.k_stage(0));
    wgmma_commit();
    end_turn();
    wgmma_wait<0>();
    fence_registers(s);
    if (signals) mbar_arrive(sm.k_empty(0));
    if (needs_mask(0)) apply_mask(s, row0, 2 * (lane % 4), p.lk, causal);
    online_softmax(s, m, l, rescale, c);
    round_p<T>(pf, s);
    if (n_blocks > 1) mbar_wait(sm.k_full(1 % Cfg::STAGES), uint32_t(1 / Cfg::STAGES) & 1);

    for (int j = 1; j < n_blocks; ++j) {
      if (needs_mask(j)) step(j, std::true_type{});
      else step(j, std::false_type{});
    }

    // O += P_{last} V_{last}, O first rescaled for the last tile's max.
    const int last = n_blocks - 1, vs = last % Cfg::STAGES;
#pragma unroll
    for (int d = 0; d < Cfg::O_ACCS; ++d) o[d] *= rescale[(d / 2) % 2];
    mbar_wait(sm.v_full(vs), uint32_t(last / Cfg::STAGES) & 1);
    fence_registers(o);
    wgmma_fence();
    issue_pv<T, HEAD_DIM>(o, pf, sm.v_stage(vs));
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(o);
    if (signals) mbar_arrive(sm.v_empty(vs));
    if (PINGPONG && wg == 0) named_barrier_sync(SCHEDULER_BARRIER, 2 * WARPGROUP);  // consumer 1's last turn
  }

  // ---- Store: O / l and lse = ln(2) * m + ln(l); a row that saw no key: 0 and -inf ----
  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float sum = l[i];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    inv[i] = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int row = row0 + 8 * i;
    if (p.lse != nullptr && lane % 4 == 0 && row < p.lq)
      p.lse[int64_t(batch) * p.lse_batch + int64_t(head) * p.lse_head + int64_t(row) * p.lse_row] =
          sum > 0.0f ? m[i] * LN2 + logf(sum) : -INFINITY;
  }
  // Stage O in this warpgroup's rows of the Q buffer (its wgmmas that read them are done), in
  // the same swizzled panels: the 8 rows x 4 lanes of one store hit 32 different banks.
  const int local_row0 = wg * WGMMA_M + warp * 16 + lane / 4;  // % 8 == lane / 4
#pragma unroll
  for (int j = 0; j < HEAD_DIM / 8; ++j) {
    const int panel = j / 8, chunk = (j % 8) ^ (lane / 4);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      st_shared_u32(sm.q + uint32_t(panel * Cfg::Q_PANEL_BYTES + (local_row0 + 8 * i) * SWIZZLE_BYTES +
                                    chunk * CHUNK_BYTES + (lane % 4) * 4),
                    Elem<T>::pack(o[j * 4 + i * 2] * inv[i], o[j * 4 + i * 2 + 1] * inv[i]));
  }
  named_barrier_sync(EPILOGUE_BARRIER + wg, WARPGROUP);
  // 16-byte chunks out, 8 consecutive threads per 128-byte panel row.
  T* const out = static_cast<T*>(p.out) + int64_t(batch) * p.o_batch + int64_t(head) * p.o_head;
#pragma unroll
  for (int k = 0; k < WGMMA_M * Cfg::ROW_CHUNKS / WARPGROUP; ++k) {
    const int idx = t + k * WARPGROUP;
    const int r = idx / Cfg::ROW_CHUNKS, chunk = idx % Cfg::ROW_CHUNKS;
    const int row = wg_m0 + r;
    const int local_row = wg * WGMMA_M + r;
    const uint4 v = ld_shared_v4(sm.q + uint32_t((chunk / 8) * Cfg::Q_PANEL_BYTES + local_row * SWIZZLE_BYTES +
                                                 ((chunk % 8) ^ (local_row % 8)) * CHUNK_BYTES));
    if (row < p.lq) *reinterpret_cast<uint4*>(out + int64_t(row) * p.o_row + chunk * CHUNK_ELEMS) = v;
  }
}

#endif  // __CUDA_ARCH__ && __CUDA_ARCH_FEAT_SM90_ALL

// Grid (query blocks, heads, batch), THREADS threads, Sm90Config<HEAD_DIM>::SMEM_BYTES of
// dynamic shared memory. With lk == 0 the tensor maps are unused (and may be empty).
template <class T, int HEAD_DIM>
__global__ void __launch_bounds__(THREADS, 1)
    flash_sm90_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_k,
                      const __grid_constant__ CUtensorMap tmap_v, const Sm90Params p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = Sm90Config<HEAD_DIM>;
  extern __shared__ uint8_t smem[];
  Smem<HEAD_DIM> sm;
  sm.q = (smem_u32(smem) + SMEM_ALIGN - 1) & ~uint32_t(SMEM_ALIGN - 1);
  sm.k = sm.q + Cfg::Q_BYTES;
  sm.v = sm.k + Cfg::STAGES * Cfg::KV_BYTES;
  sm.bars = sm.v + Cfg::STAGES * Cfg::KV_BYTES;
  if (threadIdx.x == 0) {
    mbar_init(sm.q_full(), 1);
    for (int s = 0; s < Cfg::STAGES; ++s) {
      mbar_init(sm.k_full(s), 1);
      mbar_init(sm.v_full(s), 1);
      mbar_init(sm.k_empty(s), CONSUMERS);
      mbar_init(sm.v_empty(s), CONSUMERS);
    }
    // Make the initialised barriers visible to the TMA unit.
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();

  // Causal CTAs near the end of the sequence do the most work: start them first.
  const int m_block = p.causal ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
  const int head = int(blockIdx.y), batch = int(blockIdx.z);
  const int m0 = m_block * Cfg::BLK_M;
  // Keys this CTA needs: [0, n_end). causal: its last row m0 + BLK_M - 1 sees keys <= it.
  const int n_end = p.causal ? min(p.lk, m0 + Cfg::BLK_M) : p.lk;
  const int n_blocks = (n_end + Cfg::BLK_N - 1) / Cfg::BLK_N;

  if (threadIdx.x < WARPGROUP) {
    setmaxnreg_dec<PRODUCER_REGS>();
    if (threadIdx.x == 0 && n_blocks > 0) produce<HEAD_DIM>(tmap_q, tmap_k, tmap_v, p, sm, m0, head, batch, n_blocks);
  } else {
    setmaxnreg_inc<CONSUMER_REGS>();
    consume<T, HEAD_DIM>(p, sm, m0, head, batch, n_blocks);
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
    return unsupported("flash_sm90: the CUDA driver has no cuTensorMapEncodeTiled (TMA needs driver >= 12.0)");
  *out = reinterpret_cast<EncodeTiledFn>(entry.fn);
  return Status::Ok();
}

// A (batch, heads, length, D) operand as a 4-D tensor map (D, length, heads, batch) with
// boxes (64, box_rows, 1, 1) in the 128B swizzle. TMA rules (cuTensorMapEncodeTiled): base
// 16-byte aligned, strides positive multiples of 16 bytes below 2^40. A dimension of extent
// 1 has no stride that matters; heads or batch with stride 0 (broadcast) become extent 1 and
// the kernel reads coordinate 0 there (*head_step / *batch_step = 0).
Status encode_operand(const Operand& o, const char* name, DType dtype, int64_t head_dim, int64_t length,
                      int64_t heads, int64_t batch, uint32_t box_rows, CUtensorMap* map, int* head_step,
                      int* batch_step) {
  const std::string n = std::string("flash_sm90: ") + name;
  if (o.col_stride != 1 && head_dim > 1)
    return unsupported(n + " col_stride " + std::to_string(o.col_stride) + " is not 1");
  if (reinterpret_cast<uintptr_t>(o.data) % 16 != 0) return unsupported(n + " data is not 16-byte aligned (TMA)");
  constexpr int64_t STRIDE_LIMIT = int64_t(1) << 40;
  const auto tma_stride = [](int64_t s) {
    return s > 0 && s * ELEM_BYTES % 16 == 0 && s * ELEM_BYTES < STRIDE_LIMIT;
  };
  int64_t row_bytes = head_dim * ELEM_BYTES;  // 128 or 256: legal
  if (length > 1) {
    if (!tma_stride(o.row_stride))
      return unsupported(n + " row stride " + std::to_string(o.row_stride) +
                         " is not a positive multiple of 8 elements (16 bytes, TMA)");
    row_bytes = o.row_stride * ELEM_BYTES;
  }
  const auto outer = [&](int64_t extent, int64_t stride, const char* what, int64_t fallback_bytes,
                         cuuint64_t* dim, int64_t* bytes, int* step) -> Status {
    if (extent <= 1 || stride == 0) {  // one entry, or broadcast: coordinate 0
      *dim = 1, *bytes = fallback_bytes, *step = 0;
      return Status::Ok();
    }
    if (!tma_stride(stride))
      return unsupported(n + " " + what + " stride " + std::to_string(stride) +
                         " is not a positive multiple of 8 elements (16 bytes, TMA) or 0");
    *dim = cuuint64_t(extent), *bytes = stride * ELEM_BYTES, *step = 1;
    return Status::Ok();
  };
  cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(length), 1, 1};
  int64_t head_bytes = 0, batch_bytes = 0;
  ANVIL_RETURN_IF_ERROR(outer(heads, o.head_stride, "head", row_bytes, &dims[2], &head_bytes, head_step));
  ANVIL_RETURN_IF_ERROR(outer(batch, o.batch_stride, "batch", row_bytes, &dims[3], &batch_bytes, batch_step));

  EncodeTiledFn encode = nullptr;
  ANVIL_RETURN_IF_ERROR(encode_tiled_fn(&encode));
  const cuuint64_t strides[3] = {cuuint64_t(row_bytes), cuuint64_t(head_bytes), cuuint64_t(batch_bytes)};
  const cuuint32_t box[4] = {cuuint32_t(PANEL_COLS), box_rows, 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type =
      dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = encode(map, type, 4, o.data, dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return unsupported(n + ": cuTensorMapEncodeTiled refused the view (CUresult " + std::to_string(int(r)) + ")");
  return Status::Ok();
}

struct Sm90Plan {
  CUtensorMap q{}, k{}, v{};  // left empty when lk == 0 (the kernel then loads nothing)
  Sm90Params params;
};

// The output is written by plain 16-byte stores (not TMA): unit last stride, 16-byte
// aligned rows and base.
Status out_fits(const Operand& o) {
  if (o.col_stride != 1)
    return unsupported("flash_sm90: out col_stride " + std::to_string(o.col_stride) + " is not 1");
  if (o.batch_stride % CHUNK_ELEMS != 0 || o.head_stride % CHUNK_ELEMS != 0 || o.row_stride % CHUNK_ELEMS != 0)
    return unsupported("flash_sm90: out batch/head/row strides (" + std::to_string(o.batch_stride) + ", " +
                       std::to_string(o.head_stride) + ", " + std::to_string(o.row_stride) +
                       ") are not multiples of 8 elements (16 bytes)");
  if (reinterpret_cast<uintptr_t>(o.data) % 16 != 0) return unsupported("flash_sm90: out data is not 16-byte aligned");
  return Status::Ok();
}

// Everything but the tensor maps.
Status check_problem(const Problem& p) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    return unsupported(std::string("flash_sm90: dtype ") + dtype_name(p.dtype) + " is not bf16 or f16");
  if (p.head_dim != p.value_dim)
    return unsupported("flash_sm90: head_dim " + std::to_string(p.head_dim) + " != value_dim " +
                       std::to_string(p.value_dim));
  if (p.head_dim != 64 && p.head_dim != 128)
    return unsupported("flash_sm90: head_dim " + std::to_string(p.head_dim) + " is not 64 or 128");
  if (p.mask.data != nullptr) return unsupported("flash_sm90: a user mask is not supported");
  if (p.batch < 0 || p.heads < 0 || p.kv_heads < 0 || p.lq < 0 || p.lk < 0)
    return invalid_argument("flash_sm90: negative batch, heads, kv_heads, lq or lk");
  if (p.heads > 0 && (p.kv_heads <= 0 || p.heads % p.kv_heads != 0))
    return invalid_argument("flash_sm90: heads " + std::to_string(p.heads) + " is not a multiple of kv_heads " +
                            std::to_string(p.kv_heads));
  if (p.lq > MAX_LENGTH || p.lk > MAX_LENGTH) return unsupported("flash_sm90: lq or lk above 2^30");
  if (p.heads > MAX_GRID_YZ || p.batch > MAX_GRID_YZ)
    return unsupported("flash_sm90: heads or batch above 65535 (grid y/z limit)");
  // The row max is taken on raw S and scaled after (one FFMA per element in the softmax),
  // which needs a positive scale.
  if (!(p.scale > 0.0f) || !std::isfinite(p.scale))
    return unsupported("flash_sm90: scale " + std::to_string(p.scale) + " is not positive and finite");
  ANVIL_RETURN_IF_ERROR(out_fits(p.out));
  if (reinterpret_cast<uintptr_t>(p.lse.data) % alignof(float) != 0)
    return unsupported("flash_sm90: lse data is not 4-byte aligned");

  const cuda::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(cuda::device_props(p.device, &props));
  if (props->cc_major != 9)
    return unsupported("flash_sm90: wgmma/TMA kernel is built for sm_90a; device " + std::to_string(p.device) +
                       " has compute capability " + std::to_string(props->cc_major) + "." +
                       std::to_string(props->cc_minor));
  const int64_t smem =
      p.head_dim == 64 ? Sm90Config<64>::SMEM_BYTES : Sm90Config<128>::SMEM_BYTES;
  if (smem > props->smem_per_block_optin)
    return unsupported("flash_sm90: needs " + std::to_string(smem) + " bytes of shared memory per block, device allows " +
                       std::to_string(props->smem_per_block_optin));
  return Status::Ok();
}

bool empty_output(const Problem& p) { return p.batch == 0 || p.heads == 0 || p.lq == 0; }

Status make_plan(const Problem& p, Sm90Plan* plan) {
  Sm90Params& k = plan->params;
  k.out = p.out.data;
  k.lse = static_cast<float*>(p.lse.data);
  k.o_batch = p.out.batch_stride, k.o_head = p.out.head_stride, k.o_row = p.out.row_stride;
  k.lse_batch = p.lse.batch_stride, k.lse_head = p.lse.head_stride, k.lse_row = p.lse.row_stride;
  k.lq = int(p.lq), k.lk = int(p.lk);
  k.heads_per_kv = int(p.heads / p.kv_heads);
  k.scale_log2 = p.scale * LOG2E;
  k.causal = p.causal ? 1 : 0;
  if (p.lk == 0) return Status::Ok();  // nothing is loaded: out = 0, lse = -inf
  constexpr uint32_t BLK_M = Sm90Config<64>::BLK_M, BLK_N = Sm90Config<64>::BLK_N;
  static_assert(Sm90Config<128>::BLK_M == BLK_M && Sm90Config<128>::BLK_N == BLK_N, "one box shape per operand");
  ANVIL_RETURN_IF_ERROR(encode_operand(p.q, "q", p.dtype, p.head_dim, p.lq, p.heads, p.batch, BLK_M, &plan->q,
                                       &k.q_head_step, &k.q_batch_step));
  ANVIL_RETURN_IF_ERROR(encode_operand(p.k, "k", p.dtype, p.head_dim, p.lk, p.kv_heads, p.batch, BLK_N, &plan->k,
                                       &k.k_head_step, &k.k_batch_step));
  ANVIL_RETURN_IF_ERROR(encode_operand(p.v, "v", p.dtype, p.value_dim, p.lk, p.kv_heads, p.batch, BLK_N, &plan->v,
                                       &k.v_head_step, &k.v_batch_step));
  return Status::Ok();
}

// ------------------------------------------------------------------ host: launch
// Once per device and instantiation: the dynamic shared-memory opt-in.
template <class T, int HEAD_DIM> Status kernel_setup(int device) {
  static std::once_flag once[MAX_DEVICES];
  static cudaError_t error[MAX_DEVICES];
  if (device < 0 || device >= MAX_DEVICES)
    return unsupported("flash_sm90 supports device indices below " + std::to_string(MAX_DEVICES));
  std::call_once(once[device], [&] {
    error[device] = cudaFuncSetAttribute(flash_sm90_kernel<T, HEAD_DIM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         Sm90Config<HEAD_DIM>::SMEM_BYTES);
  });
  return cuda::check(error[device], "cudaFuncSetAttribute(flash_sm90, MaxDynamicSharedMemorySize)");
}

template <class T, int HEAD_DIM> Status launch(const Sm90Plan& plan, const Problem& p) {
  using Cfg = Sm90Config<HEAD_DIM>;
  ANVIL_RETURN_IF_ERROR((kernel_setup<T, HEAD_DIM>(p.device)));
  const dim3 grid(unsigned((p.lq + Cfg::BLK_M - 1) / Cfg::BLK_M), unsigned(p.heads), unsigned(p.batch));
  flash_sm90_kernel<T, HEAD_DIM><<<grid, THREADS, Cfg::SMEM_BYTES, p.stream>>>(plan.q, plan.k, plan.v, plan.params);
  return cuda::check_launch("flash_sm90 launch");
}

}  // namespace

Status flash_sm90_accepts(const Problem& p) {
  ANVIL_RETURN_IF_ERROR(check_problem(p));
  if (empty_output(p)) return Status::Ok();
  Sm90Plan plan;
  return make_plan(p, &plan);
}

Status run_flash_sm90(const Problem& p) {
  ANVIL_RETURN_IF_ERROR(check_problem(p));
  if (empty_output(p)) return Status::Ok();
  Sm90Plan plan;
  ANVIL_RETURN_IF_ERROR(make_plan(p, &plan));
  cuda::DeviceGuard guard(p.device);
  ANVIL_RETURN_IF_ERROR(guard.status());
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64) return bf16 ? launch<__nv_bfloat16, 64>(plan, p) : launch<__half, 64>(plan, p);
  return bf16 ? launch<__nv_bfloat16, 128>(plan, p) : launch<__half, 128>(plan, p);
}

}  // namespace anvil::cuda_attention
