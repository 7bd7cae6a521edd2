// quarot vs the real llama.cpp on the same GGUF files and the same windows (bench/RESULTS.md,
// "llama.cpp as reference client"): a TinyStories model written as an F32 GGUF (the test-local
// writer of tests/gguf_test_writer.hpp), perplexity on every window of quarot-eval's paper
// protocol in both, the largest relative logit difference, load times; then llama_model_quantize
// at several types, each evaluated by llama.cpp and, after quarot's GGUF reader dequantizes it,
// by quarot's fp32 forward pass.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <unistd.h>

#include "gguf_test_writer.hpp"
#include "llama_cpp_client.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/eval.hpp"
#include "quarot/forward.hpp"
#include "quarot/gguf_reader.hpp"
#include "quarot/mapped_file.hpp"
#include "quarot/tokenizer.hpp"

namespace lc = quarot::llama_cpp;

int main(int argc, char** argv) {
  CLI::App app{"quarot vs llama.cpp on the same GGUF and windows"};
  std::string model, tokenizer, ids, lib_dir = lc::default_library_dir();
  std::string calib;
  int ctx = 512, windows_max = 0, calib_lines = 16;
  std::vector<std::string> types = {"Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q4_K_M"};
  app.add_option("model", model, "llama2.c .bin (written as an F32 GGUF)")->required();
  app.add_option("--tokenizer", tokenizer, "its tokenizer.bin")->required();
  app.add_option("--ids", ids, "evaluation ids (one sequence per line)")->required();
  app.add_option("--ctx", ctx, "window");
  app.add_option("--windows", windows_max, "at most this many windows (0: all)");
  app.add_option("--types", types, "llama_model_quantize types");
  app.add_option("--lib", lib_dir, "folder of libllama*.so");
  app.add_option("--calib", calib, "calibration ids: each type also quantized with an importance matrix from them");
  app.add_option("--calib-lines", calib_lines, "calibration sequences used");
  CLI11_PARSE(app, argc, argv);
  try {
    std::string why;
    auto lib = lc::Library::open(lib_dir, &why);
    if (!lib) {
      std::fprintf(stderr, "bench_llama_cpp: %s\n", why.c_str());
      return 1;
    }
    std::printf("ggml %s\n", lib->ggml_version().c_str());
    const auto m = quarot::load_llama2c(model);
    const auto tok = quarot::load_llama2c_tokenizer(tokenizer);
    const std::string dir = (std::filesystem::temp_directory_path() / ("quarot-bench-llama-cpp-" + std::to_string(getpid()))).string();
    std::filesystem::create_directories(dir);
    const std::string f32 = dir + "/model-f32.gguf";
    quarot::test::write_file(f32, quarot::test::gguf_of(m, quarot::test::GgmlType::F32, &tok));
    std::vector<int> stream;
    for (const auto& s : quarot::read_ids_file(ids, m.config.vocab)) stream.insert(stream.end(), s.begin(), s.end());
    const auto windows = quarot::make_windows(stream, quarot::Protocol::Paper, ctx, m.config.bos_id, windows_max);
    std::printf("%zu windows of %d (paper protocol)\n", windows.size(), ctx);

    auto run = [&](const std::string& name, const std::string& path, bool quarot_reads) {
      auto t0 = std::chrono::steady_clock::now();
      auto lm = lib->load(path, ctx);
      const auto rl = lm->evaluate(windows, quarot::Protocol::Paper);
      std::printf("| %s | %.0f KiB | %.6f | %.3f s load, %.2f s eval |", name.c_str(),
                  double(std::filesystem::file_size(path)) / 1024, rl.ppl, lm->load_seconds(), rl.seconds);
      (void)t0;
      if (!quarot_reads) {
        std::printf(" – | – | – |\n");
        return;
      }
      t0 = std::chrono::steady_clock::now();
      const auto qm = quarot::load_model(path);
      const double qload = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      quarot::Transformer<float> q(qm, ctx);
      const auto rq = quarot::evaluate(q, windows, quarot::Protocol::Paper);
      std::vector<float> ql;
      q.reset();
      q.forward(windows[0].tokens, ql);
      const auto ll = lm->logits(windows[0].tokens);
      double diff = 0, scale = 0;
      for (std::size_t i = 0; i < ll.size(); ++i) {
        diff = std::max(diff, std::fabs(double(ll[i]) - ql[i]));
        scale = std::max(scale, std::fabs(double(ql[i])));
      }
      std::printf(" %.6f | %+.3f%% | %.2e | %.3f s load, %.2f s eval |\n", rq.ppl, 100 * (rl.ppl / rq.ppl - 1), diff / scale, qload, rq.seconds);
    };
    std::printf("| file | size | ppl llama.cpp | llama.cpp time | ppl quarot | llama.cpp / quarot | max rel. logit diff (window 0) | quarot time |\n|---|---|---|---|---|---|---|---|\n");
    run("F32 (test writer)", f32, true);
    const std::map<std::string, int> ftypes = {{"Q8_0", 7}, {"Q4_0", 2}, {"Q4_1", 3}, {"IQ4_NL", 25}, {"Q4_K_M", 15}, {"F16", 1}};
    std::map<std::string, std::vector<float>> imatrix;
    if (!calib.empty()) {
      auto seqs = quarot::read_ids_file(calib, m.config.vocab);
      if (int(seqs.size()) > calib_lines) seqs.resize(std::size_t(calib_lines));
      imatrix = lc::importance_matrix(m, seqs, ctx);
    }
    for (int with_imatrix = 0; with_imatrix < (calib.empty() ? 1 : 2); ++with_imatrix)
    for (const auto& t : types) {
      auto it = ftypes.find(t);
      if (it == ftypes.end()) throw quarot::Error("--types", "unknown type " + t);
      const std::string out = dir + "/model-" + t + (with_imatrix ? "-imatrix" : "") + ".gguf";
      lib->quantize(f32, out, it->second, 1, with_imatrix ? &imatrix : nullptr);
      bool readable = true;
      {
        quarot::MappedFile f(out);
        const auto g = quarot::parse_gguf(f.bytes(), out);
        for (const auto& ti : g.tensors) {
          const auto n = quarot::ggml_type_name(ti.ggml_type);
          if (n != "F32" && n != "F16" && n != "BF16" && n != "Q8_0" && n != "Q4_0" && n != "Q4_1" && n != "Q5_0" && n != "Q5_1" && n != "IQ4_NL" && n != "Q4_K" && n != "Q6_K") readable = false;
        }
      }
      run("llama_model_quantize " + t + (with_imatrix ? " + imatrix" : ""), out, readable);
    }
    std::filesystem::remove_all(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_llama_cpp: %s\n", e.what());
    return 1;
  }
  return 0;
}
