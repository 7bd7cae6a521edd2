#pragma once
// The GEMM context shared by the INT4 kernels of src/ops (int4.cpp: the scalar reference and
// the tiled paths; int4_gemv.cpp: the streaming decode GEMV): the segments, their activation
// sums and the fp32 epilogue every path runs in the same order, so that all of them equal the
// scalar reference bit for bit. Internal to src/ops.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "quarot/int4.hpp"

namespace quarot::int4_detail {

// Columns [c0, c1) of the padded row that share one weight group `wg` and one activation group
// `ag`. Without activation groups the segments are the weight groups (whole 64-column blocks).
struct Segment {
  int64_t c0, c1, wg, ag;
};

// The columns of block `b` inside [c0, c1), one bit each.
inline uint64_t block_mask(int64_t b, int64_t c0, int64_t c1) {
  const int64_t lo = std::max<int64_t>(c0 - b * kInt4Block, 0), hi = std::min<int64_t>(c1 - b * kInt4Block, kInt4Block);
  const uint64_t below_hi = hi >= 64 ? ~0ull : (1ull << hi) - 1;
  return below_hi & ~((1ull << lo) - 1);
}

struct GemmContext {
  const Int4Weights& w;
  const Int8Activations& x;
  const float* bias;
  float* y;
  int64_t K, G, GA;
  bool grouped;               // activation scales per group (else one per token, applied at the end)
  std::vector<Segment> seg;
  std::vector<int32_t> xsum;  // [token][segment]: sum of the token's codes over the segment
  GemmContext(const Int4Weights& w_, const Int8Activations& x_, const float* b, float* y_)
      : w(w_), x(x_), bias(b), y(y_), K(w_.cols_padded()), G(w_.groups()), GA(x_.groups()), grouped(x_.group > 0) {
    const int64_t wgs = G > 1 ? w.group_size : K, ags = grouped ? x.group : K;
    for (int64_t c = 0; c < K;) {
      const int64_t wg = std::min(c / wgs, G - 1), ag = std::min(c / ags, GA - 1);
      int64_t end = K;  // the last group of either kind runs to the padding (codes 0 there)
      if (wg + 1 < G) end = std::min(end, (wg + 1) * wgs);
      if (ag + 1 < GA) end = std::min(end, (ag + 1) * ags);
      seg.push_back({c, end, wg, ag});
      c = end;
    }
    const int64_t S = int64_t(seg.size()), nb = K / kInt4Block;
    xsum.assign(std::size_t(x.rows * S), 0);
    for (int t = 0; t < x.rows; ++t)
      for (int64_t s = 0; s < S; ++s) {
        int32_t sum = 0;
        const Segment& g = seg[std::size_t(s)];
        if (g.c0 % kInt4Block == 0 && g.c1 % kInt4Block == 0)
          for (int64_t k = g.c0 / kInt4Block; k < g.c1 / kInt4Block; ++k) sum += x.block_sums[std::size_t(t * nb + k)];
        else
          for (int64_t i = g.c0; i < g.c1; ++i) sum += x.q[std::size_t(t * K + i)];
        xsum[std::size_t(t * S + s)] = sum;
      }
  }
  // The fp32 epilogue, shared by every path: one segment's integer dot added to the running sum
  // `acc` (0 at the start), segments in column order, d = float(dot - z * xsum):
  //   per token:                 acc = acc + s_w * d                 (y = acc * s_x at the end)
  //   activation groups, G == 1: acc = fma(s_x[group], d, acc)       (y = s_w * acc at the end)
  //   activation groups, G > 1:  acc = fma(s_x[group] * s_w, d, acc)
  // One fused multiply-add per group: the row-interleaved GEMM (int4.cpp, gemm_rows_avx512)
  // keeps 16 outputs' sums in the lanes of one register and applies each group's scale with one
  // vfmadd, with no separate rounding of the product.
  void add(float& acc, int64_t o, std::size_t s, int t, int32_t dot) const {
    const Segment& g = seg[s];
    const int32_t z = w.zeros ? w.zeros[o * G + g.wg] : 8;
    const float d = float(dot - z * xsum[std::size_t(t) * seg.size() + s]);
    if (!grouped) {
      acc = acc + w.scales[o * G + g.wg] * d;
      return;
    }
    const float sx = x.scale[std::size_t(t * GA + g.ag)];
    acc = std::fma(G == 1 ? sx : sx * w.scales[o * G + g.wg], d, acc);
  }
  void store(int t, int64_t o, float acc) const {
    float v = !grouped ? acc * x.scale[std::size_t(t)] : G == 1 ? w.scales[o] * acc : acc;
    if (bias) v = v + bias[o];
    y[int64_t(t) * w.rows + o] = v;
  }
};

// The streaming decode GEMV (int4_gemv.cpp) for 1..3 tokens: false (nothing written) when the
// segments are not whole 64-column blocks, which it does not handle.
bool gemv_stream_avx512(const GemmContext& c);

}  // namespace quarot::int4_detail
