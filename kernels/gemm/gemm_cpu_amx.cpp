// AMX bf16 GEMM micro-kernel (compiled with -mamx-tile -mamx-bf16 and the AVX-512 flags
// of its epilogue). Used only where cpu_info() reports AMX and the OS granted the tile state.
//
// Tile (MR, NR) = (32, 32) of C, in four tile registers of (16, 16) f32:
//   tmm0..3  C[r][v]  (16, 16) f32        rows 16r.., columns 16v..      tmm 2r + v
//   tmm4, 5  A[r]     (16, 32) bf16       16 rows of A x 32 k
//   tmm6, 7  B[v]     (16, 16 x 2) bf16   16 k pairs x 16 columns, the pair adjacent (VNNI)
// Per 32 k: 2 A and 2 B tile loads, 4 tdpbf16ps (f32 accumulation; products of bf16 are
// exact in f32).
//
// Packed operands (the driver's Packing):
//   A sliver (KP/32, MR, 32): the A tile r of k block kb is 1 KiB contiguous, rows 64 bytes apart.
//   B sliver (KP/2, NR, 2):   the B tile v of k block kb is 16 rows of 64 bytes, 128 bytes apart.
// KP = kc rounded up to 32, zero-filled by the packing, as are A rows >= m and B columns
// >= n: every tile is whole, and the edges are masked in the epilogue only.
// A may instead be read in place (Tile::a_stride, row-major bf16): the driver passes it only
// for whole tiles (m = 32, kc a multiple of 32), so no tile row reaches past the matrix.
#include <immintrin.h>

#include <array>
#include <cstdint>

#include "kernels/gemm/gemm_cpu.h"
#include "kernels/gemm/gemm_cpu_bf16_avx512.h"

namespace anvil::cpu_gemm {
namespace {

constexpr int kTileRows = 16;            // rows per tile register (palette 1 maximum)
constexpr int kTileBytes = 64;           // bytes per tile row (palette 1 maximum)
constexpr int kTileK = kTileBytes / 2;   // bf16 k per A tile row: 32
constexpr int kTileN = kTileBytes / 4;   // f32 columns per C tile row: 16
constexpr int kMR = 2 * kTileRows;       // 2 A tiles
constexpr int kNR = 2 * kTileN;          // 2 B tiles
constexpr int kVector = 16;              // floats per zmm (epilogue)
static_assert(kTileN == kVector, "a C tile row is one zmm");
static_assert(kTileRows * 2 == kTileK, "a B tile holds the 16 k pairs of one A tile's 32 k");

constexpr int64_t kABlockBytes = int64_t(kMR) * kTileK * 2;       // one k block of the A sliver
constexpr int64_t kBRowBytes = int64_t(kNR) * 2 * 2;              // one k pair of the B sliver
constexpr int64_t kBBlockBytes = kBRowBytes * (kTileK / 2);      // one k block of the B sliver

// ldtilecfg's 64-byte operand, palette 1: all eight tiles (16 rows, 64 bytes).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

constexpr TileConfig make_config() {
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.colsb[i] = kTileBytes;
    c.rows[i] = kTileRows;
  }
  return c;
}
alignas(64) constexpr TileConfig kConfig = make_config();

void enter() { _tile_loadconfig(&kConfig); }
void leave() { _tile_release(); }

// ------------------------------------------------------------------ compute
// kRowTiles x kColTiles C tiles (1 or 2 each: tiles whose rows or columns are all past the
// edge are skipped) over the whole packed k.
template <int kRowTiles, int kColTiles>
inline void accumulate(const Tile& t) {
  const char* a = static_cast<const char*>(t.a);
  const char* b = static_cast<const char*>(t.b);
  // Packed: k block kb of A tile r at kb * 2 KiB + r * 1 KiB, rows 64 bytes apart. In place:
  // at r * 16 rows + kb * 32 elements, rows a_stride elements apart.
  const int64_t a_row = t.a_stride ? t.a_stride * 2 : kTileBytes;
  const int64_t a_lower = kTileRows * a_row, a_step = t.a_stride ? kTileBytes : kABlockBytes;
  const int64_t blocks = (t.kc + kTileK - 1) / kTileK;
  for (int64_t kb = 0; kb < blocks; ++kb) {
    _tile_loadd(6, b, kBRowBytes);
    if constexpr (kColTiles == 2) _tile_loadd(7, b + kTileBytes, kBRowBytes);
    _tile_loadd(4, a, a_row);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (kColTiles == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (kRowTiles == 2) {
      _tile_loadd(5, a + a_lower, a_row);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (kColTiles == 2) _tile_dpbf16ps(3, 5, 7);
    }
    a += a_step;
    b += kBBlockBytes;
  }
}

// C tiles to or from memory with a row stride of `ld` floats.
template <int kRowTiles, int kColTiles>
inline void load_c(const float* c, int64_t ld) {
  const int64_t stride = ld * int64_t(sizeof(float));
  const float* lower = c + kTileRows * ld;
  _tile_loadd(0, c, stride);
  if constexpr (kColTiles == 2) _tile_loadd(1, c + kTileN, stride);
  if constexpr (kRowTiles == 2) _tile_loadd(2, lower, stride);
  if constexpr (kRowTiles == 2 && kColTiles == 2) _tile_loadd(3, lower + kTileN, stride);
}
template <int kRowTiles, int kColTiles>
inline void store_c(float* c, int64_t ld) {
  const int64_t stride = ld * int64_t(sizeof(float));
  float* lower = c + kTileRows * ld;
  _tile_stored(0, c, stride);
  if constexpr (kColTiles == 2) _tile_stored(1, c + kTileN, stride);
  if constexpr (kRowTiles == 2) _tile_stored(2, lower, stride);
  if constexpr (kRowTiles == 2 && kColTiles == 2) _tile_stored(3, lower + kTileN, stride);
}
inline void zero_c() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// ------------------------------------------------------------------ store
inline __mmask16 column_mask(int n, int v) {
  const int rest = n - kVector * v;
  return rest >= kVector ? __mmask16(0xFFFF) : rest <= 0 ? __mmask16(0) : __mmask16((1u << rest) - 1);
}

// v = alpha * acc (+ beta * C) (+ bias) (+ out_beta * out) from the tiles, through an f32
// scratch (MR, NR), rows < m and columns < n only; stored to C, or rounded into out.
template <int kRowTiles, int kColTiles>
inline void store_epilogue(const Tile& t) {
  alignas(64) float acc[kMR][kNR];  // (MR, NR)
  store_c<kRowTiles, kColTiles>(&acc[0][0], kNR);
  const __m512 alpha = _mm512_set1_ps(t.alpha), beta = _mm512_set1_ps(t.beta), out_beta = _mm512_set1_ps(t.out_beta);
  __mmask16 mask[kColTiles];
  __m512 bias[kColTiles];
  for (int v = 0; v < kColTiles; ++v) {
    mask[v] = column_mask(t.n, v);
    // Without a bias, add -0: the identity of addition, so alpha * acc == -0 stays -0.
    bias[v] = t.bias ? _mm512_maskz_loadu_ps(mask[v], t.bias + kVector * v) : _mm512_set1_ps(-0.0f);
  }
  for (int i = 0; i < t.m; ++i) {
    for (int v = 0; v < kColTiles; ++v) {
      __m512 r = _mm512_fmadd_ps(alpha, _mm512_load_ps(&acc[i][kVector * v]), bias[v]);
      if (t.beta != 0.0f) r = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask[v], t.c + i * t.ldc + kVector * v), r);
      if (!t.out) {
        _mm512_mask_storeu_ps(t.c + i * t.ldc + kVector * v, mask[v], r);
        continue;
      }
      bfloat16* out = t.out + i * t.ld_out + kVector * v;
      if (t.out_beta != 0.0f) r = _mm512_fmadd_ps(out_beta, load_bf16(mask[v], out), r);
      store_bf16(mask[v], out, r);
    }
  }
}

template <int kRowTiles, int kColTiles>
void tile_rc(const Tile& t) {
  // Whole tiles that only add the product into C (the driver's k blocks but the last of a
  // bf16 output, and of an f32 output with alpha 1 and no bias) go from memory to tiles
  // and back.
  const bool whole = t.m == kRowTiles * kTileRows && t.n == kColTiles * kTileN;
  const bool plain = whole && !t.out && t.alpha == 1.0f && !t.bias && (t.beta == 0.0f || t.beta == 1.0f);
  if (plain && t.beta == 1.0f) load_c<kRowTiles, kColTiles>(t.c, t.ldc);
  else zero_c();
  accumulate<kRowTiles, kColTiles>(t);
  if (plain) store_c<kRowTiles, kColTiles>(t.c, t.ldc);
  else store_epilogue<kRowTiles, kColTiles>(t);
}

// Edge tiles with m <= 16 or n <= 16 skip the tiles that would hold only padding.
void tile(const Tile& t) {
  static constexpr std::array<void (*)(const Tile&), 4> table = {&tile_rc<1, 1>, &tile_rc<1, 2>, &tile_rc<2, 1>,
                                                                 &tile_rc<2, 2>};
  table[size_t((t.m > kTileRows) * 2 + (t.n > kTileN))](t);
}

// k blocks of 1024 (the driver's largest): a bf16 output needs no f32 workspace up to
// K = 1024, and each tile's C pass and epilogue is spread over 32 k blocks of 4 tdpbf16ps.
// The B sliver (1024, 32) bf16 (64 KiB) then streams from L2 rather than staying in L1;
// measured on Sapphire Rapids (2 cores), 1024 beat 512 and 288 (both slivers in L1) at
// 1024^3 and 2048^3, and tied at 512^3.
constexpr int kKcMin = 1024;
constexpr MicroKernel kBf16{"amx", kMR, kNR, true, {kTileK, kTileK}, {2, kTileK}, &tile, true, kKcMin, true, &enter, &leave};

}  // namespace

const MicroKernel* micro_kernel_bf16_amx() { return &kBf16; }

}  // namespace anvil::cpu_gemm
