// cpu attention forward: flash-style, on the GEMM micro-kernels.
//
// Per (batch, head, block of kBlockQ query rows), over blocks of kBlockK keys:
//   S = scale * Q K^T      (micro-kernel tiles: A = packed Q sliver, B = K^T rows streamed)
//   mask / causal -> -inf, online softmax (running max m, sum l; AVX-512 exp)
//   O = O * corr + P V     (micro-kernel tiles: A = packed P sliver, B = V rows streamed)
// then out = O / l and lse = m + log l. Causal blocks right of the diagonal are skipped
// (top-left alignment: query i attends keys j <= i, as torch). K^T and V are packed to f32
// once per (batch, kv head) and shared by the kv head's query heads (GQA/MQA, no copies per
// head). Work items (batch, head, query block) are spread over OpenMP threads.
// Backward runs the reference for now.
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_runtime.h"
#include "kernels/common/cpu_elements.h"
#include "dispatch/kernel_record.h"
#include "kernels/attention/attention_desc.h"
#include "kernels/gemm/gemm_cpu.h"

namespace anvil::cpu_attention {

void softmax_block_avx512(float* s, int64_t ld, int64_t rows, int64_t cols, float* m, float* l, float* corr);

namespace {

using cpu_gemm::MicroKernel;
using cpu_gemm::Tile;

constexpr int64_t kBlockQ = 96;   // query rows per work item: 8 slivers of MR = 12
constexpr int64_t kBlockK = 256;  // keys per softmax block; S is (96, 256) f32 = 96 KiB (L2)

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

Status forward(const AttentionArgs& args) {
  const auto sh = attention_desc::shape_of(args.q, args.k, args.v);
  const float scale = float(attention_desc::scale_of(args.scale, sh.head_dim));
  const MicroKernel& mk = *cpu_gemm::micro_kernel_f32_avx512();
  const int64_t E = sh.head_dim, Ev = sh.value_dim, Lk = sh.seq_k, Lq = sh.seq_q;
  const auto mask_strides = args.mask ? attention_desc::mask_strides(*args.mask) : std::array<int64_t, 4>{};
  const int threads = cpu::threads_for_call();

  // K^T (E, Lk) and V (Lk, Ev) in f32 per (batch, kv head).
  const int64_t kv_heads = sh.batch * sh.kv_heads;
  std::vector<float> kt(size_t(kv_heads * E * Lk)), vv(size_t(kv_heads * Lk * Ev));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t bh = 0; bh < kv_heads; ++bh) {
    const int64_t b = bh / sh.kv_heads, h = bh % sh.kv_heads;
    float* ktp = kt.data() + bh * E * Lk;
    float* vp = vv.data() + bh * Lk * Ev;
    for (int64_t j = 0; j < Lk; ++j) {
      const int64_t kbase = b * args.k.strides[0] + h * args.k.strides[1] + j * args.k.strides[2];
      for (int64_t e = 0; e < E; ++e) ktp[e * Lk + j] = cpu_elements::load(args.k, kbase + e * args.k.strides[3]);
      const int64_t vbase = b * args.v.strides[0] + h * args.v.strides[1] + j * args.v.strides[2];
      for (int64_t e = 0; e < Ev; ++e) vp[j * Ev + e] = cpu_elements::load(args.v, vbase + e * args.v.strides[3]);
    }
  }

  const int64_t q_blocks = (Lq + kBlockQ - 1) / kBlockQ;
  const int64_t items = sh.batch * sh.heads * q_blocks;
  const float neg_inf = -std::numeric_limits<float>::infinity();
#pragma omp parallel num_threads(threads)
  {
    const int64_t slivers = (kBlockQ + mk.mr - 1) / mk.mr;
    std::vector<float> q(size_t(kBlockQ * E)), qp(size_t(slivers * mk.mr * E));
    std::vector<float> s(size_t(kBlockQ * kBlockK)), pp(size_t(slivers * mk.mr * kBlockK));
    std::vector<float> o(size_t(kBlockQ * Ev)), m(static_cast<size_t>(kBlockQ)), l(static_cast<size_t>(kBlockQ)),
        corr(static_cast<size_t>(kBlockQ));
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / (sh.heads * q_blocks), h = item / q_blocks % sh.heads, qb = item % q_blocks;
      const int64_t kvh = h / sh.group(), q0 = qb * kBlockQ, rows = std::min(kBlockQ, Lq - q0);
      const float* ktp = kt.data() + (b * sh.kv_heads + kvh) * E * Lk;
      const float* vp = vv.data() + (b * sh.kv_heads + kvh) * Lk * Ev;
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t base = b * args.q.strides[0] + h * args.q.strides[1] + (q0 + i) * args.q.strides[2];
        for (int64_t e = 0; e < E; ++e) q[size_t(i * E + e)] = cpu_elements::load(args.q, base + e * args.q.strides[3]);
      }
      pack_a(q.data(), E, rows, E, mk.mr, qp.data());
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(o.begin(), o.end(), 0.0f);
      const int64_t k_end = args.causal ? std::min(Lk, q0 + rows) : Lk;  // later keys are masked for every row
      for (int64_t k0 = 0; k0 < k_end; k0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, k_end - k0);
        tiles(mk, qp.data(), rows, E, ktp + k0, Lk, cols, s.data(), kBlockK, scale, 0.0f);
        if (args.causal && k0 + cols > q0)
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = std::max(q0 + i + 1, k0); j < k0 + cols; ++j) s[size_t(i * kBlockK + j - k0)] = neg_inf;
        if (args.mask) {
          const TensorRef& mt = *args.mask;
          for (int64_t i = 0; i < rows; ++i) {
            const int64_t base = b * mask_strides[0] + h * mask_strides[1] + (q0 + i) * mask_strides[2];
            float* srow = s.data() + i * kBlockK;
            if (mt.dtype == DType::boolean) {
              const uint8_t* mp = mt.ptr<const uint8_t>() + base;
              for (int64_t j = 0; j < cols; ++j)
                if (!mp[(k0 + j) * mask_strides[3]]) srow[j] = neg_inf;
            } else {
              for (int64_t j = 0; j < cols; ++j) srow[j] += cpu_elements::load(mt, base + (k0 + j) * mask_strides[3]);
            }
          }
        }
        softmax_block_avx512(s.data(), kBlockK, rows, cols, m.data(), l.data(), corr.data());
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t e = 0; e < Ev; ++e) o[size_t(i * Ev + e)] *= corr[size_t(i)];
        pack_a(s.data(), kBlockK, rows, cols, mk.mr, pp.data());
        tiles(mk, pp.data(), rows, cols, vp + k0 * Ev, Ev, Ev, o.data(), Ev, 1.0f, 1.0f);
      }
      for (int64_t i = 0; i < rows; ++i) {
        const bool empty = l[size_t(i)] == 0.0f && !std::isnan(m[size_t(i)]);  // fully masked: out = 0
        const float inv = empty ? 0.0f : 1.0f / l[size_t(i)];
        const int64_t base = b * args.out.strides[0] + h * args.out.strides[1] + (q0 + i) * args.out.strides[2];
        for (int64_t e = 0; e < Ev; ++e) cpu_elements::store(args.out, base + e * args.out.strides[3], o[size_t(i * Ev + e)] * inv);
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

Status can_implement(const AttentionArgs&) {
  if (cpu::cpu_info().avx512) return Status::Ok();
  return unsupported("this CPU lacks avx512 (" + cpu::cpu_info().describe() + ")");
}

}  // namespace

void add_attention_kernels(dispatch::KernelTables& tables) {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16})
    tables.add(dispatch::KernelRecord<AttentionArgs>{dispatch::kernel_name(Op::attention, dtype, "cpu", "avx512"), "cpu",
                                                     dtype, 100, &can_implement, &forward});
}

}  // namespace anvil::cpu_attention
