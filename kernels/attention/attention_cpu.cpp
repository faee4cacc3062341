// cpu attention, forward and backward: flash-style, on the GEMM micro-kernels.
//
// Forward, per (batch, head, block of 3 * NR = 96 query rows), over blocks of 20 * MR =
// 240 keys, with the scores held transposed (keys x queries), so that every operand is in
// a layout the micro-kernel reads without packing it per block:
//   S^T = scale * K Q^T    (A = K, packed once per call into slivers of MR keys;
//                           B = Q^T, packed once per item into slivers of NR queries)
//   mask / causal -> -inf, online softmax down each query column (16 queries a vector)
//   O^T = O^T * corr + V^T P^T   (A = V^T, packed once per call into slivers of MR value
//                                 dims over all keys; B = the block of P^T as computed)
// then out = O / l and lse = m + log l. Causal blocks right of the diagonal are skipped
// (top-left alignment: query i attends keys j <= i, as torch). K and V are packed to f32
// once per (batch, kv head) and shared by the kv head's query heads (GQA/MQA, no copies per
// head). Work items (batch, head, query block) are spread over OpenMP threads.
// The backward keeps rows (queries x keys) and packs its A operands per block.
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_runtime.h"
#include "kernels/common/cpu_elements.h"
#include "dispatch/kernel_record.h"
#include "kernels/attention/attention_desc.h"
#include "kernels/gemm/gemm_cpu.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace anvil::cpu_attention {

void softmax_block_avx512(float* s, int64_t ld, int64_t rows, int64_t cols, float* m, float* l, float* corr);
void softmax_columns_avx512(float* s, int64_t ld, int64_t keys, int64_t lanes, float* m, float* l, float* corr);
void rescale_columns_avx512(float* o, int64_t ld, int64_t rows, int64_t lanes, const float* corr);
void exp_rows_avx512(float* s, int64_t ld, int64_t rows, int64_t cols, const float* shift);

namespace {

using cpu_gemm::MicroKernel;
using cpu_gemm::Tile;

// Backward blocks (queries x keys).
constexpr int64_t kBlockQ = 96;   // query rows per work item: 8 slivers of MR = 12
constexpr int64_t kBlockK = 256;  // keys per softmax block; S is (96, 256) f32 = 96 KiB (L2)
// Forward blocks, in micro-kernel tiles: 3 query tiles of NR, 20 key slivers of MR
// (96 x 240 scores in f32 = 90 KiB, L2).
constexpr int64_t kQueryTiles = 3;
constexpr int64_t kKeySlivers = 20;

// Row `base` of t's last dim (count elements) as f32: in place when t is f32 with unit
// stride there, else converted into tmp.
const float* f32_row(const TensorRef& t, int64_t base, int64_t count, float* tmp) {
  if (t.dtype == DType::f32 && (t.strides[3] == 1 || count <= 1)) return t.ptr<const float>() + base;
  for (int64_t x = 0; x < count; ++x) tmp[x] = cpu_elements::load(t, base + x * t.strides[3]);
  return tmp;
}

// The forward's K and V for every (batch, kv head), packed once per call as micro-kernel
// A slivers: K in slivers of MR keys, (E, MR) each, and V^T in slivers of MR value dims
// over all keys, (Lk, MR) each. A block of keys starting at a multiple of MR is a
// contiguous run of K slivers, and a contiguous range of every V^T sliver. The lanes past
// Lk or Ev are never read (tiles there have fewer rows), so they are left unwritten.
// Held in the calling thread's cpu scratch (slots 0 and 1, the GEMM's packing buffers,
// which the attention does not otherwise use): no allocation or page faults per call.
struct ForwardKv {
  int64_t e, ev, lk, mr, key_slivers, dim_slivers;
  float* k = nullptr;
  float* vt = nullptr;

  ForwardKv(const TensorRef& kref, const TensorRef& vref, const attention_desc::Shape& sh, int64_t mr_, int threads)
      : e(sh.head_dim), ev(sh.value_dim), lk(sh.seq_k), mr(mr_), key_slivers((lk + mr - 1) / mr),
        dim_slivers((ev + mr - 1) / mr) {
    const int64_t heads = sh.batch * sh.kv_heads;
    k = static_cast<float*>(cpu::scratch(size_t(heads * key_slivers * e * mr) * sizeof(float), 0));
    vt = static_cast<float*>(cpu::scratch(size_t(heads * dim_slivers * lk * mr) * sizeof(float), 1));
    if (!k || !vt) return;
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> tmp(size_t(std::max(e, ev)));
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < heads; ++bh) {
        const int64_t b = bh / sh.kv_heads, h = bh % sh.kv_heads;
        float* kdst = k + bh * key_slivers * e * mr;
        float* vdst = vt + bh * dim_slivers * lk * mr;
        for (int64_t j = 0; j < lk; ++j) {
          const float* krow = f32_row(kref, b * kref.strides[0] + h * kref.strides[1] + j * kref.strides[2], e, tmp.data());
          float* kj = kdst + (j / mr) * e * mr + j % mr;
          for (int64_t x = 0; x < e; ++x) kj[x * mr] = krow[x];
          const float* vrow = f32_row(vref, b * vref.strides[0] + h * vref.strides[1] + j * vref.strides[2], ev, tmp.data());
          for (int64_t ds = 0; ds < dim_slivers; ++ds) {
            float* vj = vdst + (ds * lk + j) * mr;
            const int64_t dims = std::min(mr, ev - ds * mr);
            for (int64_t d = 0; d < dims; ++d) vj[d] = vrow[ds * mr + d];
          }
        }
      }
    }
  }
  bool ok() const { return k && vt; }
  // The K slivers of keys k0 .. (k0 a multiple of MR), and sliver `s` of V^T from key k0.
  const float* k_at(int64_t bh, int64_t k0) const { return k + (bh * key_slivers + k0 / mr) * e * mr; }
  const float* vt_at(int64_t bh, int64_t s, int64_t k0) const { return vt + ((bh * dim_slivers + s) * lk + k0) * mr; }
};

// Packs rows [0, rows) x [0, depth) of a row-major f32 matrix (row stride ld) into micro-
// kernel A slivers: sliver s holds (depth, MR) with rows s*MR .., zero-padded.
void pack_a(const float* src, int64_t ld, int64_t rows, int64_t depth, int64_t mr, float* dst) {
  for (int64_t s = 0; s * mr < rows; ++s)
    for (int64_t k = 0; k < depth; ++k)
      for (int64_t i = 0; i < mr; ++i) {
        const int64_t row = s * mr + i;
        *dst++ = row < rows ? src[row * ld + k] : 0.0f;
      }
}

// Like pack_a for A = src^T: A(row, k) = src[k * ld + row].
void pack_a_transposed(const float* src, int64_t ld, int64_t rows, int64_t depth, int64_t mr, float* dst) {
  for (int64_t s = 0; s * mr < rows; ++s)
    for (int64_t k = 0; k < depth; ++k)
      for (int64_t i = 0; i < mr; ++i) {
        const int64_t row = s * mr + i;
        *dst++ = row < rows ? src[k * ld + row] : 0.0f;
      }
}

// C (rows x cols, ldc) = alpha * A B + beta * C over micro-kernel tiles; A packed by
// pack_a with `depth` columns, B row-major f32 with row stride ldb (streamed, unpacked).
void tiles(const MicroKernel& mk, const float* a_packed, int64_t rows, int64_t depth, const float* b, int64_t ldb,
           int64_t cols, float* c, int64_t ldc, float alpha, float beta) {
  for (int64_t ir = 0; ir * mk.mr < rows; ++ir)
    for (int64_t jr = 0; jr * mk.nr < cols; ++jr) {
      Tile t;
      t.kc = depth;
      t.a = a_packed + ir * mk.mr * depth;
      t.b = b + jr * mk.nr;
      t.b_stride = ldb;
      t.b_packed = false;
      t.c = c + ir * mk.mr * ldc + jr * mk.nr;
      t.ldc = ldc;
      t.m = int(std::min<int64_t>(mk.mr, rows - ir * mk.mr));
      t.n = int(std::min<int64_t>(mk.nr, cols - jr * mk.nr));
      t.alpha = alpha;
      t.beta = beta;
      t.bias = nullptr;
      mk.run(t);
    }
}

// Scores of query rows q0 .. q0 + rows (head h of batch b) against keys k0 .. k0 + cols:
// causal entries (j > i) and false boolean-mask entries become -inf, an additive mask is
// added. s has row stride ld.
struct Masking {
  const std::optional<TensorRef>& mask;
  std::array<int64_t, 4> strides;
  bool causal;

  Masking(const std::optional<TensorRef>& m, bool is_causal)
      : mask(m), strides(m ? attention_desc::mask_strides(*m) : std::array<int64_t, 4>{}), causal(is_causal) {}

  // The same for scores stored transposed: s has `keys` rows (keys k0 ..) of `lanes`
  // query columns (queries q0 ..), row stride ld.
  void apply_transposed(float* s, int64_t ld, int64_t b, int64_t h, int64_t q0, int64_t lanes, int64_t k0,
                        int64_t keys) const {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    if (causal && k0 + keys > q0 + 1)
      for (int64_t r = 0; r < keys; ++r)  // key k0 + r is masked for queries before it
        for (int64_t i = 0; i < std::min(lanes, k0 + r - q0); ++i) s[r * ld + i] = neg_inf;
    if (!mask) return;
    const TensorRef& mt = *mask;
    for (int64_t r = 0; r < keys; ++r) {
      const int64_t base = b * strides[0] + h * strides[1] + (k0 + r) * strides[3];
      float* srow = s + r * ld;
      for (int64_t i = 0; i < lanes; ++i) {
        const int64_t at = base + (q0 + i) * strides[2];
        if (mt.dtype == DType::boolean) {
          if (!mt.ptr<const uint8_t>()[at]) srow[i] = neg_inf;
        } else {
          srow[i] += cpu_elements::load(mt, at);
        }
      }
    }
  }

  void apply(float* s, int64_t ld, int64_t b, int64_t h, int64_t q0, int64_t rows, int64_t k0, int64_t cols) const {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    if (causal && k0 + cols > q0)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = std::max(q0 + i + 1, k0); j < k0 + cols; ++j) s[i * ld + j - k0] = neg_inf;
    if (!mask) return;
    const TensorRef& mt = *mask;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t base = b * strides[0] + h * strides[1] + (q0 + i) * strides[2];
      float* srow = s + i * ld;
      if (mt.dtype == DType::boolean) {
        const uint8_t* mp = mt.ptr<const uint8_t>() + base;
        for (int64_t j = 0; j < cols; ++j)
          if (!mp[(k0 + j) * strides[3]]) srow[j] = neg_inf;
      } else {
        for (int64_t j = 0; j < cols; ++j) srow[j] += cpu_elements::load(mt, base + (k0 + j) * strides[3]);
      }
    }
  }
};

// K and V of every (batch, kv head) in f32, in the layouts the micro-kernels stream:
// K^T (E, Lk) and V (Lk, Ev) for the forward; the backward also needs K (Lk, E) and
// V^T (Ev, Lk). Packed once per call and shared by the kv head's query heads.
struct PackedKv {
  int64_t e, ev, lk;
  std::vector<float> kt, v, k, vt;

  PackedKv(const TensorRef& kref, const TensorRef& vref, const attention_desc::Shape& sh, bool backward, int threads)
      : e(sh.head_dim), ev(sh.value_dim), lk(sh.seq_k) {
    const int64_t heads = sh.batch * sh.kv_heads;
    kt.resize(size_t(heads * e * lk));
    v.resize(size_t(heads * lk * ev));
    if (backward) {
      k.resize(kt.size());
      vt.resize(v.size());
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t bh = 0; bh < heads; ++bh) {
      const int64_t b = bh / sh.kv_heads, h = bh % sh.kv_heads;
      for (int64_t j = 0; j < lk; ++j) {
        const int64_t kbase = b * kref.strides[0] + h * kref.strides[1] + j * kref.strides[2];
        for (int64_t x = 0; x < e; ++x) {
          const float val = cpu_elements::load(kref, kbase + x * kref.strides[3]);
          kt[size_t((bh * e + x) * lk + j)] = val;
          if (backward) k[size_t((bh * lk + j) * e + x)] = val;
        }
        const int64_t vbase = b * vref.strides[0] + h * vref.strides[1] + j * vref.strides[2];
        for (int64_t x = 0; x < ev; ++x) {
          const float val = cpu_elements::load(vref, vbase + x * vref.strides[3]);
          v[size_t((bh * lk + j) * ev + x)] = val;
          if (backward) vt[size_t((bh * ev + x) * lk + j)] = val;
        }
      }
    }
  }
  const float* kt_of(int64_t bh) const { return kt.data() + bh * e * lk; }
  const float* v_of(int64_t bh) const { return v.data() + bh * lk * ev; }
  const float* k_of(int64_t bh) const { return k.data() + bh * lk * e; }
  const float* vt_of(int64_t bh) const { return vt.data() + bh * ev * lk; }
};

// Rows q0 .. q0 + rows of a (B, H, L, D) tensor at (b, h), as row-major f32 (rows, D).
void load_rows(const TensorRef& t, int64_t b, int64_t h, int64_t q0, int64_t rows, float* dst) {
  const int64_t d = t.shape[3];
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t base = b * t.strides[0] + h * t.strides[1] + (q0 + i) * t.strides[2];
    for (int64_t x = 0; x < d; ++x) dst[i * d + x] = cpu_elements::load(t, base + x * t.strides[3]);
  }
}

Status forward(const AttentionArgs& args) {
  const auto sh = attention_desc::shape_of(args.q, args.k, args.v);
  const float scale = float(attention_desc::scale_of(args.scale, sh.head_dim));
  const MicroKernel& mk = *cpu_gemm::micro_kernel_f32_avx512();
  const int64_t E = sh.head_dim, Ev = sh.value_dim, Lk = sh.seq_k, Lq = sh.seq_q, mr = mk.mr, nr = mk.nr;
  const int64_t block_q = kQueryTiles * nr, block_k = kKeySlivers * mr;
  const Masking masking(args.mask, args.causal);
  const int threads = cpu::threads_for_call();
  const ForwardKv kv(args.k, args.v, sh, mr, threads);
  if (!kv.ok()) return {StatusCode::out_of_memory, "cpu attention: cannot allocate the packed K and V"};

  const int64_t q_blocks = (Lq + block_q - 1) / block_q;
  const int64_t items = sh.batch * sh.heads * q_blocks;
  const int64_t dim_slivers = kv.dim_slivers;
  const float neg_inf = -std::numeric_limits<float>::infinity();
#pragma omp parallel num_threads(threads)
  {
    // Per query tile t (NR queries): Q^T as a B sliver (E, NR), the scores S^T (block_k,
    // NR) and the output O^T (Ev, NR), each row-major with row stride NR.
    std::vector<float> qt(static_cast<size_t>(kQueryTiles * E * nr)), st(static_cast<size_t>(kQueryTiles * block_k * nr)),
        ot(static_cast<size_t>(kQueryTiles * Ev * nr)), tmp(static_cast<size_t>(E));
    std::vector<float> m(static_cast<size_t>(block_q)), l(static_cast<size_t>(block_q)),
        corr(static_cast<size_t>(block_q));
    const auto tile = [&](const float* a, int64_t kc, const float* b, float* c, int64_t rows, int64_t cols, float alpha,
                          float beta) {
      Tile t;
      t.kc = kc;
      t.a = a;
      t.b = b;
      t.b_stride = nr;
      t.b_packed = true;
      t.c = c;
      t.ldc = nr;
      t.m = int(rows);
      t.n = int(cols);
      t.alpha = alpha;
      t.beta = beta;
      t.bias = nullptr;
      mk.run(t);
    };
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / (sh.heads * q_blocks), h = item / q_blocks % sh.heads, qb = item % q_blocks;
      const int64_t bh_kv = b * sh.kv_heads + h / sh.group(), q0 = qb * block_q, rows = std::min(block_q, Lq - q0);
      const int64_t query_tiles = (rows + nr - 1) / nr;
      std::fill(qt.begin(), qt.end(), 0.0f);
      for (int64_t i = 0; i < rows; ++i) {
        const float* qrow = f32_row(args.q, b * args.q.strides[0] + h * args.q.strides[1] + (q0 + i) * args.q.strides[2],
                                    E, tmp.data());
        float* dst = qt.data() + (i / nr) * E * nr + i % nr;
        for (int64_t x = 0; x < E; ++x) dst[x * nr] = qrow[x];
      }
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(ot.begin(), ot.end(), 0.0f);
      const int64_t k_end = args.causal ? std::min(Lk, q0 + rows) : Lk;  // later keys are masked for every row
      for (int64_t k0 = 0; k0 < k_end; k0 += block_k) {
        const int64_t keys = std::min(block_k, k_end - k0);
        for (int64_t qt_i = 0; qt_i < query_tiles; ++qt_i) {
          const int64_t lanes = std::min(nr, rows - qt_i * nr), lane0 = qt_i * nr;
          float* s = st.data() + qt_i * block_k * nr;
          for (int64_t ks = 0; ks * mr < keys; ++ks)
            tile(kv.k_at(bh_kv, k0) + ks * E * mr, E, qt.data() + qt_i * E * nr, s + ks * mr * nr,
                 std::min(mr, keys - ks * mr), lanes, scale, 0.0f);
          masking.apply_transposed(s, nr, b, h, q0 + lane0, lanes, k0, keys);
          softmax_columns_avx512(s, nr, keys, lanes, m.data() + lane0, l.data() + lane0, corr.data() + lane0);
          float* o = ot.data() + qt_i * Ev * nr;
          rescale_columns_avx512(o, nr, Ev, lanes, corr.data() + lane0);
          for (int64_t ds = 0; ds < dim_slivers; ++ds)
            tile(kv.vt_at(bh_kv, ds, k0), keys, s, o + ds * mr * nr, std::min(mr, Ev - ds * mr), lanes, 1.0f, 1.0f);
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        const bool empty = l[size_t(i)] == 0.0f && !std::isnan(m[size_t(i)]);  // fully masked: out = 0
        const float inv = empty ? 0.0f : 1.0f / l[size_t(i)];
        const float* o = ot.data() + (i / nr) * Ev * nr + i % nr;
        const int64_t base = b * args.out.strides[0] + h * args.out.strides[1] + (q0 + i) * args.out.strides[2];
        if (args.out.dtype == DType::f32) {
          float* dst = args.out.ptr<float>() + base;
          for (int64_t e = 0; e < Ev; ++e) dst[e * args.out.strides[3]] = o[e * nr] * inv;
        } else {
          for (int64_t e = 0; e < Ev; ++e) cpu_elements::store(args.out, base + e * args.out.strides[3], o[e * nr] * inv);
        }
        if (args.lse) {
          const TensorRef& lt = *args.lse;
          lt.ptr<float>()[b * lt.strides[0] + h * lt.strides[1] + (q0 + i) * lt.strides[2]] =
              empty ? neg_inf : m[size_t(i)] + std::log(l[size_t(i)]);
        }
      }
    }
  }
  return Status::Ok();
}

// Backward (FlashAttention-2 order): work items are (batch, kv head, key block), so each
// owns its rows of dK and dV; for every query head of the kv head's group and every query
// block that can see the key block:
//   P  = exp(scale Q K^T (masked) - lse)        dV += P^T dO
//   dP = dO V^T      dS = scale P (dP - D)      dK += dS^T Q      dQ += dS K
// with D = rowsum(dO * O). dQ rows are shared between items: each thread accumulates its
// own copy, summed at the end.
Status backward(const AttentionBackwardArgs& args) {
  const auto sh = attention_desc::shape_of(args.q, args.k, args.v);
  const float scale = float(attention_desc::scale_of(args.scale, sh.head_dim));
  const MicroKernel& mk = *cpu_gemm::micro_kernel_f32_avx512();
  const int64_t E = sh.head_dim, Ev = sh.value_dim, Lk = sh.seq_k, Lq = sh.seq_q;
  const Masking masking(args.mask, args.causal);
  const int threads = cpu::threads_for_call();
  const PackedKv kv(args.k, args.v, sh, true, threads);

  // D = rowsum(dO * O) per query row, and the saved lse, as (B*H, Lq).
  const int64_t q_rows = sh.batch * sh.heads * Lq;
  std::vector<float> d(static_cast<size_t>(q_rows)), lse(static_cast<size_t>(q_rows));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < q_rows; ++r) {
    const int64_t b = r / (sh.heads * Lq), h = r / Lq % sh.heads, i = r % Lq;
    double acc = 0;
    for (int64_t e = 0; e < Ev; ++e)
      acc += double(cpu_elements::load(args.grad_out, b * args.grad_out.strides[0] + h * args.grad_out.strides[1] +
                                                          i * args.grad_out.strides[2] + e * args.grad_out.strides[3])) *
             double(cpu_elements::load(args.out, b * args.out.strides[0] + h * args.out.strides[1] +
                                                     i * args.out.strides[2] + e * args.out.strides[3]));
    d[size_t(r)] = float(acc);
    lse[size_t(r)] = args.lse.ptr<const float>()[b * args.lse.strides[0] + h * args.lse.strides[1] + i * args.lse.strides[2]];
  }

  const int64_t k_blocks = (Lk + kBlockK - 1) / kBlockK;
  const int64_t items = sh.batch * sh.kv_heads * k_blocks;
  std::vector<std::vector<float>> dq_partial(static_cast<size_t>(threads));
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    std::vector<float>& dq = dq_partial[size_t(omp_get_thread_num())];
#else
    std::vector<float>& dq = dq_partial[0];
#endif
    dq.assign(size_t(q_rows * E), 0.0f);
    const int64_t q_slivers = (kBlockQ + mk.mr - 1) / mk.mr, k_slivers = (kBlockK + mk.mr - 1) / mk.mr;
    const int64_t depth = std::max(std::max(E, Ev), kBlockK);
    std::vector<float> q(size_t(kBlockQ * E)), go(size_t(kBlockQ * Ev));
    std::vector<float> p(size_t(kBlockQ * kBlockK)), dp(size_t(kBlockQ * kBlockK));
    std::vector<float> a_rows(size_t(std::max(q_slivers, k_slivers) * mk.mr * depth));
    std::vector<float> dk(size_t(kBlockK * E)), dv(size_t(kBlockK * Ev));
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / (sh.kv_heads * k_blocks), kvh = item / k_blocks % sh.kv_heads, kb = item % k_blocks;
      const int64_t bh_kv = b * sh.kv_heads + kvh, k0 = kb * kBlockK, cols = std::min(kBlockK, Lk - k0);
      std::fill(dk.begin(), dk.end(), 0.0f);
      std::fill(dv.begin(), dv.end(), 0.0f);
      for (int64_t h = kvh * sh.group(); h < (kvh + 1) * sh.group(); ++h)
        for (int64_t q0 = args.causal ? k0 / kBlockQ * kBlockQ : 0; q0 < Lq; q0 += kBlockQ) {  // causal: rows >= k0
          const int64_t rows = std::min(kBlockQ, Lq - q0), row0 = (b * sh.heads + h) * Lq + q0;
          load_rows(args.q, b, h, q0, rows, q.data());
          load_rows(args.grad_out, b, h, q0, rows, go.data());
          // P = exp(scale Q K^T (masked) - lse)
          pack_a(q.data(), E, rows, E, mk.mr, a_rows.data());
          tiles(mk, a_rows.data(), rows, E, kv.kt_of(bh_kv) + k0, Lk, cols, p.data(), kBlockK, scale, 0.0f);
          masking.apply(p.data(), kBlockK, b, h, q0, rows, k0, cols);
          exp_rows_avx512(p.data(), kBlockK, rows, cols, lse.data() + row0);
          // dV += P^T dO
          pack_a_transposed(p.data(), kBlockK, cols, rows, mk.mr, a_rows.data());
          tiles(mk, a_rows.data(), cols, rows, go.data(), Ev, Ev, dv.data(), Ev, 1.0f, 1.0f);
          // dP = dO V^T;  dS = scale P (dP - D), kept in dp
          pack_a(go.data(), Ev, rows, Ev, mk.mr, a_rows.data());
          tiles(mk, a_rows.data(), rows, Ev, kv.vt_of(bh_kv) + k0, Lk, cols, dp.data(), kBlockK, 1.0f, 0.0f);
          for (int64_t i = 0; i < rows; ++i) {
            const float di = d[size_t(row0 + i)];
            float* dsr = dp.data() + i * kBlockK;
            const float* pr = p.data() + i * kBlockK;
            for (int64_t j = 0; j < cols; ++j) dsr[j] = scale * pr[j] * (dsr[j] - di);
          }
          // dK += dS^T Q
          pack_a_transposed(dp.data(), kBlockK, cols, rows, mk.mr, a_rows.data());
          tiles(mk, a_rows.data(), cols, rows, q.data(), E, E, dk.data(), E, 1.0f, 1.0f);
          // dQ += dS K
          pack_a(dp.data(), kBlockK, rows, cols, mk.mr, a_rows.data());
          tiles(mk, a_rows.data(), rows, cols, kv.k_of(bh_kv) + k0 * E, E, E, dq.data() + row0 * E, E, 1.0f, 1.0f);
        }
      for (int64_t j = 0; j < cols; ++j) {
        const TensorRef& gk = args.grad_k;
        const TensorRef& gv = args.grad_v;
        const int64_t kbase = b * gk.strides[0] + kvh * gk.strides[1] + (k0 + j) * gk.strides[2];
        for (int64_t e = 0; e < E; ++e) cpu_elements::store(gk, kbase + e * gk.strides[3], dk[size_t(j * E + e)]);
        const int64_t vbase = b * gv.strides[0] + kvh * gv.strides[1] + (k0 + j) * gv.strides[2];
        for (int64_t e = 0; e < Ev; ++e) cpu_elements::store(gv, vbase + e * gv.strides[3], dv[size_t(j * Ev + e)]);
      }
    }
  }
  // dQ: the sum of the threads' partial copies (rows no key block touched stay 0).
  const TensorRef& gq = args.grad_q;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < q_rows; ++r) {
    const int64_t b = r / (sh.heads * Lq), h = r / Lq % sh.heads, i = r % Lq;
    const int64_t base = b * gq.strides[0] + h * gq.strides[1] + i * gq.strides[2];
    for (int64_t e = 0; e < E; ++e) {
      float sum = 0.0f;
      for (const auto& part : dq_partial)
        if (!part.empty()) sum += part[size_t(r * E + e)];
      cpu_elements::store(gq, base + e * gq.strides[3], sum);
    }
  }
  return Status::Ok();
}

Status can_implement(const AttentionArgs&) { return cpu_gemm::isa_present(cpu_gemm::Isa::avx512); }
Status backward_can_implement(const AttentionBackwardArgs&) { return cpu_gemm::isa_present(cpu_gemm::Isa::avx512); }

}  // namespace

void add_attention_kernels(dispatch::KernelTables& tables) {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    tables.add(dispatch::KernelRecord<AttentionArgs>{dispatch::kernel_name(Op::attention, dtype, "cpu", "avx512"), "cpu",
                                                     dtype, 100, &can_implement, &forward});
    tables.add(dispatch::KernelRecord<AttentionBackwardArgs>{
        dispatch::kernel_name(Op::attention_backward, dtype, "cpu", "avx512"), "cpu", dtype, 100,
        &backward_can_implement, &backward});
  }
}

}  // namespace anvil::cpu_attention
