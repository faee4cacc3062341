// bf16/f16 GEMM on tensor cores with mma.sync (sm_80 and newer; also the H100 path for
// shapes the sm_90a kernel refuses).
//
// Block tile (BLK_M, BLK_N, BLK_K) = (128, 128, 64), 8 warps as 2 (M) x 4 (N), each warp a
// (64, 32) tile of 4 x 4 mma.m16n8k16 with f32 accumulators (64 per thread). Operands go
// global -> shared with cp.async, STAGES deep, and shared -> registers with ldmatrix.
//
// Every operand tile is stored in shared memory with its *contiguous* global dimension
// contiguous, so each layout is a plain 16-byte-chunk copy:
//   A K-major  (row-major A)     tile (BLK_M rows, BLK_K cols)  ldmatrix
//   A M-major  (transposed A)    tile (BLK_K rows, BLK_M cols)  ldmatrix.trans
//   B N-major  (row-major B)     tile (BLK_K rows, BLK_N cols)  ldmatrix.trans
//   B K-major  (transposed B)    tile (BLK_N rows, BLK_K cols)  ldmatrix
// Rows are 128 or 256 bytes; the 16-byte chunk c of row r lives at chunk c ^ (r & 7), so
// the 8 rows an ldmatrix reads hit 8 different bank groups.
//
// Edges: cp.async copies fewer than 16 bytes and zero-fills the rest where a chunk crosses
// the matrix edge, so out-of-range k contributes 0; stores are predicated on (m, n).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "backends/cuda/cuda_runtime.h"
#include "kernels/gemm/gemm_cuda.h"

namespace anvil::cuda_gemm {
namespace {

constexpr int BLK_M = 128, BLK_N = 128, BLK_K = 64;
constexpr int STAGES = 3;
constexpr int WARPS_M = 2, WARPS_N = 4;
constexpr int THREADS = 32 * WARPS_M * WARPS_N;
constexpr int WARP_M = BLK_M / WARPS_M, WARP_N = BLK_N / WARPS_N;  // (64, 32)
constexpr int MMA_M = 16, MMA_N = 8, MMA_K = 16;
constexpr int TILES_M = WARP_M / MMA_M, TILES_N = WARP_N / MMA_N;  // 4 x 4 mma tiles per warp
constexpr int CHUNK = 8;                                           // 16-bit elements per 16 bytes
constexpr int TILE_ELEMENTS = BLK_M * BLK_K;                       // per operand per stage
constexpr int SMEM_BYTES = STAGES * 2 * TILE_ELEMENTS * 2;
static_assert(BLK_M * BLK_K == BLK_K * BLK_N, "A and B stage tiles have the same size");
static_assert(TILES_N % 2 == 0, "B fragments are loaded two n-tiles at a time");
static_assert((TILE_ELEMENTS / CHUNK) % THREADS == 0, "every thread copies the same number of chunks");
static_assert(BLK_K / CHUNK == 8 && BLK_M / CHUNK == 16, "swizzle assumes 8 or 16 chunks per row");

template <class T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  static __device__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  static __device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <> struct Mma<__half> {
  static __device__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ float to_float(__half x) { return __half2float(x); }
};

__device__ inline uint32_t smem_address(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// 16 bytes from global to shared; bytes [valid, 16) are zero-filled.
__device__ inline void copy_chunk(uint32_t dst, const void* src, int valid_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid_bytes));
}
__device__ inline void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ inline void wait_copies() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <bool TRANSPOSE> __device__ inline void load_matrix_x4(uint32_t (&r)[4], uint32_t address) {
  if constexpr (TRANSPOSE)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// One operand's stage tile: ROWS x COLS elements, COLS contiguous in global and shared.
template <int ROWS, int COLS> struct TileLayout {
  static constexpr int CHUNKS_PER_ROW = COLS / CHUNK;
  // Element offset of the chunk holding (row, col), col a multiple of CHUNK.
  static __device__ int offset(int row, int col) { return row * COLS + (((col / CHUNK) ^ (row & 7)) * CHUNK); }
};

// Copies the (ROWS, COLS) tile at (row0, col0) of a matrix with `rows` x `cols` elements and
// row stride `ld` into shared memory; out-of-range elements become 0.
template <int ROWS, int COLS, class T>
__device__ inline void load_tile(T* tile, const T* base, int64_t ld, int64_t rows, int64_t cols, int64_t row0,
                                 int64_t col0) {
  using L = TileLayout<ROWS, COLS>;
  constexpr int PER_THREAD = ROWS * L::CHUNKS_PER_ROW / THREADS;
#pragma unroll
  for (int i = 0; i < PER_THREAD; ++i) {
    const int chunk = int(threadIdx.x) + i * THREADS;
    const int r = chunk / L::CHUNKS_PER_ROW, c = (chunk % L::CHUNKS_PER_ROW) * CHUNK;
    const int64_t grow = row0 + r, gcol = col0 + c;
    int valid = 0;
    if (grow < rows && gcol < cols) valid = int(cols - gcol >= CHUNK ? 16 : (cols - gcol) * 2);
    const T* src = valid ? base + grow * ld + gcol : base;
    copy_chunk(smem_address(tile + L::offset(r, c)), src, valid);
  }
}

struct KernelParams {
  Problem p;
  bool pair_stores;  // c rows are 4-byte aligned with unit column stride
};

// A_K_MAJOR: a.col_stride == 1 (else a.row_stride == 1). B_K_MAJOR: b.row_stride == 1
// (else b.col_stride == 1).
template <class T, bool A_K_MAJOR, bool B_K_MAJOR>
__global__ void __launch_bounds__(THREADS, 1) gemm_sm80_kernel(const KernelParams params) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Problem& p = params.p;
  T* a_tiles = reinterpret_cast<T*>(smem);
  T* b_tiles = a_tiles + STAGES * TILE_ELEMENTS;

  const int64_t m0 = int64_t(blockIdx.y) * BLK_M, n0 = int64_t(blockIdx.x) * BLK_N;
  const int64_t batch = blockIdx.z;
  const T* a = static_cast<const T*>(p.a.data) + batch * p.a.batch_stride;
  const T* b = static_cast<const T*>(p.b.data) + batch * p.b.batch_stride;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int warp_m = (warp / WARPS_N) * WARP_M, warp_n = (warp % WARPS_N) * WARP_N;

  // Global tile geometry per layout: (rows, cols, ld) of the stored matrix.
  auto load_stage = [&](int stage, int64_t k0) {
    T* at = a_tiles + stage * TILE_ELEMENTS;
    T* bt = b_tiles + stage * TILE_ELEMENTS;
    if constexpr (A_K_MAJOR) load_tile<BLK_M, BLK_K>(at, a, p.a.row_stride, p.m, p.k, m0, k0);
    else load_tile<BLK_K, BLK_M>(at, a, p.a.col_stride, p.k, p.m, k0, m0);
    if constexpr (B_K_MAJOR) load_tile<BLK_N, BLK_K>(bt, b, p.b.col_stride, p.n, p.k, n0, k0);
    else load_tile<BLK_K, BLK_N>(bt, b, p.b.row_stride, p.k, p.n, k0, n0);
  };

  float acc[TILES_M][TILES_N][4] = {};
  const int64_t k_tiles = (p.k + BLK_K - 1) / BLK_K;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) load_stage(s, int64_t(s) * BLK_K);
    commit_copies();
  }

  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    wait_copies<STAGES - 2>();
    __syncthreads();  // stage kt landed for all threads; stage kt-1 is free to refill
    const int64_t next = kt + STAGES - 1;
    if (next < k_tiles) load_stage(int(next % STAGES), next * BLK_K);
    commit_copies();

    const T* at = a_tiles + int(kt % STAGES) * TILE_ELEMENTS;
    const T* bt = b_tiles + int(kt % STAGES) * TILE_ELEMENTS;
#pragma unroll
    for (int kk = 0; kk < BLK_K; kk += MMA_K) {
      uint32_t af[TILES_M][4];
#pragma unroll
      for (int mi = 0; mi < TILES_M; ++mi) {
        const int m = warp_m + mi * MMA_M;
        if constexpr (A_K_MAJOR)
          load_matrix_x4<false>(af[mi], smem_address(at + TileLayout<BLK_M, BLK_K>::offset(
                                                                m + lane % 16, kk + (lane / 16) * CHUNK)));
        else
          load_matrix_x4<true>(af[mi], smem_address(at + TileLayout<BLK_K, BLK_M>::offset(
                                                               kk + lane % 8 + (lane / 16) * CHUNK,
                                                               m + ((lane / 8) % 2) * CHUNK)));
      }
      uint32_t bf[TILES_N][2];
#pragma unroll
      for (int nj = 0; nj < TILES_N; nj += 2) {
        const int n = warp_n + nj * MMA_N;
        uint32_t r[4];
        if constexpr (B_K_MAJOR)
          load_matrix_x4<false>(r, smem_address(bt + TileLayout<BLK_N, BLK_K>::offset(
                                                         n + lane % 8 + (lane / 16) * CHUNK,
                                                         kk + ((lane / 8) % 2) * CHUNK)));
        else
          load_matrix_x4<true>(r, smem_address(bt + TileLayout<BLK_K, BLK_N>::offset(
                                                        kk + lane % 8 + ((lane / 8) % 2) * CHUNK,
                                                        n + (lane / 16) * CHUNK)));
        bf[nj][0] = r[0], bf[nj][1] = r[1], bf[nj + 1][0] = r[2], bf[nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < TILES_M; ++mi)
#pragma unroll
        for (int ni = 0; ni < TILES_N; ++ni) Mma<T>::run(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
  }
  wait_copies<0>();

  // Epilogue: accumulator (mi, ni, 2*h + e) is element (row + 8*h, col + e) with
  // row = lane/4 and col = 2*(lane%4) within the (16, 8) mma tile.
  T* c = static_cast<T*>(p.c.data) + batch * p.c.batch_stride;
  const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
  for (int mi = 0; mi < TILES_M; ++mi)
#pragma unroll
    for (int ni = 0; ni < TILES_N; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + warp_m + mi * MMA_M + lane / 4 + 8 * h;
        const int64_t col = n0 + warp_n + ni * MMA_N + 2 * (lane % 4);
        if (row >= p.m) continue;
        float v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          v[e] = p.alpha * acc[mi][ni][2 * h + e];
          if (col + e < p.n) {
            if (p.beta != 0.0f) v[e] += p.beta * Mma<T>::to_float(c[row * p.c.row_stride + (col + e) * p.c.col_stride]);
            if (bias) v[e] += Mma<T>::to_float(bias[(col + e) * p.bias_stride]);
          }
        }
        T* out = c + row * p.c.row_stride + col * p.c.col_stride;
        if (params.pair_stores && col + 1 < p.n) {
          T pair[2] = {Mma<T>::from_float(v[0]), Mma<T>::from_float(v[1])};
          *reinterpret_cast<uint32_t*>(out) = *reinterpret_cast<const uint32_t*>(pair);
        } else {
          for (int e = 0; e < 2 && col + e < p.n; ++e) out[e * p.c.col_stride] = Mma<T>::from_float(v[e]);
        }
      }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T, bool A_K_MAJOR, bool B_K_MAJOR> Status launch(const Problem& p) {
  auto kernel = gemm_sm80_kernel<T, A_K_MAJOR, B_K_MAJOR>;
  // Raised once per instantiation; the attribute is per device, so a second device would
  // need its own call (anvil sets it lazily on first use of each).
  static const Status attribute =
      cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES),
                  "cudaFuncSetAttribute (gemm_sm80)");
  ANVIL_RETURN_IF_ERROR(attribute);
  KernelParams params{p, false};
  params.pair_stores = p.c.col_stride == 1 && p.c.row_stride % 2 == 0 && p.c.batch_stride % 2 == 0 &&
                       reinterpret_cast<uintptr_t>(p.c.data) % 4 == 0;
  const dim3 grid(unsigned((p.n + BLK_N - 1) / BLK_N), unsigned((p.m + BLK_M - 1) / BLK_M), unsigned(p.batch));
  kernel<<<grid, THREADS, SMEM_BYTES, p.stream>>>(params);
  return cuda::check_launch("gemm_sm80");
}

}  // namespace

Status sm80_accepts(const Problem& p) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    return unsupported(std::string("sm80 mma.sync takes bf16 and f16, not ") + dtype_name(p.dtype));
  if (p.sum_batches) return unsupported("sums over the batch run on the SIMT kernel");
  const cuda::DeviceProps* props = nullptr;
  ANVIL_RETURN_IF_ERROR(cuda::device_props(p.device, &props));
  if (props->compute_capability() < 80)
    return unsupported("mma.sync bf16/f16 needs compute capability >= 8.0, device has " +
                       std::to_string(props->compute_capability()));
  if (props->smem_per_block_optin < SMEM_BYTES)
    return unsupported("needs " + std::to_string(SMEM_BYTES) + " bytes of shared memory per block");
  if (p.batch > 65535) return unsupported("batch > 65535 (grid z limit)");
  if (p.m > int64_t(65535) * BLK_M) return unsupported("m > 65535 * 128 (grid y limit)");
  const bool a_ok = (p.a.col_stride == 1 && p.a.row_stride % CHUNK == 0) ||
                    (p.a.row_stride == 1 && p.a.col_stride % CHUNK == 0);
  const bool b_ok = (p.b.col_stride == 1 && p.b.row_stride % CHUNK == 0) ||
                    (p.b.row_stride == 1 && p.b.col_stride % CHUNK == 0);
  if (!a_ok || !b_ok)
    return unsupported(std::string(a_ok ? "b" : "a") +
                       ": needs one unit stride and the other a multiple of 8 elements (16-byte rows for cp.async)");
  if (p.a.batch_stride % CHUNK || p.b.batch_stride % CHUNK || !aligned16(p.a.data) || !aligned16(p.b.data))
    return unsupported("a and b need 16-byte aligned base pointers and batch strides");
  return Status::Ok();
}

Status run_sm80(const Problem& p) {
  if (p.m == 0 || p.n == 0 || p.batch == 0) return Status::Ok();
  // A K-major when its columns are contiguous (ties, e.g. a single column, go K-major).
  const bool a_k_major = p.a.col_stride == 1 && p.a.row_stride % CHUNK == 0;
  const bool b_k_major = !(p.b.col_stride == 1 && p.b.row_stride % CHUNK == 0);
  const auto dispatch = [&]<class T>() {
    if (a_k_major) return b_k_major ? launch<T, true, true>(p) : launch<T, true, false>(p);
    return b_k_major ? launch<T, false, true>(p) : launch<T, false, false>(p);
  };
  return p.dtype == DType::bf16 ? dispatch.template operator()<__nv_bfloat16>() : dispatch.template operator()<__half>();
}

}  // namespace anvil::cuda_gemm
