// A transposing copy for the cpu kernels' packing: sliver layouts put one operand's rows
// across the vector lanes, so packing them is a transpose.
#pragma once

#include <xmmintrin.h>  // SSE, part of the x86-64 baseline

#include <cstdint>

namespace anvil::cpu_elements {

// dst[i * ld + l] = src[l * col_stride + i] for l < lanes, i < inner: (lanes x inner) with
// rows col_stride apart into (inner x lanes) with rows ld apart. By 4 x 4 SSE transposes:
// each source line then serves four output rows from L1, where an element-by-element copy
// costs a load and a scattered store per element.
inline void transpose_f32(const float* src, int64_t col_stride, int64_t lanes, int64_t inner, int64_t ld, float* dst) {
  int64_t i = 0;
  for (; i + 4 <= inner; i += 4) {
    int64_t l = 0;
    for (; l + 4 <= lanes; l += 4) {
      __m128 r0 = _mm_loadu_ps(src + l * col_stride + i), r1 = _mm_loadu_ps(src + (l + 1) * col_stride + i);
      __m128 r2 = _mm_loadu_ps(src + (l + 2) * col_stride + i), r3 = _mm_loadu_ps(src + (l + 3) * col_stride + i);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      _mm_storeu_ps(dst + i * ld + l, r0);
      _mm_storeu_ps(dst + (i + 1) * ld + l, r1);
      _mm_storeu_ps(dst + (i + 2) * ld + l, r2);
      _mm_storeu_ps(dst + (i + 3) * ld + l, r3);
    }
    for (; l < lanes; ++l)
      for (int64_t ii = i; ii < i + 4; ++ii) dst[ii * ld + l] = src[l * col_stride + ii];
  }
  for (; i < inner; ++i)
    for (int64_t l = 0; l < lanes; ++l) dst[i * ld + l] = src[l * col_stride + i];
}

}  // namespace anvil::cpu_elements
