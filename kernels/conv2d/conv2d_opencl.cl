// conv2d and its backward in OpenCL C, as GEMMs with a register tile per work-item (MWI
// rows x NWI columns in float VW vectors, as gemm_opencl.cl's micro-kernel).
//
//   forward      out[n, k, p, q] = bias[k] + sum_(r, s, c in k's group) in[n, c, y, x] * w[k, c, r, s]
//                                  with y = p * stride_h - pad_h + r * dilation_h (likewise x)
//   grad input   dI[n, c, y, x]  = sum_(r, s, k in c's group) dO[n, k, p, q] * w[k, c, r, s]
//                                  over the (p, q) that read (y, x) through tap (r, s)
//   grad weight  dW[k, c, r, s]  = sum_(n, p, q) dO[n, k, p, q] * in[n, c, y, x]
//   grad bias    dB[k]           = sum_(n, p, q) dO[n, k, p, q]
//
// conv_implicit (forward and grad input): GEMM rows are the pixels of the destination
// image (n, y, x flattened), columns its channels within a group, the reduction runs over
// (tap r, tap s, source channel of the group). Nothing is materialised for the image
// operand: each work-item reads its MWI pixels' source values straight from the image (any
// layout: the strides are arguments) per tap, with a branch-free path when every pixel of
// the tile reads inside the image for that tap (the interior) and a checked one at the
// borders (and, channels-last, a filter row's taps as one run when the tile is inside).
// The weights are packed first (pack_weights) into the GEMM's B-panel layout:
//   wp: [group][panel of NWI columns][red = (r * S + s) * red_c + c][NWI], f32, zero past
//       the group's columns.
// Grad input is the same kernel with the transposed tap mapping (`transposed`): source
// position p = (y + pad - r * dilation) / stride when that divides and lands inside.
//
// Grad weight is an explicit GEMM over the reduction (n, p, q): pack_rows packs dO into
// A panels and pack_im2col the image into B panels (GEMM layout, below), conv_tiles
// multiplies them and scatters each (k, (r, s, c)) result into dW through its strides.
//
// Every output element is written once by one work-item, accumulating in f32 in a fixed
// order: results are bitwise reproducible. Parameters (-D defines; see conv2d_opencl.cpp):
//   MWI, NWI, VW  register tile and vector width (NWI % VW == 0)
//   DTYPE         0 f32, 1 f16 (vload_half / vstore_half_rte), 2 bf16 (ushort); f32 math
// Work-groups are 1 x 1 x 1 (fixed: PoCL compiles a kernel once per work-group size); on
// CPU devices a work-item is then a plain micro-kernel over float VW vectors.

#ifndef MWI
#define MWI 4
#endif
#ifndef NWI
#define NWI 64
#endif
#ifndef VW
#define VW 16
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
#define NVEC (NWI / VW)
#if NWI % VW != 0
#error "NWI must be a multiple of VW"
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

// ------------------------------------------------------------------ geometry
// The source row (or column) that destination position `d` reads through tap `t`, or -1.
//   forward:    d * stride - pad + t * dilation, inside [0, extent)
//   transposed: (d + pad - t * dilation) / stride, when it divides and lands inside
inline long source_coord(long d, long t, long stride, long pad, long dilation, long extent, int transposed) {
  long src;
  if (transposed) {
    const long num = d + pad - t * dilation;
    if (num < 0 || num % stride != 0) return -1;
    src = num / stride;
  } else {
    src = d * stride - pad + t * dilation;
  }
  return src >= 0 && src < extent ? src : -1;
}

// ------------------------------------------------------------------ weight packing
// Work-item (t, panel, group): the NWI columns of panel `panel` at reduction index t =
// (r * S + s) * red_c + c. The weight element of column o (within the group) and reduced
// channel c of group g is at
//   w_off + (g * out_group_step + o) * w_out + (g * red_group_step + c) * w_red + r * w_r + s * w_s
// forward: columns = k (w_out = stride of K, out_group_step = K / G), reduced = c (the
// weight's C dim is per group: red_group_step = 0); grad input: columns = c within the
// group (out_group_step = 0), reduced = k (red_group_step = K / G).
__kernel void pack_weights(const __global elem_t* w, long w_off, long w_out, long w_red, long w_r, long w_s,
                           long out_group_step, long red_group_step, long out_per_group, long red_c, long taps_s,
                           long red, __global float* dst, long panels_n) {
  const long t = get_global_id(0), pn = get_global_id(1), g = get_global_id(2);
  if (t >= red || pn >= panels_n) return;
  const long tap = t / red_c, c = t - tap * red_c;
  const long r = tap / taps_s, s = tap - r * taps_s;
  __global float* out = dst + ((g * panels_n + pn) * red + t) * NWI;
  const __global elem_t* src = w + w_off + (g * red_group_step + c) * w_red + r * w_r + s * w_s;
  for (int j = 0; j < NWI; ++j) {
    const long o = pn * NWI + j;
    out[j] = o < out_per_group ? load_elem(src, (g * out_group_step + o) * w_out) : 0.0f;
  }
}

// ------------------------------------------------------------------ implicit GEMM
// acc (MWI, NWI) += A (MWI, count) B (count, NWI): row i of A is the run of `count` source
// values from src[off[i]] by `step`, B the packed weight rows from wt. The checked variant
// reads a missing pixel (ok[i] == 0) at its safe offset and selects 0 (never 0 * value:
// the value may be Inf or NaN).
ALWAYS_INLINE void mac_run(VEC acc[MWI][NVEC], const __global elem_t* src, const long off[MWI], long count, long step,
                    const __global float* wt) {
  for (long c = 0; c < count; ++c) {
    const long cs = c * step;
    VEC bv[NVEC];
#pragma unroll
    for (int v = 0; v < NVEC; ++v) bv[v] = VLOAD(wt + v * VW);
#pragma unroll
    for (int i = 0; i < MWI; ++i) {
      const VEC av = (VEC)(load_elem(src, off[i] + cs));
#pragma unroll
      for (int v = 0; v < NVEC; ++v) acc[i][v] = fma(av, bv[v], acc[i][v]);
    }
    wt += NWI;
  }
}

ALWAYS_INLINE void mac_run_checked(VEC acc[MWI][NVEC], const __global elem_t* src, const long off[MWI], const int ok[MWI],
                            long count, long step, const __global float* wt) {
  for (long c = 0; c < count; ++c) {
    const long cs = c * step;
    VEC bv[NVEC];
#pragma unroll
    for (int v = 0; v < NVEC; ++v) bv[v] = VLOAD(wt + v * VW);
#pragma unroll
    for (int i = 0; i < MWI; ++i) {
      const float a = load_elem(src, off[i] + cs);
      const VEC av = (VEC)(ok[i] ? a : 0.0f);
#pragma unroll
      for (int v = 0; v < NVEC; ++v) acc[i][v] = fma(av, bv[v], acc[i][v]);
    }
    wt += NWI;
  }
}

// Work-item (pm, pn, g) computes destination pixels [pm*MWI, +MWI) x columns [pn*NWI,
// +NWI) of group g. Source image: (n, c, h, w) strides s_n, s_c, s_h, s_w, extents src_h x
// src_w, red_c channels per group. Destination: `pixels` = N * dst_h * dst_w rows, dst_c
// channels per group.
// merge_s (forward, dilation_w 1, s_w == red_c * s_c: channels-last with one group): a
// filter row's S taps read one contiguous run of S * red_c source values, in the order of
// the packed weights; a tile whose pixels all read the whole row inside the image takes it
// as one run (fewer, longer inner loops: the 7x7 stem has 3 channels per tap).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_implicit(const __global elem_t* src, long src_off, long s_n, long s_c, long s_h, long s_w, long src_h,
                   long src_w, long red_c, long taps_r, long taps_s, long stride_h, long stride_w, long pad_h,
                   long pad_w, long dil_h, long dil_w, int transposed, int merge_s, const __global float* wp,
                   long panels_n, __global elem_t* dst, long dst_off, long d_n, long d_c, long d_h, long d_w,
                   long dst_h, long dst_w, long pixels, long dst_c, const __global elem_t* bias, long bias_off,
                   long bias_stride, int has_bias) {
  const long pm = get_global_id(0), pn = get_global_id(1), g = get_global_id(2);
  const long red = taps_r * taps_s * red_c;
  const __global float* w_panel = wp + (g * panels_n + pn) * red * NWI;
  const __global elem_t* src_g = src + src_off + g * red_c * s_c;

  // The tile's pixels: image index n, destination row and column; rows past `pixels`
  // read nothing (y = -1 makes every tap miss) and are not stored. Consecutive pixels by
  // stepping (x, y, n): two 64-bit divisions per tile, not four per pixel.
  long pn_[MWI], py[MWI], px[MWI];
  {
    const long m0 = pm * MWI;
    long x = m0 % dst_w, t = m0 / dst_w;
    long y = t % dst_h, n = t / dst_h;
#pragma unroll
    for (int i = 0; i < MWI; ++i) {
      const int valid = m0 + i < pixels;
      px[i] = x;
      py[i] = valid ? y : -1;
      pn_[i] = valid ? n : 0;
      if (++x == dst_w) {
        x = 0;
        if (++y == dst_h) y = 0, ++n;
      }
    }
  }
  long img[MWI];
#pragma unroll
  for (int i = 0; i < MWI; ++i) img[i] = pn_[i] * s_n;

  VEC acc[MWI][NVEC];
#pragma unroll
  for (int i = 0; i < MWI; ++i)
#pragma unroll
    for (int v = 0; v < NVEC; ++v) acc[i][v] = (VEC)(0.0f);

  long off[MWI];
  int ok[MWI];
  for (long r = 0; r < taps_r; ++r) {
    if (merge_s) {
      int all = 1;
#pragma unroll
      for (int i = 0; i < MWI; ++i) {
        const long y = py[i] < 0 ? -1 : source_coord(py[i], r, stride_h, pad_h, dil_h, src_h, 0);
        const long x0 = px[i] * stride_w - pad_w;
        all &= y >= 0 && x0 >= 0 && x0 + taps_s <= src_w;
        off[i] = img[i] + y * s_h + x0 * s_w;
      }
      if (all) {
        mac_run(acc, src_g, off, taps_s * red_c, s_c, w_panel + r * taps_s * red_c * NWI);
        continue;
      }
    }
    for (long s = 0; s < taps_s; ++s) {
      // Per pixel: where its source values for this tap start, and whether they exist.
      // A missing pixel (padding, stride gap, past the edge) points at its image's first
      // element, which exists whenever any pixel of the tile reads.
      int all = 1, any = 0;
#pragma unroll
      for (int i = 0; i < MWI; ++i) {
        const long y = py[i] < 0 ? -1 : source_coord(py[i], r, stride_h, pad_h, dil_h, src_h, transposed);
        const long x = y < 0 ? -1 : source_coord(px[i], s, stride_w, pad_w, dil_w, src_w, transposed);
        ok[i] = x >= 0;
        off[i] = ok[i] ? img[i] + y * s_h + x * s_w : img[i];
        all &= ok[i];
        any |= ok[i];
      }
      const __global float* wt = w_panel + (r * taps_s + s) * red_c * NWI;  // (red_c, NWI)
      if (all)
        mac_run(acc, src_g, off, red_c, s_c, wt);
      else if (any)
        mac_run_checked(acc, src_g, off, ok, red_c, s_c, wt);
    }
  }

  // Epilogue: + bias, rounded once to the destination dtype, through its strides; whole
  // rows of contiguous channels (channels-last) as vector stores.
  const long col0 = pn * NWI;
  if (col0 >= dst_c) return;
  const int cols = (int)min((long)NWI, dst_c - col0);
  float bias_v[NWI];
#pragma unroll
  for (int j = 0; j < NWI; ++j)
    bias_v[j] = has_bias && j < cols ? load_elem(bias, bias_off + (g * dst_c + col0 + j) * bias_stride) : 0.0f;
  VEC bias_vec[NVEC];
#pragma unroll
  for (int v = 0; v < NVEC; ++v) bias_vec[v] = VLOAD(bias_v + v * VW);
  const int vector_rows = DTYPE != 2 && d_c == 1 && cols == NWI;
#pragma unroll
  for (int i = 0; i < MWI; ++i) {
    if (py[i] < 0) break;  // past `pixels`
    __global elem_t* row = dst + dst_off + pn_[i] * d_n + py[i] * d_h + px[i] * d_w + (g * dst_c + col0) * d_c;
#if DTYPE != 2 && VW > 1
    if (vector_rows) {
#pragma unroll
      for (int v = 0; v < NVEC; ++v) {
#if DTYPE == 0
        CAT(vstore, VW)(acc[i][v] + bias_vec[v], v, row);
#else
        CAT(CAT(vstore_half, VW), _rte)(acc[i][v] + bias_vec[v], v, row);
#endif
      }
      continue;
    }
#endif
    float vals[NWI];
#pragma unroll
    for (int v = 0; v < NVEC; ++v) {
#if VW == 1
      vals[v] = acc[i][v] + bias_vec[v];
#else
      CAT(vstore, VW)(acc[i][v] + bias_vec[v], v, vals);
#endif
    }
    for (int j = 0; j < cols; ++j) store_elem(row, j * d_c, vals[j]);
  }
}

// ------------------------------------------------------------------ grad weight
// Packed panels over the reduction u = (n, p, q) (UP = pixels rounded up, zero padded):
//   A: [group][panel of MWI k's][UP][MWI]      dO[n, g * kg + k, p, q]
//   B: [group][panel of NWI j's][UP][NWI]      j = (r * S + s) * cg + c:  in[n, g * cg + c, y, x] or 0
// Work-item (u, panel, group) writes one reduction index of one panel.
__kernel void pack_rows(const __global elem_t* g_out, long g_off, long g_n, long g_k, long g_h, long g_w, long out_h,
                        long out_w, long pixels, long up, long kg, __global float* dst, long panels) {
  const long u = get_global_id(0), pm = get_global_id(1), grp = get_global_id(2);
  if (u >= up || pm >= panels) return;
  __global float* out = dst + ((grp * panels + pm) * up + u) * MWI;
  if (u >= pixels) {
    for (int i = 0; i < MWI; ++i) out[i] = 0.0f;
    return;
  }
  const long q = u % out_w, t = u / out_w;
  const __global elem_t* src = g_out + g_off + (t / out_h) * g_n + (t % out_h) * g_h + q * g_w + grp * kg * g_k;
  for (int i = 0; i < MWI; ++i) {
    const long k = pm * MWI + i;
    out[i] = k < kg ? load_elem(src, k * g_k) : 0.0f;
  }
}

__kernel void pack_im2col(const __global elem_t* in, long in_off, long s_n, long s_c, long s_h, long s_w, long in_h,
                          long in_w, long out_h, long out_w, long pixels, long up, long cg, long taps_s, long cols,
                          long stride_h, long stride_w, long pad_h, long pad_w, long dil_h, long dil_w,
                          __global float* dst, long panels) {
  const long u = get_global_id(0), pn = get_global_id(1), grp = get_global_id(2);
  if (u >= up || pn >= panels) return;
  __global float* out = dst + ((grp * panels + pn) * up + u) * NWI;
  if (u >= pixels) {
    for (int j = 0; j < NWI; ++j) out[j] = 0.0f;
    return;
  }
  const long q = u % out_w, t = u / out_w, p = t % out_h;
  const __global elem_t* src = in + in_off + (t / out_h) * s_n + grp * cg * s_c;
  for (int j = 0; j < NWI; ++j) {
    const long col = pn * NWI + j;
    float v = 0.0f;
    if (col < cols) {
      const long tap = col / cg, c = col - tap * cg;
      const long r = tap / taps_s, s = tap - r * taps_s;
      const long y = source_coord(p, r, stride_h, pad_h, dil_h, in_h, 0);
      const long x = y < 0 ? -1 : source_coord(q, s, stride_w, pad_w, dil_w, in_w, 0);
      if (x >= 0) v = load_elem(src, c * s_c + y * s_h + x * s_w);
    }
    out[j] = v;
  }
}

// dW[g * kg + k, c, r, s] for rows k (A panels) and columns j = (r * S + s) * cg + c (B panels).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_tiles(const __global float* ap, const __global float* bp, long up, long panels_m, long panels_n,
                __global elem_t* dw, long w_off, long w_k, long w_c, long w_r, long w_s, long kg, long cg,
                long taps_s, long cols) {
  const long pm = get_global_id(0), pn = get_global_id(1), grp = get_global_id(2);
  VEC acc[MWI][NVEC];
#pragma unroll
  for (int i = 0; i < MWI; ++i)
#pragma unroll
    for (int v = 0; v < NVEC; ++v) acc[i][v] = (VEC)(0.0f);
  const __global float* a_panel = ap + (grp * panels_m + pm) * up * MWI;
  const __global float* b_panel = bp + (grp * panels_n + pn) * up * NWI;
  for (long u = 0; u < up; ++u) {
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
  const long row0 = pm * MWI, col0 = pn * NWI;
  if (row0 >= kg || col0 >= cols) return;
  long col_off[NWI];
#pragma unroll
  for (int j = 0; j < NWI; ++j) {
    const long col = min(col0 + j, cols - 1);
    const long tap = col / cg, c = col - tap * cg;
    const long r = tap / taps_s, s = tap - r * taps_s;
    col_off[j] = c * w_c + r * w_r + s * w_s;
  }
  const int ncols = (int)min((long)NWI, cols - col0);
#pragma unroll
  for (int i = 0; i < MWI; ++i) {
    const long k = row0 + i;
    if (k >= kg) break;
    float vals[NWI];
#pragma unroll
    for (int v = 0; v < NVEC; ++v) {
#if VW == 1
      vals[v] = acc[i][v];
#else
      CAT(vstore, VW)(acc[i][v], v, vals);
#endif
    }
    __global elem_t* row = dw + w_off + (grp * kg + k) * w_k;
    for (int j = 0; j < ncols; ++j) store_elem(row, col_off[j], vals[j]);
  }
}

// grad bias: dB[k] = sum over (n, p, q) of dO, f32 in a fixed order. One work-item per k.
__kernel void bias_sums(const __global elem_t* g_out, long g_off, long g_n, long g_k, long g_h, long g_w, long batch,
                        long out_h, long out_w, long channels, __global elem_t* db, long db_off, long db_stride) {
  const long k = get_global_id(0);
  if (k >= channels) return;
  float sum = 0.0f;
  const __global elem_t* src = g_out + g_off + k * g_k;
  for (long n = 0; n < batch; ++n)
    for (long p = 0; p < out_h; ++p)
      for (long q = 0; q < out_w; ++q) sum += load_elem(src, n * g_n + p * g_h + q * g_w);
  store_elem(db, db_off + k * db_stride, sum);
}
