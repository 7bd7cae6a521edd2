// The float forward pass (see include/quarot/forward.hpp). Linear layers go through Eigen's
// GEMM (OpenMP-parallel); attention runs one head per thread with the scores of one head live.
#include "quarot/forward.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/fixed_chunks.hpp"
#include "quarot/error.hpp"

namespace quarot {

const char* hook_point_name(HookPoint p) {
  switch (p) {
    case HookPoint::QkvInput: return "qkv_input";
    case HookPoint::QueryAfterRope: return "query_after_rope";
    case HookPoint::KeyAfterRope: return "key_after_rope";
    case HookPoint::ValueAfterProj: return "value";
    case HookPoint::OProjInput: return "o_proj_input";
    case HookPoint::GateUpInput: return "gate_up_input";
    case HookPoint::DownProjInput: return "down_proj_input";
    case HookPoint::LayerOutput: return "layer_output";
  }
  return "?";
}

int64_t config_dim(const ModelConfig& c, ConfigDim d) {
  switch (d) {
    case ConfigDim::Hidden: return c.hidden;
    case ConfigDim::QDim: return c.q_dim();
    case ConfigDim::KvDim: return c.kv_dim();
    case ConfigDim::Intermediate: return c.intermediate;
  }
  return 0;
}

std::vector<LinearInputGroup> linear_input_groups() {
  std::vector<LinearInputGroup> groups;
  for (const LinearSpec& s : kLinearSpecs)
    if (groups.empty() || groups.back().input != s.input) groups.push_back({s.input, {}});
  for (auto& g : groups) {
    for (const LinearSpec& s : kLinearSpecs)
      if (s.input == g.input) g.modules.push_back(s.module);
    std::sort(g.modules.begin(), g.modules.end(),
              [](LinearModule a, LinearModule b) { return linear_spec(a).quant_order < linear_spec(b).quant_order; });
  }
  return groups;
}

namespace {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const Mat<T>>;
template <class T>
using StridedConst = Eigen::Map<const Mat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using Strided = Eigen::Map<Mat<T>, 0, Eigen::OuterStride<>>;


// Inverse RoPE frequencies, one per rotated pair, with the config's scaling applied.
std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> f(half);
  const auto& s = c.rope_scaling;
  for (int i = 0; i < half; ++i) {
    double freq = std::pow(c.rope_theta, -2.0 * i / c.head_dim);
    if (s.type == RopeScalingType::Linear) {
      freq /= s.factor;
    } else if (s.type == RopeScalingType::Llama3) {
      // As Hugging Face's _compute_llama3_parameters: long wavelengths are slowed by `factor`,
      // short ones kept, the band between interpolated.
      const double wavelen = 2 * std::numbers::pi / freq;
      const double low_wavelen = s.original_max_positions / s.low_freq_factor;
      const double high_wavelen = s.original_max_positions / s.high_freq_factor;
      if (wavelen > low_wavelen) {
        freq /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (s.original_max_positions / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        freq = (1 - smooth) * freq / s.factor + smooth * freq;
      }
    }
    f[i] = freq;
  }
  return f;
}

}  // namespace

template <class T>
struct Transformer<T>::Impl {
  struct Layer {
    const T *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo, *ffn_norm, *wg, *wu, *wd;
    const T *q_norm, *k_norm;  // Qwen3's per-head norms; nullptr without
  };
  ModelConfig cfg;
  int max_ctx;
  const T* embed;
  const T* final_norm;
  const T* cls;
  std::vector<Layer> layers;
  std::vector<std::vector<T>> owned;  // converted weights when T is not float
  std::vector<std::vector<T>> kcache, vcache;  // per layer [max_ctx][kv_dim]; one scratch layer with a backend
  std::unique_ptr<LinearBackend> backend;
  bool tables = false;  // the backend embeds and classifies (INT8 tables)
  std::vector<T> rope_cos, rope_sin;           // [max_ctx][head_dim/2]
  int pos = 0;
  ForwardHook<T> hook;
  int stop_layer = -1;
  HookPoint stop_point = HookPoint::QkvInput;

  const T* use(const float* src, std::size_t n) {
    if (n == 0) return nullptr;
    if constexpr (std::is_same_v<T, float>) {
      return src;
    } else {
      owned.emplace_back(src, src + n);
      return owned.back().data();
    }
  }

  Impl(const ModelWeights& w, int max_context, std::unique_ptr<LinearBackend> b)
      : cfg(w.config), max_ctx(max_context), backend(std::move(b)) {
    if (max_ctx <= 0) throw Error(w.source, "context length must be positive");
    if constexpr (!std::is_same_v<T, float>) {
      if (backend) throw Error(w.source, "a linear backend runs in fp32 only");
    }
    if (backend) backend->allocate(cfg, max_ctx);
    tables = backend && backend->owns_tables();
    embed = use(w.tok_embeddings.values(), std::size_t(w.tok_embeddings.rows * w.tok_embeddings.cols));
    final_norm = use(w.final_norm.data(), w.final_norm.size());
    cls = cfg.tied_embeddings ? embed : use(w.lm_head.values(), std::size_t(w.lm_head.rows * w.lm_head.cols));
    for (const auto& L : w.layers) {
      layers.push_back({use(L.attn_norm.data(), L.attn_norm.size()), use(L.wq.data.data(), L.wq.data.size()),
                        use(L.wk.data.data(), L.wk.data.size()), use(L.wv.data.data(), L.wv.data.size()),
                        use(L.wo.data.data(), L.wo.data.size()), use(L.bq.data(), L.bq.size()),
                        use(L.bk.data(), L.bk.size()), use(L.bv.data(), L.bv.size()), use(L.bo.data(), L.bo.size()),
                        use(L.ffn_norm.data(), L.ffn_norm.size()), use(L.w_gate.data.data(), L.w_gate.data.size()),
                        use(L.w_up.data.data(), L.w_up.data.size()), use(L.w_down.data.data(), L.w_down.data.size()),
                        use(L.q_norm.data(), L.q_norm.size()), use(L.k_norm.data(), L.k_norm.size())});
      if (cfg.qk_norm && (L.q_norm.size() != std::size_t(cfg.head_dim) || L.k_norm.size() != std::size_t(cfg.head_dim)))
        throw Error(w.source, "the config asks for q/k norms of head_dim " + std::to_string(cfg.head_dim) + " values; the weights lack them");
    }
    const int cache_layers = backend ? 1 : cfg.n_layers;  // a backend holds the cache itself
    kcache.assign(cache_layers, std::vector<T>(std::size_t(max_ctx) * cfg.kv_dim()));
    vcache.assign(cache_layers, std::vector<T>(std::size_t(max_ctx) * cfg.kv_dim()));
    const auto inv = rope_inv_freq(cfg);
    const int half = cfg.head_dim / 2;
    rope_cos.resize(std::size_t(max_ctx) * half);
    rope_sin.resize(std::size_t(max_ctx) * half);
    for (int p = 0; p < max_ctx; ++p)
      for (int i = 0; i < half; ++i) {
        const double a = p * inv[i];
        rope_cos[std::size_t(p) * half + i] = T(std::cos(a));
        rope_sin[std::size_t(p) * half + i] = T(std::sin(a));
      }
  }

  struct Stop {};  // thrown past the rest of the forward pass when calibration has what it needs
  void call_hook(HookPoint p, int layer, Mat<T>& m) {
    if (hook) hook(p, layer, ActivationView<T>{m.data(), int(m.rows()), int(m.cols())});
    if (layer == stop_layer && p == stop_point) throw Stop{};
  }

  void rmsnorm(const Mat<T>& x, const T* weight, Mat<T>& out) const {
    out.resize(x.rows(), x.cols());
    for (Eigen::Index r = 0; r < x.rows(); ++r) {
      const T ms = x.row(r).squaredNorm() / T(x.cols());
      const T inv = T(1) / std::sqrt(ms + T(cfg.rms_eps));
      for (Eigen::Index c = 0; c < x.cols(); ++c) out(r, c) = x(r, c) * inv * weight[c];
    }
  }

  // Qwen3's q/k norm: RMSNorm over each head_dim slice of [n][heads*head_dim], in place.
  void head_rmsnorm(Mat<T>& m, const T* weight) const {
    const int hd = cfg.head_dim;
    for (Eigen::Index r = 0; r < m.rows(); ++r)
      for (Eigen::Index h = 0; h < m.cols() / hd; ++h) {
        auto x = m.row(r).segment(h * hd, hd);
        const T inv = T(1) / std::sqrt(x.squaredNorm() / T(hd) + T(cfg.rms_eps));
        for (int i = 0; i < hd; ++i) x(i) = x(i) * inv * weight[i];
      }
  }

  // In place on [n][heads*head_dim], token i at position pos0 + i.
  void rope(Mat<T>& m, int heads, int pos0) const {
    const int hd = cfg.head_dim, half = hd / 2;
    const bool interleaved = cfg.rope_layout == RopeLayout::Interleaved;
    for (Eigen::Index r = 0; r < m.rows(); ++r) {
      const T* cs = rope_cos.data() + std::size_t(pos0 + r) * half;
      const T* sn = rope_sin.data() + std::size_t(pos0 + r) * half;
      for (int h = 0; h < heads; ++h) {
        T* x = m.row(r).data() + h * hd;
        for (int i = 0; i < half; ++i) {
          T& a = interleaved ? x[2 * i] : x[i];
          T& b = interleaved ? x[2 * i + 1] : x[i + half];
          const T a0 = a, b0 = b;
          a = a0 * cs[i] - b0 * sn[i];
          b = a0 * sn[i] + b0 * cs[i];
        }
      }
    }
  }

  // out (+)= in W^T for W [rows][in.cols()] row-major, in fixed chunks of output features (the
  // same sums whatever the thread count: see fixed_chunks.hpp).
  template <bool Add>
  static void product(const Mat<T>& in, const T* w, int rows, Mat<T>& out) {
    const bool parallel = double(in.rows()) * double(in.cols()) * rows >= detail::kParallelMacs;
    detail::for_fixed_chunks(rows, detail::kOutputChunk, parallel, [&](int64_t o0, int64_t n) {
      const ConstMap<T> wc(w + o0 * in.cols(), n, in.cols());
      if constexpr (Add)
        out.middleCols(o0, n).noalias() += in * wc.transpose();
      else
        out.middleCols(o0, n).noalias() = in * wc.transpose();
    });
  }
  // out = in W^T (+ bias); W is [rows][in.cols()] row-major.
  void linear(int layer, LinearModule m, const Mat<T>& in, const T* w, int rows, const T* bias, Mat<T>& out) {
    out.resize(in.rows(), rows);
    if constexpr (std::is_same_v<T, float>) {
      if (backend) {
        backend->linear(layer, m, in.data(), int(in.rows()), int(in.cols()), out.data(), rows, reads_previous_input(m));
      } else {
        product<false>(in, w, rows, out);
      }
    } else {
      product<false>(in, w, rows, out);
    }
    if (bias) out.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bias, rows);
  }
  void linear_add(int layer, LinearModule m, const Mat<T>& in, const T* w, int rows, const T* bias, Mat<T>& x) {
    if (backend) {
      linear(layer, m, in, w, rows, bias, tmp);
      x += tmp;
      return;
    }
    product<true>(in, w, rows, x);
    if (bias) x.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bias, rows);
  }
  Mat<T> tmp;

  void attention(int layer, const Mat<T>& q, Mat<T>& out) const {
    const int n = int(q.rows()), hd = cfg.head_dim, kvd = cfg.kv_dim(), qd = cfg.q_dim();
    const int ctx = pos + n, group = cfg.n_heads / cfg.n_kv_heads;
    const T scale = T(1) / std::sqrt(T(hd));
    out.resize(n, qd);
    const T* K = kcache[backend ? 0 : layer].data();
    const T* V = vcache[backend ? 0 : layer].data();
    // One head per thread, when there is enough work to pay for waking the threads (a tiny
    // model spends more time in OpenMP barriers than in attention otherwise).
    const double work = double(cfg.n_heads) * n * ctx * hd;
#pragma omp parallel if (work > 4e6)
    {
      omp_set_num_threads(1);  // no nested Eigen threads for a head's products (this region's own setting)
      Mat<T> s;  // the scores of one head: [n][ctx]
#pragma omp for schedule(static)
      for (int h = 0; h < cfg.n_heads; ++h) {
        const int kvh = h / group;
        StridedConst<T> qh(q.data() + h * hd, n, hd, Eigen::OuterStride<>(qd));
        StridedConst<T> kh(K + kvh * hd, ctx, hd, Eigen::OuterStride<>(kvd));
        StridedConst<T> vh(V + kvh * hd, ctx, hd, Eigen::OuterStride<>(kvd));
        s.resize(n, ctx);
        s.noalias() = qh * kh.transpose();
        for (int i = 0; i < n; ++i) {
          const int visible = pos + i + 1;  // causal: keys 0 .. pos+i
          auto p = s.row(i).head(visible).array();  // Eigen's vectorized exp
          p *= scale;
          p = (p - p.maxCoeff()).exp();
          p /= p.sum();
          s.row(i).tail(ctx - visible).setZero();
        }
        Strided<T> oh(out.data() + h * hd, n, hd, Eigen::OuterStride<>(qd));
        oh.noalias() = s * vh;
      }
    }
  }

  void run(std::span<const int> tokens, std::vector<T>& logits, bool last_only) {
    try {
      run_all(tokens, logits, last_only);
    } catch (const Stop&) {
      logits.clear();  // stopped early: the KV cache holds this window only up to that layer
    }
  }

  void run_all(std::span<const int> tokens, std::vector<T>& logits, bool last_only) {
    const int n = int(tokens.size());
    if (n == 0) {
      logits.clear();
      return;
    }
    if (pos + n > max_ctx)
      throw Error("forward", "context overflow: " + std::to_string(pos) + " cached + " + std::to_string(n) +
                                 " new tokens > max context " + std::to_string(max_ctx));
    const int d = cfg.hidden, V = cfg.vocab;
    Mat<T> x(n, d);
    for (int i = 0; i < n; ++i) {
      if (tokens[i] < 0 || tokens[i] >= V)
        throw Error("forward", "token id " + std::to_string(tokens[i]) + " outside the vocabulary (" + std::to_string(V) + ")");
      if constexpr (std::is_same_v<T, float>) {
        if (tables) {
          backend->embed(tokens[i], &x(i, 0));
          continue;
        }
      }
      x.row(i) = ConstMap<T>(embed + std::size_t(tokens[i]) * d, 1, d);
    }
    decoder(x);
    Mat<T> h;
    Mat<T> last = last_only ? Mat<T>(x.bottomRows(1)) : std::move(x);
    rmsnorm(last, final_norm, h);
    logits.resize(std::size_t(h.rows()) * V);
    if constexpr (std::is_same_v<T, float>) {
      if (tables) {
        backend->classify(h.data(), int(h.rows()), logits.data());
        return;
      }
    }
    Eigen::Map<Mat<T>> out(logits.data(), h.rows(), V);
    const bool parallel = double(h.rows()) * double(d) * V >= detail::kParallelMacs;
    detail::for_fixed_chunks(V, detail::kOutputChunk, parallel, [&](int64_t o0, int64_t count) {
      out.middleCols(o0, count).noalias() = h * ConstMap<T>(cls + o0 * d, count, d).transpose();
    });
  }

  void run_hidden(const T* in, int n, std::vector<T>& out) {
    if (pos + n > max_ctx)
      throw Error("forward", "context overflow: " + std::to_string(pos) + " cached + " + std::to_string(n) +
                                 " new tokens > max context " + std::to_string(max_ctx));
    Mat<T> x = ConstMap<T>(in, n, cfg.hidden);
    try {
      decoder(x);
    } catch (const Stop&) {
      out.clear();
      return;
    }
    out.assign(x.data(), x.data() + x.size());
  }

  // The decoder layers on the residual stream x [n][hidden], in place; advances pos.
  void decoder(Mat<T>& x) {
    const int n = int(x.rows()), d = cfg.hidden;
    Mat<T> h, q, k, v, a, g, u;
    for (int l = 0; l < cfg.n_layers; ++l) {
      const Layer& L = layers[l];
      rmsnorm(x, L.attn_norm, h);
      call_hook(HookPoint::QkvInput, l, h);
      linear(l, LinearModule::Q, h, L.wq, cfg.q_dim(), L.bq, q);
      linear(l, LinearModule::K, h, L.wk, cfg.kv_dim(), L.bk, k);
      linear(l, LinearModule::V, h, L.wv, cfg.kv_dim(), L.bv, v);
      if (L.q_norm) head_rmsnorm(q, L.q_norm);
      if (L.k_norm) head_rmsnorm(k, L.k_norm);
      rope(q, cfg.n_heads, pos);
      rope(k, cfg.n_kv_heads, pos);
      call_hook(HookPoint::QueryAfterRope, l, q);
      call_hook(HookPoint::KeyAfterRope, l, k);
      call_hook(HookPoint::ValueAfterProj, l, v);
      if constexpr (std::is_same_v<T, float>) {
        if (backend) backend->store_and_load_kv(l, pos, n, k.data(), v.data(), kcache[0].data(), vcache[0].data());
      }
      if (!backend) {
        std::copy(k.data(), k.data() + k.size(), kcache[l].data() + std::size_t(pos) * cfg.kv_dim());
        std::copy(v.data(), v.data() + v.size(), vcache[l].data() + std::size_t(pos) * cfg.kv_dim());
      }
      attention(l, q, a);
      call_hook(HookPoint::OProjInput, l, a);
      linear_add(l, LinearModule::O, a, L.wo, d, L.bo, x);
      rmsnorm(x, L.ffn_norm, h);
      call_hook(HookPoint::GateUpInput, l, h);
      linear(l, LinearModule::Gate, h, L.wg, cfg.intermediate, nullptr, g);
      linear(l, LinearModule::Up, h, L.wu, cfg.intermediate, nullptr, u);
      g = g.unaryExpr([](T z) { return z / (T(1) + std::exp(-z)); }).cwiseProduct(u);
      call_hook(HookPoint::DownProjInput, l, g);
      linear_add(l, LinearModule::Down, g, L.wd, d, nullptr, x);
      call_hook(HookPoint::LayerOutput, l, x);
    }
    pos += n;
  }
};

template <class T>
Transformer<T>::Transformer(const ModelWeights& weights, int max_context)
    : impl_(std::make_unique<Impl>(weights, max_context, nullptr)) {}
template <class T>
Transformer<T>::Transformer(const ModelWeights& weights, int max_context, std::unique_ptr<LinearBackend> backend)
    : impl_(std::make_unique<Impl>(weights, max_context, std::move(backend))) {}
template <class T>
Transformer<T>::~Transformer() = default;
template <class T>
Transformer<T>::Transformer(Transformer&&) noexcept = default;
template <class T>
Transformer<T>& Transformer<T>::operator=(Transformer&&) noexcept = default;
template <class T>
const ModelConfig& Transformer<T>::config() const { return impl_->cfg; }
template <class T>
int Transformer<T>::max_context() const { return impl_->max_ctx; }
template <class T>
int Transformer<T>::position() const { return impl_->pos; }
template <class T>
void Transformer<T>::reset() { impl_->pos = 0; }
template <class T>
void Transformer<T>::set_hook(ForwardHook<T> hook) { impl_->hook = std::move(hook); }
template <class T>
void Transformer<T>::set_stop_after(int layer, HookPoint point) {
  impl_->stop_layer = layer;
  impl_->stop_point = point;
}
template <class T>
void Transformer<T>::forward(std::span<const int> tokens, std::vector<T>& logits) { impl_->run(tokens, logits, false); }
template <class T>
void Transformer<T>::forward_last(std::span<const int> tokens, std::vector<T>& logits) { impl_->run(tokens, logits, true); }
template <class T>
void Transformer<T>::forward_hidden(std::span<const T> x, std::vector<T>& out) {
  const int d = impl_->cfg.hidden;
  if (x.size() % std::size_t(d) != 0) throw Error("forward", "hidden input is not a whole number of rows of " + std::to_string(d));
  impl_->run_hidden(x.data(), int(x.size() / std::size_t(d)), out);
}

template class Transformer<float>;
template class Transformer<double>;

std::vector<int> generate_greedy(Transformer<float>& model, std::span<const int> prompt, int n_new, bool stop_at_eos) {
  std::vector<int> out(prompt.begin(), prompt.end());
  std::vector<float> logits;
  model.forward_last(prompt, logits);
  for (int i = 0; i < n_new; ++i) {
    const int next = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    if (stop_at_eos && next == model.config().eos_id) break;
    if (i + 1 < n_new) model.forward_last(std::span<const int>(&out.back(), 1), logits);
  }
  return out;
}

}  // namespace quarot
