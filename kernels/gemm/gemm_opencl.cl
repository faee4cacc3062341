// GEMM in OpenCL C: c (b, m, n) = alpha * a (b, m, k) @ b (b, k, n) + beta * c + bias (n).
//
// Two steps, BLIS style: pack_panels converts each operand (any dtype, any strides, any
// batch layout) into f32 panels, then gemm_tiles multiplies panels with a register tile
// per work-item and writes c in its own dtype and strides.
//
// Packed layout (f32, zero padded, so the main loop has no edge cases):
//   A: [batch_a][panel m / MWI][k (KP)][MWI]    element (i, kk) of a panel at kk * MWI + i
//   B: [batch_b][panel n / NWI][k (KP)][NWI]    element (kk, j) of a panel at kk * NWI + j
// KP is k rounded up to KWG; panel counts are rounded up to MDIMC / NDIMC, so every
// work-item of a work-group reads real (possibly zero) panels. A panel is contiguous:
// the main loop streams it with one pointer per operand.
//
// Parameters (-D defines, tuned per device; see gemm_opencl.cpp):
//   MWI, NWI   rows and columns of c per work-item (the register tile, MWI x NWI floats)
//   VW         vector width of the tile's rows (float VW); NWI % VW == 0
//   KWI        k unroll of the main loop
//   MDIMC, NDIMC  work-group size (work-items along m and n)
//   KWG        k block staged in local memory when LOCAL == 1 (work-group cooperative
//              copies of the MDIMC x NDIMC panels' k slice; GPUs); KP % KWG == 0
//   LOCAL      0: each work-item reads its panels from global memory (CPU devices: the
//              caches do the staging and barriers cost more than they save)
//   DTYPE      0 f32, 1 f16 (stored as half, loaded with vload_half: no cl_khr_fp16
//              needed), 2 bf16 (stored as ushort); arithmetic is always f32
//
// CPU devices (PoCL) run each work-group as a loop over its work-items; with a 1 x 1
// work-group a work-item is a plain function over float VW vectors, i.e. a CPU
// micro-kernel (MWI x NWI accumulators in vector registers, one broadcast of a per row).

#ifndef MWI
#define MWI 8
#endif
#ifndef NWI
#define NWI 32
#endif
#ifndef VW
#define VW 16
#endif
#ifndef KWI
#define KWI 2
#endif
#ifndef MDIMC
#define MDIMC 1
#endif
#ifndef NDIMC
#define NDIMC 1
#endif
#ifndef KWG
#define KWG 16
#endif
#ifndef LOCAL
#define LOCAL 0
#endif
#ifndef DTYPE
#define DTYPE 0
#endif

// anvil-bench times a cold compile with a unique ANVIL_COLD_BUILD; the constant makes the
// preprocessed source unique, so the driver's own program cache cannot answer it.
#ifdef ANVIL_COLD_BUILD
__constant long anvil_cold_build = ANVIL_COLD_BUILD;
#endif

#define NVEC (NWI / VW)
#if NWI % VW != 0
#error "NWI must be a multiple of VW"
#endif
#if KWG % KWI != 0
#error "KWG must be a multiple of KWI"
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#if VW == 1
#define VEC float
#define VLOAD(p) (*(p))
#else
#define VEC CAT(float, VW)
#define VLOAD(p) CAT(vload, VW)(0, p)
#endif

// ------------------------------------------------------------------ element access
#include "elements_opencl.cl"

// ------------------------------------------------------------------ packing
// One work-item per (reduction index r, panel p, batch b) writes the `width` values of
// panel p at r. The reduction index folds batches when the product is summed over the
// batch (gradients of broadcast operands): r = rb * red_per_batch + rk.
//   element (row, rb, rk) of batch b at src[src_off + b*batch_stride + rb*fold_stride +
//   rk*red_stride + row*row_stride]
__kernel void pack_panels(const __global elem_t* src, long src_off, long rows, long red, long red_per_batch,
                          long row_stride, long red_stride, long fold_stride, long batch_stride,
                          __global float* dst, long panels, long redp, int width) {
  const long r = get_global_id(0), p = get_global_id(1), b = get_global_id(2);
  if (r >= redp || p >= panels) return;
  __global float* out = dst + ((b * panels + p) * redp + r) * width;
  if (r >= red) {
    for (int i = 0; i < width; ++i) out[i] = 0.0f;
    return;
  }
  const long rb = red_per_batch == red ? 0 : r / red_per_batch;
  const long rk = r - rb * red_per_batch;
  const __global elem_t* s = src + src_off + b * batch_stride + rb * fold_stride + rk * red_stride;
  const long row0 = p * width;
  const int valid = (int)clamp(rows - row0, 0L, (long)width);
  for (int i = 0; i < valid; ++i) out[i] = load_elem(s, (row0 + i) * row_stride);
  for (int i = valid; i < width; ++i) out[i] = 0.0f;
}

// ------------------------------------------------------------------ the tile kernel
// Work-item (pm, pn, b) computes c rows [pm*MWI, +MWI) x columns [pn*NWI, +NWI) of batch b.
__kernel __attribute__((reqd_work_group_size(MDIMC, NDIMC, 1)))
void gemm_tiles(const __global float* ap, const __global float* bp, long kp, long a_batch, long b_batch,
                __global elem_t* c, long c_off, long m, long n, long c_row, long c_col, long c_batch,
                const __global elem_t* bias, long bias_off, long bias_stride, int has_bias, float alpha,
                float beta) {
  const long pm = get_global_id(0), pn = get_global_id(1), b = get_global_id(2);
  VEC acc[MWI][NVEC];
#pragma unroll
  for (int i = 0; i < MWI; ++i)
#pragma unroll
    for (int v = 0; v < NVEC; ++v) acc[i][v] = (VEC)(0.0f);

#if LOCAL
  // (KWG, MDIMC*MWI) and (KWG, NDIMC*NWI) slices of the work-group's panels.
  __local float a_tile[MDIMC][KWG * MWI];
  __local float b_tile[NDIMC][KWG * NWI];
  const int lm = get_local_id(0), ln = get_local_id(1);
  const int lid = ln * MDIMC + lm, threads = MDIMC * NDIMC;
  const long pm0 = pm - lm, pn0 = pn - ln;
  const __global float* a_group = ap + b * a_batch + pm0 * kp * MWI;
  const __global float* b_group = bp + b * b_batch + pn0 * kp * NWI;
  for (long k0 = 0; k0 < kp; k0 += KWG) {
    for (int idx = lid; idx < MDIMC * KWG * MWI; idx += threads) {
      const int panel = idx / (KWG * MWI), e = idx - panel * (KWG * MWI);
      a_tile[panel][e] = a_group[(long)panel * kp * MWI + k0 * MWI + e];
    }
    for (int idx = lid; idx < NDIMC * KWG * NWI; idx += threads) {
      const int panel = idx / (KWG * NWI), e = idx - panel * (KWG * NWI);
      b_tile[panel][e] = b_group[(long)panel * kp * NWI + k0 * NWI + e];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const __local float* a_panel = a_tile[lm];
    const __local float* b_panel = b_tile[ln];
    for (int kk = 0; kk < KWG; kk += KWI) {
#pragma unroll
      for (int u = 0; u < KWI; ++u) {
        VEC bv[NVEC];
#pragma unroll
        for (int v = 0; v < NVEC; ++v) bv[v] = VLOAD(b_panel + (kk + u) * NWI + v * VW);
#pragma unroll
        for (int i = 0; i < MWI; ++i) {
          const VEC av = (VEC)(a_panel[(kk + u) * MWI + i]);
#pragma unroll
          for (int v = 0; v < NVEC; ++v) acc[i][v] = fma(av, bv[v], acc[i][v]);
        }
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
#else
  const __global float* a_panel = ap + b * a_batch + pm * kp * MWI;
  const __global float* b_panel = bp + b * b_batch + pn * kp * NWI;
  for (long kk = 0; kk < kp; kk += KWI) {
#pragma unroll
    for (int u = 0; u < KWI; ++u) {
      VEC bv[NVEC];
#pragma unroll
      for (int v = 0; v < NVEC; ++v) bv[v] = VLOAD(b_panel + v * VW);
#pragma unroll
      for (int i = 0; i < MWI; ++i) {
        const VEC av = (VEC)(a_panel[i]);
#pragma unroll
        for (int v = 0; v < NVEC; ++v) acc[i][v] = fma(av, bv[v], acc[i][v]);
      }
      a_panel += MWI;
      b_panel += NWI;
    }
  }
#endif

  // Epilogue: alpha * acc (+ beta * c) (+ bias), rounded once to the dtype of c. c is not
  // read when beta == 0 (BLAS rule: NaN in c does not propagate).
  const long row0 = pm * MWI, col0 = pn * NWI;
  if (row0 >= m || col0 >= n) return;
  __global elem_t* cb = c + c_off + b * c_batch;
  float bias_v[NWI];
#pragma unroll
  for (int j = 0; j < NWI; ++j)
    bias_v[j] = has_bias && col0 + j < n ? load_elem(bias, bias_off + (col0 + j) * bias_stride) : 0.0f;
#pragma unroll
  for (int i = 0; i < MWI; ++i) {
    const long row = row0 + i;
    if (row >= m) break;
    float vals[NWI];
#pragma unroll
    for (int v = 0; v < NVEC; ++v) {
#if VW == 1
      vals[v] = acc[i][v];
#else
      CAT(vstore, VW)(acc[i][v], v, vals);
#endif
    }
    __global elem_t* crow = cb + row * c_row;
    for (int j = 0; j < NWI; ++j) {
      const long col = col0 + j;
      if (col >= n) break;
      float x = alpha * vals[j];
      if (beta != 0.0f) x += beta * load_elem(crow, col * c_col);
      if (has_bias) x += bias_v[j];
      store_elem(crow, col * c_col, x);
    }
  }
}

// ------------------------------------------------------------------ grad_bias
// out[j] = sum over (batch, m) of g (batch, m, n)[., ., j], f32 accumulation in a fixed order.
__kernel void column_sums(const __global elem_t* g, long g_off, long batch, long m, long n, long g_batch, long g_row,
                          long g_col, __global elem_t* out, long out_off, long out_stride) {
  const long j = get_global_id(0);
  if (j >= n) return;
  float sum = 0.0f;
  for (long b = 0; b < batch; ++b)
    for (long i = 0; i < m; ++i) sum += load_elem(g, g_off + b * g_batch + i * g_row + j * g_col);
  store_elem(out, out_off + j * out_stride, sum);
}
