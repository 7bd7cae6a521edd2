#pragma once
// Parallel work whose result does not depend on the thread count.
//
// Eigen's own GEMM threading is off in every quarot target (EIGEN_DONT_PARALLELIZE, set in the
// top CMakeLists.txt): its blocking along the inner dimension changes with the number of threads,
// so the same product summed in a different order and `--threads 1` and `--threads 2` wrote
// different packed files (issue 20); its threads also synchronize per block by busy-waiting,
// whatever OMP_WAIT_POLICY says. Instead, a large product is cut into chunks of a fixed size
// along a dimension that is not summed over (output columns, weight rows), each chunk is one
// serial Eigen product, and the chunks are handed out to the OpenMP team. A chunk's result is
// the same whichever thread computes it, so the whole is bit-identical for any thread count.
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace quarot::detail {

// Below this many multiply-adds a product stays on the calling thread: on a busy 2-core machine
// a second thread costs more than a stories260K-sized (64-wide) product.
constexpr double kParallelMacs = 8e6;

// Calls fn(begin, count) for [0, n) in chunks of `chunk` (the last one shorter), on the OpenMP
// team when `parallel` (and not already inside a parallel region). fn must not throw.
template <class Fn>
void for_fixed_chunks(int64_t n, int64_t chunk, bool parallel, Fn&& fn) {
  const int64_t count = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1) if (parallel && count > 1 && !omp_in_parallel())
  for (int64_t c = 0; c < count; ++c) fn(c * chunk, std::min(chunk, n - c * chunk));
}

// Output features per chunk of a product (in W^T, W row-major with one row per output; also H's
// columns and GPTQ's trailing columns). A multiple of the panel height of Eigen's GEMM kernel
// (3 SIMD registers: 48 floats / 24 doubles with AVX-512, 24 / 12 with AVX2), so a chunked product
// cuts its panels where the whole one does and gives the very bits of the unchunked serial
// product (128 did not: stories-sized FFN 172 = 128 + 44 changed the last bits of the simulation).
constexpr int64_t kOutputChunk = 192;

}  // namespace quarot::detail
