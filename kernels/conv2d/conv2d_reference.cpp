// Reference conv2d and its backward: the oracle. Direct loops over logical NCHW indices
// (any memory layout through the strides), f64 accumulation, int64 indices.
#include <vector>

#include "kernels/common/reference_dtypes.h"
#include "kernels/common/reference_naive.h"
#include "kernels/conv2d/conv2d_desc.h"

namespace anvil::reference {
namespace {

struct Image {  // a rank-4 view indexed by logical (n, c, h, w)
  TensorRef t;
  int64_t index(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return n * t.strides[0] + c * t.strides[1] + h * t.strides[2] + w * t.strides[3];
  }
};

// Input row (or column) read by output position `out` and filter tap `tap`; may be
// outside [0, extent) where the padding is.
inline int64_t input_coord(int64_t out, int64_t tap, int64_t stride, int64_t pad, int64_t dilation) {
  return out * stride - pad + tap * dilation;
}

template <class T, class Acc = double> struct Conv2d {
  static Status run(const Conv2dArgs& args) {
    const auto s = conv2d_desc::shape_of(args.input, args.weight, args.params);
    const Conv2dParams& p = args.params;
    const Image in{args.input}, w{args.weight}, out{args.output};
    const int64_t cg = s.c_per_group(), kg = s.k_per_group();
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t k = 0; k < s.k; ++k)
        for (int64_t op = 0; op < s.p; ++op)
          for (int64_t oq = 0; oq < s.q; ++oq) {
            const int64_t group = k / kg;
            Acc acc = args.bias ? Acc(load<T>(*args.bias, k * args.bias->strides[0])) : Acc(0);
            for (int64_t c = 0; c < cg; ++c)
              for (int64_t r = 0; r < s.r; ++r) {
                const int64_t h = input_coord(op, r, p.stride_h, p.pad_h, p.dilation_h);
                if (h < 0 || h >= s.h) continue;
                for (int64_t t = 0; t < s.s; ++t) {
                  const int64_t x = input_coord(oq, t, p.stride_w, p.pad_w, p.dilation_w);
                  if (x < 0 || x >= s.w) continue;
                  acc += Acc(load<T>(in.t, in.index(n, group * cg + c, h, x))) * Acc(load<T>(w.t, w.index(k, c, r, t)));
                }
              }
            store<T>(out.t, out.index(n, k, op, oq), acc);
          }
    return Status::Ok();
  }
};

template <class T, class Acc = double> struct Conv2dBackward {
  static Status run(const Conv2dBackwardArgs& args) {
    const auto s = conv2d_desc::shape_of(args.input, args.weight, args.params);
    const Conv2dParams& p = args.params;
    const Image in{args.input}, w{args.weight}, g{args.grad_output};
    const int64_t cg = s.c_per_group(), kg = s.k_per_group();

    if (args.grad_input) {
      // grad_input[n, c, h, x] = sum over (k in c's group, r, t) with an output position
      // (op, oq) that reads (h, x) through tap (r, t).
      const Image gi{*args.grad_input};
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < s.c; ++c)
          for (int64_t h = 0; h < s.h; ++h)
            for (int64_t x = 0; x < s.w; ++x) {
              const int64_t group = c / cg, c_in_group = c % cg;
              Acc acc = 0;
              for (int64_t k = group * kg; k < (group + 1) * kg; ++k)
                for (int64_t r = 0; r < s.r; ++r) {
                  const int64_t num_h = h + p.pad_h - r * p.dilation_h;
                  if (num_h < 0 || num_h % p.stride_h != 0 || num_h / p.stride_h >= s.p) continue;
                  for (int64_t t = 0; t < s.s; ++t) {
                    const int64_t num_w = x + p.pad_w - t * p.dilation_w;
                    if (num_w < 0 || num_w % p.stride_w != 0 || num_w / p.stride_w >= s.q) continue;
                    acc += Acc(load<T>(g.t, g.index(n, k, num_h / p.stride_h, num_w / p.stride_w))) * Acc(load<T>(w.t, w.index(k, c_in_group, r, t)));
                  }
                }
              store<T>(gi.t, gi.index(n, c, h, x), acc);
            }
    }
    if (args.grad_weight) {
      const Image gw{*args.grad_weight};
      for (int64_t k = 0; k < s.k; ++k)
        for (int64_t c = 0; c < cg; ++c)
          for (int64_t r = 0; r < s.r; ++r)
            for (int64_t t = 0; t < s.s; ++t) {
              const int64_t group = k / kg;
              Acc acc = 0;
              for (int64_t n = 0; n < s.n; ++n)
                for (int64_t op = 0; op < s.p; ++op) {
                  const int64_t h = input_coord(op, r, p.stride_h, p.pad_h, p.dilation_h);
                  if (h < 0 || h >= s.h) continue;
                  for (int64_t oq = 0; oq < s.q; ++oq) {
                    const int64_t x = input_coord(oq, t, p.stride_w, p.pad_w, p.dilation_w);
                    if (x < 0 || x >= s.w) continue;
                    acc += Acc(load<T>(g.t, g.index(n, k, op, oq))) * Acc(load<T>(in.t, in.index(n, group * cg + c, h, x)));
                  }
                }
              store<T>(gw.t, gw.index(k, c, r, t), acc);
            }
    }
    if (args.grad_bias) {
      for (int64_t k = 0; k < s.k; ++k) {
        Acc acc = 0;
        for (int64_t n = 0; n < s.n; ++n)
          for (int64_t op = 0; op < s.p; ++op)
            for (int64_t oq = 0; oq < s.q; ++oq) acc += Acc(load<T>(g.t, g.index(n, k, op, oq)));
        store<T>(*args.grad_bias, k * args.grad_bias->strides[0], acc);
      }
    }
    return Status::Ok();
  }
};

}  // namespace

void add_conv2d_kernels(dispatch::KernelTables& tables) {
  add_records<Conv2dArgs, Conv2d>(tables, Op::conv2d);
  add_records<Conv2dBackwardArgs, Conv2dBackward>(tables, Op::conv2d_backward);
}

Status naive_f32(const Conv2dArgs& args) { return run_naive<Conv2d>(args, args.input.dtype); }
Status naive_f32(const Conv2dBackwardArgs& args) { return run_naive<Conv2dBackward>(args, args.input.dtype); }

}  // namespace anvil::reference
