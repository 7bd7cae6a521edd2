#pragma once
// Copies of one packed INT4 weight matrix (per-channel symmetric, random codes, scale 0.003):
// the decode benches cycle through more weight bytes than the caches hold.
#include <sys/mman.h>

#include <cstdint>
#include <vector>

#include "quarot/detail/rng.hpp"
#include "quarot/int4.hpp"
#include "quarot/large_buffer.hpp"

namespace quarot::bench {

struct Int4Copy {
  std::vector<uint8_t, LargeAllocator<uint8_t>> packed;
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

// huge_pages: the codes on 2 MiB pages (MADV_HUGEPAGE), as the packed runtime holds them since
// it copies them out of the file mapping at load; false: 4 KiB pages (MADV_NOHUGEPAGE), as a
// file mapping or plain malloc gives them. Blocks under 4 MiB are malloc'd either way.
inline std::vector<Int4Copy> random_int4_copies(int copies, int64_t rows, int64_t cols, detail::Rng& rng, bool huge_pages = true) {
  std::vector<Int4Copy> out(static_cast<std::size_t>(copies));
  for (auto& w : out) {
    const std::size_t bytes = std::size_t(rows * int4_padded_cols(cols) / 2);
    w.packed.reserve(bytes);  // mapped, not yet touched: the advice below decides the page size
    if (!huge_pages && bytes >= (std::size_t(4) << 20)) ::madvise(w.packed.data(), bytes, MADV_NOHUGEPAGE);
    w.packed.resize(bytes);
    for (auto& b : w.packed) b = uint8_t(rng.next());
    w.scales.assign(std::size_t(rows), 0.003f);
  }
  return out;
}

}  // namespace quarot::bench
