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
//   a: packed A sliver, b: packed B sliver, in the kernel's Packing (below).
//   a (kernels with MicroKernel::a_in_place only): may instead be bf16 A rows in place,
//      a_stride elements apart (a_stride != 0), for whole tiles only: m == MR and kc a
//      multiple of the A packing's group.
//   b (f32 only): may instead be B rows in place, b_stride == ldb apart (b_packed false;
//      columns >= n are never read).
//   a_rows (kernels with MicroKernel::reads_rows only; null otherwise): instead of a, the
//      A rows read in place through pointers (implicit GEMM): the k range is kc / a_run
//      runs of a_run contiguous f32 elements, run j of row i starting at a_rows[j * MR + i]
//      (b packed).
//   c: f32, row stride ldc, unit column stride. Rows >= m and columns >= n are untouched.
//   stream_c: C is too large to be read back from cache: a kernel may store whole tiles
//      (m == MR, n == NR, c and ldc 64-byte aligned) with non-temporal stores, sparing the
//      reads for ownership of C's lines. The driver fences after its tiles.
//   out (kernels with MicroKernel::rounds_bf16 only; null otherwise): the result
//      v = alpha * acc + beta * C + bias + out_beta * out is not stored to c but rounded
//      once (to nearest even, as to_bfloat16) into the bf16 tile out, row stride ld_out;
//      out is read only when out_beta != 0, c only when beta != 0.
struct Tile {
  int64_t kc;
  const void* a;
  int64_t a_stride = 0;  // 0: a is a packed sliver
  const float* const* a_rows = nullptr;
  int64_t a_run = 0;
  const void* b;
  int64_t b_stride;
  bool b_packed;
  float* c;
  int64_t ldc;
  int m, n;
  float alpha, beta;   // beta == 0: C is not read
  const float* bias;   // nullable; n entries
  bfloat16* out = nullptr;
  int64_t ld_out = 0;
  float out_beta = 0.0f;
  bool stream_c = false;
};

// A packed sliver holds `width` lanes (MR rows of A, or NR columns of B) over k_steps =
// kc rounded up to k_multiple, as (k_steps / group, width, group) elements: `group`
// consecutive k of one lane are adjacent. Lanes past the matrix's edge and k past kc are
// zeros, so a kernel may always compute on whole slivers.
//   f32 (K, W):              group 1, k_multiple 1
//   bf16 pairs (K/2, W, 2):  group 2, k_multiple 2     (vdpbf16ps; AMX B in VNNI pairs)
//   bf16 rows (K/32, W, 32): group 32, k_multiple 32   (AMX A: a (16, 32) tile is 1 KiB)
struct Packing {
  int group, k_multiple;
};

struct MicroKernel {
  const char* isa;  // variant name in kernel records
  int mr, nr;
  bool bf16;          // operands packed as bf16 rather than f32
  Packing a, b;
  void (*run)(const Tile&);
  bool rounds_bf16 = false;  // honours Tile::out (else a bf16 output goes through an f32 workspace)
  // Smallest k block worth a call (0: from the L1 size alone): a kernel with a high fixed
  // cost per tile (AMX: C through memory, the epilogue) amortises it over a longer block.
  int kc_min = 0;
  bool a_in_place = false;  // reads whole bf16 A tiles (m == MR, kc % a.group == 0) in place
  // Nullable. Each thread calls enter() before its first tile of a parallel region and
  // leave() after its last (AMX: load the tile configuration; release the tile state).
  void (*enter)() = nullptr;
  void (*leave)() = nullptr;
  bool reads_rows = false;  // honours Tile::a_rows (the f32 kernels)
  // Nullable: a kernel of the same ISA and packings with a tile of fewer columns (and more
  // rows), for products whose columns would leave most of this kernel's tile padding.
  const MicroKernel* narrow = nullptr;
};

// The kernel for a product of n columns: `kernel`, or its narrow kernel when that one's
// tiles pad n to at least a ninth fewer columns (AVX-512 f32: (12, 32) rather than (6, 64)
// for n = 96 or 160, not for 48 or 256). Operands packed for the driver
// (Matrix::whole_slivers) must be packed for the kernel this returns.
const MicroKernel& for_columns(const MicroKernel& kernel, int64_t n);

// Null when the ISA is not compiled in (the driver checks cpu_info() before using one).
const MicroKernel* micro_kernel_f32_avx512();
const MicroKernel* micro_kernel_bf16_avx512();
const MicroKernel* micro_kernel_bf16_amx();
const MicroKernel* micro_kernel_f32_avx2();

// ------------------------------------------------------------------ driver
// Implicit GEMM (conv2d's image windows): an f32 matrix of which no copy exists. Each row
// is a sequence of runs of `run` contiguous elements; column c is element c % run of run
// c / run. locate() writes where runs [first, first + count) of rows [row0, row0 + rows)
// begin: run first + j of row row0 + i at out[j * stride + i] (a run of zeros where a window
// hangs over the padding). One call for all the runs of a tile's rows, so that a row's
// position is worked out once (a 7x7 stem has 7 runs of 21 elements per row).
struct Runs {
  int64_t run = 0;
  void (*locate)(const void* ctx, int64_t first, int64_t count, int64_t row0, int64_t rows, int64_t stride,
                 const float** out) = nullptr;
  const void* ctx = nullptr;
};

// A logical (rows, cols) matrix: element (r, c) at data[offset + r*row_stride + c*col_stride],
// dtype f32, f16 or bf16; or, when runs.locate is set, f32 rows found through runs; or, for
// B of an f32 micro-kernel only, when whole_slivers is set, data already packed as that
// kernel's B slivers over all of K: ceil(cols / NR) slivers of (rows, NR) floats, the
// columns past `cols` zero (so that each k block of it is a packed sliver as it stands).
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::f32;
  int64_t row_stride = 0, col_stride = 0;
  Runs runs = {};
  bool whole_slivers = false;
  bool in_runs() const { return runs.locate != nullptr; }
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
enum class Isa { amx_bf16, avx512_bf16, avx512, avx2 };
const char* isa_name(Isa isa);
// The micro-kernel of that ISA if this CPU has it, else null.
const MicroKernel* kernel_for(Isa isa);
// Ok, or "this CPU lacks <isa> (<what it has>)", or the OS's refusal of AMX: the records'
// can_implement reason.
Status isa_present(Isa isa);
// KernelRecord::runs_here of a record built for kIsa.
template <Isa kIsa> Status isa_runs_here() { return isa_present(kIsa); }

}  // namespace anvil::cpu_gemm
