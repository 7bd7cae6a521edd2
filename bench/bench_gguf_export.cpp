// GGUF export per preset: file size, bits per weight, export time (min and median of repeats),
// and quarot's perplexity / KLD against the float model on the dequantized weights (what
// llama.cpp computes with, before its own 8-bit activation rounding), next to the baseline of
// the same run: llama-quantize's own reference RTN on the same type (no rotation, no padding,
// method None: the bytes `llama-quantize` writes without an imatrix).
//
//   quarot-bench-gguf-export --model M.bin [--model ...] --calib F.ids --eval F.ids [--ctx 512]
//                            [--nsamples 128] [--seqlen 256] [--repeats 3] [--presets a,b,...]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/gguf.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace quarot;

int main(int argc, char** argv) {
  std::vector<std::string> models, presets;
  for (const auto& name : plan_preset_names())
    if (plan_preset(name).gguf) presets.push_back(name);
  std::string calib_path, eval_path, tokenizer_path;
  int ctx = 512, nsamples = 128, seqlen = 256, repeats = 3;
  CLI::App app{"GGUF export: size, bits per weight, time, quality vs llama-quantize's RTN.", "quarot-bench-gguf-export"};
  app.add_option("--model", models, "llama2.c models")->required();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer written into the files (optional)");
  app.add_option("--calib", calib_path, "calibration ids (GPTQ)")->required();
  app.add_option("--eval", eval_path, "evaluation ids")->required();
  app.add_option("--ctx", ctx)->capture_default_str();
  app.add_option("--nsamples", nsamples)->capture_default_str();
  app.add_option("--seqlen", seqlen)->capture_default_str();
  app.add_option("--repeats", repeats, "export repeats for the time")->capture_default_str();
  app.add_option("--presets", presets, "GGUF presets")->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  try {
    std::unique_ptr<Tokenizer> tok = tokenizer_path.empty() ? nullptr : load_tokenizer(tokenizer_path);
    const std::string dir = (fs::temp_directory_path() / ("quarot-bench-gguf-" + std::to_string(::getpid()))).string();
    fs::create_directories(dir);
    std::printf("| model | preset | method | file bytes | bits/weight | export s (min / median of %d) | PPL | KLD vs float | top-1 |\n", repeats);
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& model : models) {
      const ModelWeights base = load_model(model);
      const int c = std::min(ctx, base.config.max_positions);
      std::vector<int> stream;
      for (const auto& s : read_ids_file(eval_path, base.config.vocab)) stream.insert(stream.end(), s.begin(), s.end());
      const auto windows = make_windows(stream, Protocol::Paper, c, base.config.bos_id, 0);
      const auto calib = calibration_windows(read_ids_file(calib_path, base.config.vocab), nsamples,
                                             std::min(seqlen, base.config.max_positions), 0, calib_path);
      Transformer<float> float_model(base, c);
      const auto float_eval = evaluate(float_model, windows, Protocol::Paper);
      const std::string name = fs::path(model).stem().string();
      std::printf("| %s | float | - | - | 32 | - | %.4f | 0 | 1 |\n", name.c_str(), float_eval.ppl);
      for (const auto& preset : presets) {
        // 0: llama-quantize as it is; 1: the same on the zero-padded FFN (same size as ours); 2: ours.
        for (int variant : {0, 1, 2}) {
          const bool ours = variant == 2;
          GgufExportOptions o = plan_preset(preset).gguf.value();
          if (!ours) {
            if (o.method == WeightMethod::None && !o.rotate) continue;  // the preset is the baseline itself
            o.method = WeightMethod::None;
            o.rotate = false;
            o.pad_ffn = variant == 1;
            if (variant == 1 && base.config.intermediate % 32 == 0) continue;  // nothing to pad
          }
          std::vector<double> secs;
          ModelWeights m;
          GgufExportReport rep;
          for (int r = 0; r < repeats; ++r) {
            m = base;
            rep = export_gguf(m, tok.get(), o, calib, dir + "/" + name + "-" + preset + ".gguf");
            secs.push_back(rep.seconds);
          }
          std::sort(secs.begin(), secs.end());
          Transformer<float> q(m, c);
          const auto e = evaluate(q, windows, Protocol::Paper, &float_model);
          const char* method = variant == 0 ? "llama-quantize RTN" : variant == 1 ? "llama-quantize RTN, padded FFN" : o.method == WeightMethod::Gptq ? "rotated GPTQ" : o.method == WeightMethod::Rtn ? "rotated RTN" : (o.rotate ? "rotated ref RTN" : "ref");
          std::printf("| %s | %s | %s | %zu | %.3f | %.3f / %.3f | %.4f | %.5f | %.4f |\n", name.c_str(), preset.c_str(), method, rep.file_bytes,
                      rep.bits_per_weight, secs.front(), secs[secs.size() / 2], e.ppl, e.kld_mean, e.top1_agreement);
          std::fflush(stdout);
        }
      }
    }
    fs::remove_all(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quarot-bench-gguf-export: %s\n", e.what());
    return 1;
  }
  return 0;
}
