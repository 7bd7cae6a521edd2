#pragma once
// Copies of one packed INT4 weight matrix (per-channel symmetric, random codes, scale 0.003):
// the decode benches cycle through more weight bytes than the caches hold.
#include <cstdint>
#include <vector>

#include "quarot/detail/rng.hpp"
#include "quarot/int4.hpp"

namespace quarot::bench {

struct Int4Copy {
  std::vector<uint8_t> packed;
  std::vector<float> scales;
  Int4Weights view(int64_t rows, int64_t cols) const {
    Int4Weights w;
    w.rows = rows;
    w.cols = cols;
    w.group_size = cols;
    w.packed = packed.data();
    w.scales = scales.data();
    return w;
  }
};

inline std::vector<Int4Copy> random_int4_copies(int copies, int64_t rows, int64_t cols, detail::Rng& rng) {
  std::vector<Int4Copy> out(static_cast<std::size_t>(copies));
  for (auto& w : out) {
    w.packed.resize(std::size_t(rows * int4_padded_cols(cols) / 2));
    for (auto& b : w.packed) b = uint8_t(rng.next());
    w.scales.assign(std::size_t(rows), 0.003f);
  }
  return out;
}

}  // namespace quarot::bench
