// GEMM and its backward on CUDA device memory: the lowering of GemmArgs to a Problem,
// the SIMT kernel that takes every dtype, stride and shape (the plain f32 path, and the
// 16-bit fallback for views the tensor-core kernels refuse), and the registry records of
// all cuda GEMM kernels.
//
// SIMT tile (BLK_M, BLK_N, BLK_K) = (64, 64, 16), 256 threads each owning a (4, 4) block of
// c in f32 registers; operands are staged through shared memory as f32, converted on load,
// so any strides (transposed, padded, broadcast) read the same way.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "backends/cuda/cuda_runtime.h"
#include "dispatch/kernel_record.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/gemm/gemm_desc.h"

namespace anvil::cuda_gemm {
namespace {

constexpr int SIMT_M = 64, SIMT_N = 64, SIMT_K = 16;
constexpr int SIMT_THREADS = 256;
constexpr int SIMT_TM = 4, SIMT_TN = 4;  // per-thread block of c
static_assert((SIMT_M / SIMT_TM) * (SIMT_N / SIMT_TN) == SIMT_THREADS, "one (4, 4) block per thread");
static_assert(SIMT_M * SIMT_K % SIMT_THREADS == 0 && SIMT_N * SIMT_K % SIMT_THREADS == 0, "even staging");

template <class T> __device__ inline float load_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) return *p;
  else if constexpr (std::is_same_v<T, __half>) return __half2float(*p);
  else return __bfloat162float(*p);
}
template <class T> __device__ inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}

// c tile at (blockIdx.y * 64, blockIdx.x * 64) of batch blockIdx.z (of 0 when summing).
template <class T> __global__ void __launch_bounds__(SIMT_THREADS) gemm_simt_kernel(const Problem p) {
  __shared__ float a_tile[SIMT_K][SIMT_M + 4];  // (BLK_K, BLK_M), padded against bank conflicts
  __shared__ float b_tile[SIMT_K][SIMT_N + 4];  // (BLK_K, BLK_N)
  const int64_t m0 = int64_t(blockIdx.y) * SIMT_M, n0 = int64_t(blockIdx.x) * SIMT_N;
  const int tm = int(threadIdx.x) / (SIMT_N / SIMT_TN), tn = int(threadIdx.x) % (SIMT_N / SIMT_TN);
  float acc[SIMT_TM][SIMT_TN] = {};

  const int64_t summed = p.sum_batches ? p.batch : 1;
  for (int64_t s = 0; s < summed; ++s) {
    const int64_t batch = p.sum_batches ? s : int64_t(blockIdx.z);
    const T* a = static_cast<const T*>(p.a.data) + batch * p.a.batch_stride;
    const T* b = static_cast<const T*>(p.b.data) + batch * p.b.batch_stride;
    for (int64_t k0 = 0; k0 < p.k; k0 += SIMT_K) {
      // Consecutive threads take consecutive m (a) and n (b): coalesced for the common
      // layouts (transposed a, row-major b); other layouts still read each element once.
      for (int i = int(threadIdx.x); i < SIMT_M * SIMT_K; i += SIMT_THREADS) {
        const int kk = i / SIMT_M, mm = i % SIMT_M;
        const int64_t gm = m0 + mm, gk = k0 + kk;
        a_tile[kk][mm] = gm < p.m && gk < p.k ? load_float(a + gm * p.a.row_stride + gk * p.a.col_stride) : 0.0f;
      }
      for (int i = int(threadIdx.x); i < SIMT_N * SIMT_K; i += SIMT_THREADS) {
        const int kk = i / SIMT_N, nn = i % SIMT_N;
        const int64_t gn = n0 + nn, gk = k0 + kk;
        b_tile[kk][nn] = gn < p.n && gk < p.k ? load_float(b + gk * p.b.row_stride + gn * p.b.col_stride) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < SIMT_K; ++kk) {
        float av[SIMT_TM], bv[SIMT_TN];
#pragma unroll
        for (int i = 0; i < SIMT_TM; ++i) av[i] = a_tile[kk][tm + i * (SIMT_M / SIMT_TM)];
#pragma unroll
        for (int j = 0; j < SIMT_TN; ++j) bv[j] = b_tile[kk][tn + j * (SIMT_N / SIMT_TN)];
#pragma unroll
        for (int i = 0; i < SIMT_TM; ++i)
#pragma unroll
          for (int j = 0; j < SIMT_TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
      __syncthreads();
    }
  }

  // Rows and columns interleave by 16 so that a warp's stores cover contiguous columns.
  T* c = static_cast<T*>(p.c.data) + (p.sum_batches ? 0 : int64_t(blockIdx.z)) * p.c.batch_stride;
  const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
  for (int i = 0; i < SIMT_TM; ++i)
#pragma unroll
    for (int j = 0; j < SIMT_TN; ++j) {
      const int64_t row = m0 + tm + i * (SIMT_M / SIMT_TM), col = n0 + tn + j * (SIMT_N / SIMT_TN);
      if (row >= p.m || col >= p.n) continue;
      T* out = c + row * p.c.row_stride + col * p.c.col_stride;
      float v = p.alpha * acc[i][j];
      if (p.beta != 0.0f) v += p.beta * load_float(out);
      if (bias) v += load_float(bias + col * p.bias_stride);
      *out = from_float<T>(v);
    }
}

// grad_bias (n) = sum over (batch, m) of grad_c, in a fixed order per column.
template <class T>
__global__ void column_sum_kernel(const T* grad_c, int64_t batch, int64_t m, int64_t n, int64_t batch_stride,
                                  int64_t row_stride, int64_t col_stride, T* out, int64_t out_stride) {
  for (int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; col < n; col += int64_t(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t row = 0; row < m; ++row) sum += load_float(grad_c + b * batch_stride + row * row_stride + col * col_stride);
    out[col * out_stride] = from_float<T>(sum);
  }
}

template <class Fn> Status with_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f16: return fn.template operator()<__half>();
    case DType::bf16: return fn.template operator()<__nv_bfloat16>();
    default: return fn.template operator()<float>();
  }
}

// ------------------------------------------------------------------ lowering
Matrix matrix_of(const TensorRef& t) {
  return {t.ptr(), gemm_desc::batch_stride(t), t.stride(-2), t.stride(-1)};
}

// The problem of a validated GemmArgs, on the current stream of the operands' device.
Problem problem_of(const GemmArgs& args) {
  const gemm_desc::Shape s = gemm_desc::shape_of(args);
  Problem p;
  p.dtype = args.a.dtype;
  p.batch = s.batch, p.m = s.m, p.n = s.n, p.k = s.k;
  p.a = matrix_of(args.a), p.b = matrix_of(args.b), p.c = matrix_of(args.c);
  if (args.bias) p.bias = args.bias->ptr(), p.bias_stride = args.bias->stride(0);
  p.alpha = float(args.alpha), p.beta = float(args.beta);
  p.stream = cuda::current_stream();
  p.device = args.a.device.index;
  return p;
}

Matrix transposed(Matrix x) {
  std::swap(x.row_stride, x.col_stride);
  return x;
}

Status same_device(std::initializer_list<const TensorRef*> operands) {
  const int device = (*operands.begin())->device.index;
  for (const TensorRef* t : operands)
    if (t->device.index != device)
      return invalid_argument("operands are on different cuda devices (" + std::to_string(device) + " and " +
                              std::to_string(t->device.index) + ")");
  return Status::Ok();
}

Status device_check(const GemmArgs& args) {
  return args.bias ? same_device({&args.a, &args.b, &args.c, &*args.bias}) : same_device({&args.a, &args.b, &args.c});
}

// Runs one lowered problem on the best kernel that accepts it. Empty outputs need no
// launch; k == 0 is only the epilogue (c = beta * c + bias), which the SIMT kernel does.
Status run_best(const Problem& p) {
  if (p.m == 0 || p.n == 0 || (p.batch == 0 && !p.sum_batches)) return Status::Ok();
  if (p.k > 0 && p.batch > 0) {
    if (sm90_accepts(p).ok()) return run_sm90(p);
    if (sm80_accepts(p).ok()) return run_sm80(p);
  }
  return run_simt(p);
}

// ------------------------------------------------------------------ records
enum class Mainloop { simt, sm80, sm90 };

template <Mainloop kind> Status gemm_can_implement(const GemmArgs& args) {
  ANVIL_RETURN_IF_ERROR(device_check(args));
  if constexpr (kind == Mainloop::simt) return simt_accepts(problem_of(args));
  else if constexpr (kind == Mainloop::sm80) return sm80_accepts(problem_of(args));
  else return sm90_accepts(problem_of(args));
}

template <Mainloop kind> Status gemm_run(const GemmArgs& args) {
  cuda::DeviceGuard guard(args.a.device.index);
  ANVIL_RETURN_IF_ERROR(guard.status());
  const Problem p = problem_of(args);
  if (p.m == 0 || p.n == 0 || p.batch == 0) return Status::Ok();
  if (p.k == 0 || kind == Mainloop::simt) return run_simt(p);
  if constexpr (kind == Mainloop::sm80) return run_sm80(p);
  else return run_sm90(p);
}

// Gradients as GEMMs on the same kernels: grad_a = alpha * grad_c @ b^T, grad_b =
// alpha * a^T @ grad_c (summed over the batch for an operand that broadcasts), grad_bias =
// column sums of grad_c.
Status gemm_backward_can_implement(const GemmBackwardArgs& args) {
  std::vector<const TensorRef*> operands = {&args.a, &args.b, &args.grad_c};
  for (const auto* g : {&args.grad_a, &args.grad_b, &args.grad_bias})
    if (*g) operands.push_back(&**g);
  const int device = args.a.device.index;
  for (const TensorRef* t : operands)
    if (t->device.index != device) return invalid_argument("operands are on different cuda devices");
  return Status::Ok();
}

Status gemm_backward_run(const GemmBackwardArgs& args) {
  cuda::DeviceGuard guard(args.a.device.index);
  ANVIL_RETURN_IF_ERROR(guard.status());
  const gemm_desc::Shape s = gemm_desc::shape_of(args);
  const Matrix a = matrix_of(args.a), b = matrix_of(args.b), grad_c = matrix_of(args.grad_c);
  Problem base;
  base.dtype = args.a.dtype;
  base.batch = s.batch;
  base.alpha = float(args.alpha);
  base.stream = cuda::current_stream();
  base.device = args.a.device.index;
  if (args.grad_a) {
    Problem p = base;
    p.m = s.m, p.n = s.k, p.k = s.n;
    p.a = grad_c, p.b = transposed(b), p.c = matrix_of(*args.grad_a);
    p.sum_batches = s.batch > 1 && a.batch_stride == 0;
    if (p.sum_batches) p.c.batch_stride = 0;
    ANVIL_RETURN_IF_ERROR(run_best(p));
  }
  if (args.grad_b) {
    Problem p = base;
    p.m = s.k, p.n = s.n, p.k = s.m;
    p.a = transposed(a), p.b = grad_c, p.c = matrix_of(*args.grad_b);
    p.sum_batches = s.batch > 1 && b.batch_stride == 0;
    if (p.sum_batches) p.c.batch_stride = 0;
    ANVIL_RETURN_IF_ERROR(run_best(p));
  }
  if (args.grad_bias && s.n > 0) {
    const TensorRef& gb = *args.grad_bias;
    ANVIL_RETURN_IF_ERROR(with_type(base.dtype, [&]<class T>() {
      const int blocks = int(std::min<int64_t>((s.n + 255) / 256, 4096));
      column_sum_kernel<T><<<blocks, 256, 0, base.stream>>>(
          static_cast<const T*>(grad_c.data), s.batch, s.m, s.n, grad_c.batch_stride, grad_c.row_stride,
          grad_c.col_stride, gb.ptr<T>(), gb.stride(0));
      return cuda::check_launch("gemm_backward column_sum");
    }));
  }
  return Status::Ok();
}

}  // namespace

Status simt_accepts(const Problem& p) {
  if (p.batch > 65535) return unsupported("batch > 65535 (grid z limit)");
  if (p.m > int64_t(65535) * SIMT_M) return unsupported("m > 65535 * 64 (grid y limit)");
  return Status::Ok();
}

Status run_simt(const Problem& p) {
  if (p.m == 0 || p.n == 0 || (p.batch == 0 && !p.sum_batches)) return Status::Ok();
  ANVIL_RETURN_IF_ERROR(simt_accepts(p));
  return with_type(p.dtype, [&]<class T>() {
    const dim3 grid(unsigned((p.n + SIMT_N - 1) / SIMT_N), unsigned((p.m + SIMT_M - 1) / SIMT_M),
                    p.sum_batches ? 1u : unsigned(p.batch));
    gemm_simt_kernel<T><<<grid, SIMT_THREADS, 0, p.stream>>>(p);
    return cuda::check_launch("gemm_simt");
  });
}

void add_gemm_kernels(dispatch::KernelTables& tables) {
  using dispatch::kernel_name;
  for (DType dtype : {DType::bf16, DType::f16}) {
    tables.add(dispatch::KernelRecord<GemmArgs>{kernel_name(Op::gemm, dtype, "cuda", "sm90_wgmma"), "cuda", dtype, 200,
                                                gemm_can_implement<Mainloop::sm90>, gemm_run<Mainloop::sm90>});
    tables.add(dispatch::KernelRecord<GemmArgs>{kernel_name(Op::gemm, dtype, "cuda", "sm80_mma"), "cuda", dtype, 150,
                                                gemm_can_implement<Mainloop::sm80>, gemm_run<Mainloop::sm80>});
  }
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    tables.add(dispatch::KernelRecord<GemmArgs>{kernel_name(Op::gemm, dtype, "cuda", "simt"), "cuda", dtype, 100,
                                                gemm_can_implement<Mainloop::simt>, gemm_run<Mainloop::simt>});
    tables.add(dispatch::KernelRecord<GemmBackwardArgs>{kernel_name(Op::gemm_backward, dtype, "cuda"), "cuda", dtype,
                                                        100, gemm_backward_can_implement, gemm_backward_run});
  }
}

}  // namespace anvil::cuda_gemm
