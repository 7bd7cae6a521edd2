#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <optional>
#include <sstream>
#include <utility>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/fixed_chunks.hpp"
#include "quarot/detail/gptq_factor.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/quantize.hpp"
#include "quarot/tokenizer.hpp"

namespace quarot {

std::string apply_model_defaults(QuantConfig& c, const ModelConfig& m) {
  if (!c.kv_clip_follows_model || (c.act.k_bits >= 16 && c.act.v_bits >= 16)) return "";
  const double before = c.act.kv_clip;
  c.act.kv_clip = m.head_dim < 32 ? 1.0 : (std::min(c.act.k_bits, c.act.v_bits) <= 4 ? 0.95 : 1.0);
  c.kv_clip_follows_model = false;  // chosen: describe() and the recipe say the value
  char line[200];
  std::snprintf(line, sizeof line, "KV clip %.2f (preset %.2f): head_dim %d %s 32%s", c.act.kv_clip, before, m.head_dim,
                m.head_dim < 32 ? "<" : ">=",
                m.head_dim < 32 ? ", too few values per head for clipping to pay (--kv-clip sets it)" : " (--kv-clip sets it)");
  return line;
}

std::string QuantConfig::describe() const {
  std::ostringstream o;
  const auto& w = gptq.weights;
  o << "--preset " << preset << " --rotate " << (rotate ? "on" : "off");
  if (rotate) o << " --rotation " << (rotation.r1_kind == R1Kind::Hadamard ? "hadamard" : "random") << " --seed " << rotation.seed;
  o << " --w-method " << (method == WeightMethod::None ? "none" : method == WeightMethod::Rtn ? "rtn" : "gptq");
  if (method != WeightMethod::None) {
    o << " --w-bits " << w.grid.bits << " --w-" << (w.grid.symmetric ? "sym" : "asym") << " --w-group " << w.group_size
      << " --clip-search " << (w.clip_search ? "on" : "off");
    if (method == WeightMethod::Gptq)
      o << " --damp " << gptq.damp << " --act-order " << (gptq.act_order ? "on" : "off") << " --static-groups "
        << (gptq.static_groups ? "on" : "off") << " --nsamples " << nsamples << " --seqlen " << seqlen;
  }
  o << " --a-bits " << act.a_bits << " --a-clip " << act.a_clip;
  if (act.a_group > 0) o << " --a-group " << act.a_group;  // only when set: per-token runs' lines stay as they were
  o << " --k-bits " << act.k_bits << " --v-bits " << act.v_bits
    << " --kv-clip " << act.kv_clip << " --classifier-bits " << classifier_bits;
  return o.str();
}

std::vector<std::vector<int>> calibration_windows(const std::vector<std::vector<int>>& seqs, int nsamples, int seqlen,
                                                  uint64_t seed, const std::string& source) {
  if (nsamples <= 0 || seqlen < 2) throw Error("--nsamples/--seqlen", "must be positive (seqlen >= 2)");
  std::vector<std::vector<int>> out;
  bool long_enough = int(seqs.size()) >= nsamples;
  for (int i = 0; long_enough && i < nsamples; ++i) long_enough = int(seqs[i].size()) >= seqlen;
  if (long_enough) {
    for (int i = 0; i < nsamples; ++i) out.emplace_back(seqs[i].begin(), seqs[i].begin() + seqlen);
    return out;
  }
  std::vector<int> stream;
  for (const auto& s : seqs) stream.insert(stream.end(), s.begin(), s.end());
  if (int64_t(stream.size()) < int64_t(nsamples) * seqlen)
    throw Error(source, std::to_string(stream.size()) + " calibration tokens, fewer than nsamples x seqlen = " +
                            std::to_string(int64_t(nsamples) * seqlen));
  uint64_t st = seed ^ 0x63616c6962ull;  // "calib"
  detail::Rng rng(detail::splitmix64(st));
  const uint64_t span = stream.size() - std::size_t(seqlen);
  for (int i = 0; i < nsamples; ++i) {
    const std::size_t at = std::size_t(rng.next() % (span + 1));
    out.emplace_back(stream.begin() + std::ptrdiff_t(at), stream.begin() + std::ptrdiff_t(at) + seqlen);
  }
  return out;
}

std::vector<std::vector<int>> read_calibration(const std::string& path, const Tokenizer* tokenizer, int vocab) {
  const bool ids = path.size() >= 4 && path.compare(path.size() - 4, 4, ".ids") == 0;
  if (ids) return read_ids_file(path, vocab);
  if (!tokenizer)
    throw Error(path, "calibration text needs a tokenizer (--tokenizer FILE); pre-tokenized ids must be named *.ids");
  if (vocab > 0) check_tokenizer_fits_model(*tokenizer, vocab, path);
  // BOS in front only for a tokenizer that has one (Qwen has none: bos_id() is -1).
  std::vector<int> stream;
  if (tokenizer->bos_id() >= 0) stream.push_back(tokenizer->bos_id());
  const auto body = tokenizer->encode(read_text_lf(path));
  if (body.empty()) throw Error(path, "no calibration text");
  stream.insert(stream.end(), body.begin(), body.end());
  return {stream};
}

template <class T>
ForwardHook<T> quantized_model_hook(const OnlineTransforms& online, const ActQuantOptions& act, int head_dim) {
  ForwardHook<T> quant = act.any() || act.a16_group >= 0 ? act_quant_hook<T>(act, head_dim) : ForwardHook<T>{};
  if (online.empty()) return quant;
  return online_hook<T>(online, quant);
}
template ForwardHook<float> quantized_model_hook<float>(const OnlineTransforms&, const ActQuantOptions&, int);
template ForwardHook<double> quantized_model_hook<double>(const OnlineTransforms&, const ActQuantOptions&, int);

namespace {

double rel_error(const Matrix& w, const std::vector<float>& q) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < q.size(); ++i) {
    const double d = double(w.data[i]) - q[i];
    num += d * d;
    den += double(w.data[i]) * w.data[i];
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}


}  // namespace

namespace {

// The embedding table and the classifier (cfg.classifier_bits < 16): per-row tables
// (quantize_int8_rows), what a packed file stores as INT8; tied ones stay one table.
void quantize_classifier(ModelWeights& m, const QuantConfig& cfg, std::vector<ModuleQuantStats>& stats) {
  if (cfg.classifier_bits >= 16) return;
  if (cfg.classifier_bits < 2 || cfg.classifier_bits > 8) throw Error("--classifier-bits", "must be 2..8 or 16, got " + std::to_string(cfg.classifier_bits));
  const auto t0 = std::chrono::steady_clock::now();
  auto quantize_table = [&](Matrix& w) {
    const Int8RowTable t = quantize_int8_rows(w.data.data(), w.rows, w.cols, cfg.classifier_bits);
    std::vector<float> q(w.data.size());
    t.dequantize_into(q.data());
    const double err = rel_error(w, q);
    std::copy(q.begin(), q.end(), w.data.begin());
    return err;
  };
  const double err = quantize_table(m.config.tied_embeddings ? m.tok_embeddings : m.lm_head);
  if (!m.config.tied_embeddings) (void)quantize_table(m.tok_embeddings);
  ModuleQuantStats s{-1, "lm_head", err};
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats.push_back(s);
}

// Quantizes layer l's linears group by group; `hessian(point, width)` gives a group's input
// Hessian with the layer as quantized so far (GPTQ only).
using HessianSource = std::function<std::vector<double>(HookPoint, int width)>;
void quantize_layer(LayerWeights& L, int l, int n_layers, const QuantConfig& cfg, const HessianSource& hessian,
                    const QuantProgress& progress, const QuantizedSink& sink, std::vector<ModuleQuantStats>& stats) {
  // The reference's sequential order: [k, v, q] share one input, then [o], [up, gate], [down].
  static const std::vector<LinearInputGroup> groups = linear_input_groups();
  for (const auto& g : groups) {
    const int width = int((L.*linear_member(g.modules[0])).cols);
    std::vector<double> h;
    if (cfg.method == WeightMethod::Gptq) h = hessian(g.input, width);
    std::vector<double> energy;  // H's diagonal, for custom grids (h itself becomes GPTQ's factor)
    if (cfg.custom_grid && !h.empty())
      for (int j = 0; j < width; ++j) energy.push_back(h[std::size_t(j) * std::size_t(width) + std::size_t(j)]);
    detail::GptqHessianFactor factor;  // made once per group, timed with its first linear
    for (const LinearModule mod : g.modules) {
      const char* name = linear_module_name(mod);
      if (progress) progress(l, n_layers, name);
      Matrix& w = L.*linear_member(mod);
      const auto t0 = std::chrono::steady_clock::now();
      ModuleQuantStats s{l, name, 0};
      QuantizedMatrix q;
      const GridRounder grid = cfg.custom_grid ? cfg.custom_grid(l, mod, w, energy) : GridRounder{};
      if (cfg.method == WeightMethod::Rtn) {
        q = grid ? quantize_onto(w.data.data(), w.rows, w.cols, grid) : quantize_rtn(w.data.data(), w.rows, w.cols, cfg.gptq.weights);
      } else {
        if (factor.cols == 0) factor = detail::gptq_factor(std::move(h), w.cols, cfg.gptq);
        auto r = grid ? detail::gptq_quantize_onto(w.data.data(), w.rows, w.cols, factor, cfg.gptq, grid)
                      : detail::gptq_quantize(w.data.data(), w.rows, w.cols, factor, cfg.gptq);
        s.gptq_loss = r.loss;
        s.damp_used = r.damp_used;
        s.dead_inputs = r.dead_inputs;
        q = std::move(r.q);
      }
      s.rel_weight_error = rel_error(w, q.dequantized);
      if (sink) sink(l, mod, q, w);
      std::copy(q.dequantized.begin(), q.dequantized.end(), w.data.begin());
      s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      stats.push_back(s);
    }
  }
}

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// out (+)= in W^T, W [rows][in.cols()] row-major, in fixed chunks of output features: the very
// expression (and so the very bits) of Transformer's product (src/model/forward.cpp).
template <bool Add>
void product_rows(const MatF& in, const Matrix& w, MatF& out) {
  const int64_t rows = w.rows;
  const bool parallel = double(in.rows()) * double(in.cols()) * double(rows) >= detail::kParallelMacs;
  detail::for_fixed_chunks(rows, detail::kOutputChunk, parallel, [&](int64_t o0, int64_t n) {
    const Eigen::Map<const MatF> wc(w.values() + o0 * in.cols(), n, in.cols());
    if constexpr (Add)
      out.middleCols(o0, n).noalias() += in * wc.transpose();
    else
      out.middleCols(o0, n).noalias() = in * wc.transpose();
  });
}

// The rest of a decoder layer after attention, as Transformer<float>::decoder runs it: x (the
// layer's input rows) += a Wo^T + bo, then the MLP, with `hook` called at GateUpInput,
// DownProjInput and LayerOutput (layer 0). `stop`: return right after the hook at that point
// (x is then unspecified). The attention output `a` (after the hooks at OProjInput) does not
// change once q, k, v are quantized, so calibration computes it once per layer and window
// instead of once per later group: attention was 3/4 of stories260K's calibration passes.
// Scratch kept across windows (same shapes: no allocation, no page faults per window).
struct AfterAttentionScratch {
  MatF h, g, u;
};
void layer_after_attention(const LayerWeights& L, const ModelConfig& c, const MatF& a, MatF& x, const ForwardHook<float>& hook,
                           std::optional<HookPoint> stop, AfterAttentionScratch& scratch) {
  auto call = [&](HookPoint p, MatF& m) {
    if (hook) hook(p, 0, ActivationView<float>{m.data(), int(m.rows()), int(m.cols())});
    return stop && *stop == p;
  };
  product_rows<true>(a, L.wo, x);
  if (!L.bo.empty()) x.rowwise() += Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(L.bo.data(), Eigen::Index(L.bo.size()));
  MatF& h = scratch.h;
  h.resize(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {  // rmsnorm, as the transformer's
    const float ms = x.row(r).squaredNorm() / float(x.cols());
    const float inv = 1.f / std::sqrt(ms + float(c.rms_eps));
    for (Eigen::Index col = 0; col < x.cols(); ++col) h(r, col) = x(r, col) * inv * L.ffn_norm[std::size_t(col)];
  }
  if (call(HookPoint::GateUpInput, h)) return;
  MatF &g = scratch.g, &u = scratch.u;
  g.resize(h.rows(), L.w_gate.rows);
  u.resize(h.rows(), L.w_up.rows);
  product_rows<false>(h, L.w_gate, g);
  product_rows<false>(h, L.w_up, u);
  g = g.unaryExpr([](float z) { return z / (1.f + std::exp(-z)); }).cwiseProduct(u);
  if (call(HookPoint::DownProjInput, g)) return;
  product_rows<true>(g, L.w_down, x);
  call(HookPoint::LayerOutput, x);
}

// Calibration keeps each window's attention output when all of them fit in this many bytes
// (stories260K: 16 MiB; a 7B's 128 x 2048 tokens would need 4 GiB and recompute instead).
// quarot::detail::set_attention_cache_bytes changes it (tests).
double attention_cache_bytes = 1024.0 * 1024 * 1024;

// Quantizes the decoder layer by layer: layers.take(l) gives layer l (rotated), it is quantized
// group by group, then layers.put(l, ...) takes it back. GPTQ's Hessians come from the
// calibration windows' residual stream carried from layer to layer through the layers as
// quantized (each layer run alone, from hidden states): the arithmetic of a whole-model forward
// stopped at that layer, so the same Hessians as recomputing from the embeddings, at the cost of
// one pass per layer.
void quantize_layer_by_layer(LayerSource& layers, const QuantConfig& cfg, const std::vector<std::vector<int>>& calib,
                             const QuantProgress& progress, const QuantizedSink& sink, const LayerDone& layer_done,
                             std::vector<ModuleQuantStats>& stats) {
  const ModelConfig& c = layers.model().config;
  const Matrix& embeddings = layers.model().tok_embeddings;
  const OnlineTransforms& online = layers.online();
  const bool gptq = cfg.method == WeightMethod::Gptq;
  if (gptq && calib.empty()) throw Error("--calib", "GPTQ needs calibration tokens");
  std::vector<std::vector<float>> xs;
  int max_len = 1;
  if (gptq) {
    for (const auto& w : calib) {
      std::vector<float> x(w.size() * std::size_t(c.hidden));
      for (std::size_t i = 0; i < w.size(); ++i) {
        if (w[i] < 0 || w[i] >= c.vocab) throw Error("--calib", "token id " + std::to_string(w[i]) + " outside the vocabulary");
        std::copy(embeddings.row(w[i]), embeddings.row(w[i]) + c.hidden, x.begin() + std::ptrdiff_t(i) * c.hidden);
      }
      xs.push_back(std::move(x));
      max_len = std::max(max_len, int(w.size()));
    }
  }
  for (int l = 0; l < c.n_layers; ++l) {
    // This layer alone as a one-layer model: transformers over it read its weights in place,
    // so they see each module as soon as it is quantized.
    ModelWeights one;
    one.config = c;
    one.config.n_layers = 1;
    one.config.tied_embeddings = true;
    one.tok_embeddings.rows = c.vocab;
    one.tok_embeddings.cols = c.hidden;
    one.final_norm.assign(std::size_t(c.hidden), 1.f);
    one.layers.push_back(layers.take(l));
    LayerWeights& L = one.layers.front();
    // Each window's attention output, once q, k, v are quantized (empty: recompute it).
    const bool cache_attention = gptq && double(xs.size()) * max_len * c.q_dim() * sizeof(float) <= attention_cache_bytes;
    std::vector<MatF> attention;
    AfterAttentionScratch scratch;
    HessianSource hessian = [&](HookPoint point, int width) {
      using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
      MatD h = MatD::Zero(width, width);
      MatD xd;  // one window's rows in double, kept across windows (no allocation per window)
      double tokens = 0;
      ForwardHook<float> collect = [&](HookPoint p, int, const ActivationView<float>& v) {
        if (p == HookPoint::OProjInput && cache_attention && attention.size() < xs.size())
          attention.push_back(Eigen::Map<const MatF>(v.data, v.rows, v.cols));
        if (p != point) return;
        xd = Eigen::Map<const MatF>(v.data, v.rows, v.cols).cast<double>();
        // In fixed chunks of H's columns (the same sums for any thread count); below 512 columns
        // (stories260K: 64, 172) a second thread costs more than it brings.
        detail::for_fixed_chunks(width, detail::kOutputChunk, v.cols >= 512, [&](int64_t c0, int64_t n) {
          h.middleCols(c0, n).noalias() += xd.transpose() * xd.middleCols(c0, n);
        });
        tokens += v.rows;
      };
      const ForwardHook<float> hook = online.empty() ? collect : online_hook<float>(online, collect);
      const bool after_attention = point == HookPoint::GateUpInput || point == HookPoint::DownProjInput;
      if (after_attention && attention.size() == xs.size()) {
        MatF r;
        for (std::size_t w = 0; w < xs.size(); ++w) {
          r = Eigen::Map<const MatF>(xs[w].data(), attention[w].rows(), c.hidden);
          layer_after_attention(L, c, attention[w], r, hook, point, scratch);
        }
      } else {
        Transformer<float> model(one, max_len);
        model.set_hook(hook);
        model.set_stop_after(0, point);
        std::vector<float> out;
        for (const auto& x : xs) {
          model.reset();
          model.forward_hidden(x, out);
        }
      }
      h *= 2.0 / std::max(1.0, tokens);
      return std::vector<double>(h.data(), h.data() + h.size());
    };
    quantize_layer(L, l, c.n_layers, cfg, hessian, progress, sink, stats);
    if (gptq && l + 1 < c.n_layers) {  // the next layer's inputs, through this quantized layer
      if (attention.size() == xs.size()) {
        const ForwardHook<float> hook = online.empty() ? ForwardHook<float>{} : online_hook<float>(online);
        MatF r;
        for (std::size_t w = 0; w < xs.size(); ++w) {
          r = Eigen::Map<const MatF>(xs[w].data(), attention[w].rows(), c.hidden);
          layer_after_attention(L, c, attention[w], r, hook, std::nullopt, scratch);
          std::copy(r.data(), r.data() + r.size(), xs[w].begin());
        }
      } else {
        Transformer<float> model(one, max_len);
        if (!online.empty()) model.set_hook(online_hook<float>(online));
        std::vector<float> out;
        for (auto& x : xs) {
          model.reset();
          model.forward_hidden(x, out);
          x.swap(out);
        }
      }
    }
    layers.put(l, std::move(L));
    if (layer_done) layer_done(l, c.n_layers);
  }
}

}  // namespace

double detail::set_attention_cache_bytes(double bytes) { return std::exchange(attention_cache_bytes, bytes); }

// ---------------------------------------------------------------- layer sources

ModelLayers::ModelLayers(ModelWeights& m, OnlineTransforms online) {
  check_online_transforms(m, online);  // a rotated input quantized without its transforms is garbage
  model_ = &m;
  online_ = std::move(online);
}

ModelLayers::ModelLayers(ModelWeights& m, const QuantConfig& cfg) {
  if (cfg.rotate) {
    online_ = rotate_model(m, cfg.rotation, &rotation_);
    record_rotation(m, cfg.rotation, online_);
  }
  check_online_transforms(m, online_);
  model_ = &m;
}

// Moved out while it is quantized and moved back (no copy).
LayerWeights ModelLayers::take(int l) { return std::move(model_->layers[std::size_t(l)]); }
void ModelLayers::put(int l, LayerWeights&& L) { model_->layers[std::size_t(l)] = std::move(L); }

StreamedLayers::StreamedLayers(const CheckpointReader& src, const QuantConfig& cfg) : src_(src) {
  model_ = &float_parts_;
  float_parts_ = src.float_parts();
  float_parts_.source = src.source();
  if (cfg.rotate && is_rotated(float_parts_))
    throw Error(float_parts_.source, std::string("is already rotated (it carries a '") + kRotationMetadataKey +
                                         "' record); quantize it without rotating (its recorded online transforms are applied)");
  if (!cfg.rotate) online_ = online_transforms_of(float_parts_);  // a rotated input keeps its transforms
  if (cfg.rotate) {
    if (cfg.rotation.r1 && !cfg.rotation.fuse_norms)
      throw Error("--rotate", "R1 needs the RMSNorm scales fused first (a rotation does not commute with them)");
    untie_for_rotation(float_parts_, cfg.rotation, &rotation_);
    if (cfg.rotation.center_embeddings) center_embeddings(float_parts_.tok_embeddings, &rotation_);
    rotator_ = std::make_unique<Rotator>(float_parts_.config, cfg.rotation, &rotation_);
    rotator_->rotate_embeddings(float_parts_.tok_embeddings);
    rotator_->rotate_classifier(float_parts_.lm_head, float_parts_.final_norm);
    online_ = rotator_->online();
    record_rotation(float_parts_, cfg.rotation, online_);
  }
}
StreamedLayers::~StreamedLayers() = default;

LayerWeights StreamedLayers::take(int l) {
  LayerWeights L = src_.layer(l);
  if (rotator_) rotator_->rotate_layer(L);
  return L;
}

void StreamedLayers::put(int l, LayerWeights&& L) {
  // Keep the float parts (fused norms, rotated biases) for the writer; drop the weights.
  LayerWeights& keep = float_parts_.layers[std::size_t(l)];
  keep.attn_norm = std::move(L.attn_norm);
  keep.ffn_norm = std::move(L.ffn_norm);
  keep.bq = std::move(L.bq);
  keep.bk = std::move(L.bk);
  keep.bv = std::move(L.bv);
  keep.bo = std::move(L.bo);
  keep.q_norm = std::move(L.q_norm);
  keep.k_norm = std::move(L.k_norm);
}

// ---------------------------------------------------------------- quantizing

std::vector<ModuleQuantStats> quantize_layers(LayerSource& layers, const QuantConfig& cfg, const std::vector<std::vector<int>>& calib,
                                              const QuantProgress& progress, const QuantizedSink& sink, const LayerDone& layer_done) {
  if (layers.streamed() && cfg.method == WeightMethod::None)
    throw Error("--w-method", "streaming needs quantized weights (rtn or gptq)");
  std::vector<ModuleQuantStats> stats;
  quantize_classifier(layers.model(), cfg, stats);
  if (cfg.method == WeightMethod::None) return stats;
  quantize_layer_by_layer(layers, cfg, calib, progress, sink, layer_done, stats);
  return stats;
}

std::vector<ModuleQuantStats> quantize_weights(ModelWeights& m, const OnlineTransforms& online, const QuantConfig& cfg,
                                               const std::vector<std::vector<int>>& calib, const QuantProgress& progress,
                                               const QuantizedSink& sink) {
  ModelLayers layers(m, online);
  return quantize_layers(layers, cfg, calib, progress, sink);
}

}  // namespace quarot
