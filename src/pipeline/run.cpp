// run(plan, observer): the stages of the main job as functions over one Run's state.
// load -> calibration data -> rotate -> quantize (-> pack) -> QDEC tune -> evaluate -> report.
// A model whose fp32 copies would not fit (or --stream) is read one decoder layer at a time:
// the same stages over a LayerSource (quantize.hpp) that reads and rotates each layer on
// demand, instead of the one over the model in memory.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include "pipeline_detail.hpp"
#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/file_identity.hpp"
#include "quarot/gguf.hpp"
#include "quarot/hf_tokenizer.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/progress.hpp"
#include "quarot/qdec.hpp"
#include "quarot/qdec_runtime.hpp"
#include "quarot/runtime.hpp"
#include "quarot/sha256.hpp"
#include "quarot/tasks.hpp"
#include "quarot/tokenizer.hpp"
#include "quarot/version.hpp"

namespace quarot {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using pipeline_detail::bits_per_weight;
using pipeline_detail::linear_params;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string input_checksum(const std::string& path) {
  auto files = checkpoint_files(path);
  std::sort(files.begin(), files.end());  // directory order is not stable
  std::string all;
  for (const auto& f : files)
    if (fs::is_regular_file(f)) all += fs::path(f).filename().string() + ":" + sha256_file(f) + "\n";
  return sha256_hex(all);
}

uint64_t input_bytes(const std::string& path) {
  uint64_t n = 0;
  for (const auto& f : checkpoint_files(path))
    if (fs::is_regular_file(f)) n += fs::file_size(f);
  return n;
}

EvalFigures figures(const EvalResult& r) {
  EvalFigures f;
  f.ppl = r.ppl;
  f.kld_mean = r.kld_mean;
  f.kld_p99 = r.kld_p99;
  f.top1_agreement = r.top1_agreement;
  f.seconds = r.seconds;
  return f;
}

class Run {
 public:
  Run(const Plan& p, Observer& o) : p_(p), obs_(o), cfg_(p.quant) {}

  RunReport operator()() {
    t_all_ = Clock::now();
    // The plan against the model's config first, as --dry-run checks it: nothing is read or
    // written when it cannot run on this model.
    (void)resolve_against_model(p_, read_model_config(p_.model));
    prepare_outputs();
    load();
    calibration_data();
    if (!p_.gguf_preset.empty()) {
      export_gguf_file();
      evaluate();
      score_task_accuracy();
      return finish();
    }
    rotate();
    quantize();
    plan_precision();
    pack();
    evaluate();
    score_task_accuracy();
    return finish();
  }

 private:
  const Plan& p_;
  Observer& obs_;
  QuantConfig cfg_;  // seqlen capped at the model's max
  RunReport rep_;
  Clock::time_point t_all_;
  std::string report_dir_;
  std::unique_ptr<StagedFile> staged_out_;  // the packed/GGUF file until it is committed with the report
  std::vector<fs::path> created_dirs_;       // folders this run made, removed again (if empty) when it fails
  bool committed_ = false;
  int64_t params_ = 0;
  bool stream_ = false;
  std::unique_ptr<CheckpointReader> reader_;
  ModelWeights float_model_, m_;
  ModelConfig c_;
  std::vector<std::vector<int>> calib_, stat_windows_;
  int ctx_ = 0;
  std::vector<Window> windows_;
  std::vector<ActivationStats> before_, after_;
  OnlineTransforms online_;
  std::unique_ptr<LayerSource> layers_;  // m_'s layers, or the checkpoint's streamed
  std::unique_ptr<PackedWriter> writer_;
  QdecStore qstore_;
  QdecK qk_;
  std::vector<ModuleQuantStats> stats_;
  std::unique_ptr<Tokenizer> text_tok_;  // text_tokenizer()'s

  void say(Observer::Channel ch, const char* fmt, ...) __attribute__((format(printf, 3, 4))) {
    va_list ap;
    va_start(ap, fmt);
    const std::string s = pipeline_detail::vformat(fmt, ap);
    va_end(ap);
    obs_.text(ch, s);
  }
  void begin(const char* stage) { obs_.stage_start(stage); }
  void end(const char* stage, Clock::time_point t, const std::string& summary = {}) {
    rep_.timings[stage] = since(t);
    obs_.stage_end(stage, summary);
  }

  void prepare_outputs() {
    const std::string& out = p_.outputs.packed;
    // One report folder per output name (OUT.report/), so two outputs in one folder keep
    // their own reports.
    report_dir_ = !p_.outputs.report_dir.empty() ? p_.outputs.report_dir : out.empty() ? std::string() : out + ".report";
    // Every output path against every input, by identity (a model folder's files included), and
    // against anything that is not a regular file: before any work, nothing written.
    const std::vector<std::string> inputs = {p_.model,           p_.calibration.path, p_.calibration.tokenizer,
                                             p_.evaluation.ids, p_.evaluation.text,  p_.task.file, p_.task.labels};
    std::vector<std::string> outputs;
    if (!out.empty()) outputs.push_back(out);
    if (!report_dir_.empty()) {
      std::error_code ec;
      if (fs::exists(fs::symlink_status(report_dir_, ec)) && !fs::is_directory(fs::symlink_status(report_dir_, ec)))
        throw Error(report_dir_, "exists and is not a folder (the report folder; --report-dir sets another)");
      for (const char* f : kReportFiles) outputs.push_back((fs::path(report_dir_) / f).string());
      if (p_.planner.enabled()) outputs.push_back((fs::path(report_dir_) / kPlanPlotFile).string());
    }
    if (!p_.outputs.json.empty()) outputs.push_back(p_.outputs.json);
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      refuse_unsafe_output(outputs[i], inputs);
      for (std::size_t k = 0; k < i; ++k)
        if (std::error_code e1, e2; fs::weakly_canonical(outputs[i], e1) == fs::weakly_canonical(outputs[k], e2) || same_file(outputs[i], outputs[k]))
          throw Error(outputs[i], "named twice as an output (" + outputs[k] + ")");
    }
  }

  // Creates `dir` (and missing parents), remembering what it made for cleanup on failure.
  void make_dirs(const fs::path& dir) {
    std::vector<fs::path> missing;
    std::error_code ec;
    for (fs::path d = dir; !d.empty() && !fs::exists(d, ec); d = d.parent_path()) {
      missing.push_back(d);
      if (d == d.parent_path()) break;
    }
    fs::create_directories(dir);
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
      created_dirs_.push_back(*it);
      note_created_folder(it->string());  // removed (if empty) on SIGINT/SIGTERM too
    }
  }
  // Where the output file is written until finish() commits it with the report.
  const std::string& staged_out() {
    if (!staged_out_) {
      const fs::path parent = fs::path(p_.outputs.packed).parent_path();
      if (!parent.empty()) make_dirs(parent);
      staged_out_ = std::make_unique<StagedFile>(p_.outputs.packed);
    }
    return staged_out_->path();
  }

 public:
  ~Run() {
    if (committed_) return;
    staged_out_.reset();  // removes the staged file
    std::error_code ec;
    for (auto it = created_dirs_.rbegin(); it != created_dirs_.rend(); ++it) fs::remove(*it, ec);  // only if empty
  }

 private:
  static constexpr const char* kReportFiles[] = {"report.json", "report.md", "error_per_layer.svg", "outliers.svg"};
  static constexpr const char* kPlanPlotFile = "precision_plan.svg";  // with the precision planner only

  // Whole model in memory, or streamed layer by layer when its fp32 copies would not fit.
  void load() {
    const auto t = Clock::now();
    begin("load");
    for (const auto& [name, shape] : tensor_shapes(read_model_config(p_.model))) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      params_ += n;
    }
    stream_ = p_.run.stream;
    if (!stream_ && cfg_.method != WeightMethod::None) {
      const double need = double(params_) * 4 * 2.2;  // the float model, its rotated/quantized copy, scratch
      const double avail = double(available_memory_bytes());
      if (avail > 0 && need > avail) {
        stream_ = true;
        say(Observer::Channel::Log,
            "quarot-quantize: the fp32 model needs about %.1f GiB twice, %.1f GiB are available: streaming layer by layer (--stream)\n",
            double(params_) * 4 / double(1 << 30), avail / double(1 << 30));
      }
    }
    if (stream_)
      reader_ = std::make_unique<CheckpointReader>(p_.model);
    else
      float_model_ = load_model(p_.model);
    end("load", t);
    c_ = stream_ ? reader_->config() : float_model_.config;
    cfg_.seqlen = std::min(cfg_.seqlen, c_.max_positions);
    if (const std::string line = apply_model_defaults(cfg_, c_); !line.empty()) say(Observer::Channel::Log, "quarot-quantize: %s\n", line.c_str());
    say(Observer::Channel::Log, "quarot-quantize: %s: %d layers, hidden %d, %.1f M parameters (%s, %.2fs)\n  %s\n", p_.model.c_str(),
        c_.n_layers, c_.hidden, double(params_) / 1e6, stream_ ? "streamed" : "loaded", since(t), cfg_.describe().c_str());
  }

  // Token sources: calibration and evaluation.
  void calibration_data() {
    const auto t = Clock::now();
    begin("calibration_data");
    if (cfg_.method == WeightMethod::Gptq || p_.planner.enabled()) {  // the planner measures on calibration windows only
      const bool ids = p_.calibration.path.ends_with(".ids");
      const Tokenizer* tok = ids ? nullptr : text_tokenizer();
      calib_ = calibration_windows(read_calibration(p_.calibration.path, tok, c_.vocab), cfg_.nsamples, cfg_.seqlen, cfg_.seed,
                                   p_.calibration.path);
      if (tok) {
        // read_calibration's stream: the tokenizer's BOS once in front of the whole text.
        rep_.tokenizer->calibration = tok->bos_id() >= 0 ? "BOS " + std::to_string(tok->bos_id()) +
                                                               " once in front of the whole text, none per window (the windows are "
                                                               "random spans of that stream)"
                                                         : std::string("no BOS (the tokenizer has none), none per window");
        say(Observer::Channel::Log, "quarot-quantize: calibration text %s: %s\n", p_.calibration.path.c_str(), rep_.tokenizer->calibration->c_str());
      }
    }
    end("calibration_data", t);
    const auto& e = p_.evaluation;
    ctx_ = e.ctx ? std::min(e.ctx, c_.max_positions) : std::min(2048, c_.max_positions);
    if (!e.ids.empty()) {
      std::vector<int> ids;
      for (const auto& s : read_ids_file(e.ids, c_.vocab)) ids.insert(ids.end(), s.begin(), s.end());
      windows_ = make_windows(ids, Protocol::Paper, ctx_, c_.bos_id >= 0 ? c_.bos_id : 1, e.chunks);
      if (windows_.empty()) throw Error(e.ids, "shorter than one window of " + std::to_string(ctx_));
    }
    if (!e.text.empty()) eval_text_windows();
    // Outlier statistics: a few windows of at most 256 tokens, from the evaluation ids or the calibration set.
    for (const auto& w : windows_) {
      if (int(stat_windows_.size()) >= e.outlier_windows) break;
      stat_windows_.emplace_back(w.tokens.begin(), w.tokens.begin() + std::min<std::ptrdiff_t>(256, std::ptrdiff_t(w.tokens.size())));
    }
    for (const auto& w : calib_) {
      if (int(stat_windows_.size()) >= e.outlier_windows) break;
      stat_windows_.emplace_back(w.begin(), w.begin() + std::min<std::ptrdiff_t>(256, std::ptrdiff_t(w.size())));
    }
  }

  // The tokenizer for text (calibration text, --task items): --tokenizer, else the one in the
  // model's folder (tokenizer.json beside config.json); loaded once, stated in the log and the
  // report with what it puts around a text. nullptr when there is none.
  const Tokenizer* text_tokenizer() {
    if (text_tok_) return text_tok_.get();
    RunReport::TokenizerUse use;
    use.path = p_.calibration.tokenizer;
    use.found = "--tokenizer";
    if (use.path.empty()) {
      use.path = find_model_tokenizer(p_.model);
      use.found = "the model's folder";
    }
    if (use.path.empty()) return nullptr;
    text_tok_ = load_tokenizer(use.path);
    use.kind = text_tok_->kind();
    if (text_tok_->bos_id() >= 0) use.bos_id = text_tok_->bos_id();
    use.special_policy = text_tok_->special_policy();
    say(Observer::Channel::Log, "quarot-quantize: tokenizer %s (%s, from %s): BOS %s; a task sequence gets %s\n", use.path.c_str(),
        use.kind.c_str(), use.found.c_str(), use.bos_id ? std::to_string(*use.bos_id).c_str() : "none", use.special_policy.c_str());
    rep_.tokenizer = use;
    return text_tok_.get();
  }

  // --eval-text: quarot-eval --text's paper protocol: the model's BOS once in front of the whole
  // text (LF line endings), non-overlapping windows of ctx.
  void eval_text_windows() {
    const auto& e = p_.evaluation;
    const Tokenizer* tok = text_tokenizer();
    if (!tok) throw Error(e.text, "evaluation text needs a tokenizer: give --tokenizer (the model's folder has none)");
    check_tokenizer_fits_model(*tok, c_.vocab, rep_.tokenizer->path);
    const int bos = c_.bos_id >= 0 ? c_.bos_id : 1;
    std::vector<int> stream{bos};
    const auto body = tok->encode(read_text_lf(e.text));
    stream.insert(stream.end(), body.begin(), body.end());
    windows_ = make_windows(stream, Protocol::Paper, ctx_, bos, e.chunks);
    if (windows_.empty())
      throw Error(e.text, std::to_string(stream.size()) + " tokens: shorter than one window of " + std::to_string(ctx_));
    rep_.tokenizer->evaluation = "BOS " + std::to_string(bos) + " (the model's) once in front of the whole text, none per window (paper protocol)";
    say(Observer::Channel::Log, "quarot-quantize: evaluation text %s: %zu tokens; %s\n", e.text.c_str(), stream.size(), rep_.tokenizer->evaluation->c_str());
  }

  void rotate() {
    m_ = float_model_;
    convert_rope_layout(m_, RopeLayout::Half);  // the packed format's layout (same function)
    const auto t = Clock::now();
    begin("rotate");
    if (stream_) stat_windows_.clear();  // the statistics need the whole float model
    if (!stat_windows_.empty() && cfg_.rotate) before_ = activation_stats(m_, nullptr, stat_windows_);
    // Rotated now: the whole model, or the streamed one's float parts (its layers as they are read).
    if (stream_)
      layers_ = std::make_unique<StreamedLayers>(*reader_, cfg_);
    else
      layers_ = std::make_unique<ModelLayers>(m_, cfg_);
    online_ = layers_->online();
    const RotationReport rot = layers_->rotation();
    if (cfg_.rotate) rep_.rotation = {rot.steps, rot.fallbacks, online_.describe()};
    for (const auto& f : rot.fallbacks) say(Observer::Channel::Warning, "quarot-quantize: warning: not a Hadamard matrix: %s\n", f.c_str());
    if (!stream_ && cfg_.rotate) {
      if (p_.run.verbose)
        for (const auto& s : rot.steps) say(Observer::Channel::Log, "  rotate: %s\n", s.c_str());
      if (!stat_windows_.empty()) after_ = activation_stats(m_, &online_, stat_windows_);
    }
    end("rotate", t);
  }

  // Quantizes every linear of the layer source (streamed or in memory); each goes to the packed
  // writer and, with QDEC, its residual to the store as it is made.
  void quantize() {
    const auto t = Clock::now();
    begin("quantize");
    uint64_t modules_done = 0;
    // The writer takes the float tensors from the source's model (m_ in memory).
    if (!p_.outputs.packed.empty()) writer_ = std::make_unique<PackedWriter>(layers_->model(), make_pack_recipe(cfg_));
    qstore_.bits = p_.qdec.bits;
    if (p_.qdec.enabled) qstore_.linears.resize(std::size_t(c_.n_layers) * std::size_t(kLinearsPerLayer));
    const uint64_t per_layer = std::size_t(kLinearsPerLayer);
    const QuantProgress progress = [&](int l, int n, const std::string& mod) {
      // Every linear of a layer, reported as each one starts.
      obs_.progress("quantize", modules_done, uint64_t(n) * per_layer,
                    "layer " + std::to_string(l + 1) + "/" + std::to_string(n) + " " + mod);
      ++modules_done;
    };
    const QuantizedSink sink = [&](int l, LinearModule mod, const QuantizedMatrix& q, const Matrix& original) {
      if (writer_) writer_->add(l, mod, q);
      if (p_.qdec.enabled)
        qstore_.linears[std::size_t(l) * per_layer + std::size_t(mod)] =
            make_residual_store(original.data.data(), q.dequantized.data(), q.rows, q.cols, p_.qdec.bits);
    };
    const LayerDone layer_done = [&](int l, int n) {
      if (p_.run.verbose && layers_->streamed())  // what streaming costs in memory, layer by layer
        say(Observer::Channel::Log, "  layer %d/%d done, peak RSS %.0f MiB\n", l + 1, n, double(peak_rss_bytes()) / (1 << 20));
    };
    stats_ = quantize_layers(*layers_, cfg_, calib_, progress, sink, layer_done);
    end("quantize", t, std::to_string(stats_.size()) + " modules");
    if (!stream_) obs_.quantized({m_, online_, cfg_, p_.qdec.enabled ? &qstore_ : nullptr});

    for (const auto& s : stats_)
      rep_.modules.push_back({s.layer, s.module, s.rel_weight_error, s.gptq_loss, s.damp_used, s.dead_inputs, s.seconds});
    for (const auto& b : before_)
      for (const auto& x : after_)
        if (x.layer == b.layer && x.point == b.point &&
            (b.point == HookPoint::QkvInput || b.point == HookPoint::OProjInput || b.point == HookPoint::GateUpInput ||
             b.point == HookPoint::DownProjInput))
          rep_.outliers.push_back({b.layer, hook_point_name(b.point), b.max_over_median, x.max_over_median});
  }

  // The precision planner: per-layer K/V bits and clips from the calibration windows (never the
  // evaluation data: it is handed calib_ alone), into cfg_.act (the simulation and the report)
  // and the packed file's recipe (the integer path).
  void plan_precision() {
    if (!p_.planner.enabled()) return;
    if (stream_) {  // --stream is refused with the planner; a model too large for memory streams by itself
      say(Observer::Channel::Warning, "%s", "quarot-quantize: warning: streamed run: the precision planner needs the float model in memory and is skipped\n");
      return;
    }
    const auto t = Clock::now();
    begin("plan");
    const auto log = [this](const std::string& s) { obs_.text(Observer::Channel::Log, "quarot-quantize: " + s); };
    rep_.precision_plan = pipeline_detail::plan_precision(float_model_, m_, online_, cfg_.act, cfg_.gptq.weights.grid.bits, calib_, p_.planner, log);
    if (writer_) {
      PackRecipe r = writer_->recipe();
      r.act = cfg_.act;
      r.plan = rep_.precision_plan->to_json();
      writer_->set_recipe(r);
    }
    end("plan", t);
  }

  // The input model's sizes, whatever the output format.
  void set_model_sizes() {
    rep_.sizes.fp32_bytes = double(params_) * 4;
    rep_.sizes.input_bytes = input_bytes(p_.model);
    rep_.sizes.linear_parameters = linear_params(c_);
  }

  // A gguf-* preset: rotation without online transforms, weights onto llama.cpp's blocks, the file
  // written by src/gguf. m_ is then the exported model dequantized, which evaluate() measures
  // (no online transforms, float activations: as llama.cpp computes, up to its 8-bit activations).
  void export_gguf_file() {
    const auto t = Clock::now();
    begin("export");
    GgufExportOptions o = plan_preset(p_.gguf_preset).gguf.value();
    o.method = cfg_.method;
    o.rotate = cfg_.rotate;
    o.rotation.seed = cfg_.rotation.seed;
    o.rotation.r1_kind = cfg_.rotation.r1_kind;
    o.damp = cfg_.gptq.damp;
    o.act_order = cfg_.gptq.act_order;
    o.clip_search = cfg_.gptq.weights.clip_search;
    if (!p_.gguf_embd_type.empty()) o.embd_type = parse_gguf_type(p_.gguf_embd_type);  // checked by the plan
    o.recipe = cfg_.describe();
    if (o.embd_type) o.recipe += " --gguf-embd-type " + p_.gguf_embd_type;
    if (!p_.calibration.path.empty() && p_.run.checksum && cfg_.method == WeightMethod::Gptq) o.calibration_hash = sha256_file(p_.calibration.path);
    validate_gguf_options(o);
    std::unique_ptr<Tokenizer> tok;
    if (!p_.calibration.tokenizer.empty()) tok = load_tokenizer(p_.calibration.tokenizer);
    if (!tok)
      say(Observer::Channel::Warning, "%s",
          "quarot-quantize: warning: no --tokenizer, so the GGUF has no tokenizer.ggml.* keys (llama.cpp needs them to load the file)\n");
    m_ = float_model_;
    const auto r = export_gguf(m_, tok.get(), o, calib_, staged_out(),
                               [&](const std::string& what) { obs_.progress("export", 0, 0, what); });
    for (const auto& n : r.notes) say(Observer::Channel::Log, "quarot-quantize: %s\n", n.c_str());
    for (const auto& f : r.fallbacks) say(Observer::Channel::Warning, "quarot-quantize: fallback: %s\n", f.c_str());
    stats_ = r.stats;
    for (const auto& s : stats_)
      rep_.modules.push_back({s.layer, s.module, s.rel_weight_error, s.gptq_loss, s.damp_used, s.dead_inputs, s.seconds});
    auto& sizes = rep_.sizes;
    set_model_sizes();
    sizes.packed_bytes = r.file_bytes;
    sizes.bits_per_weight = r.bits_per_weight;
    end("export", t, std::to_string(r.file_bytes) + " bytes");
    say(Observer::Channel::Info, "wrote %s: GGUF, %.3f bits per weight (every tensor), %zu fallbacks\n", p_.outputs.packed.c_str(), r.bits_per_weight,
        r.fallbacks.size());
  }

  // Writes the packed file (QDEC's residuals as its section); with --qdec-slowdown, tunes k on
  // the integer path and writes it again with the chosen k.
  void pack() {
    auto& sizes = rep_.sizes;
    set_model_sizes();
    sizes.bits_per_weight = cfg_.method == WeightMethod::None ? 32.0 : bits_per_weight(cfg_, c_.hidden);
    if (cfg_.act.k_bits < 16 || cfg_.act.v_bits < 16) {
      const KvCacheBits kv = kv_cache_bits(cfg_.act, c_.head_dim);
      sizes.kv_bits_per_element = kv.codes();
      sizes.kv_stored_bits_per_element = kv.stored();
    }
    qk_ = parse_qdec_k(p_.qdec.k.empty() ? "4" : p_.qdec.k);
    if (p_.qdec.enabled) {
      rep_.qdec = RunReport::Qdec();  // not emplace(): clang 14 misjudges nested structs with initializers as not default-constructible
      rep_.qdec->bits = p_.qdec.bits;
      rep_.qdec->residual_bytes = qstore_.bytes();
      if (writer_) {
        for (int l = 0; l < c_.n_layers; ++l)
          for (const auto& spec : kLinearSpecs) writer_->add_residual(l, spec.module, qstore_.at(l, spec.module));
        writer_->set_qdec(qk_);
      }
    }
    const std::string& out = p_.outputs.packed;
    if (writer_) {
      auto t = Clock::now();
      begin("pack");
      writer_->write(staged_out(), {{"quarot.source", p_.model}});
      end("pack", t);
      if (p_.qdec.slowdown_percent > 0) tune_qdec_k();
      sizes.packed_bytes = fs::file_size(staged_out());
      sizes.bits_per_weight = double(writer_->packed_bytes()) * 8 / double(sizes.linear_parameters);
      say(Observer::Channel::Info, "packed model: %s, %.2f MiB (%.3fx the fp32 model)\n", out.c_str(), double(*sizes.packed_bytes) / (1 << 20),
          double(*sizes.packed_bytes) / sizes.fp32_bytes);
    }
    if (p_.qdec.enabled) {
      auto& q = *rep_.qdec;
      q.k_qkv = qk_.qkv;
      q.k_o = qk_.o;
      q.k_gate_up = qk_.gate_up;
      q.k_down = qk_.down;
      q.k_chunk_text = qk_.describe();
      sizes.qdec_residual_bytes = qstore_.bytes();
      if (writer_) q.residual_percent_of_packed_linears = 100.0 * double(qstore_.bytes()) / double(writer_->packed_bytes());
    }
  }

  // The tuner: the plain integer decode step is the base; the compensation's cost per kind and
  // level is measured on the residual rows themselves; the file is written again with the
  // chosen k (its metadata carries them).
  void tune_qdec_k() {
    const auto t = Clock::now();
    begin("qdec_tune");
    const std::string& out = staged_out();
    const PackedModel first(out, false);
    auto plain = integer_model(first, std::min(c_.max_positions, 256), best_isa(), QdecK{});
    const double base = decode_seconds_per_token(plain, 64, 5);
    const auto costs = measure_qdec_costs(qstore_);
    const auto tuning = tune_qdec(costs, base * p_.qdec.slowdown_percent / 100);
    qk_ = tuning.k;
    rep_.qdec->tuner = RunReport::Qdec::Tuner();
    auto& tuner = *rep_.qdec->tuner;
    tuner.slowdown_percent = p_.qdec.slowdown_percent;
    tuner.base_seconds_per_token = base;
    tuner.budget_seconds_per_token = tuning.budget_seconds;
    tuner.cost_seconds_per_token = tuning.cost_seconds;
    tuner.levels.assign(std::begin(kQdecLevels), std::end(kQdecLevels));
    for (int kind = 0; kind < kQdecKinds; ++kind)
      tuner.cost_seconds[qdec_kind_name(kind)].assign(std::begin(costs.seconds[kind]), std::begin(costs.seconds[kind]) + std::size(kQdecLevels));
    tuner.steps = tuning.steps;
    writer_->set_qdec(qk_, tuner.to_json());
    writer_->write(out, {{"quarot.source", p_.model}});
    end("qdec_tune", t);
    say(Observer::Channel::Log, "QDEC tuner: base decode %.1f us/token, budget %.2f%% = %.2f us: k per 1024 %s (measured cost %.2f us)\n",
        base * 1e6, p_.qdec.slowdown_percent, tuning.budget_seconds * 1e6, qk_.describe().c_str(), tuning.cost_seconds * 1e6);
  }

  void evaluate() {
    const bool qdec = p_.qdec.enabled;
    if (stream_ && qdec && (p_.qdec.sweep || !windows_.empty()))
      say(Observer::Channel::Log, "%s",
          "quarot-quantize: streamed: the QDEC simulation and --qdec-sweep need the whole float model and are skipped\n");
    if (windows_.empty()) return;
    const auto t = Clock::now();
    begin("eval");
    rep_.eval = RunReport::Eval();
    auto& ev = *rep_.eval;
    ev.ids = p_.evaluation.ids;
    if (!p_.evaluation.text.empty()) ev.text = p_.evaluation.text;
    ev.ctx = ctx_;
    const std::string out = writer_ ? staged_out() : std::string();
    if (stream_) {
      // Streamed: no float model in memory, so no reference for KLD and no simulation; the
      // packed model runs from its memory map.
      ev.windows = int(windows_.size());
      if (writer_) {
        const PackedModel packed(out);
        auto im = integer_model(packed, ctx_);
        const auto ir = quarot::evaluate(im, windows_, Protocol::Paper);
        ev.packed = figures(ir);
        ev.packed->kld = EvalFigures::Kld::Null;
        ev.packed->isa = isa_name(best_isa());
        ev.packed->qdec = qdec;
        say(Observer::Channel::Result, "packed integer model (%s): perplexity %.4f (%d windows of %d; streamed: no float reference)\n",
            isa_name(best_isa()), ir.ppl, ir.windows, ctx_);
      }
      end("eval", t);
      return;
    }
    Transformer<float> fm(float_model_, ctx_), qm(m_, ctx_);
    qm.set_hook(quantized_model_hook<float>(online_, cfg_.act, c_.head_dim));
    const bool show = p_.run.verbose && p_.run.progress != "none";
    auto eval_progress = [&](const char* what) {
      return [this, show, what](int i, int n, const EvalResult& r) {
        if (show) say(Observer::Channel::Log, "  eval %s [%d/%d] ppl %.4f\n", what, i, n, r.ppl);
      };
    };
    // The float model runs once per window for all of them: its own figures and the base of
    // every KLD (it ran three times before, a third of quarot-quantize's time on stories260K).
    std::vector<Transformer<float>*> compared{&qm};
    std::optional<Transformer<float>> sm;
    if (qdec) {
      sm.emplace(qdec_simulation_model(m_, qstore_, qk_, online_, cfg_.act, ctx_));
      compared.push_back(&*sm);
    }
    std::unique_ptr<PackedModel> packed;
    std::optional<Transformer<float>> im;
    if (writer_) {
      packed = std::make_unique<PackedModel>(out);
      im.emplace(integer_model(*packed, ctx_));
      compared.push_back(&*im);
    }
    const auto results = quarot::evaluate_against(fm, compared, windows_, Protocol::Paper, eval_progress("float and compared"));
    const auto& fr = results[0];
    const auto& qr = results[1];
    ev.windows = qr.windows;
    ev.float_model = figures(fr);
    ev.float_model->kld = EvalFigures::Kld::Absent;
    ev.quantized = figures(qr);
    say(Observer::Channel::Result, "perplexity: float %.4f -> quantized %.4f (%+.2f%%)\n", fr.ppl, qr.ppl, 100 * (qr.ppl / fr.ppl - 1));
    say(Observer::Channel::Result, "KLD vs float: mean %.5f, p99 %.5f; top-1 agreement %.2f%% (%d windows of %d)\n", qr.kld_mean, qr.kld_p99,
        100 * qr.top1_agreement, qr.windows, ctx_);
    if (qdec) {
      const auto& sr = results[2];
      rep_.qdec->simulated = figures(sr);
      say(Observer::Channel::Result, "with QDEC (%s per 1024, %d-bit residual): perplexity %.4f, KLD vs float %.5f (simulated)\n",
          qk_.describe().c_str(), p_.qdec.bits, sr.ppl, sr.kld_mean);
    }
    if (writer_) {
      const auto& ir = results.back();
      say(Observer::Channel::Result, "packed integer model (%s%s): perplexity %.4f, KLD vs float %.5f, top-1 agreement %.2f%%\n",
          isa_name(best_isa()), qdec ? ", with QDEC" : "", ir.ppl, ir.kld_mean, 100 * ir.top1_agreement);
      ev.packed = figures(ir);
      ev.packed->isa = isa_name(best_isa());
      ev.packed->qdec = qdec;
      if (qdec) {
        // Decode time per token of the integer path without and with the compensation.
        auto p0 = integer_model(*packed, std::min(c_.max_positions, 256), best_isa(), QdecK{});
        auto p1 = integer_model(*packed, std::min(c_.max_positions, 256), best_isa(), qk_);
        const double s0 = decode_seconds_per_token(p0, 64, 5), s1 = decode_seconds_per_token(p1, 64, 5);
        rep_.qdec->decode_seconds_per_token = RunReport::Qdec::Decode{s0, s1, 100 * (s1 / s0 - 1)};
        say(Observer::Channel::Result, "QDEC decode time per token: %.1f -> %.1f us (%+.1f%%)\n", s0 * 1e6, s1 * 1e6, 100 * (s1 / s0 - 1));
      }
    }
    if (p_.qdec.sweep) {
      // Perplexity, KLD and (integer path) decode time against k_chunk, the same k for every kind.
      rep_.qdec->sweep.emplace();
      for (int kc : {0, 1, 2, 4, 8, 16, 32, 64, -1}) {
        const auto k = QdecK::all(kc);
        RunReport::QdecSweepRow row;
        row.k_chunk = kc;
        if (packed) {
          auto ik = integer_model(*packed, ctx_, best_isa(), k);
          row.packed = figures(quarot::evaluate(ik, windows_, Protocol::Paper, &fm));
          auto dm = integer_model(*packed, std::min(c_.max_positions, 256), best_isa(), k);
          row.decode_seconds_per_token = decode_seconds_per_token(dm, 64, 3);
        }
        auto sk = qdec_simulation_model(m_, qstore_, k, online_, cfg_.act, ctx_);
        row.simulated = figures(quarot::evaluate(sk, windows_, Protocol::Paper, &fm));
        say(Observer::Channel::Log, "  QDEC sweep k=%s: simulated ppl %.4f\n", kc < 0 ? "all" : std::to_string(kc).c_str(), row.simulated.ppl);
        rep_.qdec->sweep->push_back(row);
      }
    }
    end("eval", t);
  }

  // --task: zero-shot accuracy (lm-eval acc / acc_norm) of the float model, the simulation and
  // the packed file's integer path, each item from an empty KV cache as quarot-eval --task
  // scores it; the report states each and the share of the float accuracy kept. Streamed runs
  // have no float model in memory: the packed model only.
  void score_task_accuracy() {
    if (p_.task.name.empty()) return;
    const auto t = Clock::now();
    begin("task");
    const Tokenizer* tok = text_tokenizer();
    if (!tok) throw Error(p_.model, "--task needs a tokenizer: give --tokenizer (the model's folder has none)");
    check_tokenizer_fits_model(*tok, c_.vocab, rep_.tokenizer->path);
    const ChoiceTask task = read_task(p_.task.name, p_.task.file, p_.task.labels);
    RunReport::Task rt;
    rt.name = task.name;
    rt.file = p_.task.file;
    rt.limit = p_.task.limit;
    // quarot-eval's context (the model's), capped so that the KV cache of a 128K-position model
    // stays small: task items are a few hundred tokens.
    const int ctx = std::min(c_.max_positions, 4096);
    auto score = [&](Transformer<float>& m, const char* what) {
      const TaskResult r = score_task(m, *tok, task, p_.task.limit, [&](int i, int n, const TaskResult&) {
        obs_.progress("task", uint64_t(i), uint64_t(n), what);
      });
      rt.items = r.items;
      say(Observer::Channel::Result, "%s %s: acc %.4f ± %.4f, acc_norm %.4f ± %.4f (%d items%s, %.2f ms per item)\n", task.name.c_str(), what,
          r.acc, r.acc_stderr, r.acc_norm, r.acc_norm_stderr, r.items,
          r.truncated_items ? (", " + std::to_string(r.truncated_items) + " truncated").c_str() : "", r.seconds_per_item * 1e3);
      return RunReport::TaskFigures{r.acc, r.acc_stderr, r.acc_norm, r.acc_norm_stderr, r.seconds, r.seconds_per_item, r.truncated_items, std::nullopt};
    };
    if (!stream_) {
      Transformer<float> fm(float_model_, ctx), qm(m_, ctx);
      qm.set_hook(quantized_model_hook<float>(online_, cfg_.act, c_.head_dim));
      rt.float_model = score(fm, "float");
      rt.quantized = score(qm, "quantized (simulated)");
    }
    if (writer_) {
      const PackedModel packed(staged_out());  // committed with the report in finish()
      auto im = integer_model(packed, ctx);
      rt.packed = score(im, "packed (integer kernels)");
      rt.packed->isa = isa_name(best_isa());
    }
    const auto* q = rt.packed ? &*rt.packed : rt.quantized ? &*rt.quantized : nullptr;
    if (rt.float_model && q && rt.float_model->acc > 0 && rt.float_model->acc_norm > 0)
      say(Observer::Channel::Result, "%s retained by the %s model: acc %.1f%%, acc_norm %.1f%% of float\n", task.name.c_str(),
          rt.packed ? "packed" : "quantized", 100 * q->acc / rt.float_model->acc, 100 * q->acc_norm / rt.float_model->acc_norm);
    rep_.tasks.push_back(rt);
    end("task", t, std::to_string(rt.items) + " items");
  }

  RunReport finish() {
    rep_.tool_name = p_.run.tool;
    rep_.tool_version = quarot_version();
    rep_.git_commit = p_.run.git_commit;
    rep_.input = {p_.model, p_.run.checksum ? std::optional<std::string>(input_checksum(p_.model)) : std::nullopt, rep_.sizes.input_bytes,
                  params_};
    Plan effective = p_;  // the config as run: seqlen capped at the model's max positions
    effective.quant = cfg_;
    rep_.config_json = plan_json(effective);
    rep_.flags = plan_command(p_);  // a command that reproduces the run (report.md prints it)
    rep_.rotation_seed = cfg_.rotation.seed;
    rep_.calibration_seed = cfg_.seed;
    rep_.timings["total"] = since(t_all_);
    rep_.peak_rss_bytes = peak_rss_bytes();

    // Summary by module kind.
    if (!stats_.empty()) {
      std::map<std::string, std::pair<double, int>> by_kind;
      for (const auto& s : stats_) {
        by_kind[s.module].first += s.rel_weight_error;
        by_kind[s.module].second += 1;
      }
      std::string text = "weight error ||W - Q(W)|| / ||W||, mean over layers:\n";
      for (const auto& [k, v] : by_kind) {
        char line[128];
        std::snprintf(line, sizeof line, "  %-10s %.5f\n", k.c_str(), v.first / v.second);
        text += line;
      }
      obs_.text(Observer::Channel::Info, text);
    }
    const std::string text = rep_.to_json();
    // The report files staged, then everything committed together, the packed file last: it
    // appears only with its report (or not at all).
    std::vector<std::unique_ptr<StagedFile>> staged;
    auto stage = [&](const std::string& target, const std::string& contents) {
      staged.push_back(std::make_unique<StagedFile>(target));
      write_file_atomic(staged.back()->path(), contents);
    };
    if (!report_dir_.empty()) {
      make_dirs(report_dir_);
      const std::string texts[] = {text, report_markdown(rep_), error_per_layer_svg(rep_), outliers_svg(rep_)};
      for (std::size_t i = 0; i < std::size(kReportFiles); ++i) stage((fs::path(report_dir_) / kReportFiles[i]).string(), texts[i]);
      if (rep_.precision_plan) stage((fs::path(report_dir_) / kPlanPlotFile).string(), precision_plan_svg(rep_));
    }
    if (!p_.outputs.json.empty()) {
      if (const fs::path parent = fs::path(p_.outputs.json).parent_path(); !parent.empty()) make_dirs(parent);
      stage(p_.outputs.json, text);
    }
    std::vector<StagedFile*> all;
    for (auto& f : staged) all.push_back(f.get());
    if (staged_out_) all.push_back(staged_out_.get());
    commit_together(all);
    committed_ = true;
    const auto* head = rep_.headline_eval();
    const auto& ev = rep_.eval;
    std::string ppl = "not evaluated";
    if (ev && !ev->float_model && ev->packed)
      ppl = std::to_string(ev->packed->ppl).substr(0, 7) + " (packed)";
    else if (ev && ev->float_model && head)
      ppl = std::to_string(ev->float_model->ppl).substr(0, 7) + " -> " + std::to_string(head->ppl).substr(0, 7);
    const auto& packed_bytes = rep_.sizes.packed_bytes;
    say(Observer::Channel::Result,
        "summary: %s -> %s; size %.2f MiB -> %s; %.3f bits per linear weight; perplexity %s; %.1fs, peak RSS %.1f MiB%s\n",
        p_.model.c_str(), p_.outputs.packed.empty() ? "(simulated)" : p_.outputs.packed.c_str(), rep_.sizes.fp32_bytes / (1 << 20),
        packed_bytes ? (std::to_string(double(*packed_bytes) / (1 << 20)).substr(0, 6) + " MiB").c_str() : "–",
        rep_.sizes.bits_per_weight, ppl.c_str(), since(t_all_), double(peak_rss_bytes()) / (1 << 20),
        report_dir_.empty() ? "" : ("; report in " + report_dir_ + "/report.md").c_str());
    return rep_;
  }
};

}  // namespace

std::vector<std::string> checkpoint_files(const std::string& path) {
  std::vector<std::string> out;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::directory_iterator(path, ec)) out.push_back(e.path().string());
  } else {
    out.push_back(path);
  }
  return out;
}

RunReport run(const Plan& p, Observer& observer) {
  if (p.run.threads > 0) omp_set_num_threads(p.run.threads);
  return Run(p, observer)();
}

}  // namespace quarot
