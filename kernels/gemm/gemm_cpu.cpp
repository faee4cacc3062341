// The cpu GEMM driver: BLIS-style blocking, packing and OpenMP threading around the
// micro-kernels of gemm_cpu_<isa>.cpp, and the gemm / gemm_backward kernel records.
//
// Loop nest (Goto/BLIS):   jc: NC columns of C      (B block, KC x NC, in L2/L3)
//                           pc: KC of the inner dim  (pack B: slivers of (KC, NR))
//                           ic: MC rows of C         (pack A: slivers of (MR, KC), in L2)
//                           jr x ir: (MR, NR) tiles  (B sliver reused from L1 across ir)
// Block sizes come from the cache sizes read at run time. Both packings and the tile
// grid are split across threads; all threads share the packed blocks.
// Small M (<= kUnpackedMaxM, LLM decode) with row-major f32 B skips packing B: the
// micro-kernel streams B rows in place, since packing would double B's memory traffic.
// 16-bit outputs accumulate in an f32 workspace and are rounded once at the end.
#include "kernels/gemm/gemm_cpu.h"

#include <algorithm>
#include <cstring>

#include "backends/cpu/cpu_runtime.h"
#include "kernels/common/cpu_elements.h"
#include "dispatch/kernel_record.h"
#include "kernels/gemm/gemm_desc.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace anvil::cpu_gemm {
namespace {

constexpr int64_t kUnpackedMaxM = 4;
constexpr int64_t kSerialFlops = 2 * 96 * 96 * 96;  // below this, an OpenMP fork costs more than a 2nd core gives

struct Blocking {
  int64_t kc, mc, nc;
};

int64_t round_down(int64_t x, int64_t multiple) { return std::max(multiple, x / multiple * multiple); }

Blocking blocking_for(const MicroKernel& k) {
  const cpu::CpuInfo& info = cpu::cpu_info();
  const int64_t elem = k.bf16_pairs ? 2 : 4;
  Blocking b;
  // The B sliver (KC, NR) and the A sliver (MR, KC) share L1 (with room for C lines).
  b.kc = std::clamp(round_down(info.l1d_bytes * 3 / 4 / ((k.nr + k.mr) * elem), 16), int64_t(64), int64_t(1024));
  // The A block (MC, KC) takes a quarter of L2; each thread's share of the B block the rest.
  b.mc = std::clamp(round_down(info.l2_bytes / 4 / (b.kc * elem), k.mr), int64_t(k.mr), int64_t(k.mr) * 64);
  b.nc = std::clamp(round_down(std::min<int64_t>(info.l3_bytes, 16 << 20) / 4 / (b.kc * elem), k.nr),
                    int64_t(k.nr), int64_t(k.nr) * 256);
  return b;
}

inline float to_f32(const float* p) { return *p; }
inline float to_f32(const float16* p) { return to_float(*p); }
inline float to_f32(const bfloat16* p) { return to_float(*p); }

template <class T> void read_strided(const Matrix& x, int64_t row, int64_t col0, int64_t count, float* dst) {
  const T* p = static_cast<const T*>(x.data) + row * x.row_stride + col0 * x.col_stride;
  if (x.col_stride == 1) {
    if constexpr (std::is_same_v<T, float>) std::memcpy(dst, p, size_t(count) * sizeof(float));
    else for (int64_t i = 0; i < count; ++i) dst[i] = to_f32(p + i);
  } else {
    for (int64_t i = 0; i < count; ++i) dst[i] = to_f32(p + i * x.col_stride);
  }
}

// Elements (row, col0 .. col0 + count) as f32.
void read_row(const Matrix& x, int64_t row, int64_t col0, int64_t count, float* dst) {
  if (count <= 0) return;  // empty operands may have null data
  if (x.gather_row) return x.gather_row(x.gather_ctx, row, col0, count, dst);
  switch (x.dtype) {
    case DType::f16: return read_strided<float16>(x, row, col0, count, dst);
    case DType::bf16: return read_strided<bfloat16>(x, row, col0, count, dst);
    default: return read_strided<float>(x, row, col0, count, dst);
  }
}

// Elements (row0 .. row0 + count, col) as f32: a column, read as a row of the transpose.
// Never used on gathered matrices (their gather reads rows only).
void read_column(const Matrix& x, int64_t row0, int64_t col, int64_t count, float* dst) {
  Matrix t = x;
  std::swap(t.row_stride, t.col_stride);
  read_row(t, col, row0, count, dst);
}

// Slivers are stored in the micro-kernel's operand layout: f32 (K, W) or bf16 pairs
// (K/2, W, 2), W = MR for A and NR for B, zero-padded in W and (pairs) in K.
struct SliverWriter {
  bool pairs;
  int64_t width, kc;
  int64_t k_steps() const { return pairs ? (kc + 1) / 2 * 2 : kc; }
  int64_t elements() const { return width * k_steps(); }
  // values[k] of lane w (a row of A or a column of B) into the sliver.
  void put_lane(void* sliver, int64_t w, const float* values) const {
    if (!pairs) {
      float* dst = static_cast<float*>(sliver) + w;
      for (int64_t k = 0; k < kc; ++k) dst[k * width] = values[k];
      return;
    }
    bfloat16* dst = static_cast<bfloat16*>(sliver) + 2 * w;
    for (int64_t k = 0; k < k_steps(); ++k)
      dst[(k / 2) * 2 * width + (k & 1)] = k < kc ? to_bfloat16(values[k]) : bfloat16{0};
  }
  void zero_lane(void* sliver, int64_t w) const {
    if (!pairs) {
      float* dst = static_cast<float*>(sliver) + w;
      for (int64_t k = 0; k < kc; ++k) dst[k * width] = 0.0f;
      return;
    }
    bfloat16* dst = static_cast<bfloat16*>(sliver) + 2 * w;
    for (int64_t k = 0; k < k_steps(); ++k) dst[(k / 2) * 2 * width + (k & 1)] = bfloat16{0};
  }
};

// Row-major B (unit column stride) is packed a row of the block at a time (a pair of
// rows for bf16 pairs): sequential reads of B, split into the slivers' rows.
// A gathered B (implicit GEMM) is always read by rows: gather_row's (row, col) are B's.
bool packs_by_row(const Matrix& b) { return b.gather_row || b.col_stride == 1; }

// Packs k step `step` of the block: row k0 + step (f32), or rows k0 + 2*step and
// k0 + 2*step + 1 interleaved (bf16 pairs; a row past kc is zero). tmp holds 2 * ncols.
void pack_b_rows(const Matrix& b, int64_t step, int64_t k0, int64_t n0, int64_t ncols, const SliverWriter& w,
                 void* dst, float* tmp) {
  if (!w.pairs) {
    read_row(b, k0 + step, n0, ncols, tmp);
    float* out = static_cast<float*>(dst);
    for (int64_t s = 0; s * w.width < ncols; ++s) {
      const int64_t cols = std::min(w.width, ncols - s * w.width);
      float* row = out + s * w.elements() + step * w.width;
      std::memcpy(row, tmp + s * w.width, size_t(cols) * sizeof(float));
      std::fill(row + cols, row + w.width, 0.0f);
    }
    return;
  }
  float* even = tmp;
  float* odd = tmp + ncols;
  read_row(b, k0 + 2 * step, n0, ncols, even);
  if (2 * step + 1 < w.kc) read_row(b, k0 + 2 * step + 1, n0, ncols, odd);
  else std::fill(odd, odd + ncols, 0.0f);
  bfloat16* out = static_cast<bfloat16*>(dst);
  for (int64_t s = 0; s * w.width < ncols; ++s) {
    bfloat16* row = out + s * w.elements() + step * 2 * w.width;  // (NR, 2) for this k pair
    for (int64_t j = 0; j < w.width; ++j) {
      const int64_t col = s * w.width + j;
      row[2 * j] = col < ncols ? to_bfloat16(even[col]) : bfloat16{0};
      row[2 * j + 1] = col < ncols ? to_bfloat16(odd[col]) : bfloat16{0};
    }
  }
}

// Other layouts (transposed B, bf16 pairs, implicit-GEMM gathers) go lane by lane.
void pack_b_sliver(const Matrix& b, int64_t k0, int64_t n0, int64_t ncols, const SliverWriter& w, void* dst,
                   float* tmp) {
  for (int64_t j = 0; j < w.width; ++j) {
    if (j >= ncols) {
      w.zero_lane(dst, j);
      continue;
    }
    read_column(b, k0, n0 + j, w.kc, tmp);
    w.put_lane(dst, j, tmp);
  }
}

void pack_a_sliver(const Matrix& a, int64_t m0, int64_t rows, int64_t k0, const SliverWriter& w, void* dst,
                   float* tmp) {
  for (int64_t i = 0; i < w.width; ++i) {
    if (i >= rows) {
      w.zero_lane(dst, i);
      continue;
    }
    read_row(a, m0 + i, k0, w.kc, tmp);
    w.put_lane(dst, i, tmp);
  }
}

template <class T> void store_out(void* base, int64_t index, float v) {
  if constexpr (std::is_same_v<T, float16>) static_cast<float16*>(base)[index] = to_float16(v);
  else if constexpr (std::is_same_v<T, bfloat16>) static_cast<bfloat16*>(base)[index] = to_bfloat16(v);
  else static_cast<float*>(base)[index] = v;
}
template <class T> float load_out(const void* base, int64_t index) {
  return to_f32(static_cast<const T*>(base) + index);
}

// C = alpha * acc + beta * C + bias for a 16-bit (or K = 0) output, rounding once.
template <class T>
void finish(const Output& c, const float* acc, int64_t ld_acc, float alpha, float beta, const float* bias, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      float v = acc ? alpha * acc[i * ld_acc + j] : 0.0f;
      if (beta != 0.0f) v += beta * load_out<T>(c.data, i * c.ldc + j);
      if (bias) v += bias[j];
      store_out<T>(c.data, i * c.ldc + j, v);
    }
}

void finish_any(const Output& c, const float* acc, int64_t ld_acc, float alpha, float beta, const float* bias,
                int threads) {
  switch (c.dtype) {
    case DType::f16: return finish<float16>(c, acc, ld_acc, alpha, beta, bias, threads);
    case DType::bf16: return finish<bfloat16>(c, acc, ld_acc, alpha, beta, bias, threads);
    default: return finish<float>(c, acc, ld_acc, alpha, beta, bias, threads);
  }
}

}  // namespace

const MicroKernel* kernel_for(Isa isa) {
  const cpu::CpuInfo& info = cpu::cpu_info();
  switch (isa) {
    case Isa::avx512_bf16: return info.avx512_bf16 ? micro_kernel_bf16_avx512() : nullptr;
    case Isa::avx512: return info.avx512 ? micro_kernel_f32_avx512() : nullptr;
    case Isa::avx2: return info.avx2 ? micro_kernel_f32_avx2() : nullptr;
  }
  return nullptr;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512_bf16: return "avx512bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
  }
  return "?";
}

Status isa_present(Isa isa) {
  if (kernel_for(isa)) return Status::Ok();
  return unsupported(std::string("this CPU lacks ") + isa_name(isa) + " (" + cpu::cpu_info().describe() + ")");
}

Status run(const std::vector<Term>& terms, const Output& c, float alpha, float beta, const void* bias,
           int64_t bias_stride, const MicroKernel& kernel) {
  const int64_t M = c.m, N = c.n;
  if (M == 0 || N == 0) return Status::Ok();
  int64_t total_k = 0;
  for (const Term& t : terms) total_k += t.k;
  const double flops = 2.0 * double(M) * double(N) * double(total_k);
  const int threads = flops < kSerialFlops ? 1 : cpu::threads_for_call();

  // The bias in f32, contiguous.
  std::vector<float> bias_f32;
  if (bias) {
    bias_f32.resize(size_t(N));
    const Matrix bias_row{bias, c.dtype, 0, bias_stride};
    read_row(bias_row, 0, 0, N, bias_f32.data());
  }
  const float* bias_ptr = bias ? bias_f32.data() : nullptr;
  if (total_k == 0) {
    finish_any(c, nullptr, 0, alpha, beta, bias_ptr, threads);
    return Status::Ok();
  }

  // Where tiles accumulate: C itself (f32), or an f32 workspace rounded once at the end.
  const bool direct = c.dtype == DType::f32;
  float* target = static_cast<float*>(c.data);
  int64_t ld_target = c.ldc;
  if (!direct) {
    target = static_cast<float*>(cpu::scratch(size_t(M * N) * sizeof(float), 2));
    if (!target) return {StatusCode::out_of_memory, "cpu gemm: cannot allocate the f32 workspace"};
    ld_target = N;
  }
  const float tile_alpha = direct ? alpha : 1.0f, tile_beta = direct ? beta : 0.0f;
  const float* tile_bias = direct ? bias_ptr : nullptr;

  const Blocking blk = blocking_for(kernel);
  const int64_t mr = kernel.mr, nr = kernel.nr;
  const int64_t elem = kernel.bf16_pairs ? 2 : 4;
  const int64_t kc_max = kernel.bf16_pairs ? (blk.kc + 1) / 2 * 2 : blk.kc;
  const int64_t nc_max = std::min(blk.nc, (N + nr - 1) / nr * nr), mc_max = std::min(blk.mc, (M + mr - 1) / mr * mr);
  void* packed_b = cpu::scratch(size_t(nc_max * kc_max * elem), 0);
  void* packed_a = cpu::scratch(size_t(mc_max * kc_max * elem), 1);
  if (!packed_a || !packed_b) return {StatusCode::out_of_memory, "cpu gemm: cannot allocate packing buffers"};

  const Term* first_term = nullptr;
  for (const Term& t : terms)
    if (t.k > 0 && !first_term) first_term = &t;
  for (const Term& term : terms) {
    if (term.k == 0) continue;
    const bool stream_b = !kernel.bf16_pairs && M <= kUnpackedMaxM && !term.b.gather_row &&
                          term.b.dtype == DType::f32 && term.b.col_stride == 1;
    for (int64_t jc = 0; jc < N; jc += blk.nc) {
      const int64_t nc = std::min(blk.nc, N - jc);
      for (int64_t pc = 0; pc < term.k; pc += blk.kc) {
        const int64_t kc = std::min(blk.kc, term.k - pc);
        const bool first = &term == first_term && pc == 0;
        const SliverWriter b_writer{kernel.bf16_pairs, nr, kc}, a_writer{kernel.bf16_pairs, mr, kc};
        const int64_t b_slivers = (nc + nr - 1) / nr;
#pragma omp parallel num_threads(threads)
        {
          std::vector<float> tmp(size_t(std::max(kc, 2 * nc) + 1));
          if (!stream_b && packs_by_row(term.b)) {
            const int64_t steps = kernel.bf16_pairs ? (kc + 1) / 2 : kc;
#pragma omp for schedule(static)
            for (int64_t step = 0; step < steps; ++step)
              pack_b_rows(term.b, step, pc, jc, nc, b_writer, packed_b, tmp.data());
          } else if (!stream_b) {
#pragma omp for schedule(static)
            for (int64_t s = 0; s < b_slivers; ++s)
              pack_b_sliver(term.b, pc, jc + s * nr, std::min(nr, nc - s * nr), b_writer,
                            static_cast<char*>(packed_b) + s * b_writer.elements() * elem, tmp.data());
          }
          for (int64_t ic = 0; ic < M; ic += blk.mc) {
            const int64_t mc = std::min(blk.mc, M - ic);
            const int64_t a_slivers = (mc + mr - 1) / mr;
#pragma omp for schedule(static)
            for (int64_t s = 0; s < a_slivers; ++s)
              pack_a_sliver(term.a, ic + s * mr, std::min(mr, mc - s * mr), pc, a_writer,
                            static_cast<char*>(packed_a) + s * a_writer.elements() * elem, tmp.data());
#pragma omp for collapse(2) schedule(static)
            for (int64_t jr = 0; jr < b_slivers; ++jr)
              for (int64_t ir = 0; ir < a_slivers; ++ir) {
                Tile t;
                t.kc = kc;
                t.a = static_cast<const char*>(packed_a) + ir * a_writer.elements() * elem;
                if (stream_b) {
                  t.b = static_cast<const float*>(term.b.data) + pc * term.b.row_stride + jc + jr * nr;
                  t.b_stride = term.b.row_stride;
                  t.b_packed = false;
                } else {
                  t.b = static_cast<const char*>(packed_b) + jr * b_writer.elements() * elem;
                  t.b_stride = nr;
                  t.b_packed = true;
                }
                t.c = target + (ic + ir * mr) * ld_target + jc + jr * nr;
                t.ldc = ld_target;
                t.m = int(std::min(mr, mc - ir * mr));
                t.n = int(std::min(nr, nc - jr * nr));
                t.alpha = tile_alpha;
                t.beta = first ? tile_beta : 1.0f;
                t.bias = first && tile_bias ? tile_bias + jc + jr * nr : nullptr;
                kernel.run(t);
              }
          }
        }
      }
    }
  }
  if (!direct) finish_any(c, target, ld_target, alpha, beta, bias_ptr, threads);
  return Status::Ok();
}

// ------------------------------------------------------------------ kernel records
namespace {

Status unit_column_stride(const TensorRef& t, const char* name) {
  if (t.dim(-1) <= 1 || t.stride(-1) == 1) return Status::Ok();
  return unsupported(std::string(name) + ": needs unit stride along its last dimension (row-major), got stride " +
                     std::to_string(t.stride(-1)));
}

int64_t batch_stride_of(const TensorRef& t) { return t.rank == 3 ? t.strides[0] : 0; }



// Rows x cols matrix of batch entry `b` of a (batch?, rows, cols) view; `transposed`
// swaps the roles of the last two dims.
Matrix matrix_of(const TensorRef& t, int64_t b, bool transposed = false) {
  Matrix m;
  m.dtype = t.dtype;
  // An empty operand is never read and may carry any strides: no address arithmetic on it.
  m.data = t.numel() == 0 ? nullptr : t.ptr<char>() + b * gemm_desc::batch_stride(t) * dtype_size(t.dtype);
  m.row_stride = transposed ? t.stride(-1) : t.stride(-2);
  m.col_stride = transposed ? t.stride(-2) : t.stride(-1);
  return m;
}

Output output_of(const TensorRef& t, int64_t e, int64_t rows, int64_t cols) {
  char* data = t.numel() == 0 ? nullptr : t.ptr<char>() + e * batch_stride_of(t) * dtype_size(t.dtype);
  return {data, t.dtype, t.stride(-2), rows, cols};
}

template <Isa kIsa> Status gemm_can_implement(const GemmArgs& args) {
  ANVIL_RETURN_IF_ERROR(isa_present(kIsa));
  return unit_column_stride(args.c, "c");
}

template <Isa kIsa> Status gemm_run(const GemmArgs& args) {
  const auto s = gemm_desc::shape_of(args);
  const MicroKernel& kernel = *kernel_for(kIsa);
  for (int64_t b = 0; b < s.batch; ++b) {
    const std::vector<Term> terms = {{matrix_of(args.a, b), matrix_of(args.b, b), s.k}};
    ANVIL_RETURN_IF_ERROR(run(terms, output_of(args.c, b, s.m, s.n), float(args.alpha), float(args.beta),
                              args.bias ? args.bias->ptr() : nullptr, args.bias ? args.bias->strides[0] : 0, kernel));
  }
  return Status::Ok();
}

template <Isa kIsa> Status gemm_backward_can_implement(const GemmBackwardArgs& args) {
  ANVIL_RETURN_IF_ERROR(isa_present(kIsa));
  if (args.grad_a) ANVIL_RETURN_IF_ERROR(unit_column_stride(*args.grad_a, "grad_a"));
  if (args.grad_b) ANVIL_RETURN_IF_ERROR(unit_column_stride(*args.grad_b, "grad_b"));
  return Status::Ok();
}

// grad_a[e] = alpha * sum over the batch entries reading e of grad_c @ b^T, and
// grad_b[e] = alpha * sum of a^T @ grad_c: one driver call each, the batch sum as terms.
template <Isa kIsa> Status gemm_backward_run(const GemmBackwardArgs& args) {
  const auto s = gemm_desc::shape_of(args);
  const MicroKernel& kernel = *kernel_for(kIsa);
  TensorRef grad = args.grad_c;
  const auto grad_matrix = [&](int64_t b) {
    Matrix m = matrix_of(grad, 0);
    m.data = grad.numel() == 0 ? nullptr : grad.ptr<char>() + b * batch_stride_of(grad) * dtype_size(grad.dtype);
    return m;
  };
  auto entries_of = [](const TensorRef& t) { return t.rank == 3 ? t.shape[0] : int64_t(1); };
  if (args.grad_a) {
    const int64_t entries = entries_of(*args.grad_a);
    for (int64_t e = 0; e < entries; ++e) {
      std::vector<Term> terms;
      for (int64_t b = 0; b < s.batch; ++b)
        if (entries == 1 || b == e) terms.push_back({grad_matrix(b), matrix_of(args.b, b, true), s.n});
      ANVIL_RETURN_IF_ERROR(run(terms, output_of(*args.grad_a, e, s.m, s.k), float(args.alpha), 0.0f, nullptr, 0, kernel));
    }
  }
  if (args.grad_b) {
    const int64_t entries = entries_of(*args.grad_b);
    for (int64_t e = 0; e < entries; ++e) {
      std::vector<Term> terms;
      for (int64_t b = 0; b < s.batch; ++b)
        if (entries == 1 || b == e) terms.push_back({matrix_of(args.a, b, true), grad_matrix(b), s.m});
      ANVIL_RETURN_IF_ERROR(run(terms, output_of(*args.grad_b, e, s.k, s.n), float(args.alpha), 0.0f, nullptr, 0, kernel));
    }
  }
  if (args.grad_bias) {  // a reduction over batch and rows, in f64
    std::vector<double> sums(size_t(s.n), 0.0);
    std::vector<float> row(size_t(s.n));
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t m = 0; m < s.m; ++m) {
        read_row(grad_matrix(b), m, 0, s.n, row.data());
        for (int64_t n = 0; n < s.n; ++n) sums[size_t(n)] += row[size_t(n)];
      }
    const TensorRef& gb = *args.grad_bias;
    for (int64_t n = 0; n < s.n; ++n)
      cpu_elements::store(gb, n * gb.strides[0], float(sums[size_t(n)]));
  }
  return Status::Ok();
}

template <Isa kIsa> void add_records(dispatch::KernelTables& tables, DType dtype, int priority) {
  const std::string variant = isa_name(kIsa);
  tables.add(dispatch::KernelRecord<GemmArgs>{dispatch::kernel_name(Op::gemm, dtype, "cpu", variant), "cpu", dtype,
                                              priority, &gemm_can_implement<kIsa>, &gemm_run<kIsa>});
  tables.add(dispatch::KernelRecord<GemmBackwardArgs>{dispatch::kernel_name(Op::gemm_backward, dtype, "cpu", variant),
                                                      "cpu", dtype, priority, &gemm_backward_can_implement<kIsa>,
                                                      &gemm_backward_run<kIsa>});
}

}  // namespace

// bf16 prefers vdpbf16ps; f16 and (without avx512_bf16) bf16 are widened to f32 while
// packing. AVX2 serves CPUs without AVX-512.
void add_gemm_kernels(dispatch::KernelTables& tables) {
  add_records<Isa::avx512_bf16>(tables, DType::bf16, 110);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    add_records<Isa::avx512>(tables, dtype, 100);
    add_records<Isa::avx2>(tables, dtype, 90);
  }
}

}  // namespace anvil::cpu_gemm
