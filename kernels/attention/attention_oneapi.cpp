// Attention forward and backward composed of oneDNN primitives (CPU engine).
//
// oneDNN 3.2 (the PyPI CPU build anvil uses) has no fused SDPA: its graph API returns
// MatMul -> Multiply -> SoftMax -> MatMul as three partitions. So a block of query rows at
// a time is computed with materialised scores, in f32:
//   forward   S = scale * Q K^T  (matmul, alpha)      S += mask     (binary add)
//             P = softmax(S)     (softmax, in place)  O = P V       (matmul)
//   backward  P as above; dP = dO V^T; dS = P * (dP - rowsum(P * dP))  (softmax backward)
//             dQ = scale * dS K;  dV += P^T dO;  dK += scale * dS^T Q  (matmul, sum post-op)
// Blocks are (batch entries, query rows) chosen so that S, (nb, H, qb, Lk) in f32, stays
// within score_budget(). Causal calls take blocks of at most kCausalRows query rows and
// give each only the keys its last row attends (j < i0 + qb), skipping the masked half. Heads are split (kv head, group) so that GQA/MQA read the kv head
// in place (a broadcast dim of the matmul). Boolean masks become an additive f32 mask built
// once per call; causal masking is written into each block's scores. A fully masked row gets out = 0 and lse = -inf,
// as in the reference; lse = max - log(P[argmax]) reuses the softmax's normalisation.
// f16/bf16 operands are converted to f32 once; f32 operands are read in place.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <utility>
#include <vector>

#include "dispatch/kernel_record.h"
#include "kernels/attention/attention_desc.h"
#include "kernels/common/cpu_elements.h"
#include "kernels/common/primitives_oneapi.h"

namespace anvil::oneapi_attention {
namespace {

using oneapi::Operand;

// Bytes of f32 scores per block: 64 MiB, or ANVIL_ONEAPI_SCORE_BUDGET (tests set it tiny
// to walk the blocked paths on small shapes).
int64_t score_budget() {
  static const int64_t budget = [] {
    const char* env = std::getenv("ANVIL_ONEAPI_SCORE_BUDGET");
    const int64_t v = env ? std::atoll(env) : 0;
    return v > 0 ? v : int64_t(64) << 20;
  }();
  return budget;
}
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kCausalRows = 256;  // causal query block: past it, keys beyond the block's diagonal are skipped

// A (B, heads, L, D) tensor as f32: the caller's view when it is f32, else a converted copy.
Status as_f32(const TensorRef& t, oneapi::Workspace& ws, Operand* out) {
  *out = oneapi::operand_of(t);
  if (t.dtype == DType::f32) return Status::Ok();
  const Operand wide = oneapi::dense(DType::f32, out->dims, ws.get<float>(t.numel()));
  ANVIL_RETURN_IF_ERROR(oneapi::reorder(*out, wide));
  *out = wide;
  return Status::Ok();
}

// An f32 output: the caller's view when it is f32, else a workspace written back by finish().
struct F32Output {
  TensorRef user;
  Operand f32;
  F32Output(const TensorRef& t, oneapi::Workspace& ws) : user(t), f32(oneapi::operand_of(t)) {
    if (t.dtype != DType::f32) f32 = oneapi::dense(DType::f32, f32.dims, ws.get<float>(t.numel()));
  }
  Status finish() const {
    return user.dtype == DType::f32 ? Status::Ok() : oneapi::reorder(f32, oneapi::operand_of(user));
  }
};

// Rows [i0, i0 + rows) of batch entries [b0, b0 + nb) of a (B, H, L, D) tensor as
// (nb, Hkv, G, rows, D): query head h = kv head * G + g.
Operand query_side(const Operand& t, int64_t b0, int64_t nb, int64_t i0, int64_t rows, int64_t group) {
  const auto& s = t.strides;
  Operand v{t.dtype, {nb, t.dims[1] / group, group, rows, t.dims[3]}, {s[0], s[1] * group, s[1], s[2], s[3]},
            static_cast<char*>(t.data) + (b0 * s[0] + i0 * s[2]) * int64_t(dtype_size(t.dtype))};
  return v;
}

// Keys [0, keys) of batch entries [b0, b0 + nb) of a (B, Hkv, L, D) tensor as
// (nb, Hkv, 1, keys, D), or (nb, Hkv, 1, D, keys) transposed: one kv head serves the G
// query heads of its group.
Operand kv_side(const Operand& t, int64_t b0, int64_t nb, int64_t keys, bool transposed = false) {
  const auto& s = t.strides;
  Operand v{t.dtype, {nb, t.dims[1], 1, keys, t.dims[3]}, {s[0], s[1], 0, s[2], s[3]},
            static_cast<char*>(t.data) + b0 * s[0] * int64_t(dtype_size(t.dtype))};
  if (transposed) {
    std::swap(v.dims[3], v.dims[4]);
    std::swap(v.strides[3], v.strides[4]);
  }
  return v;
}

Operand transposed_last(Operand v) {
  std::swap(v.dims[v.dims.size() - 1], v.dims[v.dims.size() - 2]);
  std::swap(v.strides[v.strides.size() - 1], v.strides[v.strides.size() - 2]);
  return v;
}

// Fixes g of a 5-D (nb, Hkv, G, rows, D) view: (nb, Hkv, rows, D).
Operand group_slice(const Operand& v, int64_t g) {
  return Operand{v.dtype, {v.dims[0], v.dims[1], v.dims[3], v.dims[4]}, {v.strides[0], v.strides[1], v.strides[3], v.strides[4]},
                 static_cast<char*>(v.data) + g * v.strides[2] * int64_t(dtype_size(v.dtype))};
}

// The additive mask of a call, f32 (Bm, Hm, Lq, Lk) with Bm, Hm 1 where it broadcasts;
// empty without a mask (causal is applied per block, see probabilities()).
struct AdditiveMask {
  std::vector<float> values;
  int64_t batches = 1, heads = 1;
};

AdditiveMask additive_mask(const std::optional<TensorRef>& mask, const attention_desc::Shape& s) {
  AdditiveMask m;
  if (!mask) return m;
  const std::array<int64_t, 4> st = attention_desc::mask_strides(*mask);
  m.batches = st[0] ? s.batch : 1;
  m.heads = st[1] ? s.heads : 1;
  m.values.resize(size_t(m.batches * m.heads * s.seq_q * s.seq_k));
  float* out = m.values.data();
  for (int64_t b = 0; b < m.batches; ++b)
    for (int64_t h = 0; h < m.heads; ++h)
      for (int64_t i = 0; i < s.seq_q; ++i)
        for (int64_t j = 0; j < s.seq_k; ++j, ++out) {
          const int64_t at = b * st[0] + h * st[1] + i * st[2] + j * st[3];
          *out = mask->dtype == DType::boolean ? (mask->ptr<const uint8_t>()[at] ? 0.0f : kNegInf)
                                               : cpu_elements::load(*mask, at);
        }
  return m;
}

// The block of scores and what is needed to walk blocks.
struct Problem {
  attention_desc::Shape s;
  double scale;
  bool causal;
  AdditiveMask mask;
  int64_t batch_block, row_block;

  // Keys that rows [i0, i0 + qb) attend: all, or for causal up to the block's diagonal.
  int64_t keys_for(int64_t i0, int64_t qb) const { return causal ? std::min(s.seq_k, i0 + qb) : s.seq_k; }
};

Problem problem_of(const TensorRef& q, const TensorRef& k, const TensorRef& v, const std::optional<TensorRef>& mask,
                   bool causal, const std::optional<double>& scale) {
  Problem p{attention_desc::shape_of(q, k, v), 0.0, causal, {}, 1, 1};
  p.scale = attention_desc::scale_of(scale, p.s.head_dim);
  p.mask = additive_mask(mask, p.s);
  const int64_t row_bytes = p.s.heads * std::max<int64_t>(p.s.seq_k, 1) * int64_t(sizeof(float));
  const int64_t max_rows = causal ? std::min<int64_t>(p.s.seq_q, kCausalRows) : p.s.seq_q;
  if (max_rows == p.s.seq_q && p.s.batch * p.s.seq_q * row_bytes <= score_budget()) {
    p.batch_block = p.s.batch;
    p.row_block = p.s.seq_q;
  } else {
    p.row_block = std::clamp<int64_t>(score_budget() / row_bytes, 1, std::max<int64_t>(max_rows, 1));
  }
  return p;
}

// P = softmax(scale * Q K^T + mask) for one block, into probs (nb, Hkv, G, qb, keys) dense
// (keys = p.keys_for(i0, qb)); row_max receives each row's max score (-inf: fully masked,
// its P row is zero).
Status probabilities(const Problem& p, const Operand& q, const Operand& k, int64_t b0, int64_t nb, int64_t i0,
                     int64_t qb, const Operand& probs, std::vector<float>& row_max, std::vector<int64_t>& row_argmax) {
  const auto& s = p.s;
  const int64_t keys = p.keys_for(i0, qb);
  if (s.head_dim > 0) {
    ANVIL_RETURN_IF_ERROR(oneapi::matmul(query_side(q, b0, nb, i0, qb, s.group()), kv_side(k, b0, nb, keys, true),
                                         probs, {p.scale, 0.0, std::nullopt}));
  } else {
    ANVIL_RETURN_IF_ERROR(oneapi::fill_zero(probs));
  }
  if (!p.mask.values.empty()) {
    const int64_t plane = s.seq_q * s.seq_k;
    const bool per_batch = p.mask.batches > 1, per_head = p.mask.heads > 1;
    const Operand mask{DType::f32,
                       {per_batch ? nb : 1, per_head ? s.kv_heads : 1, per_head ? s.group() : 1, qb, keys},
                       {p.mask.heads * plane, s.group() * plane, plane, s.seq_k, 1},
                       const_cast<float*>(p.mask.values.data()) + (per_batch ? b0 * p.mask.heads * plane : 0) +
                           i0 * s.seq_k};
    ANVIL_RETURN_IF_ERROR(oneapi::add(probs, mask, probs));
  }
  const int64_t rows = probs.numel() / keys;
  float* scores = static_cast<float*>(probs.data);
  if (p.causal) {  // row i0 + i attends keys j <= i0 + i: mask the tail of each row in the block
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t first_masked = i0 + r % qb + 1;
      if (first_masked < keys) std::fill(scores + r * keys + first_masked, scores + (r + 1) * keys, kNegInf);
    }
  }
  row_max.resize(size_t(rows));
  row_argmax.resize(size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = scores + r * keys;
    int64_t at = 0;
    for (int64_t j = 1; j < keys; ++j)
      if (row[j] > row[at]) at = j;
    row_max[size_t(r)] = row[at];
    row_argmax[size_t(r)] = at;
  }
  ANVIL_RETURN_IF_ERROR(oneapi::softmax(probs, probs));
  for (int64_t r = 0; r < rows; ++r)
    if (row_max[size_t(r)] == kNegInf) std::fill_n(scores + r * keys, keys, 0.0f);  // softmax gave NaN
  return Status::Ok();
}

Status can_implement(const AttentionArgs&) { return oneapi::available(); }
Status can_implement_backward(const AttentionBackwardArgs&) { return oneapi::available(); }

// ------------------------------------------------------------------ forward
Status forward(const AttentionArgs& args) {
  Problem p = problem_of(args.q, args.k, args.v, args.mask, args.causal, args.scale);
  const auto& s = p.s;
  if (s.batch == 0 || s.heads == 0 || s.seq_q == 0) return Status::Ok();
  oneapi::Workspace ws;
  F32Output out(args.out, ws);
  const auto write_lse = [&](int64_t b, int64_t h, int64_t i, float value) {
    if (args.lse) args.lse->ptr<float>()[b * args.lse->strides[0] + h * args.lse->strides[1] + i * args.lse->strides[2]] = value;
  };
  if (s.seq_k == 0) {  // every row is fully masked
    ANVIL_RETURN_IF_ERROR(oneapi::fill_zero(out.f32));
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h)
        for (int64_t i = 0; i < s.seq_q; ++i) write_lse(b, h, i, kNegInf);
    return out.finish();
  }
  Operand q, k, v;
  ANVIL_RETURN_IF_ERROR(as_f32(args.q, ws, &q));
  ANVIL_RETURN_IF_ERROR(as_f32(args.k, ws, &k));
  ANVIL_RETURN_IF_ERROR(as_f32(args.v, ws, &v));
  float* probs_storage = ws.get<float>(p.batch_block * s.heads * p.row_block * s.seq_k);
  std::vector<float> row_max;
  std::vector<int64_t> row_argmax;
  for (int64_t b0 = 0; b0 < s.batch; b0 += p.batch_block)
    for (int64_t i0 = 0; i0 < s.seq_q; i0 += p.row_block) {
      const int64_t nb = std::min(p.batch_block, s.batch - b0), qb = std::min(p.row_block, s.seq_q - i0);
      const int64_t keys = p.keys_for(i0, qb);
      const Operand probs = oneapi::dense(DType::f32, {nb, s.kv_heads, s.group(), qb, keys}, probs_storage);
      ANVIL_RETURN_IF_ERROR(probabilities(p, q, k, b0, nb, i0, qb, probs, row_max, row_argmax));
      ANVIL_RETURN_IF_ERROR(
          oneapi::matmul(probs, kv_side(v, b0, nb, keys), query_side(out.f32, b0, nb, i0, qb, s.group())));
      for (int64_t b = 0, r = 0; b < nb; ++b)
        for (int64_t h = 0; h < s.heads; ++h)
          for (int64_t i = 0; i < qb; ++i, ++r) {
            const float m = row_max[size_t(r)];
            const float at_max = probs_storage[r * keys + row_argmax[size_t(r)]];
            write_lse(b0 + b, h, i0 + i, m == kNegInf ? kNegInf : m - std::log(at_max));
          }
    }
  return out.finish();
}

// ------------------------------------------------------------------ backward
Status backward(const AttentionBackwardArgs& args) {
  Problem p = problem_of(args.q, args.k, args.v, args.mask, args.causal, args.scale);
  const auto& s = p.s;
  oneapi::Workspace ws;
  F32Output grad_q(args.grad_q, ws);
  // dK and dV sum over query rows and the heads of a group: f32 accumulators.
  const Operand dk = oneapi::dense(DType::f32, {s.batch, s.kv_heads, s.seq_k, s.head_dim},
                                   ws.get<float>(s.batch * s.kv_heads * s.seq_k * s.head_dim));
  const Operand dv = oneapi::dense(DType::f32, {s.batch, s.kv_heads, s.seq_k, s.value_dim},
                                   ws.get<float>(s.batch * s.kv_heads * s.seq_k * s.value_dim));
  // dK and dV accumulate from zero: a causal block leaves the keys past its diagonal alone.
  ANVIL_RETURN_IF_ERROR(oneapi::fill_zero(dk));
  ANVIL_RETURN_IF_ERROR(oneapi::fill_zero(dv));
  const bool empty = s.batch == 0 || s.heads == 0 || s.seq_q == 0 || s.seq_k == 0;
  if (empty) {  // sums over nothing
    ANVIL_RETURN_IF_ERROR(oneapi::fill_zero(grad_q.f32));
  } else {
    Operand q, k, v, grad_out;
    ANVIL_RETURN_IF_ERROR(as_f32(args.q, ws, &q));
    ANVIL_RETURN_IF_ERROR(as_f32(args.k, ws, &k));
    ANVIL_RETURN_IF_ERROR(as_f32(args.v, ws, &v));
    ANVIL_RETURN_IF_ERROR(as_f32(args.grad_out, ws, &grad_out));
    const int64_t block = p.batch_block * s.heads * p.row_block * s.seq_k;
    float* probs_storage = ws.get<float>(block);
    float* grad_storage = ws.get<float>(block);
    std::vector<float> row_max;
    std::vector<int64_t> row_argmax;
    const int64_t G = s.group();
    for (int64_t b0 = 0; b0 < s.batch; b0 += p.batch_block)
      for (int64_t i0 = 0; i0 < s.seq_q; i0 += p.row_block) {
        const int64_t nb = std::min(p.batch_block, s.batch - b0), qb = std::min(p.row_block, s.seq_q - i0);
        const int64_t keys = p.keys_for(i0, qb);
        const oneapi::Dims dims = {nb, s.kv_heads, G, qb, keys};
        const Operand probs = oneapi::dense(DType::f32, dims, probs_storage);
        const Operand grad = oneapi::dense(DType::f32, dims, grad_storage);
        ANVIL_RETURN_IF_ERROR(probabilities(p, q, k, b0, nb, i0, qb, probs, row_max, row_argmax));
        const Operand d_out = query_side(grad_out, b0, nb, i0, qb, G);
        ANVIL_RETURN_IF_ERROR(oneapi::matmul(d_out, kv_side(v, b0, nb, keys, true), grad));  // dP
        ANVIL_RETURN_IF_ERROR(oneapi::softmax_backward(probs, grad, grad));                   // dS
        ANVIL_RETURN_IF_ERROR(oneapi::matmul(grad, kv_side(k, b0, nb, keys),
                                             query_side(grad_q.f32, b0, nb, i0, qb, G), {p.scale, 0.0, std::nullopt}));
        const Operand q_blk = query_side(q, b0, nb, i0, qb, G);
        const Operand dk_blk = group_slice(kv_side(dk, b0, nb, keys), 0);
        const Operand dv_blk = group_slice(kv_side(dv, b0, nb, keys), 0);
        for (int64_t g = 0; g < G; ++g) {
          ANVIL_RETURN_IF_ERROR(oneapi::matmul(transposed_last(group_slice(probs, g)), group_slice(d_out, g), dv_blk,
                                               {1.0, 1.0, std::nullopt}));
          ANVIL_RETURN_IF_ERROR(oneapi::matmul(transposed_last(group_slice(grad, g)), group_slice(q_blk, g), dk_blk,
                                               {p.scale, 1.0, std::nullopt}));
        }
      }
  }
  ANVIL_RETURN_IF_ERROR(grad_q.finish());
  if (args.grad_k.numel() > 0) ANVIL_RETURN_IF_ERROR(oneapi::reorder(dk, oneapi::operand_of(args.grad_k)));
  if (args.grad_v.numel() > 0) ANVIL_RETURN_IF_ERROR(oneapi::reorder(dv, oneapi::operand_of(args.grad_v)));
  return Status::Ok();
}

// Workspaces may fail to allocate: that is a Status, not an exception.
Status forward_run(const AttentionArgs& args) {
  return oneapi::guarded("attention forward", [&] { return forward(args); });
}
Status backward_run(const AttentionBackwardArgs& args) {
  return oneapi::guarded("attention backward", [&] { return backward(args); });
}

}  // namespace

// Priority 40, below the cpu backend's flash attention (100) and above the reference (0):
// on the bench shapes it is level with it without a mask (0.98-1.1x its speed) and behind
// with causal masking (0.82-0.97x), and it needs memory for the scores (README "oneapi").
void add_attention_kernels(dispatch::KernelTables& tables) {
  constexpr int kPriority = 40;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    tables.add(dispatch::KernelRecord<AttentionArgs>{dispatch::kernel_name(Op::attention, dtype, "oneapi", "composed"),
                                                     "oneapi", dtype, kPriority, &can_implement, &forward_run});
    tables.add(dispatch::KernelRecord<AttentionBackwardArgs>{
        dispatch::kernel_name(Op::attention_backward, dtype, "oneapi", "composed"), "oneapi", dtype, kPriority,
        &can_implement_backward, &backward_run});
  }
}

}  // namespace anvil::oneapi_attention
