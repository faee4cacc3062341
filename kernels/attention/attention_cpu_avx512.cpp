// AVX-512 pieces of the cpu attention (compiled with the AVX-512 flags): the online-softmax
// update of a transposed score block, with a vectorised exp, and the element-wise steps of
// the backward.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace anvil::cpu_attention {
namespace {

constexpr int kVector = 16;

// exp(x) = 2^floor(t) * 2^f with t = x log2 e and f = t - floor(t) in [0, 1) (one vreduceps);
// 2^f by a degree-6 polynomial fitted for relative error over [0, 1) (at most 6.2e-8, about
// one ulp, with the f32 rounding of its Horner steps); vscalefps multiplies by 2^floor(t)
// itself, so n is never formed. Results below 2^-126 (x < -87.3) are 0, exp(-inf) included:
// t is raised to -126 and those lanes are cleared, because a vscalefps whose result is
// denormal takes a microcode assist (hundreds of cycles): the masked half of a causal
// block's scores made the softmax a third of a 128-token call. Overflow gives +inf. NaN
// passes through (vmaxps returns its second operand when either is NaN, and a NaN compares
// false). 11 vector operations where rounding t to n and a degree-7 polynomial on
// [-1/2, 1/2] took 14: the softmax's share of a forward (s512 d64, 2 threads) went from
// 14.4% to 11.4%, and to 10.5% with the four max chains of softmax_columns_avx512.
inline __m512 exp512(__m512 x) {
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __mmask16 tiny = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-126.0f), _CMP_LT_OQ);
  const __m512 tc = _mm512_max_ps(_mm512_set1_ps(-126.0f), t);
  const __m512 f = _mm512_reduce_ps(tc, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(2.1707595442421734e-04f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.2440191349014640e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6785118803381920e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5483680218458176e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022971093654633e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314700365066530e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(_knot_mask16(tiny), p, tc);
}

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= kVector ? __mmask16(0xFFFF) : __mmask16((1u << remaining) - 1);
}

}  // namespace

// The online-softmax update of a score block stored transposed: s holds `keys` rows of
// `lanes` query columns (row stride ld), one column per query, so that 16 queries share
// each vector operation. Per column, with its running max m and sum l: m' = max(m, column
// max), s <- exp(s - m'), l <- l * exp(m - m') + column sum, corr = exp(m - m') (the factor
// that rescales the column's output accumulator); a column whose m' is -inf (all masked so
// far) keeps P = 0 and corr = 1; a NaN score makes its column NaN (through its P).
void softmax_columns_avx512(float* s, int64_t ld, int64_t keys, int64_t lanes, float* m, float* l, float* corr) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < lanes; j += kVector) {
    const __mmask16 mk = tail_mask(lanes - j);
    const __m512 m_old = _mm512_mask_loadu_ps(neg_inf, mk, m + j);
    // The column maxima in four chains (a vmaxps's latency per row in one). A NaN score
    // never enters them (vmaxps returns its second operand, the chain, when either is NaN):
    // it makes its own P NaN, and through P the column's l and output.
    __m512 vmax[4] = {m_old, neg_inf, neg_inf, neg_inf};
    int64_t r = 0;
    for (; r + 4 <= keys; r += 4)
      for (int u = 0; u < 4; ++u)
        vmax[u] = _mm512_max_ps(_mm512_mask_loadu_ps(neg_inf, mk, s + (r + u) * ld + j), vmax[u]);
    for (; r < keys; ++r) vmax[0] = _mm512_max_ps(_mm512_mask_loadu_ps(neg_inf, mk, s + r * ld + j), vmax[0]);
    const __m512 m_new = _mm512_max_ps(_mm512_max_ps(vmax[0], vmax[1]), _mm512_max_ps(vmax[2], vmax[3]));
    const __mmask16 none_yet = _mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ);
    // exp(-inf - 0) = 0: a column with nothing attended gets P = 0.
    const __m512 shift = _mm512_mask_mov_ps(m_new, none_yet, _mm512_setzero_ps());
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t r = 0; r < keys; ++r) {
      float* row = s + r * ld + j;
      const __m512 p = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, row), shift));
      _mm512_mask_storeu_ps(row, mk, p);
      vsum = _mm512_add_ps(vsum, p);
    }
    // exp(m - m') is 0 for m = -inf < m'; 1 where both are -inf (their difference is NaN).
    const __m512 c = _mm512_mask_mov_ps(exp512(_mm512_sub_ps(m_old, m_new)), none_yet, _mm512_set1_ps(1.0f));
    _mm512_mask_storeu_ps(corr + j, mk, c);
    _mm512_mask_storeu_ps(l + j, mk, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, l + j), c, vsum));
    _mm512_mask_storeu_ps(m + j, mk, m_new);
  }
}

// o[r][j] *= corr[j] for `rows` rows of `lanes` columns (row stride ld): the transposed
// output block's rescale after a softmax block moved its columns' maxima.
void rescale_columns_avx512(float* o, int64_t ld, int64_t rows, int64_t lanes, const float* corr) {
  for (int64_t j = 0; j < lanes; j += kVector) {
    const __mmask16 mk = tail_mask(lanes - j);
    const __m512 c = _mm512_maskz_loadu_ps(mk, corr + j);
    if (_mm512_cmp_ps_mask(c, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ) == 0) continue;  // nothing moved
    for (int64_t r = 0; r < rows; ++r) {
      float* row = o + r * ld + j;
      _mm512_mask_storeu_ps(row, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, row), c));
    }
  }
}

}  // namespace anvil::cpu_attention

namespace anvil::cpu_attention {

// s_ij <- exp(s_ij - shift_i) for `rows` rows of `cols` scores (row stride ld): the
// probabilities of the backward pass from the saved log-sum-exp. A row with shift -inf
// (fully masked in the forward) gets P = 0.
void exp_rows_avx512(float* s, int64_t ld, int64_t rows, int64_t cols, const float* shift) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * ld;
    if (shift[i] == -std::numeric_limits<float>::infinity()) {
      for (int64_t j = 0; j < cols; ++j) row[j] = 0.0f;
      continue;
    }
    const __m512 sh = _mm512_set1_ps(shift[i]);
    for (int64_t j = 0; j < cols; j += kVector) {
      const __mmask16 mk = tail_mask(cols - j);
      _mm512_mask_storeu_ps(row + j, mk, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, row + j), sh)));
    }
  }
}

// ds_ij <- scale * p_ij * (ds_ij - d_i) for `rows` rows of `cols` (row stride ld): the
// softmax backward of one block, in place in ds (which holds dP).
void softmax_grad_rows_avx512(const float* p, float* ds, int64_t ld, int64_t rows, int64_t cols, const float* d, float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < rows; ++i) {
    const __m512 di = _mm512_set1_ps(d[i]);
    for (int64_t j = 0; j < cols; j += kVector) {
      const __mmask16 mk = tail_mask(cols - j);
      float* x = ds + i * ld + j;
      const __m512 pv = _mm512_maskz_loadu_ps(mk, p + i * ld + j);
      _mm512_mask_storeu_ps(x, mk, _mm512_mul_ps(_mm512_mul_ps(sc, pv), _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x), di)));
    }
  }
}

}  // namespace anvil::cpu_attention
