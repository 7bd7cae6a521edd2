// quarot-quantize: rotate (QuaRot) and quantize a checkpoint, then evaluate the quantized model
// (simulated: fake-quantized weights, activations and KV cache) against the float model.
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/packed.hpp"
#include "quarot/progress.hpp"
#include "quarot/quantize.hpp"
#include "quarot/tokenizer.hpp"

int main(int argc, char** argv) {
  struct Args {
    std::string model, output, preset = "w4a4kv4", calib, tokenizer, eval_ids, json, progress = "auto", rotation = "hadamard", w_method;
    int w_bits = 0, w_group = -1, a_bits = 0, k_bits = 0, v_bits = 0, nsamples = 128, seqlen = 2048, ctx = 0, chunks = 0,
        threads = 0, classifier_bits = 0;
    double a_clip = 0, kv_clip = 0, damp = 0.01;
    uint64_t seed = 0;
    bool no_rotate = false, act_order = false, static_groups = false, no_clip_search = false, w_asym = false;
  } a;
  std::string presets;
  for (const auto& n : quarot::quant_preset_names()) presets += " " + n;
  CLI::App app{
      "Rotate (QuaRot, arXiv 2404.00456) and quantize a LLaMA-family checkpoint, then measure the\n"
      "quantized model against the float one: perplexity and KL divergence on --eval-ids, and the\n"
      "weight error of every linear module. Quantization is simulated here (fake-quantized\n"
      "weights, activations and KV cache in the float forward pass). With -o, the quantized model\n"
      "is written as a packed INT4 file (docs/format.md) that quarot-eval and quarot-run execute\n"
      "with integer kernels; with --eval-ids it is then evaluated that way too.\n"
      "Presets (flags after --preset override them):" + presets + "\n"
      "Example: quarot-quantize stories260K.bin --preset w4a4kv4 --calib calib-t1-seed42.ids\n"
      "         --seqlen 512 --eval-ids validation_100.tok512.ids --ctx 512",
      "quarot-quantize"};
  app.add_option("model", a.model, "checkpoint: llama2.c .bin or Hugging Face folder")->required()->group("Input/Output");
  app.add_option("-o,--output", a.output, "write the packed INT4 model here (e.g. model.q4.safetensors)")->group("Input/Output");
  app.add_option("--json", a.json, "write every figure to this JSON file")->group("Input/Output");
  app.add_option("--preset", a.preset, "quantization preset")->capture_default_str()->group("Weights");
  app.add_option("--w-method", a.w_method, "rtn, gptq or none")->check(CLI::IsMember({"rtn", "gptq", "none"}))->group("Weights");
  app.add_option("--w-bits", a.w_bits, "weight bits (2..8)")->group("Weights");
  app.add_option("--w-group", a.w_group, "input columns per weight group (0: per output channel)")->group("Weights");
  app.add_flag("--w-asym", a.w_asym, "asymmetric weight grid")->group("Weights");
  app.add_flag("--no-clip-search", a.no_clip_search, "no per-row clip search")->group("Weights");
  app.add_option("--damp", a.damp, "GPTQ damping, fraction of the mean Hessian diagonal")->capture_default_str()->group("Weights");
  app.add_flag("--act-order", a.act_order, "GPTQ: columns in decreasing Hessian diagonal order")->group("Weights");
  app.add_option("--classifier-bits", a.classifier_bits, "quantize the classifier to this many bits (RTN; 16: float, the paper)")->group("Weights");
  app.add_flag("--static-groups", a.static_groups, "GPTQ: group parameters from the original weights")->group("Weights");
  app.add_option("--a-bits", a.a_bits, "activation bits (16: none)")->group("Activations & KV");
  app.add_option("--a-clip", a.a_clip, "activation clip ratio (paper: 0.9)")->group("Activations & KV");
  app.add_option("--k-bits", a.k_bits, "key cache bits (16: none)")->group("Activations & KV");
  app.add_option("--v-bits", a.v_bits, "value cache bits (16: none)")->group("Activations & KV");
  app.add_option("--kv-clip", a.kv_clip, "KV clip ratio (paper: 0.95)")->group("Activations & KV");
  app.add_flag("--no-rotate", a.no_rotate, "quantize without QuaRot's rotations")->group("Rotation");
  app.add_option("--rotation", a.rotation, "R1: hadamard or random")->check(CLI::IsMember({"hadamard", "random"}))->capture_default_str()->group("Rotation");
  app.add_option("--seed", a.seed, "seed of rotations and calibration sampling")->capture_default_str()->group("Rotation");
  app.add_option("--calib", a.calib, "calibration data (GPTQ): token ids (*.ids) or text (with --tokenizer)")->group("Calibration");
  app.add_option("--tokenizer", a.tokenizer, "tokenizer for text calibration: SentencePiece .model or llama2.c tokenizer.bin")->group("Calibration");
  app.add_option("--nsamples", a.nsamples, "calibration sequences")->capture_default_str()->group("Calibration");
  app.add_option("--seqlen", a.seqlen, "calibration sequence length (capped at the model's max)")->capture_default_str()->group("Calibration");
  app.add_option("--eval-ids", a.eval_ids, "evaluation token ids (lines concatenated, paper protocol)")->group("Evaluation");
  app.add_option("--ctx", a.ctx, "evaluation window (default: the model's max, at most 2048)")->group("Evaluation");
  app.add_option("--chunks", a.chunks, "evaluate at most this many windows")->group("Evaluation");
  app.add_option("--threads", a.threads, "threads (default: all cores)")->group("Runtime");
  app.add_option("--progress", a.progress, "auto|bar|plain|none")->check(CLI::IsMember({"auto", "bar", "plain", "none"}))->capture_default_str()->group("Logging");
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;

  quarot::QuantConfig cfg;
  try {
    cfg = quarot::quant_preset(a.preset);
  } catch (const quarot::Error& e) {
    std::fprintf(stderr, "quarot-quantize: error: %s (see --help)\n", e.what());
    return quarot::cli::kExitUsage;
  }
  if (!a.w_method.empty()) cfg.method = a.w_method == "rtn" ? quarot::WeightMethod::Rtn : a.w_method == "gptq" ? quarot::WeightMethod::Gptq : quarot::WeightMethod::None;
  auto& wq = cfg.gptq.weights;
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

  try {  // bad flag values are usage errors (exit 2), found before any work
    quarot::check_act_options(cfg.act);
    if (cfg.classifier_bits < 16 && (cfg.classifier_bits < 2 || cfg.classifier_bits > 8))
      throw quarot::Error("--classifier-bits", "must be 2..8 or 16, got " + std::to_string(cfg.classifier_bits));
    if (cfg.method != quarot::WeightMethod::None && (wq.grid.bits < 2 || wq.grid.bits > 8))
      throw quarot::Error("--w-bits", "must be 2..8, got " + std::to_string(wq.grid.bits));
    if (wq.group_size < 0) throw quarot::Error("--w-group", "must be >= 0");
    if (!a.output.empty()) (void)quarot::make_pack_recipe(cfg);  // the packed format can hold it
  } catch (const quarot::Error& e) {
    std::fprintf(stderr, "quarot-quantize: error: %s (see --help)\n", e.what());
    return quarot::cli::kExitUsage;
  }

  return quarot::cli::run("quarot-quantize", [&] {
    if (a.threads > 0) omp_set_num_threads(a.threads);
    const auto mode = quarot::parse_progress_mode(a.progress);
    if (!a.output.empty()) quarot::refuse_overwriting_inputs(a.output, {a.model});
    const auto float_model = quarot::load_model(a.model);
    auto m = float_model;
    quarot::convert_rope_layout(m, quarot::RopeLayout::Half);  // the packed format's layout (same function)
    const auto& c = m.config;
    cfg.seqlen = std::min(cfg.seqlen, c.max_positions);
    std::fprintf(stderr, "quarot-quantize: %s\n  %s\n", a.model.c_str(), cfg.describe().c_str());

    quarot::OnlineTransforms online;
    std::vector<std::string> rotation_steps;
    if (cfg.rotate) {
      quarot::RotationReport rep;
      online = quarot::rotate_model(m, cfg.rotation, &rep);
      rotation_steps = rep.steps;
      quarot::record_rotation(m, cfg.rotation, online);
      for (const auto& f : rep.fallbacks) std::fprintf(stderr, "quarot-quantize: warning: not a Hadamard matrix: %s\n", f.c_str());
    }
    std::vector<std::vector<int>> calib;
    if (cfg.method == quarot::WeightMethod::Gptq) {
      if (a.calib.empty()) throw quarot::Error("--calib", "GPTQ needs calibration data (--calib FILE: *.ids or text)");
      std::unique_ptr<quarot::Tokenizer> tok;
      if (!a.tokenizer.empty()) tok = quarot::load_tokenizer(a.tokenizer);
      calib = quarot::calibration_windows(quarot::read_calibration(a.calib, tok.get(), c.vocab), cfg.nsamples, cfg.seqlen, cfg.seed, a.calib);
    }
    quarot::Progress qp("quantize", mode);
    std::unique_ptr<quarot::PackedWriter> writer;
    if (!a.output.empty()) writer = std::make_unique<quarot::PackedWriter>(m, quarot::make_pack_recipe(cfg));
    const auto stats = quarot::quantize_weights(
        m, online, cfg, calib, [&](int l, int n, const std::string&) { qp.update(uint64_t(l), uint64_t(n)); },
        [&](int l, quarot::LinearModule mod, const quarot::QuantizedMatrix& q) {
          if (writer) writer->add(l, mod, q);
        });
    qp.finish(std::to_string(stats.size()) + " modules");
    if (writer) {
      writer->write(a.output, {{"quarot.source", a.model}});
      const auto bytes = std::filesystem::file_size(a.output);
      const double fp32 = double(quarot::parameter_count(float_model)) * 4;
      std::printf("packed model: %s, %.2f MiB (%.3fx the fp32 model)\n", a.output.c_str(), double(bytes) / (1 << 20),
                  double(bytes) / fp32);
    }

    // Summary by module kind.
    std::map<std::string, std::pair<double, int>> by_kind;
    for (const auto& s : stats) {
      by_kind[s.module].first += s.rel_weight_error;
      by_kind[s.module].second += 1;
    }
    if (!stats.empty()) {
      std::printf("weight error ||W - Q(W)|| / ||W||, mean over layers:\n");
      for (const auto& [k, v] : by_kind) std::printf("  %-10s %.5f\n", k.c_str(), v.first / v.second);
    }
    nlohmann::json j = {{"schema", "quarot-quantize/0"}, {"model", a.model}, {"config", cfg.describe()},
                        {"rotation", rotation_steps}, {"online", online.describe()}};
    for (const auto& s : stats)
      j["modules"].push_back({{"layer", s.layer}, {"module", s.module}, {"rel_weight_error", s.rel_weight_error},
                              {"gptq_loss", s.gptq_loss}, {"damp", s.damp_used}, {"dead_inputs", s.dead_inputs}, {"seconds", s.seconds}});

    if (!a.eval_ids.empty()) {
      const int ctx = a.ctx ? std::min(a.ctx, c.max_positions) : std::min(2048, c.max_positions);
      std::vector<int> stream;
      for (const auto& s : quarot::read_ids_file(a.eval_ids, c.vocab)) stream.insert(stream.end(), s.begin(), s.end());
      const auto windows = quarot::make_windows(stream, quarot::Protocol::Paper, ctx, c.bos_id >= 0 ? c.bos_id : 1, a.chunks);
      if (windows.empty()) throw quarot::Error(a.eval_ids, "shorter than one window of " + std::to_string(ctx));
      quarot::Transformer<float> fm(float_model, ctx), qm(m, ctx);
      qm.set_hook(quarot::quantized_model_hook<float>(online, cfg.act, c.head_dim));
      const auto fr = quarot::evaluate(fm, windows, quarot::Protocol::Paper);
      const auto qr = quarot::evaluate(qm, windows, quarot::Protocol::Paper, &fm);
      std::printf("perplexity: float %.4f -> quantized %.4f (%+.2f%%)\n", fr.ppl, qr.ppl, 100 * (qr.ppl / fr.ppl - 1));
      std::printf("KLD vs float: mean %.5f, p99 %.5f; top-1 agreement %.2f%% (%d windows of %d)\n", qr.kld_mean, qr.kld_p99,
                  100 * qr.top1_agreement, qr.windows, ctx);
      if (!a.output.empty()) {
        const quarot::PackedModel packed(a.output);
        auto im = packed.integer_model(ctx);
        const auto ir = quarot::evaluate(im, windows, quarot::Protocol::Paper, &fm);
        std::printf("packed integer model (%s): perplexity %.4f, KLD vs float %.5f, top-1 agreement %.2f%%\n",
                    quarot::isa_name(quarot::best_isa()), ir.ppl, ir.kld_mean, 100 * ir.top1_agreement);
        j["eval_packed"] = {{"ppl", ir.ppl}, {"kld_mean", ir.kld_mean}, {"top1_agreement", ir.top1_agreement},
                            {"seconds", ir.seconds}, {"isa", quarot::isa_name(quarot::best_isa())}};
      }
      j["eval"] = {{"ids", a.eval_ids}, {"ctx", ctx}, {"windows", qr.windows}, {"ppl_float", fr.ppl}, {"ppl_quantized", qr.ppl},
                   {"kld_mean", qr.kld_mean}, {"kld_p99", qr.kld_p99}, {"top1_agreement", qr.top1_agreement}};
    }
    if (!a.json.empty()) quarot::write_file_atomic(a.json, j.dump(2) + "\n");
    return 0;
  });
}
