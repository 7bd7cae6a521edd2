// The quantization quality table on a synthetic model of real shapes (default: two LLaMA-2-7B
// layers with planted outlier channels). There is no language to measure perplexity on, so the
// figure is the per-layer output error: ||y_q - y_f|| / ||y_f|| of the residual stream after
// each layer, against the float model with the same rotation (a rotation preserves norms, so
// rotated and unrotated errors compare directly), and the KL divergence of the final logits.
// The model is saved once and each setting is one run of the pipeline (quarot::run), whose
// quantized model is measured in memory (Observer::quantized).
//
//   quarot-bench-quality-synth [--preset llama2-7b-layer] [--layers 2] [--nsamples 16]
//                              [--seqlen 512] [--eval-windows 2]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <unistd.h>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/synth.hpp"

using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Token ids with some structure (a repeating motif plus noise); the model is random, so any
// ids exercise it, but repeated motifs give attention something other than noise to look at.
std::vector<int> pseudo_text(int n, int vocab, uint64_t seed) {
  std::vector<int> t = {1};
  uint64_t s = seed;
  while (int(t.size()) < n) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t.push_back((s >> 60) < 10 ? int(3 + (t.size() % 17)) : int(3 + (s >> 33) % uint64_t(vocab - 3)));
  }
  return t;
}

struct Trace {
  std::vector<std::vector<float>> layer_out;  // [window * layers + layer] -> [tokens][hidden]
  std::vector<std::vector<float>> logits;     // [window] -> [tokens][vocab]
};

Trace run(const quarot::ModelWeights& m, const quarot::ForwardHook<float>& inner, const std::vector<std::vector<int>>& windows) {
  Trace t;
  const int L = m.config.n_layers;
  t.layer_out.resize(windows.size() * std::size_t(L));
  quarot::Transformer<float> model(m, int(windows[0].size()));
  std::size_t w = 0;
  model.set_hook([&](quarot::HookPoint p, int layer, const quarot::ActivationView<float>& v) {
    if (inner) inner(p, layer, v);
    if (p == quarot::HookPoint::LayerOutput) t.layer_out[w * L + layer].assign(v.data, v.data + std::size_t(v.rows) * v.cols);
  });
  for (w = 0; w < windows.size(); ++w) {
    model.reset();
    t.logits.emplace_back();
    model.forward(windows[w], t.logits.back());
  }
  return t;
}

double rel_error(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

double mean_kld(const std::vector<std::vector<float>>& q, const std::vector<std::vector<float>>& ref, int vocab) {
  double sum = 0;
  int64_t n = 0;
  for (std::size_t w = 0; w < ref.size(); ++w)
    for (std::size_t off = 0; off < ref[w].size(); off += std::size_t(vocab)) {
      auto logsoftmax = [&](const float* z, std::vector<double>& out) {
        double mx = z[0], s = 0;
        for (int i = 1; i < vocab; ++i) mx = std::max(mx, double(z[i]));
        for (int i = 0; i < vocab; ++i) s += std::exp(z[i] - mx);
        const double lse = mx + std::log(s);
        out.resize(std::size_t(vocab));
        for (int i = 0; i < vocab; ++i) out[i] = z[i] - lse;
      };
      std::vector<double> lp, lq;
      logsoftmax(ref[w].data() + off, lp);
      logsoftmax(q[w].data() + off, lq);
      double k = 0;
      for (int i = 0; i < vocab; ++i) k += std::exp(lp[i]) * (lp[i] - lq[i]);
      sum += k;
      ++n;
    }
  return sum / double(n);
}

}  // namespace

int main(int argc, char** argv) {
  std::string preset = "llama2-7b-layer";
  int layers = 2, nsamples = 16, seqlen = 512, eval_windows = 2;
  std::vector<std::string> only;
  CLI::App app{"Quantization quality on a synthetic model of real shapes: per-layer output error and logit KLD\n"
               "for each setting, with and without QuaRot's rotations (a Markdown table on stdout).",
               "quarot-bench-quality-synth"};
  app.add_option("--preset", preset, "synthetic model preset")->capture_default_str();
  app.add_option("--layers", layers, "decoder layers")->capture_default_str();
  app.add_option("--nsamples", nsamples, "GPTQ calibration sequences")->capture_default_str();
  app.add_option("--seqlen", seqlen, "tokens per calibration / evaluation window")->capture_default_str();
  app.add_option("--eval-windows", eval_windows, "evaluation windows")->capture_default_str();
  app.add_option("--only", only, "run only these quantization presets (none = float control)");
  CLI11_PARSE(app, argc, argv);

  try {
    auto spec = quarot::synth_preset(preset);
    spec.config.n_layers = layers;
    const int V = spec.config.vocab;
    auto t0 = Clock::now();
    const auto base = quarot::make_synthetic(spec);
    const auto tmp = std::filesystem::temp_directory_path() / ("quarot-bench-quality-synth-" + std::to_string(::getpid()));
    quarot::save_hf(base, (tmp / "model").string());
    std::fprintf(stderr, "synthetic %s x %d layers, saved: %.1fs\n", preset.c_str(), layers, since(t0));
    std::vector<std::vector<int>> eval;
    std::string calib_ids;  // GPTQ's sequences, each taken whole (nsamples x seqlen)
    for (int i = 0; i < nsamples; ++i) {
      for (int t : pseudo_text(seqlen, V, 100 + uint64_t(i))) calib_ids += std::to_string(t) + " ";
      calib_ids += "\n";
    }
    quarot::write_file_atomic((tmp / "calib.ids").string(), calib_ids);
    for (int i = 0; i < eval_windows; ++i) eval.push_back(pseudo_text(seqlen, V, 900 + uint64_t(i)));

    struct Setting {
      const char* name;
      const char* preset;
    };
    const Setting all_settings[] = {{"float (control)", "none"}, {"W8A8KV8 RTN", "w8a8kv8"},   {"W4A16 RTN (g128)", "w4a16-rtn"}, {"W4A16 GPTQ (g128)", "w4a16"},
                                {"W4A4KV4 RTN", "w4a4kv4-rtn"}, {"W4A4KV4 GPTQ", "w4a4kv4"}};
    std::printf("| setting | rotation |");
    for (int l = 0; l < layers; ++l) std::printf(" layer %d out err |", l);
    std::printf(" logit KLD | weight err (mean) | quantize time |\n|---|---|");
    for (int l = 0; l <= layers + 2; ++l) std::printf("---|");
    std::printf("\n");
    for (const bool rotate : {true, false}) {
      auto rotated = base;
      quarot::OnlineTransforms online;
      // The float reference with the rotation the pipeline applies (the plans' rotation options).
      if (rotate) online = quarot::rotate_model(rotated, quarot::RotationOptions{});
      const auto ref = run(rotated, online.empty() ? quarot::ForwardHook<float>{} : quarot::online_hook<float>(online), eval);
      for (const auto& s : all_settings) {
        if (!only.empty() && std::find(only.begin(), only.end(), std::string(s.preset)) == only.end()) continue;
        Trace q;
        double werr = 0, t_quant = 0;
        if (std::string(s.preset) == "none") {
          q = run(rotated, online.empty() ? quarot::ForwardHook<float>{} : quarot::online_hook<float>(online), eval);  // the control
        } else {
          quarot::PlanOptions o;
          o.model = (tmp / "model").string();
          o.preset = s.preset;
          o.no_rotate = !rotate;
          o.kv_clip = quarot::plan_preset(s.preset).quant.act.kv_clip;  // the preset's, as this table always had
          o.calib = (tmp / "calib.ids").string();
          o.nsamples = nsamples;
          o.seqlen = seqlen;
          o.outlier_windows = 0;
          o.no_checksum = true;
          o.quiet = true;
          const int g = quarot::plan_preset(s.preset).quant.gptq.weights.group_size;
          if (g > 0 && (base.config.hidden % g || base.config.intermediate % g || base.config.q_dim() % g))
            o.w_group = 0;  // small presets: per channel where 128 does not divide
          struct Measure : quarot::Observer {
            std::function<void(const quarot::QuantizedModel&)> f;
            std::string what;
            void progress(std::string_view stage, uint64_t, uint64_t, const std::string& m) override {
              if (stage == "quantize") std::fprintf(stderr, "%s: %s\n", what.c_str(), m.c_str());
            }
            void quantized(const quarot::QuantizedModel& m) override { f(m); }
          } measure;
          measure.what = std::string(s.name) + (rotate ? " rotated" : " plain");
          measure.f = [&](const quarot::QuantizedModel& m) {
            q = run(m.weights, quarot::quantized_model_hook<float>(m.online, m.config.act, m.weights.config.head_dim), eval);
          };
          const auto report = quarot::run(quarot::make_plan(o), measure);
          t_quant = report.timings.at("quantize");
          for (const auto& st : report.modules) werr += st.rel_weight_error / double(report.modules.size());
        }
        std::printf("| %s | %s |", s.name, rotate ? "on" : "off");
        for (int l = 0; l < layers; ++l) {
          std::vector<float> a, b;
          for (std::size_t w = 0; w < eval.size(); ++w) {
            const auto& qa = q.layer_out[w * layers + l];
            const auto& ra = ref.layer_out[w * layers + l];
            a.insert(a.end(), qa.begin(), qa.end());
            b.insert(b.end(), ra.begin(), ra.end());
          }
          std::printf(" %.4f |", rel_error(a, b));
        }
        std::printf(" %.4f | %.4f | %.0fs |\n", mean_kld(q.logits, ref.logits, V), werr, t_quant);
        std::fflush(stdout);
      }
    }
    std::filesystem::remove_all(tmp);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quarot-bench-quality-synth: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
