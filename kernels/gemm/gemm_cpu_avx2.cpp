// AVX2 GEMM micro-kernel (compiled with -mavx2 -mfma -mf16c), for CPUs without AVX-512.
//
// Tile (MR, NR) = (6, 16): C rows are 2 ymm of 8 floats, so 12 ymm accumulators, 2 ymm of
// B and 1 broadcast of A per k step (15 of 16 registers).
#include <immintrin.h>

#include "kernels/gemm/gemm_cpu.h"

namespace anvil::cpu_gemm {
namespace {

constexpr int kVector = 8;
constexpr int kMR = 6;
constexpr int kNV = 2;
constexpr int kNR = kVector * kNV;
static_assert(kMR * kNV + kNV + 1 <= 16, "accumulators + B + A broadcast must fit the 16 ymm registers");

inline __m256i column_mask(int n, int v) {
  const int rest = n - kVector * v;
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(rest), lanes);  // lane < rest
}

template <bool kMasked>
inline __m256 load(const float* p, const __m256i& mask) {
  if constexpr (kMasked) return _mm256_maskload_ps(p, mask);
  else return _mm256_loadu_ps(p);
}

// One k step: acc[i] += a(i) * B's row.
template <bool kMasked, class ElementOfA>
inline void fma_step(const float* b, const __m256i* mask, const ElementOfA& a, __m256 (&acc)[kMR][kNV]) {
  __m256 bv[kNV];
  for (int v = 0; v < kNV; ++v) bv[v] = load<kMasked>(b + kVector * v, mask[v]);
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    const __m256 ai = _mm256_set1_ps(a(i));
    for (int v = 0; v < kNV; ++v) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
  }
}

template <bool kMasked>
void accumulate(const Tile& t, const __m256i* mask, __m256 (&acc)[kMR][kNV]) {
  const float* a = static_cast<const float*>(t.a);
  const float* b = static_cast<const float*>(t.b);
  for (int64_t k = 0; k < t.kc; ++k, a += kMR, b += t.b_stride)
    fma_step<kMasked>(b, mask, [a](int i) { return a[i]; }, acc);
}

// A read in place through row pointers (implicit GEMM): per run, MR pointers (rows past
// t.m repeat a live row), then a_run k steps on a packed B.
void accumulate_rows(const Tile& t, const __m256i* mask, __m256 (&acc)[kMR][kNV]) {
  const float* b = static_cast<const float*>(t.b);
  for (const float* const* run = t.a_rows; run != t.a_rows + t.kc / t.a_run * kMR; run += kMR) {
    const float* rows[kMR];
    for (int i = 0; i < kMR; ++i) rows[i] = run[i];
    for (int64_t k = 0; k < t.a_run; ++k, b += kNR)
      fma_step<false>(b, mask, [&rows, k](int i) { return rows[i][k]; }, acc);
  }
}

void tile(const Tile& t) {
  __m256 acc[kMR][kNV];
  for (auto& row : acc)
    for (auto& x : row) x = _mm256_setzero_ps();
  __m256i mask[kNV];
  for (int v = 0; v < kNV; ++v) mask[v] = column_mask(t.n, v);
  if (t.a_rows) accumulate_rows(t, mask, acc);
  else if (t.n < kNR && !t.b_packed) accumulate<true>(t, mask, acc);
  else accumulate<false>(t, mask, acc);
  const __m256 alpha = _mm256_set1_ps(t.alpha), beta = _mm256_set1_ps(t.beta);
  __m256 bias[kNV];
  for (int v = 0; v < kNV; ++v) bias[v] = t.bias ? _mm256_maskload_ps(t.bias + kVector * v, mask[v]) : _mm256_setzero_ps();
  for (int i = 0; i < t.m; ++i) {
    float* c = t.c + i * t.ldc;
    for (int v = 0; v < kNV; ++v) {
      __m256 r = _mm256_fmadd_ps(alpha, acc[i][v], bias[v]);
      if (t.beta != 0.0f) r = _mm256_fmadd_ps(beta, _mm256_maskload_ps(c + kVector * v, mask[v]), r);
      _mm256_maskstore_ps(c + kVector * v, mask[v], r);
    }
  }
}

constexpr MicroKernel kF32 = [] {
  MicroKernel k{"avx2", kMR, kNR, false, {1, 1}, {1, 1}, &tile};
  k.reads_rows = true;
  return k;
}();

}  // namespace

const MicroKernel* micro_kernel_f32_avx2() { return &kF32; }

}  // namespace anvil::cpu_gemm
