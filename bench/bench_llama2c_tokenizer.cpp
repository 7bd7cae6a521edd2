// llama2.c BPE encode time: quarot's priority-queue merge against run.c's rescanning merge
// (the baseline, in the same run, on the same prefixes; it is O(n^2), so only short prefixes),
// and the full text with both the new merge and SentencePiece on the same model.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

#include "quarot/checkpoint.hpp"
#include "quarot/tokenizer.hpp"
#include "reference_llama2c_bpe.hpp"

namespace {

using quarot::reference::rescanning_encode;  // run.c's encoder, the baseline (tests/reference_llama2c_bpe.hpp)

template <class Fn>
std::pair<double, double> time_it(int repeat, Fn&& fn) {  // min, median seconds
  std::vector<double> s;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return {s.front(), s[s.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("llama2.c BPE encode time: priority-queue merge vs run.c's rescanning merge");
  std::string bin, model, text_path;
  std::vector<std::size_t> prefixes = {20000, 40000};
  int repeat = 3;
  app.add_option("--bin", bin, "llama2.c tokenizer.bin")->required();
  app.add_option("--model", model, "the same model as SentencePiece .model (optional)");
  app.add_option("--text", text_path, "text file (CRLF read as LF)")->required();
  app.add_option("--prefixes", prefixes, "prefix sizes in bytes for the baseline comparison");
  app.add_option("--repeat", repeat, "repeats of the fast encoders");
  CLI11_PARSE(app, argc, argv);
  const auto pieces = quarot::load_llama2c_tokenizer(bin);
  const auto lookup = quarot::reference::piece_lookup(pieces);
  const auto tok = quarot::make_llama2c_bpe(pieces, bin);
  const std::string text = quarot::read_text_lf(text_path);
  std::printf("| text | run.c merge (baseline, 1 run) | priority-queue merge (min / median of %d) | speedup | same ids |\n|---|---|---|---|---|\n", repeat);
  for (std::size_t n : prefixes) {
    const std::string t = text.substr(0, n);
    std::vector<int> a, b;
    const auto base = time_it(1, [&] { a = rescanning_encode(pieces, lookup, t); });
    const auto fast = time_it(repeat, [&] { b = tok->encode(t); });
    std::printf("| first %zu bytes | %.3f s | %.4f / %.4f s | %.0fx | %s |\n", n, base.first, fast.first, fast.second,
                base.first / fast.second, a == b ? "yes" : "NO");
  }
  std::vector<int> full;
  const auto whole = time_it(repeat, [&] { full = tok->encode(text); });
  std::printf("| all %zu bytes | – | %.3f / %.3f s (%zu ids) | | |\n", text.size(), whole.first, whole.second, full.size());
  if (!model.empty()) {
    const auto sp = quarot::load_sentencepiece(model);
    std::vector<int> s;
    const auto t = time_it(repeat, [&] { s = sp->encode(text); });
    std::printf("| all %zu bytes, SentencePiece .model | – | %.3f / %.3f s (%zu ids) | | %s |\n", text.size(), t.first, t.second,
                s.size(), s == full ? "yes (as the new merge)" : "NO");
  }
  return 0;
}
