// The quantization quality table on a synthetic model of real shapes (default: two LLaMA-2-7B
// layers with planted outlier channels). There is no language to measure perplexity on, so the
// figure is the per-layer output error: ||y_q - y_f|| / ||y_f|| of the residual stream after
// each layer, against the float model with the same rotation (a rotation preserves norms, so
// rotated and unrotated errors compare directly), and the KL divergence of the final logits.
//
//   quarot-bench-quality-synth [--preset llama2-7b-layer] [--layers 2] [--nsamples 16]
//                              [--seqlen 512] [--eval-windows 2]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

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
    std::fprintf(stderr, "synthetic %s x %d layers: %.1fs\n", preset.c_str(), layers, since(t0));
    std::vector<std::vector<int>> calib, eval;
    for (int i = 0; i < nsamples; ++i) calib.push_back(pseudo_text(seqlen, V, 100 + uint64_t(i)));
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
      if (rotate) online = quarot::rotate_model(rotated, quarot::RotationOptions{});
      const auto ref = run(rotated, online.empty() ? quarot::ForwardHook<float>{} : quarot::online_hook<float>(online), eval);
      for (const auto& s : all_settings) {
        if (!only.empty() && std::find(only.begin(), only.end(), std::string(s.preset)) == only.end()) continue;
        auto cfg = quarot::plan_preset(s.preset).quant;
        cfg.nsamples = nsamples;
        cfg.seqlen = seqlen;
        const int g = cfg.gptq.weights.group_size;
        if (g > 0 && (base.config.hidden % g || base.config.intermediate % g || base.config.q_dim() % g))
          cfg.gptq.weights.group_size = 0;  // small presets: per channel where 128 does not divide
        auto m = rotated;
        t0 = Clock::now();
        const auto stats = quarot::quantize_weights(m, online, cfg, calib, [&](int l, int n, const std::string& mod) {
          std::fprintf(stderr, "%s %s: layer %d/%d %s\n", s.name, rotate ? "rotated" : "plain", l + 1, n, mod.c_str());
          std::fflush(stderr);
        });
        const double t_quant = since(t0);
        double werr = 0;
        for (const auto& st : stats) werr += st.rel_weight_error / double(stats.size());
        const auto q = run(m, quarot::quantized_model_hook<float>(online, cfg.act, m.config.head_dim), eval);
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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quarot-bench-quality-synth: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
