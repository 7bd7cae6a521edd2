#pragma once
// The main job as a library: a typed Plan (what to load, how to quantize, what to write and
// measure) built and validated in one place, and run(plan, observer) executing its stages
// (load -> calibration data -> rotate -> quantize -> pack -> QDEC tune -> evaluate -> report).
// quarot-quantize binds its flags (and --config files, which quarot-batch writes) to
// PlanOptions and prints what the Observer hears; tests and benches run plans too, and take the
// quantized model in memory from Observer::quantized (no one else assembles the stages by hand).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <vector>

#include "quarot/config.hpp"
#include "quarot/error.hpp"
#include "quarot/gguf.hpp"
#include "quarot/quantize.hpp"
#include "quarot/report.hpp"

namespace quarot {

// A usage error found in a plan (a flag value or combination): the tool exits 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

// The options as given, flat, one member per quarot-quantize flag (the names of --config
// keys and of quarot-batch plan options); 0 / empty / -1 mean "the preset's value".
struct PlanOptions {
  std::string model, output, report_dir, json, preset = "w4a4kv4", calib, tokenizer, eval_ids, progress = "auto",
                                                rotation = "hadamard", w_method, qdec_k;
  std::string gguf_embd_type;  // --gguf-embd-type: a GGUF output's token embedding type (empty: llama-quantize's)
  int w_bits = 0, w_group = -1, a_group = -1, a_bits = 0, k_bits = 0, v_bits = 0, classifier_bits = 0, nsamples = 128, seqlen = 2048, ctx = 0,
      chunks = 0, outlier_windows = 4, threads = 0, verbose = 0, qdec_bits = 4;
  double a_clip = 0, kv_clip = 0, damp = 0.01, qdec_slowdown = 0;
  uint64_t seed = 0;
  bool no_rotate = false, act_order = false, static_groups = false, no_clip_search = false, w_asym = false, qdec = false,
       qdec_sweep = false, stream = false, no_checksum = false, quiet = false, dry_run = false;
  // Zero-shot multiple choice (quarot-eval's --task, --task-file, --task-labels, --task-limit).
  std::string task, task_file, task_labels;
  int task_limit = 0;
  std::string eval_text;  // evaluation text, tokenized (instead of --eval-ids)
  // The precision planner (0: off): --budget-kv-bits, --budget-act-bits, --target-kld, --plan-windows.
  double budget_kv_bits = 0, target_kld = 0, budget_act_bits = 0;
  int plan_windows = 4;
};

struct Plan {
  std::string model;  // llama2.c .bin or Hugging Face folder
  struct Outputs {
    std::string packed;      // the packed INT4 file; empty: simulation only
    std::string report_dir;  // report.json/.md and plots; empty: none
    std::string json;        // a copy of report.json; empty: none
  } outputs;
  QuantConfig quant;  // the preset with the overrides applied (calibration sizes and seed included)
  // A gguf-* preset: outputs.packed is a GGUF file for llama.cpp (gguf.hpp) instead of the packed
  // INT4 file; `quant` then says the weight method and rotation (no online transforms, float
  // activations: llama.cpp runs its own). Empty: the packed format.
  std::string gguf_preset;
  // With a gguf-* preset: token_embd.weight's type (gguf_type_name; empty: llama-quantize's choice).
  std::string gguf_embd_type;
  struct Calibration {
    std::string path, tokenizer;  // GPTQ's tokens: *.ids, or text with a tokenizer
  } calibration;
  struct Evaluation {
    std::string ids;  // empty: no evaluation
    int ctx = 0;      // 0: the model's max, at most 2048
    int chunks = 0;   // 0: all windows
    int outlier_windows = 4;
    std::string text;  // instead of ids: a text, tokenized with one BOS in front (quarot-eval --text)
  } evaluation;
  // Zero-shot multiple-choice accuracy (tasks.hpp) of the float and quantized models; the
  // tokenizer is calibration.tokenizer, else the one in the model's folder.
  struct Task {
    std::string name;  // "hellaswag" | "piqa"; empty: none
    std::string file, labels;
    int limit = 0;  // 0: every item
  } task;
  struct Qdec {
    bool enabled = false;
    int bits = 4;
    std::string k;  // "" means 4 for every kind
    double slowdown_percent = 0;
    bool sweep = false;
  } qdec;
  // The precision planner (precision_plan.cpp): from calibration windows only, the sensitivity of
  // the final logits (KLD vs the float model) to each layer's K, V and (from 4-bit activations)
  // activations going from 8 to 4 bits, then which of them stay at 8 bits under the budgets or
  // the target, and each layer's clip ratios. Enabled when any of the three is set.
  struct Planner {
    double budget_kv_bits = 0;  // mean code bits per cached element (K and V, all layers), 4..8; 0: 8 (no budget)
    // Raise parts (K, V, and activations when they are 4-bit) to 8 bits in order of sensitivity
    // per bit added to their own mean, until the calibration KLD is at most this; the budgets cap
    // which parts may be raised. 0: none.
    double target_kld = 0;
    int windows = 4;            // calibration windows measured (at most 512 tokens each)
    // Mean activation bits over the decoder layers (4..8; every layer's linears have the same
    // input widths, so this is also the mean per activation element): layers whose activations
    // are most sensitive to 8 -> 4 bits run 8-bit activations (the INT4 GEMM on 8-bit codes);
    // 0: activation bits stay the model's.
    double budget_act_bits = 0;
    bool enabled() const { return budget_kv_bits > 0 || target_kld > 0 || budget_act_bits > 0; }
  } planner;
  struct RunOptions {
    int threads = 0;  // 0: all cores
    std::string progress = "auto";
    bool stream = false, verbose = false, quiet = false, checksum = true, dry_run = false;
    std::string tool = "quarot-quantize", git_commit;  // recorded in the report
  } run;
};

// One --preset: the quantization settings (the paper's, named by their bits) and, for gguf-*,
// the GGUF export it names (gguf.hpp: the block types; the file is then a GGUF for llama.cpp).
struct Preset {
  QuantConfig quant;
  std::optional<GgufExportOptions> gguf;
};
// Every preset name, in --help's order, from the one table of presets (plan.cpp).
std::vector<std::string> plan_preset_names();
// Throws UsageError for an unknown name (listing the known ones).
Preset plan_preset(const std::string& name);
// The one way to a Plan: the preset, then the options over it, then validate(). Throws UsageError.
Plan make_plan(const PlanOptions& o);
// Every usage rule of a plan; throws UsageError naming the flag.
void validate(const Plan& p);
// The plan against the model it will run on, from the model's config alone (no weight is read):
// every rule that depends on the model's shapes (weight groups dividing each linear's input
// width, the rotations' Hadamard sizes, what a GGUF architecture holds). describe_plan
// (--dry-run) and run() (before loading the weights) both call it, so a dry run fails exactly
// when the run would. Returns the settings as they will run (calibration length capped at the
// model's positions, the settings that follow the model chosen); throws UsageError naming the
// flag, the shape and the model.
QuantConfig resolve_against_model(const Plan& p, const ModelConfig& c);
// The plan as the report's "config" section.
std::string plan_json(const Plan& p, int indent = -1);
// The --dry-run text (reads the model's config only).
std::string describe_plan(const Plan& p);
// A quarot-quantize command line (shell-quoted) that makes the same plan: the preset, then
// only the flags whose values differ from it, the inputs and the outputs. --dry-run and
// report.md print it; running it gives the same plan.
std::string plan_command(const Plan& p);
// `s` quoted for a POSIX shell when it needs quoting ("a b" -> 'a b').
std::string shell_quote(const std::string& s);

struct QdecStore;

// The precision planner's choice under a bit budget: per layer {k_bits, v_bits}, each part at `low`
// bits except the most sensitive ones (k_sens[l], v_sens[l]: KLD increase when that part alone goes
// from `high` to `low`; ties: lower layer first, K before V), raised to `high` while the mean code
// bits per cached element (K and V of every layer averaged) stay at most `budget`. Equal cost per
// part, so taking them by sensitivity is the best choice when the effects add up.
// The same for activations: one part per layer, the `budget` a mean over layers.
std::vector<int> choose_act_bits(const std::vector<double>& sens, double budget, int low, int high);
std::vector<std::pair<int, int>> choose_kv_bits(const std::vector<double>& k_sens, const std::vector<double>& v_sens, double budget,
                                                int low = 4, int high = 8);

// The quantized model as a whole-model run holds it in memory after the quantize stage: what a
// library user (a test, a bench) measures beyond the report, without rebuilding the pipeline.
// The references live until the observer call returns; copy what must outlive it.
struct QuantizedModel {
  const ModelWeights& weights;     // rotated, RoPE in the packed layout, linears on their grids (dequantized)
  const OnlineTransforms& online;  // the transforms its forward pass applies (empty unrotated)
  const QuantConfig& config;       // as run: the model's defaults applied, seqlen capped
  const QdecStore* qdec;           // QDEC's residuals with --qdec, else nullptr
};

// Hears a run: stages as they start and end, progress within a stage, and text for people.
class Observer {
 public:
  enum class Channel {
    Result,   // results (stdout), always
    Info,     // results worth printing unless quiet (stdout)
    Log,      // what happens (stderr), unless quiet
    Warning,  // stderr, always
  };
  virtual ~Observer() = default;
  virtual void stage_start(std::string_view /*stage*/) {}
  virtual void progress(std::string_view /*stage*/, uint64_t /*done*/, uint64_t /*total*/, const std::string& /*what*/) {}
  virtual void stage_end(std::string_view /*stage*/, const std::string& /*summary*/) {}
  virtual void text(Channel, const std::string&) {}
  // After the quantize stage of a whole-model run, before packing (the file not yet written).
  // Not called for streamed runs (no whole model in memory) or GGUF exports.
  virtual void quantized(const QuantizedModel&) {}
};

// The files of a checkpoint given as a path: a folder's entries, or the file itself.
std::vector<std::string> checkpoint_files(const std::string& path);

// Runs the plan (which must have passed validate()). Throws quarot::Error on bad input; writes
// the packed file and the report atomically.
RunReport run(const Plan& p, Observer& observer);

}  // namespace quarot
