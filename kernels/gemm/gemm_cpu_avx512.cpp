// AVX-512 GEMM micro-kernels (compiled with -mavx512f/bw/vl/dq -mavx512bf16 -mfma).
//
// Tile (MR, NR) = (12, 32): C rows are 2 zmm of 16 floats, so 24 zmm accumulators, 2 zmm
// of B and 1 broadcast of A per k step (27 of 32 registers). Per k: 2 B loads, 12 A
// broadcasts, 24 FMAs. bf16: the same tile over k pairs; one vdpbf16ps does two k steps.
#include <immintrin.h>

#include <array>
#include <utility>

#include "kernels/gemm/gemm_cpu.h"

namespace anvil::cpu_gemm {
namespace {

constexpr int kVector = 16;                 // floats per zmm
constexpr int kMR = 12;                     // tile rows: broadcasts of A
constexpr int kNV = 2;                      // zmm per tile row
constexpr int kNR = kVector * kNV;          // tile columns
constexpr int kStreamPrefetchRows = 24;  // ~ DRAM latency / time per k step of a full tile
static_assert(kMR * kNV + kNV + 1 <= 32, "accumulators + B + A broadcast must fit the 32 zmm registers");

inline __mmask16 column_mask(int n, int v) {
  const int rest = n - kVector * v;
  return rest >= kVector ? __mmask16(0xFFFF) : rest <= 0 ? __mmask16(0) : __mmask16((1u << rest) - 1);
}

// Loads one k step of B: full vectors when the row is packed (zero-padded to NR) or
// complete, masked when it is an unpacked row with fewer than NR valid columns.
template <bool kMasked>
inline __m512 load_b(const float* b, int v, const __mmask16* mask) {
  if constexpr (kMasked) return _mm512_maskz_loadu_ps(mask[v], b + kVector * v);
  else return _mm512_loadu_ps(b + kVector * v);
}

// One k step: acc[i] += a(i) * B's row, for the live rows.
template <int kRows, bool kMasked, class ElementOfA>
inline void fma_step(const float* b, const __mmask16* mask, const ElementOfA& a, __m512 (&acc)[kRows][kNV]) {
  __m512 bv[kNV];
#pragma GCC unroll 2
  for (int v = 0; v < kNV; ++v) bv[v] = load_b<kMasked>(b, v, mask);
#pragma GCC unroll 12
  for (int i = 0; i < kRows; ++i) {
    const __m512 ai = _mm512_set1_ps(a(i));
#pragma GCC unroll 2
    for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
  }
}

template <int kRows, bool kMasked>
inline void accumulate_f32(const Tile& t, const __mmask16* mask, __m512 (&acc)[kRows][kNV]) {
  const float* a = static_cast<const float*>(t.a);
  const float* b = static_cast<const float*>(t.b);
  for (int64_t k = 0; k < t.kc; ++k) {
    if constexpr (kMasked) {  // streamed rows are ldb apart: too far for the hardware prefetcher
      const char* ahead = reinterpret_cast<const char*>(b + kStreamPrefetchRows * t.b_stride);
      _mm_prefetch(ahead, _MM_HINT_T0);
      _mm_prefetch(ahead + 64, _MM_HINT_T0);
    }
    fma_step<kRows, kMasked>(b, mask, [a](int i) { return a[i]; }, acc);
    a += kMR;
    b += t.b_stride;
  }
}

// A read in place through row pointers (implicit GEMM): per run, kRows pointers, then a_run
// k steps on a packed B.
template <int kRows>
inline void accumulate_rows(const Tile& t, const __mmask16* mask, __m512 (&acc)[kRows][kNV]) {
  const float* b = static_cast<const float*>(t.b);
  for (const float* const* run = t.a_rows; run != t.a_rows + t.kc / t.a_run * kMR; run += kMR) {
    const float* rows[kRows];
    for (int i = 0; i < kRows; ++i) rows[i] = run[i];
    for (int64_t k = 0; k < t.a_run; ++k, b += kNR)
      fma_step<kRows, false>(b, mask, [&rows, k](int i) { return rows[i][k]; }, acc);
  }
}

template <int kRows>
inline void accumulate_bf16_pairs(const Tile& t, __m512 (&acc)[kRows][kNV]) {
  const int32_t* a = static_cast<const int32_t*>(t.a);  // (MR) pairs per k pair
  const int16_t* b = static_cast<const int16_t*>(t.b);  // (NR, 2) per k pair
  const int64_t pairs = (t.kc + 1) / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh bv[kNV];
#pragma GCC unroll 2
    for (int v = 0; v < kNV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 2 * kVector * v);
#pragma GCC unroll 12
    for (int i = 0; i < kRows; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(a[i]);
#pragma GCC unroll 2
      for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
    }
    a += kMR;
    b += 2 * kNR;
  }
}

// C = alpha * acc (+ beta * C) (+ bias), columns < n only (the tile has exactly kRows rows).
template <int kRows>
inline void store(const Tile& t, const __mmask16* mask, __m512 (&acc)[kRows][kNV]) {
  const __m512 alpha = _mm512_set1_ps(t.alpha), beta = _mm512_set1_ps(t.beta);
  __m512 bias[kNV];
  for (int v = 0; v < kNV; ++v) bias[v] = t.bias ? _mm512_maskz_loadu_ps(mask[v], t.bias + kVector * v) : _mm512_setzero_ps();
#pragma GCC unroll 12
  for (int i = 0; i < kRows; ++i) {
    float* c = t.c + i * t.ldc;
#pragma GCC unroll 2
    for (int v = 0; v < kNV; ++v) {
      __m512 r = _mm512_fmadd_ps(alpha, acc[i][v], bias[v]);
      if (t.beta != 0.0f) r = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask[v], c + kVector * v), r);
      _mm512_mask_storeu_ps(c + kVector * v, mask[v], r);
    }
  }
}

template <bool kPairs, int kRows>
void tile_rows(const Tile& t) {
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
constexpr auto row_table(std::integer_sequence<int, kRows...>) {
  return std::array<void (*)(const Tile&), sizeof...(kRows)>{&tile_rows<kPairs, kRows + 1>...};
}

template <bool kPairs>
void tile(const Tile& t) {
  static constexpr auto table = row_table<kPairs>(std::make_integer_sequence<int, kMR>());
  table[size_t(t.m - 1)](t);
}

constexpr MicroKernel kF32 = [] {
  MicroKernel k{"avx512", kMR, kNR, false, {1, 1}, {1, 1}, &tile<false>};
  k.reads_rows = true;
  return k;
}();
constexpr MicroKernel kBf16{"avx512bf16", kMR, kNR, true, {2, 2}, {2, 2}, &tile<true>};

}  // namespace

const MicroKernel* micro_kernel_f32_avx512() { return &kF32; }
const MicroKernel* micro_kernel_bf16_avx512() { return &kBf16; }

}  // namespace anvil::cpu_gemm
