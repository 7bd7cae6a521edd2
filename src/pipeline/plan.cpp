// The Plan: built from the options once, validated once, serialized once (the report's config,
// --dry-run).
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "quarot/checkpoint.hpp"
#include "quarot/gguf.hpp"
#include "quarot/hadamard.hpp"
#include "quarot/options.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/progress.hpp"
#include "quarot/qdec.hpp"
#include "quarot/rotate.hpp"
#include "pipeline_detail.hpp"

namespace quarot {

using json = nlohmann::json;

namespace {

// The paper's settings: weights symmetric with clip search; activations and the KV cache (KV
// asymmetric, group = head_dim) at the given bits.
QuantConfig weights(WeightMethod m, int bits, int group) {
  QuantConfig c;
  c.method = m;
  c.gptq.weights = {{bits, true}, group, true};
  return c;
}
QuantConfig with_acts(QuantConfig c, int a, int kv) {
  c.act.a_bits = a;
  c.act.k_bits = c.act.v_bits = kv;
  c.act.kv_asym = true;
  // The paper's clip ratios (activations 0.9, KV 0.95) are its 4-bit settings. At 8 bits,
  // clipping every token's largest values costs more than the finer grid saves: measured on
  // stories260K W8A8KV8 (2026-11-23): +3.58% PPL with them, +0.13% without.
  c.act.a_clip = a <= 4 ? 0.9 : 1.0;
  c.act.kv_clip = kv <= 4 ? 0.95 : 1.0;
  c.kv_clip_follows_model = kv <= 4;  // 0.95 only where head_dim is large enough (apply_model_defaults)
  return c;
}
// A GGUF export: the block type says the file; the QuantConfig says what the flags may change
// (weight method, rotation seed and kind, GPTQ's damp and act order), over W4A16's weights.
Preset gguf(GgufType type, bool k_mix, WeightMethod method, bool rotate) {
  GgufExportOptions g;
  g.type = type;
  g.k_mix = k_mix;
  g.method = method;
  g.rotate = rotate;
  Preset p{weights(WeightMethod::Gptq, 4, 128), g};
  p.quant.method = g.method;
  p.quant.rotate = g.rotate;
  p.quant.gptq.weights.clip_search = g.clip_search;
  return p;
}

struct PresetRow {
  const char* name;
  Preset (*make)();
};

// Every --preset, in --help's order.
const PresetRow kPresets[] = {
    {"w4a4kv4", [] { return Preset{with_acts(weights(WeightMethod::Gptq, 4, 0), 4, 4), {}}; }},
    // W4A4KV4 with 8-bit keys: at head_dim 8-16 a 4-bit key grid flips attention (logits in the
    // hundreds); issue 17's ablation, stories260K GPTQ 8.36 -> 5.16. Clip as W4A4KV4's.
    {"w4a4k8v4",
     [] {
       Preset p{with_acts(weights(WeightMethod::Gptq, 4, 0), 4, 4), {}};
       p.quant.act.k_bits = 8;
       return p;
     }},
    {"w4a4kv4-rtn", [] { return Preset{with_acts(weights(WeightMethod::Rtn, 4, 0), 4, 4), {}}; }},
    {"w4a16", [] { return Preset{weights(WeightMethod::Gptq, 4, 128), {}}; }},
    {"w4a16-rtn", [] { return Preset{weights(WeightMethod::Rtn, 4, 128), {}}; }},
    {"w8a8kv8", [] { return Preset{with_acts(weights(WeightMethod::Rtn, 8, 0), 8, 8), {}}; }},
    {"w6a6kv6", [] { return Preset{with_acts(weights(WeightMethod::Gptq, 6, 0), 6, 6), {}}; }},
    {"none",
     [] {
       Preset p;
       p.quant.rotate = false;
       return p;
     }},
    {"gguf-q4_0", [] { return gguf(GgufType::Q4_0, false, WeightMethod::Gptq, true); }},
    {"gguf-q4_1", [] { return gguf(GgufType::Q4_1, false, WeightMethod::Gptq, true); }},
    {"gguf-iq4_nl", [] { return gguf(GgufType::IQ4_NL, false, WeightMethod::Gptq, true); }},
    {"gguf-q4_k_m", [] { return gguf(GgufType::Q4_K, true, WeightMethod::Gptq, true); }},
    // 8 bits: llama-quantize's own rounding loses nothing worth a calibration pass.
    {"gguf-q8_0", [] { return gguf(GgufType::Q8_0, false, WeightMethod::None, true); }},
    {"gguf-f32", [] { return gguf(GgufType::F32, false, WeightMethod::None, false); }},
};

}  // namespace

std::vector<std::string> plan_preset_names() {
  std::vector<std::string> names;
  for (const auto& row : kPresets) names.emplace_back(row.name);
  return names;
}

Preset plan_preset(const std::string& name) {
  for (const auto& row : kPresets)
    if (name == row.name) {
      Preset p = row.make();
      p.quant.preset = name;
      if (p.gguf) p.gguf->preset = p.gguf->recipe = name;
      return p;
    }
  std::string known;
  for (const auto& n : plan_preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw UsageError("--preset", "unknown preset '" + name + "' (known: " + known + ")");
}

namespace {
bool is_gguf_path(const std::string& path) { return path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0; }

// The numeric options as given, against the option table (options.hpp), before the preset is
// applied: a value that means "the preset's" (0 or -1, PlanOptions' default) is not checked
// here, the resolved value is (validate()). A library caller gets the CLI's ranges too.
void check_given_ranges(const PlanOptions& a) {
  const PlanOptions unset;
  const struct {
    const char* name;
    double value, unset_value;
  } given[] = {
      {"w-bits", double(a.w_bits), double(unset.w_bits)},       {"w-group", double(a.w_group), double(unset.w_group)},
      {"a-group", double(a.a_group), double(unset.a_group)},    {"a-bits", double(a.a_bits), double(unset.a_bits)},
      {"k-bits", double(a.k_bits), double(unset.k_bits)},       {"v-bits", double(a.v_bits), double(unset.v_bits)},
      {"classifier-bits", double(a.classifier_bits), double(unset.classifier_bits)},
      {"a-clip", a.a_clip, unset.a_clip},                       {"kv-clip", a.kv_clip, unset.kv_clip},
      {"qdec-slowdown", a.qdec_slowdown, unset.qdec_slowdown},  {"damp", a.damp, NAN},
      {"nsamples", double(a.nsamples), NAN},                    {"seqlen", double(a.seqlen), NAN},
      {"ctx", double(a.ctx), NAN},                              {"chunks", double(a.chunks), NAN},
      {"outlier-windows", double(a.outlier_windows), NAN},      {"threads", double(a.threads), NAN},
      {"qdec-bits", double(a.qdec_bits), NAN},
      {"budget-kv-bits", a.budget_kv_bits, unset.budget_kv_bits}, {"target-kld", a.target_kld, unset.target_kld},
      {"budget-act-bits", a.budget_act_bits, unset.budget_act_bits},
      {"plan-windows", double(a.plan_windows), NAN},
  };
  for (const auto& g : given)
    if (g.value != g.unset_value) check_option_value(g.name, g.value);
  for (const auto& [name, value] : {std::pair<const char*, const std::string&>{"rotation", a.rotation}, {"progress", a.progress}, {"w-method", a.w_method}, {"gguf-embd-type", a.gguf_embd_type}}) {
    if (value.empty()) continue;
    if (auto p = option_choice_problem(*find_option_spec(name), value)) throw Error(std::string("--") + name, *p);
  }
}
}  // namespace

Plan make_plan(const PlanOptions& a) {
  try {
    check_given_ranges(a);
  } catch (const Error& e) {
    throw UsageError("", e.what());
  }
  Plan p;
  p.model = a.model;
  p.outputs = {a.output, a.report_dir, a.json};
  QuantConfig& cfg = p.quant;
  {
    const Preset preset = plan_preset(a.preset);
    cfg = preset.quant;
    if (preset.gguf) p.gguf_preset = a.preset;  // the export's options (block type) come from the table again at run time
  }
  p.gguf_embd_type = a.gguf_embd_type;
  auto& wq = cfg.gptq.weights;
  if (!a.w_method.empty()) cfg.method = a.w_method == "rtn" ? WeightMethod::Rtn : a.w_method == "gptq" ? WeightMethod::Gptq : WeightMethod::None;
  if (a.w_bits) wq.grid.bits = a.w_bits;
  if (a.w_group >= 0) wq.group_size = a.w_group;
  if (a.w_asym) wq.grid.symmetric = false;
  if (a.no_clip_search) wq.clip_search = false;
  cfg.gptq.damp = a.damp;
  cfg.gptq.act_order = a.act_order;
  cfg.gptq.static_groups = a.static_groups;
  if (a.a_bits) cfg.act.a_bits = a.a_bits;
  if (a.a_clip > 0) cfg.act.a_clip = a.a_clip;
  if (a.a_group >= 0) cfg.act.a_group = a.a_group;
  if (a.k_bits) cfg.act.k_bits = a.k_bits;
  if (a.v_bits) cfg.act.v_bits = a.v_bits;
  if (a.kv_clip > 0) {
    cfg.act.kv_clip = a.kv_clip;
    cfg.kv_clip_follows_model = false;  // the user's value, whatever the model's head_dim
  }
  if (a.classifier_bits)
    cfg.classifier_bits = a.classifier_bits;
  else if (!a.output.empty() && !is_gguf_path(a.output))
    cfg.classifier_bits = 8;  // a packed file's INT8 embedding/classifier tables (docs/format.md)
  // A W4A16 recipe the packed format can hold runs its activations as 16-bit codes per weight
  // group (int4_gemm_a16_int16), and its fake-quant forward simulates that; not a GGUF's
  // (llama.cpp quantizes activations its own way).
  if (cfg.act.a_bits >= 16 && cfg.method != WeightMethod::None && wq.grid.bits <= 4 && wq.group_size % kInt4Block == 0 &&
      p.gguf_preset.empty() && !is_gguf_path(a.output))
    cfg.act.a16_group = wq.group_size;
  if (a.no_rotate) cfg.rotate = false;
  cfg.rotation.r1_kind = a.rotation == "random" ? R1Kind::Random : R1Kind::Hadamard;
  cfg.rotation.seed = a.seed;
  cfg.seed = a.seed;
  cfg.nsamples = a.nsamples;
  cfg.seqlen = a.seqlen;
  p.calibration = {a.calib, a.tokenizer};
  p.evaluation = {a.eval_ids, a.ctx, a.chunks, a.outlier_windows, a.eval_text};
  p.task = {a.task, a.task_file, a.task_labels, a.task_limit};
  // --qdec-k, --qdec-slowdown and --qdec-sweep imply --qdec.
  p.qdec = {a.qdec || !a.qdec_k.empty() || a.qdec_slowdown > 0 || a.qdec_sweep, a.qdec_bits, a.qdec_k, a.qdec_slowdown, a.qdec_sweep};
  p.planner = {a.budget_kv_bits, a.target_kld, a.plan_windows, a.budget_act_bits};
  p.run.threads = a.threads;
  p.run.progress = a.quiet ? "none" : a.progress;
  p.run.stream = a.stream;
  p.run.verbose = a.verbose > 0;
  p.run.quiet = a.quiet;
  p.run.checksum = !a.no_checksum;
  p.run.dry_run = a.dry_run;
  validate(p);
  return p;
}

void validate(const Plan& p) {
  const QuantConfig& cfg = p.quant;
  try {
    // The resolved values (preset + overrides) against the same table rows as the flags.
    const auto& w = cfg.gptq.weights;
    auto in_range = [](const char* name, auto value) { check_option_value(name, double(value)); };
    in_range("w-bits", w.grid.bits);
    in_range("w-group", w.group_size);
    in_range("a-bits", cfg.act.a_bits);
    in_range("k-bits", cfg.act.k_bits);
    in_range("v-bits", cfg.act.v_bits);
    in_range("a-clip", cfg.act.a_clip);
    in_range("kv-clip", cfg.act.kv_clip);
    in_range("a-group", cfg.act.a_group);
    in_range("classifier-bits", cfg.classifier_bits);
    in_range("damp", cfg.gptq.damp);
    in_range("nsamples", cfg.nsamples);
    in_range("seqlen", cfg.seqlen);
    in_range("qdec-bits", p.qdec.bits);
    in_range("threads", p.run.threads);
    in_range("ctx", p.evaluation.ctx);
    in_range("chunks", p.evaluation.chunks);
    in_range("outlier-windows", p.evaluation.outlier_windows);
    check_act_options(cfg.act);
    if (!p.gguf_embd_type.empty() && (p.gguf_preset.empty() || !is_gguf_path(p.outputs.packed)))
      throw Error("--gguf-embd-type", "sets a GGUF file's token embedding type: only with -o OUT.gguf and a gguf-* preset");
    if (!p.gguf_preset.empty()) {
      if (!is_gguf_path(p.outputs.packed)) throw Error("--preset " + p.gguf_preset, "writes a GGUF file: give -o OUT.gguf");
      if (cfg.act.any()) throw Error("--preset " + p.gguf_preset, "llama.cpp quantizes activations itself: no --a-bits/--k-bits/--v-bits with a GGUF output");
      // None is llama-quantize's own rounding where the preset says so (gguf-q8_0, gguf-f32);
      // over a GPTQ/RTN preset it is refused (it was refused for gguf-q8_0 too).
      if (cfg.method == WeightMethod::None && plan_preset(p.gguf_preset).gguf->method != WeightMethod::None)
        throw Error("--w-method none", "a GGUF block type needs quantized weights (rtn or gptq), or --preset gguf-f32");
      if (p.run.stream) throw Error("--stream", "GGUF export runs on the whole model in memory");
      if (p.qdec.enabled) throw Error("--qdec", "llama.cpp has no QDEC residuals: not with a GGUF output");
      if (cfg.classifier_bits != 16) throw Error("--classifier-bits", "a GGUF output sets the classifier's type by preset");
      if (!p.gguf_embd_type.empty() && (plan_preset(p.gguf_preset).gguf->type == GgufType::F32 || plan_preset(p.gguf_preset).gguf->type == GgufType::F16))
        throw Error("--gguf-embd-type", "--preset " + p.gguf_preset + " writes every tensor as it is: the embedding type is for a block-quantized GGUF");
    } else if (is_gguf_path(p.outputs.packed)) {
      std::string names;
      for (const auto& n : plan_preset_names())
        if (plan_preset(n).gguf) names += (names.empty() ? "" : ", ") + n;
      throw Error("-o " + p.outputs.packed, "a .gguf output needs a GGUF preset (" + names + ")");
    } else if (!p.outputs.packed.empty()) {
      try {
        (void)make_pack_recipe(cfg);  // the packed format can hold it
      } catch (const Error& e) {
        // Refused here, before any work (the writer would refuse after loading), with what holds
        // these weights instead.
        const std::string why = e.what();
        if (cfg.method == WeightMethod::None)
          throw Error("", why + "; the packed INT4 file holds quantized weights only: for a float copy use quarot-convert or " +
                              "--preset gguf-f32 -o OUT.gguf, or drop -o to evaluate without writing");
        if (cfg.gptq.weights.grid.bits > 4)
          throw Error("", why + "; for 8-bit weights write a GGUF file (--preset gguf-q8_0 -o OUT.gguf), or drop -o to evaluate the " +
                              std::to_string(cfg.gptq.weights.grid.bits) + "-bit model in simulation");
        throw;
      }
    }
    if (p.run.stream && cfg.method == WeightMethod::None) throw Error("--stream", "needs quantized weights (--w-method rtn or gptq)");
    if (p.qdec.enabled) {
      if (cfg.method == WeightMethod::None) throw Error("--qdec", "needs quantized weights (--w-method rtn or gptq)");
      (void)parse_qdec_k(p.qdec.k.empty() ? "4" : p.qdec.k);
      if (p.qdec.slowdown_percent > 0 && p.outputs.packed.empty()) throw Error("--qdec-slowdown", "tunes on the integer path: give -o OUT");
      if (p.qdec.sweep && p.evaluation.ids.empty() && p.evaluation.text.empty()) throw Error("--qdec-sweep", "needs --eval-ids or --eval-text");
    }
    if (!p.evaluation.ids.empty() && !p.evaluation.text.empty()) throw Error("--eval-text", "give --eval-ids or --eval-text, not both");
    if (!p.task.name.empty() && p.task.name != "hellaswag" && p.task.name != "piqa")
      throw Error("--task " + p.task.name, "must be hellaswag or piqa");
    if (!p.task.name.empty() && p.task.file.empty()) throw Error("--task", "needs --task-file");
    if (p.task.name.empty() && (!p.task.file.empty() || !p.task.labels.empty() || p.task.limit != 0))
      throw Error("--task-file/--task-labels/--task-limit", "need --task hellaswag|piqa");
    if (p.task.limit < 0) throw Error("--task-limit", "must be >= 0, got " + std::to_string(p.task.limit));
    if (p.planner.enabled()) {
      // The planner chooses between 4- and 8-bit K/V per layer and measures KLD against the float
      // model on calibration windows: a whole model in memory with a quantized KV cache.
      const char* flag = p.planner.budget_kv_bits > 0 ? "--budget-kv-bits" : p.planner.target_kld > 0 ? "--target-kld" : "--budget-act-bits";
      if (!p.gguf_preset.empty()) throw Error(flag, "plans the packed integer path: not with a GGUF output");
      if (p.run.stream) throw Error(flag, "measures against the float model in memory: not with --stream");
      if (p.calibration.path.empty() && !p.run.dry_run) throw Error(flag, "measures on calibration data only: give --calib FILE");
      if (cfg.act.k_bits >= 16 || cfg.act.v_bits >= 16)
        throw Error(flag, "chooses 4 or 8 bits for K and V: the preset must quantize the KV cache (--k-bits/--v-bits 2..8)");
      if (p.qdec.enabled) throw Error(flag, "not with --qdec (QDEC's simulation would not follow the per-layer settings)");
      check_option_value("plan-windows", p.planner.windows);
      if (p.planner.budget_kv_bits > 0) check_option_value("budget-kv-bits", p.planner.budget_kv_bits);
      if (p.planner.target_kld > 0) check_option_value("target-kld", p.planner.target_kld);
      if (p.planner.budget_act_bits > 0) {
        check_option_value("budget-act-bits", p.planner.budget_act_bits);
        if (cfg.act.a_bits != 4)
          throw Error("--budget-act-bits", "chooses 4 or 8 activation bits per layer: the preset must quantize activations to 4 bits (--a-bits 4)");
      }
    }
    if (cfg.method == WeightMethod::Gptq && p.calibration.path.empty() && !p.run.dry_run)
      throw Error("--calib", "GPTQ needs calibration data (--calib FILE: *.ids or text)");
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError("", e.what());
  }
}

QuantConfig resolve_against_model(const Plan& p, const ModelConfig& c) {
  QuantConfig cfg = p.quant;
  const std::string& model = p.model;
  if (!p.gguf_preset.empty()) {
    // The export's own rotation (no online transforms), over the plan's kind and seed.
    const GgufExportOptions g = plan_preset(p.gguf_preset).gguf.value();
    RotationOptions r = g.rotation;
    r.r1_kind = cfg.rotation.r1_kind;
    if (cfg.rotate) {
      try {
        check_rotation_sizes(c, r);
      } catch (const Error& e) {
        throw UsageError(model, e.what());
      }
    }
    if (c.family == Family::Qwen2 && c.o_bias)
      throw UsageError(model, "Qwen2 with an o_proj bias has no GGUF tensor in llama.cpp's qwen2 architecture: not with --preset " + p.gguf_preset);
    cfg.seqlen = std::min(cfg.seqlen, c.max_positions);
    return cfg;  // weights go onto llama.cpp's blocks (widths no block holds fall back or are padded), not cfg's groups
  }
  if (cfg.method != WeightMethod::None) {
    // Every linear's input width must be a whole number of weight groups (quant.cpp's rule).
    const int group = cfg.gptq.weights.group_size;
    if (group > 0) {
      for (const LinearSpec& spec : kLinearSpecs) {
        const int64_t cols = config_dim(c, spec.cols);
        if (cols % group != 0)
          throw UsageError("--w-group", "group size " + std::to_string(group) + (p.quant.preset.empty() ? "" : " (preset " + p.quant.preset + ")") +
                                            " does not divide the input width " + std::to_string(cols) + " of " + spec.name + " in " + model +
                                            ": give --w-group 0 (per output channel) or a divisor of the model's widths");
      }
    }
  }
  if (cfg.rotate) {
    try {
      check_rotation_sizes(c, cfg.rotation);
    } catch (const Error& e) {
      throw UsageError(model, e.what());
    }
  }
  cfg.seqlen = std::min(cfg.seqlen, c.max_positions);
  (void)apply_model_defaults(cfg, c);
  return cfg;
}

std::string plan_json(const Plan& p, int indent) {
  const QuantConfig& c = p.quant;
  const auto& w = c.gptq.weights;
  json j = {
      {"preset", c.preset},
      {"rotate", c.rotate},
      {"rotation", {{"kind", c.rotation.r1_kind == R1Kind::Hadamard ? "hadamard" : "random"}, {"seed", c.rotation.seed}}},
      {"weights",
       {{"method", c.method == WeightMethod::None ? "none" : c.method == WeightMethod::Rtn ? "rtn" : "gptq"},
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
      {"calibration",
       {{"path", p.calibration.path}, {"tokenizer", p.calibration.tokenizer}, {"nsamples", c.nsamples}, {"seqlen", c.seqlen}, {"seed", c.seed}}},
      {"evaluation", {{"ids", p.evaluation.ids}, {"ctx", p.evaluation.ctx}, {"chunks", p.evaluation.chunks}}},
      {"qdec",
       {{"enabled", p.qdec.enabled}, {"bits", p.qdec.bits}, {"k_chunk", p.qdec.k}, {"slowdown_percent", p.qdec.slowdown_percent}, {"sweep", p.qdec.sweep}}},
      {"output", p.outputs.packed}};
  if (!p.gguf_preset.empty()) j["format"] = "gguf";
  if (!p.gguf_embd_type.empty()) j["gguf_embd_type"] = p.gguf_embd_type;  // only when given
  if (!p.evaluation.text.empty()) j["evaluation"]["text"] = p.evaluation.text;  // only when given, as "task"
  if (!p.task.name.empty())  // only when asked: the config of runs without a task stays as it was
    j["task"] = {{"name", p.task.name}, {"file", p.task.file}, {"labels", p.task.labels}, {"limit", p.task.limit}};
  if (p.planner.enabled())  // only when asked: the config of unplanned runs stays as it was
  {
    j["planner"] = {{"budget_kv_bits", p.planner.budget_kv_bits}, {"target_kld", p.planner.target_kld}, {"windows", p.planner.windows}};
    if (p.planner.budget_act_bits > 0) j["planner"]["budget_act_bits"] = p.planner.budget_act_bits;  // only when asked, as "planner"
  }
  return j.dump(indent);
}

namespace pipeline_detail {

double bits_per_weight(const QuantConfig& c, int64_t cols) {
  const auto& w = c.gptq.weights;
  const double group = w.group_size > 0 ? w.group_size : double(cols);
  return (w.grid.bits <= 4 ? 4.0 : 8.0) + 32.0 / group + (w.grid.symmetric ? 0.0 : 8.0 / group);
}

int64_t linear_params(const ModelConfig& c) {
  return int64_t(c.n_layers) * (int64_t(c.hidden) * (2 * c.q_dim() + 2 * c.kv_dim()) + 3 * int64_t(c.hidden) * c.intermediate);
}

std::string vformat(const char* fmt, va_list ap) {
  va_list again;
  va_copy(again, ap);
  const int n = std::vsnprintf(nullptr, 0, fmt, ap);
  std::string s(std::size_t(n) + 1, '\0');
  std::vsnprintf(s.data(), s.size(), fmt, again);
  va_end(again);
  s.resize(std::size_t(n));
  return s;
}

}  // namespace pipeline_detail

namespace {

// printf-style append; C varargs so the compilers check every format against its arguments.
__attribute__((format(printf, 2, 3))) void append(std::string& out, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  out += pipeline_detail::vformat(fmt, ap);
  va_end(ap);
}

}  // namespace

std::string describe_plan(const Plan& p) {
  using pipeline_detail::bits_per_weight;
  QuantConfig cfg = p.quant;
  const auto c = read_model_config(p.model);
  (void)resolve_against_model(p, c);  // fails as the run would, before it reads any weight
  const std::string model_defaults = apply_model_defaults(cfg, c);  // as the run will
  const int64_t lin = pipeline_detail::linear_params(c);
  const int64_t other = int64_t(c.vocab) * c.hidden * (c.tied_embeddings && !cfg.rotate ? 1 : 2) + int64_t(c.n_layers) * 2 * c.hidden + c.hidden;
  std::string o;
  append(o, "plan for %s (dry run: nothing is read beyond the config, nothing is written)\n", p.model.c_str());
  append(o, "  model: %d layers, hidden %d, FFN %d, %d heads (%d KV), head_dim %d, vocab %d; %.1f M linear weights\n", c.n_layers,
         c.hidden, c.intermediate, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab, double(lin) / 1e6);
  append(o, "  flags: %s\n", cfg.describe().c_str());
  append(o, "  command: %s\n", plan_command(p).c_str());
  {
    // run()'s load stage rule: the fp32 model, its rotated/quantized copy and scratch, else streamed.
    const double params = double(lin + other), need = params * 4 * 2.2, avail = double(available_memory_bytes());
    const bool streamed = p.run.stream || (cfg.method != WeightMethod::None && avail > 0 && need > avail);
    auto size = [](double b) {
      char t[32];
      std::snprintf(t, sizeof t, b < double(1 << 30) ? "%.1f MiB" : "%.2f GiB", b < double(1 << 30) ? b / (1 << 20) : b / double(1 << 30));
      return std::string(t);
    };
    append(o, "  memory: about %s whole in memory (fp32 model twice + scratch), %s available: %s\n", size(need).c_str(), size(avail).c_str(),
           streamed ? "streamed layer by layer (--stream)" : "whole in memory");
  }
  if (!p.gguf_preset.empty()) {
    const GgufExportOptions g = plan_preset(p.gguf_preset).gguf.value();
    append(o, "  GGUF for llama.cpp: %s blocks%s; weights %s%s\n", std::string(gguf_type_name(g.type)).c_str(),
           g.k_mix ? " (Q6_K on attn_v/ffn_down where llama-quantize puts it)" : "",
           cfg.method == WeightMethod::Gptq ? "GPTQ" : cfg.method == WeightMethod::Rtn ? "RTN" : "as llama-quantize rounds them",
           cfg.method == WeightMethod::Gptq ? (", calibration " + std::to_string(cfg.nsamples) + " x " + std::to_string(std::min(cfg.seqlen, c.max_positions)) +
                                               " tokens from " + (p.calibration.path.empty() ? "(missing: --calib is required)" : p.calibration.path)).c_str()
                                            : "");
    if (!p.gguf_embd_type.empty()) append(o, "  token embedding: %s (--gguf-embd-type)\n", p.gguf_embd_type.c_str());
    append(o, "  rotate: %s\n", cfg.rotate ? "fuse RMSNorm scales, R1 on the residual stream, R2 within each head (absorbed; no online transforms)" : "no");
    append(o, "  output: %s (FFN widths no block holds are zero-padded, exactly)\n", p.outputs.packed.c_str());
    return o;
  }
  if (!model_defaults.empty()) append(o, "  %s\n", model_defaults.c_str());
  if (cfg.rotate) {
    auto h = [&](int n) { return Hadamard::make(n, cfg.rotation.seed).construction(); };
    append(o, "  rotate: fuse RMSNorm scales into the next linears%s\n", c.tied_embeddings ? " (untie the embeddings first)" : "");
    append(o, "    R1 residual stream (absorbed): %s\n",
           cfg.rotation.r1_kind == R1Kind::Hadamard ? ("randomized Hadamard " + h(c.hidden)).c_str() : "seeded random orthogonal");
    append(o, "    R2 per head on v_proj/o_proj (absorbed): Hadamard %s\n", h(c.head_dim).c_str());
    append(o, "    online, fp32: R3 on queries and keys after RoPE: %s; cross-head at o_proj's input: %s; R4 at down_proj's input: %s\n",
           h(c.head_dim).c_str(), h(c.n_heads).c_str(), h(c.intermediate).c_str());
  } else {
    append(o, "  rotate: no\n");
  }
  if (cfg.method == WeightMethod::None) {
    append(o, "  weights: float\n");
  } else {
    const double bpw = bits_per_weight(cfg, c.hidden);
    const auto& g = cfg.gptq.weights;
    append(o, "  weights: %s, %d-bit %s, %s; %.3f bits per weight with scales\n", cfg.method == WeightMethod::Gptq ? "GPTQ" : "RTN",
           g.grid.bits, g.grid.symmetric ? "symmetric" : "asymmetric",
           g.group_size ? ("groups of " + std::to_string(g.group_size)).c_str() : "per output channel", bpw);
    if (cfg.method == WeightMethod::Gptq)
      append(o, "  calibration: %d x %d tokens from %s\n", cfg.nsamples, std::min(cfg.seqlen, c.max_positions),
             p.calibration.path.empty() ? "(missing: --calib is required)" : p.calibration.path.c_str());
    append(o, "  activations: %s; KV cache: K %d-bit, V %d-bit, %s, clip %.2f\n",
           cfg.act.a_bits < 16 ? ((cfg.act.a_group > 0 ? "per group of " + std::to_string(cfg.act.a_group) + " channels " : std::string("per token ")) +
                                  std::to_string(cfg.act.a_bits) + "-bit, clip " + std::to_string(cfg.act.a_clip).substr(0, 4)).c_str()
                               : "16-bit",
           cfg.act.k_bits, cfg.act.v_bits, cfg.act.kv_asym ? "asymmetric per head" : "symmetric per head", cfg.act.kv_clip);
    if (p.planner.enabled())
      append(o, "  precision planner: K and V per layer 4 or 8 bits%s%s%s, clips per layer (activations, K, V), from %d calibration windows "
                "(activation bits %d%s; weight bits stay %d: the packed format stores 2..4-bit weights)\n",
             p.planner.budget_kv_bits > 0 ? (", at most " + std::to_string(p.planner.budget_kv_bits).substr(0, 4) + " bits per cached element").c_str() : "",
             p.planner.target_kld > 0 ? (", until the calibration KLD is at most " + std::to_string(p.planner.target_kld)).c_str() : "",
             p.planner.budget_act_bits > 0 ? ("; activations per layer 4 or 8 bits, at most " + std::to_string(p.planner.budget_act_bits).substr(0, 4) + " bits on average").c_str()
             : p.planner.target_kld > 0 && cfg.act.a_bits == 4 ? "; activations per layer 4 or 8 bits" : "",
             p.planner.windows, cfg.act.a_bits, p.planner.budget_act_bits > 0 || (p.planner.target_kld > 0 && cfg.act.a_bits == 4) ? " or 8 per layer" : " in every layer", cfg.gptq.weights.grid.bits);
    double est = double(lin) * bpw / 8 + double(other) * 4;
    if (!p.outputs.packed.empty()) {  // the file's bytes, tensor by tensor (the header estimated)
      PackRecipe r = make_pack_recipe(cfg);
      est = double(packed_file_bytes_estimate(c, r, c.tied_embeddings && !cfg.rotate));
    }
    append(o, "  output: %s, about %.1f MiB (fp32 model %.1f MiB; %.3fx)\n",
           p.outputs.packed.empty() ? "(none: simulation only)" : p.outputs.packed.c_str(), est / (1 << 20),
           double(lin + other) * 4 / (1 << 20), est / (double(lin + other) * 4));
  }
  append(o, "  evaluation: %s\n",
         !p.evaluation.text.empty() ? (p.evaluation.text + " (text, tokenized)").c_str() : p.evaluation.ids.empty() ? "none (--eval-ids)" : p.evaluation.ids.c_str());
  if (!p.task.name.empty())
    append(o, "  zero-shot %s: %s, %s; float vs quantized%s\n", p.task.name.c_str(), p.task.file.c_str(),
           p.task.limit ? ("first " + std::to_string(p.task.limit) + " items").c_str() : "every item",
           p.outputs.packed.empty() ? "" : " vs packed");
  return o;
}

// ---------------------------------------------------------------- the reproducing command

std::string shell_quote(const std::string& s) {
  const bool plain = !s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./=:,+-@%") == std::string::npos;
  if (plain) return s;
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

std::string plan_command(const Plan& p) {
  // What the preset alone gives (for a GGUF preset, with its output): only differences are
  // flags, so a model-dependent default (the KV clip) stays model-dependent.
  PlanOptions base_options;
  base_options.model = p.model;
  base_options.preset = p.quant.preset;
  base_options.dry_run = true;
  if (!p.gguf_preset.empty()) base_options.output = p.outputs.packed;
  QuantConfig base;
  try {
    base = make_plan(base_options).quant;
  } catch (const Error&) {
    base = QuantConfig{};  // cannot happen for a valid plan; every value then becomes a flag
  }
  const QuantConfig& c = p.quant;
  std::string o = "quarot-quantize " + shell_quote(p.model) + " --preset " + shell_quote(c.preset);
  auto flag = [&](const char* name) { o += std::string(" ") + name; };
  auto opt = [&](const char* name, const std::string& v) { o += std::string(" ") + name + " " + shell_quote(v); };
  auto num = [](double v) {  // the shortest text that reads back as v (0.05, not 0.050000000000000003)
    char b[64];
    return std::string(b, std::to_chars(b, b + sizeof b, v).ptr);
  };
  auto method = [](WeightMethod m) { return m == WeightMethod::None ? "none" : m == WeightMethod::Rtn ? "rtn" : "gptq"; };
  const auto &w = c.gptq.weights, &bw = base.gptq.weights;
  if (!p.outputs.packed.empty()) opt("-o", p.outputs.packed);
  if (!p.outputs.report_dir.empty()) opt("--report-dir", p.outputs.report_dir);
  if (!p.outputs.json.empty()) opt("--json", p.outputs.json);
  if (!c.rotate && base.rotate) flag("--no-rotate");
  if (c.rotation.r1_kind != base.rotation.r1_kind) opt("--rotation", c.rotation.r1_kind == R1Kind::Random ? "random" : "hadamard");
  if (c.seed != 0) opt("--seed", std::to_string(c.seed));
  if (c.method != base.method) opt("--w-method", method(c.method));
  if (w.grid.bits != bw.grid.bits) opt("--w-bits", std::to_string(w.grid.bits));
  if (w.group_size != bw.group_size) opt("--w-group", std::to_string(w.group_size));
  if (!w.grid.symmetric && bw.grid.symmetric) flag("--w-asym");
  if (!w.clip_search && bw.clip_search) flag("--no-clip-search");
  if (c.gptq.damp != base.gptq.damp) opt("--damp", num(c.gptq.damp));
  if (c.gptq.act_order) flag("--act-order");
  if (c.gptq.static_groups) flag("--static-groups");
  if (c.classifier_bits != base.classifier_bits) opt("--classifier-bits", std::to_string(c.classifier_bits));
  if (c.act.a_bits != base.act.a_bits) opt("--a-bits", std::to_string(c.act.a_bits));
  if (c.act.a_clip != base.act.a_clip) opt("--a-clip", num(c.act.a_clip));
  if (c.act.a_group != base.act.a_group) opt("--a-group", std::to_string(c.act.a_group));
  if (c.act.k_bits != base.act.k_bits) opt("--k-bits", std::to_string(c.act.k_bits));
  if (c.act.v_bits != base.act.v_bits) opt("--v-bits", std::to_string(c.act.v_bits));
  if (c.act.kv_clip != base.act.kv_clip || c.kv_clip_follows_model != base.kv_clip_follows_model) opt("--kv-clip", num(c.act.kv_clip));
  if (c.nsamples != base.nsamples) opt("--nsamples", std::to_string(c.nsamples));
  if (c.seqlen != base.seqlen) opt("--seqlen", std::to_string(c.seqlen));
  if (!p.calibration.path.empty()) opt("--calib", p.calibration.path);
  if (!p.calibration.tokenizer.empty()) opt("--tokenizer", p.calibration.tokenizer);
  if (p.qdec.enabled) flag("--qdec");
  if (p.qdec.bits != PlanOptions{}.qdec_bits) opt("--qdec-bits", std::to_string(p.qdec.bits));
  if (!p.qdec.k.empty()) opt("--qdec-k", p.qdec.k);
  if (!p.gguf_embd_type.empty()) opt("--gguf-embd-type", p.gguf_embd_type);
  if (p.qdec.slowdown_percent > 0) opt("--qdec-slowdown", num(p.qdec.slowdown_percent));
  if (p.qdec.sweep) flag("--qdec-sweep");
  if (p.planner.budget_kv_bits > 0) opt("--budget-kv-bits", num(p.planner.budget_kv_bits));
  if (p.planner.target_kld > 0) opt("--target-kld", num(p.planner.target_kld));
  if (p.planner.budget_act_bits > 0) opt("--budget-act-bits", num(p.planner.budget_act_bits));
  if (p.planner.windows != PlanOptions{}.plan_windows) opt("--plan-windows", std::to_string(p.planner.windows));
  if (!p.evaluation.ids.empty()) opt("--eval-ids", p.evaluation.ids);
  if (p.evaluation.ctx) opt("--ctx", std::to_string(p.evaluation.ctx));
  if (p.evaluation.chunks) opt("--chunks", std::to_string(p.evaluation.chunks));
  if (p.evaluation.outlier_windows != PlanOptions{}.outlier_windows) opt("--outlier-windows", std::to_string(p.evaluation.outlier_windows));
  if (p.run.stream) flag("--stream");
  if (!p.run.checksum) flag("--no-checksum");
  return o;
}

}  // namespace quarot
