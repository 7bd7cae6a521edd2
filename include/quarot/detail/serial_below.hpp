#pragma once
// Keeps a small Eigen product on the calling thread. Eigen's GEMM opens an OpenMP region for
// anything above ~50k multiply-adds per thread, and its threads synchronize per depth block by
// busy-waiting (whatever OMP_WAIT_POLICY says): on a busy 2-core machine a second thread for a
// stories260K-sized product (64-wide) costs more than the product; the default threads ran 7-20x
// slower than --threads 1. For the scope of a SerialBelow built with fewer than kParallelMacs
// multiply-adds, the calling thread's OpenMP thread count (what Eigen reads) is 1.
#include <omp.h>

namespace quarot::detail {

constexpr double kParallelMacs = 8e6;

class SerialBelow {
 public:
  explicit SerialBelow(double macs) {
    if (macs < kParallelMacs && !omp_in_parallel()) {
      saved_ = omp_get_max_threads();
      omp_set_num_threads(1);
    }
  }
  ~SerialBelow() {
    if (saved_) omp_set_num_threads(saved_);
  }
  SerialBelow(const SerialBelow&) = delete;
  SerialBelow& operator=(const SerialBelow&) = delete;

 private:
  int saved_ = 0;
};

}  // namespace quarot::detail
