// The KV cache read of one decode step (kv_dequantize: every cached position of one layer's keys
// or values back to fp32 for attention), INT4 against INT8 codes, on every ISA this CPU runs,
// against the plain reference measured in the same run. Shapes: LLaMA-2-7B's layer (32 KV heads
// x head_dim 128) and the 260K models' (4 KV heads x 8, 4 x 16). Times: min and median of --reps
// runs, one thread (what a decode step spends per layer and per K or V).
//
//   quarot-bench-kv [--reps 15] [--ctx 512,2048]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "quarot/detail/rng.hpp"
#include "quarot/kv_kernels.hpp"

using Clock = std::chrono::steady_clock;

namespace {

struct Times {
  double min, median;
};
template <class F>
Times time_of(int reps, F&& f) {
  std::vector<double> t;
  f();  // warm-up
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 15;
  std::vector<int> ctxs = {512, 2048};
  CLI::App app("KV cache read (dequantization) per decode step: INT4 vs INT8 codes, every ISA vs the reference");
  app.add_option("--reps", reps, "repeats (min and median reported)");
  app.add_option("--ctx", ctxs, "cached positions")->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  omp_set_num_threads(1);
  struct Shape {
    const char* name;
    int heads, dim;
  };
  const Shape shapes[] = {{"7B layer (32 x 128)", 32, 128}, {"stories260K (4 x 8)", 4, 8}, {"aidreams260K (4 x 16)", 4, 16}};
  std::printf("| shape | ctx | bits | ref (fp64 loop) min / median | scalar | avx2 | avx512 | best vs ref (median) | GB/s fp32 out |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& sh : shapes)
    for (int ctx : ctxs)
      for (int bits : {4, 8}) {
        const int64_t slots = int64_t(ctx) * sh.heads;
        const int sb = quarot::kv_slot_bytes(bits, sh.dim);
        quarot::detail::Rng rng(uint64_t(ctx * 31 + bits));
        std::vector<uint8_t> codes(static_cast<std::size_t>(slots * sb)), zero(static_cast<std::size_t>(slots));
        std::vector<float> scale(static_cast<std::size_t>(slots)), out(static_cast<std::size_t>(slots * sh.dim));
        for (auto& c : codes) c = uint8_t(rng.next());
        for (auto& z : zero) z = uint8_t(rng.next() % (1u << bits));
        for (auto& s : scale) s = 1e-3f * float(1 + rng.next() % 100);
        const Times ref = time_of(reps, [&] {
          quarot::kv_dequantize_ref(codes.data(), scale.data(), zero.data(), slots, sh.dim, bits, out.data());
        });
        std::printf("| %s | %d | %d | %.1f / %.1f us |", sh.name, ctx, bits, ref.min * 1e6, ref.median * 1e6);
        double best = ref.median;
        for (quarot::Isa isa : quarot::kAllIsas) {
          if (!quarot::isa_supported(isa)) {
            std::printf(" – |");
            continue;
          }
          const Times t = time_of(reps, [&] {
            quarot::kv_dequantize(codes.data(), scale.data(), zero.data(), slots, sh.dim, bits, out.data(), isa);
          });
          best = std::min(best, t.median);
          std::printf(" %.1f / %.1f us |", t.min * 1e6, t.median * 1e6);
        }
        std::printf(" %.1fx | %.1f |\n", ref.median / best, double(out.size()) * 4 / best / 1e9);
      }
  return 0;
}
