// Per-group activation scales on a real model (issue 17): quantizes it with a preset (GPTQ, the
// model's defaults applied as quarot-quantize applies them: KV clip 1.0 below head_dim 32) once
// per activation group size, packs it, and evaluates the packed integer path and the fake-quant
// simulation of the same file (paper protocol), with KLD and top-1 agreement against the float
// model. quarot-quantize has no --a-group flag yet, hence this program.
//
//   quarot-bench-act-group MODEL --calib F.ids --eval-ids F.ids --ctx N [--nsamples 128]
//                          [--preset w4a4k8v4] [--a-groups 0,16,32]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/runtime.hpp"
#include "quarot/tokenizer.hpp"

int main(int argc, char** argv) {
  std::string model_path, calib_path, eval_path, preset = "w4a4k8v4";
  int ctx = 512, nsamples = 128;
  std::vector<int> groups = {0, 16, 32};
  CLI::App app{"Integer-path perplexity with per-group activation scales.", "quarot-bench-act-group"};
  app.add_option("model", model_path, "float checkpoint")->required();
  app.add_option("--calib", calib_path, "calibration ids")->required();
  app.add_option("--eval-ids", eval_path, "evaluation ids")->required();
  app.add_option("--ctx", ctx, "evaluation window and calibration sequence length")->capture_default_str();
  app.add_option("--nsamples", nsamples, "calibration sequences")->capture_default_str();
  app.add_option("--preset", preset, "quantization preset")->capture_default_str();
  app.add_option("--a-groups", groups, "activation group sizes (0: per token)")->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  try {
    const auto float_model = quarot::load_model(model_path);
    const auto& c = float_model.config;
    std::vector<int> stream;
    for (const auto& s : quarot::read_ids_file(eval_path, c.vocab)) stream.insert(stream.end(), s.begin(), s.end());
    const auto windows = quarot::make_windows(stream, quarot::Protocol::Paper, ctx, c.bos_id >= 0 ? c.bos_id : 1, 0);
    const auto tmp = std::filesystem::temp_directory_path() / ("quarot-bench-act-group-" + std::to_string(::getpid()));
    std::filesystem::create_directories(tmp);
    std::printf("%s, %s, %d calibration x %d, %zu windows of %d\n", model_path.c_str(), preset.c_str(), nsamples, ctx,
                windows.size(), ctx);
    std::printf("| a_group | simulated PPL | integer PPL | int vs sim | integer KLD mean | top-1 agree |\n|---|---|---|---|---|---|\n");
    auto base = quarot::Transformer<float>(float_model, ctx);
    for (int g : groups) {
      auto cfg = quarot::plan_preset(preset).quant;
      quarot::apply_model_defaults(cfg, c);
      cfg.act.a_group = g;
      cfg.nsamples = nsamples;
      cfg.seqlen = std::min(ctx, c.max_positions);
      const auto calib = quarot::calibration_windows(quarot::read_ids_file(calib_path, c.vocab), cfg.nsamples, cfg.seqlen, cfg.seed,
                                                     calib_path);
      auto m = float_model;
      quarot::convert_rope_layout(m, quarot::RopeLayout::Half);
      quarot::OnlineTransforms online;
      if (cfg.rotate) {
        online = quarot::rotate_model(m, cfg.rotation);
        quarot::record_rotation(m, cfg.rotation, online);
      }
      const std::string path = (tmp / "m.q4.safetensors").string();
      quarot::PackedWriter writer(m, quarot::make_pack_recipe(cfg));
      quarot::quantize_weights(m, online, cfg, calib, {},
                               [&](int l, quarot::LinearModule mod, const quarot::QuantizedMatrix& q, const quarot::Matrix&) {
                                 writer.add(l, mod, q);
                               });
      writer.write(path);
      const quarot::PackedModel p(path);
      const auto deq = p.dequantized();
      auto integer = quarot::integer_model(p, ctx);
      auto sim = quarot::simulated_model(p, deq, ctx);
      const auto ri = quarot::evaluate(integer, windows, quarot::Protocol::Paper, &base);
      const auto rs = quarot::evaluate(sim, windows, quarot::Protocol::Paper);
      std::printf("| %d | %.4f | %.4f | %+.2f%% | %.4f | %.2f%% |\n", g, rs.ppl, ri.ppl, 100 * (ri.ppl / rs.ppl - 1), ri.kld_mean,
                  100 * ri.top1_agreement);
      std::fflush(stdout);
    }
    std::filesystem::remove_all(tmp);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quarot-bench-act-group: %s\n", e.what());
    return 1;
  }
  return 0;
}
