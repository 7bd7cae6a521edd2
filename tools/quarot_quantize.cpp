// quarot-quantize: the pipeline in one command (src/pipeline: load -> rotate -> calibrate ->
// quantize -> pack -> evaluate -> report). This file binds the flags (and --config files) to
// quarot::PlanOptions and prints what the run's Observer hears.
#include <cstdio>

#include "cli.hpp"
#include "config_file.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/progress.hpp"

// The commit this binary was built from, "-dirty" with local changes (generated at build time
// by cmake/GitCommit.cmake).
const char* quarot_git_commit();

namespace {

// Results to stdout, the log to stderr (not with --quiet), a progress line or bar per stage.
class PrintingObserver : public quarot::Observer {
 public:
  PrintingObserver(bool quiet, quarot::ProgressMode mode) : quiet_(quiet), mode_(mode) {}
  void stage_start(std::string_view stage) override { progress_ = std::make_unique<quarot::Progress>(std::string(stage), mode_); }
  void progress(std::string_view, uint64_t done, uint64_t total, const std::string& what) override {
    if (progress_) progress_->update(done, total, what);
  }
  void stage_end(std::string_view, const std::string& summary) override {
    if (progress_ && !summary.empty()) progress_->finish(summary);
    progress_.reset();
  }
  void text(Channel ch, const std::string& s) override {
    if (quiet_ && (ch == Channel::Info || ch == Channel::Log)) return;
    std::fputs(s.c_str(), ch == Channel::Result || ch == Channel::Info ? stdout : stderr);
  }

 private:
  bool quiet_;
  quarot::ProgressMode mode_;
  std::unique_ptr<quarot::Progress> progress_;
};

}  // namespace

int main(int argc, char** argv) {
  quarot::PlanOptions a;
  std::string presets;
  for (const auto& n : quarot::plan_preset_names()) presets += " " + n;
  CLI::App app{
      "Rotate (QuaRot, arXiv 2404.00456) and quantize a LLaMA-family checkpoint, write it as a packed INT4\n"
      "model, and measure it: perplexity and KL divergence against the float model (simulated, and with\n"
      "the integer kernels), weight error per module, outliers before/after rotation, sizes, timings.\n"
      "With -o OUT the report (report.json, report.md, SVG plots) is written into OUT.report/ (one folder per\n"
      "output name); OUT and its report appear together, or not at all when the run fails.\n"
      "Presets (flags after --preset override them):" + presets + "\n"
      "Example: quarot-quantize stories260K.bin -o out/stories.q4.safetensors --preset w4a4kv4\n"
      "         --calib calib-t1-seed42.ids --seqlen 512 --eval-ids validation_100.tok512.ids --ctx 512\n"
      "Exit codes: 0 success, 1 failure (nothing written), 2 usage.",
      "quarot-quantize"};
  app.config_formatter(std::make_shared<quarot::cli::StrictConfig>(app));
  app.set_config("--config", "", "read options from a JSON or TOML file (keys: long option names; an unknown key, a wrong type\n"
              "or an out-of-range value is an error); command-line flags override it")
      ->group("Input/Output");
  app.add_option("model", a.model, "checkpoint: llama2.c .bin or Hugging Face folder")->required()->group("Input/Output");
  app.add_option("-o,--output", a.output, "write the packed INT4 model here (e.g. out/model.q4.safetensors)")->group("Input/Output");
  app.add_option("--report-dir", a.report_dir, "where report.json/.md and plots go (default: OUT.report/ beside -o OUT)")->group("Input/Output");
  app.add_option("--json", a.json, "also write report.json's content to this file")->group("Input/Output");
  app.add_flag("--dry-run", a.dry_run, "print the plan (rotations, online transforms, bits per weight, output size) and exit")->group("Input/Output");
  app.add_flag("--no-rotate", a.no_rotate, "quantize without QuaRot's rotations")->group("Rotation");
  quarot::cli::add_rotation_kind(app, a.rotation)->group("Rotation");
  app.add_option("--seed", a.seed, "seed of the rotations and of calibration sampling")->capture_default_str()->group("Rotation");
  app.add_option("--preset", a.preset, "quantization preset")->check(CLI::IsMember(quarot::plan_preset_names()))->capture_default_str()->group("Weights");
  app.add_option("--gguf-embd-type", a.gguf_embd_type,
                 "GGUF output: token_embd.weight's type (default: llama-quantize's, Q8_0/Q6_K). A tied source (classifier =\n"
                 "embedding) gains an untied output.weight under rotation (the final RMSNorm and R1 are fused into the\n"
                 "classifier), one matrix more than llama-quantize's file: the embedding at the linears' type (e.g. q4_0)\n"
                 "takes about half of that back. Types whose block does not divide the hidden size fall back as llama-quantize's do")
      ->check(CLI::IsMember({"q4_0", "q4_1", "q5_0", "q8_0", "iq4_nl", "q4_k", "q6_k", "f16", "f32"}))
      ->group("Weights");
  app.add_option("--w-method", a.w_method, "weight quantizer")->check(CLI::IsMember({"rtn", "gptq", "none"}))->group("Weights");
  app.add_option("--w-bits", a.w_bits, "weight bits (2..8; packed files hold 2..4)")->group("Weights");
  app.add_option("--w-group", a.w_group, "input columns per weight group (0: per output channel)")->group("Weights");
  app.add_flag("--w-asym", a.w_asym, "asymmetric weight grid (zero points)")->group("Weights");
  app.add_flag("--no-clip-search", a.no_clip_search, "no per-row clip search")->group("Weights");
  app.add_option("--damp", a.damp, "GPTQ damping, fraction of the mean Hessian diagonal")->capture_default_str()->group("Weights");
  app.add_flag("--act-order", a.act_order, "GPTQ: columns in decreasing Hessian diagonal order")->group("Weights");
  app.add_flag("--static-groups", a.static_groups, "GPTQ: group parameters from the original weights")->group("Weights");
  app.add_option("--classifier-bits", a.classifier_bits, "embedding table and classifier bits (2..8: per-row symmetric, stored INT8 in the packed file; 16: fp32, as the paper); default 8 with a packed -o, 16 otherwise (the simulation quantizes them as the file stores them)")->group("Weights");
  app.add_option("--a-bits", a.a_bits, "activation bits (2..8; 16: not quantized)")->group("Activations & KV");
  app.add_option("--a-clip", a.a_clip, "activation clip ratio (paper: 0.9)")->group("Activations & KV");
  app.add_option("--a-group", a.a_group,
                 "activation scales per group of N input channels (0: one per token, the paper's; the last group of a row may be "
                 "shorter). 16 on 64-wide models: stories260K W4A4K8V4 4.89 -> 4.67 at 2 more bits per activation")
      ->group("Activations & KV");
  app.add_option("--k-bits", a.k_bits, "key cache bits (16: not quantized)")->group("Activations & KV");
  app.add_option("--v-bits", a.v_bits, "value cache bits (16: not quantized)")->group("Activations & KV");
  app.add_option("--kv-clip", a.kv_clip, "KV clip ratio (paper: 0.95)")->group("Activations & KV");
  app.add_option("--budget-kv-bits", a.budget_kv_bits,
                 "precision planner: mean bits per cached K/V element (4..8); from calibration windows only (the KLD of the final\n"
                 "logits vs the float model when one layer's K or V goes 8 -> 4 bits), the most sensitive K/V parts stay 8-bit and\n"
                 "each layer's clips (activations, K, V) are chosen; needs --calib; the plan is in the report and the packed file")
      ->group("Precision planner");
  app.add_option("--target-kld", a.target_kld,
                 "precision planner: raise K, V and (with --a-bits 4) activation parts of the layers to 8 bits only until the\n"
                 "calibration KLD is at most this, in one order: KLD sensitivity per bit added to the part's own mean (a K/V part\n"
                 "adds 4/(2 layers) bits per cached element, an activation part 4/layers bits per activation); --budget-kv-bits and\n"
                 "--budget-act-bits cap which parts may be raised; the report gives bits per cached element and per activation")
      ->group("Precision planner");
  app.add_option("--budget-act-bits", a.budget_act_bits,
                 "precision planner: mean activation bits over the layers (4..8; needs --a-bits 4); from calibration windows\n"
                 "only (the KLD of the final logits vs the float model when one layer's activations go 8 -> 4 bits), the most\n"
                 "sensitive layers run 8-bit activations (W4A8: the INT4 GEMM on 8-bit codes); usually with --budget-kv-bits")
      ->group("Precision planner");
  app.add_option("--plan-windows", a.plan_windows, "precision planner: calibration windows measured (at most 512 tokens each)")
      ->capture_default_str()
      ->group("Precision planner");
  app.add_flag("--qdec", a.qdec,
               "QDEC (arXiv 2412.20185): store the weight residual W - Q(W) and add back, per token, the rows of\n"
               "the input channels with the largest |x| (a section of the packed file)")->group("QDEC");
  app.add_option("--qdec-bits", a.qdec_bits, "residual bits (4 or 8)")->capture_default_str()->group("QDEC");
  auto* qdec_k_opt = app.add_option("--qdec-k", a.qdec_k,
                            "channels added back per 1024 inputs: N for every kind, 'all', or per kind\n"
                            "qkv=N,o=N,gate_up=N,down=N (default 4; implies --qdec)")->group("QDEC");
  app.add_option("--qdec-slowdown", a.qdec_slowdown,
                 "tune k per kind to this decode-time budget in percent, e.g. 2.5 (measured on the integer\n"
                 "path; needs -o; implies --qdec)")->excludes(qdec_k_opt)->group("QDEC");
  app.add_flag("--qdec-sweep", a.qdec_sweep,
               "also evaluate k = 0, 1, 2, 4, 8, 16, 32, 64, all per 1024 (perplexity, KLD, time per token) into the\n"
               "report (needs --eval-ids; implies --qdec)")->group("QDEC");
  app.add_option("--calib", a.calib, "calibration data for GPTQ: token ids (*.ids) or text (with --tokenizer)")->group("Calibration");
  app.add_option("--tokenizer", a.tokenizer,
                 "tokenizer for text calibration and --task: tokenizer.json (or a folder with one), SentencePiece .model\n"
                 "or llama2.c .bin (default: the tokenizer in the model's folder, if any)")->group("Calibration");
  app.add_option("--nsamples", a.nsamples, "calibration sequences")->capture_default_str()->group("Calibration");
  app.add_option("--seqlen", a.seqlen, "calibration sequence length (capped at the model's max)")->capture_default_str()->group("Calibration");
  app.add_option("--eval-ids", a.eval_ids, "evaluation token ids (lines concatenated, paper protocol)")->group("Evaluation");
  app.add_option("--eval-text", a.eval_text,
                 "evaluation text instead of --eval-ids: tokenized (--tokenizer, default the model's folder's) with the\n"
                 "model's BOS once in front (as quarot-eval does with a text file)")->group("Evaluation");
  app.add_option("--ctx", a.ctx, "evaluation window (default: the model's max, at most 2048)")->group("Evaluation");
  app.add_option("--chunks", a.chunks, "evaluate at most this many windows (0: all)")->group("Evaluation");
  app.add_option("--outlier-windows", a.outlier_windows, "windows for the outlier statistics before/after rotation (0: skip)")
      ->capture_default_str()->group("Evaluation");
  auto* task_opt = app.add_option("--task", a.task,
                                   "also score zero-shot multiple choice (lm-eval acc / acc_norm) on the float, simulated and\n"
                                   "packed models: hellaswag (llama.cpp's text layout, decompressed) or piqa (valid.jsonl)")
                       ->check(CLI::IsMember({"hellaswag", "piqa"}))->group("Evaluation");
  app.add_option("--task-file", a.task_file, "the task's data file (with --task)")->needs(task_opt)->group("Evaluation");
  app.add_option("--task-labels", a.task_labels, "piqa labels (default: X.jsonl -> X-labels.lst)")->needs(task_opt)->group("Evaluation");
  app.add_option("--task-limit", a.task_limit, "score only the first N items (0: all)")->needs(task_opt)->group("Evaluation");
  quarot::cli::add_threads(app, a.threads)->group("Runtime");
  app.add_flag("--stream", a.stream,
               "read, rotate and quantize one decoder layer at a time from the memory-mapped input (checkpoints\n"
               "larger than memory; chosen automatically when the fp32 model would not fit). Same packed file;\n"
               "only the packed model is evaluated (no float reference, no outlier statistics)")->group("Runtime");
  app.add_flag("--no-checksum", a.no_checksum, "skip the input's sha256 in the report (saves a read of the input)")->group("Runtime");
  quarot::cli::add_progress(app, a.progress)->group("Logging");
  app.add_flag("-v,--verbose", a.verbose, "more detail (the rotation steps, per-module lines)")->group("Logging");
  quarot::cli::add_quiet(app, a.quiet)->group("Logging");
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;

  quarot::Plan plan;
  try {  // bad flag values are usage errors (exit 2), found before any work
    plan = quarot::make_plan(a);
  } catch (const quarot::Error& e) {
    std::fprintf(stderr, "quarot-quantize: error: %s (see --help)\n", e.what());
    return quarot::cli::kExitUsage;
  }
  plan.run.git_commit = quarot_git_commit();
  return quarot::cli::run("quarot-quantize", [&] {
    try {
      if (plan.run.dry_run) {
        std::fputs(quarot::describe_plan(plan).c_str(), stdout);
        return 0;
      }
      PrintingObserver observer(plan.run.quiet, quarot::parse_progress_mode(plan.run.progress));
      (void)quarot::run(plan, observer);
    } catch (const quarot::UsageError& e) {  // the plan does not fit the model: found before any work, as by --dry-run
      std::fprintf(stderr, "quarot-quantize: error: %s (see --help)\n", e.what());
      return quarot::cli::kExitUsage;
    }
    return 0;
  });
}
