// The cpu GEMM: one register-blocked micro-kernel per ISA (gemm_cpu_<isa>.cpp, compiled
// with that ISA's flags) under one BLIS-style blocking, packing and threading driver
// (gemm_cpu.cpp, compiled for the baseline ISA and choosing a micro-kernel at run time).
// conv2d reuses the driver through the same operand description.
#pragma once

#include <cstdint>
#include <vector>

#include "anvil/status.h"
#include "anvil/tensor.h"

namespace anvil::cpu_gemm {

// ------------------------------------------------------------------ micro-kernel ABI
// One register tile: C[0:m, 0:n] = alpha * sum_k A[i, k] B[k, j] (+ beta * C) (+ bias[j]).
//   a: packed A sliver. f32: kc steps of MR floats ((MR) per k). bf16 pairs: ceil(kc/2)
//      steps of MR x 2 bf16 ((MR, 2) per k pair).
//   b: B rows, b_stride elements apart. f32: NR floats per k (packed: zero-padded to NR;
//      unpacked row-major B: b_stride == ldb, and columns >= n are never read).
//      bf16 pairs: ceil(kc/2) steps of (NR, 2), always packed.
//   c: f32, row stride ldc, unit column stride. Rows >= m and columns >= n are untouched.
struct Tile {
  int64_t kc;
  const void* a;
  const void* b;
  int64_t b_stride;
  bool b_packed;
  float* c;
  int64_t ldc;
  int m, n;
  float alpha, beta;   // beta == 0: C is not read
  const float* bias;   // nullable; n entries
};

struct MicroKernel {
  const char* isa;  // variant name in kernel records
  int mr, nr;
  bool bf16_pairs;  // operands are bf16 pairs (vdpbf16ps) rather than f32
  void (*run)(const Tile&);
};

// Null when the ISA is not compiled in (the driver checks cpu_info() before using one).
const MicroKernel* micro_kernel_f32_avx512();
const MicroKernel* micro_kernel_bf16_avx512();
const MicroKernel* micro_kernel_f32_avx2();

// ------------------------------------------------------------------ driver
// A logical (rows, cols) matrix: element (r, c) at data[offset + r*row_stride + c*col_stride],
// dtype f32, f16 or bf16. `gather` (conv2d's implicit GEMM) replaces the strided read.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::f32;
  int64_t row_stride = 0, col_stride = 0;
  // Optional: fills dst[0:count] with elements (row, col0 + i) as f32 (for implicit GEMM).
  void (*gather_row)(const void* ctx, int64_t row, int64_t col0, int64_t count, float* dst) = nullptr;
  const void* gather_ctx = nullptr;
};

// One product term A (m x k) @ B (k x n); several terms sum into one output (the batch
// reduction of a broadcast operand's gradient).
struct Term {
  Matrix a, b;
  int64_t k;
};

struct Output {
  void* data;
  DType dtype;        // f32, f16 or bf16
  int64_t ldc;        // row stride; unit column stride
  int64_t m, n;
};

// C = alpha * sum(terms) + beta * C + bias. bias: n elements of C's dtype (nullable),
// bias_stride apart.
Status run(const std::vector<Term>& terms, const Output& c, float alpha, float beta, const void* bias,
           int64_t bias_stride, const MicroKernel& kernel);

// The ISA variants of the cpu kernels, shared by gemm, conv2d and attention records.
enum class Isa { avx512_bf16, avx512, avx2 };
const char* isa_name(Isa isa);
// The micro-kernel of that ISA if this CPU has it, else null.
const MicroKernel* kernel_for(Isa isa);
// Ok, or "this CPU lacks <isa> (<what it has>)": the records' can_implement reason.
Status isa_present(Isa isa);

}  // namespace anvil::cpu_gemm
