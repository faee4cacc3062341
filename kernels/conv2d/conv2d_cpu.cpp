// cpu conv2d: implicit GEMM on the cpu GEMM driver (kernels/gemm/gemm_cpu.h), NHWC.
//
//   forward      C[(n,p,q), k]     = sum_(r,s,c)  In[(n,p,q), (r,s,c)] * W[(r,s,c), k]
//   grad input   dI[(n,h,w), c]    = sum_(r,s,k)  dO[(n,h,w), (r,s,k)] * W[(r,s,k), c]
//   grad weight  dW[k, (r,s,c)]    = sum_(n,p,q)  dO^T[k, (n,p,q)] * In[(n,p,q), (r,s,c)]
// per group. The image operands are never materialised (no im2col buffer): they are
// matrices in runs along channels, read in place by the micro-kernel through one pointer per
// row and filter tap (a zero run where the window hangs over the padding), or copied from
// the runs when they are B. Inputs that are not f32 NHWC are converted once into f32 NHWC;
// outputs that are not f32 NHWC are computed in f32 NHWC and written back once, rounding once.
#include <emmintrin.h>  // SSE2, part of the x86-64 baseline

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backends/cpu/cpu_runtime.h"
#include "kernels/common/cpu_elements.h"
#include "kernels/common/cpu_transpose.h"
#include "dispatch/kernel_record.h"
#include "kernels/conv2d/conv2d_desc.h"
#include "kernels/gemm/gemm_cpu.h"

namespace anvil::cpu_conv {
namespace {

using cpu_gemm::Matrix;
using cpu_gemm::MicroKernel;
using cpu_gemm::Output;
using cpu_gemm::Term;

// ------------------------------------------------------------------ layouts
template <class T> float to_f32(const T* p) {
  if constexpr (std::is_same_v<T, float>) return *p;
  else return to_float(*p);
}

bool is_f32_nhwc(const TensorRef& t) { return t.dtype == DType::f32 && layout_of(t) == Layout::nhwc; }

// Whether rows k of w hold (r, s, c) densely, in that order (KRSC): the layout of a
// grad-weight GEMM's output rows and the weights-as-A forward's A rows. A dim of extent 1
// may have any stride.
bool krsc_rows(const TensorRef& w, const conv2d_desc::Shape& sh) {
  const int64_t cg = sh.c_per_group();
  return (cg == 1 || w.strides[1] == 1) && (sh.s == 1 || w.strides[3] == cg) &&
         (sh.r == 1 || w.strides[2] == sh.s * cg);
}

// The address of row k of w (null for an empty w).
void* weight_rows(const TensorRef& w, int64_t k) {
  return w.data ? w.ptr<char>() + k * w.strides[0] * int64_t(dtype_size(w.dtype)) : nullptr;
}

// The cpu scratch slots of this file (cpu::scratch; the GEMM driver uses 0-2).
enum ScratchSlot : int { kWeightSlot = 3, kImageSlot = 4, kSecondImageSlot = 5, kTargetSlot = 6, kColumnsSlot = 7 };

// Pixel rows (n, y) of an NCHW-indexed view go to threads; each converts its row.
template <class Row> void for_each_pixel_row(int64_t n, int64_t h, int64_t elements, const Row& row) {
  const int threads = elements < (int64_t(1) << 15) ? 1 : cpu::threads_for_call();
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t in = 0; in < n; ++in)
    for (int64_t y = 0; y < h; ++y) row(in, y);
}

// Row (n, y) of t into dst as f32 NHWC: one copy when it is f32 NHWC already, else
// element by element, along the source's unit-stride dimension when it has one.
template <class T> void load_pixel_row(const TensorRef& t, int64_t in, int64_t y, float* dst) {
  const int64_t c = t.shape[1], w = t.shape[3];
  const T* src = t.ptr<const T>() + in * t.strides[0] + y * t.strides[2];
  if (std::is_same_v<T, float> && t.strides[1] == 1 && t.strides[3] == c) {
    std::memcpy(dst, src, size_t(w * c) * sizeof(float));
  } else if (t.strides[3] == 1) {  // NCHW: read along x
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t x = 0; x < w; ++x) dst[x * c + ch] = to_f32(src + ch * t.strides[1] + x);
  } else {
    for (int64_t x = 0; x < w; ++x)
      for (int64_t ch = 0; ch < c; ++ch) dst[x * c + ch] = to_f32(src + ch * t.strides[1] + x * t.strides[3]);
  }
}

// f32 NHWC row src into row (n, y) of t, rounded once.
template <class T> void store_pixel_row(const TensorRef& t, int64_t in, int64_t y, const float* src) {
  const int64_t c = t.shape[1], w = t.shape[3];
  T* dst = t.ptr<T>() + in * t.strides[0] + y * t.strides[2];
  for (int64_t x = 0; x < w; ++x)
    for (int64_t ch = 0; ch < c; ++ch) {
      const float v = src[x * c + ch];
      T& out = dst[ch * t.strides[1] + x * t.strides[3]];
      if constexpr (std::is_same_v<T, float>) out = v;
      else if constexpr (std::is_same_v<T, float16>) out = to_float16(v);
      else out = to_bfloat16(v);
    }
}

template <class Visit> void visit_dtype(DType dtype, const Visit& visit) {
  switch (dtype) {
    case DType::f16: return visit(float16{});
    case DType::bf16: return visit(bfloat16{});
    default: return visit(float{});
  }
}

// An image as packed f32 NHWC: the tensor itself when it already is and needs no padding,
// else a converted copy in cpu scratch, `pad_left` and `pad_right` zero columns wider.
struct NhwcImage {
  const float* data = nullptr;
  bool ok = true;  // false when the copy cannot be allocated
  int64_t n, c, h, w;  // w: the stored width
  NhwcImage(const TensorRef& t, ScratchSlot slot, int64_t pad_left = 0, int64_t pad_right = 0)
      : n(t.shape[0]), c(t.shape[1]), h(t.shape[2]), w(t.shape[3] + pad_left + pad_right) {
    if (is_f32_nhwc(t) && pad_left == 0 && pad_right == 0) {
      data = t.ptr<const float>();
      return;
    }
    auto* copy = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(n * h * w * c) * sizeof(float), 64), slot));
    ok = copy != nullptr;
    if (!copy) return;
    data = copy;
    if (t.numel() == 0) return;  // nothing to convert (and an empty view may have no data)
    visit_dtype(t.dtype, [&](auto type) {
      using T = decltype(type);
      for_each_pixel_row(n, h, n * h * w * c, [&](int64_t in, int64_t y) {
        float* row = copy + (in * h + y) * w * c;
        std::fill(row, row + pad_left * c, 0.0f);
        load_pixel_row<T>(t, in, y, row + pad_left * c);
        std::fill(row + (w - pad_right) * c, row + w * c, 0.0f);
      });
    });
  }
};

// An f32 NHWC destination: the output tensor itself when it is f32 NHWC, else an image in
// cpu scratch written back (rounded once) by commit().
struct NhwcTarget {
  const TensorRef& t;
  float* data = nullptr;
  bool ok = true;  // false when the scratch cannot be allocated
  bool staged = false;
  explicit NhwcTarget(const TensorRef& out) : t(out) {
    if (is_f32_nhwc(out)) {
      data = out.ptr<float>();
      return;
    }
    staged = true;
    data = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(out.numel()) * sizeof(float), 64), kTargetSlot));
    ok = data != nullptr;
  }
  void commit() const {
    if (!staged || t.numel() == 0) return;
    const int64_t n = t.shape[0], c = t.shape[1], h = t.shape[2], w = t.shape[3];
    visit_dtype(t.dtype, [&](auto type) {
      for_each_pixel_row(n, h, n * h * w * c, [&](int64_t in, int64_t y) {
        store_pixel_row<decltype(type)>(t, in, y, data + (in * h + y) * w * c);
      });
    });
  }
};

constexpr const char* kNoImageScratch = "cpu conv2d: cannot allocate an image copy";

// Weight (K, Cg, R, S) of group g as the GEMM's B, packed as the f32 micro-kernel's slivers
// over all of K (cpu_gemm::Matrix::whole_slivers), so that the driver packs nothing: B rows
// (r, s, c) and columns k (forward) when rows_are_channels, else rows (r, s, k) and
// columns c (grad input). Sliver j holds columns [j*NR, j*NR + NR), NR floats per B row,
// zero past the last column. Work goes to threads by (sliver, tap).
//
// Per tap this is a copy of a (lanes x inner) source: src(l, i) = w[..] at l * col_stride +
// i * inner_stride into dst(i, l). Element by element it is a load and a store per weight
// (res5 3x3: 2.4 M of them, the largest share of the call), so the layouts torch uses get
// block moves:
//   col_stride 1 (grad input from KRSC weights): rows of lanes are contiguous: copies;
//   inner_stride 1 (forward from KRSC weights): cpu_elements::transpose_f32 (4 x 4 SSE
//     transposes);
//   otherwise (KCRS) element by element.
// The block moves above for an f32 tap; false when its strides have none.
bool move_f32_tap(const float* src, int64_t inner_stride, int64_t col_stride, int64_t lanes, int64_t inner, int64_t nr,
                  float* dst) {
  if (inner_stride == 1) {
    cpu_elements::transpose_f32(src, col_stride, lanes, inner, nr, dst);
  } else if (col_stride == 1) {
    for (int64_t i = 0; i < inner; ++i)
      std::memcpy(dst + i * nr, src + i * inner_stride, size_t(lanes) * sizeof(float));
  } else {
    return false;
  }
  return true;
}

// The filter taps (r * S + s) a packed weight holds, in order: all of them, or a subset
// (the taps of one phase of a strided grad input).
struct TapList {
  const std::vector<int64_t>* subset = nullptr;  // null: all taps
  int64_t all = 0;
  int64_t size() const { return subset ? int64_t(subset->size()) : all; }
  int64_t operator[](int64_t i) const { return subset ? (*subset)[size_t(i)] : i; }
};

template <class T>
void pack_weight_typed(const TensorRef& wt, int64_t g, int64_t kg, bool rows_are_channels, const TapList& taps,
                       int64_t nr, float* out) {
  const int64_t cg = wt.shape[1], s_max = wt.shape[3];
  const int64_t sk = wt.strides[0], sc = wt.strides[1], sr = wt.strides[2], ss = wt.strides[3];
  const int64_t inner = rows_are_channels ? cg : kg, cols = rows_are_channels ? kg : cg;
  const int64_t inner_stride = rows_are_channels ? sc : sk, col_stride = rows_are_channels ? sk : sc;
  const int64_t tap_count = taps.size(), rows = tap_count * inner, slivers = (cols + nr - 1) / nr;
  if (rows == 0 || cols == 0) return;  // an empty weight may carry any strides
  const T* base = wt.ptr<const T>() + g * kg * sk;
  const int threads = rows * cols < (int64_t(1) << 16) ? 1 : cpu::threads_for_call();
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t j = 0; j < slivers; ++j)
    for (int64_t t = 0; t < tap_count; ++t) {
      const int64_t lanes = std::min(nr, cols - j * nr), tap = taps[t];
      const T* src = base + (tap / s_max) * sr + (tap % s_max) * ss + j * nr * col_stride;
      float* dst = out + (j * rows + t * inner) * nr;
      bool moved = false;
      if constexpr (std::is_same_v<T, float>)
        moved = move_f32_tap(src, inner_stride, col_stride, lanes, inner, nr, dst);
      if (!moved)
        for (int64_t i = 0; i < inner; ++i)
          for (int64_t l = 0; l < lanes; ++l) dst[i * nr + l] = to_f32(src + i * inner_stride + l * col_stride);
      if (lanes < nr)
        for (int64_t i = 0; i < inner; ++i) std::fill(dst + i * nr + lanes, dst + (i + 1) * nr, 0.0f);
    }
}

// The packed weight of group g (of the given taps; all by default) in the calling thread's
// scratch, or null when it cannot be allocated.
const float* pack_weight(const TensorRef& wt, int64_t g, int64_t kg, bool rows_are_channels, const MicroKernel& kernel,
                         const std::vector<int64_t>* subset = nullptr) {
  const TapList taps{subset, wt.shape[2] * wt.shape[3]};
  const int64_t cols = rows_are_channels ? kg : wt.shape[1], nr = kernel.nr;
  const int64_t floats = (cols + nr - 1) / nr * nr * taps.size() * (rows_are_channels ? wt.shape[1] : kg);
  auto* out = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(floats) * sizeof(float), 64), kWeightSlot));
  if (!out) return nullptr;
  switch (wt.dtype) {
    case DType::f16: pack_weight_typed<float16>(wt, g, kg, rows_are_channels, taps, nr, out); break;
    case DType::bf16: pack_weight_typed<bfloat16>(wt, g, kg, rows_are_channels, taps, nr, out); break;
    default: pack_weight_typed<float>(wt, g, kg, rows_are_channels, taps, nr, out);
  }
  return out;
}

// Weight of group g as the B of grad input by columns (grad_input_by_columns): rows k,
// columns (r, s, c), in whole slivers like pack_weight's; null when it cannot be allocated.
// Used only for groups of few channels, so its weights are small.
const float* pack_weight_columns(const TensorRef& wt, int64_t g, int64_t kg, const MicroKernel& kernel) {
  const int64_t cg = wt.shape[1], s_max = wt.shape[3], width = wt.shape[2] * s_max * cg, nr = kernel.nr;
  const int64_t slivers = (width + nr - 1) / nr;
  auto* out =
      static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(slivers * kg * nr) * sizeof(float), 64), kWeightSlot));
  if (!out) return nullptr;
  for (int64_t j = 0; j < slivers; ++j)
    for (int64_t k = 0; k < kg; ++k)
      for (int64_t l = 0; l < nr; ++l) {
        const int64_t col = j * nr + l, tap = col / cg, c = col % cg;  // width > 0, so cg > 0
        out[(j * kg + k) * nr + l] =
            col < width ? cpu_elements::load(wt, (g * kg + k) * wt.strides[0] + c * wt.strides[1] +
                                                     (tap / s_max) * wt.strides[2] + (tap % s_max) * wt.strides[3])
                        : 0.0f;
      }
  return out;
}

// B of the GEMM packed as whole slivers: a weight, or the windows (pack_windows).
Matrix packed_b(const float* slivers) {
  Matrix m{slivers, DType::f32, 0, 0};
  m.whole_slivers = true;
  return m;
}

constexpr const char* kNoWeightScratch = "cpu conv2d: cannot allocate the packed weight";

// ------------------------------------------------------------------ implicit-GEMM runs
// The image operands are matrices in runs (cpu_gemm::Runs): the micro-kernel reads them in
// place through one pointer per row and run, a run of zeros standing for the padding.

// Row (n, p, q) of the forward image operand: In[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c0 + c]
// over columns (r, s, c), c < cg. One run of cg channels per filter tap (r, s); or, when
// the image is stored padded in W and its runs along (s, c) are contiguous (groups 1,
// dilation_w 1), one run of S * C per filter row r: a 7x7 stem over 3 channels reads 7 runs
// of 21 rather than 49 of 3.
struct ForwardWindows {
  const float* image;       // NHWC, `w` stored columns, column x_origin holding x = 0
  int64_t h, w, c, x_origin;
  int64_t c0;               // the group's first channel
  int64_t p, q, s;          // output extents, filter width
  bool runs_are_filter_rows;
  Conv2dParams prm;
  const float* zeros;       // one run of zeros

  static void locate(const void* self, int64_t first, int64_t count, int64_t row0, int64_t rows, int64_t stride,
                     const float** out) {
    const auto& g = *static_cast<const ForwardWindows*>(self);
    if (g.pixels_are_rows()) {  // one run; no divisions (a tenth of a 1x1 conv over 64 channels)
      for (int64_t i = 0; i < rows; ++i) out[i] = g.image + (row0 + i) * g.c + g.c0;
      return;
    }
    // Rows in chunks: each row's window origin once, then each run's tap offset from it.
    constexpr int64_t kChunk = 16;
    int64_t ys[kChunk], xs[kChunk];
    const float* images[kChunk];
    const int64_t image_rows = row0 / g.q;
    int64_t n = image_rows / g.p, op = image_rows - n * g.p, oq = row0 - image_rows * g.q;
    for (int64_t i0 = 0; i0 < rows; i0 += kChunk) {
      const int64_t chunk = std::min(kChunk, rows - i0);
      for (int64_t i = 0; i < chunk; ++i) {
        ys[i] = op * g.prm.stride_h - g.prm.pad_h;
        xs[i] = oq * g.prm.stride_w - g.prm.pad_w + g.x_origin;
        images[i] = g.image + n * g.h * g.w * g.c + g.c0;
        if (++oq == g.q) {
          oq = 0;
          if (++op == g.p) op = 0, ++n;
        }
      }
      for (int64_t j = 0; j < count; ++j) {
        const int64_t index = first + j;
        const int64_t r = g.runs_are_filter_rows ? index : index / g.s, s = g.runs_are_filter_rows ? 0 : index % g.s;
        const int64_t dy = r * g.prm.dilation_h, dx = s * g.prm.dilation_w;
        const float** run_out = out + j * stride + i0;
        for (int64_t i = 0; i < chunk; ++i) {
          const int64_t y = ys[i] + dy, x = xs[i] + dx;
          run_out[i] = y >= 0 && y < g.h && x >= 0 && x < g.w ? images[i] + (y * g.w + x) * g.c : g.zeros;
        }
      }
    }
  }

  // Row (n, p, q) is input pixel (n, p, q) itself: a 1x1 filter at unit stride, unpadded.
  bool pixels_are_rows() const {
    return p == h && q == w && x_origin == 0 && s == 1 && prm.stride_h == 1 && prm.stride_w == 1 &&
           prm.pad_h == 0 && prm.pad_w == 0;
  }
};

// Row (n, y, x) of the grad-input operand: dO[n, p, q, k0 + k] over columns (r, s, k) where
// y = p*sh - ph + r*dh (and likewise x) for some output position, else 0. One run of kg per
// filter tap.
struct TransposedWindows {
  const float* grad;   // NHWC grad_output
  int64_t p, q, k;     // its extents
  int64_t k0;          // the group's first output channel
  int64_t h, w, s;     // input extents, filter width
  Conv2dParams prm;
  const float* zeros;

  static void locate(const void* self, int64_t first, int64_t count, int64_t row0, int64_t rows, int64_t stride,
                     const float** out) {
    const auto& g = *static_cast<const TransposedWindows*>(self);
    for (int64_t j = 0; j < count; ++j) {
      if (g.prm.stride_h == 1 && g.prm.stride_w == 1) g.locate_rows<true>(first + j, row0, rows, out + j * stride);
      else g.locate_rows<false>(first + j, row0, rows, out + j * stride);
    }
  }

  // kUnitStride: no division by the stride per row (4 integer divisions a row and tap cost
  // a tenth of a res2 3x3 grad input).
  template <bool kUnitStride> void locate_rows(int64_t index, int64_t row0, int64_t rows, const float** out) const {
    const int64_t r = index / s, s_tap = index % s;
    const int64_t sh = kUnitStride ? 1 : prm.stride_h, sw = kUnitStride ? 1 : prm.stride_w;
    int64_t n = row0 / (h * w), y = row0 / w % h, x = row0 % w;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t num_y = y + prm.pad_h - r * prm.dilation_h, num_x = x + prm.pad_w - s_tap * prm.dilation_w;
      const bool hit = num_y >= 0 && num_x >= 0 && num_y % sh == 0 && num_x % sw == 0 && num_y / sh < p && num_x / sw < q;
      out[i] = hit ? grad + ((n * p + num_y / sh) * q + num_x / sw) * k + k0 : zeros;
      if (++x == w) {
        x = 0;
        if (++y == h) y = 0, ++n;
      }
    }
  }
};

template <class Windows> Matrix in_runs(const Windows& windows, int64_t run) {
  Matrix m;
  m.runs = cpu_gemm::Runs{run, &Windows::locate, &windows};
  return m;
}

std::vector<float> bias_f32(const std::optional<TensorRef>& bias, int64_t k) {
  std::vector<float> out;
  if (!bias) return out;
  out.resize(size_t(k));
  for (int64_t i = 0; i < k; ++i) out[size_t(i)] = cpu_elements::load(*bias, i * bias->strides[0]);
  return out;
}

// ------------------------------------------------------------------ ops
// Runs shorter than this (channels per tap) are worth a W-padded copy of the image, which
// joins a filter row's taps into one run (ForwardWindows).
constexpr int64_t kShortRun = 16;

// The image operand of the forward and grad-weight GEMMs: the input as f32 NHWC (W-padded
// when its filter rows are runs), and the windows of group g over it.
struct ImageOperand {
  const conv2d_desc::Shape& sh;
  const Conv2dParams& prm;
  bool filter_row_runs;
  int64_t pad_left, run;
  NhwcImage image;
  std::vector<float> zeros;

  ImageOperand(const TensorRef& input, const conv2d_desc::Shape& shape, const Conv2dParams& params, ScratchSlot slot)
      : sh(shape),
        prm(params),
        filter_row_runs(sh.groups == 1 && prm.dilation_w == 1 && sh.s > 1 && sh.c_per_group() < kShortRun),
        pad_left(filter_row_runs ? prm.pad_w : 0),
        run(filter_row_runs ? sh.s * sh.c_per_group() : sh.c_per_group()),
        image(input, slot, pad_left,
              filter_row_runs ? std::max<int64_t>(0, (sh.q - 1) * prm.stride_w - prm.pad_w + sh.s - sh.w) : 0),
        zeros(static_cast<size_t>(run), 0.0f) {}

  ForwardWindows windows(int64_t g) const {
    return {image.data, sh.h, image.w, sh.c, pad_left, g * sh.c_per_group(), sh.p, sh.q, sh.s, filter_row_runs, prm,
            zeros.data()};
  }
};

// ------------------------------------------------------------------ forward, weights as A
// With few output pixels against many filters (ResNet's last stages at batch 1: 49 pixels,
// 512 to 2048 filters of 4608 or 512 taps), packing the weight as the forward's B costs a
// third of the call: a transposing copy of megabytes for a product that reads each weight
// once. The product then runs transposed,
//   C^T[k, (n,p,q)] = sum_(r,s,c) W[k, (r,s,c)] * In[(n,p,q), (r,s,c)],
// with the weight's rows read in place as A (KRSC rows, i.e. channels_last or 1x1) and the
// image windows packed as B (slivers of NR pixels), which is then the smaller copy by
// kWeightsAsAMinRatio at least; C^T goes to scratch and is transposed into the output.

// The weights are A when the packed windows are at most half the weight (kg >= 2 x the
// pixels rounded up to NR) and the transpose of C^T at most half the weight copy it spares
// (depth >= 2 x those pixels). Measured against the weights-as-B path (2 threads, one
// process, alternating): res5 3x3 1.41x faster at batch 1, 1.12-1.18x at batch 2 and 4; 1x1
// 2048 -> 512 over 7x7 1.3x, 512 -> 2048 1.16x; res4 3x3 stays (256 filters, 224 pixel
// columns); res4 1x1 (1024 filters over 256 channels, 196 pixels) ran 0.82x, which the depth
// rule keeps out.
constexpr int64_t kWeightsAsAMinRatio = 2;

// The forward's image operand of group g, transposed, as B in whole slivers
// (cpu_gemm::Matrix::whole_slivers): rows (r, s, c) in runs of `run`, columns the `pixels`
// output pixels, NR to a sliver (zero past the last pixel). Per (sliver, run) the pixels'
// runs are located by one locate() call and transposed into the sliver's rows in 16 x 16
// blocks. In cpu scratch (the weight's slot: this path packs no weight); null when it
// cannot be allocated.
const float* pack_windows(const ForwardWindows& windows, int64_t run, int64_t runs, int64_t pixels, int64_t nr) {
  const int64_t slivers = (pixels + nr - 1) / nr, depth = run * runs;
  const size_t bytes = std::max<size_t>(size_t(slivers * depth * nr) * sizeof(float), 64);
  auto* out = static_cast<float*>(cpu::scratch(bytes, kWeightSlot));
  if (!out) return nullptr;
  const int threads = slivers * depth * nr < (int64_t(1) << 15) ? 1 : cpu::threads_for_call();
#pragma omp parallel num_threads(threads)
  {
    std::vector<const float*> starts(static_cast<size_t>(nr));
#pragma omp for collapse(2) schedule(static)
    for (int64_t j = 0; j < slivers; ++j)
      for (int64_t t = 0; t < runs; ++t) {
        const int64_t lanes = std::min(nr, pixels - j * nr);
        float* dst = out + (j * depth + t * run) * nr;
        ForwardWindows::locate(&windows, t, 1, j * nr, lanes, lanes, starts.data());
        cpu_elements::transpose_rows_f32(starts.data(), lanes, run, nr, dst);
        if (lanes < nr)
          for (int64_t i = 0; i < run; ++i) std::fill(dst + i * nr + lanes, dst + (i + 1) * nr, 0.0f);
      }
  }
  return out;
}

// Whether the forward runs with the weights as A (see above).
bool weights_as_a(const TensorRef& w, const conv2d_desc::Shape& sh, const MicroKernel& isa_kernel) {
  const int64_t pixels = sh.n * sh.p * sh.q;
  const int64_t nr = cpu_gemm::for_columns(isa_kernel, pixels).nr;
  const int64_t columns = (pixels + nr - 1) / nr * nr, depth = sh.r * sh.s * sh.c_per_group();
  return isa_kernel.reads_rows && w.dtype == DType::f32 && krsc_rows(w, sh) && pixels > 0 &&
         columns * kWeightsAsAMinRatio <= std::min(sh.k_per_group(), depth);
}

// C^T (kg x pixels, row stride pixels) into the NHWC output's columns from `out` on (row
// stride ldo), plus the bias (kg entries, nullable); pixel blocks to threads.
void store_transposed_output(const float* ct, int64_t kg, int64_t pixels, const float* bias, float* out, int64_t ldo) {
  const int threads = kg * pixels < (int64_t(1) << 15) ? 1 : cpu::threads_for_call();
  constexpr int64_t kRows = 16;  // pixels per work item: one 16 x 16 block row of the transpose
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i0 = 0; i0 < pixels; i0 += kRows) {
    const int64_t rows = std::min(kRows, pixels - i0);
    cpu_elements::transpose_f32(ct + i0, pixels, kg, rows, ldo, out + i0 * ldo);
    if (bias)
      for (int64_t i = i0; i < i0 + rows; ++i)
        for (int64_t k = 0; k < kg; ++k) out[i * ldo + k] += bias[k];
  }
}

Status forward_weights_as_a(const Conv2dArgs& args, const conv2d_desc::Shape& sh, const ImageOperand& in,
                            const std::vector<float>& bias, float* out, const MicroKernel& isa_kernel) {
  const int64_t cg = sh.c_per_group(), kg = sh.k_per_group(), pixels = sh.n * sh.p * sh.q;
  const int64_t depth = sh.r * sh.s * cg;
  const MicroKernel& kernel = cpu_gemm::for_columns(isa_kernel, pixels);
  auto* ct = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(kg * pixels) * sizeof(float), 64), kColumnsSlot));
  if (!ct) return {StatusCode::out_of_memory, "cpu conv2d: cannot allocate the transposed output"};
  for (int64_t g = 0; g < sh.groups; ++g) {
    const float* windows = pack_windows(in.windows(g), in.run, depth / in.run, pixels, kernel.nr);
    if (!windows) return {StatusCode::out_of_memory, kNoImageScratch};
    const Matrix a{weight_rows(args.weight, g * kg), DType::f32, args.weight.strides[0], 1};
    ANVIL_RETURN_IF_ERROR(cpu_gemm::run({Term{a, packed_b(windows), depth}}, Output{ct, DType::f32, pixels, kg, pixels},
                                        1.0f, 0.0f, nullptr, 0, kernel));
    store_transposed_output(ct, kg, pixels, bias.empty() ? nullptr : bias.data() + g * kg, out + g * kg, sh.k);
  }
  return Status::Ok();
}

Status forward(const Conv2dArgs& args, const MicroKernel& isa_kernel) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const int64_t cg = sh.c_per_group(), kg = sh.k_per_group(), rows = sh.n * sh.p * sh.q;
  const MicroKernel& kernel = cpu_gemm::for_columns(isa_kernel, kg);
  const ImageOperand in(args.input, sh, args.params, kImageSlot);
  NhwcTarget out(args.output);
  if (!in.image.ok || !out.ok) return {StatusCode::out_of_memory, kNoImageScratch};
  const std::vector<float> bias = bias_f32(args.bias, sh.k);
  if (weights_as_a(args.weight, sh, isa_kernel)) {
    ANVIL_RETURN_IF_ERROR(forward_weights_as_a(args, sh, in, bias, out.data, isa_kernel));
    out.commit();
    return Status::Ok();
  }
  for (int64_t g = 0; g < sh.groups; ++g) {
    const float* wmat = pack_weight(args.weight, g, kg, true, kernel);
    if (!wmat) return {StatusCode::out_of_memory, kNoWeightScratch};
    const ForwardWindows windows = in.windows(g);
    const Output c{cpu_elements::advance(out.data, g * kg), DType::f32, sh.k, rows, kg};
    ANVIL_RETURN_IF_ERROR(cpu_gemm::run({Term{in_runs(windows, in.run), packed_b(wmat), sh.r * sh.s * cg}}, c,
                                        1.0f, 0.0f, bias.empty() ? nullptr : bias.data() + g * kg, 1, kernel));
  }
  out.commit();
  return Status::Ok();
}

// Grad input through columns, for groups of few channels feeding enough outputs (conv1:
// 3 channels, 64 outputs). The transposed-window GEMM would compute 3 live columns of each
// 32-wide tile. Instead, per chunk of output rows, dCol[(p, q), (r, s, c)] = dO W_g is one
// GEMM with R*S*cg columns, and then each input pixel the chunk reaches adds its taps'
// columns: a gather, input rows to threads, so no two threads write one element and the
// sum's order is fixed. Chunks keep dCol near 1 MiB.
bool by_columns(const conv2d_desc::Shape& sh) { return sh.c_per_group() < kShortRun && sh.k_per_group() >= 8; }

// The filter taps that reach each input column x, worked out once per call for the gather
// of grad_input_by_columns (per pixel and tap, the divisions and tests cost 60% of conv1's
// grad input): the taps of column x are offset[start[x] .. start[x + 1]), each the dCol
// offset q * width + s * cg of a tap s and output column q with x = q*sw - pw + s*dw, in
// ascending s (the order of the sums is that of a loop over s).
struct ColumnTaps {
  std::vector<int64_t> start, offset;
  ColumnTaps(const conv2d_desc::Shape& sh, const Conv2dParams& prm, int64_t width) : start(size_t(sh.w) + 1, 0) {
    for (int64_t x = 0; x < sh.w; ++x) {
      for (int64_t s = 0; s < sh.s; ++s) {
        const int64_t num_x = x + prm.pad_w - s * prm.dilation_w;
        if (num_x >= 0 && num_x % prm.stride_w == 0 && num_x / prm.stride_w < sh.q)
          offset.push_back(num_x / prm.stride_w * width + s * sh.c_per_group());
      }
      start[size_t(x) + 1] = int64_t(offset.size());
    }
  }
};

// One input row of the gather: out[x][ch] += the sum of dCol's taps that reach pixel x
// (row taps x column taps, in that order), ch < cg <= 4 * kVectors, row stride c. The taps'
// sum is held in kVectors SSE registers, reading whole vectors past cg (dCol is padded):
// adding into `out` tap by tap chained every add through a store and a load (half the
// gather's time).
template <int kVectors>
void gather_row(const float* dcol, const std::vector<int64_t>& row_taps, const ColumnTaps& column_taps, int64_t w,
                int64_t cg, int64_t c, float* out) {
  for (int64_t x = 0; x < w; ++x, out += c) {
    __m128 sum[kVectors];
    for (auto& v : sum) v = _mm_setzero_ps();
    for (int64_t row_tap : row_taps)
      for (int64_t at = column_taps.start[size_t(x)]; at < column_taps.start[size_t(x) + 1]; ++at) {
        const float* col = dcol + row_tap + column_taps.offset[size_t(at)];
        for (int v = 0; v < kVectors; ++v) sum[v] = _mm_add_ps(sum[v], _mm_loadu_ps(col + 4 * v));
      }
    alignas(16) float lanes[4 * kVectors];
    for (int v = 0; v < kVectors; ++v) _mm_store_ps(lanes + 4 * v, sum[v]);
    for (int64_t ch = 0; ch < cg; ++ch) out[ch] += lanes[ch];
  }
}

Status grad_input_by_columns(const Conv2dBackwardArgs& args, const conv2d_desc::Shape& sh, const NhwcImage& grad,
                             float* gi, const MicroKernel& isa_kernel) {
  const Conv2dParams& prm = args.params;
  const int64_t cg = sh.c_per_group(), kg = sh.k_per_group(), width = sh.r * sh.s * cg;
  const MicroKernel& kernel = cpu_gemm::for_columns(isa_kernel, width);
  std::fill(gi, gi + sh.n * sh.h * sh.w * sh.c, 0.0f);
  if (width == 0 || kg == 0 || sh.p == 0 || sh.q == 0) return Status::Ok();
  const int64_t chunk = std::clamp<int64_t>((int64_t(1) << 18) / (sh.q * width), 1, sh.p);  // output rows
  // (kShortRun floats past the end: gather_row reads whole vectors past a last tap's cg)
  const size_t dcol_bytes = size_t(chunk * sh.q * width + kShortRun) * sizeof(float);
  auto* dcol = static_cast<float*>(cpu::scratch(dcol_bytes, kColumnsSlot));
  if (!dcol) return {StatusCode::out_of_memory, "cpu conv2d: cannot allocate the grad-input columns"};
  const ColumnTaps column_taps(sh, prm, width);
  for (int64_t g = 0; g < sh.groups; ++g) {
    const float* wmat = pack_weight_columns(args.weight, g, kg, kernel);
    if (!wmat) return {StatusCode::out_of_memory, kNoWeightScratch};
    for (int64_t n = 0; n < sh.n; ++n)
      for (int64_t p0 = 0; p0 < sh.p; p0 += chunk) {
        const int64_t p1 = std::min(sh.p, p0 + chunk);
        const Matrix a{grad.data + (n * sh.p + p0) * sh.q * sh.k + g * kg, DType::f32, sh.k, 1};
        const Output c{dcol, DType::f32, width, (p1 - p0) * sh.q, width};
        ANVIL_RETURN_IF_ERROR(cpu_gemm::run({Term{a, packed_b(wmat), kg}}, c, 1.0f, 0.0f, nullptr, 0, kernel));
        const int64_t y0 = std::max<int64_t>(0, p0 * prm.stride_h - prm.pad_h);
        const int64_t y1 = std::min(sh.h, (p1 - 1) * prm.stride_h - prm.pad_h + (sh.r - 1) * prm.dilation_h + 1);
        const int threads = (y1 - y0) * sh.w * width < (int64_t(1) << 15) ? 1 : cpu::threads_for_call();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t y = y0; y < y1; ++y) {
          // The chunk's taps that reach input row y, as dCol offsets (r ascending).
          std::vector<int64_t> row_taps;
          for (int64_t r = 0; r < sh.r; ++r) {
            const int64_t num_y = y + prm.pad_h - r * prm.dilation_h;
            if (num_y >= 0 && num_y % prm.stride_h == 0 && num_y / prm.stride_h >= p0 && num_y / prm.stride_h < p1)
              row_taps.push_back((num_y / prm.stride_h - p0) * sh.q * width + r * sh.s * cg);
          }
          float* out = gi + ((n * sh.h + y) * sh.w) * sh.c + g * cg;
          switch ((cg + 3) / 4) {  // cg < kShortRun: at most 4 vectors
            case 1: gather_row<1>(dcol, row_taps, column_taps, sh.w, cg, sh.c, out); break;
            case 2: gather_row<2>(dcol, row_taps, column_taps, sh.w, cg, sh.c, out); break;
            case 3: gather_row<3>(dcol, row_taps, column_taps, sh.w, cg, sh.c, out); break;
            default: gather_row<4>(dcol, row_taps, column_taps, sh.w, cg, sh.c, out);
          }
        }
      }
  }
  return Status::Ok();
}

// Grad input at a stride above 1, by phases. Input pixel (y, x) receives tap r only where
// y + pad_h - r * dil_h is a multiple of stride_h: which taps depends only on the pixel's
// phase (y mod stride_h, x mod stride_w). The transposed-window GEMM gives every pixel
// every tap, a zero run where it does not reach, so at stride 2 three in four of its runs
// were zeros (a 3x3 stride-2 grad input ran at 0.40x torch, res3's 1x1 projection at
// 0.56x). Per phase, the pixels (ph + stride_h * i, pw + stride_w * j) form an image that
// is a stride-1 correlation of dO with the phase's taps alone:
//   dI[ph + sh*i, pw + sw*j] = sum_(taps (r, s) of the phase) dO[i + dy_r, j + dx_s] W[r, s]
// with dy_r = (ph + pad_h - r * dil_h) / stride_h (a whole number for the phase's taps).
// Each phase is one GEMM into scratch, scattered into its pixels; the pixels of a phase no
// tap reaches (a 1x1 filter's, but for phase (0, 0)) are zero.
struct PhaseWindows {
  const float* grad;          // NHWC grad_output
  int64_t p, q, k, k0;        // its extents, channels, and the group's first channel
  int64_t rows_h, rows_w;     // the phase image's extents
  std::vector<int64_t> dy, dx;  // per run (a tap of the phase): its offset into dO
  const float* zeros;

  static void locate(const void* self, int64_t first, int64_t count, int64_t row0, int64_t rows, int64_t stride,
                     const float** out) {
    const auto& g = *static_cast<const PhaseWindows*>(self);
    int64_t n = row0 / (g.rows_h * g.rows_w), i = row0 / g.rows_w % g.rows_h, j = row0 % g.rows_w;
    for (int64_t row = 0; row < rows; ++row) {
      const float* image = g.grad + n * g.p * g.q * g.k + g.k0;
      for (int64_t run = 0; run < count; ++run) {
        const int64_t y = i + g.dy[size_t(first + run)], x = j + g.dx[size_t(first + run)];
        out[run * stride + row] = y >= 0 && y < g.p && x >= 0 && x < g.q ? image + (y * g.q + x) * g.k : g.zeros;
      }
      if (++j == g.rows_w) {
        j = 0;
        if (++i == g.rows_h) i = 0, ++n;
      }
    }
  }
};

Status grad_input_by_phases(const Conv2dBackwardArgs& args, const conv2d_desc::Shape& sh, const NhwcImage& grad,
                            float* gi, const MicroKernel& isa_kernel) {
  const Conv2dParams& prm = args.params;
  const int64_t cg = sh.c_per_group(), kg = sh.k_per_group();
  const MicroKernel& kernel = cpu_gemm::for_columns(isa_kernel, cg);
  const std::vector<float> zeros(static_cast<size_t>(kg), 0.0f);
  // Per row phase ph, the taps r that reach its rows and their offsets dy; likewise per
  // column phase. A pixel's taps are those of its row phase by those of its column phase.
  struct PhaseTaps {
    std::vector<int64_t> tap, offset;
  };
  const auto phases_of = [](int64_t extent, int64_t taps, int64_t pad, int64_t dilation, int64_t stride) {
    std::vector<PhaseTaps> phases(static_cast<size_t>(std::min(stride, extent)));
    for (int64_t phase = 0; phase < int64_t(phases.size()); ++phase)
      for (int64_t r = 0; r < taps; ++r) {
        const int64_t num = phase + pad - r * dilation;  // may be negative; divided only when exact
        if (num % stride != 0) continue;
        phases[size_t(phase)].tap.push_back(r);
        phases[size_t(phase)].offset.push_back(num / stride);
      }
    return phases;
  };
  const std::vector<PhaseTaps> row_phases = phases_of(sh.h, sh.r, prm.pad_h, prm.dilation_h, prm.stride_h);
  const std::vector<PhaseTaps> column_phases = phases_of(sh.w, sh.s, prm.pad_w, prm.dilation_w, prm.stride_w);
  const auto empty = [](const PhaseTaps& phase) { return phase.tap.empty(); };
  if (std::any_of(row_phases.begin(), row_phases.end(), empty) ||
      std::any_of(column_phases.begin(), column_phases.end(), empty))
    for_each_pixel_row(sh.n, sh.h, sh.n * sh.h * sh.w * sh.c, [&](int64_t in, int64_t y) {
      float* row = gi + (in * sh.h + y) * sh.w * sh.c;
      std::fill(row, row + sh.w * sh.c, 0.0f);
    });
  for (int64_t ph = 0; ph < int64_t(row_phases.size()); ++ph)
    for (int64_t pw = 0; pw < int64_t(column_phases.size()); ++pw) {
      const std::vector<int64_t>& taps_r = row_phases[size_t(ph)].tap;
      const std::vector<int64_t>& dy = row_phases[size_t(ph)].offset;
      const std::vector<int64_t>& taps_s = column_phases[size_t(pw)].tap;
      const std::vector<int64_t>& dx = column_phases[size_t(pw)].offset;
      const int64_t rows_h = (sh.h - ph + prm.stride_h - 1) / prm.stride_h;
      const int64_t rows_w = (sh.w - pw + prm.stride_w - 1) / prm.stride_w, rows = sh.n * rows_h * rows_w;
      if (taps_r.empty() || taps_s.empty() || rows == 0 || cg == 0) continue;
      PhaseWindows windows{grad.data, sh.p, sh.q, sh.k, 0, rows_h, rows_w, {}, {}, zeros.data()};
      std::vector<int64_t> taps;  // (r, s) of the phase, r major: the runs' order and the packed weight's rows
      for (size_t a = 0; a < taps_r.size(); ++a)
        for (size_t b = 0; b < taps_s.size(); ++b) {
          taps.push_back(taps_r[a] * sh.s + taps_s[b]);
          windows.dy.push_back(dy[a]);
          windows.dx.push_back(dx[b]);
        }
      const int64_t depth = int64_t(taps.size()) * kg;
      auto* products = static_cast<float*>(cpu::scratch(size_t(rows * cg) * sizeof(float), kColumnsSlot));
      if (!products) return {StatusCode::out_of_memory, "cpu conv2d: cannot allocate the grad-input products"};
      for (int64_t g = 0; g < sh.groups; ++g) {
        const float* wmat = pack_weight(args.weight, g, kg, false, kernel, &taps);
        if (!wmat) return {StatusCode::out_of_memory, kNoWeightScratch};
        windows.k0 = g * kg;
        const Output c{products, DType::f32, cg, rows, cg};
        ANVIL_RETURN_IF_ERROR(
            cpu_gemm::run({Term{in_runs(windows, kg), packed_b(wmat), depth}}, c, 1.0f, 0.0f, nullptr, 0, kernel));
        for_each_pixel_row(sh.n, rows_h, rows * cg, [&](int64_t in, int64_t i) {
          const float* src = products + (in * rows_h + i) * rows_w * cg;
          float* dst = gi + ((in * sh.h + ph + i * prm.stride_h) * sh.w + pw) * sh.c + g * cg;
          for (int64_t j = 0; j < rows_w; ++j)
            std::memcpy(dst + j * prm.stride_w * sh.c, src + j * cg, size_t(cg) * sizeof(float));
        });
      }
    }
  return Status::Ok();
}

// Grad input as the GEMM of the transposed windows of dO (one run of kg per filter tap)
// with the weight packed as rows (r, s, k), columns c.
Status grad_input_by_windows(const Conv2dBackwardArgs& args, const conv2d_desc::Shape& sh, const NhwcImage& grad,
                             float* gi, const MicroKernel& isa_kernel) {
  const int64_t cg = sh.c_per_group(), kg = sh.k_per_group();
  const MicroKernel& kernel = cpu_gemm::for_columns(isa_kernel, cg);
  const std::vector<float> zeros(static_cast<size_t>(kg), 0.0f);
  for (int64_t g = 0; g < sh.groups; ++g) {
    const float* wmat = pack_weight(args.weight, g, kg, false, kernel);
    if (!wmat) return {StatusCode::out_of_memory, kNoWeightScratch};
    const TransposedWindows windows{grad.data, sh.p, sh.q, sh.k, g * kg, sh.h, sh.w, sh.s, args.params, zeros.data()};
    const Output c{cpu_elements::advance(gi, g * cg), DType::f32, sh.c, sh.n * sh.h * sh.w, cg};
    ANVIL_RETURN_IF_ERROR(cpu_gemm::run({Term{in_runs(windows, kg), packed_b(wmat), sh.r * sh.s * kg}}, c, 1.0f,
                                        0.0f, nullptr, 0, kernel));
  }
  return Status::Ok();
}

// Rows k0 .. k0 + count of w from dw, (count, (r, s, c)) dense in f32: threaded by k, along
// w's (c, r, s) order (KCRS, torch's default weight layout, is then written contiguously).
void store_grad_weight(const float* dw, const TensorRef& w, int64_t k0, int64_t count, const conv2d_desc::Shape& sh) {
  const int64_t cg = sh.c_per_group(), taps = sh.r * sh.s * cg;
  const int threads = count * taps < (int64_t(1) << 15) ? 1 : cpu::threads_for_call();
  const int64_t stride_k = w.strides[0], stride_c = w.strides[1], stride_r = w.strides[2], stride_s = w.strides[3];
  float* const w_f32 = w.dtype == DType::f32 ? w.ptr<float>() : nullptr;  // (locals: stores through it alias nothing)
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t k = 0; k < count; ++k) {
    const float* row = dw + k * taps;
    const int64_t base = (k0 + k) * stride_k;
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t r = 0; r < sh.r; ++r) {
        const float* src = row + r * sh.s * cg + c;  // (r, s, c) at src[s * cg]
        const int64_t at = base + c * stride_c + r * stride_r;
        if (w_f32) {
          for (int64_t s = 0; s < sh.s; ++s) w_f32[at + s * stride_s] = src[s * cg];
        } else {
          for (int64_t s = 0; s < sh.s; ++s) cpu_elements::store(w, at + s * stride_s, src[s * cg]);
        }
      }
  }
}

Status backward(const Conv2dBackwardArgs& args, const MicroKernel& kernel) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const int64_t cg = sh.c_per_group(), kg = sh.k_per_group();
  const NhwcImage grad(args.grad_output, kImageSlot);
  if (!grad.ok) return {StatusCode::out_of_memory, kNoImageScratch};
  const Conv2dParams& prm = args.params;
  if (args.grad_input) {
    NhwcTarget gi(*args.grad_input);
    if (!gi.ok) return {StatusCode::out_of_memory, kNoImageScratch};
    const bool strided = prm.stride_h > 1 || prm.stride_w > 1;
    ANVIL_RETURN_IF_ERROR(by_columns(sh) ? grad_input_by_columns(args, sh, grad, gi.data, kernel)
                          : strided      ? grad_input_by_phases(args, sh, grad, gi.data, kernel)
                                         : grad_input_by_windows(args, sh, grad, gi.data, kernel));
    gi.commit();
  }
  if (args.grad_weight) {
    const ImageOperand in(args.input, sh, prm, kSecondImageSlot);
    if (!in.image.ok) return {StatusCode::out_of_memory, kNoImageScratch};
    const TensorRef& gw = *args.grad_weight;
    const int64_t taps = sh.r * sh.s * cg;  // the (r, s, c) columns of dW
    // The GEMM writes (k, (r, s, c)) rows: straight into gw when its rows are laid out so
    // (KRSC, channels_last weights, any dtype), else into scratch, then copied.
    const bool in_place = krsc_rows(gw, sh);
    float* dw = nullptr;
    if (!in_place) {
      dw = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(kg * taps) * sizeof(float), 64), kColumnsSlot));
      if (!dw) return {StatusCode::out_of_memory, "cpu conv2d: cannot allocate the grad-weight workspace"};
    }
    for (int64_t g = 0; g < sh.groups; ++g) {
      const ForwardWindows windows = in.windows(g);
      const Matrix a{cpu_elements::advance(grad.data, g * kg), DType::f32, 1, sh.k};  // dO^T: (k, (n,p,q))
      const Output c = in_place ? Output{weight_rows(gw, g * kg), gw.dtype, gw.strides[0], kg, taps}
                                : Output{dw, DType::f32, taps, kg, taps};
      ANVIL_RETURN_IF_ERROR(cpu_gemm::run({Term{a, in_runs(windows, in.run), sh.n * sh.p * sh.q}}, c, 1.0f, 0.0f,
                                          nullptr, 0, cpu_gemm::for_columns(kernel, taps)));
      if (!in_place) store_grad_weight(dw, gw, g * kg, kg, sh);
    }
  }
  if (args.grad_bias) {  // a reduction over all output pixels, in f64
    std::vector<double> sums(size_t(sh.k), 0.0);
    const int64_t pixels = sh.n * sh.p * sh.q;
    for (int64_t i = 0; i < pixels; ++i)
      for (int64_t k = 0; k < sh.k; ++k) sums[size_t(k)] += grad.data[i * sh.k + k];
    for (int64_t k = 0; k < sh.k; ++k) cpu_elements::store(*args.grad_bias, k * args.grad_bias->strides[0], float(sums[size_t(k)]));
  }
  return Status::Ok();
}

// ------------------------------------------------------------------ kernel records
using cpu_gemm::Isa;
using cpu_gemm::isa_present;
using cpu_gemm::kernel_for;

template <Isa kIsa> Status forward_can_implement(const Conv2dArgs&) { return isa_present(kIsa); }
template <Isa kIsa> Status forward_run(const Conv2dArgs& args) { return forward(args, *kernel_for(kIsa)); }
template <Isa kIsa> Status backward_can_implement(const Conv2dBackwardArgs&) { return isa_present(kIsa); }
template <Isa kIsa> Status backward_run(const Conv2dBackwardArgs& args) { return backward(args, *kernel_for(kIsa)); }

// Where the forward runs with the weights as A, the cpu kernel ranks above the oneapi
// backend's 120: through torch.ops (2 threads, 2026-11-28) it ran 1.04-1.31x oneDNN's speed
// on res5's 3x3 at batch 1-4, 1.19-1.35x on 1x1 512 -> 2048 over 7x7 at batch 1-2 and
// 1.31-2.2x on 2048 -> 512 (oneDNN reorders the weight on every call, as torch does).
constexpr int kWeightsAsAPriority = 125;

template <Isa kIsa, int kPriority> int forward_priority(const Conv2dArgs& args) {
  const MicroKernel* kernel = kernel_for(kIsa);
  if (!kernel || !conv2d_desc::validate(args).ok()) return kPriority;
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  // (the avx2 variant keeps its distance below the avx512 one)
  return weights_as_a(args.weight, sh, *kernel) ? kWeightsAsAPriority + (kPriority - 100) : kPriority;
}

template <Isa kIsa, int kPriority> void add_records(dispatch::KernelTables& tables, DType dtype) {
  const std::string variant = cpu_gemm::isa_name(kIsa);
  dispatch::KernelRecord<Conv2dArgs> forward_record{dispatch::kernel_name(Op::conv2d, dtype, "cpu", variant), "cpu",
                                                    dtype, kPriority, &forward_can_implement<kIsa>, &forward_run<kIsa>};
  forward_record.priority_for = &forward_priority<kIsa, kPriority>;
  forward_record.runs_here = &cpu_gemm::isa_runs_here<kIsa>;
  tables.add(forward_record);
  dispatch::KernelRecord<Conv2dBackwardArgs> backward_record{
      dispatch::kernel_name(Op::conv2d_backward, dtype, "cpu", variant), "cpu", dtype, kPriority,
      &backward_can_implement<kIsa>, &backward_run<kIsa>};
  backward_record.runs_here = &cpu_gemm::isa_runs_here<kIsa>;
  tables.add(backward_record);
}

}  // namespace

void add_conv2d_kernels(dispatch::KernelTables& tables) {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    add_records<Isa::avx512, 100>(tables, dtype);
    add_records<Isa::avx2, 90>(tables, dtype);
  }
}

}  // namespace anvil::cpu_conv
