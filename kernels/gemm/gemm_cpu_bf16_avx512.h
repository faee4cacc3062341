// bf16 <-> f32 on zmm registers for the AVX-512 GEMM kernels' epilogues (include only from
// files compiled with the AVX-512 flags: gemm_cpu_avx512.cpp, gemm_cpu_amx.cpp).
#pragma once

// (for the whole including file: the warning is reported where these inline functions
// are inlined)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's AVX-512 integer intrinsics start from a self-initialised "undefined" vector,
// which -Wmaybe-uninitialized reports inside immintrin.h (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include "anvil/dtype.h"

namespace anvil::cpu_gemm {

// to_bfloat16 of 16 floats, in the low 16 bits of each lane: round to nearest even, NaN
// kept quiet, subnormals kept (vcvtneps2bf16 would flush them to zero).
inline __m512i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}

// The masked lanes of 16 bf16 at p, widened to f32 (exactly); the others zero.
inline __m512 load_bf16(__mmask16 mask, const bfloat16* p) {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// The masked lanes of v rounded once (bf16_bits) into p.
inline void store_bf16(__mmask16 mask, bfloat16* p, __m512 v) {
  _mm256_mask_storeu_epi16(p, mask, _mm512_cvtepi32_epi16(bf16_bits(v)));
}

}  // namespace anvil::cpu_gemm
