// Load throughput of a multi-GB Hugging Face checkpoint against `cat files > /dev/null` on the
// same files, measured in the same run (the baseline is the ratio's denominator).
//
//   quarot-bench-load [--dir /tmp/quarot-bench] [--layers 4] [--dtype f32] [--repeat 3]
//
// The checkpoint (synthetic llama2-7b-layer, N layers) is generated once and reused. Warm runs
// read from the page cache; cold runs (after dropping the page cache) are measured only when
// /proc/sys/vm/drop_caches is writable.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "quarot/checkpoint.hpp"
#include "quarot/synth.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

bool drop_caches() {
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  ::sync();
  f << "3\n";
  f.flush();
  return bool(f);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/tmp/quarot-bench", dtype_s = "f32";
  int layers = 4, repeat = 3;
  CLI::App app{"Checkpoint load throughput (GB/s) against cat > /dev/null on the same files.", "quarot-bench-load"};
  app.add_option("--dir", dir, "where the synthetic checkpoint lives (generated when missing)")->capture_default_str();
  app.add_option("--layers", layers, "layers of the llama2-7b-layer model")->capture_default_str();
  app.add_option("--dtype", dtype_s, "f32, f16 or bf16")->capture_default_str();
  app.add_option("--repeat", repeat, "runs per measurement (median reported)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const quarot::DType dtype = dtype_s == "f16" ? quarot::DType::F16 : dtype_s == "bf16" ? quarot::DType::BF16 : quarot::DType::F32;
  const std::string model = dir + "/llama2-7b-layer-L" + std::to_string(layers) + "-" + dtype_s;

  if (!fs::exists(model + "/config.json")) {
    std::fprintf(stderr, "generating %s ...\n", model.c_str());
    auto spec = quarot::synth_preset("llama2-7b-layer");
    spec.config.n_layers = layers;
    quarot::save_hf(quarot::make_synthetic(spec), model, {dtype, uint64_t(2) << 30, {}});
  }
  std::vector<std::string> files;
  uint64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(model))
    if (e.path().extension() == ".safetensors") {
      files.push_back(e.path().string());
      bytes += fs::file_size(e.path());
    }
  std::sort(files.begin(), files.end());
  std::string cat = "cat";
  for (const auto& f : files) cat += " '" + f + "'";
  cat += " > /dev/null";

  auto time_cat = [&] {
    const auto t0 = Clock::now();
    if (std::system(cat.c_str()) != 0) std::fprintf(stderr, "cat failed\n");
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  auto time_load = [&] {
    const auto t0 = Clock::now();
    const auto m = quarot::load_hf(model);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (m.layers.size() != std::size_t(layers)) std::fprintf(stderr, "bad load\n");
    return s;  // freeing the weights is not counted
  };
  const double gb = double(bytes) / 1e9;
  std::printf("checkpoint: %s, %zu files, %.2f GB (%s)\n", model.c_str(), files.size(), gb, dtype_s.c_str());

  // The other cost any loader that produces owned fp32 memory pays: the first touch of fresh
  // memory (page faults; on a VM each may be a host fault), for as many fp32 values as the
  // checkpoint holds.
  auto time_touch = [&] {
    const auto t0 = Clock::now();
    quarot::FloatBuffer buf(bytes / quarot::dtype_size(dtype));  // the fp32 output's size; every page touched
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (buf[buf.size() / 2] != 0.f) std::fprintf(stderr, "bad buffer\n");
    return s;
  };
  time_cat();  // warm the page cache
  std::vector<double> cat_s, touch_s, load_s;
  for (int r = 0; r < repeat; ++r) {
    cat_s.push_back(time_cat());
    touch_s.push_back(time_touch());
    load_s.push_back(time_load());
  }
  std::printf("warm: cat %.2f GB/s, fresh-memory first touch %.2f GB/s, quarot load_hf %.2f GB/s\n"
              "      load/cat ratio %.2f; load/(cat+touch) ratio %.2f (median of %d)\n",
              gb / median(cat_s), gb / median(touch_s), gb / median(load_s), median(cat_s) / median(load_s),
              (median(cat_s) + median(touch_s)) / median(load_s), repeat);

  if (drop_caches()) {
    std::vector<double> ccat, cload;
    for (int r = 0; r < repeat; ++r) {
      drop_caches();
      ccat.push_back(time_cat());
      drop_caches();
      cload.push_back(time_load());
    }
    std::printf("cold: cat %.2f GB/s, quarot load_hf %.2f GB/s -> ratio %.2f (median of %d)\n", gb / median(ccat),
                gb / median(cload), median(ccat) / median(cload), repeat);
  } else {
    std::printf("cold: not measured (/proc/sys/vm/drop_caches is not writable here)\n");
  }
  return 0;
}
