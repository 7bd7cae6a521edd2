// quarot-run: greedy generation from a prompt (text + tokenizer) or token ids, with any model
// quarot reads -- in particular a packed INT4 model, run by the integer kernels.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <sstream>

#include "cli.hpp"
#include "quarot/packed.hpp"
#include "quarot/progress.hpp"
#include "quarot/hf_tokenizer.hpp"
#include "quarot/runtime.hpp"
#include "quarot/tokenizer.hpp"

int main(int argc, char** argv) {
  struct Args {
    std::string model, prompt, tokenizer, ids;
    int n = 64, threads = 0;
    std::string qdec_k;
    bool simulate = false, stop_at_eos = false, quiet = false, verify = false;
  } a;
  CLI::App app{
      "Greedy generation: the prompt (BOS first) is run as one window, then --n tokens are decoded one\n"
      "at a time through the KV cache (INT4 for a packed W4A4KV4 model). Prints the ids, the text when a\n"
      "tokenizer is given, and the decode speed.\n"
      "Example: quarot-run stories.q4.safetensors --tokenizer tok512.model --prompt \"Once upon a time\" -n 40",
      "quarot-run"};
  app.add_option("model", a.model, "checkpoint: packed .q4.safetensors, llama2.c .bin or Hugging Face folder")->required();
  auto* prompt = app.add_option("--prompt", a.prompt, "prompt text (needs --tokenizer)");
  app.add_option("--tokenizer", a.tokenizer,
                 "tokenizer.json (or a folder with one, or vocab.json + merges.txt), SentencePiece .model or\n"
                 "llama2.c tokenizer .bin (default: the tokenizer in the model's folder, if any)");
  auto* ids = app.add_option("--ids", a.ids, "prompt as token ids, e.g. \"1 403 407\" (default: BOS only)");
  app.add_option("-n,--n", a.n, "tokens to generate")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_flag("--stop-at-eos", a.stop_at_eos, "stop at the end-of-sequence token");
  app.add_flag("--simulate", a.simulate, "packed model: run the fake-quant simulation instead of the integer path");
  app.add_flag("--verify", a.verify,
               "packed model: check the CRC32 of every tensor at load (reads the whole file; default: the header CRC and\n"
               "every tensor's dtype, shape and bounds only, so a decode pages in what it uses)");
  quarot::cli::add_qdec_k_override(app, a.qdec_k);
  quarot::cli::add_threads(app, a.threads);
  quarot::cli::add_quiet(app, a.quiet);
  prompt->excludes(ids);
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;
  std::optional<quarot::QdecK> qdec_k;
  if (!a.qdec_k.empty()) qdec_k = quarot::parse_qdec_k(a.qdec_k);  // checked while parsing
  if (!a.prompt.empty() && a.tokenizer.empty() && !(a.tokenizer = quarot::find_model_tokenizer(a.model)).empty())
    if (!a.quiet) std::fprintf(stderr, "quarot-run: tokenizer %s (from the model's folder)\n", a.tokenizer.c_str());
  if (!a.prompt.empty() && a.tokenizer.empty()) {
    std::fprintf(stderr, "quarot-run: error: --prompt needs --tokenizer (see --help)\n");
    return quarot::cli::kExitUsage;
  }
  return quarot::cli::run("quarot-run", [&] {
    if (a.threads > 0) omp_set_num_threads(a.threads);
    const quarot::LoadedModel model(a.model, a.simulate, a.verify, qdec_k);
    const auto& c = model.config();
    std::unique_ptr<quarot::Tokenizer> tok;
    if (!a.tokenizer.empty()) {
      tok = quarot::load_tokenizer(a.tokenizer);
      quarot::check_tokenizer_fits_model(*tok, c.vocab, a.tokenizer);
    }
    std::vector<int> prompt_ids = {c.bos_id >= 0 ? c.bos_id : 1};
    if (!a.prompt.empty()) {
      // What the tokenizer adds by its own convention (BOS for LLaMA-2/Mistral/SentencePiece,
      // nothing for Qwen, whose config's bos_token_id is <|endoftext|>); the config's BOS only
      // when that leaves nothing to start from.
      const auto t = tok->encode_with_special(a.prompt);
      if (!t.empty()) prompt_ids = t;
    } else if (!a.ids.empty()) {
      prompt_ids.clear();
      std::istringstream in(a.ids);
      for (long long v; in >> v;) {
        if (v < 0 || v >= c.vocab) throw quarot::Error("--ids", "token id " + std::to_string(v) + " outside the vocabulary");
        prompt_ids.push_back(int(v));
      }
      if (!in.eof() || prompt_ids.empty()) throw quarot::Error("--ids", "expected whitespace-separated token ids");
    }
    const int ctx = std::min(c.max_positions, int(prompt_ids.size()) + a.n);
    if (int(prompt_ids.size()) + a.n > c.max_positions)
      std::fprintf(stderr, "quarot-run: prompt + n exceeds the model's %d positions; generating %d\n", c.max_positions,
                   ctx - int(prompt_ids.size()));
    if (int(prompt_ids.size()) >= ctx) throw quarot::Error("--prompt", "longer than the model's context");
    auto t = model.transformer(ctx);
    if (!a.quiet) std::fprintf(stderr, "quarot-run: %s: %s\n", a.model.c_str(), model.describe().c_str());
    const auto t0 = std::chrono::steady_clock::now();
    const auto out = quarot::generate_greedy(t, prompt_ids, ctx - int(prompt_ids.size()), a.stop_at_eos);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("ids:");
    for (int id : out) std::printf(" %d", id);
    std::printf("\n");
    if (tok) std::printf("text: %s\n", tok->decode(out).c_str());
    const int generated = int(out.size() - prompt_ids.size());
    if (!a.quiet) std::fprintf(stderr, "quarot-run: %zu prompt + %d generated tokens in %.3fs (%.1f tokens/s); peak RSS %.1f MiB\n",
                 prompt_ids.size(), generated, secs, generated / secs, double(quarot::peak_rss_bytes()) / (1 << 20));
    return 0;
  });
}
