// A transposing copy for the cpu kernels' packing: sliver layouts put one operand's rows
// across the vector lanes, so packing them is a transpose.
#pragma once

#include <xmmintrin.h>  // SSE, part of the x86-64 baseline

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace anvil::cpu_elements {

// dst[i * ld + l] = row(l)[i] for l < lanes, i < inner: (lanes x inner), row l starting at
// row(l), into (inner x lanes) with rows ld apart, in one block of at most 16 x 16 (a
// 64-byte line of 16 source rows into one of 16 destination rows) by 4 x 4 SSE transposes:
// each source line then serves four output rows from L1, where an element-by-element copy
// costs a load and a scattered store per element. By blocks rather than by rows of 4 across
// all the lanes: a conv2d weight's rows are a filter apart (res5 3x3: 18 KiB), and 64 of
// them at once miss the TLB and the prefetchers (1.25x faster on the res5 3x3 weight).
// Elements move as 32-bit words, unchanged (SSE moves and shuffles, memcpy): the GEMM's
// bf16 pair packing moves pairs of bf16 through it.
template <class RowAt>
inline void transpose_block_by_rows(const RowAt& row, int64_t lanes, int64_t inner, int64_t ld, float* dst) {
  int64_t l = 0;
  for (; l + 4 <= lanes; l += 4) {  // four source rows, each read along its line
    const float *s0 = row(l), *s1 = row(l + 1), *s2 = row(l + 2), *s3 = row(l + 3);
    int64_t i = 0;
    for (; i + 4 <= inner; i += 4) {
      __m128 r0 = _mm_loadu_ps(s0 + i), r1 = _mm_loadu_ps(s1 + i), r2 = _mm_loadu_ps(s2 + i), r3 = _mm_loadu_ps(s3 + i);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      _mm_storeu_ps(dst + i * ld + l, r0);
      _mm_storeu_ps(dst + (i + 1) * ld + l, r1);
      _mm_storeu_ps(dst + (i + 2) * ld + l, r2);
      _mm_storeu_ps(dst + (i + 3) * ld + l, r3);
    }
    for (; i < inner; ++i) {
      std::memcpy(dst + i * ld + l, s0 + i, sizeof(float));
      std::memcpy(dst + i * ld + l + 1, s1 + i, sizeof(float));
      std::memcpy(dst + i * ld + l + 2, s2 + i, sizeof(float));
      std::memcpy(dst + i * ld + l + 3, s3 + i, sizeof(float));
    }
  }
  for (; l < lanes; ++l) {
    const float* s0 = row(l);
    for (int64_t i = 0; i < inner; ++i) std::memcpy(dst + i * ld + l, s0 + i, sizeof(float));
  }
}

// The same for rows col_stride apart from src, of any size, block by block.
inline void transpose_f32(const float* src, int64_t col_stride, int64_t lanes, int64_t inner, int64_t ld, float* dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t l0 = 0; l0 < lanes; l0 += kBlock)
    for (int64_t i0 = 0; i0 < inner; i0 += kBlock) {
      const float* block = src + l0 * col_stride + i0;
      transpose_block_by_rows([&](int64_t l) { return block + l * col_stride; }, std::min(kBlock, lanes - l0),
                              std::min(kBlock, inner - i0), ld, dst + i0 * ld + l0);
    }
}

// The same for rows found through pointers: row l at rows[l].
inline void transpose_rows_f32(const float* const* rows, int64_t lanes, int64_t inner, int64_t ld, float* dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t l0 = 0; l0 < lanes; l0 += kBlock)
    for (int64_t i0 = 0; i0 < inner; i0 += kBlock)
      transpose_block_by_rows([&](int64_t l) { return rows[l0 + l] + i0; }, std::min(kBlock, lanes - l0),
                              std::min(kBlock, inner - i0), ld, dst + i0 * ld + l0);
}

}  // namespace anvil::cpu_elements
