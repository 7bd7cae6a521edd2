#include "quarot/dtype.hpp"

#include <immintrin.h>

#include <bit>
#include <cstring>

namespace quarot {

namespace {
struct DTypeRow {
  DType type;
  std::string_view name;
  std::size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2}, {DType::I8, "I8", 1}, {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};
const DTypeRow& row(DType t) {
  for (const auto& r : kDTypes)
    if (r.type == t) return r;
  return kDTypes[0];  // unreachable: every enumerator has a row
}
}  // namespace

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& r : kDTypes)
    if (r.name == name) return r.type;
  return std::nullopt;
}
std::string_view dtype_name(DType t) { return row(t).name; }
std::size_t dtype_size(DType t) { return row(t).size; }
bool is_float(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in fp32.
    const float v = float(mant) * 5.9604644775390625e-8f;
    return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(v));
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u)  // inf, or NaN (kept quiet, payload truncated)
    return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 rounds to a multiple of 2^-24 (the half
    // subnormal step) with the FPU's round-to-nearest-even; the mantissa bits are the result.
    const float r = std::bit_cast<float>(ax) + 0.5f;
    return uint16_t(sign | (std::bit_cast<uint32_t>(r) - 0x3f000000u));
  }
  const uint32_t mant_odd = (ax >> 13) & 1u;
  ax += 0xc8000fffu + mant_odd;  // re-bias the exponent (-112 << 23) and round to nearest even
  return uint16_t(sign | (ax >> 13));
}

float bf16_to_f32(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

uint16_t f32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

namespace {

__attribute__((target("avx2,f16c"))) void f16_to_f32_f16c(const uint8_t* src, std::size_t n,
                                                          float* dst) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = f16_to_f32(h);
  }
}

bool has_f16c() {
  // Every x86 CPU with AVX2 has F16C (it came a generation earlier on both Intel and AMD), and
  // clang 14 cannot query "f16c" by name.
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

}  // namespace

void convert_to_f32(DType src_type, const void* src, std::size_t n, float* dst) {
  const auto* p = static_cast<const uint8_t*>(src);
  switch (src_type) {
    case DType::F32:
      std::memcpy(dst, p, n * 4);
      return;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        dst[i] = float(d);
      }
      return;
    case DType::F16:
      if (has_f16c()) return f16_to_f32_f16c(p, n, dst);
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    default:
      break;
  }
  std::memset(dst, 0, n * sizeof(float));  // callers check is_float() first
}

void convert_from_f32(DType dst_type, const float* src, std::size_t n, void* dst) {
  auto* p = static_cast<uint8_t*>(dst);
  switch (dst_type) {
    case DType::F32:
      std::memcpy(p, src, n * 4);
      return;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        const double d = src[i];
        std::memcpy(p + 8 * i, &d, 8);
      }
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    default:
      break;
  }
  std::memset(p, 0, n * dtype_size(dst_type));
}

}  // namespace quarot
