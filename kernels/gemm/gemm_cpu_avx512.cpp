// AVX-512 GEMM micro-kernels (compiled with -mavx512f/bw/vl/dq -mavx512bf16 -mfma).
//
// Two f32 register tiles, each 24 zmm accumulators:
//   (MR, NR) = (6, 64): a C row is 4 zmm. Per k step 4 B loads, 6 A broadcasts, 24 FMAs:
//     10 loads per 24 FMAs (28 of 32 registers with the B row and one broadcast). The
//     default; on Sapphire Rapids 1.03-1.10x the speed of (12, 32) on f32 squares 256-2048.
//   (12, 32): a C row is 2 zmm. Per k step 2 B loads, 12 broadcasts, 24 FMAs (27 registers).
//     For products whose columns it pads less (for_columns: n <= 32, 96, 160, ...), and
//     for attention, whose blocks are tuned on it.
// bf16: the (12, 32) tile over k pairs; one vdpbf16ps does two k steps. It rounds a bf16
// output in its epilogue (rounds_bf16), sparing the driver's f32 workspace where K fits one
// k block.
// A packed B sliver (KC, NR) outgrows L1 at KC 512 and streams from L2 while the tiles of
// one column of C reuse it; its rows are prefetched 1 KiB ahead.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "kernels/gemm/gemm_cpu.h"
#include "kernels/gemm/gemm_cpu_bf16_avx512.h"

namespace anvil::cpu_gemm {
namespace {

constexpr int kVector = 16;                 // floats per zmm
// Streamed (unpacked) B: a tile reads NR columns of each of its kc rows, ldb apart, and the
// tiles of the next slivers read the next NR columns of the same rows. Each row's lines two
// slivers ahead are prefetched into L2: every row is then a sequential stream with two
// tiles' time for its lines to arrive. Measured on Zen 4 (2 threads, one process) against
// the earlier prefetch of the same columns 24 rows ahead into L1: 1x4096x4096 1.7-2.4x
// (25 GB/s, the machine's read bandwidth), 4x 1.5x, 8x 2.5x, 16x 1.6x, 16x11008x4096 1.4x.
// One sliver ahead, or into L1, gained half as much; four ahead less.
constexpr int kStreamPrefetchSlivers = 2;
constexpr int kPackedPrefetchBytes = 1024;  // ~ L2 latency / time per k step, in packed B

inline __mmask16 column_mask(int n, int v) {
  const int rest = n - kVector * v;
  return rest >= kVector ? __mmask16(0xFFFF) : rest <= 0 ? __mmask16(0) : __mmask16((1u << rest) - 1);
}

// The micro-kernels of one tile shape: kMR rows of A broadcast, kNV zmm of B per k step.
template <int kMR, int kNV>
struct TileKernels {
  static constexpr int kNR = kVector * kNV;  // tile columns
  static constexpr int kPackedPrefetchSteps = std::max(1, kPackedPrefetchBytes / (kNR * int(sizeof(float))));
  static_assert(kMR * kNV + kNV + 1 <= 32, "accumulators + B + A broadcast must fit the 32 zmm registers");

  // Loads one k step of B: full vectors when the row is packed (zero-padded to NR) or
  // complete, masked when it is an unpacked row with fewer than NR valid columns.
  template <bool kMasked>
  static __m512 load_b(const float* b, int v, const __mmask16* mask) {
    if constexpr (kMasked) return _mm512_maskz_loadu_ps(mask[v], b + kVector * v);
    else return _mm512_loadu_ps(b + kVector * v);
  }

  // The kNV cache lines at b + rows * stride floats into the cache level kHint. The address
  // is computed in unsigned integers: near B's end it lies past the operand (a prefetch
  // never faults), and a row stride the caller never steps (K = 1: any stride is valid)
  // may be so large that the product overflows; neither may be pointer arithmetic.
  template <decltype(_MM_HINT_T0) kHint = _MM_HINT_T0>  // (an enum in GCC, an int in clang)
  static void prefetch_b(const float* b, int64_t rows, int64_t stride) {
    const auto ahead = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(b) +
                                                     uint64_t(rows) * uint64_t(stride) * sizeof(float));
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) _mm_prefetch(ahead + 64 * v, kHint);
  }

  // One k step: acc[i] += a(i) * B's row, for the live rows.
  template <int kRows, bool kMasked, class ElementOfA>
  static void fma_step(const float* b, const __mmask16* mask, const ElementOfA& a, __m512 (&acc)[kRows][kNV]) {
    __m512 bv[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) bv[v] = load_b<kMasked>(b, v, mask);
#pragma GCC unroll 12
    for (int i = 0; i < kRows; ++i) {
      const __m512 ai = _mm512_set1_ps(a(i));
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
  }

  template <int kRows, bool kMasked>
  static void accumulate_f32(const Tile& t, const __mmask16* mask, __m512 (&acc)[kRows][kNV]) {
    const float* a = static_cast<const float*>(t.a);
    for (int64_t k = 0; k < t.kc; ++k, a += kMR) {
      // Row k only: a pointer stepped past the last row could overflow (K = 1, any stride).
      const float* b = static_cast<const float*>(t.b) + k * t.b_stride;
      // (streamed: this row's columns kStreamPrefetchSlivers slivers to the right)
      if constexpr (kMasked) prefetch_b<_MM_HINT_T1>(b, kStreamPrefetchSlivers, kNR);
      else prefetch_b(b, kPackedPrefetchSteps, kNR);
      fma_step<kRows, kMasked>(b, mask, [a](int i) { return a[i]; }, acc);
    }
  }

  // A read in place through row pointers (implicit GEMM): per run, kRows pointers, then
  // a_run k steps on a packed B.
  template <int kRows>
  static void accumulate_rows(const Tile& t, const __mmask16* mask, __m512 (&acc)[kRows][kNV]) {
    const float* b = static_cast<const float*>(t.b);
    for (const float* const* run = t.a_rows; run != t.a_rows + t.kc / t.a_run * kMR; run += kMR) {
      const float* rows[kRows];
      for (int i = 0; i < kRows; ++i) rows[i] = run[i];
      for (int64_t k = 0; k < t.a_run; ++k, b += kNR) {
        prefetch_b(b, kPackedPrefetchSteps, kNR);
        fma_step<kRows, false>(b, mask, [&rows, k](int i) { return rows[i][k]; }, acc);
      }
    }
  }

  template <int kRows>
  static void accumulate_bf16_pairs(const Tile& t, __m512 (&acc)[kRows][kNV]) {
    const int32_t* a = static_cast<const int32_t*>(t.a);  // (MR) pairs per k pair
    const int16_t* b = static_cast<const int16_t*>(t.b);  // (NR, 2) per k pair
    const int64_t pairs = (t.kc + 1) / 2;
    for (int64_t p = 0; p < pairs; ++p) {
      __m512bh bv[kNV];
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 2 * kVector * v);
#pragma GCC unroll 12
      for (int i = 0; i < kRows; ++i) {
        const __m512bh ai = (__m512bh)_mm512_set1_epi32(a[i]);
#pragma GCC unroll 4
        for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
      }
      a += kMR;
      b += 2 * kNR;
    }
  }

  // C = alpha * acc (+ beta * C) (+ bias), columns < n only (the tile has exactly kRows rows).
  // Whole aligned tiles of a C marked stream_c go straight to memory (non-temporal stores):
  // a 1x1 conv over 64 channels writes 25 MiB of output at 8 images, and its lines' reads
  // for ownership cost a sixth of the call.
  // With t.out (bf16 kernels: MicroKernel::rounds_bf16), the sum (+ out_beta * out) is
  // rounded once into the bf16 tile out instead, and C is only read (when beta != 0).
  template <int kRows>
  static void store(const Tile& t, const __mmask16* mask, __m512 (&acc)[kRows][kNV]) {
    const __m512 alpha = _mm512_set1_ps(t.alpha), beta = _mm512_set1_ps(t.beta), out_beta = _mm512_set1_ps(t.out_beta);
    __m512 bias[kNV];
    // Without a bias, add -0: the identity of addition, so alpha * acc == -0 stays -0.
    for (int v = 0; v < kNV; ++v)
      bias[v] = t.bias ? _mm512_maskz_loadu_ps(mask[v], t.bias + kVector * v) : _mm512_set1_ps(-0.0f);
    const bool stream = t.stream_c && !t.out && kRows == kMR && t.n == kNR &&
                        ((reinterpret_cast<uintptr_t>(t.c) | uint64_t(t.ldc) * sizeof(float)) % 64) == 0;
#pragma GCC unroll 12
    for (int i = 0; i < kRows; ++i) {
      // (C may be null when the result goes to out and beta is 0: no pointer into it then)
      const auto c = [&t, i](int v) { return t.c + i * t.ldc + kVector * v; };
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) {
        __m512 r = _mm512_fmadd_ps(alpha, acc[i][v], bias[v]);
        if (t.beta != 0.0f) r = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask[v], c(v)), r);
        if (t.out) {
          bfloat16* out = t.out + i * t.ld_out + kVector * v;
          if (t.out_beta != 0.0f) r = _mm512_fmadd_ps(out_beta, load_bf16(mask[v], out), r);
          store_bf16(mask[v], out, r);
        } else if (stream) {
          _mm512_stream_ps(c(v), r);
        } else {
          _mm512_mask_storeu_ps(c(v), mask[v], r);
        }
      }
    }
  }

  template <bool kPairs, int kRows>
  static void tile_rows(const Tile& t) {
    __m512 acc[kRows][kNV];
    for (auto& row : acc)
      for (auto& x : row) x = _mm512_setzero_ps();
    __mmask16 mask[kNV];
    for (int v = 0; v < kNV; ++v) mask[v] = column_mask(t.n, v);
    if constexpr (kPairs) {
      accumulate_bf16_pairs<kRows>(t, acc);
    } else if (t.a_rows) {
      accumulate_rows<kRows>(t, mask, acc);
    } else if (!t.b_packed) {
      accumulate_f32<kRows, true>(t, mask, acc);  // streamed B: never read past column n, prefetch ahead
    } else {
      accumulate_f32<kRows, false>(t, mask, acc);
    }
    store<kRows>(t, mask, acc);
  }

  // Dispatch on the live rows (1..MR), so that edge tiles and small-M calls (LLM decode)
  // issue only the FMAs of their rows.
  template <bool kPairs, int... kRows>
  static constexpr auto row_table(std::integer_sequence<int, kRows...>) {
    return std::array<void (*)(const Tile&), sizeof...(kRows)>{&tile_rows<kPairs, kRows + 1>...};
  }

  template <bool kPairs>
  static void tile(const Tile& t) {
    static constexpr auto table = row_table<kPairs>(std::make_integer_sequence<int, kMR>());
    table[size_t(t.m - 1)](t);
  }

  static constexpr MicroKernel f32(const MicroKernel* narrow) {
    MicroKernel k{"avx512", kMR, kNR, false, {1, 1}, {1, 1}, &tile<false>};
    k.reads_rows = true;
    k.narrow = narrow;
    return k;
  }
};

using WideTile = TileKernels<6, 4>;
using NarrowTile = TileKernels<12, 2>;

constexpr MicroKernel kF32Narrow = NarrowTile::f32(nullptr);
constexpr MicroKernel kF32 = WideTile::f32(&kF32Narrow);
constexpr MicroKernel kBf16{"avx512bf16", 12, NarrowTile::kNR, true, {2, 2}, {2, 2}, &NarrowTile::tile<true>,
                            /*rounds_bf16=*/true};

}  // namespace

const MicroKernel* micro_kernel_f32_avx512() { return &kF32; }
const MicroKernel* micro_kernel_bf16_avx512() { return &kBf16; }

}  // namespace anvil::cpu_gemm
