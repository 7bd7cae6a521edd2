// quarot vs the real llama.cpp on the same GGUF files and the same windows (bench/RESULTS.md,
// "llama.cpp as reference client"): a TinyStories model written as an F32 GGUF (the test-local
// writer of tests/gguf_test_writer.hpp), perplexity on every window of quarot-eval's paper
// protocol in both, the largest relative logit difference, load times; then llama_model_quantize
// at several types, each evaluated by llama.cpp and, after quarot's GGUF reader dequantizes it,
// by quarot's fp32 forward pass.
// --table --data DIR: the comparison of issue 18 in one command (bench/RESULTS.md, "quarot's GGUF
// exports vs llama-quantize"): quarot's exports vs llama-quantize ± imatrix on stories260K,
// salty260K and a 2-layer LLaMA-2-7B-shaped synthetic model, all run by llama.cpp, then
// prefill/decode tokens/s on the 7B shape (with --packed: quarot's runtime beside llama.cpp).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <omp.h>
#include <unistd.h>

#include "gguf_test_writer.hpp"
#include "llama_cpp_client.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/eval.hpp"
#include "quarot/forward.hpp"
#include "quarot/gguf.hpp"
#include "quarot/gguf_reader.hpp"
#include "quarot/mapped_file.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/runtime.hpp"
#include "quarot/synth.hpp"
#include "quarot/tokenizer.hpp"

namespace lc = quarot::llama_cpp;

namespace {

// --table: quarot's GGUF exports against llama-quantize (with and without an importance matrix
// from the same calibration windows GPTQ sees), every file evaluated by llama.cpp on the same
// windows; perplexity and KLD / top-1 agreement against llama.cpp's own run of the F32 GGUF.
struct TableSource {
  std::string name;
  quarot::ModelWeights base;
  std::unique_ptr<quarot::Tokenizer> tok;
  std::vector<quarot::Window> windows;
  std::vector<std::vector<int>> calib;
  int ctx = 0;
  bool ppl_meaningful = true;  // false for random-token windows (synthetic weights)
  std::vector<std::string> packed;  // quarot packed files of the same model: speed rows
};

struct SpeedOptions {
  int prompt = 128, decode = 32, rounds = 3;
};

struct Scores {
  double ppl = 0, kld = 0, top1 = 0, seconds = 0;
};

// log-softmax of one logits row.
void log_softmax(const float* x, int n, std::vector<double>& out) {
  const double mx = *std::max_element(x, x + n);
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(double(x[i]) - mx);
  const double lse = mx + std::log(s);
  out.resize(std::size_t(n));
  for (int i = 0; i < n; ++i) out[std::size_t(i)] = double(x[i]) - lse;
}

// Paper-protocol perplexity (mean of the windows' mean NLL, as quarot::evaluate), and with `base`
// (log-probabilities of the reference at every scored position) mean KLD(base || this) and top-1
// agreement. Fills `keep` with this model's log-probabilities when asked.
Scores score(lc::Model& lm, const std::vector<quarot::Window>& windows, const std::vector<std::vector<float>>* base,
             std::vector<std::vector<float>>* keep) {
  Scores r;
  const auto t0 = std::chrono::steady_clock::now();
  const int v = lm.vocab();
  double sum_means = 0, kld = 0;
  long long n_all = 0, agree = 0;
  std::vector<double> lp;
  for (std::size_t w = 0; w < windows.size(); ++w) {
    const auto& win = windows[w];
    const auto lg = lm.logits(win.tokens);
    double nll = 0;
    int n = 0;
    std::vector<float> kept;
    for (int j = win.first_scored; j + 1 < int(win.tokens.size()); ++j, ++n) {
      log_softmax(lg.data() + std::size_t(j) * std::size_t(v), v, lp);
      nll -= lp[std::size_t(win.tokens[std::size_t(j) + 1])];
      if (keep) kept.insert(kept.end(), lp.begin(), lp.end());
      if (base) {
        const float* b = (*base)[w].data() + std::size_t(n) * std::size_t(v);
        double k = 0;
        int ab = 0, aq = 0;
        for (int i = 0; i < v; ++i) {
          k += std::exp(double(b[i])) * (double(b[i]) - lp[std::size_t(i)]);
          if (b[i] > b[ab]) ab = i;
          if (lp[std::size_t(i)] > lp[std::size_t(aq)]) aq = i;
        }
        kld += k;
        agree += ab == aq;
      }
    }
    ++n_all;
    sum_means += nll / std::max(n, 1);
    if (keep) keep->push_back(std::move(kept));
  }
  long long positions = 0;
  for (const auto& win : windows) positions += std::max<long long>(0, (long long)win.tokens.size() - 1 - win.first_scored);
  r.ppl = std::exp(sum_means / double(n_all));
  if (base) r.kld = kld / double(positions), r.top1 = double(agree) / double(positions);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// llama.cpp rounds a context up to a multiple of 256 (the client checks what it got).
int llama_ctx(int ctx) { return (ctx + 255) / 256 * 256; }

// Prefill and decode tokens/s, one thread: llama.cpp on quarot's Q4_0 and Q4_K_M exports of the
// model, quarot's integer runtime on the packed files; rounds interleaved, min and median.
void speed_table(const lc::Library& lib, TableSource& src, const SpeedOptions& so, int threads, const std::string& dir) {
  struct Engine {
    std::string name;
    std::unique_ptr<lc::Model> lm;
    std::unique_ptr<quarot::LoadedModel> qm;
    std::unique_ptr<quarot::Transformer<float>> qt;
    std::vector<double> prefill, decode;
  };
  std::vector<Engine> engines;
  for (const char* preset : {"gguf-q4_0", "gguf-q4_k_m"}) {
    auto o = quarot::plan_preset(preset).gguf.value();
    o.method = quarot::WeightMethod::Rtn;  // the same bytes per block as GPTQ's: the speed is the type's
    o.clip_search = false;                 // nor does the clip change the speed (on a 7B shape it costs minutes)
    quarot::ModelWeights m = src.base;
    const std::string out = dir + "/" + src.name + "-speed-" + preset + ".gguf";
    quarot::export_gguf(m, src.tok.get(), o, {}, out);
    Engine e;
    e.name = std::string("llama.cpp, quarot's ") + preset + " export (" + std::to_string(std::filesystem::file_size(out) >> 20) + " MiB)";
    e.lm = lib.load(out, llama_ctx(so.prompt + so.decode), threads);
    std::filesystem::remove(out);  // mapped or read by llama.cpp already
    engines.push_back(std::move(e));
  }
  for (const auto& path : src.packed) {
    Engine e;
    e.qm = std::make_unique<quarot::LoadedModel>(path, false, false);
    e.qt = std::make_unique<quarot::Transformer<float>>(e.qm->transformer(so.prompt + so.decode));
    e.name = "quarot-run runtime, " + std::filesystem::path(path).filename().string() + " (" + e.qm->describe() + ")";
    engines.push_back(std::move(e));
  }
  std::vector<int> prompt;
  uint64_t x = 0x243f6a8885a308d3ull;
  prompt.push_back(src.base.config.bos_id);
  while (int(prompt.size()) < so.prompt) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    prompt.push_back(int(3 + x % uint64_t(src.base.config.vocab - 3)));
  }
  for (int r = 0; r < so.rounds; ++r)
    for (auto& e : engines) {
      if (e.lm) {
        const auto [p, d] = e.lm->time_generation(prompt, so.decode);
        e.prefill.push_back(so.prompt / p), e.decode.push_back(so.decode / d);
        continue;
      }
      std::vector<float> logits;
      e.qt->reset();
      const auto t0 = std::chrono::steady_clock::now();
      e.qt->forward_last(prompt, logits);
      const auto t1 = std::chrono::steady_clock::now();
      for (int i = 0; i < so.decode; ++i) {
        const int next = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
        e.qt->forward_last(std::span<const int>(&next, 1), logits);
      }
      const auto t2 = std::chrono::steady_clock::now();
      e.prefill.push_back(so.prompt / std::chrono::duration<double>(t1 - t0).count());
      e.decode.push_back(so.decode / std::chrono::duration<double>(t2 - t1).count());
    }
  std::printf("\n%s, %d threads, prompt %d tokens then %d decoded, %d interleaved rounds (tokens/s: max / median; higher is better)\n\n",
              src.name.c_str(), threads, so.prompt, so.decode, so.rounds);
  std::printf("| engine and file | prefill tokens/s | decode tokens/s |\n|---|---|---|\n");
  for (auto& e : engines) {
    std::sort(e.prefill.begin(), e.prefill.end());
    std::sort(e.decode.begin(), e.decode.end());
    std::printf("| %s | %.1f / %.1f | %.2f / %.2f |\n", e.name.c_str(), e.prefill.back(), e.prefill[e.prefill.size() / 2], e.decode.back(),
                e.decode[e.decode.size() / 2]);
  }
  std::fflush(stdout);
}

// One of quarot's rows per type: the weight method, and whether the export rotates (norm fusion,
// R1, R2 within heads) or quantizes the source's own weights (a tied source stays tied).
struct TableMethod {
  quarot::WeightMethod method;
  bool rotate;
};

void run_table(const lc::Library& lib, std::vector<TableSource>& sources, const std::vector<std::string>& types,
               const std::vector<TableMethod>& methods, int threads, const std::string& dir) {
  struct TypeRow {
    const char* preset;
    int ftype;
  };
  const std::map<std::string, TypeRow> known = {{"Q8_0", {"gguf-q8_0", 7}}, {"Q4_0", {"gguf-q4_0", 2}}, {"IQ4_NL", {"gguf-iq4_nl", 25}},
                                                {"Q4_K_M", {"gguf-q4_k_m", 15}}, {"Q4_1", {"gguf-q4_1", 3}}};
  std::printf("| model | type | file | bytes | ppl (llama.cpp) | KLD vs F32 | top-1 | quarot ppl, same weights | llama.cpp / quarot |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (auto& src : sources) {
    const quarot::ModelConfig& c = src.base.config;
    // llama-quantize's input: the float model with its FFN zero-padded to a multiple of 32
    // (exact), so that every linear can take the asked block type, as ours do.
    quarot::ModelWeights padded = src.base;
    quarot::pad_intermediate(padded, 32);
    const std::string f32 = dir + "/" + src.name + "-f32.gguf";
    {
      auto o = quarot::plan_preset("gguf-f32").gguf.value();
      quarot::ModelWeights m = padded;
      quarot::export_gguf(m, src.tok.get(), o, {}, f32);
    }
    std::vector<std::vector<float>> base_lp;
    Scores f32s;
    {
      auto lm = lib.load(f32, llama_ctx(src.ctx), threads);
      f32s = score(*lm, src.windows, nullptr, &base_lp);
    }
    auto ppl_text = [&](double p) {
      char b[32];
      std::snprintf(b, sizeof b, "%.4f", p);
      return src.ppl_meaningful ? std::string(b) : std::string("(") + b + ")";
    };
    auto quarot_ppl = [&](const quarot::ModelWeights& m) {
      quarot::Transformer<float> q(m, src.ctx);
      return quarot::evaluate(q, src.windows, quarot::Protocol::Paper).ppl;
    };
    const double f32q = quarot_ppl(padded);
    std::printf("| %s | F32 | F32 GGUF | %zu | %s | 0 | 1 | %s | %+.4f%% |\n", src.name.c_str(), std::size_t(std::filesystem::file_size(f32)),
                ppl_text(f32s.ppl).c_str(), ppl_text(f32q).c_str(), 100 * (f32s.ppl / f32q - 1));
    std::fflush(stdout);
    std::fprintf(stderr, "%s: %zu windows of %d, %zu calibration windows\n", src.name.c_str(), src.windows.size(), src.ctx, src.calib.size());
    const auto imatrix = lc::importance_matrix(padded, src.calib, src.ctx);
    (void)c;
    for (const auto& t : types) {
      const auto it = known.find(t);
      if (it == known.end()) throw quarot::Error("--types", "unknown type " + t);
      auto row = [&](const std::string& what, const std::string& path, const quarot::ModelWeights* ours) {
        auto lm = lib.load(path, llama_ctx(src.ctx), threads);
        const Scores s = score(*lm, src.windows, &base_lp, nullptr);
        std::string qp = "-", ratio = "-";
        if (ours) {
          const double p = quarot_ppl(*ours);
          qp = ppl_text(p);
          char b[32];
          std::snprintf(b, sizeof b, "%+.3f%%", 100 * (s.ppl / p - 1));
          ratio = b;
        }
        std::printf("| %s | %s | %s | %zu | %s | %.5f | %.4f | %s | %s |\n", src.name.c_str(), t.c_str(), what.c_str(),
                    std::size_t(std::filesystem::file_size(path)), ppl_text(s.ppl).c_str(), s.kld, s.top1, qp.c_str(), ratio.c_str());
        std::fflush(stdout);
        std::filesystem::remove(path);
      };
      for (int with_imatrix : {0, 1}) {
        const std::string out = dir + "/" + src.name + "-lq-" + t + (with_imatrix ? "-imatrix" : "") + ".gguf";
        lib.quantize(f32, out, it->second.ftype, threads, with_imatrix ? &imatrix : nullptr);
        row(with_imatrix ? "llama-quantize + imatrix" : "llama-quantize", out, nullptr);
      }
      const auto preset = quarot::plan_preset(it->second.preset).gguf.value();
      for (const auto& tm : methods) {
        auto o = preset;
        if (o.method == quarot::WeightMethod::None && &tm != &methods.front()) continue;  // Q8_0: reference RTN, one row
        if (o.method != quarot::WeightMethod::None) o.method = tm.method;
        o.rotate = tm.rotate;
        quarot::ModelWeights m = src.base;
        const std::string out = dir + "/" + src.name + "-quarot-" + t + ".gguf";
        const auto t0 = std::chrono::steady_clock::now();
        quarot::export_gguf(m, src.tok.get(), o, src.calib, out);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::fprintf(stderr, "%s %s export %.1f s\n", src.name.c_str(), t.c_str(), secs);
        const std::string how = o.rotate ? "rotated" : std::string("not rotated") + (c.tied_embeddings ? ", tied" : "");
        const std::string what = o.method == quarot::WeightMethod::Gptq ? "**quarot " + how + " GPTQ**"
                                 : o.method == quarot::WeightMethod::Rtn ? "quarot " + how + " RTN"
                                                                         : "quarot " + how + ", reference RTN";
        row(what, out, &m);
      }
      // A tied source gains an untied classifier under rotation (the final norm and R1 are fused
      // into it), so the rows above carry one matrix more than llama-quantize's. Same size: the
      // embedding at the linears' type (GgufExportOptions::embd_type, `--gguf-embd-type`), and
      // both the embedding and the classifier at it. Q4_K's 256-block does not divide a 64-wide
      // hidden: the fallback (Q5_0) is what the row's label names.
      const bool rotated_gptq_asked =
          std::any_of(methods.begin(), methods.end(), [](const TableMethod& tm) { return tm.rotate && tm.method == quarot::WeightMethod::Gptq; });
      if (c.tied_embeddings && preset.method != quarot::WeightMethod::None && rotated_gptq_asked) {
        for (const bool output_too : {false, true}) {
          auto o = preset;
          o.method = quarot::WeightMethod::Gptq;
          o.embd_type = o.type;
          if (output_too) o.output_type = o.type;
          quarot::ModelWeights m = src.base;
          const std::string out = dir + "/" + src.name + "-quarot-embd-" + t + ".gguf";
          const auto rep = quarot::export_gguf(m, src.tok.get(), o, src.calib, out);
          std::string embd = "?", cls = "?";
          for (const auto& tr : rep.tensors) {
            if (tr.name == "token_embd.weight") embd = std::string(quarot::gguf_type_name(tr.type));
            if (tr.name == "output.weight") cls = std::string(quarot::gguf_type_name(tr.type));
          }
          row(std::string("**quarot rotated GPTQ**, ") + (output_too ? "embedding and classifier" : "embedding") + " at the type (token_embd " +
                  embd + ", output " + cls + ")",
              out, &m);
        }
      }
    }
    std::filesystem::remove(f32);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"quarot vs llama.cpp on the same GGUF and windows"};
  std::string model, tokenizer, ids, lib_dir = lc::default_library_dir();
  std::string calib;
  int ctx = 512, windows_max = 0, calib_lines = 16;
  std::vector<std::string> types = {"Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q4_K_M"};  // --table: Q4_1 left out unless asked
  bool table = false, synth = true;
  std::string data_dir;
  int threads = 1, nsamples = 128, seqlen = 256, synth_windows = 4, synth_ctx = 128, synth_nsamples = 16;
  app.add_option("model", model, "llama2.c .bin (written as an F32 GGUF)");
  app.add_option("--tokenizer", tokenizer, "its tokenizer.bin");
  app.add_option("--ids", ids, "evaluation ids (one sequence per line)");
  app.add_flag("--table", table,
               "quarot's exports vs llama-quantize (± imatrix), all evaluated by llama.cpp: stories260K (ctx 512), salty260K "
               "(ctx 256), a 2-layer LLaMA-2-7B-shaped synthetic model (random-token windows); needs --data");
  app.add_option("--data", data_dir, "--table: the data folder (stories260K/, salty260K/, tinystories/)");
  app.add_option("--threads", threads, "--table: llama.cpp threads");
  app.add_option("--nsamples", nsamples, "--table: calibration windows (GPTQ and the imatrix)");
  app.add_option("--seqlen", seqlen, "--table: calibration window length");
  app.add_option("--synth-windows", synth_windows, "--table: random-token windows for the synthetic model");
  app.add_option("--synth-ctx", synth_ctx, "--table: their length");
  app.add_option("--synth-nsamples", synth_nsamples, "--table: calibration windows of the synthetic model");
  app.add_flag("!--no-synth", synth, "--table: leave out the synthetic 7B-shaped model");
  std::vector<std::string> packed;
  SpeedOptions speed;
  bool speed_only = false, no_small = false, no_speed = false;
  std::vector<std::string> method_names = {"rtn", "gptq"};
  app.add_option("--methods", method_names,
                 "--table: quarot's rows (rtn: rotated RTN with clip search, gptq: rotated GPTQ, gptq-unrotated: GPTQ on the source's own "
                 "weights, a tied source kept tied); on the 7B shape the clip search costs minutes")
      ->check(CLI::IsMember({"rtn", "gptq", "gptq-unrotated"}));
  app.add_flag("--no-speed", no_speed, "--table: leave out the synthetic model's speed rows");
  app.add_flag("--no-small", no_small, "--table: only the synthetic 7B-shaped model (table and speed rows)");
  app.add_option("--packed", packed,
                 "--table: quarot packed files of the same synthetic model (quarot-synth --preset llama2-7b-layer --layers 2 --vocab 512, "
                 "then quarot-quantize): prefill/decode tokens/s next to llama.cpp's");
  app.add_option("--speed-prompt", speed.prompt, "--table: prompt tokens of the speed rows");
  app.add_option("--speed-decode", speed.decode, "--table: decoded tokens of the speed rows");
  app.add_option("--speed-rounds", speed.rounds, "--table: interleaved rounds of the speed rows");
  app.add_flag("--speed-only", speed_only, "--table: only the synthetic model's speed rows");
  app.add_option("--ctx", ctx, "window");
  app.add_option("--windows", windows_max, "at most this many windows (0: all)");
  app.add_option("--types", types, "llama_model_quantize types");
  app.add_option("--lib", lib_dir, "folder of libllama*.so");
  app.add_option("--calib", calib, "calibration ids: each type also quantized with an importance matrix from them");
  app.add_option("--calib-lines", calib_lines, "calibration sequences used");
  CLI11_PARSE(app, argc, argv);
  try {
    std::string why;
    auto lib = lc::Library::open(lib_dir, &why);
    if (!lib) {
      std::fprintf(stderr, "bench_llama_cpp: %s\n", why.c_str());
      return 1;
    }
    std::printf("ggml %s\n", lib->ggml_version().c_str());
    if (table) {
      if (data_dir.empty()) throw quarot::Error("--table", "needs --data DIR");
      omp_set_num_threads(threads);  // quarot's side of the speed rows on the same thread count
      if (app.count("--types") == 0) types = {"Q8_0", "Q4_0", "IQ4_NL", "Q4_K_M"};
      const std::string dir = (std::filesystem::temp_directory_path() / ("quarot-bench-llama-cpp-" + std::to_string(getpid()))).string();
      std::filesystem::create_directories(dir);
      std::vector<TableSource> sources;
      const std::string tok_path = data_dir + "/stories260K/tok512.bin", calib_path = data_dir + "/stories260K/calib-t1-seed42.ids";
      for (const auto& [name, c] : {std::pair<std::string, int>{"stories260K", 512}, {"salty260K", 256}}) {
        if (speed_only || no_small) break;
        TableSource s;
        s.name = name;
        s.base = quarot::load_model(data_dir + "/" + name + "/" + name + ".bin");
        s.tok = quarot::load_tokenizer(tok_path);
        s.ctx = c;
        std::vector<int> stream;
        for (const auto& q : quarot::read_ids_file(data_dir + "/tinystories/validation_100.tok512.ids", s.base.config.vocab))
          stream.insert(stream.end(), q.begin(), q.end());
        s.windows = quarot::make_windows(stream, quarot::Protocol::Paper, c, s.base.config.bos_id, windows_max);
        s.calib = quarot::calibration_windows(quarot::read_ids_file(calib_path, s.base.config.vocab), nsamples, std::min(seqlen, c), 0, calib_path);
        sources.push_back(std::move(s));
      }
      if (synth) {
        // LLaMA-2-7B's layer shape (hidden 4096, 32 heads, FFN 11008), 2 layers, with the
        // 512-token vocabulary of tok512 (llama.cpp needs a tokenizer; the layers are the point).
        quarot::SynthSpec spec = quarot::synth_preset("llama2-7b-layer");
        spec.config.n_layers = 2;
        spec.config.vocab = 512;
        TableSource s;
        s.name = "synth-7B-shape-2L";
        s.base = quarot::make_synthetic(spec);
        s.tok = quarot::load_tokenizer(tok_path);
        s.ctx = synth_ctx;
        s.ppl_meaningful = false;
        uint64_t x = 0x9e3779b97f4a7c15ull;
        auto next = [&] {
          x ^= x << 13, x ^= x >> 7, x ^= x << 17;
          return int(3 + x % uint64_t(spec.config.vocab - 3));
        };
        for (int w = 0; w < synth_windows; ++w) {
          quarot::Window win;
          win.tokens.push_back(spec.config.bos_id);
          while (int(win.tokens.size()) < synth_ctx) win.tokens.push_back(next());
          s.windows.push_back(std::move(win));
        }
        for (int w = 0; w < synth_nsamples; ++w) {
          std::vector<int> seq;
          while (int(seq.size()) < synth_ctx) seq.push_back(next());
          s.calib.push_back(std::move(seq));
        }
        s.packed = packed;
        sources.push_back(std::move(s));
      }
      std::vector<TableMethod> methods;
      for (const auto& n : method_names) methods.push_back({n == "rtn" ? quarot::WeightMethod::Rtn : quarot::WeightMethod::Gptq, n != "gptq-unrotated"});
      if (!speed_only) run_table(*lib, sources, types, methods, threads, dir);
      if (synth && !no_speed) speed_table(*lib, sources.back(), speed, threads, dir);
      std::filesystem::remove_all(dir);
      return 0;
    }
    if (model.empty() || tokenizer.empty() || ids.empty()) throw quarot::Error("usage", "MODEL, --tokenizer and --ids are needed (or --table)");
    const auto m = quarot::load_llama2c(model);
    const auto tok = quarot::load_llama2c_tokenizer(tokenizer);
    const std::string dir = (std::filesystem::temp_directory_path() / ("quarot-bench-llama-cpp-" + std::to_string(getpid()))).string();
    std::filesystem::create_directories(dir);
    const std::string f32 = dir + "/model-f32.gguf";
    quarot::test::write_file(f32, quarot::test::gguf_of(m, quarot::test::GgmlType::F32, &tok));
    std::vector<int> stream;
    for (const auto& s : quarot::read_ids_file(ids, m.config.vocab)) stream.insert(stream.end(), s.begin(), s.end());
    const auto windows = quarot::make_windows(stream, quarot::Protocol::Paper, ctx, m.config.bos_id, windows_max);
    std::printf("%zu windows of %d (paper protocol)\n", windows.size(), ctx);

    auto run = [&](const std::string& name, const std::string& path, bool quarot_reads) {
      auto t0 = std::chrono::steady_clock::now();
      auto lm = lib->load(path, ctx);
      const auto rl = lm->evaluate(windows, quarot::Protocol::Paper);
      std::printf("| %s | %.0f KiB | %.6f | %.3f s load, %.2f s eval |", name.c_str(),
                  double(std::filesystem::file_size(path)) / 1024, rl.ppl, lm->load_seconds(), rl.seconds);
      (void)t0;
      if (!quarot_reads) {
        std::printf(" – | – | – |\n");
        return;
      }
      t0 = std::chrono::steady_clock::now();
      const auto qm = quarot::load_model(path);
      const double qload = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      quarot::Transformer<float> q(qm, ctx);
      const auto rq = quarot::evaluate(q, windows, quarot::Protocol::Paper);
      std::vector<float> ql;
      q.reset();
      q.forward(windows[0].tokens, ql);
      const auto ll = lm->logits(windows[0].tokens);
      double diff = 0, scale = 0;
      for (std::size_t i = 0; i < ll.size(); ++i) {
        diff = std::max(diff, std::fabs(double(ll[i]) - ql[i]));
        scale = std::max(scale, std::fabs(double(ql[i])));
      }
      std::printf(" %.6f | %+.3f%% | %.2e | %.3f s load, %.2f s eval |\n", rq.ppl, 100 * (rl.ppl / rq.ppl - 1), diff / scale, qload, rq.seconds);
    };
    std::printf("| file | size | ppl llama.cpp | llama.cpp time | ppl quarot | llama.cpp / quarot | max rel. logit diff (window 0) | quarot time |\n|---|---|---|---|---|---|---|---|\n");
    run("F32 (test writer)", f32, true);
    const std::map<std::string, int> ftypes = {{"Q8_0", 7}, {"Q4_0", 2}, {"Q4_1", 3}, {"IQ4_NL", 25}, {"Q4_K_M", 15}, {"F16", 1}};
    std::map<std::string, std::vector<float>> imatrix;
    if (!calib.empty()) {
      auto seqs = quarot::read_ids_file(calib, m.config.vocab);
      if (int(seqs.size()) > calib_lines) seqs.resize(std::size_t(calib_lines));
      imatrix = lc::importance_matrix(m, seqs, ctx);
    }
    for (int with_imatrix = 0; with_imatrix < (calib.empty() ? 1 : 2); ++with_imatrix)
    for (const auto& t : types) {
      auto it = ftypes.find(t);
      if (it == ftypes.end()) throw quarot::Error("--types", "unknown type " + t);
      const std::string out = dir + "/model-" + t + (with_imatrix ? "-imatrix" : "") + ".gguf";
      lib->quantize(f32, out, it->second, 1, with_imatrix ? &imatrix : nullptr);
      bool readable = true;
      {
        quarot::MappedFile f(out);
        const auto g = quarot::parse_gguf(f.bytes(), out);
        for (const auto& ti : g.tensors) {
          const auto n = quarot::ggml_type_name(ti.ggml_type);
          if (n != "F32" && n != "F16" && n != "BF16" && n != "Q8_0" && n != "Q4_0" && n != "Q4_1" && n != "Q5_0" && n != "Q5_1" && n != "IQ4_NL" && n != "Q4_K" && n != "Q6_K") readable = false;
        }
      }
      run("llama_model_quantize " + t + (with_imatrix ? " + imatrix" : ""), out, readable);
    }
    std::filesystem::remove_all(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_llama_cpp: %s\n", e.what());
    return 1;
  }
  return 0;
}
