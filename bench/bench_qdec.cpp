// QDEC on a real model (simulation): perplexity and KLD against k_chunk (channels per 1024 added
// back per token) for weight-only and W4A4KV4 RTN settings, with and without rotation, and the
// residual store's size against the packed INT4 linears.
//
//   quarot-bench-qdec MODEL.bin --eval-ids IDS --ctx 512 [--chunks 0] [--qdec-bits 4]
#include <CLI/CLI.hpp>
#include <cstdio>

#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/qdec.hpp"
#include "quarot/quantize.hpp"
#include "quarot/tokenizer.hpp"

int main(int argc, char** argv) {
  std::string model, ids;
  int ctx = 512, chunks = 0, bits = 4;
  CLI::App app{"QDEC perplexity against k_chunk (simulation).", "quarot-bench-qdec"};
  app.add_option("model", model, "checkpoint")->required();
  app.add_option("--eval-ids", ids, "evaluation ids")->required();
  app.add_option("--ctx", ctx, "window")->capture_default_str();
  app.add_option("--chunks", chunks, "windows (0: all)")->capture_default_str();
  app.add_option("--qdec-bits", bits, "residual bits (4 or 8)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const auto base = quarot::load_model(model);
    const auto& c = base.config;
    std::vector<int> stream;
    for (const auto& s : quarot::read_ids_file(ids, c.vocab)) stream.insert(stream.end(), s.begin(), s.end());
    const auto windows = quarot::make_windows(stream, quarot::Protocol::Paper, ctx, 1, chunks);
    quarot::Transformer<float> fm(base, ctx);
    const auto fr = quarot::evaluate(fm, windows, quarot::Protocol::Paper);
    std::printf("float perplexity %.4f (%zu windows of %d)\n\n", fr.ppl, windows.size(), ctx);
    const int kcs[] = {0, 1, 2, 4, 8, 16, 32, 64, -1};
    std::printf("| setting | rotation | residual bytes (%% of packed linears) |");
    for (int kc : kcs) std::printf(" k=%s |", kc < 0 ? "all" : std::to_string(kc).c_str());
    std::printf("\n|---|---|---|");
    for (std::size_t i = 0; i < std::size(kcs); ++i) std::printf("---|");
    std::printf("\n");
    struct Setting {
      const char* name;
      const char* preset;
      int w_bits;
    };
    for (const Setting s : {Setting{"W3A16 RTN", "w4a16-rtn", 3}, Setting{"W4A16 RTN", "w4a16-rtn", 4}, Setting{"W4A4KV4 RTN", "w4a4kv4-rtn", 4}})
      for (const bool rotate : {true, false}) {
        auto cfg = quarot::quant_preset(s.preset);
        cfg.gptq.weights.grid.bits = s.w_bits;
        cfg.gptq.weights.group_size = 0;
        auto original = base;
        quarot::OnlineTransforms online;
        if (rotate) online = quarot::rotate_model(original, cfg.rotation);
        auto q = original;
        quarot::quantize_weights(q, online, cfg, {});
        const auto store = quarot::build_qdec_store(original, q, bits);
        int64_t lin = 0;
        for (const auto& r : store.linears) lin += r.rows * ((r.cols + 63) / 64 * 32) + r.rows * 4;
        std::printf("| %s | %s | %.1f KiB (%.0f%%) |", s.name, rotate ? "on" : "off", double(store.bytes()) / 1024,
                    100.0 * double(store.bytes()) / double(lin));
        for (int kc : kcs) {
          quarot::Transformer<float> m(q, ctx, quarot::make_qdec_simulation_backend(q, store, quarot::QdecK::all(kc)));
          m.set_hook(quarot::quantized_model_hook<float>(online, cfg.act, c.head_dim));
          const auto r = quarot::evaluate(m, windows, quarot::Protocol::Paper, &fm);
          std::printf(" %.3f (%.3f) |", r.ppl, r.kld_mean);
          std::fflush(stdout);
        }
        std::printf("\n");
      }
    std::printf("\nk per layer at this width: hidden %d -> ", c.hidden);
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
