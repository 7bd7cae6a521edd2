// INT4 GEMM (W4 x A4 codes in int8 lanes, int32 accumulation, fp32 dequantization) against
// Eigen's fp32 GEMM on LLaMA-2-7B shapes, at decode (M = 1), small batch (16) and prefill (512),
// and with the online Hadamard on the input included.
//
// Decode is memory-bound: every M = 1 measurement cycles through copies of the weights worth
// at least --cycle-mb (default 256 MB), so that no copy is still in the last-level cache when
// it is used again. Times are the median of --reps runs; int4 includes quantizing the
// activations (it has to be done per call).
//
// With --a-group G (> 0) also the int4 GEMM with activation scales per group of G columns
// (issue 17), and its time against the per-token int4 GEMM of the same run.
//
//   quarot-bench-int4 [--reps 7] [--cycle-mb 256] [--ms 1,16,512] [--a-group 128]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/hadamard.hpp"
#include "quarot/int4.hpp"

using Clock = std::chrono::steady_clock;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

template <class F>
double median_of(int reps, F&& f) {
  std::vector<double> t;
  f();  // warm-up (page faults, thread pool)
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    t.push_back(since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct PackedCopy {
  std::vector<uint8_t> packed;
  std::vector<float> scales;
  quarot::Int4Weights view(int64_t rows, int64_t cols) const {
    quarot::Int4Weights w;
    w.rows = rows;
    w.cols = cols;
    w.group_size = cols;
    w.packed = packed.data();
    w.scales = scales.data();
    return w;
  }
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 7, cycle_mb = 256, a_group = 0;
  std::vector<int> ms = {1, 16, 512};
  CLI::App app{"INT4 GEMM vs Eigen fp32 GEMM on LLaMA-2-7B shapes.", "quarot-bench-int4"};
  app.add_option("--reps", reps, "timed runs per case (median)")->capture_default_str();
  app.add_option("--cycle-mb", cycle_mb, "weight bytes cycled through at M = 1 (MB)")->capture_default_str();
  app.add_option("--ms", ms, "token counts")->delimiter(',');
  app.add_option("--a-group", a_group, "also time activation scales per group of this many columns");
  CLI11_PARSE(app, argc, argv);
  std::printf("int4 path: %s, fwht: %s, %d threads\n", quarot::isa_name(quarot::best_isa()), quarot::fwht_isa(),
              omp_get_max_threads());
  if (a_group > 0) {
    std::printf("| N x K (out x in) | M | fp32 GEMM | int4 GEMM | speedup | int4 + FWHT(K) | speedup | int4 GB/s (weights) | int4 a_group %d (median, min) | vs per token, alternating runs (median, min) |\n", a_group);
    std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  } else {
    std::printf("| N x K (out x in) | M | fp32 GEMM | int4 GEMM | speedup | int4 + FWHT(K) | speedup | int4 GB/s (weights) |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
  }
  quarot::detail::Rng rng(7);
  const std::pair<int64_t, int64_t> shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& [N, K] : shapes) {
    const int64_t fp32_bytes = N * K * 4, int4_bytes = N * quarot::int4_padded_cols(K) / 2 + N * 4;
    const int fp32_copies = int(std::max<int64_t>(1, (int64_t(cycle_mb) << 20) / fp32_bytes + 1));
    const int int4_copies = int(std::max<int64_t>(1, (int64_t(cycle_mb) << 20) / int4_bytes + 1));
    std::vector<RowMat> wf(std::size_t(fp32_copies), RowMat(N, K));
    for (auto& w : wf)
      for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = rng.gaussian() * 0.02f;
    std::vector<PackedCopy> wq(static_cast<std::size_t>(int4_copies));
    for (auto& w : wq) {
      w.packed.resize(std::size_t(N * quarot::int4_padded_cols(K) / 2));
      for (auto& b : w.packed) b = uint8_t(rng.next());
      w.scales.assign(std::size_t(N), 0.003f);
    }
    const auto h = quarot::Hadamard::make(int(K), 0);
    for (int M : ms) {
      // At M = 1 cycle through the copies; at larger M one copy (compute-bound, and the
      // activations are re-read anyway).
      const int fc = M == 1 ? fp32_copies : 1, qc = M == 1 ? int4_copies : 1;
      RowMat x(M, K), y(M, N);
      for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.gaussian();
      RowMat xh = x;
      int fi = 0, qi = 0;
      const double t_fp32 = median_of(reps, [&] {
        for (int c = 0; c < fc; ++c) y.noalias() = x * wf[std::size_t((fi++) % fp32_copies)].transpose();
      }) / fc;
      quarot::Int8Activations a;
      const double t_int4 = median_of(reps, [&] {
        for (int c = 0; c < qc; ++c) {
          quarot::quantize_activations(x.data(), M, K, 4, 0.9, a);
          quarot::int4_gemm(wq[std::size_t((qi++) % int4_copies)].view(N, K), a, nullptr, y.data());
        }
      }) / qc;
      const double t_int4_h = median_of(reps, [&] {
        for (int c = 0; c < qc; ++c) {
          xh = x;
          h.right(xh.data(), M, K);
          quarot::quantize_activations(xh.data(), M, K, 4, 0.9, a);
          quarot::int4_gemm(wq[std::size_t((qi++) % int4_copies)].view(N, K), a, nullptr, y.data());
        }
      }) / qc;
      std::printf("| %lld x %lld | %d | %.3f ms | %.3f ms | %.2fx | %.3f ms | %.2fx | %.1f |", (long long)N, (long long)K, M,
                  t_fp32 * 1e3, t_int4 * 1e3, t_fp32 / t_int4, t_int4_h * 1e3, t_fp32 / t_int4_h, double(int4_bytes) / t_int4 / 1e9);
      if (a_group > 0) {
        // Per token and grouped, alternating run by run (a busy machine drifts): min and median.
        auto once = [&](int64_t g) {
          const auto t0 = Clock::now();
          for (int c = 0; c < qc; ++c) {
            quarot::quantize_activations(x.data(), M, K, 4, 0.9, g, a);
            quarot::int4_gemm(wq[std::size_t((qi++) % int4_copies)].view(N, K), a, nullptr, y.data());
          }
          return since(t0) / qc;
        };
        once(0);
        once(a_group);
        std::vector<double> tp, tg;
        for (int r = 0; r < reps; ++r) {
          tp.push_back(once(0));
          tg.push_back(once(a_group));
        }
        std::sort(tp.begin(), tp.end());
        std::sort(tg.begin(), tg.end());
        std::printf(" %.3f ms (min %.3f) | %.3fx (min %.3fx) |", tg[tg.size() / 2] * 1e3, tg[0] * 1e3, tg[tg.size() / 2] / tp[tp.size() / 2],
                    tg[0] / tp[0]);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  return 0;
}
