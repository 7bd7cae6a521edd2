#pragma once
// An allocator for the big weight and activation buffers. Large blocks (>= 4 MiB) come straight
// from mmap, aligned to 2 MiB and advised MADV_HUGEPAGE: first-touch page faults dominate
// loading time on VMs (measured: ~11 us per 4 KiB fault on our Firecracker machines, i.e.
// ~0.35 GB/s), and huge pages cut the fault count 512x. mmap memory arrives zeroed.
#include <cstddef>
#include <new>
#include <vector>

namespace quarot {

void* large_alloc(std::size_t bytes);              // throws std::bad_alloc
void large_free(void* p, std::size_t bytes) noexcept;

template <class T>
struct LargeAllocator {
  using value_type = T;
  LargeAllocator() = default;
  template <class U>
  LargeAllocator(const LargeAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(large_alloc(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { large_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const LargeAllocator<U>&) const noexcept { return true; }
};

using FloatBuffer = std::vector<float, LargeAllocator<float>>;

}  // namespace quarot
