// Tokenizer speed: WikiText-2 test (LF, 1.29 MB) through the Hugging Face tokenizer.json of
// Llama-3, Qwen3 (Qwen2/2.5 share it) and LLaMA-2, against SentencePiece on LLaMA-2's
// tokenizer.model measured in the same run (the ratio's baseline). One thread; min and median of
// the repeats; the load time of each file too.
//
//   quarot-bench-tokenizer [--data ../shared/data] [--repeat 5]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "quarot/hf_tokenizer.hpp"
#include "quarot/tokenizer.hpp"

using Clock = std::chrono::steady_clock;

namespace {
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

int main(int argc, char** argv) {
  std::string data = QUAROT_DATA_DIR;
  int repeat = 5;
  CLI::App app{"Tokenizer throughput on WikiText-2 test: HF tokenizer.json vs SentencePiece.", "quarot-bench-tokenizer"};
  app.add_option("--data", data, "the shared data folder")->capture_default_str();
  app.add_option("--repeat", repeat, "encodes per tokenizer (min and median reported)")->check(CLI::Range(1, 100))->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const std::string text = quarot::read_text_lf(data + "/wikitext-2/wiki.test.txt");
  struct Case {
    const char* name;
    std::string path;
  };
  const std::vector<Case> cases = {
      {"SentencePiece LLaMA-2 tokenizer.model (baseline)", data + "/llama2-tokenizer/tokenizer.model"},
      {"HF Llama-3 tokenizer.json", data + "/tokenizers/llama3/Meta-Llama-3-8B.tokenizer.json"},
      {"HF Qwen3 tokenizer.json", data + "/tokenizers/qwen2/Qwen3.tokenizer.json"},
      {"HF Qwen2.5 vocab.json + merges.txt", data + "/tokenizers/qwen2/Qwen2.5-0.5B-Instruct"},
      {"HF LLaMA-2 tokenizer.json", data + "/tokenizers/llama2/llama2.tokenizer.json"},
  };
  std::printf("WikiText-2 test: %.2f MB, %d repeats, one thread\n\n", double(text.size()) / 1e6, repeat);
  std::printf("| tokenizer | load s | tokens | min s | median s | Mtokens/s | MB/s | time vs SentencePiece |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
  double base = 0;
  for (const auto& c : cases) {
    if (!std::filesystem::exists(c.path)) {
      std::printf("| %s | missing: %s |\n", c.name, c.path.c_str());
      continue;
    }
    auto t0 = Clock::now();
    const auto tok = quarot::load_tokenizer(c.path);
    const double load = seconds_since(t0);
    std::vector<double> times;
    std::size_t n = 0;
    for (int r = 0; r < repeat; ++r) {
      t0 = Clock::now();
      n = tok->encode(text).size();
      times.push_back(seconds_since(t0));
    }
    std::sort(times.begin(), times.end());
    const double mn = times.front(), med = times[times.size() / 2];
    if (base == 0) base = med;
    std::printf("| %s | %.3f | %zu | %.3f | %.3f | %.2f | %.2f | %.2fx |\n", c.name, load, n, mn, med, double(n) / med / 1e6,
                double(text.size()) / med / 1e6, med / base);
    std::fflush(stdout);
  }
  return 0;
}
