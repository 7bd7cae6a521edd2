// Token streams sampled from a float model (issue 17: aidreams260K has no calibration or
// evaluation text of its own). Each line: BOS, then tokens drawn one at a time from the
// model's softmax at the given temperature (no top-k/top-p), with a seeded generator, up to
// --length tokens (the model's context by default). Different seeds give disjoint-in-practice
// calibration and evaluation sets from the same model. Output: one sequence per line (*.ids).
//   quarot-bench-sample-ids MODEL --seed 42 --lines 128 > calib.ids
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "quarot/checkpoint.hpp"
#include "quarot/forward.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Sample token-id lines from a float model (temperature sampling, fixed seed)"};
  std::string model;
  uint64_t seed = 42;
  int lines = 128, length = 0, bos = 1;
  double temperature = 1.0;
  app.add_option("model", model, "float checkpoint (llama2.c .bin or Hugging Face folder)")->required();
  app.add_option("--seed", seed, "generator seed")->capture_default_str();
  app.add_option("--lines", lines, "sequences")->capture_default_str();
  app.add_option("--length", length, "tokens per line including BOS (0: the model's context)");
  app.add_option("--temperature", temperature, "softmax temperature")->capture_default_str();
  app.add_option("--bos", bos, "first token of every line")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const quarot::ModelWeights m = quarot::load_model(model);
    const int n = length > 0 ? std::min(length, m.config.max_positions) : m.config.max_positions;
    quarot::Transformer<float> t(m, n);
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<float> logits;
    std::vector<double> p;
    for (int line = 0; line < lines; ++line) {
      t.reset();
      std::vector<int> seq = {bos};
      while (int(seq.size()) < n) {
        t.forward_last(std::span<const int>(&seq.back(), 1), logits);
        p.assign(logits.begin(), logits.end());
        const double mx = *std::max_element(p.begin(), p.end());
        double s = 0;
        for (auto& x : p) s += (x = std::exp((x - mx) / temperature));
        double r = u(rng) * s;
        int next = int(p.size()) - 1;
        for (std::size_t i = 0; i < p.size(); ++i)
          if ((r -= p[i]) <= 0) {
            next = int(i);
            break;
          }
        seq.push_back(next);
      }
      for (std::size_t i = 0; i < seq.size(); ++i) std::printf("%d%c", seq[i], i + 1 == seq.size() ? '\n' : ' ');
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quarot-bench-sample-ids: %s\n", e.what());
    return 1;
  }
  return 0;
}
