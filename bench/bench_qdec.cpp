// QDEC on a real model: perplexity and KLD against k_chunk (channels per 1024 added back per
// token; the fake-quant simulation) for W3A16 and W4A16 (RTN and GPTQ) and W4A4KV4 (RTN and
// GPTQ), each with and without rotation; the residual's bytes against the packed model; and the
// integer path's decode time per token against k (the packed file with its QDEC section).
//
//   quarot-bench-qdec MODEL.bin --eval-ids IDS --ctx 512 [--chunks 20] [--calib CALIB.ids]
//                     [--nsamples 32] [--qdec-bits 4] [--only "W3A16 RTN"]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/qdec.hpp"
#include "quarot/qdec_runtime.hpp"
#include "quarot/quantize.hpp"
#include "quarot/runtime.hpp"
#include "quarot/tokenizer.hpp"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::string model, ids, calib_path, only;
  int ctx = 512, chunks = 20, bits = 4, nsamples = 32;
  CLI::App app{"QDEC perplexity/KLD against k_chunk, residual bytes and integer decode time.", "quarot-bench-qdec"};
  app.add_option("model", model, "checkpoint")->required();
  app.add_option("--eval-ids", ids, "evaluation ids")->required();
  app.add_option("--ctx", ctx, "window")->capture_default_str();
  app.add_option("--chunks", chunks, "windows (0: all)")->capture_default_str();
  app.add_option("--calib", calib_path, "calibration ids for the GPTQ rows (without: RTN rows only)");
  app.add_option("--nsamples", nsamples, "GPTQ calibration windows of --ctx tokens")->capture_default_str();
  app.add_option("--qdec-bits", bits, "residual bits (4 or 8)")->capture_default_str();
  app.add_option("--only", only, "run only the setting with this name, e.g. \"W3A16 RTN\"");
  CLI11_PARSE(app, argc, argv);
  try {
    auto base = quarot::load_model(model);
    quarot::convert_rope_layout(base, quarot::RopeLayout::Half);  // the packed format's layout
    const auto& c = base.config;
    ctx = std::min(ctx, c.max_positions);
    std::vector<int> stream;
    for (const auto& s : quarot::read_ids_file(ids, c.vocab)) stream.insert(stream.end(), s.begin(), s.end());
    const auto windows = quarot::make_windows(stream, quarot::Protocol::Paper, ctx, 1, chunks);
    std::vector<std::vector<int>> calib;
    if (!calib_path.empty()) calib = quarot::calibration_windows(quarot::read_ids_file(calib_path, c.vocab), nsamples, ctx, 0, calib_path);
    quarot::Transformer<float> fm(base, ctx);
    const auto fr = quarot::evaluate(fm, windows, quarot::Protocol::Paper);
    std::printf("%s: float perplexity %.4f (%zu windows of %d); %d-bit residual\n\n", model.c_str(), fr.ppl, windows.size(), ctx, bits);
    const int kcs[] = {0, 1, 2, 4, 8, 16, 32, 64, -1};
    const int timed_kcs[] = {0, 4, 16, 64, -1};
    struct Setting {
      const char* name;
      const char* preset;
      int w_bits;
      bool gptq;
    };
    const Setting settings[] = {{"W3A16 RTN", "w4a16-rtn", 3, false}, {"W3A16 GPTQ", "w4a16", 3, true},
                                {"W4A16 RTN", "w4a16-rtn", 4, false}, {"W4A16 GPTQ", "w4a16", 4, true},
                                {"W4A4KV4 RTN", "w4a4kv4-rtn", 4, false}, {"W4A4KV4 GPTQ", "w4a4kv4", 4, true}};
    std::string ppl_table = "| setting | rotation |", time_table = "| setting | rotation | packed model | residual (% of it) |";
    for (int kc : kcs) ppl_table += std::string(" k=") + (kc < 0 ? "all" : std::to_string(kc)) + " |";
    for (int kc : timed_kcs) time_table += std::string(" k=") + (kc < 0 ? "all" : std::to_string(kc)) + " µs |";
    ppl_table += "\n|---|---|";
    for (std::size_t i = 0; i < std::size(kcs); ++i) ppl_table += "---|";
    time_table += "\n|---|---|---|---|";
    for (std::size_t i = 0; i < std::size(timed_kcs); ++i) time_table += "---|";
    ppl_table += "\n";
    time_table += "\n";
    const fs::path tmp = fs::temp_directory_path() / ("quarot-bench-qdec-" + std::to_string(::getpid()) + ".q4.safetensors");
    for (const Setting s : settings) {
      if (s.gptq && calib.empty()) continue;
      if (!only.empty() && only != s.name) continue;
      for (const bool rotate : {true, false}) {
        auto cfg = quarot::plan_preset(s.preset).quant;
        cfg.gptq.weights.grid.bits = s.w_bits;
        cfg.gptq.weights.group_size = 0;  // per channel (the widths here are not multiples of 128)
        cfg.rotate = rotate;
        auto original = base;
        quarot::OnlineTransforms online;
        if (rotate) {
          online = quarot::rotate_model(original, cfg.rotation);
          quarot::record_rotation(original, cfg.rotation, online);
        }
        auto q = original;
        quarot::PackedWriter writer(q, quarot::make_pack_recipe(cfg));
        quarot::QdecStore store;
        store.bits = bits;
        store.linears.resize(std::size_t(c.n_layers) * 7);
        quarot::quantize_weights(q, online, cfg, calib, {}, [&](int l, quarot::LinearModule m, const quarot::QuantizedMatrix& qm, const quarot::Matrix& w) {
          writer.add(l, m, qm);
          store.linears[std::size_t(l) * 7 + std::size_t(m)] = quarot::make_residual_store(w.data.data(), qm.dequantized.data(), qm.rows, qm.cols, bits);
        });
        for (int l = 0; l < c.n_layers; ++l)
          for (quarot::LinearModule m : quarot::kLinearModules) writer.add_residual(l, m, store.at(l, m));
        writer.write(tmp.string());
        const double file = double(fs::file_size(tmp)), packed_model = file - double(store.bytes());
        char cell[128];
        std::snprintf(cell, sizeof cell, "| %s | %s |", s.name, rotate ? "on" : "off");
        ppl_table += cell;
        std::printf("%s", cell);
        for (int kc : kcs) {
          auto m = quarot::qdec_simulation_model(q, store, quarot::QdecK::all(kc), online, cfg.act, ctx);
          const auto r = quarot::evaluate(m, windows, quarot::Protocol::Paper, &fm);
          std::snprintf(cell, sizeof cell, " %.3f (%.3f) |", r.ppl, r.kld_mean);
          ppl_table += cell;
          std::printf("%s", cell);
          std::fflush(stdout);
        }
        ppl_table += "\n";
        std::printf("\n");
        // The integer path: decode time per token (64 steps after BOS, best of 5).
        const quarot::PackedModel packed(tmp.string());
        std::snprintf(cell, sizeof cell, "| %s | %s | %.1f KiB | %.1f KiB (%.0f%%) |", s.name, rotate ? "on" : "off", packed_model / 1024,
                      double(store.bytes()) / 1024, 100.0 * double(store.bytes()) / packed_model);
        time_table += cell;
        for (int kc : timed_kcs) {
          auto im = quarot::integer_model(packed, std::min(c.max_positions, 128), quarot::best_isa(), quarot::QdecK::all(kc));
          std::snprintf(cell, sizeof cell, " %.1f |", quarot::decode_seconds_per_token(im, 64, 5) * 1e6);
          time_table += cell;
        }
        time_table += "\n";
      }
    }
    fs::remove(tmp);
    std::printf("\nperplexity (mean KLD vs float) against k_chunk, simulated:\n\n%s\n", ppl_table.c_str());
    std::printf("integer path, decode time per token (%s):\n\n%s\n", quarot::isa_name(quarot::best_isa()), time_table.c_str());
    std::printf("k per layer at this width: hidden %d -> ", c.hidden);
    for (int kc : kcs) std::printf("%d ", quarot::qdec_k(kc, c.hidden));
    std::printf("; FFN %d -> ", c.intermediate);
    for (int kc : kcs) std::printf("%d ", quarot::qdec_k(kc, c.intermediate));
    std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quarot-bench-qdec: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
