// fp16/bf16 conversions: exhaustive over every 16-bit pattern, and round-to-nearest-even against
// a reference that picks the nearest representable value by brute force in double precision.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>

#include "quarot/dtype.hpp"

using namespace quarot;

TEST(DType, NamesAndSizes) {
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_EQ(parse_dtype("F8_E4M3"), std::nullopt);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_EQ(dtype_name(DType::U8), "U8");
}

TEST(DType, F16EveryPatternRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << h;
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << "pattern " << h << " value " << f;
  }
}

TEST(DType, F16DecodeMatchesDefinition) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const int e = (h >> 10) & 31, mant = h & 1023;
    if (e == 31) continue;
    const double v = (e == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, e - 25)) * ((h & 0x8000) ? -1 : 1);
    ASSERT_EQ(double(f16_to_f32(uint16_t(h))), v) << h;
  }
}

TEST(DType, F16BulkConversionEqualsScalar) {
  // The F16C path (when the CPU has it) against the scalar definition, every pattern.
  std::vector<uint16_t> all(65536 + 5);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);
  std::vector<float> out(all.size());
  convert_to_f32(DType::F16, all.data(), all.size(), out.data());
  for (std::size_t i = 0; i < all.size(); ++i) {
    const float ref = f16_to_f32(all[i]);
    if (std::isnan(ref)) EXPECT_TRUE(std::isnan(out[i]));
    else ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(ref)) << i;
  }
}

// Nearest finite f16 by brute force; ties to the even mantissa; beyond 65520 -> inf.
static uint16_t f16_reference(float f) {
  const double x = std::fabs(double(f));
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (x >= 65520.0) return sign | 0x7c00;
  uint16_t best = 0;
  double best_err = INFINITY;
  for (uint16_t h = 0; h < 0x7c00; ++h) {
    const double err = std::fabs(double(f16_to_f32(h)) - x);
    if (err < best_err || (err == best_err && (h & 1) == 0)) {
      best = h;
      best_err = err;
    }
  }
  return sign | best;
}

TEST(DType, F16RoundsToNearestEven) {
  std::mt19937 rng(7);
  std::vector<float> cases = {0.f, -0.f, 65504.f, 65519.99f, 65520.f, 1e-8f, 2.98e-8f, 2.9802322e-8f,
                              6.1e-5f, 6.097555e-5f, 1.0009765625f, 1.00048828125f, 1.00146484375f};
  std::uniform_int_distribution<int> e(-30, 17);
  std::uniform_real_distribution<float> m(1.f, 2.f);
  for (int i = 0; i < 300; ++i) cases.push_back((i & 1 ? -1.f : 1.f) * std::ldexp(m(rng), e(rng)));
  for (float f : cases) ASSERT_EQ(f32_to_f16(f), f16_reference(f)) << f;
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
}

TEST(DType, BF16RoundTripAndRounding) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(uint16_t(b));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_bf16(f), b);
  }
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.00390625f), f32_to_bf16(1.0f));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.005859375f)), 1.0078125f);  // 1 + 3*2^-9 rounds up
}

TEST(DType, BulkConvertersRoundTrip) {
  std::vector<float> src = {1.5f, -2.25f, 0.f, 1024.f, -0.0009765625f};
  for (DType t : {DType::F64, DType::F32, DType::F16, DType::BF16}) {
    std::vector<uint8_t> buf(src.size() * dtype_size(t) + 1);
    convert_from_f32(t, src.data(), src.size(), buf.data() + 1);  // unaligned on purpose
    std::vector<float> back(src.size());
    convert_to_f32(t, buf.data() + 1, src.size(), back.data());
    EXPECT_EQ(back, src) << dtype_name(t);
  }
}
