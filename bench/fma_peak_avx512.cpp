// The FMA-loop peak of this machine: independent AVX-512 FMA chains, no memory traffic.
// PERFORMANCE.md measures kernels against it ("near the limit" = >= 90% of it).
#include <immintrin.h>

#include <cstdint>

namespace anvil::bench {

// Returns the FLOPs done: iterations x 16 chains x 16 lanes x 2.
double fma_loop_avx512(int64_t iterations, float* sink) {
  constexpr int kChains = 16;  // > FMA latency x FMA ports, so the pipes never wait
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iterations; ++it)
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  __m512 total = acc[0];
  for (int i = 1; i < kChains; ++i) total = _mm512_add_ps(total, acc[i]);
  *sink = _mm512_reduce_add_ps(total);
  return double(iterations) * kChains * 16 * 2;
}

}  // namespace anvil::bench
