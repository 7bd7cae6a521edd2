#pragma once
// Reports: SVG charts drawn by the project itself (no plotting dependency), the Markdown report
// made from report.json, and a small JSON-Schema validator (the subset docs/report.schema.json
// uses) so that tests and `quarot-batch --resume` can check a report.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace quarot {

struct ChartSeries {
  std::string name;
  std::vector<double> x, y;
  std::vector<std::string> labels;  // optional, one per point (drawn next to it)
  bool dashed = false;
};

struct ChartOptions {
  std::string title, x_label, y_label;
  bool log_y = false;
  bool lines = true;  // false: points only (scatter)
  int width = 720, height = 420;
};

// A complete, well-formed SVG document: axes with ticks, one polyline/point set per series
// (each series in its own <g class="series" data-name="...">), and a legend.
std::string svg_chart(const std::vector<ChartSeries>& series, const ChartOptions& opts);


// Validates `document` (JSON text) against `schema` (JSON text): supports type (incl. arrays of
// types), required, properties, additionalProperties (bool), items, enum, const, minimum,
// minItems, and $ref to "#/definitions/...". Returns the violations, empty when valid; each is
// "path: problem".
std::vector<std::string> validate_json_schema(const std::string& schema, const std::string& document);

// One evaluation's figures as report.json holds them. The KLD figures are absent (a float
// model's own evaluation), null (no float reference: a streamed run) or present.
struct EvalFigures {
  enum class Kld { Absent, Null, Present };
  double ppl = 0, seconds = 0;
  Kld kld = Kld::Present;
  double kld_mean = 0, kld_p99 = 0, top1_agreement = 0;
  std::optional<std::string> isa;  // the packed model's: the kernels it ran on
  std::optional<bool> qdec;        // the packed model's: with QDEC's compensation
};

// report.json (schema quarot-report/1, docs/report.schema.json) as a struct: to_json/from_json
// are the only place that spells its keys; report.md, the plots and quarot-batch's summary rows
// are made from it.
struct RunReport {
  std::string tool_name, tool_version, git_commit;
  struct Input {
    std::string path;
    std::optional<std::string> sha256;  // null with --no-checksum
    uint64_t bytes = 0;
    int64_t parameters = 0;
  } input;
  std::string config_json;  // the plan (pipeline.hpp's plan_json), kept as its JSON text
  std::string flags;        // a quarot-quantize command that reproduces the run (plan_command)
  uint64_t rotation_seed = 0, calibration_seed = 0;
  struct Rotation {
    std::vector<std::string> steps, fallbacks;
    std::optional<std::string> online;  // the online transforms, when rotated
  } rotation;
  struct Module {
    int layer = 0;
    std::string module;
    double rel_weight_error = 0, gptq_loss = 0, damp = 0;
    int dead_inputs = 0;
    double seconds = 0;
  };
  std::vector<Module> modules;
  struct Outlier {
    int layer = 0;
    std::string point;
    double before = 0, after = 0;
  };
  std::vector<Outlier> outliers;
  struct Sizes {
    double fp32_bytes = 0;
    uint64_t input_bytes = 0;
    int64_t linear_parameters = 0;
    std::optional<uint64_t> packed_bytes;
    double bits_per_weight = 0;
    std::optional<uint64_t> qdec_residual_bytes;
    // Bits per cached K/V element (K and V averaged): the codes, and as stored with each head's
    // scale and zero point. Absent when the KV cache is not quantized.
    std::optional<double> kv_bits_per_element, kv_stored_bits_per_element;
  } sizes;
  struct Eval {
    std::string ids;
    int ctx = 0, windows = 0;
    std::string protocol = "paper";
    std::optional<std::string> text;  // --eval-text (ids is then empty)
    std::optional<EvalFigures> float_model, quantized, packed;
  };
  std::optional<Eval> eval;
  struct QdecSweepRow {
    int k_chunk = 0;  // -1: all
    std::optional<EvalFigures> packed;
    std::optional<double> decode_seconds_per_token;
    EvalFigures simulated;
  };
  struct Qdec {
    int bits = 4;
    uint64_t residual_bytes = 0;
    // --qdec-slowdown's tuner: what it measured and chose. Its to_json is also the packed
    // file's QDEC metadata.
    struct Tuner {
      double slowdown_percent = 0, base_seconds_per_token = 0, budget_seconds_per_token = 0, cost_seconds_per_token = 0;
      std::vector<int> levels;                                  // k per 1024 measured
      std::map<std::string, std::vector<double>> cost_seconds;  // per kind, one per level
      std::vector<std::string> steps;                           // the greedy steps taken
      std::string to_json() const;
    };
    std::optional<Tuner> tuner;
    int k_qkv = 0, k_o = 0, k_gate_up = 0, k_down = 0;
    std::string k_chunk_text;
    std::optional<double> residual_percent_of_packed_linears;
    std::optional<EvalFigures> simulated;
    struct Decode {
      double plain = 0, qdec = 0, slowdown_percent = 0;
    };
    std::optional<Decode> decode_seconds_per_token;
    std::optional<std::vector<QdecSweepRow>> sweep;
  };
  std::optional<Qdec> qdec;
  // The tokenizer a run used on text (calibration text, --task items) and what it puts around
  // the text: the BOS policy, stated for each use with where it comes from. Absent when no text
  // was tokenized.
  struct TokenizerUse {
    std::string path, kind;
    std::string found;            // "--tokenizer" or "the model's folder"
    std::optional<int> bos_id;    // the tokenizer's BOS; none for Qwen
    std::string special_policy;   // what encode_with_special adds (per --task sequence) and why
    std::optional<std::string> calibration;  // the calibration stream's BOS, in words
    std::optional<std::string> evaluation;   // the --eval-text stream's BOS, in words
  };
  std::optional<TokenizerUse> tokenizer;
  // Zero-shot multiple-choice accuracy (tasks.hpp, lm-eval semantics) of the float model and
  // the quantized ones; report.json adds retained = quantized / float (the paper's "retains 99%").
  struct TaskFigures {
    double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0, seconds = 0, seconds_per_item = 0;
    int truncated_items = 0;
    std::optional<std::string> isa;  // the packed model's kernels
  };
  struct Task {
    std::string name, file;
    int items = 0, limit = 0;
    std::optional<TaskFigures> float_model, quantized, packed;  // quantized: the simulation
  };
  std::vector<Task> tasks;
  // The precision planner (--budget-kv-bits / --target-kld): measured on calibration windows
  // only. Sensitivity: the increase of the final logits' KLD vs the float model when that part
  // of that layer alone goes from 8 to 4 bits (every other K/V at 8). Its to_json is also the
  // packed file's recipe "plan".
  struct PrecisionPlan {
    double budget_kv_bits = 0;  // 0: none
    double target_kld = 0;      // 0: none
    int windows = 0, tokens = 0;
    double kld_high = 0, kld_low = 0, kld_planned = 0;  // calibration KLD: every K/V at 8 bits, at 4, as planned
    double kv_bits_per_element = 0;                     // code bits, as planned
    std::string limits;                                 // what the planner does not choose, and why
    // Activations: the budget (--budget-act-bits; 0: none), and the mean activation bits over the
    // layers as planned (= per activation element: every layer's linears have the same widths).
    double budget_act_bits = 0, act_bits_per_element = 0;
    struct Layer {
      int layer = 0;
      double k_sensitivity = 0, v_sensitivity = 0;
      int k_bits = 0, v_bits = 0;
      double a_clip = 1, k_clip = 1, v_clip = 1;
      // KLD increase when this layer's activations alone go from 8 to 4 bits (every activation
      // and K/V at 8 otherwise); 0 and the model's bits when activations were not planned.
      double a_sensitivity = 0;
      int a_bits = 0;
    };
    std::vector<Layer> layers;
    // Whether activation bits were planned per layer (--budget-act-bits, or --target-kld from
    // 4-bit activations): their sensitivities were measured (a KLD difference, never exactly 0 in
    // a measured model; reports carry no separate key for it).
    bool activations_planned() const {
      if (budget_act_bits > 0) return true;
      for (const auto& l : layers)
        if (l.a_sensitivity != 0) return true;
      return false;
    }
    std::string to_json() const;
  };
  std::optional<PrecisionPlan> precision_plan;
  std::map<std::string, double> timings;
  uint64_t peak_rss_bytes = 0;

  std::string to_json(int indent = 2) const;  // with indent >= 0: ends with a newline
  static RunReport from_json(const std::string& text);  // throws quarot::Error when malformed
  // The figures a summary quotes: the packed model's, else the simulation's.
  const EvalFigures* headline_eval() const;
};

// The Markdown report for people (summary table first).
std::string report_markdown(const RunReport& r);

// The report's plots: weight error per layer and module; activation outliers before/after rotation.
std::string error_per_layer_svg(const RunReport& r);
std::string outliers_svg(const RunReport& r);
// The precision planner's sensitivity per layer (K and V) with the bits it chose; "" without a plan.
std::string precision_plan_svg(const RunReport& r);

// Escapes text for XML attribute values and character data.
std::string xml_escape(const std::string& s);

}  // namespace quarot
