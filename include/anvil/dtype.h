// Element types and the 16-bit float storage formats, with exact conversions.
#pragma once

#include <cstdint>
#include <cstring>

namespace anvil {

enum class DType : uint8_t {
  f32,
  f16,
  bf16,
  f64,      // reference and gradcheck only
  boolean,  // attention masks only; one byte per element, non-zero = attend
};

constexpr int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::f64: return 8;
    case DType::boolean: return 1;
  }
  return 0;
}

constexpr const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f64: return "f64";
    case DType::boolean: return "bool";
  }
  return "?";
}

constexpr bool is_floating(DType dtype) { return dtype != DType::boolean; }

// IEEE binary16 and bfloat16 as storage: arithmetic always happens in f32 or wider.
struct float16 {
  uint16_t bits;
};
struct bfloat16 {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_float(bfloat16 h) { return bits_float(uint32_t(h.bits) << 16); }

// Round to nearest even; NaN stays NaN (quiet bit forced so truncation cannot make an Inf).
inline bfloat16 to_bfloat16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x0040u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}

inline float to_float(float16 h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_float(sign);
  // Subnormal half: value = mantissa * 2^-24, exact in f32.
  const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

// Round to nearest even, with overflow to Inf and gradual underflow.
inline float16 to_float16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return {uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
  if (abs >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: Inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero): scale so that the half ulp (2^-24) becomes 1.0
    // and let the f32 adder round to nearest even.
    const float scaled = bits_float(abs) * 16777216.0f;  // * 2^24
    const float rounded = scaled + 8388608.0f - 8388608.0f;  // integer part, RNE
    return {uint16_t(sign | uint16_t(rounded))};
  }
  const uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  return {uint16_t(sign | ((abs - 0x38000000u + rounding) >> 13))};
}

// Element access by dtype, used by the reference kernels and the tests.
template <class T> struct ElementTraits;
template <> struct ElementTraits<float> {
  static constexpr DType dtype = DType::f32;
  static double load(const float* p) { return *p; }
  static void store(float* p, double v) { *p = float(v); }
};
template <> struct ElementTraits<double> {
  static constexpr DType dtype = DType::f64;
  static double load(const double* p) { return *p; }
  static void store(double* p, double v) { *p = v; }
};
template <> struct ElementTraits<float16> {
  static constexpr DType dtype = DType::f16;
  static double load(const float16* p) { return to_float(*p); }
  static void store(float16* p, double v) { *p = to_float16(float(v)); }
};
template <> struct ElementTraits<bfloat16> {
  static constexpr DType dtype = DType::bf16;
  static double load(const bfloat16* p) { return to_float(*p); }
  static void store(bfloat16* p, double v) { *p = to_bfloat16(float(v)); }
};

// Calls fn.template operator()<T>() with the C++ type of a floating dtype.
template <class Fn> decltype(auto) visit_floating(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f16: return fn.template operator()<float16>();
    case DType::bf16: return fn.template operator()<bfloat16>();
    case DType::f64: return fn.template operator()<double>();
    default: return fn.template operator()<float>();
  }
}

}  // namespace anvil
