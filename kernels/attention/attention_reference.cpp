// Reference attention and its backward: the oracle. One query row at a time, scores in
// f64 (Acc), exact softmax (no online rescaling), int64 indices, any strides.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention/attention_desc.h"
#include "kernels/common/reference_dtypes.h"
#include "kernels/common/reference_naive.h"

namespace anvil::reference {
namespace {

struct Tensor4 {  // a rank-4 view indexed by logical (b, h, i, e)
  TensorRef t;
  int64_t index(int64_t b, int64_t h, int64_t i, int64_t e) const {
    return b * t.strides[0] + h * t.strides[1] + i * t.strides[2] + e * t.strides[3];
  }
};

// Scaled, masked scores of query row (b, h, i) against every key: the softmax input.
template <class T, class Acc> struct ScoreRow {
  const Tensor4 q, k;
  const std::optional<TensorRef>& mask;
  std::array<int64_t, 4> mask_strides{};
  bool causal;
  Acc scale;
  int64_t head_dim;

  void compute(int64_t b, int64_t h, int64_t kvh, int64_t i, int64_t seq_k, std::vector<Acc>& scores) const {
    for (int64_t j = 0; j < seq_k; ++j) {
      if (causal && j > i) {
        scores[j] = -std::numeric_limits<Acc>::infinity();
        continue;
      }
      Acc dot = 0;
      for (int64_t e = 0; e < head_dim; ++e)
        dot += Acc(load<T>(q.t, q.index(b, h, i, e))) * Acc(load<T>(k.t, k.index(b, kvh, j, e)));
      Acc score = scale * dot;
      if (mask) {
        const int64_t mi = b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3];
        if (mask->dtype == DType::boolean) {
          if (mask->ptr<const uint8_t>()[mi] == 0) score = -std::numeric_limits<Acc>::infinity();
        } else {
          score += Acc(load<T>(*mask, mi));
        }
      }
      scores[j] = score;
    }
  }
};

// Max that propagates NaN (std::max does not).
template <class Acc> inline Acc nan_max(Acc a, Acc b) { return std::isnan(a) || std::isnan(b) ? Acc(NAN) : (a > b ? a : b); }

template <class T, class Acc = double> struct Attention {
  static Status run(const AttentionArgs& args) {
    const auto s = attention_desc::shape_of(args.q, args.k, args.v);
    const ScoreRow<T, Acc> row{{args.q}, {args.k}, args.mask,
                               args.mask ? attention_desc::mask_strides(*args.mask) : std::array<int64_t, 4>{},
                               args.causal, Acc(attention_desc::scale_of(args.scale, s.head_dim)), s.head_dim};
    const Tensor4 v{args.v}, out{args.out};
    std::vector<Acc> scores(size_t(s.seq_k)), acc(size_t(s.value_dim));
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h) {
        const int64_t kvh = h / s.group();
        for (int64_t i = 0; i < s.seq_q; ++i) {
          row.compute(b, h, kvh, i, s.seq_k, scores);
          const Acc neg_inf = -std::numeric_limits<Acc>::infinity();
          Acc max = neg_inf;
          for (Acc x : scores) max = nan_max(max, x);
          std::fill(acc.begin(), acc.end(), Acc(0));
          Acc lse = neg_inf;
          if (max != neg_inf) {  // a fully masked row keeps out = 0 and lse = -inf
            Acc sum = 0;
            for (int64_t j = 0; j < s.seq_k; ++j) {
              const Acc p = std::exp(scores[j] - max);
              sum += p;
              for (int64_t e = 0; e < s.value_dim; ++e) acc[e] += p * Acc(load<T>(v.t, v.index(b, kvh, j, e)));
            }
            for (Acc& x : acc) x /= sum;
            lse = max + std::log(sum);
          }
          for (int64_t e = 0; e < s.value_dim; ++e) store<T>(out.t, out.index(b, h, i, e), acc[e]);
          if (args.lse) {
            const TensorRef& l = *args.lse;
            l.ptr<float>()[b * l.strides[0] + h * l.strides[1] + i * l.strides[2]] = float(lse);
          }
        }
      }
    return Status::Ok();
  }
};

template <class T, class Acc = double> struct AttentionBackward {
  // With P = softmax(S) (recomputed from the saved lse), dO the output gradient:
  //   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
  //   dQ = scale * dS K,  dK = scale * dS^T Q.  GQA sums dK, dV over the query heads.
  static Status run(const AttentionBackwardArgs& args) {
    const auto s = attention_desc::shape_of(args.q, args.k, args.v);
    const Acc scale = Acc(attention_desc::scale_of(args.scale, s.head_dim));
    const ScoreRow<T, Acc> row{{args.q}, {args.k}, args.mask,
                               args.mask ? attention_desc::mask_strides(*args.mask) : std::array<int64_t, 4>{},
                               args.causal, scale, s.head_dim};
    const Tensor4 q{args.q}, k{args.k}, v{args.v}, out{args.out}, dout{args.grad_out};
    const Tensor4 dq{args.grad_q}, dk{args.grad_k}, dv{args.grad_v};
    const TensorRef& lse = args.lse;
    // dK and dV gather contributions from many (h, i): accumulate in f64, store once.
    const size_t kv_elems = size_t(s.batch * s.kv_heads * s.seq_k);
    std::vector<Acc> dk_acc(kv_elems * size_t(s.head_dim)), dv_acc(kv_elems * size_t(s.value_dim));
    std::vector<Acc> scores(size_t(s.seq_k)), dq_row(size_t(s.head_dim));
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h) {
        const int64_t kvh = h / s.group();
        const size_t kv_base = size_t((b * s.kv_heads + kvh) * s.seq_k);
        for (int64_t i = 0; i < s.seq_q; ++i) {
          const Acc row_lse = lse.ptr<const float>()[b * lse.strides[0] + h * lse.strides[1] + i * lse.strides[2]];
          row.compute(b, h, kvh, i, s.seq_k, scores);
          Acc d_row = 0;  // rowsum(dO * O)
          for (int64_t e = 0; e < s.value_dim; ++e)
            d_row += Acc(load<T>(dout.t, dout.index(b, h, i, e))) * Acc(load<T>(out.t, out.index(b, h, i, e)));
          std::fill(dq_row.begin(), dq_row.end(), Acc(0));
          for (int64_t j = 0; j < s.seq_k; ++j) {
            const Acc p = std::isinf(row_lse) && row_lse < 0 ? Acc(0) : std::exp(scores[j] - row_lse);
            Acc dp = 0;
            for (int64_t e = 0; e < s.value_dim; ++e) {
              const Acc go = Acc(load<T>(dout.t, dout.index(b, h, i, e)));
              dp += go * Acc(load<T>(v.t, v.index(b, kvh, j, e)));
              dv_acc[(kv_base + size_t(j)) * size_t(s.value_dim) + size_t(e)] += p * go;
            }
            const Acc ds = p * (dp - d_row);
            for (int64_t e = 0; e < s.head_dim; ++e) {
              dq_row[e] += scale * ds * Acc(load<T>(k.t, k.index(b, kvh, j, e)));
              dk_acc[(kv_base + size_t(j)) * size_t(s.head_dim) + size_t(e)] +=
                  scale * ds * Acc(load<T>(q.t, q.index(b, h, i, e)));
            }
          }
          for (int64_t e = 0; e < s.head_dim; ++e) store<T>(dq.t, dq.index(b, h, i, e), dq_row[e]);
        }
      }
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.kv_heads; ++h)
        for (int64_t j = 0; j < s.seq_k; ++j) {
          const size_t base = size_t((b * s.kv_heads + h) * s.seq_k + j);
          for (int64_t e = 0; e < s.head_dim; ++e)
            store<T>(dk.t, dk.index(b, h, j, e), dk_acc[base * size_t(s.head_dim) + size_t(e)]);
          for (int64_t e = 0; e < s.value_dim; ++e)
            store<T>(dv.t, dv.index(b, h, j, e), dv_acc[base * size_t(s.value_dim) + size_t(e)]);
        }
    return Status::Ok();
  }
};

}  // namespace

void add_attention_kernels(dispatch::KernelTables& tables) {
  add_records<AttentionArgs, Attention>(tables, Op::attention);
  add_records<AttentionBackwardArgs, AttentionBackward>(tables, Op::attention_backward);
}

Status naive_f32(const AttentionArgs& args) { return run_naive<Attention>(args, args.q.dtype); }
Status naive_f32(const AttentionBackwardArgs& args) { return run_naive<AttentionBackward>(args, args.q.dtype); }

}  // namespace anvil::reference
