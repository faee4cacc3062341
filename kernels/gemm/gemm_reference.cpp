// Reference GEMM and its backward: the oracle. Naive loops, f64 accumulation, int64
// indices, any strides. Kept obviously correct; speed is not a goal.
#include "kernels/common/reference_dtypes.h"
#include "kernels/common/reference_naive.h"
#include "kernels/gemm/gemm_desc.h"

namespace anvil::reference {
namespace {

// Strides of a (batch?, rows, cols) operand; batch stride 0 broadcasts.
struct MatrixView {
  TensorRef t;
  int64_t batch_stride, row_stride, col_stride;
  explicit MatrixView(const TensorRef& ref)
      : t(ref), batch_stride(gemm_desc::batch_stride(ref)), row_stride(ref.stride(-2)),
        col_stride(ref.stride(-1)) {}
  int64_t index(int64_t b, int64_t row, int64_t col) const {
    return b * batch_stride + row * row_stride + col * col_stride;
  }
};

template <class T, class Acc = double> struct Gemm {
  static Status run(const GemmArgs& args) {
    const auto s = gemm_desc::shape_of(args);
    const MatrixView a(args.a), b(args.b);
    const TensorRef& c = args.c;
    const int64_t c_batch_stride = c.rank == 3 ? c.strides[0] : 0;
    for (int64_t batch = 0; batch < s.batch; ++batch)
      for (int64_t m = 0; m < s.m; ++m)
        for (int64_t n = 0; n < s.n; ++n) {
          Acc acc = 0;
          for (int64_t k = 0; k < s.k; ++k)
            acc += Acc(load<T>(a.t, a.index(batch, m, k))) * Acc(load<T>(b.t, b.index(batch, k, n)));
          const int64_t ci = batch * c_batch_stride + m * c.stride(-2) + n * c.stride(-1);
          Acc out = Acc(args.alpha) * acc;
          if (args.beta != 0.0) out += Acc(args.beta) * Acc(load<T>(c, ci));  // beta == 0: c is not read
          if (args.bias) out += Acc(load<T>(*args.bias, n * args.bias->strides[0]));
          store<T>(c, ci, out);
        }
    return Status::Ok();
  }
};

template <class T, class Acc = double> struct GemmBackward {
  // Batch entries of the output that read batch entry `entry` of an operand with
  // `operand_batch` entries (all of them when it broadcasts).
  static bool reads(int64_t operand_batch, int64_t entry, int64_t batch) {
    return operand_batch == 1 || entry == batch;
  }

  static Status run(const GemmBackwardArgs& args) {
    const auto s = gemm_desc::shape_of(args);
    const MatrixView a(args.a), b(args.b), g(args.grad_c);
    const int64_t g_batch_stride = args.grad_c.rank == 3 ? args.grad_c.strides[0] : 0;
    auto grad_index = [&](int64_t batch, int64_t m, int64_t n) {
      return batch * g_batch_stride + m * g.row_stride + n * g.col_stride;
    };
    if (args.grad_a) {  // grad_a[e] = alpha * sum_{batches reading e} grad_c @ b^T
      const TensorRef& ga = *args.grad_a;
      const int64_t entries = ga.rank == 3 ? ga.shape[0] : 1;
      for (int64_t e = 0; e < entries; ++e)
        for (int64_t m = 0; m < s.m; ++m)
          for (int64_t k = 0; k < s.k; ++k) {
            Acc acc = 0;
            for (int64_t batch = 0; batch < s.batch; ++batch) {
              if (!reads(entries, e, batch)) continue;
              for (int64_t n = 0; n < s.n; ++n)
                acc += Acc(load<T>(g.t, grad_index(batch, m, n))) * Acc(load<T>(b.t, b.index(batch, k, n)));
            }
            const int64_t gb = ga.rank == 3 ? ga.strides[0] : 0;
            store<T>(ga, e * gb + m * ga.stride(-2) + k * ga.stride(-1), Acc(args.alpha) * acc);
          }
    }
    if (args.grad_b) {  // grad_b[e] = alpha * sum_{batches reading e} a^T @ grad_c
      const TensorRef& gb = *args.grad_b;
      const int64_t entries = gb.rank == 3 ? gb.shape[0] : 1;
      for (int64_t e = 0; e < entries; ++e)
        for (int64_t k = 0; k < s.k; ++k)
          for (int64_t n = 0; n < s.n; ++n) {
            Acc acc = 0;
            for (int64_t batch = 0; batch < s.batch; ++batch) {
              if (!reads(entries, e, batch)) continue;
              for (int64_t m = 0; m < s.m; ++m)
                acc += Acc(load<T>(a.t, a.index(batch, m, k))) * Acc(load<T>(g.t, grad_index(batch, m, n)));
            }
            const int64_t bs = gb.rank == 3 ? gb.strides[0] : 0;
            store<T>(gb, e * bs + k * gb.stride(-2) + n * gb.stride(-1), Acc(args.alpha) * acc);
          }
    }
    if (args.grad_bias) {  // the bias is not scaled by alpha
      for (int64_t n = 0; n < s.n; ++n) {
        Acc acc = 0;
        for (int64_t batch = 0; batch < s.batch; ++batch)
          for (int64_t m = 0; m < s.m; ++m) acc += Acc(load<T>(g.t, grad_index(batch, m, n)));
        store<T>(*args.grad_bias, n * args.grad_bias->strides[0], acc);
      }
    }
    return Status::Ok();
  }
};

}  // namespace

void add_gemm_kernels(dispatch::KernelTables& tables) {
  add_records<GemmArgs, Gemm>(tables, Op::gemm);
  add_records<GemmBackwardArgs, GemmBackward>(tables, Op::gemm_backward);
}

Status naive_f32(const GemmArgs& args) { return run_naive<Gemm>(args, args.a.dtype); }
Status naive_f32(const GemmBackwardArgs& args) { return run_naive<GemmBackward>(args, args.a.dtype); }

}  // namespace anvil::reference
