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
// The backward (see backward()) packs every operand once per call.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_runtime.h"
#include "kernels/common/cpu_elements.h"
#include "kernels/common/cpu_transpose.h"
#include "dispatch/kernel_record.h"
#include "kernels/attention/attention_desc.h"
#include "kernels/gemm/gemm_cpu.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace anvil::cpu_attention {

void softmax_columns_avx512(float* s, int64_t ld, int64_t keys, int64_t lanes, float* m, float* l, float* corr);
void rescale_columns_avx512(float* o, int64_t ld, int64_t rows, int64_t lanes, const float* corr);
void softmax_grad_rows_avx512(const float* p, float* ds, int64_t ld, int64_t rows, int64_t cols, const float* d, float scale);
void exp_rows_avx512(float* s, int64_t ld, int64_t rows, int64_t cols, const float* shift);

namespace {

using cpu_gemm::MicroKernel;
using cpu_gemm::Tile;

// The (12, 32) f32 tile: the blocks below were tuned on it. The (6, 64) tile, the GEMM's
// default, runs them 1-12% slower (s512-1024, d64-128, 2 threads), and no block size tried
// for it (2-3 query tiles, 20-40 key slivers) did better.
const MicroKernel& attention_kernel() { return *cpu_gemm::micro_kernel_f32_avx512()->narrow; }

// Forward blocks, in micro-kernel tiles: 3 query tiles of NR, 20 key slivers of MR
// (96 x 240 scores in f32 = 90 KiB, L2).
constexpr int64_t kQueryTiles = 3;
constexpr int64_t kKeySlivers = 20;
// Backward blocks: 16 query slivers of MR by 8 key tiles of NR (192 x 256 on AVX-512; P
// and dP are 192 KiB each in f32, L2). The query count is the depth of the dV and dK
// products: at 96 their tiles' loads and stores of C cost a sixth more time per backward
// (s1024 d128 and s512 d64 causal, 2 threads); at 384 the causal diagonal blocks waste more
// than that gains.
constexpr int64_t kBackwardQuerySlivers = 16;
constexpr int64_t kBackwardKeyTiles = 8;

// C (rows x cols, row stride ldc) = alpha * A B + beta * C on one micro-kernel tile: A a
// packed sliver over kc steps, B a packed sliver (row stride NR).
void packed_tile(const MicroKernel& mk, const float* a, int64_t kc, const float* b, float* c, int64_t ldc, int64_t rows,
                 int64_t cols, float alpha, float beta) {
  Tile t;
  t.kc = kc;
  t.a = a;
  t.b = b;
  t.b_stride = mk.nr;
  t.b_packed = true;
  t.c = c;
  t.ldc = ldc;
  t.m = int(rows);
  t.n = int(cols);
  t.alpha = alpha;
  t.beta = beta;
  t.bias = nullptr;
  mk.run(t);
}

// Row `base` of t's last dim (count elements) as f32: in place when t is f32 with unit
// stride there, else converted into tmp.
const float* f32_row(const TensorRef& t, int64_t base, int64_t count, float* tmp) {
  if (t.dtype == DType::f32 && (t.strides[3] == 1 || count <= 1)) return t.ptr<const float>() + base;
  for (int64_t x = 0; x < count; ++x) tmp[x] = cpu_elements::load(t, base + x * t.strides[3]);
  return tmp;
}

// Whether t (batch, heads, rows, dims) is f32 with contiguous rows: then runs of its rows
// are transposed into slivers by block moves (cpu_elements::transpose_f32).
bool contiguous_rows(const TensorRef& t) { return t.dtype == DType::f32 && (t.strides[3] == 1 || t.shape[3] <= 1); }

// Packs a (lanes, depth) matrix into micro-kernel slivers of `width` lanes: sliver s holds
// (depth, width), the value of (lane r, step x) at [s][x][r % width]. With width MR that is
// an A operand (lanes = rows of the product); with width NR a B operand (lanes = columns).
// The source is head (b, h) of t from row row0 on, whose rows are the lanes
// (lanes_are_rows) or the depth steps. Lanes past `lanes` are left as they are (zero in a
// fresh buffer; no tile reads them). tmp holds a row of t as f32.
void pack_slivers(const TensorRef& t, int64_t b, int64_t h, int64_t row0, int64_t lanes, int64_t depth, int64_t width,
                  bool lanes_are_rows, float* dst, float* tmp) {
  const int64_t base = b * t.strides[0] + h * t.strides[1] + row0 * t.strides[2];
  const int64_t count = lanes_are_rows ? depth : lanes;
  const auto row = [&](int64_t i) { return f32_row(t, base + i * t.strides[2], count, tmp); };
  if (lanes_are_rows && contiguous_rows(t)) {
    for (int64_t s = 0; s * width < lanes; ++s)
      cpu_elements::transpose_f32(t.ptr<const float>() + base + s * width * t.strides[2], t.strides[2],
                                  std::min(width, lanes - s * width), depth, width, dst + s * depth * width);
    return;
  }
  if (lanes_are_rows) {
    for (int64_t r = 0; r < lanes; ++r) {
      const float* src = row(r);
      float* d = dst + (r / width) * depth * width + r % width;
      for (int64_t x = 0; x < depth; ++x) d[x * width] = src[x];
    }
    return;
  }
  for (int64_t x = 0; x < depth; ++x) {
    const float* src = row(x);
    for (int64_t s = 0; s * width < lanes; ++s) {
      float* d = dst + (s * depth + x) * width;
      const int64_t n = std::min(width, lanes - s * width);
      for (int64_t r = 0; r < n; ++r) d[r] = src[s * width + r];
    }
  }
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
    // At least one line each: an empty call (no batch, no keys) still gets a valid buffer.
    k = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(heads * key_slivers * e * mr) * sizeof(float), 64), 0));
    vt = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(heads * dim_slivers * lk * mr) * sizeof(float), 64), 1));
    if (!k || !vt) return;
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> tmp(size_t(std::max(e, ev)));
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < heads; ++bh) {
        const int64_t b = bh / sh.kv_heads, h = bh % sh.kv_heads;
        pack_slivers(kref, b, h, 0, lk, e, mr, true, k + bh * key_slivers * e * mr, tmp.data());
        pack_slivers(vref, b, h, 0, ev, lk, mr, false, vt + bh * dim_slivers * lk * mr, tmp.data());
      }
    }
  }
  bool ok() const { return k && vt; }
  // The K slivers of keys k0 .. (k0 a multiple of MR), and sliver `s` of V^T from key k0.
  const float* k_at(int64_t bh, int64_t k0) const { return k + (bh * key_slivers + k0 / mr) * e * mr; }
  const float* vt_at(int64_t bh, int64_t s, int64_t k0) const { return vt + ((bh * dim_slivers + s) * lk + k0) * mr; }
};

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

Status forward(const AttentionArgs& args) {
  const auto sh = attention_desc::shape_of(args.q, args.k, args.v);
  const float scale = float(attention_desc::scale_of(args.scale, sh.head_dim));
  const MicroKernel& mk = attention_kernel();
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
                          float beta) { packed_tile(mk, a, kc, b, c, nr, rows, cols, alpha, beta); };
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / (sh.heads * q_blocks), h = item / q_blocks % sh.heads, qb = item % q_blocks;
      const int64_t bh_kv = b * sh.kv_heads + h / sh.group(), q0 = qb * block_q, rows = std::min(block_q, Lq - q0);
      const int64_t query_tiles = (rows + nr - 1) / nr;
      std::fill(qt.begin(), qt.end(), 0.0f);
      pack_slivers(args.q, b, h, q0, rows, E, nr, true, qt.data(), tmp.data());
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
      float* inv = corr.data();  // 1 / l per row; corr is free once the keys are done
      for (int64_t i = 0; i < rows; ++i) {
        const bool empty = l[size_t(i)] == 0.0f && !std::isnan(m[size_t(i)]);  // fully masked: out = 0
        inv[i] = empty ? 0.0f : 1.0f / l[size_t(i)];
        if (args.lse) {
          const TensorRef& lt = *args.lse;
          lt.ptr<float>()[b * lt.strides[0] + h * lt.strides[1] + (q0 + i) * lt.strides[2]] =
              empty ? neg_inf : m[size_t(i)] + std::log(l[size_t(i)]);
        }
      }
      const int64_t out_base = b * args.out.strides[0] + h * args.out.strides[1];
      for (int64_t t = 0; t < query_tiles; ++t) {  // O^T tile t (Ev, NR) / l, transposed into out
        float* o = ot.data() + t * Ev * nr;
        const int64_t lanes = std::min(nr, rows - t * nr);
        if (contiguous_rows(args.out)) {
          rescale_columns_avx512(o, nr, Ev, lanes, inv + t * nr);
          cpu_elements::transpose_f32(o, nr, Ev, lanes, args.out.strides[2],
                                      args.out.ptr<float>() + out_base + (q0 + t * nr) * args.out.strides[2]);
          continue;
        }
        for (int64_t i = 0; i < lanes; ++i)
          for (int64_t e = 0; e < Ev; ++e)
            cpu_elements::store(args.out, out_base + (q0 + t * nr + i) * args.out.strides[2] + e * args.out.strides[3],
                                o[e * nr + i] * inv[t * nr + i]);
      }
    }
  }
  return Status::Ok();
}

// Every operand of the backward's products, packed once per call so that each block's
// product reads packed slivers only. Per (batch, head): Q and dO as A slivers of MR
// queries (depth E, Ev) and Q^T, dO^T as A slivers of MR dims (depth Lq). Per (batch, kv
// head): K^T and V^T as B slivers of NR keys (depth E, Ev) and K as B slivers of NR dims
// (depth Lk). Query blocks start at multiples of MR and key blocks at multiples of NR, so
// a block is a contiguous run of slivers, or a contiguous range of a sliver.
// All of them live in the calling thread's cpu scratch (slot 0): no allocation or page
// faults per call; lanes past the edges are never read, so nothing is cleared.
struct BackwardOperands {
  int64_t mr, nr, lq, lk, e, ev;
  int64_t q_slab, qt_slab, go_slab, got_slab, kt_slab, vt_slab, k_slab;
  float *q = nullptr, *qt = nullptr, *go = nullptr, *got = nullptr, *kt = nullptr, *vt = nullptr, *k = nullptr;

  static int64_t up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

  BackwardOperands(const AttentionBackwardArgs& args, const attention_desc::Shape& sh, int64_t mr_, int64_t nr_,
                   int threads)
      : mr(mr_), nr(nr_), lq(sh.seq_q), lk(sh.seq_k), e(sh.head_dim), ev(sh.value_dim),
        q_slab(up(lq, mr) * e), qt_slab(up(e, mr) * lq), go_slab(up(lq, mr) * ev), got_slab(up(ev, mr) * lq),
        kt_slab(up(lk, nr) * e), vt_slab(up(lk, nr) * ev), k_slab(up(e, nr) * lk) {
    const int64_t heads = sh.batch * sh.heads, kv_heads = sh.batch * sh.kv_heads;
    const int64_t total = heads * (q_slab + qt_slab + go_slab + got_slab) + kv_heads * (kt_slab + vt_slab + k_slab);
    float* base = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(total) * sizeof(float), 64), 0));
    if (!base) return;
    q = base;
    qt = q + heads * q_slab;
    go = qt + heads * qt_slab;
    got = go + heads * go_slab;
    kt = got + heads * got_slab;
    vt = kt + kv_heads * kt_slab;
    k = vt + kv_heads * vt_slab;
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> tmp(size_t(std::max(e, ev)));
#pragma omp for schedule(static) nowait
      for (int64_t bh = 0; bh < heads; ++bh) {
        const int64_t b = bh / sh.heads, h = bh % sh.heads;
        pack_slivers(args.q, b, h, 0, lq, e, mr, true, q + bh * q_slab, tmp.data());
        pack_slivers(args.q, b, h, 0, e, lq, mr, false, qt + bh * qt_slab, tmp.data());
        pack_slivers(args.grad_out, b, h, 0, lq, ev, mr, true, go + bh * go_slab, tmp.data());
        pack_slivers(args.grad_out, b, h, 0, ev, lq, mr, false, got + bh * got_slab, tmp.data());
      }
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < kv_heads; ++bh) {
        const int64_t b = bh / sh.kv_heads, h = bh % sh.kv_heads;
        pack_slivers(args.k, b, h, 0, lk, e, nr, true, kt + bh * kt_slab, tmp.data());
        pack_slivers(args.v, b, h, 0, lk, ev, nr, true, vt + bh * vt_slab, tmp.data());
        pack_slivers(args.k, b, h, 0, e, lk, nr, false, k + bh * k_slab, tmp.data());
      }
    }
  }
  bool ok() const { return q != nullptr; }
  // A slivers of queries from q0, and sliver s of the transposes from query q0.
  const float* q_at(int64_t bh, int64_t q0) const { return q + bh * q_slab + q0 * e; }
  const float* go_at(int64_t bh, int64_t q0) const { return go + bh * go_slab + q0 * ev; }
  const float* qt_at(int64_t bh, int64_t s, int64_t q0) const { return qt + bh * qt_slab + (s * lq + q0) * mr; }
  const float* got_at(int64_t bh, int64_t s, int64_t q0) const { return got + bh * got_slab + (s * lq + q0) * mr; }
  // B slivers of keys from k0, and sliver s of K (NR dims) from key k0.
  const float* kt_at(int64_t bh, int64_t k0) const { return kt + bh * kt_slab + k0 * e; }
  const float* vt_at(int64_t bh, int64_t k0) const { return vt + bh * vt_slab + k0 * ev; }
  const float* k_at(int64_t bh, int64_t s, int64_t k0) const { return k + bh * k_slab + (s * lk + k0) * nr; }
};

// Writes a key block's gradient, accumulated transposed (dims x keys, row stride ld), into
// rows k0 .. k0 + keys of head h of batch b of dst. f32 rows with unit stride (the usual
// case) are transposed in blocks (cpu_elements::transpose_f32): element by element, the
// scattered stores cost 2.7% of a backward at s1024 d128, and the generic store's dtype
// switch per element a tenth.
void store_key_rows(const float* src, int64_t ld, int64_t dims, int64_t keys, const TensorRef& dst, int64_t b, int64_t h,
                    int64_t k0) {
  const int64_t base = b * dst.strides[0] + h * dst.strides[1] + k0 * dst.strides[2];
  if (dst.dtype == DType::f32 && dims > 0 && (dims == 1 || dst.strides[3] == 1)) {
    cpu_elements::transpose_f32(src, ld, dims, keys, dst.strides[2], dst.ptr<float>() + base);
    return;
  }
  for (int64_t j = 0; j < keys; ++j)
    for (int64_t e = 0; e < dims; ++e)
      cpu_elements::store(dst, base + j * dst.strides[2] + e * dst.strides[3], src[e * ld + j]);
}

// Backward (FlashAttention-2 order): work items are (batch, kv head, key block), so each
// owns its rows of dK and dV; for every query head of the kv head's group and every query
// block that can see the key block (P and dP held as NR-key tiles of query rows, the
// layout of a B operand):
//   P  = exp(scale Q K^T (masked) - lse)      dV^T += dO^T P
//   dP = dO V^T      dS = scale P (dP - D)    dK^T += Q^T dS      dQ += dS K
// with D = rowsum(dO * O). dQ reads dS in place as A rows (each row's keys are runs of
// NR, one per key tile); only a block with a partial key tile packs dS into A slivers.
// dQ rows are shared between items: each thread accumulates its own copy, summed at the end.
Status backward(const AttentionBackwardArgs& args) {
  const auto sh = attention_desc::shape_of(args.q, args.k, args.v);
  const float scale = float(attention_desc::scale_of(args.scale, sh.head_dim));
  const MicroKernel& mk = attention_kernel();
  const int64_t E = sh.head_dim, Ev = sh.value_dim, Lk = sh.seq_k, Lq = sh.seq_q, mr = mk.mr, nr = mk.nr;
  const int64_t block_q = kBackwardQuerySlivers * mr, block_k = kBackwardKeyTiles * nr;
  const Masking masking(args.mask, args.causal);
  const int threads = cpu::threads_for_call();
  const BackwardOperands ops(args, sh, mr, nr, threads);
  if (!ops.ok()) return {StatusCode::out_of_memory, "cpu attention backward: cannot allocate the packed operands"};

  // D = rowsum(dO * O) per query row, and the saved lse, as (B*H, Lq).
  const int64_t q_rows = sh.batch * sh.heads * Lq;
  std::vector<float> d(static_cast<size_t>(q_rows)), lse(static_cast<size_t>(q_rows));
  // (f32 rows with unit stride, the usual case, are read through pointers: the generic
  // load's dtype switch per element cost a tenth of a backward at s512 d64.)
  const bool f32_rows = args.grad_out.dtype == DType::f32 && args.out.dtype == DType::f32 &&
                        (Ev <= 1 || (args.grad_out.strides[3] == 1 && args.out.strides[3] == 1));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < q_rows; ++r) {
    const int64_t b = r / (sh.heads * Lq), h = r / Lq % sh.heads, i = r % Lq;
    const int64_t go_row = b * args.grad_out.strides[0] + h * args.grad_out.strides[1] + i * args.grad_out.strides[2];
    const int64_t o_row = b * args.out.strides[0] + h * args.out.strides[1] + i * args.out.strides[2];
    double acc = 0;
    if (f32_rows && Ev > 0) {
      const float* go = args.grad_out.ptr<const float>() + go_row;
      const float* o = args.out.ptr<const float>() + o_row;
      for (int64_t e = 0; e < Ev; ++e) acc += double(go[e]) * double(o[e]);
    } else {
      for (int64_t e = 0; e < Ev; ++e)
        acc += double(cpu_elements::load(args.grad_out, go_row + e * args.grad_out.strides[3])) *
               double(cpu_elements::load(args.out, o_row + e * args.out.strides[3]));
    }
    d[size_t(r)] = float(acc);
    lse[size_t(r)] = args.lse.ptr<const float>()[b * args.lse.strides[0] + h * args.lse.strides[1] + i * args.lse.strides[2]];
  }

  const int64_t k_blocks = (Lk + block_k - 1) / block_k;
  const int64_t items = sh.batch * sh.kv_heads * k_blocks;
  const int64_t e_slivers = (E + mr - 1) / mr, ev_slivers = (Ev + mr - 1) / mr, e_tiles = (E + nr - 1) / nr;
  // Each thread's dQ copy lives in its own cpu scratch (slot 1); a thread that cannot get
  // one leaves its entry null, and then no thread computes anything.
  std::vector<float*> dq_partial(static_cast<size_t>(threads), nullptr);
  std::vector<char> dq_missing(static_cast<size_t>(threads), 0);
  bool dq_allocated = true;
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const size_t me = size_t(omp_get_thread_num());
#else
    const size_t me = 0;
#endif
    float* dq = static_cast<float*>(cpu::scratch(std::max<size_t>(size_t(q_rows * E) * sizeof(float), 64), 1));
    if (dq) std::fill(dq, dq + q_rows * E, 0.0f);
    dq_partial[me] = dq;
    dq_missing[me] = dq == nullptr;
#pragma omp barrier
#pragma omp single
    for (char missing : dq_missing) dq_allocated = dq_allocated && !missing;
    // (the single's barrier: every thread sees the same answer)
    if (dq_allocated) {
    // P and dP (then dS) as key tiles: tile t holds (block_q, NR), row stride NR.
    std::vector<float> p(static_cast<size_t>(block_k * block_q)), dp(static_cast<size_t>(block_k * block_q));
    std::vector<float> ds_a(static_cast<size_t>(block_q * block_k));  // dS as A slivers of MR queries
    std::vector<float> dkt(static_cast<size_t>(e_slivers * mr * block_k)), dvt(static_cast<size_t>(ev_slivers * mr * block_k));
    const auto tile = [&](const float* a, int64_t kc, const float* b, float* c, int64_t ldc, int64_t rows, int64_t cols,
                          float alpha, float beta) { packed_tile(mk, a, kc, b, c, ldc, rows, cols, alpha, beta); };
    std::vector<const float*> ds_rows(static_cast<size_t>(kBackwardKeyTiles * mr));
    // C += A B with A's rows read through pointers, in runs of NR (see cpu_gemm::Tile).
    const auto rows_tile = [&](const float* const* a_rows, int64_t kc, const float* b, float* c, int64_t ldc,
                               int64_t rows, int64_t cols) {
      Tile t;
      t.kc = kc;
      t.a = nullptr;
      t.a_rows = a_rows;
      t.a_run = nr;
      t.b = b;
      t.b_stride = nr;
      t.b_packed = true;
      t.c = c;
      t.ldc = ldc;
      t.m = int(rows);
      t.n = int(cols);
      t.alpha = 1.0f;
      t.beta = 1.0f;
      t.bias = nullptr;
      mk.run(t);
    };
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / (sh.kv_heads * k_blocks), kvh = item / k_blocks % sh.kv_heads, kb = item % k_blocks;
      const int64_t bh_kv = b * sh.kv_heads + kvh, k0 = kb * block_k, keys = std::min(block_k, Lk - k0);
      const int64_t key_tiles = (keys + nr - 1) / nr;
      // dQ's A operand, dS, is read in place from its key tiles (rows of NR keys) when
      // every tile is whole; a partial last tile has shorter runs, so dS is repacked.
      const bool ds_in_place = mk.reads_rows && keys % nr == 0;
      std::fill(dkt.begin(), dkt.end(), 0.0f);
      std::fill(dvt.begin(), dvt.end(), 0.0f);
      for (int64_t h = kvh * sh.group(); h < (kvh + 1) * sh.group(); ++h)
        for (int64_t q0 = args.causal ? k0 / block_q * block_q : 0; q0 < Lq; q0 += block_q) {  // causal: rows >= k0
          const int64_t rows = std::min(block_q, Lq - q0), bh = b * sh.heads + h, row0 = bh * Lq + q0;
          const int64_t q_slivers = (rows + mr - 1) / mr;
          for (int64_t t = 0; t < key_tiles; ++t) {
            const int64_t cols = std::min(nr, keys - t * nr);
            float* pt = p.data() + t * block_q * nr;
            float* dpt = dp.data() + t * block_q * nr;
            // P = exp(scale Q K^T (masked) - lse);  dP = dO V^T
            for (int64_t s = 0; s < q_slivers; ++s) {
              const int64_t m = std::min(mr, rows - s * mr);
              tile(ops.q_at(bh, q0) + s * mr * E, E, ops.kt_at(bh_kv, k0) + t * nr * E, pt + s * mr * nr, nr, m, cols,
                   scale, 0.0f);
              tile(ops.go_at(bh, q0) + s * mr * Ev, Ev, ops.vt_at(bh_kv, k0) + t * nr * Ev, dpt + s * mr * nr, nr, m,
                   cols, 1.0f, 0.0f);
            }
            masking.apply(pt, nr, b, h, q0, rows, k0 + t * nr, cols);
            exp_rows_avx512(pt, nr, rows, cols, lse.data() + row0);
            // dV^T += dO^T P;  dS = scale P (dP - D), in dp;  dK^T += Q^T dS
            for (int64_t s = 0; s < ev_slivers; ++s)
              tile(ops.got_at(bh, s, q0), rows, pt, dvt.data() + s * mr * block_k + t * nr, block_k,
                   std::min(mr, Ev - s * mr), cols, 1.0f, 1.0f);
            softmax_grad_rows_avx512(pt, dpt, nr, rows, cols, d.data() + row0, scale);
            for (int64_t s = 0; s < e_slivers; ++s)
              tile(ops.qt_at(bh, s, q0), rows, dpt, dkt.data() + s * mr * block_k + t * nr, block_k,
                   std::min(mr, E - s * mr), cols, 1.0f, 1.0f);
            if (!ds_in_place)  // dS into A slivers of MR queries over this block's keys
              for (int64_t i = 0; i < rows; ++i) {
                float* dst = ds_a.data() + (i / mr) * keys * mr + t * nr * mr + i % mr;
                for (int64_t j = 0; j < cols; ++j) dst[j * mr] = dpt[i * nr + j];
              }
          }
          // dQ += dS K
          for (int64_t s = 0; s < q_slivers; ++s) {
            const int64_t m = std::min(mr, rows - s * mr);
            if (ds_in_place)  // row i's keys: one run of NR per key tile
              for (int64_t t = 0; t < key_tiles; ++t)
                for (int64_t i = 0; i < m; ++i) ds_rows[size_t(t * mr + i)] = dp.data() + t * block_q * nr + (s * mr + i) * nr;
            for (int64_t et = 0; et < e_tiles; ++et) {
              float* c = dq + (row0 + s * mr) * E + et * nr;
              const int64_t cols = std::min(nr, E - et * nr);
              if (ds_in_place) rows_tile(ds_rows.data(), keys, ops.k_at(bh_kv, et, k0), c, E, m, cols);
              else tile(ds_a.data() + s * keys * mr, keys, ops.k_at(bh_kv, et, k0), c, E, m, cols, 1.0f, 1.0f);
            }
          }
        }
      const TensorRef& gk = args.grad_k;
      const TensorRef& gv = args.grad_v;
      store_key_rows(dkt.data(), block_k, E, keys, gk, b, kvh, k0);
      store_key_rows(dvt.data(), block_k, Ev, keys, gv, b, kvh, k0);
    }
    }
  }
  if (!dq_allocated) return {StatusCode::out_of_memory, "cpu attention backward: cannot allocate dQ workspaces"};
  // dQ: the sum of the threads' partial copies (rows no key block touched stay 0), summed
  // straight into f32 rows with unit stride, else through a row of f32 and the generic store.
  const TensorRef& gq = args.grad_q;
  const bool dq_f32_rows = gq.dtype == DType::f32 && E > 0 && (E == 1 || gq.strides[3] == 1);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> row(static_cast<size_t>(E));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < q_rows; ++r) {
      const int64_t b = r / (sh.heads * Lq), h = r / Lq % sh.heads, i = r % Lq;
      const int64_t base = b * gq.strides[0] + h * gq.strides[1] + i * gq.strides[2];
      float* sum = dq_f32_rows ? gq.ptr<float>() + base : row.data();
      std::fill(sum, sum + E, 0.0f);
      for (const float* part : dq_partial)  // partial copies in thread order, a row at a time
        for (int64_t e = 0; e < E; ++e) sum[e] += part[size_t(r * E + e)];
      if (!dq_f32_rows)
        for (int64_t e = 0; e < E; ++e) cpu_elements::store(gq, base + e * gq.strides[3], sum[e]);
    }
  }
  return Status::Ok();
}

Status can_implement(const AttentionArgs&) { return cpu_gemm::isa_present(cpu_gemm::Isa::avx512); }
Status backward_can_implement(const AttentionBackwardArgs&) { return cpu_gemm::isa_present(cpu_gemm::Isa::avx512); }

}  // namespace

void add_attention_kernels(dispatch::KernelTables& tables) {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    dispatch::KernelRecord<AttentionArgs> forward_record{dispatch::kernel_name(Op::attention, dtype, "cpu", "avx512"),
                                                         "cpu", dtype, 100, &can_implement, &forward};
    forward_record.runs_here = &cpu_gemm::isa_runs_here<cpu_gemm::Isa::avx512>;
    tables.add(forward_record);
    dispatch::KernelRecord<AttentionBackwardArgs> backward_record{
        dispatch::kernel_name(Op::attention_backward, dtype, "cpu", "avx512"), "cpu", dtype, 100,
        &backward_can_implement, &backward};
    backward_record.runs_here = &cpu_gemm::isa_runs_here<cpu_gemm::Isa::avx512>;
    tables.add(backward_record);
  }
}

}  // namespace anvil::cpu_attention
