#include "quarot/large_buffer.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>

namespace quarot {

namespace {
constexpr std::size_t kHuge = std::size_t(2) << 20;       // THP size on x86-64
constexpr std::size_t kThreshold = std::size_t(4) << 20;  // below this, malloc is fine
constexpr std::size_t round_up(std::size_t b) { return (b + kHuge - 1) / kHuge * kHuge; }
}  // namespace

void* large_alloc(std::size_t bytes) {
  if (bytes < kThreshold) {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64 * (bytes == 0));
    if (!p) throw std::bad_alloc();
    return p;
  }
  // Over-map by one huge page, then trim so that the block starts on a 2 MiB boundary.
  const std::size_t size = round_up(bytes);
  void* raw = ::mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kHuge - 1) / kHuge * kHuge;
  if (aligned > base) ::munmap(raw, aligned - base);
  const uintptr_t end = base + size + kHuge;
  if (end > aligned + size) ::munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  ::madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}

void large_free(void* p, std::size_t bytes) noexcept {
  if (!p) return;
  if (bytes < kThreshold) std::free(p);
  else ::munmap(p, round_up(bytes));
}

}  // namespace quarot
