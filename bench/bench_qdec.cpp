// QDEC on a real model: perplexity and KLD against k_chunk (channels per 1024 added back per
// token; the fake-quant simulation) for W3A16 and W4A16 (RTN and GPTQ) and W4A4KV4 (RTN and
// GPTQ), each with and without rotation; the residual's bytes against the packed model; and the
// integer path's decode time per token against k (the packed file with its QDEC section). Each
// setting is one run of the pipeline (quarot::run); the simulation takes its quantized model and
// residuals in memory (Observer::quantized).
//
//   quarot-bench-qdec MODEL.bin --eval-ids IDS --ctx 512 [--chunks 20] [--calib CALIB.ids]
//                     [--nsamples 32] [--qdec-bits 4] [--only "W3A16 RTN"]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <functional>
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
    const auto base = quarot::load_model(model);  // the float reference
    const auto& c = base.config;
    ctx = std::min(ctx, c.max_positions);
    std::vector<int> stream;
    for (const auto& s : quarot::read_ids_file(ids, c.vocab)) stream.insert(stream.end(), s.begin(), s.end());
    const auto windows = quarot::make_windows(stream, quarot::Protocol::Paper, ctx, 1, chunks);
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
    const fs::path tmp_dir = fs::temp_directory_path() / ("quarot-bench-qdec-" + std::to_string(::getpid()));
    const fs::path tmp = tmp_dir / "m.q4.safetensors";  // its report beside it
    for (const Setting s : settings) {
      if (s.gptq && calib_path.empty()) continue;
      if (!only.empty() && only != s.name) continue;
      for (const bool rotate : {true, false}) {
        quarot::PlanOptions o;
        o.model = model;
        o.output = tmp.string();
        o.preset = s.preset;
        o.w_bits = s.w_bits;
        o.w_group = 0;  // per channel (the widths here are not multiples of 128)
        o.kv_clip = quarot::plan_preset(s.preset).quant.act.kv_clip;  // the preset's, as this table always had
        o.no_rotate = !rotate;
        if (s.gptq) {
          o.calib = calib_path;
          o.nsamples = nsamples;
          o.seqlen = ctx;
        }
        o.qdec = true;
        o.qdec_bits = bits;
        o.no_checksum = true;
        o.quiet = true;
        char cell[128];
        std::snprintf(cell, sizeof cell, "| %s | %s |", s.name, rotate ? "on" : "off");
        ppl_table += cell;
        std::printf("%s", cell);
        // The simulation of the quantized model with its residuals, against k.
        struct Simulate : quarot::Observer {
          std::function<void(const quarot::QuantizedModel&)> f;
          void quantized(const quarot::QuantizedModel& q) override { f(q); }
        } simulate;
        uint64_t residual_bytes = 0;
        simulate.f = [&](const quarot::QuantizedModel& q) {
          residual_bytes = q.qdec->bytes();
          for (int kc : kcs) {
            auto m = quarot::qdec_simulation_model(q.weights, *q.qdec, quarot::QdecK::all(kc), q.online, q.config.act, ctx);
            const auto r = quarot::evaluate(m, windows, quarot::Protocol::Paper, &fm);
            std::snprintf(cell, sizeof cell, " %.3f (%.3f) |", r.ppl, r.kld_mean);
            ppl_table += cell;
            std::printf("%s", cell);
            std::fflush(stdout);
          }
        };
        quarot::run(quarot::make_plan(o), simulate);
        ppl_table += "\n";
        std::printf("\n");
        const double file = double(fs::file_size(tmp)), packed_model = file - double(residual_bytes);
        // The integer path: decode time per token (64 steps after BOS, best of 5).
        const quarot::PackedModel packed(tmp.string());
        std::snprintf(cell, sizeof cell, "| %s | %s | %.1f KiB | %.1f KiB (%.0f%%) |", s.name, rotate ? "on" : "off", packed_model / 1024,
                      double(residual_bytes) / 1024, 100.0 * double(residual_bytes) / packed_model);
        time_table += cell;
        for (int kc : timed_kcs) {
          auto im = quarot::integer_model(packed, std::min(c.max_positions, 128), quarot::best_isa(), quarot::QdecK::all(kc));
          std::snprintf(cell, sizeof cell, " %.1f |", quarot::decode_seconds_per_token(im, 64, 5) * 1e6);
          time_table += cell;
        }
        time_table += "\n";
      }
    }
    fs::remove_all(tmp_dir);
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
