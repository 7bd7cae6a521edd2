// The cost of the precision planner's W4A8 layers (issue 17): the INT4 GEMM on 8-bit activation
// codes against the same GEMM on 4-bit codes, LLaMA-2-7B shapes, quantize + GEMM and GEMM alone,
// the two alternating run by run (a busy machine slows both alike): min and median of --reps.
// Both run the same kernel (int4_gemm: u4 weights x s8 lanes): only the codes' range differs,
// so any difference is in the activation quantizer or in data-dependent timing.
//
//   quarot-bench-int4-a8 [--reps 7] [--ms 512] [--a-group 0]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "quarot/detail/rng.hpp"
#include "quarot/int4.hpp"
#include "int4_copies.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Stats {
  double min = 0, median = 0;
};
Stats stats(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 7;
  int64_t a_group = 0;
  std::vector<int> ms = {512};
  CLI::App app{"INT4 GEMM on 8-bit vs 4-bit activation codes, LLaMA-2-7B shapes.", "quarot-bench-int4-a8"};
  app.add_option("--reps", reps, "timed runs per case (alternating)")->capture_default_str();
  app.add_option("--ms", ms, "token counts")->delimiter(',');
  app.add_option("--a-group", a_group, "activation columns per scale (0: per token)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::printf("int4 path: %s, %d threads, a_group %lld; ms: min / median of %d alternating runs\n", quarot::isa_name(quarot::best_isa()),
              omp_get_max_threads(), (long long)a_group, reps);
  std::printf("| N x K (out x in) | M | A4: quantize + GEMM | A8: quantize + GEMM | A8 / A4 (min, median) | A4: GEMM | A8: GEMM | "
              "A8 / A4 GEMM (min, median) |\n|---|---|---|---|---|---|---|---|\n");
  quarot::detail::Rng rng(7);
  const std::pair<int64_t, int64_t> shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& [N, K] : shapes) {
    const auto wq = quarot::bench::random_int4_copies(1, N, K, rng);
    const auto w = wq[0].view(N, K);
    for (int M : ms) {
      std::vector<float> x(std::size_t(M) * std::size_t(K)), y(std::size_t(M) * std::size_t(N));
      for (auto& v : x) v = rng.gaussian();
      quarot::Int8Activations a4, a8, a;
      quarot::quantize_activations(x.data(), M, K, 4, 0.9, a_group, a4);
      quarot::quantize_activations(x.data(), M, K, 8, 0.9, a_group, a8);
      std::vector<double> full[2], gemm[2];
      for (int r = -1; r < reps; ++r)  // r = -1: warm-up
        for (int bits : {4, 8}) {
          const int i = bits == 8;
          auto t0 = Clock::now();
          quarot::quantize_activations(x.data(), M, K, bits, 0.9, a_group, a);
          quarot::int4_gemm(w, a, nullptr, y.data());
          const double tf = since(t0);
          t0 = Clock::now();
          quarot::int4_gemm(w, bits == 8 ? a8 : a4, nullptr, y.data());
          const double tg = since(t0);
          if (r >= 0) {
            full[i].push_back(tf);
            gemm[i].push_back(tg);
          }
        }
      // Ratios per round (A8 and A4 of the same round ran back to back), then min and median.
      std::vector<double> rf, rg;
      for (int r = 0; r < reps; ++r) {
        rf.push_back(full[1][std::size_t(r)] / full[0][std::size_t(r)]);
        rg.push_back(gemm[1][std::size_t(r)] / gemm[0][std::size_t(r)]);
      }
      const Stats f4 = stats(full[0]), f8 = stats(full[1]), g4 = stats(gemm[0]), g8 = stats(gemm[1]), sf = stats(rf), sg = stats(rg);
      std::printf("| %lld x %lld | %d | %.2f / %.2f | %.2f / %.2f | %.3f, %.3f | %.2f / %.2f | %.2f / %.2f | %.3f, %.3f |\n", (long long)N,
                  (long long)K, M, f4.min * 1e3, f4.median * 1e3, f8.min * 1e3, f8.median * 1e3, sf.min, sf.median, g4.min * 1e3,
                  g4.median * 1e3, g8.min * 1e3, g8.median * 1e3, sg.min, sg.median);
      std::fflush(stdout);
    }
  }
  return 0;
}
