// llama.cpp's block formats (ggml-common.h) and ggml's reference quantizers (ggml-quants.c),
// reimplemented operation for operation so that the bytes are the same: every intermediate is a
// float, evaluated in ggml's order, fp16 by round to nearest even; this file is compiled with
// -ffp-contract=off (src/CMakeLists.txt) because ggml-base is built without FMA. docs/gguf.md
// lists the layouts.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "quarot/dtype.hpp"
#include "quarot/error.hpp"
#include "quarot/gguf.hpp"

namespace quarot {

namespace {

constexpr int kQK = 32;    // QK4_0 = QK4_1 = QK5_0 = QK8_0 = QK4_NL
constexpr int kQKK = 256;  // QK_K
constexpr float kGroupMaxEps = 1e-15f;

float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
void f2h(uint8_t* p, float f) {
  const uint16_t h = f32_to_f16(f);
  std::memcpy(p, &h, 2);
}

// ggml's nearest_int: round half to even through the float mantissa (|x| < 2^22).
int nearest_int(float fval) {
  const float val = fval + 12582912.f;
  int32_t i;
  std::memcpy(&i, &val, sizeof(i));
  return (i & 0x007fffff) - 0x00400000;
}

// The index of the level of `values` (ascending) nearest to x; the upper one on a tie.
int best_index_int8(int n, const int8_t* values, float x) {
  if (x <= values[0]) return 0;
  if (x >= values[n - 1]) return n - 1;
  int lo = 0, hi = n - 1;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (x < values[mid]) hi = mid;
    else lo = mid;
  }
  return x - values[hi - 1] < values[hi] - x ? hi - 1 : hi;
}

// make_qx_quants for rmse_type 1 without importance weights (Q6_K's sub-blocks): a signed scale
// with codes in [-nmax, nmax-1], the best of 19 trial scales by weighted least squares (w = x^2).
float make_qx_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = float(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * float(l);
    suml2 += w * float(l) * float(l);
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(float(nmax) + 0.1f * float(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * float(l);
      suml2 += w * float(l) * float(l);
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = int8_t(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// make_qkx2_quants (Q4_K's sub-blocks): scale and min for codes in [0, nmax], a search over
// nstep+1 trial scales with a weighted least-squares fit of scale and min each.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min, uint8_t* Laux,
                       float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = float(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = uint8_t(std::max(0, std::min(nmax, l)));
    float diff = scale * float(L[i]) + min - x[i];
    diff = diff * diff;
    best_error += weights[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * float(is) + float(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = uint8_t(l);
      const float w = weights[i];
      sum_l += w * float(l);
      sum_l2 += w * float(l) * float(l);
      sum_xl += w * float(l) * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * float(Laux[i]) + this_min - x[i];
        diff = diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

// quantize_row_iq4_nl_impl for one 32-block (super_block_size == block_size == 32), no
// importance weights. `L` is the caller's array, kept across blocks as in ggml (an all-zero block
// with ntry <= 0 writes the previous block's codes under scale 0).
void iq4_nl_block(const float* x, uint8_t* y, uint8_t* L, int ntry, const float* qw = nullptr) {
  const int8_t* values = kIq4nlLevels;
  float weight[kQK];
  uint8_t* q4 = y + 2;
  std::memset(q4, 0, kQK / 2);
  f2h(y, 0.f);
  if (qw) {  // ggml's quant_weights rule: qw_j * sqrt(sigma^2 + x_j^2), sigma^2 = 2 * mean x^2
    float sigma2 = 0;
    for (int j = 0; j < kQK; ++j) sigma2 += x[j] * x[j];
    sigma2 *= 2.f / kQK;
    for (int j = 0; j < kQK; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + x[j] * x[j]);
  } else {
    for (int j = 0; j < kQK; ++j) weight[j] = x[j] * x[j];
  }
  float amax = 0, max = 0;
  for (int j = 0; j < kQK; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      max = x[j];
    }
  }
  float scale0 = 0;
  if (!(amax < kGroupMaxEps)) {
    float d = ntry > 0 ? -max / float(values[0]) : max / float(values[0]);
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < kQK; ++j) {
      const float al = id * x[j];
      const int l = best_index_int8(16, values, al);
      L[j] = uint8_t(l);
      const float q = float(values[l]);
      const float w = weight[j];
      sumqx += w * q * x[j];
      sumq2 += w * q * q;
    }
    d = sumqx / sumq2;
    float best = d * sumqx;
    for (int itry = -ntry; itry <= ntry; ++itry) {
      id = float(itry + values[0]) / max;
      sumqx = sumq2 = 0;
      for (int j = 0; j < kQK; ++j) {
        const float al = id * x[j];
        const int l = best_index_int8(16, values, al);
        const float q = float(values[l]);
        const float w = weight[j];
        sumqx += w * q * x[j];
        sumq2 += w * q * q;
      }
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        d = sumqx / sumq2;
        best = d * sumqx;
      }
    }
    scale0 = d;
  }
  f2h(y, scale0);
  if (ntry > 0) {
    const float id = scale0 != 0 ? 1 / scale0 : 0;
    for (int j = 0; j < kQK; ++j) L[j] = uint8_t(best_index_int8(16, values, id * x[j]));
  }
  for (int j = 0; j < 16; ++j) q4[j] = uint8_t(L[j] | (L[16 + j] << 4));
}

void iq4_nl_row(const float* x, uint8_t* y, int64_t k, int ntry, const float* qw = nullptr) {
  uint8_t L[kQK] = {};
  for (int64_t i = 0; i < k / kQK; ++i) iq4_nl_block(x + i * kQK, y + i * 18, L, ntry, qw ? qw + i * kQK : nullptr);
}

void check_multiple(int64_t k, int block, const char* what) {
  if (k % block != 0) throw Error(what, std::to_string(k) + " elements are not a multiple of the block " + std::to_string(block));
}

}  // namespace

std::string_view gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::F32: return "f32";
    case GgufType::F16: return "f16";
    case GgufType::Q4_0: return "q4_0";
    case GgufType::Q4_1: return "q4_1";
    case GgufType::Q5_0: return "q5_0";
    case GgufType::Q8_0: return "q8_0";
    case GgufType::Q4_K: return "q4_K";
    case GgufType::Q6_K: return "q6_K";
    case GgufType::IQ4_NL: return "iq4_nl";
  }
  return "?";
}

std::optional<GgufType> parse_gguf_type(std::string_view name) {
  std::string lower(name);
  for (auto& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (GgufType t : {GgufType::F32, GgufType::F16, GgufType::Q4_0, GgufType::Q4_1, GgufType::Q5_0, GgufType::Q8_0, GgufType::Q4_K,
                     GgufType::Q6_K, GgufType::IQ4_NL}) {
    std::string n(gguf_type_name(t));
    for (auto& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (n == lower) return t;
  }
  return std::nullopt;
}

int gguf_block_elems(GgufType t) {
  switch (t) {
    case GgufType::F32:
    case GgufType::F16: return 1;
    case GgufType::Q4_K:
    case GgufType::Q6_K: return kQKK;
    default: return kQK;
  }
}

std::size_t gguf_block_bytes(GgufType t) {
  switch (t) {
    case GgufType::F32: return 4;
    case GgufType::F16: return 2;
    case GgufType::Q4_0: return 18;   // fp16 d, 16 bytes of nibbles
    case GgufType::Q4_1: return 20;   // fp16 d, fp16 m, 16 bytes of nibbles
    case GgufType::Q5_0: return 22;   // fp16 d, 4 bytes of high bits, 16 bytes of nibbles
    case GgufType::Q8_0: return 34;   // fp16 d, 32 int8
    case GgufType::IQ4_NL: return 18;  // fp16 d, 16 bytes of level indices
    case GgufType::Q4_K: return 144;  // fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
    case GgufType::Q6_K: return 210;  // 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, fp16 d
  }
  return 0;
}

std::size_t gguf_row_bytes(GgufType t, int64_t cols) {
  check_multiple(cols, gguf_block_elems(t), "gguf");
  return std::size_t(cols / gguf_block_elems(t)) * gguf_block_bytes(t);
}

void quantize_row_q4_0_ref(const float* x, uint8_t* y, int64_t k) {
  check_multiple(k, kQK, "q4_0");
  for (int64_t i = 0; i < k / kQK; ++i, x += kQK, y += 18) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    f2h(y, d);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = x[j] * id, x1 = x[kQK / 2 + j] * id;
      const uint8_t xi0 = uint8_t(std::min<int>(15, int8_t(x0 + 8.5f)));
      const uint8_t xi1 = uint8_t(std::min<int>(15, int8_t(x1 + 8.5f)));
      y[2 + j] = uint8_t(xi0 | (xi1 << 4));
    }
  }
}

void quantize_row_q4_1_ref(const float* x, uint8_t* y, int64_t k) {
  check_multiple(k, kQK, "q4_1");
  for (int64_t i = 0; i < k / kQK; ++i, x += kQK, y += 20) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < kQK; ++j) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    f2h(y, d);
    f2h(y + 2, min);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = (x[j] - min) * id, x1 = (x[kQK / 2 + j] - min) * id;
      const uint8_t xi0 = uint8_t(std::min<int>(15, int8_t(x0 + 0.5f)));
      const uint8_t xi1 = uint8_t(std::min<int>(15, int8_t(x1 + 0.5f)));
      y[4 + j] = uint8_t(xi0 | (xi1 << 4));
    }
  }
}

void quantize_row_q5_0_ref(const float* x, uint8_t* y, int64_t k) {
  check_multiple(k, kQK, "q5_0");
  for (int64_t i = 0; i < k / kQK; ++i, x += kQK, y += 22) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -16;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    f2h(y, d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = x[j] * id, x1 = x[kQK / 2 + j] * id;
      const uint8_t xi0 = uint8_t(std::min<int>(31, int8_t(x0 + 16.5f)));
      const uint8_t xi1 = uint8_t(std::min<int>(31, int8_t(x1 + 16.5f)));
      y[6 + j] = uint8_t((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
      qh |= uint32_t((xi0 & 0x10u) >> 4) << (j + 0);
      qh |= uint32_t((xi1 & 0x10u) >> 4) << (j + kQK / 2);
    }
    std::memcpy(y + 2, &qh, 4);
  }
}

void quantize_row_q8_0_ref(const float* x, uint8_t* y, int64_t k) {
  check_multiple(k, kQK, "q8_0");
  for (int64_t i = 0; i < k / kQK; ++i, x += kQK, y += 34) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    f2h(y, d);
    for (int j = 0; j < kQK; ++j) y[2 + j] = uint8_t(int8_t(std::round(x[j] * id)));  // roundf: half away from zero
  }
}

void quantize_row_iq4_nl_ref(const float* x, uint8_t* y, int64_t k) {
  check_multiple(k, kQK, "iq4_nl");
  iq4_nl_row(x, y, k, -1);
}

void quantize_row_iq4_nl(const float* x, uint8_t* y, int64_t k) {
  check_multiple(k, kQK, "iq4_nl");
  iq4_nl_row(x, y, k, 7);
}

void quantize_row_q4_K_ref(const float* x, uint8_t* y, int64_t k) {
  check_multiple(k, kQKK, "q4_K");
  uint8_t L[kQKK], Laux[32];
  float weights[32], mins[kQKK / 32], scales[kQKK / 32];
  for (int64_t i = 0; i < k / kQKK; ++i, x += kQKK, y += 144) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < kQKK / 32; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t* sc = y + 4;
    std::memset(sc, 0, 12);
    for (int j = 0; j < kQKK / 32; ++j) {
      uint8_t ls = uint8_t(nearest_int(inv_scale * scales[j]));
      uint8_t lm = uint8_t(nearest_int(inv_min * mins[j]));
      ls = std::min<uint8_t>(63, ls);
      lm = std::min<uint8_t>(63, lm);
      if (j < 4) {
        sc[j] = ls;
        sc[j + 4] = lm;
      } else {
        sc[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
        sc[j - 4] |= uint8_t((ls >> 4) << 6);
        sc[j - 0] |= uint8_t((lm >> 4) << 6);
      }
    }
    f2h(y, max_scale / 63.f);
    f2h(y + 2, max_min / 63.f);
    for (int j = 0; j < kQKK / 32; ++j) {
      uint8_t s, m;
      scale_min_k4(j, sc, &s, &m);
      const float d = h2f(y) * float(s);
      if (d == 0) continue;
      const float dm = h2f(y + 2) * float(m);
      for (int ii = 0; ii < 32; ++ii) {
        const int l = nearest_int((x[32 * j + ii] + dm) / d);
        L[32 * j + ii] = uint8_t(std::max(0, std::min(15, l)));
      }
    }
    uint8_t* q = y + 16;
    for (int j = 0; j < kQKK; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
  }
}

void quantize_row_q6_K_ref(const float* x, uint8_t* y, int64_t k) {
  check_multiple(k, kQKK, "q6_K");
  int8_t L[kQKK];
  float scales[kQKK / 16];
  for (int64_t i = 0; i < k / kQKK; ++i, x += kQKK, y += 210) {
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = scale;
      if (std::fabs(scale) > max_abs_scale) {
        max_abs_scale = std::fabs(scale);
        max_scale = scale;
      }
    }
    std::memset(y, 0, 210);
    if (max_abs_scale < kGroupMaxEps) continue;  // all zero, d = 0
    uint8_t* ql = y;
    uint8_t* qh = y + 128;
    int8_t* sc = reinterpret_cast<int8_t*>(y + 192);
    const float iscale = -128.f / max_scale;
    f2h(y + 208, 1 / iscale);
    for (int ib = 0; ib < kQKK / 16; ++ib) sc[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < kQKK / 16; ++j) {
      const float d = h2f(y + 208) * float(sc[j]);
      if (d == 0) continue;
      for (int ii = 0; ii < 16; ++ii) {
        int l = nearest_int(x[16 * j + ii] / d);
        l = std::max(-32, std::min(31, l));
        L[16 * j + ii] = int8_t(l + 32);
      }
    }
    for (int j = 0; j < kQKK; j += 128, ql += 64, qh += 32)
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = uint8_t(q1 | (q3 << 4));
        ql[l + 32] = uint8_t(q2 | (q4 << 4));
        qh[l] = uint8_t((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
      }
  }
}

void gguf_quantize_row(GgufType t, const float* x, uint8_t* y, int64_t k) {
  switch (t) {
    case GgufType::F32: std::memcpy(y, x, std::size_t(k) * 4); return;
    case GgufType::F16: convert_from_f32(DType::F16, x, std::size_t(k), y); return;
    case GgufType::Q4_0: quantize_row_q4_0_ref(x, y, k); return;
    case GgufType::Q4_1: quantize_row_q4_1_ref(x, y, k); return;
    case GgufType::Q5_0: quantize_row_q5_0_ref(x, y, k); return;
    case GgufType::Q8_0: quantize_row_q8_0_ref(x, y, k); return;
    case GgufType::IQ4_NL: quantize_row_iq4_nl(x, y, k); return;
    case GgufType::Q4_K: quantize_row_q4_K_ref(x, y, k); return;
    case GgufType::Q6_K: quantize_row_q6_K_ref(x, y, k); return;
  }
}

void gguf_dequantize_row(GgufType t, const uint8_t* y, float* x, int64_t k) {
  check_multiple(k, gguf_block_elems(t), "gguf");
  const int64_t nb = k / gguf_block_elems(t);
  switch (t) {
    case GgufType::F32: std::memcpy(x, y, std::size_t(k) * 4); return;
    case GgufType::F16: convert_to_f32(DType::F16, y, std::size_t(k), x); return;
    case GgufType::Q4_0:
      for (int64_t i = 0; i < nb; ++i, y += 18, x += kQK) {
        const float d = h2f(y);
        for (int j = 0; j < 16; ++j) {
          x[j] = float((y[2 + j] & 0x0F) - 8) * d;
          x[j + 16] = float((y[2 + j] >> 4) - 8) * d;
        }
      }
      return;
    case GgufType::Q4_1:
      for (int64_t i = 0; i < nb; ++i, y += 20, x += kQK) {
        const float d = h2f(y), m = h2f(y + 2);
        for (int j = 0; j < 16; ++j) {
          x[j] = float(y[4 + j] & 0x0F) * d + m;
          x[j + 16] = float(y[4 + j] >> 4) * d + m;
        }
      }
      return;
    case GgufType::Q5_0:
      for (int64_t i = 0; i < nb; ++i, y += 22, x += kQK) {
        const float d = h2f(y);
        uint32_t qh;
        std::memcpy(&qh, y + 2, 4);
        for (int j = 0; j < 16; ++j) {
          const int xh0 = int(((qh >> (j + 0)) << 4) & 0x10), xh1 = int((qh >> (j + 12)) & 0x10);
          x[j] = float(((y[6 + j] & 0x0F) | xh0) - 16) * d;
          x[j + 16] = float(((y[6 + j] >> 4) | xh1) - 16) * d;
        }
      }
      return;
    case GgufType::Q8_0:
      for (int64_t i = 0; i < nb; ++i, y += 34, x += kQK) {
        const float d = h2f(y);
        for (int j = 0; j < kQK; ++j) x[j] = float(int8_t(y[2 + j])) * d;
      }
      return;
    case GgufType::IQ4_NL:
      for (int64_t i = 0; i < nb; ++i, y += 18, x += kQK) {
        const float d = h2f(y);
        for (int j = 0; j < 16; ++j) {
          x[j] = d * float(kIq4nlLevels[y[2 + j] & 0xF]);
          x[j + 16] = d * float(kIq4nlLevels[y[2 + j] >> 4]);
        }
      }
      return;
    case GgufType::Q4_K:
      for (int64_t i = 0; i < nb; ++i, y += 144) {
        const float d = h2f(y), min = h2f(y + 2);
        const uint8_t* q = y + 16;
        for (int j = 0, is = 0; j < kQKK; j += 64, q += 32, is += 2) {
          uint8_t s, m;
          scale_min_k4(is + 0, y + 4, &s, &m);
          const float d1 = d * float(s), m1 = min * float(m);
          scale_min_k4(is + 1, y + 4, &s, &m);
          const float d2 = d * float(s), m2 = min * float(m);
          for (int l = 0; l < 32; ++l) *x++ = d1 * float(q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) *x++ = d2 * float(q[l] >> 4) - m2;
        }
      }
      return;
    case GgufType::Q6_K:
      for (int64_t i = 0; i < nb; ++i, y += 210) {
        const float d = h2f(y + 208);
        const uint8_t* ql = y;
        const uint8_t* qh = y + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(y + 192);
        for (int n = 0; n < kQKK; n += 128, x += 128, ql += 64, qh += 32, sc += 8)
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = int((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = int((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            x[l + 0] = d * float(sc[is + 0]) * float(q1);
            x[l + 32] = d * float(sc[is + 2]) * float(q2);
            x[l + 64] = d * float(sc[is + 4]) * float(q3);
            x[l + 96] = d * float(sc[is + 6]) * float(q4);
          }
      }
      return;
  }
}

// ---------------------------------------------------------------- fixed grids (GPTQ, RTN + clip)

namespace {

// BlockGridRow::round for one block of a uniform type (Q4_0, Q4_1, Q5_0, Q8_0) with its scale d
// (and Q4_1's min m) decoded once: the very float operations of level() and round(), without
// decoding the fp16 scale at every level (the clip search rounds 80 trial blocks per block).
struct UniformBlock {
  GgufType t;
  float d, m;
  int lo, hi;
  float level(int code) const {
    switch (t) {
      case GgufType::Q4_0: return float(code - 8) * d;
      case GgufType::Q4_1: return float(code) * d + m;
      case GgufType::Q5_0: return float(code - 16) * d;
      default: return float(code) * d;  // Q8_0
    }
  }
  float round(float w, int* code) const {
    int c = lo;
    const float l0 = level(lo), l1 = level(lo + 1);
    const float step = l1 - l0;
    if (step != 0) {
      const double guess = std::nearbyint(double(w - l0) / double(step)) + lo;
      c = int(std::clamp(guess, double(lo), double(hi)));
    }
    float best = std::fabs(level(c) - w);
    for (bool moved = true; moved;) {
      moved = false;
      for (int n : {c - 1, c + 1}) {
        if (n < lo || n > hi) continue;
        const float e = std::fabs(level(n) - w);
        if (e < best) {
          best = e;
          c = n;
          moved = true;
        }
      }
    }
    *code = c;
    return level(c);
  }
};

}  // namespace

BlockGridRow::BlockGridRow(GgufType t, const float* row, int64_t cols, bool clip_search, const float* importance)
    : type_(t), cols_(cols) {
  if (t == GgufType::F32 || t == GgufType::F16) throw Error("gguf", "no block grid for " + std::string(gguf_type_name(t)));
  blocks_.resize(gguf_row_bytes(t, cols));
  // The reference quantizer fixes the scales; IQ4_NL as llama-quantize (scale search, weighted
  // as with an imatrix when there is an importance).
  if (t == GgufType::IQ4_NL && importance) {
    check_multiple(cols, kQK, "iq4_nl");
    iq4_nl_row(row, blocks_.data(), cols, 7, importance);
  } else {
    gguf_quantize_row(t, row, blocks_.data(), cols);
  }
  const bool uniform = t == GgufType::Q4_0 || t == GgufType::Q4_1 || t == GgufType::Q5_0 || t == GgufType::Q8_0;
  if (!clip_search || !uniform) return;
  const std::size_t bb = gguf_block_bytes(t);
  std::vector<uint8_t> trial(bb);
  std::vector<int> codes(kQK);
  float deq[kQK];
  for (int64_t b = 0; b < cols / kQK; ++b) {
    const float* x = row + b * kQK;
    uint8_t* best_block = blocks_.data() + std::size_t(b) * bb;
    double best = -1;
    float amax = 0, max = 0, mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
      mn = std::min(mn, x[j]);
      mx = std::max(mx, x[j]);
    }
    for (int i = 0; i < 80; ++i) {
      const float p = float(1.0 - i / 100.0);
      std::fill(trial.begin(), trial.end(), 0);
      switch (t) {
        case GgufType::Q4_0: f2h(trial.data(), max * p / -8); break;
        case GgufType::Q5_0: f2h(trial.data(), max * p / -16); break;
        case GgufType::Q8_0: f2h(trial.data(), amax * p / 127); break;
        default:  // Q4_1: the range [min, max] shrunk by p
          f2h(trial.data(), (mx - mn) * p / 15);
          f2h(trial.data() + 2, mn * p);
          break;
      }
      // Round every value to the nearest level of the trial block and measure (the clip search's
      // measure, quant.hpp: sum |q - x|^2.4, each term times its column's importance); a trial whose
      // partial error already reaches the best is dropped (the terms are >= 0, so it could not
      // win: the same choice as the whole sum).
      const UniformBlock one{t, h2f(trial.data()), t == GgufType::Q4_1 ? h2f(trial.data() + 2) : 0.f, t == GgufType::Q8_0 ? -128 : 0,
                             max_code()};
      const float* imp = importance ? importance + b * kQK : nullptr;
      double e = 0;
      bool dropped = false;
      for (int j = 0; j < kQK && !dropped; ++j) {
        deq[j] = one.round(x[j], &codes[std::size_t(j)]);
        e += std::pow(std::fabs(double(deq[j]) - x[j]), 2.4) * (imp ? double(imp[j]) : 1.0);
        dropped = best >= 0 && e >= best;
      }
      if (!dropped && (best < 0 || e < best)) {
        best = e;
        BlockGridRow(t, trial.data(), kQK).encode(codes.data(), best_block);
      }
    }
  }
}

BlockGridRow::BlockGridRow(GgufType t, const uint8_t* blocks, int64_t cols) : type_(t), cols_(cols) {
  blocks_.assign(blocks, blocks + gguf_row_bytes(t, cols));
}

int BlockGridRow::max_code() const {
  switch (type_) {
    case GgufType::Q5_0: return 31;
    case GgufType::Q8_0: return 127;
    case GgufType::Q6_K: return 63;
    default: return 15;
  }
}

float BlockGridRow::level(int64_t col, int code) const {
  const int64_t b = col / gguf_block_elems(type_);
  const uint8_t* y = blocks_.data() + std::size_t(b) * gguf_block_bytes(type_);
  switch (type_) {
    case GgufType::Q4_0: return float(code - 8) * h2f(y);
    case GgufType::Q4_1: return float(code) * h2f(y) + h2f(y + 2);
    case GgufType::Q5_0: return float(code - 16) * h2f(y);
    case GgufType::Q8_0: return float(code) * h2f(y);
    case GgufType::IQ4_NL: return h2f(y) * float(kIq4nlLevels[code]);
    case GgufType::Q4_K: {
      uint8_t s, m;
      scale_min_k4(int((col % kQKK) / 32), y + 4, &s, &m);
      const float d1 = h2f(y) * float(s), m1 = h2f(y + 2) * float(m);
      return d1 * float(code) - m1;
    }
    case GgufType::Q6_K: {
      const int8_t sc = int8_t(y[192 + (col % kQKK) / 16]);
      return h2f(y + 208) * float(sc) * float(code - 32);
    }
    default: return 0;
  }
}

float BlockGridRow::round(int64_t col, float w, int* code) const {
  const int lo = type_ == GgufType::Q8_0 ? -128 : 0, hi = max_code();
  int c = lo;
  if (type_ == GgufType::IQ4_NL) {
    float best = std::fabs(level(col, 0) - w);
    for (int i = 1; i < 16; ++i) {
      const float e = std::fabs(level(col, i) - w);
      if (e < best) {
        best = e;
        c = i;
      }
    }
    *code = c;
    return level(col, c);
  }
  // A first guess from the step (levels are uniform in the code), then the neighbours decide.
  const float l0 = level(col, lo), l1 = level(col, lo + 1);
  const float step = l1 - l0;
  if (step != 0) {
    const double guess = std::nearbyint(double(w - l0) / double(step)) + lo;
    c = int(std::clamp(guess, double(lo), double(hi)));
  }
  float best = std::fabs(level(col, c) - w);
  for (bool moved = true; moved;) {
    moved = false;
    for (int n : {c - 1, c + 1}) {
      if (n < lo || n > hi) continue;
      const float e = std::fabs(level(col, n) - w);
      if (e < best) {
        best = e;
        c = n;
        moved = true;
      }
    }
  }
  *code = c;
  return level(col, c);
}

void BlockGridRow::encode(const int* codes, uint8_t* out) const {
  std::memcpy(out, blocks_.data(), blocks_.size());
  const int64_t be = gguf_block_elems(type_);
  const std::size_t bb = gguf_block_bytes(type_);
  for (int64_t b = 0; b < cols_ / be; ++b) {
    uint8_t* y = out + std::size_t(b) * bb;
    const int* c = codes + b * be;
    switch (type_) {
      case GgufType::Q4_0:
      case GgufType::IQ4_NL:
        for (int j = 0; j < 16; ++j) y[2 + j] = uint8_t(c[j] | (c[j + 16] << 4));
        break;
      case GgufType::Q4_1:
        for (int j = 0; j < 16; ++j) y[4 + j] = uint8_t(c[j] | (c[j + 16] << 4));
        break;
      case GgufType::Q5_0: {
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
          y[6 + j] = uint8_t((c[j] & 0x0F) | ((c[j + 16] & 0x0F) << 4));
          qh |= uint32_t((c[j] & 0x10) >> 4) << j;
          qh |= uint32_t((c[j + 16] & 0x10) >> 4) << (j + 16);
        }
        std::memcpy(y + 2, &qh, 4);
        break;
      }
      case GgufType::Q8_0:
        for (int j = 0; j < kQK; ++j) y[2 + j] = uint8_t(int8_t(c[j]));
        break;
      case GgufType::Q4_K: {
        uint8_t* q = y + 16;
        for (int j = 0; j < kQKK; j += 64, q += 32)
          for (int l = 0; l < 32; ++l) q[l] = uint8_t(c[j + l] | (c[j + l + 32] << 4));
        break;
      }
      case GgufType::Q6_K: {
        uint8_t* ql = y;
        uint8_t* qh = y + 128;
        for (int j = 0; j < kQKK; j += 128, ql += 64, qh += 32)
          for (int l = 0; l < 32; ++l) {
            ql[l + 0] = uint8_t((c[j + l] & 0xF) | ((c[j + l + 64] & 0xF) << 4));
            ql[l + 32] = uint8_t((c[j + l + 32] & 0xF) | ((c[j + l + 96] & 0xF) << 4));
            qh[l] = uint8_t((c[j + l] >> 4) | ((c[j + l + 32] >> 4) << 2) | ((c[j + l + 64] >> 4) << 4) | ((c[j + l + 96] >> 4) << 6));
          }
        break;
      }
      default: break;
    }
  }
}

}  // namespace quarot
