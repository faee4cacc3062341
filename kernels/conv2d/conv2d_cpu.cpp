// cpu conv2d: implicit GEMM on the cpu GEMM driver (kernels/gemm/gemm_cpu.h), NHWC.
//
//   forward      C[(n,p,q), k]     = sum_(r,s,c)  In[(n,p,q), (r,s,c)] * W[(r,s,c), k]
//   grad input   dI[(n,h,w), c]    = sum_(r,s,k)  dO[(n,h,w), (r,s,k)] * W[(r,s,k), c]
//   grad weight  dW[k, (r,s,c)]    = sum_(n,p,q)  dO^T[k, (n,p,q)] * In[(n,p,q), (r,s,c)]
// per group. The image operands are never materialised (no im2col buffer): the driver's
// packing gathers their rows straight from the NHWC image, zero where the window hangs
// over the padding; runs along channels are contiguous copies. 1x1 / stride 1 / no
// padding forward is a plain GEMM on the image. Inputs that are not f32 NHWC are converted
// once into f32 NHWC; outputs that are not f32 NHWC are computed in f32 NHWC and written
// back once, rounding once.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backends/cpu/cpu_runtime.h"
#include "kernels/common/cpu_elements.h"
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
bool is_f32_nhwc(const TensorRef& t) { return t.dtype == DType::f32 && layout_of(t) == Layout::nhwc; }

// An image as packed f32 NHWC: the tensor itself when it already is, else a converted copy.
struct NhwcImage {
  std::vector<float> copy;
  const float* data;
  int64_t n, c, h, w;
  explicit NhwcImage(const TensorRef& t) : n(t.shape[0]), c(t.shape[1]), h(t.shape[2]), w(t.shape[3]) {
    if (is_f32_nhwc(t)) {
      data = t.ptr<const float>();
      return;
    }
    copy.resize(size_t(n * h * w * c));
    float* out = copy.data();
    for (int64_t in = 0; in < n; ++in)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
          for (int64_t ch = 0; ch < c; ++ch)
            *out++ = cpu_elements::load(t, in * t.strides[0] + ch * t.strides[1] + y * t.strides[2] + x * t.strides[3]);
    data = copy.data();
  }
};

// An f32 NHWC destination: the output tensor itself when it is f32 NHWC, else a scratch
// image written back (rounded once) by commit().
struct NhwcTarget {
  const TensorRef& t;
  std::vector<float> scratch;
  float* data;
  explicit NhwcTarget(const TensorRef& out) : t(out) {
    if (is_f32_nhwc(out)) {
      data = out.ptr<float>();
      return;
    }
    scratch.resize(size_t(out.numel()));
    data = scratch.data();
  }
  void commit() const {
    if (scratch.empty()) return;
    const int64_t n = t.shape[0], c = t.shape[1], h = t.shape[2], w = t.shape[3];
    const float* in = scratch.data();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
          for (int64_t ch = 0; ch < c; ++ch)
            cpu_elements::store(t, i * t.strides[0] + ch * t.strides[1] + y * t.strides[2] + x * t.strides[3], *in++);
  }
};

// Weight (K, Cg, R, S) of group g as an f32 matrix: rows (r, s, c), columns k (forward
// B) when rows_are_channels, else rows (r, s, k), columns c (grad-input B). Typed loops
// with the destination written in order, one pass over the group's weights.
template <class T>
void pack_weight_typed(const TensorRef& wt, int64_t g, int64_t kg, bool rows_are_channels, float* out) {
  const int64_t cg = wt.shape[1], r_max = wt.shape[2], s_max = wt.shape[3];
  const int64_t sk = wt.strides[0], sc = wt.strides[1], sr = wt.strides[2], ss = wt.strides[3];
  const auto f32 = [](const T* p) {
    if constexpr (std::is_same_v<T, float>) return *p;
    else return to_float(*p);
  };
  // Per filter tap this is a (cg x kg) transpose; 32 x 32 blocks keep both the strided
  // reads and the writes within cache (a plain loop misses on every read for KCRS weights).
  constexpr int64_t kBlock = 32;
  const int64_t rows = rows_are_channels ? cg : kg, cols = rows_are_channels ? kg : cg;
  const int64_t row_stride = rows_are_channels ? sc : sk, col_stride = rows_are_channels ? sk : sc;
  if (rows == 0 || cols == 0) return;  // an empty weight may carry any strides
  const T* base = cpu_elements::advance(wt.ptr<const T>(), g * kg * sk);
  for (int64_t r = 0; r < r_max; ++r)
    for (int64_t s = 0; s < s_max; ++s) {
      const T* tap = cpu_elements::advance(base, r * sr + s * ss);
      float* dst = out + (r * s_max + s) * rows * cols;  // (rows, cols) row-major
      for (int64_t i0 = 0; i0 < rows; i0 += kBlock)
        for (int64_t j0 = 0; j0 < cols; j0 += kBlock)
          for (int64_t i = i0; i < std::min(rows, i0 + kBlock); ++i)
            for (int64_t j = j0; j < std::min(cols, j0 + kBlock); ++j)
              dst[i * cols + j] = f32(tap + i * row_stride + j * col_stride);
    }
}

std::vector<float> pack_weight(const TensorRef& wt, int64_t g, int64_t kg, bool rows_are_channels) {
  std::vector<float> out(size_t(kg * wt.shape[1] * wt.shape[2] * wt.shape[3]));
  switch (wt.dtype) {
    case DType::f16: pack_weight_typed<float16>(wt, g, kg, rows_are_channels, out.data()); break;
    case DType::bf16: pack_weight_typed<bfloat16>(wt, g, kg, rows_are_channels, out.data()); break;
    default: pack_weight_typed<float>(wt, g, kg, rows_are_channels, out.data());
  }
  return out;
}

// ------------------------------------------------------------------ implicit-GEMM gathers
// Row (n, p, q) of the forward image operand: In[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c0 + c]
// over columns (r, s, c), c < cg.
struct WindowGather {
  const float* image;  // NHWC
  int64_t h, w, c;     // image extents
  int64_t c0, cg;      // the group's channels
  int64_t p, q, r, s;  // output extents and filter size
  Conv2dParams prm;

  static void gather(const void* self, int64_t row, int64_t col0, int64_t count, float* dst) {
    const auto& g = *static_cast<const WindowGather*>(self);
    const int64_t n = row / (g.p * g.q), op = row / g.q % g.p, oq = row % g.q;
    int64_t ch = col0 % g.cg, tap = col0 / g.cg;  // tap = r * S + s
    while (count > 0) {
      const int64_t r = tap / g.s, s = tap % g.s;
      const int64_t y = op * g.prm.stride_h - g.prm.pad_h + r * g.prm.dilation_h;
      const int64_t x = oq * g.prm.stride_w - g.prm.pad_w + s * g.prm.dilation_w;
      const int64_t run = std::min(g.cg - ch, count);
      if (y >= 0 && y < g.h && x >= 0 && x < g.w)
        std::memcpy(dst, g.image + ((n * g.h + y) * g.w + x) * g.c + g.c0 + ch, size_t(run) * sizeof(float));
      else
        std::memset(dst, 0, size_t(run) * sizeof(float));
      dst += run;
      count -= run;
      ch = 0;
      ++tap;
    }
  }
};

// Row (n, y, x) of the grad-input operand: dO[n, p, q, k0 + k] over columns (r, s, k) where
// y = p*sh - ph + r*dh (and likewise x) for some output position, else 0.
struct TransposedWindowGather {
  const float* grad;   // NHWC grad_output
  int64_t p, q, k;     // its extents
  int64_t k0, kg;      // the group's output channels
  int64_t h, w, r, s;  // input extents and filter size
  Conv2dParams prm;

  static void gather(const void* self, int64_t row, int64_t col0, int64_t count, float* dst) {
    const auto& g = *static_cast<const TransposedWindowGather*>(self);
    const int64_t n = row / (g.h * g.w), y = row / g.w % g.h, x = row % g.w;
    int64_t kk = col0 % g.kg, tap = col0 / g.kg;
    while (count > 0) {
      const int64_t r = tap / g.s, s = tap % g.s;
      const int64_t num_y = y + g.prm.pad_h - r * g.prm.dilation_h, num_x = x + g.prm.pad_w - s * g.prm.dilation_w;
      const int64_t run = std::min(g.kg - kk, count);
      const bool hit = num_y >= 0 && num_x >= 0 && num_y % g.prm.stride_h == 0 && num_x % g.prm.stride_w == 0 &&
                       num_y / g.prm.stride_h < g.p && num_x / g.prm.stride_w < g.q;
      if (hit)
        std::memcpy(dst, g.grad + ((n * g.p + num_y / g.prm.stride_h) * g.q + num_x / g.prm.stride_w) * g.k + g.k0 + kk,
                    size_t(run) * sizeof(float));
      else
        std::memset(dst, 0, size_t(run) * sizeof(float));
      dst += run;
      count -= run;
      kk = 0;
      ++tap;
    }
  }
};

std::vector<float> bias_f32(const std::optional<TensorRef>& bias, int64_t k) {
  std::vector<float> out;
  if (!bias) return out;
  out.resize(size_t(k));
  for (int64_t i = 0; i < k; ++i) out[size_t(i)] = cpu_elements::load(*bias, i * bias->strides[0]);
  return out;
}

// ------------------------------------------------------------------ ops
Status forward(const Conv2dArgs& args, const MicroKernel& kernel) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const int64_t cg = sh.c_per_group(), kg = sh.k_per_group(), rows = sh.n * sh.p * sh.q;
  const NhwcImage in(args.input);
  NhwcTarget out(args.output);
  const std::vector<float> bias = bias_f32(args.bias, sh.k);
  const Conv2dParams& prm = args.params;
  const bool pointwise = sh.r == 1 && sh.s == 1 && prm.stride_h == 1 && prm.stride_w == 1 && prm.pad_h == 0 &&
                         prm.pad_w == 0;
  for (int64_t g = 0; g < sh.groups; ++g) {
    const std::vector<float> wmat = pack_weight(args.weight, g, kg, true);
    WindowGather window{in.data, sh.h, sh.w, sh.c, g * cg, cg, sh.p, sh.q, sh.r, sh.s, prm};
    Matrix a;
    if (pointwise) {  // the image is the GEMM operand: rows are pixels
      a = Matrix{cpu_elements::advance(in.data, g * cg), DType::f32, sh.c, 1};
    } else {
      a.gather_row = &WindowGather::gather;
      a.gather_ctx = &window;
    }
    const Matrix b{wmat.data(), DType::f32, kg, 1};
    const Output c{cpu_elements::advance(out.data, g * kg), DType::f32, sh.k, rows, kg};
    ANVIL_RETURN_IF_ERROR(cpu_gemm::run({Term{a, b, sh.r * sh.s * cg}}, c, 1.0f, 0.0f,
                                        bias.empty() ? nullptr : bias.data() + g * kg, 1, kernel));
  }
  out.commit();
  return Status::Ok();
}

Status backward(const Conv2dBackwardArgs& args, const MicroKernel& kernel) {
  const auto sh = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const int64_t cg = sh.c_per_group(), kg = sh.k_per_group();
  const NhwcImage grad(args.grad_output);
  const Conv2dParams& prm = args.params;
  if (args.grad_input) {
    NhwcTarget gi(*args.grad_input);
    for (int64_t g = 0; g < sh.groups; ++g) {
      const std::vector<float> wmat = pack_weight(args.weight, g, kg, false);
      TransposedWindowGather window{grad.data, sh.p, sh.q, sh.k, g * kg, kg, sh.h, sh.w, sh.r, sh.s, prm};
      Matrix a;
      a.gather_row = &TransposedWindowGather::gather;
      a.gather_ctx = &window;
      const Matrix b{wmat.data(), DType::f32, cg, 1};
      const Output c{cpu_elements::advance(gi.data, g * cg), DType::f32, sh.c, sh.n * sh.h * sh.w, cg};
      ANVIL_RETURN_IF_ERROR(cpu_gemm::run({Term{a, b, sh.r * sh.s * kg}}, c, 1.0f, 0.0f, nullptr, 0, kernel));
    }
    gi.commit();
  }
  if (args.grad_weight) {
    const NhwcImage in(args.input);
    const TensorRef& gw = *args.grad_weight;
    std::vector<float> dw(size_t(kg * sh.r * sh.s * cg));  // (k, (r, s, c)) of one group
    for (int64_t g = 0; g < sh.groups; ++g) {
      WindowGather window{in.data, sh.h, sh.w, sh.c, g * cg, cg, sh.p, sh.q, sh.r, sh.s, prm};
      const Matrix a{cpu_elements::advance(grad.data, g * kg), DType::f32, 1, sh.k};  // dO^T: (k, (n,p,q))
      Matrix b;
      b.gather_row = &WindowGather::gather;
      b.gather_ctx = &window;
      const Output c{dw.data(), DType::f32, sh.r * sh.s * cg, kg, sh.r * sh.s * cg};
      ANVIL_RETURN_IF_ERROR(cpu_gemm::run({Term{a, b, sh.n * sh.p * sh.q}}, c, 1.0f, 0.0f, nullptr, 0, kernel));
      for (int64_t k = 0; k < kg; ++k)
        for (int64_t r = 0; r < sh.r; ++r)
          for (int64_t s = 0; s < sh.s; ++s)
            for (int64_t c = 0; c < cg; ++c)
              cpu_elements::store(gw, (g * kg + k) * gw.strides[0] + c * gw.strides[1] + r * gw.strides[2] + s * gw.strides[3],
                            dw[size_t(((k * sh.r + r) * sh.s + s) * cg + c)]);
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

template <Isa kIsa> void add_records(dispatch::KernelTables& tables, DType dtype, int priority) {
  const std::string variant = cpu_gemm::isa_name(kIsa);
  tables.add(dispatch::KernelRecord<Conv2dArgs>{dispatch::kernel_name(Op::conv2d, dtype, "cpu", variant), "cpu", dtype,
                                                priority, &forward_can_implement<kIsa>, &forward_run<kIsa>});
  tables.add(dispatch::KernelRecord<Conv2dBackwardArgs>{dispatch::kernel_name(Op::conv2d_backward, dtype, "cpu", variant),
                                                        "cpu", dtype, priority, &backward_can_implement<kIsa>,
                                                        &backward_run<kIsa>});
}

}  // namespace

void add_conv2d_kernels(dispatch::KernelTables& tables) {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    add_records<Isa::avx512>(tables, dtype, 100);
    add_records<Isa::avx2>(tables, dtype, 90);
  }
}

}  // namespace anvil::cpu_conv
