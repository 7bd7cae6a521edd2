// quarot-quantize: the pipeline in one command. load -> fuse norms -> rotate (QuaRot) ->
// calibrate -> quantize (RTN or GPTQ; activations and KV cache) -> pack (INT4 file) -> evaluate
// (float, simulated, packed integer model) -> report (JSON, Markdown, SVG plots).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "config_file.hpp"
#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/hadamard.hpp"
#include "quarot/packed.hpp"
#include "quarot/progress.hpp"
#include "quarot/qdec.hpp"
#include "quarot/qdec_runtime.hpp"
#include "quarot/quantize.hpp"
#include "quarot/report.hpp"
#include "quarot/runtime.hpp"
#include "quarot/sha256.hpp"
#include "quarot/tokenizer.hpp"

// The commit this binary was built from, "-dirty" with local changes (generated at build time
// by cmake/GitCommit.cmake).
const char* quarot_git_commit();

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Args {
  std::string model, output, report_dir, preset = "w4a4kv4", calib, tokenizer, eval_ids, json, progress = "auto",
                                       rotation = "hadamard", w_method;
  int w_bits = 0, w_group = -1, a_bits = 0, k_bits = 0, v_bits = 0, nsamples = 128, seqlen = 2048, ctx = 0, chunks = 0,
      threads = 0, classifier_bits = 0, outlier_windows = 4, verbose = 0;
  double a_clip = 0, kv_clip = 0, damp = 0.01, qdec_slowdown = 0;
  uint64_t seed = 0;
  std::string qdec_k;
  int qdec_bits = 4;
  bool qdec = false, qdec_sweep = false, stream = false;
  bool no_rotate = false, act_order = false, static_groups = false, no_clip_search = false, w_asym = false, dry_run = false,
       quiet = false, no_checksum = false;
};

json config_json(const quarot::QuantConfig& c, const Args& a) {
  const auto& w = c.gptq.weights;
  return {{"preset", c.preset},
          {"rotate", c.rotate},
          {"rotation", {{"kind", c.rotation.r1_kind == quarot::R1Kind::Hadamard ? "hadamard" : "random"}, {"seed", c.rotation.seed}}},
          {"weights",
           {{"method", c.method == quarot::WeightMethod::None ? "none" : c.method == quarot::WeightMethod::Rtn ? "rtn" : "gptq"},
            {"bits", w.grid.bits},
            {"symmetric", w.grid.symmetric},
            {"group", w.group_size},
            {"clip_search", w.clip_search},
            {"damp", c.gptq.damp},
            {"act_order", c.gptq.act_order},
            {"static_groups", c.gptq.static_groups}}},
          {"activations", {{"bits", c.act.a_bits}, {"clip", c.act.a_clip}, {"group", c.act.a_group}}},
          {"kv_cache", {{"k_bits", c.act.k_bits}, {"v_bits", c.act.v_bits}, {"clip", c.act.kv_clip}, {"asymmetric", c.act.kv_asym}}},
          {"classifier_bits", c.classifier_bits},
          {"calibration", {{"path", a.calib}, {"tokenizer", a.tokenizer}, {"nsamples", c.nsamples}, {"seqlen", c.seqlen}, {"seed", c.seed}}},
          {"evaluation", {{"ids", a.eval_ids}, {"ctx", a.ctx}, {"chunks", a.chunks}}},
          {"qdec", {{"enabled", a.qdec}, {"bits", a.qdec_bits}, {"k_chunk", a.qdec_k}, {"slowdown_percent", a.qdec_slowdown}, {"sweep", a.qdec_sweep}}},
          {"output", a.output}};
}

// Bits per linear weight in the packed file: codes + fp32 scales (+ zero points) per group.
double bits_per_weight(const quarot::QuantConfig& c, int64_t cols) {
  const auto& w = c.gptq.weights;
  const double group = w.group_size > 0 ? w.group_size : double(cols);
  return (w.grid.bits <= 4 ? 4.0 : 8.0) + 32.0 / group + (w.grid.symmetric ? 0.0 : 8.0 / group);
}

int64_t linear_params(const quarot::ModelConfig& c) {
  return int64_t(c.n_layers) * (int64_t(c.hidden) * (2 * c.q_dim() + 2 * c.kv_dim()) + 3 * int64_t(c.hidden) * c.intermediate);
}

void print_plan(const Args& a, const quarot::QuantConfig& cfg) {
  const auto c = quarot::read_model_config(a.model);
  const int64_t lin = linear_params(c);
  const int64_t other = int64_t(c.vocab) * c.hidden * (c.tied_embeddings && !cfg.rotate ? 1 : 2) +
                        int64_t(c.n_layers) * 2 * c.hidden + c.hidden;
  std::printf("plan for %s (dry run: nothing is read beyond the config, nothing is written)\n", a.model.c_str());
  std::printf("  model: %d layers, hidden %d, FFN %d, %d heads (%d KV), head_dim %d, vocab %d; %.1f M linear weights\n", c.n_layers,
              c.hidden, c.intermediate, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab, double(lin) / 1e6);
  std::printf("  flags: %s\n", cfg.describe().c_str());
  if (cfg.rotate) {
    auto h = [&](int n) { return quarot::Hadamard::make(n, cfg.rotation.seed).construction(); };
    std::printf("  rotate: fuse RMSNorm scales into the next linears%s\n", c.tied_embeddings ? " (untie the embeddings first)" : "");
    std::printf("    R1 residual stream (absorbed): %s\n", cfg.rotation.r1_kind == quarot::R1Kind::Hadamard ? ("randomized Hadamard " + h(c.hidden)).c_str() : "seeded random orthogonal");
    std::printf("    R2 per head on v_proj/o_proj (absorbed): Hadamard %s\n", h(c.head_dim).c_str());
    std::printf("    online, fp32: R3 on queries and keys after RoPE: %s; cross-head at o_proj's input: %s; R4 at down_proj's input: %s\n",
                h(c.head_dim).c_str(), h(c.n_heads).c_str(), h(c.intermediate).c_str());
  } else {
    std::printf("  rotate: no\n");
  }
  if (cfg.method == quarot::WeightMethod::None) {
    std::printf("  weights: float\n");
  } else {
    const double bpw = bits_per_weight(cfg, c.hidden);
    std::printf("  weights: %s, %d-bit %s, %s; %.3f bits per weight with scales\n", cfg.method == quarot::WeightMethod::Gptq ? "GPTQ" : "RTN",
                cfg.gptq.weights.grid.bits, cfg.gptq.weights.grid.symmetric ? "symmetric" : "asymmetric",
                cfg.gptq.weights.group_size ? ("groups of " + std::to_string(cfg.gptq.weights.group_size)).c_str() : "per output channel",
                bpw);
    if (cfg.method == quarot::WeightMethod::Gptq)
      std::printf("  calibration: %d x %d tokens from %s\n", cfg.nsamples, std::min(cfg.seqlen, c.max_positions),
                  a.calib.empty() ? "(missing: --calib is required)" : a.calib.c_str());
    std::printf("  activations: %s; KV cache: K %d-bit, V %d-bit, %s, clip %.2f\n",
                cfg.act.a_bits < 16 ? ("per token " + std::to_string(cfg.act.a_bits) + "-bit, clip " + std::to_string(cfg.act.a_clip).substr(0, 4)).c_str() : "16-bit",
                cfg.act.k_bits, cfg.act.v_bits, cfg.act.kv_asym ? "asymmetric per head" : "symmetric per head", cfg.act.kv_clip);
    const double est = double(lin) * bpw / 8 + double(other) * 4;
    std::printf("  output: %s, about %.1f MiB (fp32 model %.1f MiB; %.3fx)\n", a.output.empty() ? "(none: simulation only)" : a.output.c_str(),
                est / (1 << 20), double(lin + other) * 4 / (1 << 20), est / (double(lin + other) * 4));
  }
  std::printf("  evaluation: %s\n", a.eval_ids.empty() ? "none (--eval-ids)" : a.eval_ids.c_str());
}

std::string input_checksum(const std::string& path) {
  auto files = quarot::cli::input_files(path);
  std::sort(files.begin(), files.end());  // directory order is not stable
  std::string all;
  for (const auto& f : files)
    if (fs::is_regular_file(f)) all += fs::path(f).filename().string() + ":" + quarot::sha256_file(f) + "\n";
  return quarot::sha256_hex(all);
}

uint64_t input_bytes(const std::string& path) {
  uint64_t n = 0;
  for (const auto& f : quarot::cli::input_files(path))
    if (fs::is_regular_file(f)) n += fs::file_size(f);
  return n;
}

void write_plots(const json& report, const std::string& dir) {
  std::map<std::string, quarot::ChartSeries> err;
  for (const auto& m : report["modules"]) {
    if (m["layer"].get<int>() < 0) continue;
    auto& s = err[m["module"].get<std::string>()];
    s.name = m["module"].get<std::string>();
    s.x.push_back(m["layer"].get<int>());
    s.y.push_back(m["rel_weight_error"].get<double>());
  }
  std::vector<quarot::ChartSeries> es;
  for (auto& [k, s] : err) es.push_back(s);
  quarot::write_file_atomic((fs::path(dir) / "error_per_layer.svg").string(),
                            quarot::svg_chart(es, {"Weight quantization error per layer", "layer", "||W - Q(W)|| / ||W||"}));
  std::map<std::string, quarot::ChartSeries> before, after;
  for (const auto& o : report["outliers"]) {
    const std::string p = o["point"].get<std::string>();
    auto& b = before[p];
    b.name = p + " before";
    b.dashed = true;
    b.x.push_back(o["layer"].get<int>());
    b.y.push_back(o["before"].get<double>());
    auto& a = after[p];
    a.name = p + " after";
    a.x.push_back(o["layer"].get<int>());
    a.y.push_back(o["after"].get<double>());
  }
  std::vector<quarot::ChartSeries> os;
  for (auto& [k, s] : before) os.push_back(s);
  for (auto& [k, s] : after) os.push_back(s);
  quarot::ChartOptions oo{"Activation outliers before (dashed) and after rotation", "layer", "max channel / median channel"};
  oo.log_y = true;
  quarot::write_file_atomic((fs::path(dir) / "outliers.svg").string(), quarot::svg_chart(os, oo));
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  std::string presets;
  for (const auto& n : quarot::quant_preset_names()) presets += " " + n;
  CLI::App app{
      "Rotate (QuaRot, arXiv 2404.00456) and quantize a LLaMA-family checkpoint, write it as a packed INT4\n"
      "model, and measure it: perplexity and KL divergence against the float model (simulated, and with\n"
      "the integer kernels), weight error per module, outliers before/after rotation, sizes, timings.\n"
      "With -o OUT the report (report.json, report.md, SVG plots) is written next to OUT.\n"
      "Presets (flags after --preset override them):" + presets + "\n"
      "Example: quarot-quantize stories260K.bin -o out/stories.q4.safetensors --preset w4a4kv4\n"
      "         --calib calib-t1-seed42.ids --seqlen 512 --eval-ids validation_100.tok512.ids --ctx 512\n"
      "Exit codes: 0 success, 1 failure (nothing written), 2 usage.",
      "quarot-quantize"};
  app.config_formatter(std::make_shared<quarot::cli::JsonOrTomlConfig>());
  app.set_config("--config", "", "read options from a JSON or TOML file (keys: long option names); command-line flags override it")
      ->group("Input/Output");
  app.add_option("model", a.model, "checkpoint: llama2.c .bin or Hugging Face folder")->required()->group("Input/Output");
  app.add_option("-o,--output", a.output, "write the packed INT4 model here (e.g. out/model.q4.safetensors)")->group("Input/Output");
  app.add_option("--report-dir", a.report_dir, "where report.json/.md and plots go (default: the output's folder)")->group("Input/Output");
  app.add_option("--json", a.json, "also write report.json's content to this file")->group("Input/Output");
  app.add_flag("--dry-run", a.dry_run, "print the plan (rotations, online transforms, bits per weight, output size) and exit")->group("Input/Output");
  app.add_flag("--no-rotate", a.no_rotate, "quantize without QuaRot's rotations")->group("Rotation");
  app.add_option("--rotation", a.rotation, "R1 kind")->check(CLI::IsMember({"hadamard", "random"}))->capture_default_str()->group("Rotation");
  app.add_option("--seed", a.seed, "seed of the rotations and of calibration sampling")->capture_default_str()->group("Rotation");
  app.add_option("--preset", a.preset, "quantization preset")->check(CLI::IsMember(quarot::quant_preset_names()))->capture_default_str()->group("Weights");
  app.add_option("--w-method", a.w_method, "weight quantizer")->check(CLI::IsMember({"rtn", "gptq", "none"}))->group("Weights");
  app.add_option("--w-bits", a.w_bits, "weight bits (2..8; packed files hold 2..4)")->check(CLI::Range(2, 8))->group("Weights");
  app.add_option("--w-group", a.w_group, "input columns per weight group (0: per output channel)")->check(CLI::NonNegativeNumber)->group("Weights");
  app.add_flag("--w-asym", a.w_asym, "asymmetric weight grid (zero points)")->group("Weights");
  app.add_flag("--no-clip-search", a.no_clip_search, "no per-row clip search")->group("Weights");
  app.add_option("--damp", a.damp, "GPTQ damping, fraction of the mean Hessian diagonal")->check(CLI::PositiveNumber)->capture_default_str()->group("Weights");
  app.add_flag("--act-order", a.act_order, "GPTQ: columns in decreasing Hessian diagonal order")->group("Weights");
  app.add_flag("--static-groups", a.static_groups, "GPTQ: group parameters from the original weights")->group("Weights");
  app.add_option("--classifier-bits", a.classifier_bits, "quantize the classifier (RTN; 16: float, as the paper)")->group("Weights");
  app.add_option("--a-bits", a.a_bits, "activation bits (2..8; 16: not quantized)")->group("Activations & KV");
  app.add_option("--a-clip", a.a_clip, "activation clip ratio (paper: 0.9)")->group("Activations & KV");
  app.add_option("--k-bits", a.k_bits, "key cache bits (16: not quantized)")->group("Activations & KV");
  app.add_option("--v-bits", a.v_bits, "value cache bits (16: not quantized)")->group("Activations & KV");
  app.add_option("--kv-clip", a.kv_clip, "KV clip ratio (paper: 0.95)")->group("Activations & KV");
  app.add_flag("--qdec", a.qdec,
               "QDEC (arXiv 2412.20185): store the weight residual W - Q(W) and add back, per token, the rows of\n"
               "the input channels with the largest |x| (a section of the packed file)")->group("QDEC");
  app.add_option("--qdec-bits", a.qdec_bits, "residual bits")->check(CLI::IsMember({4, 8}))->capture_default_str()->group("QDEC");
  auto* qdec_k_opt = app.add_option("--qdec-k", a.qdec_k,
                            "channels added back per 1024 inputs: N for every kind, 'all', or per kind\n"
                            "qkv=N,o=N,gate_up=N,down=N (default 4; implies --qdec)")->group("QDEC");
  app.add_option("--qdec-slowdown", a.qdec_slowdown,
                 "tune k per kind to this decode-time budget in percent, e.g. 2.5 (measured on the integer\n"
                 "path; needs -o; implies --qdec)")->check(CLI::Range(0.01, 1000.0))->excludes(qdec_k_opt)->group("QDEC");
  app.add_flag("--qdec-sweep", a.qdec_sweep,
               "also evaluate k = 0, 1, 2, 4, 8, 16, 32, 64, all per 1024 (perplexity, KLD, time per token) into the\n"
               "report (needs --eval-ids; implies --qdec)")->group("QDEC");
  app.add_option("--calib", a.calib, "calibration data for GPTQ: token ids (*.ids) or text (with --tokenizer)")->group("Calibration");
  app.add_option("--tokenizer", a.tokenizer, "tokenizer for text calibration (SentencePiece .model or llama2.c .bin)")->group("Calibration");
  app.add_option("--nsamples", a.nsamples, "calibration sequences")->check(CLI::PositiveNumber)->capture_default_str()->group("Calibration");
  app.add_option("--seqlen", a.seqlen, "calibration sequence length (capped at the model's max)")->check(CLI::Range(2, 1 << 20))->capture_default_str()->group("Calibration");
  app.add_option("--eval-ids", a.eval_ids, "evaluation token ids (lines concatenated, paper protocol)")->group("Evaluation");
  app.add_option("--ctx", a.ctx, "evaluation window (default: the model's max, at most 2048)")->check(CLI::NonNegativeNumber)->group("Evaluation");
  app.add_option("--chunks", a.chunks, "evaluate at most this many windows (0: all)")->check(CLI::NonNegativeNumber)->group("Evaluation");
  app.add_option("--outlier-windows", a.outlier_windows, "windows for the outlier statistics before/after rotation (0: skip)")
      ->check(CLI::NonNegativeNumber)->capture_default_str()->group("Evaluation");
  app.add_option("--threads", a.threads, "threads (default: all cores)")->check(CLI::NonNegativeNumber)->group("Runtime");
  app.add_flag("--stream", a.stream,
               "read, rotate and quantize one decoder layer at a time from the memory-mapped input (checkpoints\n"
               "larger than memory; chosen automatically when the fp32 model would not fit). Same packed file;\n"
               "only the packed model is evaluated (no float reference, no outlier statistics)")->group("Runtime");
  app.add_flag("--no-checksum", a.no_checksum, "skip the input's sha256 in the report (saves a read of the input)")->group("Runtime");
  app.add_option("--progress", a.progress, "auto (bar on a terminal, lines otherwise), bar, plain or none")
      ->check(CLI::IsMember({"auto", "bar", "plain", "none"}))->capture_default_str()->group("Logging");
  app.add_flag("-v,--verbose", a.verbose, "more detail (the rotation steps, per-module lines)")->group("Logging");
  app.add_flag("-q,--quiet", a.quiet, "only errors and the closing summary")->group("Logging");
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;

  quarot::QuantConfig cfg;
  auto& wq = cfg.gptq.weights;
  try {  // bad flag values are usage errors (exit 2), found before any work
    cfg = quarot::quant_preset(a.preset);
    if (!a.w_method.empty()) cfg.method = a.w_method == "rtn" ? quarot::WeightMethod::Rtn : a.w_method == "gptq" ? quarot::WeightMethod::Gptq : quarot::WeightMethod::None;
    if (a.w_bits) wq.grid.bits = a.w_bits;
    if (a.w_group >= 0) wq.group_size = a.w_group;
    if (a.w_asym) wq.grid.symmetric = false;
    if (a.no_clip_search) wq.clip_search = false;
    cfg.gptq.damp = a.damp;
    cfg.gptq.act_order = a.act_order;
    cfg.gptq.static_groups = a.static_groups;
    if (a.a_bits) cfg.act.a_bits = a.a_bits;
    if (a.a_clip > 0) cfg.act.a_clip = a.a_clip;
    if (a.k_bits) cfg.act.k_bits = a.k_bits;
    if (a.v_bits) cfg.act.v_bits = a.v_bits;
    if (a.kv_clip > 0) cfg.act.kv_clip = a.kv_clip;
    if (a.classifier_bits) cfg.classifier_bits = a.classifier_bits;
    if (a.no_rotate) cfg.rotate = false;
    cfg.rotation.r1_kind = a.rotation == "random" ? quarot::R1Kind::Random : quarot::R1Kind::Hadamard;
    cfg.rotation.seed = a.seed;
    cfg.seed = a.seed;
    cfg.nsamples = a.nsamples;
    cfg.seqlen = a.seqlen;
    quarot::check_act_options(cfg.act);
    if (cfg.classifier_bits != 16 && (cfg.classifier_bits < 2 || cfg.classifier_bits > 8))
      throw quarot::Error("--classifier-bits", "must be 2..8 or 16, got " + std::to_string(cfg.classifier_bits));
    if (!a.output.empty()) (void)quarot::make_pack_recipe(cfg);  // the packed format can hold it
    if (!a.qdec_k.empty() || a.qdec_slowdown > 0 || a.qdec_sweep) a.qdec = true;
    if (a.stream && cfg.method == quarot::WeightMethod::None) throw quarot::Error("--stream", "needs quantized weights (--w-method rtn or gptq)");
    if (a.qdec) {
      if (cfg.method == quarot::WeightMethod::None) throw quarot::Error("--qdec", "needs quantized weights (--w-method rtn or gptq)");
      (void)quarot::parse_qdec_k(a.qdec_k.empty() ? "4" : a.qdec_k);
      if (a.qdec_slowdown > 0 && a.output.empty()) throw quarot::Error("--qdec-slowdown", "tunes on the integer path: give -o OUT");
      if (a.qdec_sweep && a.eval_ids.empty()) throw quarot::Error("--qdec-sweep", "needs --eval-ids");
    }
    if (cfg.method == quarot::WeightMethod::Gptq && a.calib.empty() && !a.dry_run)
      throw quarot::Error("--calib", "GPTQ needs calibration data (--calib FILE: *.ids or text)");
  } catch (const quarot::Error& e) {
    std::fprintf(stderr, "quarot-quantize: error: %s (see --help)\n", e.what());
    return quarot::cli::kExitUsage;
  }
  if (a.quiet) a.progress = "none";

  return quarot::cli::run("quarot-quantize", [&] {
    if (a.threads > 0) omp_set_num_threads(a.threads);
    if (a.dry_run) {
      print_plan(a, cfg);
      return 0;
    }
    const auto t_all = Clock::now();
    auto log = [&](const char* fmt, auto... args) {
      if (!a.quiet) std::fprintf(stderr, fmt, args...);
    };
    const auto mode = quarot::parse_progress_mode(a.progress);
    if (!a.output.empty()) {
      quarot::refuse_overwriting_inputs(a.output, {a.model, a.calib, a.eval_ids});
      const auto parent = fs::path(a.output).parent_path();
      if (!parent.empty()) fs::create_directories(parent);
    }
    const std::string report_dir = !a.report_dir.empty() ? a.report_dir
                                   : a.output.empty()    ? std::string()
                                                         : (fs::path(a.output).has_parent_path() ? fs::path(a.output).parent_path().string() : ".");
    json timings = json::object();

    auto t = Clock::now();
    // Whole model in memory, or streamed layer by layer when its fp32 copies would not fit.
    int64_t params = 0;
    for (const auto& [name, shape] : quarot::tensor_shapes(quarot::read_model_config(a.model))) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      params += n;
    }
    bool stream = a.stream;
    if (!stream && cfg.method != quarot::WeightMethod::None) {
      const double need = double(params) * 4 * 2.2;  // the float model, its rotated/quantized copy, scratch
      const double avail = double(quarot::available_memory_bytes());
      if (avail > 0 && need > avail) {
        stream = true;
        log("quarot-quantize: the fp32 model needs about %.1f GiB twice, %.1f GiB are available: streaming layer by layer (--stream)\n",
            double(params) * 4 / double(1 << 30), avail / double(1 << 30));
      }
    }
    std::unique_ptr<quarot::CheckpointReader> reader;
    quarot::ModelWeights float_model;
    if (stream)
      reader = std::make_unique<quarot::CheckpointReader>(a.model);
    else
      float_model = quarot::load_model(a.model);
    timings["load"] = since(t);
    const quarot::ModelConfig c = stream ? reader->config() : float_model.config;
    cfg.seqlen = std::min(cfg.seqlen, c.max_positions);
    log("quarot-quantize: %s: %d layers, hidden %d, %.1f M parameters (%s, %.2fs)\n  %s\n", a.model.c_str(), c.n_layers, c.hidden,
        double(params) / 1e6, stream ? "streamed" : "loaded", since(t), cfg.describe().c_str());

    // Token sources: calibration and evaluation.
    t = Clock::now();
    std::vector<std::vector<int>> calib;
    if (cfg.method == quarot::WeightMethod::Gptq) {
      std::unique_ptr<quarot::Tokenizer> tok;
      if (!a.tokenizer.empty()) tok = quarot::load_tokenizer(a.tokenizer);
      calib = quarot::calibration_windows(quarot::read_calibration(a.calib, tok.get(), c.vocab), cfg.nsamples, cfg.seqlen, cfg.seed, a.calib);
    }
    timings["calibration_data"] = since(t);
    const int ctx = a.ctx ? std::min(a.ctx, c.max_positions) : std::min(2048, c.max_positions);
    std::vector<quarot::Window> windows;
    if (!a.eval_ids.empty()) {
      std::vector<int> ids;
      for (const auto& s : quarot::read_ids_file(a.eval_ids, c.vocab)) ids.insert(ids.end(), s.begin(), s.end());
      windows = quarot::make_windows(ids, quarot::Protocol::Paper, ctx, c.bos_id >= 0 ? c.bos_id : 1, a.chunks);
      if (windows.empty()) throw quarot::Error(a.eval_ids, "shorter than one window of " + std::to_string(ctx));
    }
    // Outlier statistics: a few windows of at most 256 tokens, from the evaluation ids or the calibration set.
    std::vector<std::vector<int>> stat_windows;
    for (const auto& w : windows) {
      if (int(stat_windows.size()) >= a.outlier_windows) break;
      stat_windows.emplace_back(w.tokens.begin(), w.tokens.begin() + std::min<std::ptrdiff_t>(256, std::ptrdiff_t(w.tokens.size())));
    }
    for (const auto& w : calib) {
      if (int(stat_windows.size()) >= a.outlier_windows) break;
      stat_windows.emplace_back(w.begin(), w.begin() + std::min<std::ptrdiff_t>(256, std::ptrdiff_t(w.size())));
    }

    auto m = float_model;
    quarot::convert_rope_layout(m, quarot::RopeLayout::Half);  // the packed format's layout (same function)
    std::vector<quarot::ActivationStats> before, after;
    t = Clock::now();
    if (stream) stat_windows.clear();  // the statistics need the whole float model
    if (!stat_windows.empty() && cfg.rotate) before = quarot::activation_stats(m, nullptr, stat_windows);
    quarot::OnlineTransforms online;
    json rotation = {{"steps", json::array()}, {"fallbacks", json::array()}};
    std::unique_ptr<quarot::StreamingQuantizer> streamer;
    if (stream) {
      streamer = std::make_unique<quarot::StreamingQuantizer>(*reader, cfg);  // float parts read and rotated now
      online = streamer->online();
      const auto& rep = streamer->rotation();
      if (cfg.rotate) rotation = {{"steps", rep.steps}, {"fallbacks", rep.fallbacks}, {"online", online.describe()}};
      for (const auto& f : rep.fallbacks) std::fprintf(stderr, "quarot-quantize: warning: not a Hadamard matrix: %s\n", f.c_str());
    } else if (cfg.rotate) {
      quarot::RotationReport rep;
      online = quarot::rotate_model(m, cfg.rotation, &rep);
      quarot::record_rotation(m, cfg.rotation, online);
      rotation = {{"steps", rep.steps}, {"fallbacks", rep.fallbacks}, {"online", online.describe()}};
      for (const auto& f : rep.fallbacks) std::fprintf(stderr, "quarot-quantize: warning: not a Hadamard matrix: %s\n", f.c_str());
      if (a.verbose)
        for (const auto& s : rep.steps) log("  rotate: %s\n", s.c_str());
      if (!stat_windows.empty()) after = quarot::activation_stats(m, &online, stat_windows);
    }
    timings["rotate"] = since(t);

    t = Clock::now();
    quarot::Progress qp("quantize", mode);
    uint64_t modules_done = 0;
    std::unique_ptr<quarot::PackedWriter> writer;
    const quarot::ModelWeights& qmodel = stream ? streamer->model() : m;  // what the writer takes the float tensors from
    if (!a.output.empty()) writer = std::make_unique<quarot::PackedWriter>(qmodel, quarot::make_pack_recipe(cfg));
    quarot::QdecStore qstore;  // QDEC's residuals, made as each linear is quantized
    qstore.bits = a.qdec_bits;
    if (a.qdec) qstore.linears.resize(std::size_t(c.n_layers) * 7);
    const quarot::QuantProgress progress = [&](int l, int n, const std::string& mod) {
      // 7 linears per layer, reported as each one starts.
      qp.update(modules_done, uint64_t(n) * 7, "layer " + std::to_string(l + 1) + "/" + std::to_string(n) + " " + mod);
      ++modules_done;
    };
    const quarot::QuantizedSink sink = [&](int l, quarot::LinearModule mod, const quarot::QuantizedMatrix& q, const quarot::Matrix& original) {
      if (writer) writer->add(l, mod, q);
      if (a.qdec)
        qstore.linears[std::size_t(l) * 7 + std::size_t(mod)] =
            quarot::make_residual_store(original.data.data(), q.dequantized.data(), q.rows, q.cols, a.qdec_bits);
    };
    const auto stats = stream ? streamer->run(calib, progress, sink,
                                              [&](int l, int n) {
                                                if (a.verbose) log("  layer %d/%d done, peak RSS %.0f MiB\n", l + 1, n, double(quarot::peak_rss_bytes()) / (1 << 20));
                                              })
                              : quarot::quantize_weights(m, online, cfg, calib, progress, sink);
    qp.finish(std::to_string(stats.size()) + " modules");
    timings["quantize"] = since(t);

    json report = {{"schema", "quarot-report/1"},
                   {"tool", {{"name", "quarot-quantize"}, {"version", quarot::quarot_version()}, {"git_commit", quarot_git_commit()}}},
                   {"input", {{"path", a.model}, {"sha256", a.no_checksum ? json(nullptr) : json(input_checksum(a.model))},
                              {"bytes", input_bytes(a.model)}, {"parameters", params}}},
                   {"config", config_json(cfg, a)},
                   {"flags", cfg.describe()},
                   {"seeds", {{"rotation", cfg.rotation.seed}, {"calibration", cfg.seed}}},
                   {"rotation", rotation},
                   {"modules", json::array()},
                   {"outliers", json::array()}};
    for (const auto& s : stats)
      report["modules"].push_back({{"layer", s.layer}, {"module", s.module}, {"rel_weight_error", s.rel_weight_error},
                                   {"gptq_loss", s.gptq_loss}, {"damp", s.damp_used}, {"dead_inputs", s.dead_inputs}, {"seconds", s.seconds}});
    for (const auto& b : before)
      for (const auto& x : after)
        if (x.layer == b.layer && x.point == b.point &&
            (b.point == quarot::HookPoint::QkvInput || b.point == quarot::HookPoint::OProjInput ||
             b.point == quarot::HookPoint::GateUpInput || b.point == quarot::HookPoint::DownProjInput))
          report["outliers"].push_back({{"layer", b.layer}, {"point", quarot::hook_point_name(b.point)},
                                        {"before", b.max_over_median}, {"after", x.max_over_median}});

    // Sizes.
    const int64_t lin = linear_params(c);
    const double fp32_bytes = double(params) * 4;
    json sizes = {{"fp32_bytes", fp32_bytes}, {"input_bytes", report["input"]["bytes"]}, {"linear_parameters", lin},
                  {"packed_bytes", nullptr}, {"bits_per_weight", cfg.method == quarot::WeightMethod::None ? 32.0 : bits_per_weight(cfg, c.hidden)}};
    quarot::QdecK qk = quarot::parse_qdec_k(a.qdec_k.empty() ? "4" : a.qdec_k);
    json qdec_report = nullptr;
    if (a.qdec) {
      qdec_report = {{"bits", a.qdec_bits}, {"residual_bytes", qstore.bytes()}, {"tuner", nullptr}};
      if (writer) {
        for (int l = 0; l < c.n_layers; ++l)
          for (quarot::LinearModule mod : quarot::kLinearModules) writer->add_residual(l, mod, qstore.at(l, mod));
        writer->set_qdec(qk);
      }
    }
    if (writer) {
      t = Clock::now();
      writer->write(a.output, {{"quarot.source", a.model}});
      timings["pack"] = since(t);
      if (a.qdec_slowdown > 0) {
        // The tuner: the plain integer decode step is the base; the compensation's cost per kind
        // and level is measured on the residual rows themselves; the file is written again with
        // the chosen k (its metadata carries them).
        t = Clock::now();
        const quarot::PackedModel first(a.output, false);
        auto plain = quarot::integer_model(first, std::min(c.max_positions, 256), quarot::best_isa(), quarot::QdecK{});
        const double base = quarot::decode_seconds_per_token(plain, 64, 5);
        const auto costs = quarot::measure_qdec_costs(qstore);
        const auto tuning = quarot::tune_qdec(costs, base * a.qdec_slowdown / 100);
        qk = tuning.k;
        json table = json::object();
        for (int kind = 0; kind < quarot::kQdecKinds; ++kind) {
          json row = json::array();
          for (std::size_t lv = 0; lv < std::size(quarot::kQdecLevels); ++lv) row.push_back(costs.seconds[kind][lv]);
          table[quarot::qdec_kind_name(kind)] = row;
        }
        qdec_report["tuner"] = {{"slowdown_percent", a.qdec_slowdown}, {"base_seconds_per_token", base},
                                {"budget_seconds_per_token", tuning.budget_seconds}, {"cost_seconds_per_token", tuning.cost_seconds},
                                {"levels", quarot::kQdecLevels}, {"cost_seconds", table}, {"steps", tuning.steps}};
        writer->set_qdec(qk, qdec_report["tuner"].dump());
        writer->write(a.output, {{"quarot.source", a.model}});
        timings["qdec_tune"] = since(t);
        log("QDEC tuner: base decode %.1f us/token, budget %.2f%% = %.2f us: k per 1024 %s (measured cost %.2f us)\n", base * 1e6,
            a.qdec_slowdown, tuning.budget_seconds * 1e6, qk.describe().c_str(), tuning.cost_seconds * 1e6);
      }
      sizes["packed_bytes"] = fs::file_size(a.output);
      sizes["bits_per_weight"] = double(writer->packed_bytes()) * 8 / double(lin);
      if (!a.quiet) std::printf("packed model: %s, %.2f MiB (%.3fx the fp32 model)\n", a.output.c_str(), double(fs::file_size(a.output)) / (1 << 20),
          double(fs::file_size(a.output)) / fp32_bytes);
    }
    if (a.qdec) {
      qdec_report["k_chunk"] = {{"qkv", qk.qkv}, {"o", qk.o}, {"gate_up", qk.gate_up}, {"down", qk.down}};
      qdec_report["k_chunk_text"] = qk.describe();
      sizes["qdec_residual_bytes"] = qstore.bytes();
      if (writer) qdec_report["residual_percent_of_packed_linears"] = 100.0 * double(qstore.bytes()) / double(writer->packed_bytes());
    }
    report["sizes"] = sizes;

    json ev = nullptr;
    auto result_json = [](const quarot::EvalResult& r) {
      return json{{"ppl", r.ppl}, {"kld_mean", r.kld_mean}, {"kld_p99", r.kld_p99}, {"top1_agreement", r.top1_agreement}, {"seconds", r.seconds}};
    };
    if (stream && a.qdec && (a.qdec_sweep || !windows.empty()))
      log("%s", "quarot-quantize: streamed: the QDEC simulation and --qdec-sweep need the whole float model and are skipped\n");
    if (!windows.empty() && stream) {
      // Streamed: no float model in memory, so no reference for KLD and no simulation; the
      // packed model runs from its memory map.
      t = Clock::now();
      ev = {{"ids", a.eval_ids}, {"ctx", ctx}, {"windows", int(windows.size())}, {"protocol", "paper"},
            {"float", nullptr}, {"quantized", nullptr}, {"packed", nullptr}};
      if (writer) {
        const quarot::PackedModel packed(a.output);
        auto im = quarot::integer_model(packed, ctx);
        const auto ir = quarot::evaluate(im, windows, quarot::Protocol::Paper);
        ev["packed"] = result_json(ir);
        for (const char* k : {"kld_mean", "kld_p99", "top1_agreement"}) ev["packed"][k] = nullptr;
        ev["packed"]["isa"] = quarot::isa_name(quarot::best_isa());
        ev["packed"]["qdec"] = a.qdec;
        std::printf("packed integer model (%s): perplexity %.4f (%d windows of %d; streamed: no float reference)\n",
                    quarot::isa_name(quarot::best_isa()), ir.ppl, ir.windows, ctx);
      }
      timings["eval"] = since(t);
    } else if (!windows.empty()) {
      t = Clock::now();
      quarot::Transformer<float> fm(float_model, ctx), qm(m, ctx);
      qm.set_hook(quarot::quantized_model_hook<float>(online, cfg.act, c.head_dim));
      auto eval_progress = [&](const char* what) {
        return [&, what](int i, int n, const quarot::EvalResult& r) {
          if (mode != quarot::ProgressMode::None && a.verbose) std::fprintf(stderr, "  eval %s [%d/%d] ppl %.4f\n", what, i, n, r.ppl);
        };
      };
      const auto fr = quarot::evaluate(fm, windows, quarot::Protocol::Paper, nullptr, eval_progress("float"));
      const auto qr = quarot::evaluate(qm, windows, quarot::Protocol::Paper, &fm, eval_progress("quantized"));
      ev = {{"ids", a.eval_ids}, {"ctx", ctx}, {"windows", qr.windows}, {"protocol", "paper"},
            {"float", {{"ppl", fr.ppl}, {"seconds", fr.seconds}}},
            {"quantized", {{"ppl", qr.ppl}, {"kld_mean", qr.kld_mean}, {"kld_p99", qr.kld_p99}, {"top1_agreement", qr.top1_agreement}, {"seconds", qr.seconds}}},
            {"packed", nullptr}};
      std::printf("perplexity: float %.4f -> quantized %.4f (%+.2f%%)\n", fr.ppl, qr.ppl, 100 * (qr.ppl / fr.ppl - 1));
      std::printf("KLD vs float: mean %.5f, p99 %.5f; top-1 agreement %.2f%% (%d windows of %d)\n", qr.kld_mean, qr.kld_p99,
                  100 * qr.top1_agreement, qr.windows, ctx);
      if (a.qdec) {
        auto sm = quarot::qdec_simulation_model(m, qstore, qk, online, cfg.act, ctx);
        const auto sr = quarot::evaluate(sm, windows, quarot::Protocol::Paper, &fm, eval_progress("quantized+qdec"));
        qdec_report["simulated"] = result_json(sr);
        std::printf("with QDEC (%s per 1024, %d-bit residual): perplexity %.4f, KLD vs float %.5f (simulated)\n", qk.describe().c_str(),
                    a.qdec_bits, sr.ppl, sr.kld_mean);
      }
      std::unique_ptr<quarot::PackedModel> packed;
      if (writer) {
        packed = std::make_unique<quarot::PackedModel>(a.output);
        auto im = quarot::integer_model(*packed, ctx);
        const auto ir = quarot::evaluate(im, windows, quarot::Protocol::Paper, &fm, eval_progress("packed"));
        std::printf("packed integer model (%s%s): perplexity %.4f, KLD vs float %.5f, top-1 agreement %.2f%%\n",
                    quarot::isa_name(quarot::best_isa()), a.qdec ? ", with QDEC" : "", ir.ppl, ir.kld_mean, 100 * ir.top1_agreement);
        ev["packed"] = result_json(ir);
        ev["packed"]["isa"] = quarot::isa_name(quarot::best_isa());
        ev["packed"]["qdec"] = a.qdec;
        if (a.qdec) {
          // Decode time per token of the integer path without and with the compensation.
          auto p0 = quarot::integer_model(*packed, std::min(c.max_positions, 256), quarot::best_isa(), quarot::QdecK{});
          auto p1 = quarot::integer_model(*packed, std::min(c.max_positions, 256), quarot::best_isa(), qk);
          const double s0 = quarot::decode_seconds_per_token(p0, 64, 5), s1 = quarot::decode_seconds_per_token(p1, 64, 5);
          qdec_report["decode_seconds_per_token"] = {{"plain", s0}, {"qdec", s1}, {"slowdown_percent", 100 * (s1 / s0 - 1)}};
          std::printf("QDEC decode time per token: %.1f -> %.1f us (%+.1f%%)\n", s0 * 1e6, s1 * 1e6, 100 * (s1 / s0 - 1));
        }
      }
      if (a.qdec_sweep) {
        // Perplexity, KLD and (integer path) decode time against k_chunk, the same k for every kind.
        json sweep = json::array();
        for (int kc : {0, 1, 2, 4, 8, 16, 32, 64, -1}) {
          const auto k = quarot::QdecK::all(kc);
          json row = {{"k_chunk", kc < 0 ? json("all") : json(kc)}};
          if (packed) {
            auto im = quarot::integer_model(*packed, ctx, quarot::best_isa(), k);
            row["packed"] = result_json(quarot::evaluate(im, windows, quarot::Protocol::Paper, &fm));
            auto dm = quarot::integer_model(*packed, std::min(c.max_positions, 256), quarot::best_isa(), k);
            row["decode_seconds_per_token"] = quarot::decode_seconds_per_token(dm, 64, 3);
          }
          auto sm = quarot::qdec_simulation_model(m, qstore, k, online, cfg.act, ctx);
          row["simulated"] = result_json(quarot::evaluate(sm, windows, quarot::Protocol::Paper, &fm));
          log("  QDEC sweep k=%s: simulated ppl %.4f\n", kc < 0 ? "all" : std::to_string(kc).c_str(), row["simulated"]["ppl"].get<double>());
          sweep.push_back(row);
        }
        qdec_report["sweep"] = sweep;
      }
      timings["eval"] = since(t);
    }
    report["eval"] = ev;
    report["qdec"] = qdec_report;
    timings["total"] = since(t_all);
    report["timings"] = timings;
    report["peak_rss_bytes"] = quarot::peak_rss_bytes();

    // Summary by module kind.
    if (!stats.empty() && !a.quiet) {
      std::map<std::string, std::pair<double, int>> by_kind;
      for (const auto& s : stats) {
        by_kind[s.module].first += s.rel_weight_error;
        by_kind[s.module].second += 1;
      }
      std::printf("weight error ||W - Q(W)|| / ||W||, mean over layers:\n");
      for (const auto& [k, v] : by_kind) std::printf("  %-10s %.5f\n", k.c_str(), v.first / v.second);
    }
    const std::string text = report.dump(2) + "\n";
    if (!report_dir.empty()) {
      fs::create_directories(report_dir);
      quarot::write_file_atomic((fs::path(report_dir) / "report.json").string(), text);
      quarot::write_file_atomic((fs::path(report_dir) / "report.md").string(), quarot::report_markdown(text));
      write_plots(report, report_dir);
    }
    if (!a.json.empty()) quarot::write_file_atomic(a.json, text);
    std::printf("summary: %s -> %s; size %.2f MiB -> %s; %.3f bits per linear weight; perplexity %s; %.1fs, peak RSS %.1f MiB%s\n",
                a.model.c_str(), a.output.empty() ? "(simulated)" : a.output.c_str(), fp32_bytes / (1 << 20),
                sizes["packed_bytes"].is_null() ? "–" : (std::to_string(sizes["packed_bytes"].get<double>() / (1 << 20)).substr(0, 6) + " MiB").c_str(),
                sizes["bits_per_weight"].get<double>(),
                ev.is_null() ? "not evaluated"
                : ev["float"].is_null()
                    ? (ev["packed"].is_null() ? std::string("not evaluated") : std::to_string(ev["packed"]["ppl"].get<double>()).substr(0, 7) + " (packed)").c_str()
                    : (std::to_string(ev["float"]["ppl"].get<double>()).substr(0, 7) + " -> " +
                       std::to_string((ev["packed"].is_null() ? ev["quantized"] : ev["packed"])["ppl"].get<double>()).substr(0, 7))
                          .c_str(),
                since(t_all), double(quarot::peak_rss_bytes()) / (1 << 20),
                report_dir.empty() ? "" : ("; report in " + report_dir + "/report.md").c_str());
    return 0;
  });
}
