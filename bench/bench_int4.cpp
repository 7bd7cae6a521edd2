// INT4 GEMM (W4 x A4 codes in int8 lanes, int32 accumulation, fp32 dequantization) against
// Eigen's fp32 GEMM on LLaMA-2-7B shapes, at decode (M = 1), small batch (16) and prefill (512),
// and with the online Hadamard on the input included.
//
// Decode is memory-bound: every M = 1 measurement cycles through copies of the weights worth
// at least --cycle-mb (default 256 MB), so that no copy is still in the last-level cache when
// it is used again. Times are the median of --reps runs; int4 includes quantizing the
// activations (it has to be done per call).
//
// With --a-group G[,G2..] instead: the int4 GEMM with activation scales per group of G columns
// (issue 17) against per token, current and previous kernels alternating (bench_groups).
//
// With --a16 instead: W4A16 (float activations x packed INT4 weights, int4_gemm_f32) against its
// previous path (int4_gemm_f32_tiled) and Eigen's fp32 GEMM of the same dequantized weights (in
// the float model's fixed chunks of output rows), on one and on two threads, the three
// alternating rep by rep: min and median GFLOP/s (2 M N K per product).
//
//   quarot-bench-int4 [--reps 7] [--cycle-mb 256] [--ms 1,16,512]
//   quarot-bench-int4 --a-group 128,64 [--reps 7] [--ms 512] [--cpu-time]
//   quarot-bench-int4 --a16 [--reps 5] [--ms 1,8,16,64,512] [--threads 1,2] [--w-group 0] [--cpu-time]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <functional>
#include <cstdio>
#include <string>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/fixed_chunks.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/hadamard.hpp"
#include "quarot/int4.hpp"
#include "int4_copies.hpp"

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


// --a16: one packed copy per shape (at M <= 8 the weights come from DRAM anyway: 4096 x 11008 is
// 22 MB packed and 180 MB in fp32; each product reads every weight once, the caches hold no
// more than part of one copy).
// With cpu_time the process's CPU seconds instead of wall seconds: on a machine busy with other
// work the wall time measures the share of a core the bench got, the CPU time the kernel (one
// thread; with more, CPU time also counts the OpenMP team's waits).
double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

int bench_a16(int reps, const std::vector<int>& ms, const std::vector<int>& threads, int64_t w_group, bool cpu_time) {
  std::printf("W4A16: int4_gemm_f32 path %s, weights per %s; GFLOP per %s second, min / median of %d alternating reps\n",
              quarot::isa_name(quarot::best_isa()), w_group > 0 ? ("group of " + std::to_string(w_group)).c_str() : "channel",
              cpu_time ? "CPU" : "wall", reps);
  std::printf("| N x K (out x in) | M | threads | fp32 Eigen | old (tiles + Eigen) | new | new / fp32 (median) | new / old (median) |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  quarot::detail::Rng rng(7);
  const std::pair<int64_t, int64_t> shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& [N, K] : shapes) {
    const int64_t group = w_group > 0 && w_group < K && K % w_group == 0 ? w_group : K, G = K / group;
    std::vector<uint8_t> packed(std::size_t(N * quarot::int4_padded_cols(K) / 2)), zeros(std::size_t(N * G));
    std::vector<float> scales(std::size_t(N * G));
    for (auto& b : packed) b = uint8_t(rng.next());
    for (auto& v : scales) v = 0.002f + float(rng.next() % 100) * 1e-5f;
    for (auto& z : zeros) z = uint8_t(rng.next() % 16);
    quarot::Int4Weights w;
    w.rows = N;
    w.cols = K;
    w.group_size = group;
    w.packed = packed.data();
    w.scales = scales.data();
    w.zeros = zeros.data();
    RowMat wf(N, K);
    for (int64_t o = 0; o < N; ++o)
      for (int64_t i = 0; i < K; ++i) wf(o, i) = w.weight(o, i);
    for (int M : ms) {
      RowMat x(M, K), y(M, N);
      for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.gaussian();
      const double flop = 2.0 * M * double(N) * double(K);
      for (int nt : threads) {
        omp_set_num_threads(nt);
        auto fp32 = [&] {
          const bool parallel = double(M) * double(K) * double(N) >= quarot::detail::kParallelMacs;
          quarot::detail::for_fixed_chunks(N, quarot::detail::kOutputChunk, parallel, [&](int64_t o0, int64_t n) {
            y.middleCols(o0, n).noalias() = x * wf.middleRows(o0, n).transpose();
          });
        };
        auto old_path = [&] { quarot::int4_gemm_f32_tiled(w, x.data(), M, nullptr, y.data()); };
        auto new_path = [&] { quarot::int4_gemm_f32(w, x.data(), M, nullptr, y.data()); };
        // The old path takes seconds at M = 512: fewer reps where one run is long.
        std::vector<double> t[3];
        auto timed = [&](auto&& f, std::vector<double>& out) {
          const auto t0 = Clock::now();
          const double c0 = process_cpu_seconds();
          f();
          out.push_back(cpu_time ? process_cpu_seconds() - c0 : since(t0));
        };
        fp32();
        old_path();
        new_path();
        const int r_here = flop > 2e10 ? std::max(3, reps / 2) : reps;
        for (int r = 0; r < r_here; ++r) {
          timed(fp32, t[0]);
          timed(old_path, t[1]);
          timed(new_path, t[2]);
        }
        double mn[3], md[3];
        for (int i = 0; i < 3; ++i) {
          std::sort(t[i].begin(), t[i].end());
          mn[i] = flop / t[i].front() / 1e9;
          md[i] = flop / t[i][t[i].size() / 2] / 1e9;
        }
        std::printf("| %lld x %lld | %d | %d | %.1f / %.1f | %.1f / %.1f | %.1f / %.1f | %.2fx | %.2fx |\n", (long long)N, (long long)K, M,
                    nt, mn[0], md[0], mn[1], md[1], mn[2], md[2], md[2] / md[0], md[2] / md[1]);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}


// --a-group G1,G2..: per-group activation scales against per token (issue 17), the current
// kernels (int4_gemm) and the previous ones (int4_gemm_previous: 4 x 4 tiles, and the
// lane-per-group GEMM for groups), all four alternating run by run in one process (a busy machine
// drifts; --cpu-time: process CPU seconds, for one thread on a machine shared with other
// work): quantize + GEMM of one copy, min and median; also the GEMMs alone (codes quantized
// once) for the current kernels, and their GOP/s (2 M N K).
int bench_groups(int reps, const std::vector<int>& ms, const std::vector<int>& groups, bool cpu_time) {
  std::printf("int4 path: %s, %d threads; quantize + GEMM, %s ms min / median of %d alternating runs\n", quarot::isa_name(quarot::best_isa()),
              omp_get_max_threads(), cpu_time ? "CPU" : "wall", reps);
  std::printf("| N x K (out x in) | M | a_group | per token | grouped | grouped / per token (min, median) | previous: per token | "
              "previous: grouped | previous: grouped / per token (median) | per token: previous / current (median) | GEMM only: grouped / per token (min, median) | GEMM only GOP/s per token, grouped (min) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  quarot::detail::Rng rng(7);
  const std::pair<int64_t, int64_t> shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& [N, K] : shapes) {
    const auto wq = quarot::bench::random_int4_copies(1, N, K, rng);
    const auto w = wq[0].view(N, K);
    for (int M : ms) {
      RowMat x(M, K), y(M, N);
      for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.gaussian();
      for (int g : groups) {
        quarot::Int8Activations a, ap, ag;
        quarot::quantize_activations(x.data(), M, K, 4, 0.9, 0, ap);
        quarot::quantize_activations(x.data(), M, K, 4, 0.9, g, ag);
        auto full = [&](int64_t group, bool previous) {
          return [&, group, previous] {
            quarot::quantize_activations(x.data(), M, K, 4, 0.9, group, a);
            if (previous)
              quarot::int4_gemm_previous(w, a, nullptr, y.data());
            else
              quarot::int4_gemm(w, a, nullptr, y.data());
          };
        };
        const std::function<void()> runs[] = {full(0, false), full(g, false), full(0, true), full(g, true),
                                              [&] { quarot::int4_gemm(w, ap, nullptr, y.data()); },
                                              [&] { quarot::int4_gemm(w, ag, nullptr, y.data()); }};
        constexpr int kRuns = 6;
        std::vector<double> t[kRuns];
        for (auto& f : runs) f();  // warm-up
        for (int r = 0; r < reps; ++r)
          for (int k = 0; k < kRuns; ++k) {
            const auto t0 = Clock::now();
            const double c0 = process_cpu_seconds();
            runs[k]();
            t[k].push_back(cpu_time ? process_cpu_seconds() - c0 : since(t0));
          }
        double mn[kRuns], md[kRuns];
        for (int k = 0; k < kRuns; ++k) {
          std::sort(t[k].begin(), t[k].end());
          mn[k] = t[k].front();
          md[k] = t[k][t[k].size() / 2];
        }
        const double ops = 2.0 * M * double(N) * double(K);
        std::printf("| %lld x %lld | %d | %d | %.2f / %.2f | %.2f / %.2f | %.3fx, %.3fx | %.2f / %.2f | %.2f / %.2f | %.3fx | %.2fx | %.3fx, %.3fx | %.0f, %.0f |\n",
                    (long long)N, (long long)K, M, g, mn[0] * 1e3, md[0] * 1e3, mn[1] * 1e3, md[1] * 1e3, mn[1] / mn[0], md[1] / md[0],
                    mn[2] * 1e3, md[2] * 1e3, mn[3] * 1e3, md[3] * 1e3, md[3] / md[2], md[2] / md[0], mn[5] / mn[4], md[5] / md[4],
                    ops / mn[4] / 1e9, ops / mn[5] / 1e9);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  int reps = 7, cycle_mb = 256;
  std::vector<int> a_groups;
  std::vector<int> ms = {1, 16, 512};
  CLI::App app{"INT4 GEMM vs Eigen fp32 GEMM on LLaMA-2-7B shapes.", "quarot-bench-int4"};
  app.add_option("--reps", reps, "timed runs per case (median)")->capture_default_str();
  app.add_option("--cycle-mb", cycle_mb, "weight bytes cycled through at M = 1 (MB)")->capture_default_str();
  app.add_option("--ms", ms, "token counts")->delimiter(',');
  app.add_option("--a-group", a_groups, "instead: activation scales per group of these many columns against per token (--ms default 512)")
      ->delimiter(',');
  bool a16 = false;
  std::vector<int> threads = {1, 2};
  int64_t w_group = 0;
  bool cpu_time = false;
  app.add_flag("--cpu-time", cpu_time, "--a16, --a-group: time in process CPU seconds (a busy machine; one thread)");
  app.add_flag("--a16", a16, "W4A16 instead: int4_gemm_f32 vs its previous path vs fp32 (--ms default 1,8,16,64,512)");
  app.add_option("--threads", threads, "--a16: thread counts")->delimiter(',');
  app.add_option("--w-group", w_group, "--a16: weight group size (0: per channel)");
  CLI11_PARSE(app, argc, argv);
  if (a16) {
    if (app.count("--ms") == 0) ms = {1, 8, 16, 64, 512};
    return bench_a16(app.count("--reps") ? reps : 5, ms, threads, w_group, cpu_time);
  }
  if (!a_groups.empty()) {
    if (app.count("--ms") == 0) ms = {512};
    return bench_groups(reps, ms, a_groups, cpu_time);
  }
  std::printf("int4 path: %s, fwht: %s, %d threads\n", quarot::isa_name(quarot::best_isa()), quarot::fwht_isa(),
              omp_get_max_threads());
  std::printf("| N x K (out x in) | M | fp32 GEMM | int4 GEMM | speedup | int4 + FWHT(K) | speedup | int4 GB/s (weights) |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  quarot::detail::Rng rng(7);
  const std::pair<int64_t, int64_t> shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& [N, K] : shapes) {
    const int64_t fp32_bytes = N * K * 4, int4_bytes = N * quarot::int4_padded_cols(K) / 2 + N * 4;
    const int fp32_copies = int(std::max<int64_t>(1, (int64_t(cycle_mb) << 20) / fp32_bytes + 1));
    const int int4_copies = int(std::max<int64_t>(1, (int64_t(cycle_mb) << 20) / int4_bytes + 1));
    std::vector<RowMat> wf(std::size_t(fp32_copies), RowMat(N, K));
    for (auto& w : wf)
      for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = rng.gaussian() * 0.02f;
    const auto wq = quarot::bench::random_int4_copies(int4_copies, N, K, rng);
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
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  return 0;
}
