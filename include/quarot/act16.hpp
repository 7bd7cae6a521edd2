#pragma once
// The 16-bit activation codes of W4A16 (issue 19 item 3), defined once: the integer kernel
// (int4_gemm_a16_int16, quarot/int4_a16.hpp) quantizes with it, and the fake-quant forward that
// simulates a packed W4A16 model (act_quant_hook with ActQuantOptions::a16_group, and QDEC's
// simulation backend) rounds with it, so the two see the same codes.
//
// One token's activations over one weight group x[0..n): m = max |x|; an all-zero group has
// scale 0 and codes 0; else scale = m / 32767 and code = nearbyint(x * (32767 / m)), within
// -32767..32767. A group holding a NaN or an infinity has no codes (act16_max_abs is not finite):
// the kernel then runs the whole call in fp32 (int4_gemm_f32) and the simulation leaves the
// call's activations as they are.
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace quarot {

inline constexpr float kAct16Max = 32767.f;

// max |x[i]| (as floats), NaN when any x[i] is NaN (std::max would skip it), +inf when any is
// infinite.
template <class T>
float act16_max_abs(const T* x, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(float(x[i]));
    if (std::isnan(a)) return a;
    m = std::max(m, a);
  }
  return m;
}

// The scale of a group whose max |x| is m (finite): code * scale stands for x.
inline float act16_scale(float m) { return m / kAct16Max; }
// The factor that turns x into its code's real value, for m finite and > 0.
inline float act16_inverse_scale(float m) { return kAct16Max / m; }
inline int16_t act16_code(float x, float inverse_scale) {
  return int16_t(std::clamp(std::nearbyint(x * inverse_scale), -kAct16Max, kAct16Max));
}

// The simulation of one call's activations, rows x cols, per token in groups of `group` columns
// (0 or >= cols: the whole row; the last group may be narrower): each x replaced in place by
// float(code) * scale, what int4_gemm_a16_int16's integer sums stand for. When any group is not
// finite, nothing changes (the kernel runs such a call in fp32). Returns whether it rounded.
template <class T>
bool act16_fake_quant_rows(T* x, int64_t rows, int64_t cols, int64_t group) {
  const int64_t gc = group > 0 && group < cols ? group : cols;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += gc)
      if (!std::isfinite(act16_max_abs(x + r * cols + c0, std::min(gc, cols - c0)))) return false;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += gc) {
      T* v = x + r * cols + c0;
      const int64_t n = std::min(gc, cols - c0);
      const float m = act16_max_abs(v, n);
      if (m == 0.f) continue;  // codes 0, scale 0: the zeros stay
      const float s = act16_scale(m), inv = act16_inverse_scale(m);
      for (int64_t i = 0; i < n; ++i) v[i] = T(float(act16_code(float(v[i]), inv)) * s);
    }
  return true;
}

}  // namespace quarot
