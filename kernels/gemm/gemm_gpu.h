// The GPU GEMM problem, shared by the cuda and hip backends: a GemmArgs lowered to device
// pointers and element strides, the SIMT launcher both vendors compile from one source
// (gemm_gpu.inc), and the interface of each vendor's matrix-core mainloops (cuda:
// sm90_wgmma, sm80_mma in gemm_cuda*.cu; hip: mfma in gemm_hip_mfma.hip). Each mainloop's
// `accepts` says why it cannot run a problem; the records turn that into can_implement.
#pragma once

#include <cstdint>
#include <span>

#include "anvil/dtype.h"
#include "anvil/status.h"
#include "backends/gpu/gpu_api.h"

namespace anvil::dispatch {
class KernelTables;
}  // namespace anvil::dispatch

namespace anvil::gpu_gemm {
inline namespace ANVIL_GPU_ABI {

// A logical (rows, cols) matrix per batch entry; strides in elements, batch_stride 0
// broadcasts. Element (b, i, j) is at data + b*batch_stride + i*row_stride + j*col_stride.
struct Matrix {
  void* data = nullptr;
  int64_t batch_stride = 0, row_stride = 0, col_stride = 0;
};

// c (b, m, n) = alpha * a (b, m, k) @ b (b, k, n) + beta * c + bias (n), all of `dtype`;
// f32 accumulation. beta == 0: c is not read. k == 0: c = beta * c + bias.
struct Problem {
  DType dtype = DType::f32;
  int64_t batch = 1, m = 0, n = 0, k = 0;
  Matrix a, b, c;
  const void* bias = nullptr;  // n elements of dtype, stride bias_stride; null: none
  int64_t bias_stride = 1;
  float alpha = 1.0f, beta = 0.0f;
  // c (m, n) = alpha * sum over the batch of a_b @ b_b (+ beta * c + bias): the gradient of
  // an operand broadcast over the batch. SIMT only.
  bool sum_batches = false;
  gpuStream_t stream = nullptr;
  int device = 0;
};

// Any dtype, any strides: one thread per output element, f32 accumulation.
Status simt_accepts(const Problem& p);
Status run_simt(const Problem& p);

// A matrix-core mainloop of one vendor (bf16 and f16 inputs, f32 accumulation): its name
// in kernel names, its registry priority (the SIMT kernel has 100) and its entry points.
struct Mainloop {
  const char* variant;
  int priority;
  Status (*accepts)(const Problem&);
  Status (*run)(const Problem&);
};
// Defined by each vendor's gemm file: its matrix-core mainloops, best first (at most 3).
std::span<const Mainloop> matrix_core_mainloops();

// The SIMT records, one per matrix-core mainloop, and the backward (gemm_gpu.inc).
void add_gemm_kernels(dispatch::KernelTables& tables);

}  // namespace ANVIL_GPU_ABI
}  // namespace anvil::gpu_gemm
