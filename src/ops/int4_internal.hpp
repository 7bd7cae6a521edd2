#pragma once
// The GEMM context shared by the INT4 kernels of src/ops (int4.cpp: the scalar reference and
// the tiled paths; int4_gemv.cpp: the streaming decode GEMV): the segments, their activation
// sums and the fp32 epilogue every path runs in the same order, so that all of them equal the
// scalar reference bit for bit. Internal to src/ops.
#include <algorithm>
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
  // The fp32 epilogue, shared by every path: one segment's integer dot, as added to the running
  // sum. Per token: s_w * float(dot - z * xsum), times s_x at the end. With activation groups:
  // s_x * float(...) with per-channel weights (s_w at the end), else s_x * (s_w * float(...)).
  float term(int64_t o, std::size_t s, int t, int32_t dot) const {
    const Segment& g = seg[s];
    const int32_t z = w.zeros ? w.zeros[o * G + g.wg] : 8;
    const float d = float(dot - z * xsum[std::size_t(t) * seg.size() + s]);
    if (!grouped) return w.scales[o * G + g.wg] * d;
    const float sx = x.scale[std::size_t(t * GA + g.ag)];
    return G == 1 ? sx * d : sx * (w.scales[o * G + g.wg] * d);
  }
  void store(int t, int64_t o, float acc) const {
    float v = !grouped ? acc * x.scale[std::size_t(t)] : G == 1 ? w.scales[o] * acc : acc;
    if (bias) v = v + bias[o];
    y[int64_t(t) * w.rows + o] = v;
  }
};

// The running sum of one output. Per token one fp32 sum; with activation groups 16 lanes, segment
// s into lane s % 16 (the lanes of gemm_grouped_avx512, one group per lane), added pairwise at the
// end (lane i + lane i + 8, then + 4, + 2, + 1) -- the order every path follows.
struct RunningSum {
  float lane[16];
  void clear(bool grouped) { std::fill(lane, lane + (grouped ? 16 : 1), 0.f); }
  void add(bool grouped, std::size_t s, float v) { lane[grouped ? s % 16 : 0] += v; }
  float total(bool grouped) {
    if (grouped)
      for (int step = 8; step >= 1; step /= 2)
        for (int i = 0; i < step; ++i) lane[i] = lane[i] + lane[i + step];
    return lane[0];
  }
};

// The streaming decode GEMV (int4_gemv.cpp) for 1..3 tokens: false (nothing written) when the
// segments are not whole 64-column blocks, which it does not handle.
bool gemv_stream_avx512(const GemmContext& c);

}  // namespace quarot::int4_detail
