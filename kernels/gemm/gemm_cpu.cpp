// The cpu GEMM driver: BLIS-style blocking, packing and OpenMP threading around the
// micro-kernels of gemm_cpu_<isa>.cpp, and the gemm / gemm_backward kernel records.
//
// Loop nest (Goto/BLIS):   jc: NC columns of C      (B block, KC x NC, in L2/L3)
//                           pc: KC of the inner dim  (pack B: slivers of (KC, NR))
//                           ic: MC rows of C         (pack A: slivers of (MR, KC), in L2)
//                           jr x ir: (MR, NR) tiles  (B sliver reused across ir; A sliver in L1)
// Block sizes come from the cache sizes read at run time. Both packings and the tile
// grid are split across threads; all threads share the packed blocks. Wide products of
// plain operands instead give each thread its own columns, packed by itself (no barriers).
// Small M (<= kStreamBMaxM: LLM decode and small batches) with row-major f32 B skips packing
// B: the micro-kernel streams B rows in place, since packing would double B's memory traffic.
// A in runs (conv2d's image windows, and row-major f32 A facing few B slivers) is not
// packed either: the f32 kernels read its rows in place through per-sliver row pointers,
// K is blocked on whole runs, and M is not blocked (ir x jr is one loop, no barrier).
// B may come packed over all of K by the caller (conv2d's weights).
// A small C over a deep K (conv2d's grad weight) splits K between the threads instead of
// the tiles: each runs the nest alone into its own f32 copy of C; the copies are summed.
// 16-bit outputs accumulate in an f32 workspace; each tile is rounded once into the output
// right after its last k block, while its workspace lines are still in cache.
#include "kernels/gemm/gemm_cpu.h"

#include <emmintrin.h>  // SSE2, part of the x86-64 baseline

#include <algorithm>
#include <cstring>

#include "backends/cpu/cpu_runtime.h"
#include "kernels/common/cpu_elements.h"
#include "kernels/common/cpu_transpose.h"
#include "dispatch/kernel_record.h"
#include "kernels/gemm/gemm_desc.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace anvil::cpu_gemm {
namespace {

constexpr int64_t kUnpackedMaxM = 4;
// Up to this M, row-major f32 B that is not read with A in place is streamed unpacked: B is
// read about once, and packing would write and read it again. Measured on Sapphire Rapids
// against packing (M x 4096 x 4096, 2 threads, (6, 64) tile) with B prefetched rows ahead:
// 1.4x at M = 8, 1.06x at 16, 0.88x at 24. With B prefetched along its rows into L2
// (gemm_cpu_avx512.cpp), on Zen 4: 1.8x at M = 24, 1.7x at 32, 1.5x at 48, 1.2x at 64
// (64x11008x4096 1.4x, 64x8192x8192 1.4x), level at N = 1024; 1.1-1.2x still at 96 and 128,
// where C (M x N, passed once per short k block) outgrows L2, hence the limit.
constexpr int64_t kStreamBMaxM = 64;
// The k block of streamed B: short, so that the B rows one block spans (each ldb apart, a
// page of its own for wide B) are few enough for the L2 streamer to follow all of them
// while the tiles step along them, 256 bytes a tile. At KC 512 each tile read its 256
// bytes of 512 rows and left, and B came at 10 GB/s. Measured against oneDNN's matmul (2
// threads, one process), KC 512 -> 96: 16x4096x4096 0.71-0.79 -> 0.99-1.15x, 8x4096x4096
// 0.88-0.93 -> 1.17x, 4x4096x4096 1.49-1.56 -> 1.96x, 1x4096x4096 1.42-1.54 -> 1.79-1.86x,
// 16x11008x4096 1.2 -> 1.29x; 1x11008x4096 level to 4% slower. (64: 1x11008 9% slower;
// 128: 16x4096 0.92-0.95.) Each k block costs a pass over C, which is small here.
constexpr int64_t kStreamBKc = 96;
constexpr int64_t kInPlaceMaxSlivers = 8;  // B slivers per block up to which A is read in place (a_in_place)
// Below this many flops an OpenMP fork costs more than a second core gives. Measured on 2
// Zen 4 cores (one process, alternating): one thread 1.22x faster at 32^3; two threads 1.3x
// faster at 40^3, 1.5-1.7x at 48^3-80^3, 1.1x at 16x64x64 (it was 2 * 96^3).
constexpr int64_t kSerialFlops = int64_t(3) << 15;
// C of at least this many L2 sizes is stored past the caches once final (Tile::stream_c).
// Measured (conv2d NHWC output, 2 threads, 2 MiB L2, anvil ÷ oneDNN with plain stores ->
// streamed, one process): 25 MiB 1.05-1.2x faster; 6.4 MiB (res2 1x1 64 -> 64 at batch 8)
// 0.75-0.77 -> 0.91-0.94, res4 1x1 at batch 8 0.95 -> 0.98, res2 3x3 level; 4 MiB (GEMM
// 1024^3) level; 3.2 MiB mixed (0.97-1.05x, and 0.9x in an earlier driver), so left out.
constexpr int64_t kStreamCMinL2s = 2;
constexpr int64_t kDynamicChunkFlops = int64_t(1) << 22;  // ~20 us on a core: a chunk fetch (~0.1 us) is noise

struct Blocking {
  int64_t kc, mc, nc;
};

bool in_parallel_region() {
#ifdef _OPENMP
  return omp_in_parallel();
#else
  return false;
#endif
}

int64_t round_down(int64_t x, int64_t multiple) { return std::max(multiple, x / multiple * multiple); }

Blocking blocking_for(const MicroKernel& k) {
  const cpu::CpuInfo& info = cpu::cpu_info();
  const int64_t elem = k.bf16 ? 2 : 4;
  const int64_t k_multiple = std::max({int64_t(16), int64_t(k.a.k_multiple), int64_t(k.b.k_multiple)});
  Blocking b;
  if (k.bf16) {
    // bf16: the A sliver (MR, KC) takes at most 3/4 of L1 and the B sliver streams from L2,
    // as for f32 below, but deeper: the f32 workspace C costs a pass of loads and stores per
    // k block. Measured on Zen 4 (32 KiB L1, vdpbf16ps (12, 32) tile, 2 threads, one
    // process): KC 1024 ran 1024^3 and 2048^3 1.05-1.2x faster than 512 and 1.1-1.2x faster
    // than 272 (both slivers in L1, the earlier rule); 1536-2048 level with 1024. AMX tiles
    // (kc_min 1024) are held to 1024 by the same bounds.
    b.kc = std::clamp(round_down(info.l1d_bytes * 3 / 4 / (k.mr * elem), k_multiple),
                      std::max(int64_t(64), int64_t(k.kc_min)), int64_t(1024));
  } else {
    // f32: the A sliver (MR, KC) takes at most half of L1 and the B sliver (KC, NR) streams
    // from L2 (the micro-kernel prefetches it). Each k block costs a pass over C (loads and
    // stores of every tile), so a deep block beats L1 residency of B. Measured on Sapphire
    // Rapids (48 KiB L1): with the 12x32 tile KC 512 ran 2048^3 at 1.1-1.2x the speed of
    // KC 192 (both slivers in L1); with the 6x64 tile KC 512 runs 1024^3 and 2048^3
    // 1.05-1.1x faster than 256 and as fast as 768-1024. MC 126-504 makes no difference.
    b.kc = std::clamp(round_down(info.l1d_bytes / 2 / (k.mr * elem), k_multiple), int64_t(64), int64_t(512));
  }
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

// Elements (row, col0 .. col0 + count) of a matrix in runs, one copy per run.
void read_runs(const Runs& runs, int64_t row, int64_t col0, int64_t count, float* dst) {
  for (int64_t index = col0 / runs.run, offset = col0 % runs.run; count > 0; ++index, offset = 0) {
    const float* start;
    runs.locate(runs.ctx, index, 1, row, 1, 1, &start);
    const int64_t n = std::min(runs.run - offset, count);
    std::memcpy(dst, start + offset, size_t(n) * sizeof(float));
    dst += n;
    count -= n;
  }
}

// Elements (row, col0 .. col0 + count) as f32.
void read_row(const Matrix& x, int64_t row, int64_t col0, int64_t count, float* dst) {
  if (count <= 0) return;  // empty operands may have null data
  if (x.in_runs()) return read_runs(x.runs, row, col0, count, dst);
  switch (x.dtype) {
    case DType::f16: return read_strided<float16>(x, row, col0, count, dst);
    case DType::bf16: return read_strided<bfloat16>(x, row, col0, count, dst);
    default: return read_strided<float>(x, row, col0, count, dst);
  }
}

// Elements (row0 .. row0 + count, col) as f32: a column, read as a row of the transpose.
// Never used on matrices in runs (they are found by rows only).
void read_column(const Matrix& x, int64_t row0, int64_t col, int64_t count, float* dst) {
  Matrix t = x;
  std::swap(t.row_stride, t.col_stride);
  read_row(t, col, row0, count, dst);
}

int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// The bf16 elements of x when they can be copied into bf16 slivers bit for bit (no gather,
// no conversion); else null.
const bfloat16* raw_bf16(const Matrix& x, bool bf16_sliver) {
  return bf16_sliver && x.dtype == DType::bf16 && !x.in_runs() ? static_cast<const bfloat16*>(x.data) : nullptr;
}

// Slivers are stored in the micro-kernel's Packing: (k_steps / group, width, group)
// elements, f32 or bf16, W = MR for A and NR for B, zero-padded in W and past kc.
struct SliverWriter {
  bool bf16;
  Packing packing;
  int64_t width, kc;
  int64_t k_steps() const { return round_up(kc, packing.k_multiple); }
  int64_t elements() const { return width * k_steps(); }
  // values[k] of lane w (a row of A or a column of B) into the sliver: f32 values, or
  // bf16 elements `stride` apart copied as they are.
  void put_lane(void* sliver, int64_t w, const float* values) const {
    if (!bf16) return fill<float>(sliver, w, [&](int64_t k) { return values[k]; });
    fill<bfloat16>(sliver, w, [&](int64_t k) { return to_bfloat16(values[k]); });
  }
  void put_lane(void* sliver, int64_t w, const bfloat16* src, int64_t stride) const {
    if (stride == 1) return fill<bfloat16>(sliver, w, [&](int64_t k) { return src[k]; });
    fill<bfloat16>(sliver, w, [&](int64_t k) { return src[k * stride]; });
  }
  void zero_lane(void* sliver, int64_t w) const {
    if (!bf16) return fill<float>(sliver, w, [](int64_t) { return 0.0f; });
    fill<bfloat16>(sliver, w, [](int64_t) { return bfloat16{0}; });
  }

 private:
  template <class T, class Get> void fill(void* sliver, int64_t w, const Get& get) const {
    switch (packing.group) {  // the kernels' groups as constants, so that whole groups copy as blocks
      case 1: return fill_groups<T, 1>(sliver, w, get);
      case 2: return fill_groups<T, 2>(sliver, w, get);
      case 32: return fill_groups<T, 32>(sliver, w, get);
      default: return fill_groups<T, 0>(sliver, w, get);
    }
  }
  template <class T, int kGroup, class Get> void fill_groups(void* sliver, int64_t w, const Get& get) const {
    const int group = kGroup ? kGroup : packing.group;
    T* dst = static_cast<T*>(sliver) + w * group;
    const int64_t step = width * group;  // from one group of the lane to its next
    int64_t k = 0;
    for (; k + group <= kc; k += group, dst += step)
      for (int j = 0; j < group; ++j) dst[j] = get(k + j);
    for (; k < k_steps(); k += group, dst += step)
      for (int j = 0; j < group; ++j) dst[j] = k + j < kc ? get(k + j) : T{};
  }
};

// Row-major B (unit column stride) is packed a row of the block at a time (a pair of
// rows for bf16 pairs): sequential reads of B, split into the slivers' rows.
// B in runs (implicit GEMM) is always read by rows.
bool packs_by_row(const Matrix& b, const SliverWriter& w) {
  return (b.in_runs() || b.col_stride == 1) && w.packing.group == (w.bf16 ? 2 : 1);
}

// row[2j], row[2j + 1] = even[j], odd[j] for j < cols (SSE2, the driver's baseline ISA).
void interleave_pairs(const bfloat16* even, const bfloat16* odd, int64_t cols, bfloat16* row) {
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(even + j));
    const __m128i o = _mm_loadu_si128(reinterpret_cast<const __m128i*>(odd + j));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(row + 2 * j), _mm_unpacklo_epi16(e, o));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(row + 2 * j + 8), _mm_unpackhi_epi16(e, o));
  }
  for (; j < cols; ++j) {
    row[2 * j] = even[j];
    row[2 * j + 1] = odd[j];
  }
}

// Packs k step `step` of the block: row k0 + step (f32), or rows k0 + 2*step and
// k0 + 2*step + 1 interleaved (bf16 pairs; a row past kc is zero). tmp holds 2 * ncols
// floats.
void pack_b_rows(const Matrix& b, int64_t step, int64_t k0, int64_t n0, int64_t ncols, const SliverWriter& w,
                 void* dst, float* tmp) {
  if (!w.bf16) {
    float* out = static_cast<float*>(dst);
    // The row itself when it is f32 with unit column stride: a copy through tmp first
    // doubled the copying of 64 x 4096 x 4096 (packing was a third of the call).
    const float* row_in = tmp;
    if (step >= w.kc) std::fill(tmp, tmp + ncols, 0.0f);
    else if (!b.in_runs() && b.dtype == DType::f32 && b.col_stride == 1 && ncols > 0)
      row_in = static_cast<const float*>(b.data) + (k0 + step) * b.row_stride + n0;
    else read_row(b, k0 + step, n0, ncols, tmp);
    for (int64_t s = 0; s * w.width < ncols; ++s) {
      const int64_t cols = std::min(w.width, ncols - s * w.width);
      float* row = out + s * w.elements() + step * w.width;
      std::memcpy(row, row_in + s * w.width, size_t(cols) * sizeof(float));
      std::fill(row + cols, row + w.width, 0.0f);
    }
    return;
  }
  // Both rows as bf16: in place when B is bf16 already, else converted into tmp.
  const bfloat16* rows[2];
  bfloat16* converted = reinterpret_cast<bfloat16*>(tmp);
  const bfloat16* raw = raw_bf16(b, true);
  for (int r = 0; r < 2; ++r) {
    const int64_t k = 2 * step + r;
    bfloat16* own = converted + r * ncols;
    if (k >= w.kc) {
      std::fill(own, own + ncols, bfloat16{0});
      rows[r] = own;
    } else if (raw) {
      rows[r] = raw + (k0 + k) * b.row_stride + n0;
    } else {
      float* values = tmp + ncols;  // f32 in tmp's second half, the bf16 rows in its first
      read_row(b, k0 + k, n0, ncols, values);
      for (int64_t j = 0; j < ncols; ++j) own[j] = to_bfloat16(values[j]);
      rows[r] = own;
    }
  }
  bfloat16* out = static_cast<bfloat16*>(dst);
  for (int64_t s = 0; s * w.width < ncols; ++s) {
    bfloat16* row = out + s * w.elements() + step * 2 * w.width;  // (NR, 2) for this k pair
    const int64_t c0 = s * w.width, cols = std::min(w.width, ncols - c0);
    interleave_pairs(rows[0] + c0, rows[1] + c0, cols, row);
    std::fill(row + 2 * cols, row + 2 * w.width, bfloat16{0});
  }
}

// Other layouts (transposed B, implicit-GEMM gathers, AMX rows) go lane by lane.
void pack_b_sliver(const Matrix& b, int64_t k0, int64_t n0, int64_t ncols, const SliverWriter& w, void* dst,
                   float* tmp) {
  const bfloat16* raw = raw_bf16(b, w.bf16);
  for (int64_t j = 0; j < w.width; ++j) {
    if (j >= ncols) {
      w.zero_lane(dst, j);
    } else if (raw) {
      w.put_lane(dst, j, raw + k0 * b.row_stride + (n0 + j) * b.col_stride, b.row_stride);
    } else {
      read_column(b, k0, n0 + j, w.kc, tmp);
      w.put_lane(dst, j, tmp);
    }
  }
}

// B in runs (conv2d's image as the grad-weight B) into f32 slivers, block rows [k0, k0 + kc)
// and columns [n0, n0 + ncols). Work items of (run, 64 rows) go to the threads of the
// enclosing parallel region; each locates its rows' starts with one locate() call, splits
// the run's columns into the pieces that fall into one sliver each (the same for every
// row), and copies those pieces of each row. Called by every thread.
void pack_b_runs(const Matrix& b, int64_t k0, int64_t kc, int64_t n0, int64_t ncols, const SliverWriter& w,
                 float* dst) {
  constexpr int64_t kRowsPerItem = 64;
  struct Piece {
    int64_t to, from, length;  // to: offset in the slivers (of row 0); from: offset in the run
  };
  const int64_t run = b.runs.run, first = n0 / run, runs = (n0 + ncols - 1) / run - first + 1;
  const int64_t chunks = (kc + kRowsPerItem - 1) / kRowsPerItem;
  const float* starts[kRowsPerItem];
  std::vector<Piece> pieces;
#pragma omp for schedule(static) nowait
  for (int64_t item = 0; item < runs * chunks; ++item) {
    const int64_t index = first + item / chunks, r0 = item % chunks * kRowsPerItem;
    const int64_t rows = std::min(kRowsPerItem, kc - r0);
    const int64_t c_begin = std::max(n0, index * run), c_end = std::min(n0 + ncols, (index + 1) * run);
    pieces.clear();
    for (int64_t col = c_begin; col < c_end;) {
      const int64_t sliver = (col - n0) / w.width, lane = (col - n0) % w.width;
      const int64_t length = std::min(c_end - col, w.width - lane);
      pieces.push_back({sliver * w.elements() + r0 * w.width + lane, col - index * run, length});
      col += length;
    }
    b.runs.locate(b.runs.ctx, index, 1, k0 + r0, rows, rows, starts);
    for (int64_t k = 0; k < rows; ++k)
      for (const Piece& piece : pieces)
        std::memcpy(dst + piece.to + k * w.width, starts[k] + piece.from, size_t(piece.length) * sizeof(float));
  }
  if (const int64_t edge = ncols % w.width; edge != 0) {  // the last sliver's lanes past ncols
    float* last = dst + (ncols / w.width) * w.elements();
#pragma omp for schedule(static) nowait
    for (int64_t k = 0; k < kc; ++k) std::fill(last + k * w.width + edge, last + (k + 1) * w.width, 0.0f);
  }
#pragma omp barrier
}

// kc columns of kRows adjacent floats, col_stride apart, into (kc, kRows).
template <int kRows> void copy_columns(const float* column, int64_t col_stride, int64_t kc, float* out) {
  for (int64_t k = 0; k < kc; ++k, column += col_stride, out += kRows)
    for (int i = 0; i < kRows; ++i) out[i] = column[i];
}

void pack_a_sliver(const Matrix& a, int64_t m0, int64_t rows, int64_t k0, const SliverWriter& w, void* dst,
                   float* tmp) {
  if (!w.bf16 && w.packing.group == 1 && w.packing.k_multiple == 1 && a.dtype == DType::f32 && !a.in_runs() &&
      a.row_stride == 1) {
    // Column-major f32 A (a transposed operand; conv2d's grad_output^T): each k step of the
    // sliver is MR adjacent elements of one column, a copy.
    const float* column = static_cast<const float*>(a.data) + k0 * a.col_stride + m0;
    float* out = static_cast<float*>(dst);
    switch (rows == w.width ? rows : 0) {  // whole slivers of the f32 tiles: copies the compiler unrolls
      case 6: return copy_columns<6>(column, a.col_stride, w.kc, out);
      case 12: return copy_columns<12>(column, a.col_stride, w.kc, out);
    }
    for (int64_t k = 0; k < w.kc; ++k, column += a.col_stride, out += w.width) {
      std::memcpy(out, column, size_t(rows) * sizeof(float));
      std::fill(out + rows, out + w.width, 0.0f);
    }
    return;
  }
  if (!w.bf16 && w.packing.group == 1 && w.packing.k_multiple == 1 && a.dtype == DType::f32 && !a.in_runs() &&
      a.col_stride == 1) {
    // Row-major f32 A: the sliver is the transpose of its rows (a row through a temporary
    // and a scattered store per element was 3% of 2048^3).
    float* out = static_cast<float*>(dst);
    cpu_elements::transpose_f32(static_cast<const float*>(a.data) + m0 * a.row_stride + k0, a.row_stride, rows, w.kc,
                                w.width, out);
    for (int64_t i = rows; i < w.width; ++i) w.zero_lane(dst, i);
    return;
  }
  const bfloat16* raw = raw_bf16(a, w.bf16);
  if (raw && w.packing.group == 2 && a.col_stride == 1 && a.row_stride % 2 == 0 && k0 % 2 == 0) {
    // Row-major bf16 A into pairs (K/2, MR, 2): a pair of adjacent k is one 32-bit word of
    // the row, so the sliver is the transpose of the rows' words (a scattered 4-byte store
    // per pair was 10% of a bf16 512^3 product on Zen 4). An odd last k pairs with zero.
    const int64_t pairs = w.kc / 2;
    const bfloat16* first = raw + m0 * a.row_stride + k0;
    auto* out = static_cast<bfloat16*>(dst);
    cpu_elements::transpose_f32(reinterpret_cast<const float*>(first), a.row_stride / 2, rows, pairs, w.width,
                                reinterpret_cast<float*>(out));
    if (w.kc % 2)
      for (int64_t i = 0; i < rows; ++i) {
        out[(pairs * w.width + i) * 2] = first[i * a.row_stride + w.kc - 1];
        out[(pairs * w.width + i) * 2 + 1] = bfloat16{0};
      }
    for (int64_t i = rows; i < w.width; ++i) w.zero_lane(dst, i);
    return;
  }
  for (int64_t i = 0; i < w.width; ++i) {
    if (i >= rows) {
      w.zero_lane(dst, i);
    } else if (raw) {
      w.put_lane(dst, i, raw + (m0 + i) * a.row_stride + k0 * a.col_stride, a.col_stride);
    } else {
      read_row(a, m0 + i, k0, w.kc, tmp);
      w.put_lane(dst, i, tmp);
    }
  }
}

// The k block of a term that starts at pc: up to KC, or for A in runs whole runs (a run
// longer than KC in equal pieces), so that each row of the block is a list of equal runs.
// A tail of at most a quarter of a block's runs joins the block before it: each block is a
// pass of loads and stores over C, and a 3x3 conv over 64 channels (9 runs of 64, 8 to a
// block) would spend a whole pass on its ninth tap.
struct KBlock {
  int64_t kc;
  int64_t run;  // length of each run of A in the block; 0 when A is not in runs
};
KBlock k_block_at(const Term& term, int64_t pc, int64_t kc) {
  if (!term.a.in_runs()) return {std::min(kc, term.k - pc), 0};
  const int64_t run = term.a.runs.run;
  if (run <= kc) {
    const int64_t per_block = kc / run, left = (term.k - pc) / run;
    return {(left <= per_block + per_block / 4 ? left : per_block) * run, run};
  }
  const int64_t pieces = (run + kc - 1) / kc, piece = (run + pieces - 1) / pieces;
  const int64_t length = std::min(piece, run - pc % run);
  return {length, length};
}

// Whether the tiles of A read in place go A sliver by A sliver (each reading every B sliver
// of the block) rather than B sliver by B sliver: the operand with more data in the block
// goes outermost, so that it is fetched once and the other is re-read from cache. A when
// M exceeds the block's columns (res2 3x3: 3136 rows, 64 columns, 1.3x faster), else B
// (res5 3x3: 49 rows, 512 columns, 1.2-1.5x).
bool rows_in_place_a_outer(int64_t M, int64_t nc, int64_t nr) { return M > (nc + nr - 1) / nr * nr; }

// The row pointers of A sliver rows [m0, m0 + rows) over the k block [pc, pc + block.kc) of
// A in runs: run j of row i at table[j * MR + i] (the micro-kernel's Tile::a_rows). Rows
// past the edge repeat the first; the kernel computes only the live rows.
void locate_sliver(const Runs& runs, int64_t m0, int64_t rows, int64_t pc, const KBlock& block, int64_t mr,
                   const float** table) {
  const int64_t first = pc / runs.run, offset = pc % runs.run, count = block.kc / block.run;
  runs.locate(runs.ctx, first, count, m0, rows, mr, table);
  for (int64_t j = 0; j < count; ++j) {
    const float** out = table + j * mr;
    // Only for a run split between k blocks: the loop's vector loads of the pointers just
    // stored one by one would miss store forwarding (a third of the driver's time per
    // tile in a 1x1 conv over 64 channels).
    if (offset != 0)
      for (int64_t i = 0; i < rows; ++i) out[i] += offset;
    std::fill(out + rows, out + mr, out[0]);
  }
}

// bf16 rounding (to_bfloat16) of 8 floats at a time, in SSE2 (the driver's baseline ISA).
inline __m128i bf16_bits_sse2(__m128 v) {  // 4 results, sign-extended to 32 bits
  const __m128i u = _mm_castps_si128(v);
  const __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
  const __m128i rounded = _mm_srai_epi32(_mm_add_epi32(u, _mm_add_epi32(lsb, _mm_set1_epi32(0x7fff))), 16);
  const __m128i quiet_nan = _mm_or_si128(_mm_srai_epi32(u, 16), _mm_set1_epi32(0x40));
  const __m128i is_nan = _mm_cmpgt_epi32(_mm_and_si128(u, _mm_set1_epi32(0x7fffffff)), _mm_set1_epi32(0x7f800000));
  return _mm_or_si128(_mm_and_si128(is_nan, quiet_nan), _mm_andnot_si128(is_nan, rounded));
}
inline __m128 bf16_to_f32_sse2(__m128i bits) { return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), bits)); }

template <class T> void store_out(T* p, float v) {
  if constexpr (std::is_same_v<T, float16>) *p = to_float16(v);
  else if constexpr (std::is_same_v<T, bfloat16>) *p = to_bfloat16(v);
  else *p = v;
}

// Row i, columns [j0, j1) of C = alpha * acc + beta * C + bias, rounded once: a 16-bit
// output from its f32 workspace row (acc_row, indexed by column), or any output when K = 0
// (acc_row null).
template <class T>
void finish_row(const Output& c, const float* acc_row, int64_t i, int64_t j0, int64_t j1, float alpha, float beta,
                const float* bias) {
  T* out = static_cast<T*>(c.data) + i * c.ldc;
  int64_t j = j0;
  if constexpr (std::is_same_v<T, bfloat16>) {
    if (acc_row) {  // the same operations, in the same order, as the scalar loop below
      const __m128 va = _mm_set1_ps(alpha), vb = _mm_set1_ps(beta);
      for (; j + 8 <= j1; j += 8) {
        __m128 lo = _mm_mul_ps(va, _mm_loadu_ps(acc_row + j)), hi = _mm_mul_ps(va, _mm_loadu_ps(acc_row + j + 4));
        if (beta != 0.0f) {
          const __m128i old = _mm_loadu_si128(reinterpret_cast<const __m128i*>(out + j));
          lo = _mm_add_ps(lo, _mm_mul_ps(vb, bf16_to_f32_sse2(old)));
          hi = _mm_add_ps(hi, _mm_mul_ps(vb, bf16_to_f32_sse2(_mm_srli_si128(old, 8))));
        }
        if (bias) {
          lo = _mm_add_ps(lo, _mm_loadu_ps(bias + j));
          hi = _mm_add_ps(hi, _mm_loadu_ps(bias + j + 4));
        }
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm_packs_epi32(bf16_bits_sse2(lo), bf16_bits_sse2(hi)));
      }
    }
  }
  for (; j < j1; ++j) {
    float v = acc_row ? alpha * acc_row[j] : 0.0f;
    if (beta != 0.0f) v += beta * to_f32(out + j);
    if (bias) v += bias[j];
    store_out<T>(out + j, v);
  }
}

// Rows [i0, i0 + rows) x columns [j0, j0 + cols) of C (see finish_row).
void finish_block(const Output& c, const float* acc, int64_t ld_acc, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                  float alpha, float beta, const float* bias) {
  for (int64_t i = i0; i < i0 + rows; ++i) {
    const float* acc_row = acc ? acc + i * ld_acc : nullptr;
    switch (c.dtype) {
      case DType::f16: finish_row<float16>(c, acc_row, i, j0, j0 + cols, alpha, beta, bias); break;
      case DType::bf16: finish_row<bfloat16>(c, acc_row, i, j0, j0 + cols, alpha, beta, bias); break;
      default: finish_row<float>(c, acc_row, i, j0, j0 + cols, alpha, beta, bias);
    }
  }
}

}  // namespace

const MicroKernel* kernel_for(Isa isa) {
  const cpu::CpuInfo& info = cpu::cpu_info();
  switch (isa) {
    case Isa::amx_bf16: return info.amx_bf16 && info.amx_permitted ? micro_kernel_bf16_amx() : nullptr;
    case Isa::avx512_bf16: return info.avx512_bf16 ? micro_kernel_bf16_avx512() : nullptr;
    case Isa::avx512: return info.avx512 ? micro_kernel_f32_avx512() : nullptr;
    case Isa::avx2: return info.avx2 ? micro_kernel_f32_avx2() : nullptr;
  }
  return nullptr;
}

// The narrow tile computes fewer FMAs per load, so it pays only where the wide one pads
// more columns. Measured on Sapphire Rapids, (12, 32) against (6, 64), 1024 x n x 1024, 2
// threads: 0.89x the speed at n = 48 and 64 (same padding), 1.23x at 96, 1.1x at 147 and
// 160, 1.04x at 224 (1/8 fewer columns), 1.01x at 288 (1/10 fewer).
const MicroKernel& for_columns(const MicroKernel& kernel, int64_t n) {
  if (!kernel.narrow) return kernel;
  const int64_t narrow_columns = round_up(n, kernel.narrow->nr), columns = round_up(n, kernel.nr);
  return narrow_columns * 9 < columns * 8 ? *kernel.narrow : kernel;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::amx_bf16: return "amx";
    case Isa::avx512_bf16: return "avx512bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
  }
  return "?";
}

Status isa_present(Isa isa) {
  if (kernel_for(isa)) return Status::Ok();
  const cpu::CpuInfo& info = cpu::cpu_info();
  if (isa == Isa::amx_bf16 && info.amx_bf16) return unsupported(info.amx_refused);
  return unsupported(std::string("this CPU lacks ") + isa_name(isa) + " (" + cpu::cpu_info().describe() + ")");
}

namespace {

// Row-major f32 A that meets few B slivers is read in place through its rows (one run per
// row, Tile::a_rows) rather than packed: packing costs about as much as the tiles when each
// A sliver serves few B slivers. Measured on Sapphire Rapids (M 2048, K 1024, 2 threads):
// 2.9x faster at 32 columns, 2.2x at 64, 1.7x at 128, 1.2x at 256, 1.06x at 512, even at
// 1024; at 2048^3 packing is 1.13x faster.
constexpr int64_t kRowsInPlaceMaxColumns = 512;

struct RowsOf {
  const float* data;
  int64_t row_stride;
};

void locate_rows(const void* ctx, int64_t /*first: always 0*/, int64_t /*count: always 1, a row is one run*/,
                 int64_t row0, int64_t rows, int64_t /*stride*/, const float** out) {
  const auto& a = *static_cast<const RowsOf*>(ctx);
  for (int64_t i = 0; i < rows; ++i) out[i] = a.data + (row0 + i) * a.row_stride;
}

// Whether the driver reads the A rows of term t in place (Tile::a_rows) in an M x N product.
bool reads_a_rows(const Term& t, int64_t M, int64_t N, const MicroKernel& kernel) {
  return kernel.reads_rows && N <= kRowsInPlaceMaxColumns && M > kUnpackedMaxM && t.k > 0 && !t.a.in_runs() &&
         t.a.dtype == DType::f32 && t.a.col_stride == 1;
}

// The terms as the driver runs them: `given`, or a copy in `own` whose row-major f32 A
// operands are matrices in runs over their rows (described in `rows`, which must outlive
// the call).
const std::vector<Term>& with_rows_in_place(const std::vector<Term>& given, int64_t M, int64_t N,
                                            const MicroKernel& kernel, std::vector<RowsOf>& rows,
                                            std::vector<Term>& own) {
  if (!kernel.reads_rows || N > kRowsInPlaceMaxColumns || M <= kUnpackedMaxM) return given;
  own = given;
  rows.reserve(own.size());  // stable addresses for the Runs contexts
  for (Term& t : own)
    if (reads_a_rows(t, M, N, kernel)) {
      rows.push_back({static_cast<const float*>(t.a.data), t.a.row_stride});
      t.a.runs = Runs{t.k, &locate_rows, &rows.back()};
    }
  return own;
}

// data + elements of dtype; null stays null (an empty operand's data).
const void* offset(const void* data, DType dtype, int64_t elements) {
  return data ? static_cast<const char*>(data) + elements * int64_t(dtype_size(dtype)) : data;
}

// B in runs from row k0 on: rows [k0, k0 + k) of it.
struct ShiftedRuns {
  Runs runs;
  int64_t row0 = 0;
  static void locate(const void* ctx, int64_t first, int64_t count, int64_t row0, int64_t rows, int64_t stride,
                     const float** out) {
    const auto& s = *static_cast<const ShiftedRuns*>(ctx);
    s.runs.locate(s.runs.ctx, first, count, row0 + s.row0, rows, stride, out);
  }
};

// Term t (A not in runs) over k steps [k0, k0 + k) only; B's shifted runs live in b_runs.
Term k_slice(const Term& t, int64_t k0, int64_t k, ShiftedRuns& b_runs) {
  Term slice = t;
  slice.k = k;
  slice.a.data = offset(t.a.data, t.a.dtype, k0 * t.a.col_stride);
  if (t.b.in_runs()) {
    b_runs = {t.b.runs, k0};
    slice.b.runs = Runs{t.b.runs.run, &ShiftedRuns::locate, &b_runs};
  } else {
    slice.b.data = offset(t.b.data, t.b.dtype, k0 * t.b.row_stride);
  }
  return slice;
}

// A small C over a deep k (conv2d's grad weight: 64 x 147 over 12544 pixels for ResNet's
// conv1; 64 x 64 over 25088 for a 1x1 conv at batch 8) has too few tiles to share out, and
// each of its many k blocks costs every thread the barriers around packing. The threads
// then take k ranges instead: each runs a serial GEMM into its own f32 copy of C (cpu
// scratch slot 2), and the copies are summed once at the end.
constexpr int64_t kSplitKMaxOutput = int64_t(1) << 16;  // floats of C (256 KiB per thread's copy)

bool splits_k(const std::vector<Term>& terms, int64_t M, int64_t N, int64_t kc, int threads) {
  return threads > 1 && terms.size() == 1 && !terms[0].a.in_runs() && !terms[0].b.whole_slivers &&
         M * N <= kSplitKMaxOutput && terms[0].k >= 2 * threads * kc;
}

Status run_split_k(const Term& term, const Output& c, float alpha, float beta, const float* bias, int threads,
                   const MicroKernel& kernel) {
  const int64_t M = c.m, N = c.n;
  std::vector<float*> partial(static_cast<size_t>(threads), nullptr);
  std::vector<Status> status(static_cast<size_t>(threads));
  int count = 1;
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int me = omp_get_thread_num();
#pragma omp single
    count = omp_get_num_threads();
#else
    const int me = 0;
#endif
    const int64_t k0 = term.k * me / count, k1 = term.k * (me + 1) / count;
    float* part = static_cast<float*>(cpu::scratch(size_t(M * N) * sizeof(float), 2));
    partial[size_t(me)] = part;
    if (!part) {
      status[size_t(me)] = {StatusCode::out_of_memory, "cpu gemm: cannot allocate a k-split partial result"};
    } else {
      ShiftedRuns b_runs;
      status[size_t(me)] = run({k_slice(term, k0, k1 - k0, b_runs)}, Output{part, DType::f32, N, M, N}, 1.0f, 0.0f,
                               nullptr, 0, kernel);
    }
#pragma omp barrier
    bool ok = true;
    for (int t = 0; t < count; ++t) ok = ok && status[size_t(t)].ok();
    if (ok) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < M; ++i) {  // in thread order, so that a call's result does not vary
        float* sum = partial[0] + i * N;
        for (int t = 1; t < count; ++t) {
          const float* p = partial[size_t(t)] + i * N;
          for (int64_t j = 0; j < N; ++j) sum[j] += p[j];
        }
        finish_block(c, partial[0], N, i, 1, 0, N, alpha, beta, bias);
      }
    }
  }
  for (const Status& s : status)
    if (!s.ok()) return s;
  return Status::Ok();
}

// A product of plain operands (no runs, no B packed by the caller) wide enough for each
// thread to own two B slivers splits its columns between the threads rather than sharing
// packed blocks: each runs the serial nest on its own columns, packs its own B block into
// its own L2, and meets no barrier until the end. Measured on Sapphire Rapids (2 threads),
// against shared blocks: 1.05-1.12x at 128^3-1024^3 and 4096^3, 1.0x at 2048^3, 1.06x at
// 64x11008x4096. But each thread then packs all of A, so A must be read in place or the
// columns many: with A transposed (packed), 1024x256x1024 ran 0.92x and 4096x128x1024 0.88x
// the shared speed, 1024^3 1.0x.
constexpr int64_t kSplitNMinColumnsPackingA = 512;  // per thread
// bf16 pairs (the vdpbf16ps kernel) pack A by 32-bit word transposes (pack_a_sliver), cheap
// enough that each thread packing all of A beats sharing packed blocks from this many rows
// on: measured on Zen 4 (2 threads, one process), 1.06-1.15x at 256^3-768^3, 1.16-1.17x at
// 1024x256x1024 and 4096x256x1024, 1.39x at 2048x128x2048, 1.14x at 256x512x4096, 1.08x at
// 64x256x256; but 0.88x at 16x512x4096.
constexpr int64_t kSplitNMinRowsBf16Pairs = 32;

bool splits_n(const std::vector<Term>& terms, int64_t M, int64_t N, int threads, const MicroKernel& kernel) {
  if (threads < 2 || terms.size() != 1 || N < 2 * threads * kernel.nr) return false;
  const Term& t = terms[0];
  if (t.a.in_runs() || t.b.in_runs() || t.b.whole_slivers) return false;
  const int64_t columns = round_up((N + threads - 1) / threads, kernel.nr);  // per thread, at most
  const bool packs_a_as_words = kernel.bf16 && kernel.a.group == 2 && t.a.dtype == DType::bf16 && t.a.col_stride == 1 &&
                                t.a.row_stride % 2 == 0;  // (pack_a_sliver's word transposes)
  return reads_a_rows(t, M, columns, kernel) || columns >= kSplitNMinColumnsPackingA ||
         (packs_a_as_words && M >= kSplitNMinRowsBf16Pairs);
}

Status run_split_n(const Term& term, const Output& c, float alpha, float beta, const void* bias, int64_t bias_stride,
                   int threads, const MicroKernel& kernel) {
  const int64_t slivers = (c.n + kernel.nr - 1) / kernel.nr;
  std::vector<Status> status(static_cast<size_t>(threads));
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int me = omp_get_thread_num(), count = omp_get_num_threads();
#else
    const int me = 0, count = 1;
#endif
    const int64_t n0 = std::min(c.n, slivers * me / count * kernel.nr);
    const int64_t n1 = std::min(c.n, slivers * (me + 1) / count * kernel.nr);
    if (n1 > n0) {
      Term own = term;
      own.b.data = offset(term.b.data, term.b.dtype, n0 * term.b.col_stride);
      Output part = c;
      part.data = const_cast<void*>(offset(c.data, c.dtype, n0));
      part.n = n1 - n0;
      status[size_t(me)] = run({own}, part, alpha, beta, offset(bias, c.dtype, n0 * bias_stride), bias_stride, kernel);
    }
  }
  for (const Status& s : status)
    if (!s.ok()) return s;
  return Status::Ok();
}

}  // namespace

Status run(const std::vector<Term>& given, const Output& c, float alpha, float beta, const void* bias,
           int64_t bias_stride, const MicroKernel& kernel) {
  const int64_t M = c.m, N = c.n;
  if (M == 0 || N == 0) return Status::Ok();
  int64_t total_k = 0;
  for (const Term& t : given) total_k += t.k;
  const double flops = 2.0 * double(M) * double(N) * double(total_k);
  const int threads = flops < kSerialFlops ? 1 : cpu::threads_for_call();
  if (splits_n(given, M, N, threads, kernel))
    return run_split_n(given.front(), c, alpha, beta, bias, bias_stride, threads, kernel);

  // The bias in f32, contiguous.
  std::vector<float> bias_f32;
  if (bias) {
    bias_f32.resize(size_t(N));
    const Matrix bias_row{bias, c.dtype, 0, bias_stride};
    read_row(bias_row, 0, 0, N, bias_f32.data());
  }
  const float* bias_ptr = bias ? bias_f32.data() : nullptr;
  const Blocking blk = blocking_for(kernel);
  if (splits_k(given, M, N, blk.kc, threads)) return run_split_k(given.front(), c, alpha, beta, bias_ptr, threads, kernel);
  if (total_k == 0) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < M; ++i) finish_block(c, nullptr, 0, i, 1, 0, N, alpha, beta, bias_ptr);
    return Status::Ok();
  }
  std::vector<RowsOf> rows_of;
  std::vector<Term> own_terms;
  const std::vector<Term>& terms = with_rows_in_place(given, M, N, kernel, rows_of, own_terms);

  const Term* first_term = nullptr;
  const Term* last_term = nullptr;
  for (const Term& t : terms)
    if (t.k > 0) {
      if (!first_term) first_term = &t;
      last_term = &t;
    }

  // Where tiles accumulate: C itself (f32), or an f32 workspace for a 16-bit output. A
  // kernel that rounds to bf16 itself writes a bf16 output from each tile's last k block
  // (the workspace holds the earlier blocks' sum), so one k block needs no workspace.
  const bool direct = c.dtype == DType::f32;
  const bool kernel_rounds = c.dtype == DType::bf16 && kernel.rounds_bf16;
  const bool one_block = first_term == last_term && first_term->k <= blk.kc;
  float* target = direct ? static_cast<float*>(c.data) : nullptr;
  int64_t ld_target = direct ? c.ldc : N;
  if (!direct && !(kernel_rounds && one_block)) {
    target = static_cast<float*>(cpu::scratch(size_t(M * N) * sizeof(float), 2));
    if (!target) return {StatusCode::out_of_memory, "cpu gemm: cannot allocate the f32 workspace"};
  }
  const float tile_alpha = direct ? alpha : 1.0f, tile_beta = direct ? beta : 0.0f;
  const float* tile_bias = direct ? bias_ptr : nullptr;

  const int64_t mr = kernel.mr, nr = kernel.nr;
  const int64_t elem = kernel.bf16 ? 2 : 4;
  // The deepest k block: KC, or for A in runs up to a quarter more (k_block_at).
  const int64_t kc_max = round_up(blk.kc + blk.kc / 4, std::max(kernel.a.k_multiple, kernel.b.k_multiple));
  const int64_t nc_max = std::min(blk.nc, (N + nr - 1) / nr * nr), mc_max = std::min(blk.mc, (M + mr - 1) / mr * mr);
  void* packed_b = cpu::scratch(size_t(nc_max * kc_max * elem), 0);
  void* packed_a = cpu::scratch(size_t(mc_max * kc_max * elem), 1);
  if (!packed_a || !packed_b) return {StatusCode::out_of_memory, "cpu gemm: cannot allocate packing buffers"};

  for (const Term& term : terms) {
    if (term.k == 0) continue;
    if (term.b.whole_slivers && (kernel.bf16 || kernel.b.group != 1))
      return {StatusCode::invalid_argument, std::string("cpu gemm: B packed as f32 slivers for a ") + kernel.isa +
                                                " kernel that reads another packing"};
    const bool b_ready = term.b.whole_slivers;  // no packing of B at all
    // (A read in place through row pointers needs B packed.)
    const bool stream_b = !b_ready && !kernel.bf16 && M <= kStreamBMaxM && !term.b.in_runs() &&
                          !(term.a.in_runs() && kernel.reads_rows) && term.b.dtype == DType::f32 &&
                          term.b.col_stride == 1;
    const bool pack_b = !b_ready && !stream_b;
    for (int64_t jc = 0; jc < N; jc += blk.nc) {
      const int64_t nc = std::min(blk.nc, N - jc);
      for (int64_t pc = 0, kc = 0; pc < term.k; pc += kc) {
        const bool rows_on_ready_b = b_ready && term.a.in_runs() && kernel.reads_rows;
        // A read in place through row pointers on B packed over all of K (conv2d forward and
        // grad input): nothing is packed per k block, and each block costs a pass of loads
        // and stores over C, so the block is all of K. Measured on Zen 4 (1 MiB L2) against
        // blocks sized to keep the re-read operand and a B sliver in half of L2: 3x3 convs
        // at batch 8 1.02-1.10x faster (res5 at batch 1 1.08x), none slower.
        const int64_t kc_wanted = rows_on_ready_b ? term.k
                                  : stream_b      ? std::min(blk.kc, kStreamBKc)
                                                  : blk.kc;
        const KBlock k_block = k_block_at(term, pc, kc_wanted);
        kc = k_block.kc;
        const bool a_rows = k_block.run > 0 && kernel.reads_rows;  // the kernel reads A's runs in place
        const bool first = &term == first_term && pc == 0;
        // Row-major bf16 A read by few B slivers is not worth a copy: the kernel reads its
        // whole tiles in place (packed, a tile is 1 KiB contiguous rather than 16 rows lda
        // apart: better for many slivers, and for lda a multiple of 4 KiB).
        const bfloat16* raw_a = raw_bf16(term.a, kernel.bf16);
        const bool a_in_place = kernel.a_in_place && raw_a && term.a.col_stride == 1 && kc % kernel.a.group == 0 &&
                                (nc + nr - 1) / nr <= kInPlaceMaxSlivers;
        // A 16-bit output's tiles are rounded into it right after their last k block: by
        // the micro-kernel (kernel_rounds; with alpha 0 the earlier blocks' NaN and Inf
        // would be skipped), else from the workspace lines it has just written.
        const bool last = &term == last_term && pc + kc == term.k;
        // C's final values, stored where they are not read back soon (stream_c).
        const bool stream_c =
            direct && last && M * N * int64_t(sizeof(float)) >= kStreamCMinL2s * int64_t(cpu::cpu_info().l2_bytes);
        const bool rounds_here = !direct && last && kernel_rounds && (first || alpha != 0.0f);
        const bool finish_tiles = !direct && last && !rounds_here;
        const SliverWriter b_writer{kernel.bf16, kernel.b, nr, kc}, a_writer{kernel.bf16, kernel.a, mr, kc};
        const int64_t b_slivers = (nc + nr - 1) / nr;
        // The block's work for each thread of the team. Its worksharing loops and barriers
        // are orphaned, so that a one-thread call outside any parallel region runs it with
        // no team at all: a team of one still wakes its barrier's futex (3 system calls per
        // 64^3 product). Inside a parallel region (a thread's share of a split product,
        // or a caller's own region) it needs a team of its own, or its loops would bind to
        // the enclosing team and share out this thread's work.
        const auto block = [&] {
          if (kernel.enter) kernel.enter();
          std::vector<float> tmp(size_t(std::max(kc, 2 * nc) + 1));
          if (pack_b && term.b.in_runs() && !kernel.bf16) {
            pack_b_runs(term.b, pc, kc, jc, nc, b_writer, static_cast<float*>(packed_b));
          } else if (pack_b && packs_by_row(term.b, b_writer)) {
            const int64_t steps = b_writer.k_steps() / kernel.b.group;
#pragma omp for schedule(static)
            for (int64_t step = 0; step < steps; ++step)
              pack_b_rows(term.b, step, pc, jc, nc, b_writer, packed_b, tmp.data());
          } else if (pack_b) {
#pragma omp for schedule(static)
            for (int64_t s = 0; s < b_slivers; ++s)
              pack_b_sliver(term.b, pc, jc + s * nr, std::min(nr, nc - s * nr), b_writer,
                            static_cast<char*>(packed_b) + s * b_writer.elements() * elem, tmp.data());
          }
          // Tile (row0.., jr) of this block, all but its A operand; then computing it.
          const auto tile_at = [&](int64_t row0, int64_t rows, int64_t jr) {
            Tile t;
            t.kc = kc;
            if (b_ready) {
              t.b = static_cast<const float*>(term.b.data) + ((jc / nr + jr) * term.k + pc) * nr;
              t.b_stride = nr;
              t.b_packed = true;
            } else if (stream_b) {
              t.b = static_cast<const float*>(term.b.data) + pc * term.b.row_stride + jc + jr * nr;
              t.b_stride = term.b.row_stride;
              t.b_packed = false;
            } else {
              t.b = static_cast<const char*>(packed_b) + jr * b_writer.elements() * elem;
              t.b_stride = nr;
              t.b_packed = true;
            }
            const int64_t col0 = jc + jr * nr;
            t.c = target ? target + row0 * ld_target + col0 : nullptr;
            t.ldc = ld_target;
            t.m = int(std::min(mr, rows));
            t.n = int(std::min(nr, nc - jr * nr));
            t.alpha = tile_alpha;
            t.beta = first ? tile_beta : 1.0f;
            t.bias = first && tile_bias ? tile_bias + col0 : nullptr;
            if (rounds_here) {  // alpha * (this block + the workspace's sum) + bias + beta * C
              t.alpha = alpha;
              t.beta = first ? 0.0f : alpha;
              t.bias = bias_ptr ? bias_ptr + col0 : nullptr;
              t.out = static_cast<bfloat16*>(c.data) + row0 * c.ldc + col0;
              t.ld_out = c.ldc;
              t.out_beta = beta;
            }
            t.stream_c = stream_c;
            return t;
          };
          const auto compute = [&](const Tile& t, int64_t row0, int64_t jr) {
            kernel.run(t);
            if (finish_tiles) finish_block(c, target, ld_target, row0, t.m, jc + jr * nr, t.n, alpha, beta, bias_ptr);
          };
          if (a_rows) {
            // A read in place: no packed A block is shared, so M is not blocked and no barrier
            // separates locating rows from computing. Each thread takes a run of tiles and
            // locates a sliver's rows when it comes to it, in the order rows_in_place_a_outer.
            // Tiles are dealt out in chunks as threads come for them (16 chunks a thread
            // if there are tiles enough), so that a thread slowed by its vCPU's neighbours
            // takes fewer: on the shared 2-vCPU test machine, 0-12% faster than halves.
            // A chunk is at least kDynamicChunkFlops of work; with fewer than 4 chunks a
            // thread, static halves (at 128^3 fetching 44 one-tile chunks across two cores
            // took a third of the call).
            std::vector<const float*> table(size_t(kc / k_block.run * mr));
            int64_t located = -1;
            const int64_t a_slivers = (M + mr - 1) / mr;
            const bool a_outer = rows_in_place_a_outer(M, nc, nr);
            const auto tile_in_place = [&](int64_t index) {
              const int64_t ir = a_outer ? index / b_slivers : index % a_slivers;
              const int64_t jr = a_outer ? index % b_slivers : index / a_slivers;
              const int64_t row0 = ir * mr, rows = std::min(mr, M - row0);
              if (ir != located) locate_sliver(term.a.runs, row0, rows, pc, k_block, mr, table.data());
              located = ir;
              Tile t = tile_at(row0, rows, jr);
              t.a_rows = table.data();
              t.a_run = k_block.run;
              compute(t, row0, jr);
            };
            const int64_t tiles = a_slivers * b_slivers;
            // Chunks hold whole runs of the inner loop, so that each outer sliver is fetched
            // into one thread's L2 only (no difference measured on res5 at batch 1, where
            // two-tile chunks had both threads fetch every B sliver).
            const int64_t inner = a_outer ? b_slivers : a_slivers;
            const int64_t least = std::max({int64_t(1), tiles / (16 * threads), kDynamicChunkFlops / (2 * mr * nr * kc)});
            const int64_t chunk = (least + inner - 1) / inner * inner;
            if (threads > 1 && tiles >= 4 * threads * chunk) {
#pragma omp for schedule(dynamic, chunk)
              for (int64_t index = 0; index < tiles; ++index) tile_in_place(index);
            } else if (threads > 1) {
#pragma omp for schedule(static)
              for (int64_t index = 0; index < tiles; ++index) tile_in_place(index);
            } else {  // the only thread of the block (a worksharing loop would cost a lock)
              for (int64_t index = 0; index < tiles; ++index) tile_in_place(index);
            }
          }
          for (int64_t ic = 0; ic < M && !a_rows; ic += blk.mc) {
            const int64_t mc = std::min(blk.mc, M - ic);
            const int64_t a_slivers = (mc + mr - 1) / mr;
            if (!a_in_place || mc % mr != 0) {  // in place, only a partial last sliver is packed
#pragma omp for schedule(static)
              for (int64_t s = 0; s < a_slivers; ++s)
                if (!a_in_place || mc - s * mr < mr)
                  pack_a_sliver(term.a, ic + s * mr, std::min(mr, mc - s * mr), pc, a_writer,
                                static_cast<char*>(packed_a) + s * a_writer.elements() * elem, tmp.data());
            }
#pragma omp for collapse(2) schedule(static)
            for (int64_t jr = 0; jr < b_slivers; ++jr)
              for (int64_t ir = 0; ir < a_slivers; ++ir) {
                const int64_t row0 = ic + ir * mr;
                Tile t = tile_at(row0, mc - ir * mr, jr);
                t.a = static_cast<const char*>(packed_a) + ir * a_writer.elements() * elem;
                if (a_in_place && mc - ir * mr >= mr) {
                  t.a = raw_a + row0 * term.a.row_stride + pc;
                  t.a_stride = term.a.row_stride;
                }
                compute(t, row0, jr);
              }
          }
          if (kernel.leave) kernel.leave();
          if (stream_c) _mm_sfence();  // this thread's non-temporal stores, before the team's barrier
        };
        if (threads > 1 || in_parallel_region()) {
#pragma omp parallel num_threads(threads)
          block();
        } else {
          block();
        }
      }
    }
  }
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
  const MicroKernel& kernel = for_columns(*kernel_for(kIsa), s.n);
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
      ANVIL_RETURN_IF_ERROR(run(terms, output_of(*args.grad_a, e, s.m, s.k), float(args.alpha), 0.0f, nullptr, 0,
                                for_columns(kernel, s.k)));
    }
  }
  if (args.grad_b) {
    const int64_t entries = entries_of(*args.grad_b);
    for (int64_t e = 0; e < entries; ++e) {
      std::vector<Term> terms;
      for (int64_t b = 0; b < s.batch; ++b)
        if (entries == 1 || b == e) terms.push_back({matrix_of(args.a, b, true), grad_matrix(b), s.m});
      ANVIL_RETURN_IF_ERROR(run(terms, output_of(*args.grad_b, e, s.k, s.n), float(args.alpha), 0.0f, nullptr, 0,
                                for_columns(kernel, s.n)));
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

// The AMX kernel against oneDNN's bf16 matmul (the oneapi backend ranks its GEMM 120),
// measured on this Sapphire Rapids host: 0.67-0.79x oneDNN's speed at 256-512^3, 1.05-1.23x
// at 1024-2048^3. It ranks above oneDNN only from a 1024^3-sized product on; below that it
// still ranks above the vdpbf16ps kernel (110).
int amx_priority_for(const GemmArgs& args) {
  const gemm_desc::Shape s = gemm_desc::shape_of(args);
  return double(s.m) * double(s.n) * double(s.k) >= 1024.0 * 1024.0 * 1024.0 ? 125 : 115;
}

template <Isa kIsa> void add_records(dispatch::KernelTables& tables, DType dtype, int priority) {
  const std::string variant = isa_name(kIsa);
  dispatch::KernelRecord<GemmArgs> forward{dispatch::kernel_name(Op::gemm, dtype, "cpu", variant), "cpu", dtype,
                                           priority, &gemm_can_implement<kIsa>, &gemm_run<kIsa>};
  if constexpr (kIsa == Isa::amx_bf16) forward.priority_for = &amx_priority_for;
  forward.runs_here = &isa_runs_here<kIsa>;
  tables.add(std::move(forward));
  dispatch::KernelRecord<GemmBackwardArgs> backward{dispatch::kernel_name(Op::gemm_backward, dtype, "cpu", variant),
                                                    "cpu", dtype, priority, &gemm_backward_can_implement<kIsa>,
                                                    &gemm_backward_run<kIsa>};
  backward.runs_here = &isa_runs_here<kIsa>;
  tables.add(std::move(backward));
}

}  // namespace

// bf16 prefers AMX tiles, then vdpbf16ps; f16 and (without avx512_bf16) bf16 are widened
// to f32 while packing. AVX2 serves CPUs without AVX-512.
void add_gemm_kernels(dispatch::KernelTables& tables) {
  add_records<Isa::amx_bf16>(tables, DType::bf16, 120);
  add_records<Isa::avx512_bf16>(tables, DType::bf16, 110);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    add_records<Isa::avx512>(tables, dtype, 100);
    add_records<Isa::avx2>(tables, dtype, 90);
  }
}

}  // namespace anvil::cpu_gemm
