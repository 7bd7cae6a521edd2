// quarot-eval: perplexity (and KL divergence against a base model) of a checkpoint on a text or
// a pre-tokenized ids file, under the QuaRot/GPTQ ("paper") or llama.cpp protocol.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "quarot/atomic_file.hpp"
#include "quarot/file_identity.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/packed.hpp"
#include "quarot/progress.hpp"
#include "quarot/rotate.hpp"
#include "quarot/runtime.hpp"
#include "quarot/sha256.hpp"
#include "quarot/hf_tokenizer.hpp"
#include "quarot/tasks.hpp"
#include "quarot/tokenizer.hpp"

namespace {

// --task: scores a multiple-choice task; prints acc, acc_norm ± stderr and time per item.
template <class Args>
int run_task(const Args& args) {
  if (args.threads > 0) omp_set_num_threads(args.threads);
  // --json against every input (by identity) before any work, as in the perplexity mode.
  if (!args.json.empty()) quarot::refuse_unsafe_output(args.json, {args.model, args.task_file, args.task_labels, args.tokenizer});
  const auto task = quarot::read_task(args.task, args.task_file, args.task_labels);
  const auto tok = quarot::load_tokenizer(args.tokenizer);
  std::optional<quarot::QdecK> qdec_k;
  if (!args.qdec_k.empty()) qdec_k = quarot::parse_qdec_k(args.qdec_k);
  const quarot::LoadedModel loaded(args.model, args.simulate, !args.no_verify, qdec_k);
  auto model = loaded.transformer(loaded.config().max_positions);
  if (!args.quiet) std::fprintf(stderr, "quarot-eval: %s: %s\n", args.model.c_str(), loaded.describe().c_str());
  if (!args.quiet) std::fprintf(stderr, "quarot-eval: %s, %zu items in %s, tokenizer %s (%s), %d threads\n", args.task.c_str(),
               task.items.size(), args.task_file.c_str(), tok->kind().c_str(), tok->special_policy().c_str(),
               omp_get_max_threads());
  const auto mode = quarot::cli::progress_mode(args.progress, args.quiet);
  quarot::Progress bar("items", mode);  // draws only in bar mode; plain prints its own lines
  const auto r = quarot::score_task(model, *tok, task, args.limit, [&](int i, int n, const quarot::TaskResult& s) {
    char what[64];
    std::snprintf(what, sizeof what, "acc %.4f acc_norm %.4f", s.acc, s.acc_norm);
    if (mode == quarot::ProgressMode::Bar) bar.update(uint64_t(i), uint64_t(n), what);
    else if (mode != quarot::ProgressMode::None && (i % 50 == 0 || i == n)) std::fprintf(stderr, "[%d/%d] %s\n", i, n, what);
  });
  if (mode == quarot::ProgressMode::Bar) bar.finish(std::to_string(r.items) + " items");
  std::printf("model:      %s\n", args.model.c_str());
  std::printf("task:       %s (%s), %d items%s\n", r.task.c_str(), args.task_file.c_str(), r.items,
              r.truncated_items ? (", " + std::to_string(r.truncated_items) + " truncated on the left").c_str() : "");
  std::printf("acc:        %.4f ± %.4f\n", r.acc, r.acc_stderr);
  std::printf("acc_norm:   %.4f ± %.4f\n", r.acc_norm, r.acc_norm_stderr);
  std::printf("time:       %.2fs (%.4f s/item)\n", r.seconds, r.seconds_per_item);
  if (!args.json.empty()) {
    nlohmann::json items = nlohmann::json::array();
    for (const auto& s : r.scores)
      items.push_back({{"loglik", s.loglik}, {"ending_tokens", s.ending_tokens}, {"gold", s.gold}, {"pred", s.pred},
                       {"pred_norm", s.pred_norm}});
    nlohmann::json j = {
        {"schema", "quarot-eval/1"},
        {"model", args.model},
        {"model_kind", loaded.describe()},
        {"task", {{"name", r.task}, {"file", args.task_file}, {"tokenizer", args.tokenizer},
                  {"tokenizer_policy", tok->special_policy()}, {"items", r.items}, {"limit", args.limit},
                  {"acc", r.acc}, {"acc_stderr", r.acc_stderr}, {"acc_norm", r.acc_norm},
                  {"acc_norm_stderr", r.acc_norm_stderr}, {"truncated_items", r.truncated_items},
                  {"seconds", r.seconds}, {"seconds_per_item", r.seconds_per_item}, {"per_item", items}}},
        {"threads", omp_get_max_threads()},
        {"peak_rss_bytes", quarot::peak_rss_bytes()},
    };
    quarot::write_file_atomic(args.json, j.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  struct Args {
    std::string model, text, tokenizer, ids, ids_lines = "stream", split_docs, protocol = "paper", kld_base, json,
        progress = "auto";
    int ctx = 0, chunks = 0, threads = 0;
    std::string qdec_k;
    bool simulate = false, quiet = false;
    bool no_verify = false;
    std::string task, task_file, task_labels;  // zero-shot multiple choice (instead of perplexity)
    int limit = 0;
  } args;
  CLI::App app{
      "Perplexity of a checkpoint on a text (with its tokenizer) or a pre-tokenized ids file.\n"
      "Protocols: 'paper' (QuaRot/GPTQ: one BOS in front, non-overlapping windows of --ctx, tail\n"
      "dropped, every target scored, PPL = exp(mean of window mean NLL)); 'llama.cpp' (windows of\n"
      "--ctx, first token set to BOS, second half scored, PPL ± standard error).\n"
      "With --kld-base, also KL(base || model): mean, 99th percentile, top-1 agreement.\n"
      "With --task hellaswag|piqa --task-file F: zero-shot multiple-choice accuracy instead\n"
      "(lm-evaluation-harness acc and acc_norm ± standard error; see include/quarot/tasks.hpp).\n"
      "Models: llama2.c .bin, Hugging Face folders (rotated ones run their online transforms), and\n"
      "packed INT4 files from quarot-quantize -o (integer kernels; --simulate runs the fake-quant\n"
      "simulation of the same weights instead).\n"
      "TinyStories (see ../shared/data/MANIFEST.md):\n"
      "  quarot-eval stories260K.bin --ids validation_100.tok512.ids --ctx 512\n"
      "  quarot-eval stories.q4.safetensors --ids validation_100.tok512.ids --ctx 512 --kld-base stories260K.bin",
      "quarot-eval"};
  app.add_option("model", args.model, "checkpoint: llama2.c .bin, Hugging Face folder, or packed .q4.safetensors")->required();
  app.add_flag("--simulate", args.simulate, "packed model: run the fake-quant simulation instead of the integer path");
  app.add_flag("--no-verify", args.no_verify,
               "packed model: skip the CRC32 of every tensor at load (default: verified; the header CRC, every tensor's\n"
               "dtype, shape and bounds and the scales' finiteness are checked either way)");
  quarot::cli::add_qdec_k_override(app, args.qdec_k);
  auto* text = app.add_option("--text", args.text, "text file to evaluate (needs --tokenizer)");
  app.add_option("--tokenizer", args.tokenizer,
                 "tokenizer.json (or a folder with one, or vocab.json + merges.txt), SentencePiece .model or\n"
                 "llama2.c tokenizer .bin (default: the tokenizer in the model's folder, if any)");
  auto* ids = app.add_option("--ids", args.ids, "pre-tokenized ids: whitespace-separated, one sequence per line");
  app.add_option("--ids-lines", args.ids_lines,
                 "stream: lines concatenated into one token stream (the TinyStories protocol); "
                 "windows: each line is its own window")
      ->check(CLI::IsMember({"stream", "windows"}))
      ->capture_default_str();
  app.add_option("--split-docs", args.split_docs,
                 "with --text: split at this separator (e.g. '<|endoftext|>'), strip each document and "
                 "give each its own BOS");
  app.add_option("--protocol", args.protocol, "paper or llama.cpp")
      ->check(CLI::IsMember({"paper", "llama.cpp"}))
      ->capture_default_str();
  app.add_option("--ctx", args.ctx, "window length (default: 2048 paper / 512 llama.cpp, capped at the model's max)")
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--chunks", args.chunks, "evaluate at most this many windows (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--kld-base", args.kld_base, "base checkpoint for KL divergence and top-1 agreement");
  app.add_option("--json", args.json, "write every figure to this JSON file");
  quarot::cli::add_threads(app, args.threads);
  quarot::cli::add_progress(app, args.progress, "progress per window (plain: a line each)");
  quarot::cli::add_quiet(app, args.quiet);
  text->excludes(ids);
  auto* task = app.add_option("--task", args.task,
                              "zero-shot multiple choice instead of perplexity (lm-eval acc / acc_norm): hellaswag\n"
                              "(llama.cpp's text layout, decompressed) or piqa (valid.jsonl; labels beside it)")
                   ->check(CLI::IsMember({"hellaswag", "piqa"}));
  app.add_option("--task-file", args.task_file, "the task's data file (with --task)")->needs(task);
  app.add_option("--task-labels", args.task_labels, "piqa labels (default: X.jsonl -> X-labels.lst)")->needs(task);
  app.add_option("--limit,--task-limit", args.limit, "score only the first N items (0: all)")->check(CLI::NonNegativeNumber)->needs(task);
  task->excludes(text)->excludes(ids);
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;
  std::optional<quarot::QdecK> qdec_k;
  if (!args.qdec_k.empty()) qdec_k = quarot::parse_qdec_k(args.qdec_k);  // checked while parsing
  if (!args.task.empty()) {
    if (args.task_file.empty()) {
      std::fprintf(stderr, "quarot-eval: error: --task needs --task-file (see --help)\n");
      return quarot::cli::kExitUsage;
    }
    if (args.tokenizer.empty() && !(args.tokenizer = quarot::find_model_tokenizer(args.model)).empty())
      if (!args.quiet) std::fprintf(stderr, "quarot-eval: tokenizer %s (from the model's folder)\n", args.tokenizer.c_str());
    if (args.tokenizer.empty()) {
      std::fprintf(stderr, "quarot-eval: error: --task needs --tokenizer (see --help)\n");
      return quarot::cli::kExitUsage;
    }
    return quarot::cli::run("quarot-eval", [&] { return run_task(args); });
  }
  if (args.text.empty() == args.ids.empty()) {
    std::fprintf(stderr, "quarot-eval: error: give exactly one of --text or --ids (see --help)\n");
    return quarot::cli::kExitUsage;
  }
  if (!args.text.empty() && args.tokenizer.empty() && !(args.tokenizer = quarot::find_model_tokenizer(args.model)).empty())
    if (!args.quiet) std::fprintf(stderr, "quarot-eval: tokenizer %s (from the model's folder)\n", args.tokenizer.c_str());
  if (!args.text.empty() && args.tokenizer.empty()) {
    std::fprintf(stderr, "quarot-eval: error: --text needs --tokenizer (see --help)\n");
    return quarot::cli::kExitUsage;
  }

  return quarot::cli::run("quarot-eval", [&] {
    if (args.threads > 0) omp_set_num_threads(args.threads);
    const quarot::Protocol protocol = quarot::parse_protocol(args.protocol);
    if (!args.json.empty()) quarot::refuse_unsafe_output(args.json, {args.model, args.text, args.tokenizer, args.ids, args.kld_base});
    const quarot::LoadedModel loaded(args.model, args.simulate, !args.no_verify, qdec_k);
    const auto& cfg = loaded.config();
    int ctx = args.ctx ? args.ctx : (protocol == quarot::Protocol::Paper ? 2048 : 512);
    if (ctx > cfg.max_positions) {
      if (args.ctx) std::fprintf(stderr, "quarot-eval: --ctx %d exceeds the model's %d positions; using %d\n", ctx, cfg.max_positions, cfg.max_positions);
      ctx = cfg.max_positions;
    }

    // Token source.
    std::vector<quarot::Window> windows;
    std::string source, source_sha, bos_policy;  // bos_policy: what a tokenized text gets, in words
    long long source_tokens = 0;
    const int bos = cfg.bos_id >= 0 ? cfg.bos_id : 1;
    if (!args.ids.empty()) {
      source = args.ids;
      source_sha = quarot::sha256_file(args.ids);
      const auto seqs = quarot::read_ids_file(args.ids, cfg.vocab);
      for (const auto& s : seqs) source_tokens += (long long)s.size();
      if (args.ids_lines == "windows") {
        windows = quarot::windows_per_sequence(seqs, protocol, ctx, bos, args.chunks);
      } else {
        std::vector<int> stream;
        for (const auto& s : seqs) stream.insert(stream.end(), s.begin(), s.end());
        windows = quarot::make_windows(stream, protocol, ctx, bos, args.chunks);
      }
    } else {
      source = args.text;
      source_sha = quarot::sha256_file(args.text);
      const auto tok = quarot::load_tokenizer(args.tokenizer);
      quarot::check_tokenizer_fits_model(*tok, cfg.vocab, args.tokenizer);
      std::size_t crlf = 0;
      const std::string text_all = quarot::read_text_lf(args.text, &crlf);
      if (crlf) std::fprintf(stderr, "quarot-eval: %s: %zu CRLF line endings read as LF\n", args.text.c_str(), crlf);
      std::vector<int> stream;
      auto add_doc = [&](std::string doc) {
        const auto b = doc.find_first_not_of(" \t\r\n");
        const auto e = doc.find_last_not_of(" \t\r\n");
        doc = b == std::string::npos ? "" : doc.substr(b, e - b + 1);
        if (doc.empty()) return;
        stream.push_back(bos);
        const auto t = tok->encode(doc);
        stream.insert(stream.end(), t.begin(), t.end());
      };
      if (args.split_docs.empty()) {
        stream.push_back(bos);  // the paper protocol: the whole text, one BOS in front
        const auto t = tok->encode(text_all);
        stream.insert(stream.end(), t.begin(), t.end());
      } else {
        for (std::size_t at = 0;;) {
          const auto next = text_all.find(args.split_docs, at);
          add_doc(text_all.substr(at, next == std::string::npos ? std::string::npos : next - at));
          if (next == std::string::npos) break;
          at = next + args.split_docs.size();
        }
      }
      source_tokens = (long long)stream.size();
      windows = quarot::make_windows(stream, protocol, ctx, bos, args.chunks);
      // The protocol decides the BOS, not the tokenizer's post-processor: stated so that a
      // tokenizer whose convention differs (Qwen adds none) is not a surprise.
      bos_policy = "BOS " + std::to_string(bos) + " (the model's) " +
                   (args.split_docs.empty() ? "once in front of the whole text" : "in front of each document") +
                   (protocol == quarot::Protocol::LlamaCpp ? ", and as every window's first token (llama.cpp protocol)"
                                                           : ", none per window (paper protocol)") +
                   "; the tokenizer's own convention would add " + tok->special_policy();
      std::fprintf(stderr, "quarot-eval: tokenizer %s (%s): %s\n", args.tokenizer.c_str(), tok->kind().c_str(), bos_policy.c_str());
    }
    if (windows.empty())
      throw quarot::Error(source, std::to_string(source_tokens) + " tokens: shorter than one window of " + std::to_string(ctx));

    int max_len = 0;
    for (const auto& w : windows) max_len = std::max(max_len, int(w.tokens.size()));
    auto model = loaded.transformer(max_len);
    if (!args.quiet) std::fprintf(stderr, "quarot-eval: %s: %s\n", args.model.c_str(), loaded.describe().c_str());
    if (!args.quiet && !loaded.online().empty()) std::fprintf(stderr, "quarot-eval: online transforms:\n%s", loaded.online().describe().c_str());
    std::unique_ptr<quarot::LoadedModel> base_loaded;
    std::unique_ptr<quarot::Transformer<float>> base;
    if (!args.kld_base.empty()) {
      base_loaded = std::make_unique<quarot::LoadedModel>(args.kld_base);
      base = std::make_unique<quarot::Transformer<float>>(base_loaded->transformer(max_len));
    }
    const auto mode = quarot::cli::progress_mode(args.progress, args.quiet);
    if (!args.quiet) std::fprintf(stderr, "quarot-eval: %s, protocol %s, %zu windows of %d tokens, %d threads\n", args.model.c_str(),
                 args.protocol.c_str(), windows.size(), ctx, omp_get_max_threads());
    quarot::Progress bar("eval", mode);  // draws only in bar mode; plain prints a line per window
    const auto r = quarot::evaluate(model, windows, protocol, base.get(), [&](int i, int n, const quarot::EvalResult& s) {
      char what[48];
      std::snprintf(what, sizeof what, "ppl so far %.4f", s.ppl);
      if (mode == quarot::ProgressMode::Bar) bar.update(uint64_t(i), uint64_t(n), what);
      else if (mode != quarot::ProgressMode::None) std::fprintf(stderr, "[%d/%d] %s\n", i, n, what);
    });
    if (mode == quarot::ProgressMode::Bar) bar.finish(std::to_string(r.windows) + " windows");

    std::printf("model:      %s\n", args.model.c_str());
    std::printf("tokens:     %s (%lld tokens, sha256 %s)\n", source.c_str(), source_tokens, source_sha.c_str());
    std::printf("protocol:   %s, ctx %d, %d windows, %lld targets scored\n", args.protocol.c_str(), ctx, r.windows, r.tokens_scored);
    if (protocol == quarot::Protocol::LlamaCpp) std::printf("perplexity: %.4f ± %.4f\n", r.ppl, r.ppl_stderr);
    else std::printf("perplexity: %.4f\n", r.ppl);
    if (r.has_kld)
      std::printf("KLD vs %s: mean %.6f, p99 %.6f, max %.6f; top-1 agreement %.2f%%\n", args.kld_base.c_str(), r.kld_mean,
                  r.kld_p99, r.kld_max, 100 * r.top1_agreement);
    std::printf("time:       %.2fs (%.0f tokens/s); peak RSS %.1f MiB\n", r.seconds, double(r.windows) * ctx / r.seconds,
                double(quarot::peak_rss_bytes()) / (1 << 20));

    if (!args.json.empty()) {
      nlohmann::json j = {
          {"schema", "quarot-eval/1"},
          {"model", args.model},
          {"model_kind", loaded.describe()},
          {"protocol", quarot::protocol_name(protocol)},
          {"ctx", ctx},
          {"token_source", {{"path", source}, {"sha256", source_sha}, {"tokens", source_tokens},
                            {"kind", args.ids.empty() ? "text" : "ids"}, {"tokenizer", args.tokenizer},
                            {"ids_lines", args.ids.empty() ? "" : args.ids_lines}, {"split_docs", args.split_docs},
                            {"bos_policy", bos_policy}}},
          {"windows", r.windows},
          {"tokens_scored", r.tokens_scored},
          {"mean_nll", r.mean_nll},
          {"perplexity", r.ppl},
          {"perplexity_stderr", r.ppl_stderr},
          {"window_nll", r.window_nll},
          {"seconds", r.seconds},
          {"threads", omp_get_max_threads()},
          {"peak_rss_bytes", quarot::peak_rss_bytes()},
      };
      if (r.has_kld)
        j["kld"] = {{"base", args.kld_base}, {"mean", r.kld_mean}, {"p99", r.kld_p99}, {"max", r.kld_max},
                    {"top1_agreement", r.top1_agreement}};
      quarot::write_file_atomic(args.json, j.dump(2) + "\n");
    }
    return 0;
  });
}
