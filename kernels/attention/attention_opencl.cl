// Attention and its backward in OpenCL C, flash style: scores are never materialised
// beyond a (BQ, BK) tile per work-item.
//
// Reaching the PoCL CPU device's vector units: the loops over a tile's rows and vectors
// are unrolled (#pragma unroll / _Pragma), so that its accumulators are SSA values that
// live in vector registers; a loop left rolled keeps them on the stack (load, fma, store).
//
//   forward   out = softmax(scale * q k^T + mask) v, lse = log-sum-exp of each score row
//   backward  (FlashAttention-2 order, P recomputed from the saved lse)
//             D_i = rowsum(dO * O);  P = exp(S - lse);  dP = dO V^T;  dS = P * (dP - D)
//             dV = P^T dO,  dK = scale * dS^T Q  (one work-item per key block: summed over
//             the kv head's query heads and every query, no atomics)
//             dQ = scale * dS K                   (one work-item per query block)
//
// Operands: q, out, dO are read and written in place through their strides (any layout,
// any dtype). K and V are first packed per (batch, kv head) into f32 (pack_transposed:
// K^T in key blocks, (LKP / BK, E, BK), so that a block's K^T is one contiguous panel whose
// rows are key vectors; pack_rows: V (LKP, EVP), rows of value columns), zero padded to LKP
// keys (a multiple of BK) and EVP columns (a multiple of CH), and shared by the kv head's
// query heads (GQA/MQA: no copies per head).
//
// Forward work-item (query block, head, batch) owns QB query rows: q rows in private f32,
// running max m and sum l per row, and the (QB, EVP) output accumulator. Per block of BK
// keys and sub-block of BQ rows:
//   S (BQ, BK) = q K^T       BQ x NKV float VW accumulators: broadcast q[i][e], K^T row e
//   mask, online softmax     keys past seq_k, causal (top-left: key j > query i) and
//                            false boolean / additive mask entries; rescale by exp(m - m')
//   O (BQ, EVP) += P V       CH columns at a time: broadcast p[i][j], V row j
// Causal blocks right of the block's last row are skipped. Fully masked rows give out = 0
// and lse = -inf; a NaN score makes its row NaN. Every sum runs in f32 in a fixed order:
// bitwise reproducible.
//
// Parameters (-D defines; see attention_opencl.cpp):
//   BQ     query rows of a score tile        VW   vector width (float VW)
//   NSUB   forward: score tiles (sub-blocks of BQ rows) per work-item, QB = BQ * NSUB rows
//   NKV    key vectors per block (BK = NKV * VW keys)
//   NOV    value vectors per chunk (CH = NOV * VW columns)
//   DMAX   bound of head_dim and EVP (private arrays); a multiple of CH
//   DTYPE  0 f32, 1 f16 (vload_half / vstore_half_rte), 2 bf16 (ushort)
// Work-groups are 1 x 1 x 1 (fixed: PoCL compiles a kernel once per work-group size); on
// CPU devices a work-item is then a plain function over float VW vectors.

#ifndef BQ
#define BQ 8
#endif
#ifndef VW
#define VW 16
#endif
#ifndef NKV
#define NKV 2
#endif
#ifndef NOV
#define NOV 2
#endif
#ifndef NSUB
#define NSUB 1
#endif
#ifndef DMAX
#define DMAX 128
#endif
#ifndef DTYPE
#define DTYPE 0
#endif

#ifdef ANVIL_COLD_BUILD
__constant long anvil_cold_build = ANVIL_COLD_BUILD;
#endif

// Helpers that take a tile (arrays of accumulators) are always inlined: called, the
// tile goes through memory (PoCL's LLVM does not inline them on its own).
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define BK (NKV * VW)
#define CH (NOV * VW)
#define QB (BQ * NSUB)
#if DMAX % CH != 0
#error "DMAX must be a multiple of NOV * VW"
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#if VW == 1
#define VEC float
#define VLOAD(p) (*(p))
#define VSTORE(x, p) (*(p) = (x))
#else
#define VEC CAT(float, VW)
#define VLOAD(p) CAT(vload, VW)(0, p)
#define VSTORE(x, p) CAT(vstore, VW)(x, 0, p)
#endif

// Horizontal max / sum of a VEC, in a fixed tree order.
#if VW == 16
inline float hmax(float16 v) { const float8 a = fmax(v.lo, v.hi); const float4 b = fmax(a.lo, a.hi); const float2 c = fmax(b.lo, b.hi); return fmax(c.x, c.y); }
inline float hsum(float16 v) { const float8 a = v.lo + v.hi; const float4 b = a.lo + a.hi; const float2 c = b.lo + b.hi; return c.x + c.y; }
#elif VW == 8
inline float hmax(float8 v) { const float4 b = fmax(v.lo, v.hi); const float2 c = fmax(b.lo, b.hi); return fmax(c.x, c.y); }
inline float hsum(float8 v) { const float4 b = v.lo + v.hi; const float2 c = b.lo + b.hi; return c.x + c.y; }
#elif VW == 4
inline float hmax(float4 v) { const float2 c = fmax(v.lo, v.hi); return fmax(c.x, c.y); }
inline float hsum(float4 v) { const float2 c = v.lo + v.hi; return c.x + c.y; }
#elif VW == 2
inline float hmax(float2 v) { return fmax(v.x, v.y); }
inline float hsum(float2 v) { return v.x + v.y; }
#else
inline float hmax(float v) { return v; }
inline float hsum(float v) { return v; }
#endif

#define NEG_INF (-INFINITY)
#if VW == 1
#define ANY_NAN(x) isnan(x)
#else
#define ANY_NAN(x) any(isnan(x))
#endif

// ------------------------------------------------------------------ element access
#include "elements_opencl.cl"

// ------------------------------------------------------------------ packing
// src (b, h, row, col) transposed in blocks of BK rows: dst[bh][row / BK][col][row % BK]
// (rows_p / BK blocks of (cols, BK)), zero past `rows`; a key block's K^T is one contiguous
// (cols, BK) panel. Work-item (row, b * heads + h) moves one source row.
__kernel void pack_transposed(const __global elem_t* src, long off, long s_b, long s_h, long s_row, long s_col,
                              long heads, long rows, long cols, long rows_p, __global float* dst) {
  const long row = get_global_id(0), bh = get_global_id(1);
  if (row >= rows_p) return;
  const long b = bh / heads, h = bh - b * heads;
  const long blk = row / BK;
  __global float* out = dst + (bh * (rows_p / BK) + blk) * cols * BK + (row - blk * BK);
  if (row >= rows) {
    for (long col = 0; col < cols; ++col) out[col * BK] = 0.0f;
    return;
  }
  const long base = off + b * s_b + h * s_h + row * s_row;
  for (long col = 0; col < cols; ++col) out[col * BK] = load_elem(src, base + col * s_col);
}

// dst[bh][row][col] (rows_p, cols_p) = src (b, h, row, col), zero past rows / cols.
// Work-item (row, b * heads + h) moves one row.
__kernel void pack_rows(const __global elem_t* src, long off, long s_b, long s_h, long s_row, long s_col, long heads,
                        long rows, long cols, long rows_p, long cols_p, __global float* dst) {
  const long row = get_global_id(0), bh = get_global_id(1);
  if (row >= rows_p) return;
  const long b = bh / heads, h = bh - b * heads;
  __global float* out = dst + (bh * rows_p + row) * cols_p;
  const long n = row < rows ? cols : 0;
  const long base = off + b * s_b + h * s_h + row * s_row;
  for (long col = 0; col < n; ++col) out[col] = load_elem(src, base + col * s_col);
  for (long col = n; col < cols_p; ++col) out[col] = 0.0f;
}

// ------------------------------------------------------------------ shared tile code
// Loads `n` columns of rows [i0, i0 + BQ) of the (b, h) slice into dst (BQ, DMAX) as f32;
// rows past `rows` are zero.
ALWAYS_INLINE void load_block(float dst[BQ][DMAX], const __global elem_t* src, long base, long s_row, long s_col, long i0,
                       long rows, long n) {
  for (int i = 0; i < BQ; ++i) {
    const long row = i0 + i;
    if (row < rows)
      for (long e = 0; e < n; ++e) dst[i][e] = load_elem(src, base + row * s_row + e * s_col);
    else
      for (long e = 0; e < n; ++e) dst[i][e] = 0.0f;
  }
}

// acc (BQ, BK) = a (BQ, n) @ bt (n, BK): bt is a key block's contiguous (n, BK) panel.
// The BQ x NKV accumulators stay in vector registers (the loops over them are unrolled).
#define TILE_AB(acc, a, bt, n)                                                           \
  do {                                                                                   \
    _Pragma("unroll") for (int i_ = 0; i_ < BQ; ++i_)                                    \
      _Pragma("unroll") for (int v_ = 0; v_ < NKV; ++v_) acc[i_][v_] = (VEC)(0.0f);       \
    const __global float* bp_ = (bt);                                                    \
    for (long e_ = 0; e_ < (n); ++e_) {                                                  \
      VEC kv_[NKV];                                                                      \
      _Pragma("unroll") for (int v_ = 0; v_ < NKV; ++v_) kv_[v_] = VLOAD(bp_ + v_ * VW); \
      _Pragma("unroll") for (int i_ = 0; i_ < BQ; ++i_) {                                \
        const VEC av_ = (VEC)(a[i_][e_]);                                                \
        _Pragma("unroll") for (int v_ = 0; v_ < NKV; ++v_) acc[i_][v_] = fma(av_, kv_[v_], acc[i_][v_]); \
      }                                                                                  \
      bp_ += BK;                                                                         \
    }                                                                                    \
  } while (0)

// Scaled scores of rows [i0, i0 + BQ) x keys [j0, j0 + BK) into sb, with -inf where a key
// is past seq_k, right of the diagonal (causal), or masked out; rows past seq_q are all
// -inf. mask_kind: 0 none, 1 boolean (uchar, 0 = masked), 2 additive (elem_t).
ALWAYS_INLINE void masked_scores(float sb[BQ][BK], VEC s[BQ][NKV], float scale, long i0, long j0, long lq, long lk,
                          int causal, const __global uchar* mask, long m_base, long m_i, long m_j, int mask_kind) {
  #pragma unroll
  for (int i = 0; i < BQ; ++i)
    #pragma unroll
    for (int v = 0; v < NKV; ++v) VSTORE(s[i][v] * scale, &sb[i][v * VW]);
  const int edge = j0 + BK > lk || (causal && j0 + BK - 1 > i0) || i0 + BQ > lq;
  if (!edge && mask_kind == 0) return;
  for (int i = 0; i < BQ; ++i) {
    const long row = i0 + i;
    for (int jj = 0; jj < BK; ++jj) {
      const long j = j0 + jj;
      if (row >= lq || j >= lk || (causal && j > row)) {
        sb[i][jj] = NEG_INF;
      } else if (mask_kind == 1) {
        if (mask[m_base + row * m_i + j * m_j] == 0) sb[i][jj] = NEG_INF;
      } else if (mask_kind == 2) {
        sb[i][jj] += load_elem((const __global elem_t*)mask, m_base + row * m_i + j * m_j);
      }
    }
  }
}

// ------------------------------------------------------------------ forward
// One key block for the BQ rows [i0, i0 + BQ): scores, online softmax (running max m and
// sum l per row), O = O * exp(m - m') + P V. qs (BQ, E), o (BQ, EVP), m, l: the rows' state.
ALWAYS_INLINE void forward_block(float qs[][DMAX], float o[][DMAX], float* m, float* l, const __global float* kt_blk,
                          const __global float* v_blk, long evp, long e_dim, float scale, long i0, long j0, long lq,
                          long lk, int causal, const __global uchar* mask, long m_base, long m_i, long m_j,
                          int mask_kind) {
  float sb[BQ][BK];  // scores, then probabilities
  float corr[BQ];
  VEC s[BQ][NKV];
  TILE_AB(s, qs, kt_blk, e_dim);
  masked_scores(sb, s, scale, i0, j0, lq, lk, causal, mask, m_base, m_i, m_j, mask_kind);
  #pragma unroll
  for (int i = 0; i < BQ; ++i) {
    VEC sv[NKV];
    float mx = NEG_INF;
    int nan_seen = isnan(m[i]);
    #pragma unroll
    for (int v = 0; v < NKV; ++v) {
      sv[v] = VLOAD(&sb[i][v * VW]);
      mx = fmax(mx, hmax(sv[v]));
      nan_seen |= ANY_NAN(sv[v]);
    }
    // fmax drops NaN; a NaN score makes the row NaN (out and lse), as the reference.
    const float m_new = nan_seen ? NAN : fmax(m[i], mx);
    if (m_new == NEG_INF) {  // nothing attended so far: p = 0, nothing to rescale
      corr[i] = 1.0f;
      #pragma unroll
      for (int v = 0; v < NKV; ++v) VSTORE((VEC)(0.0f), &sb[i][v * VW]);
      continue;
    }
    corr[i] = exp(m[i] - m_new);  // 0 while m is -inf
    float sum = 0.0f;
    #pragma unroll
    for (int v = 0; v < NKV; ++v) {
      const VEC p = exp(sv[v] - m_new);  // 0 for masked keys
      sum += hsum(p);
      VSTORE(p, &sb[i][v * VW]);
    }
    l[i] = l[i] * corr[i] + sum;
    m[i] = m_new;
  }
  // O = O * corr + P V, CH columns at a time.
  for (long c0 = 0; c0 < evp; c0 += CH) {
    VEC acc[BQ][NOV];
    #pragma unroll
    for (int i = 0; i < BQ; ++i)
      #pragma unroll
      for (int v = 0; v < NOV; ++v) acc[i][v] = VLOAD(&o[i][c0 + v * VW]) * corr[i];
    const __global float* vp = v_blk + c0;
    #pragma unroll 4
    for (int jj = 0; jj < BK; ++jj) {
      VEC vv[NOV];
      #pragma unroll
      for (int v = 0; v < NOV; ++v) vv[v] = VLOAD(vp + v * VW);
      #pragma unroll
      for (int i = 0; i < BQ; ++i) {
        const VEC pv = (VEC)(sb[i][jj]);
        #pragma unroll
        for (int v = 0; v < NOV; ++v) acc[i][v] = fma(pv, vv[v], acc[i][v]);
      }
      vp += evp;
    }
    #pragma unroll
    for (int i = 0; i < BQ; ++i)
      #pragma unroll
      for (int v = 0; v < NOV; ++v) VSTORE(acc[i][v], &o[i][c0 + v * VW]);
  }
}

// Work-item (query block, head, batch) owns QB = BQ * NSUB rows; per key block it steps
// its NSUB sub-blocks of BQ rows, so that a key block (K^T and V panels, E * BK and
// BK * EVP floats) is read from memory once per QB rows and then from the caches.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void attention_forward(const __global elem_t* q, long q_off, long q_b, long q_h, long q_i, long q_e,
                       const __global float* kt, const __global float* vr, long lkp, long evp,
                       __global elem_t* out, long o_off, long o_b, long o_h, long o_i, long o_e,
                       __global float* lse, long l_off, long l_b, long l_h, long l_i, int has_lse,
                       const __global uchar* mask, long m_off, long m_b, long m_h, long m_i, long m_j, int mask_kind,
                       int causal, long kv_heads, long group, long lq, long lk, long e_dim, long ev_dim, float scale) {
  const long qb = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
  const long i0 = qb * QB;
  const long bh = b * kv_heads + h / group;
  const __global float* kt_h = kt + bh * e_dim * lkp;  // (LKP / BK, E, BK)
  const __global float* v_h = vr + bh * lkp * evp;     // (LKP, EVP)
  const long m_base = m_off + b * m_b + h * m_h;

  float qs[QB][DMAX];  // (QB, E)
  float o[QB][DMAX];   // (QB, EVP)
  float m[QB], l[QB];
  for (int sub = 0; sub < NSUB; ++sub)
    load_block(qs + sub * BQ, q, q_off + b * q_b + h * q_h, q_i, q_e, i0 + sub * BQ, lq, e_dim);
  for (int i = 0; i < QB; ++i) {
    m[i] = NEG_INF, l[i] = 0.0f;
    for (long e = 0; e < evp; ++e) o[i][e] = 0.0f;
  }

  const long rows = min((long)QB, lq - i0);
  const long key_end = causal ? min(lk, i0 + rows) : lk;
  for (long j0 = 0; j0 < key_end; j0 += BK)
    for (int sub = 0; sub < NSUB; ++sub) {
      const long s0 = i0 + sub * BQ;
      if (s0 >= lq) break;                       // past seq_q
      if (causal && j0 > s0 + BQ - 1) continue;  // right of this sub-block's diagonal
      forward_block(qs + sub * BQ, o + sub * BQ, m + sub * BQ, l + sub * BQ, kt_h + j0 * e_dim, v_h + j0 * evp, evp,
                    e_dim, scale, s0, j0, lq, lk, causal, mask, m_base, m_i, m_j, mask_kind);
    }

  for (int i = 0; i < rows; ++i) {
    const long row = i0 + i;
    const int attended = m[i] != NEG_INF;  // else out = 0 and lse = -inf
    const long base = o_off + b * o_b + h * o_h + row * o_i;
    for (long e = 0; e < ev_dim; ++e) store_elem(out, base + e * o_e, attended ? o[i][e] / l[i] : 0.0f);
    if (has_lse) lse[l_off + b * l_b + h * l_h + row * l_i] = attended ? m[i] + log(l[i]) : NEG_INF;
  }
}

// ------------------------------------------------------------------ backward
// D (batch, heads, lq) = rowsum(dO * O), f32. Work-item (row, head, batch).
__kernel void row_dot(const __global elem_t* dout, long d_off, long d_b, long d_h, long d_i, long d_e,
                      const __global elem_t* out, long o_off, long o_b, long o_h, long o_i, long o_e, long heads,
                      long lq, long ev_dim, __global float* dst) {
  const long i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
  if (i >= lq) return;
  const long db = d_off + b * d_b + h * d_h + i * d_i, ob = o_off + b * o_b + h * o_h + i * o_i;
  float sum = 0.0f;
  for (long e = 0; e < ev_dim; ++e) sum = fma(load_elem(dout, db + e * d_e), load_elem(out, ob + e * o_e), sum);
  dst[(b * heads + h) * lq + i] = sum;
}

// P and dS of rows [i0, i0 + BQ) x keys [j0, j0 + BK) from the score tile (in sb), the
// saved lse and D: pb = P, sb = dS. dP = dO V^T from dos (BQ, Ev) and the block's V^T (Ev, BK).
ALWAYS_INLINE void probabilities_and_ds(float sb[BQ][BK], float pb[BQ][BK], float dos[BQ][DMAX],
                                 const __global float* vt_blk, long ev_dim, const float lse_r[BQ],
                                 const float d_r[BQ]) {
  #pragma unroll
  for (int i = 0; i < BQ; ++i)
    #pragma unroll
    for (int v = 0; v < NKV; ++v) {
      // A row whose lse is -inf attended nothing (or is past seq_q): P = 0.
      const VEC p = lse_r[i] == NEG_INF ? (VEC)(0.0f) : exp(VLOAD(&sb[i][v * VW]) - lse_r[i]);
      VSTORE(p, &pb[i][v * VW]);
    }
  VEC dp[BQ][NKV];
  TILE_AB(dp, dos, vt_blk, ev_dim);
  #pragma unroll
  for (int i = 0; i < BQ; ++i)
    #pragma unroll
    for (int v = 0; v < NKV; ++v) VSTORE(VLOAD(&pb[i][v * VW]) * (dp[i][v] - d_r[i]), &sb[i][v * VW]);
}

ALWAYS_INLINE void load_row_stats(float lse_r[BQ], float d_r[BQ], const __global float* lse, long l_base, long l_i,
                           const __global float* dbuf, long d_base, long i0, long lq) {
  for (int i = 0; i < BQ; ++i) {
    const long row = i0 + i;
    lse_r[i] = row < lq ? lse[l_base + row * l_i] : NEG_INF;
    d_r[i] = row < lq ? dbuf[d_base + row] : 0.0f;
  }
}

// dK, dV of keys [j0, j0 + BK) of (kv head, batch): work-item (key block, kv head, batch).
// Walks the kv head's query heads and, per head, the query blocks that attend the keys.
// Accumulators are transposed (E, BK) / (Ev, BK): key vectors, as the tiles produce them.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void attention_backward_kv(const __global elem_t* q, long q_off, long q_b, long q_h, long q_i, long q_e,
                           const __global elem_t* dout, long d_off, long d_b, long d_h, long d_i, long d_e,
                           const __global float* kt, const __global float* vt, long lkp,
                           const __global float* lse, long l_off, long l_b, long l_h, long l_i,
                           const __global float* dbuf,
                           const __global uchar* mask, long m_off, long m_b, long m_h, long m_i, long m_j,
                           int mask_kind, int causal, long heads, long kv_heads, long group, long lq, long lk,
                           long e_dim, long ev_dim, float scale,
                           __global elem_t* dk, long dk_off, long dk_b, long dk_h, long dk_j, long dk_e,
                           __global elem_t* dv, long dv_off, long dv_b, long dv_h, long dv_j, long dv_e) {
  const long kb = get_global_id(0), kvh = get_global_id(1), b = get_global_id(2);
  const long j0 = kb * BK;
  const long bh = b * kv_heads + kvh;
  const __global float* kt_blk = kt + (bh * lkp + j0) * e_dim;   // (E, BK) panel of the block
  const __global float* vt_blk = vt + (bh * lkp + j0) * ev_dim;  // (Ev, BK)

  VEC dkt[DMAX][NKV], dvt[DMAX][NKV];  // (E, BK), (Ev, BK)
  for (long e = 0; e < e_dim; ++e)
    for (int v = 0; v < NKV; ++v) dkt[e][v] = (VEC)(0.0f);
  for (long e = 0; e < ev_dim; ++e)
    for (int v = 0; v < NKV; ++v) dvt[e][v] = (VEC)(0.0f);

  float qs[BQ][DMAX], dos[BQ][DMAX], sb[BQ][BK], pb[BQ][BK], lse_r[BQ], d_r[BQ];
  const long first_block = causal ? j0 / BQ : 0;  // causal: rows i >= j0 only
  for (long hh = 0; hh < group; ++hh) {
    const long h = kvh * group + hh;
    const long m_base = m_off + b * m_b + h * m_h;
    for (long i0 = first_block * BQ; i0 < lq; i0 += BQ) {
      load_block(qs, q, q_off + b * q_b + h * q_h, q_i, q_e, i0, lq, e_dim);
      load_block(dos, dout, d_off + b * d_b + h * d_h, d_i, d_e, i0, lq, ev_dim);
      load_row_stats(lse_r, d_r, lse, l_off + b * l_b + h * l_h, l_i, dbuf, (b * heads + h) * lq, i0, lq);
      VEC s[BQ][NKV];
      TILE_AB(s, qs, kt_blk, e_dim);
      masked_scores(sb, s, scale, i0, j0, lq, lk, causal, mask, m_base, m_i, m_j, mask_kind);
      probabilities_and_ds(sb, pb, dos, vt_blk, ev_dim, lse_r, d_r);
      // dV^T (Ev, BK) += dO^T P;  dK^T (E, BK) += Q^T dS.
      VEC pt[BQ][NKV];
      #pragma unroll
      for (int i = 0; i < BQ; ++i)
        #pragma unroll
        for (int v = 0; v < NKV; ++v) pt[i][v] = VLOAD(&pb[i][v * VW]);
      for (long e = 0; e < ev_dim; ++e)
        #pragma unroll
        for (int i = 0; i < BQ; ++i) {
          const VEC g = (VEC)(dos[i][e]);
          #pragma unroll
          for (int v = 0; v < NKV; ++v) dvt[e][v] = fma(g, pt[i][v], dvt[e][v]);
        }
      #pragma unroll
      for (int i = 0; i < BQ; ++i)
        #pragma unroll
        for (int v = 0; v < NKV; ++v) pt[i][v] = VLOAD(&sb[i][v * VW]);
      for (long e = 0; e < e_dim; ++e)
        #pragma unroll
        for (int i = 0; i < BQ; ++i) {
          const VEC g = (VEC)(qs[i][e]);
          #pragma unroll
          for (int v = 0; v < NKV; ++v) dkt[e][v] = fma(g, pt[i][v], dkt[e][v]);
        }
    }
  }

  const int keys = (int)min((long)BK, lk - j0);
  float col[BK];
  for (long e = 0; e < e_dim; ++e) {
    #pragma unroll
    for (int v = 0; v < NKV; ++v) VSTORE(dkt[e][v] * scale, &col[v * VW]);
    for (int jj = 0; jj < keys; ++jj) store_elem(dk, dk_off + b * dk_b + kvh * dk_h + (j0 + jj) * dk_j + e * dk_e, col[jj]);
  }
  for (long e = 0; e < ev_dim; ++e) {
    #pragma unroll
    for (int v = 0; v < NKV; ++v) VSTORE(dvt[e][v], &col[v * VW]);
    for (int jj = 0; jj < keys; ++jj) store_elem(dv, dv_off + b * dv_b + kvh * dv_h + (j0 + jj) * dv_j + e * dv_e, col[jj]);
  }
}

// dQ of rows [i0, i0 + BQ) of (head, batch): work-item (query block, head, batch), over the
// key blocks the rows attend; dQ (BQ, EP) += dS (BQ, BK) K (BK, EP), K packed (LKP, EP).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void attention_backward_q(const __global elem_t* q, long q_off, long q_b, long q_h, long q_i, long q_e,
                          const __global elem_t* dout, long d_off, long d_b, long d_h, long d_i, long d_e,
                          const __global float* kt, const __global float* vt, const __global float* kr, long lkp,
                          long ep, const __global float* lse, long l_off, long l_b, long l_h, long l_i,
                          const __global float* dbuf,
                          const __global uchar* mask, long m_off, long m_b, long m_h, long m_i, long m_j,
                          int mask_kind, int causal, long heads, long kv_heads, long group, long lq, long lk,
                          long e_dim, long ev_dim, float scale,
                          __global elem_t* dq, long dq_off, long dq_b, long dq_h, long dq_i, long dq_e) {
  const long qb = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
  const long i0 = qb * BQ;
  const long bh = b * kv_heads + h / group;
  const __global float* kt_h = kt + bh * e_dim * lkp;
  const __global float* vt_h = vt + bh * ev_dim * lkp;
  const __global float* k_h = kr + bh * lkp * ep;
  const long m_base = m_off + b * m_b + h * m_h;

  float qs[BQ][DMAX], dos[BQ][DMAX], acc_q[BQ][DMAX], sb[BQ][BK], pb[BQ][BK], lse_r[BQ], d_r[BQ];
  load_block(qs, q, q_off + b * q_b + h * q_h, q_i, q_e, i0, lq, e_dim);
  load_block(dos, dout, d_off + b * d_b + h * d_h, d_i, d_e, i0, lq, ev_dim);
  load_row_stats(lse_r, d_r, lse, l_off + b * l_b + h * l_h, l_i, dbuf, (b * heads + h) * lq, i0, lq);
  for (int i = 0; i < BQ; ++i)
    for (long e = 0; e < ep; ++e) acc_q[i][e] = 0.0f;

  const long last_row = min(lq, i0 + BQ) - 1;
  const long key_end = causal ? min(lk, last_row + 1) : lk;
  for (long j0 = 0; j0 < key_end; j0 += BK) {
    VEC s[BQ][NKV];
    TILE_AB(s, qs, kt_h + j0 * e_dim, e_dim);
    masked_scores(sb, s, scale, i0, j0, lq, lk, causal, mask, m_base, m_i, m_j, mask_kind);
    probabilities_and_ds(sb, pb, dos, vt_h + j0 * ev_dim, ev_dim, lse_r, d_r);
    const __global float* k_blk = k_h + j0 * ep;
    for (long c0 = 0; c0 < ep; c0 += CH) {
      VEC acc[BQ][NOV];
      #pragma unroll
      for (int i = 0; i < BQ; ++i)
        #pragma unroll
        for (int v = 0; v < NOV; ++v) acc[i][v] = VLOAD(&acc_q[i][c0 + v * VW]);
      const __global float* kp = k_blk + c0;
      #pragma unroll 4
      for (int jj = 0; jj < BK; ++jj) {
        VEC kv[NOV];
        #pragma unroll
        for (int v = 0; v < NOV; ++v) kv[v] = VLOAD(kp + v * VW);
        #pragma unroll
        for (int i = 0; i < BQ; ++i) {
          const VEC g = (VEC)(sb[i][jj]);
          #pragma unroll
          for (int v = 0; v < NOV; ++v) acc[i][v] = fma(g, kv[v], acc[i][v]);
        }
        kp += ep;
      }
      #pragma unroll
      for (int i = 0; i < BQ; ++i)
        #pragma unroll
        for (int v = 0; v < NOV; ++v) VSTORE(acc[i][v], &acc_q[i][c0 + v * VW]);
    }
  }
  for (int i = 0; i < BQ; ++i) {
    const long row = i0 + i;
    if (row >= lq) break;
    const long base = dq_off + b * dq_b + h * dq_h + row * dq_i;
    for (long e = 0; e < e_dim; ++e) store_elem(dq, base + e * dq_e, acc_q[i][e] * scale);
  }
}
