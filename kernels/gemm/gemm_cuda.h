// The cuda GEMM kernels' common problem: a GemmArgs lowered to device pointers and
// element strides, and the launchers of each mainloop (SIMT, sm_80 mma.sync, sm_90a
// wgmma). Each launcher has a `*_accepts` check that says why it cannot run a problem;
// the records in gemm_cuda.cu turn those into can_implement reasons.
#pragma once

#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "anvil/dtype.h"
#include "anvil/status.h"

namespace anvil::cuda_gemm {

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
  cudaStream_t stream = nullptr;
  int device = 0;
};

// Any dtype, any strides: one thread per output element, f32 accumulation.
Status simt_accepts(const Problem& p);
Status run_simt(const Problem& p);

// bf16/f16 on tensor cores with mma.sync (sm_80 and newer).
Status sm80_accepts(const Problem& p);
Status run_sm80(const Problem& p);

// bf16/f16 with TMA + wgmma, warp-specialised and persistent (sm_90a only).
Status sm90_accepts(const Problem& p);
Status run_sm90(const Problem& p);

}  // namespace anvil::cuda_gemm
