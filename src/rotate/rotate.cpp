#include "quarot/rotate.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/large_buffer.hpp"
#include "quarot/error.hpp"
#include "quarot/json_limits.hpp"

namespace quarot {

namespace {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A right-multiplication x <- x * R on rows of doubles.
struct RightOp {
  int n = 0;
  std::vector<double> signs;           // applied first, if not empty
  std::shared_ptr<const Hadamard> h;   // then the Hadamard, or
  std::vector<double> dense;           // a dense n x n matrix
  void apply(double* x, int rows, int64_t stride) const {
    for (int r = 0; r < rows; ++r) {
      double* row = x + int64_t(r) * stride;
      if (!signs.empty())
        for (int i = 0; i < n; ++i) row[i] *= signs[i];
    }
    if (h) {
      h->right(x, rows, stride);
      return;
    }
    Eigen::Map<Mat, 0, Eigen::OuterStride<>> xm(x, rows, n, Eigen::OuterStride<>(stride));
    const Mat y = xm * Eigen::Map<const Mat>(dense.data(), n, n);
    xm = y;
  }
  // X <- R^T X for X with n rows of `cols` values.
  void apply_left_transpose(double* x, int64_t cols) const {
    if (!signs.empty())
      for (int i = 0; i < n; ++i)
        for (int64_t c = 0; c < cols; ++c) x[i * cols + c] *= signs[i];
    if (h) {
      h->left_transpose(x, cols);
      return;
    }
    Eigen::Map<Mat> xm(x, n, cols);
    const Mat y = Eigen::Map<const Mat>(dense.data(), n, n).transpose() * xm;
    xm = y;
  }
};

using DoubleBuffer = std::vector<double, LargeAllocator<double>>;  // huge pages: see large_buffer.hpp

DoubleBuffer to_double(const float* p, std::size_t n) { return DoubleBuffer(p, p + n); }
template <class V>
void from_double(const V& d, float* p) {
  for (std::size_t i = 0; i < d.size(); ++i) p[i] = float(d[i]);
}

// One weight matrix in fp64 through its whole pipeline, cast once at the end.
struct Work {
  Matrix& m;
  DoubleBuffer d;
  explicit Work(Matrix& mat) : m(mat), d(to_double(mat.data.data(), mat.data.size())) {}
  ~Work() { from_double(d, m.data.data()); }
  void scale_columns(const std::vector<float>& g) {
    for (int64_t r = 0; r < m.rows; ++r)
      for (int64_t c = 0; c < m.cols; ++c) d[std::size_t(r * m.cols + c)] *= g[c];
  }
  // W <- W R (rows are inputs-side vectors).
  void right(const RightOp& op) { op.apply(d.data(), int(m.rows), m.cols); }
  // W <- R^T W (R acts on the output side).
  void left_transpose(const RightOp& op) { op.apply_left_transpose(d.data(), m.cols); }
  // Row segments of length `seg` (e.g. per head) each get x <- x H.
  void right_segments(const Hadamard& h, int seg) {
    for (int64_t r = 0; r < m.rows; ++r)
      h.right(d.data() + r * m.cols, int(m.cols / seg), seg);
  }
};

void right_vec(std::vector<float>& v, const RightOp& op) {
  auto d = to_double(v.data(), v.size());
  op.apply(d.data(), 1, int64_t(d.size()));
  from_double(d, v.data());
}

// Cross-head mixing x <- x (H (x) I_hd) on rows of [heads][hd]: column i of each row's
// [heads][hd] view, as a row vector, gets x <- x H.
template <class T>
void cross_head(const Hadamard& h, T* x, int rows, int heads, int hd) {
  std::vector<T> t(std::size_t(heads) * hd);
  for (int r = 0; r < rows; ++r) {
    T* row = x + int64_t(r) * heads * hd;
    for (int a = 0; a < heads; ++a)
      for (int i = 0; i < hd; ++i) t[std::size_t(i) * heads + a] = row[a * hd + i];
    h.right(t.data(), hd, heads);
    for (int a = 0; a < heads; ++a)
      for (int i = 0; i < hd; ++i) row[a * hd + i] = t[std::size_t(i) * heads + a];
  }
}

// Hadamard::make falls back to a dense random orthogonal base on the odd part of n when no
// construction is known (every odd part above 256). Its Gram-Schmidt costs ~4 K^3 flops: K = 4001
// (a prime width) takes minutes. Real models' odd parts are small (11008: 43, 29568: 231), so
// larger ones are refused, both when rotating and when a file's rotation record asks for one.
constexpr int kMaxFallbackBase = 512;
int odd_part(int n) {
  while (n > 0 && n % 2 == 0) n /= 2;
  return n;
}
void check_fallback_size(int n, const std::string& source, const std::string& what) {
  if (const int odd = odd_part(n); odd > kMaxFallbackBase)
    throw Error(source, what + " = " + std::to_string(n) + " has no Hadamard construction and its random orthogonal base would be " +
                            std::to_string(odd) + " x " + std::to_string(odd) + " (at most " +
                            std::to_string(kMaxFallbackBase) + " is built)");
}

std::shared_ptr<const Hadamard> make_h(int n, uint64_t seed, RotationReport* report, const char* what) {
  check_fallback_size(n, "--rotate", std::string(what) + ": size");
  auto h = std::make_shared<const Hadamard>(Hadamard::make(n, seed));
  if (report) {
    report->steps.push_back(std::string(what) + ": " + h->construction());
    if (!h->is_hadamard()) report->fallbacks.push_back(std::string(what) + " (" + std::to_string(n) + "): " + h->construction());
  }
  return h;
}

}  // namespace

std::string OnlineTransforms::describe() const {
  std::ostringstream o;
  if (r3) o << "R3 online on queries and keys after RoPE, per head: " << r3->construction() << "\n";
  if (cross_head) o << "R2 cross-head online on o_proj's input: " << cross_head->construction() << " (x) I_" << head_dim << "\n";
  if (r4) o << "R4 online on down_proj's input: " << r4->construction() << "\n";
  return o.str();
}

struct Rotator::Impl {
  ModelConfig c;
  RotationOptions opts;
  RightOp q1;  // R1
  std::shared_ptr<const Hadamard> h_head, h_heads, h_inter;
  OnlineTransforms online;
};

Rotator::Rotator(const ModelConfig& c, const RotationOptions& opts, RotationReport* report) : impl_(std::make_unique<Impl>()) {
  if (opts.r1 && !opts.fuse_norms)
    throw Error("--rotate", "R1 needs the RMSNorm scales fused first (a rotation does not commute with them)");
  auto& I = *impl_;
  I.c = c;
  I.opts = opts;
  const int d = c.hidden, hd = c.head_dim, f = c.intermediate;
  if (opts.r1) {
    I.q1.n = d;
    if (opts.r1_kind == R1Kind::Hadamard) {
      uint64_t st = opts.seed ^ 0x5231ull;  // "R1"
      detail::Rng rng(detail::splitmix64(st));
      I.q1.signs.resize(d);
      for (auto& s : I.q1.signs) s = rng.sign();
      I.q1.h = make_h(d, opts.seed, report, "R1 randomized Hadamard (residual)");
    } else {
      I.q1.dense = random_orthogonal(d, opts.seed ^ 0x52616e64ull);
      if (report) report->steps.push_back("R1 random orthogonal (residual, " + std::to_string(d) + ", seed " + std::to_string(opts.seed) + ")");
    }
  }
  I.online.n_heads = c.n_heads;
  I.online.head_dim = hd;
  if (opts.r2 || opts.r3) I.h_head = make_h(hd, opts.seed, report, "per-head Hadamard (R2/R3)");
  if (opts.r2 && opts.r2_online_cross_head) I.h_heads = make_h(c.n_heads, opts.seed, report, "cross-head Hadamard (R2, online)");
  if (opts.r4) I.h_inter = make_h(f, opts.seed, report, "R4 Hadamard (down_proj input, online)");
  I.online.r3 = opts.r3 ? I.h_head : nullptr;
  I.online.r4 = I.h_inter;
  I.online.cross_head = I.h_heads;
}
void check_rotation_sizes(const ModelConfig& c, const RotationOptions& opts) {
  // The sizes Rotator's constructor builds, with its conditions.
  if (opts.r1 && opts.r1_kind == R1Kind::Hadamard) check_fallback_size(c.hidden, "--rotate", "R1 randomized Hadamard (residual): size");
  if (opts.r2 || opts.r3) check_fallback_size(c.head_dim, "--rotate", "per-head Hadamard (R2/R3): size");
  if (opts.r2 && opts.r2_online_cross_head) check_fallback_size(c.n_heads, "--rotate", "cross-head Hadamard (R2, online): size");
  if (opts.r4) check_fallback_size(c.intermediate, "--rotate", "R4 Hadamard (down_proj input, online): size");
}

Rotator::~Rotator() = default;
const OnlineTransforms& Rotator::online() const { return impl_->online; }

void Rotator::rotate_embeddings(Matrix& tok_embeddings) const {
  if (impl_->opts.r1) {
    Work e(tok_embeddings);
    e.right(impl_->q1);
  }
}

void Rotator::rotate_layer(LayerWeights& L) const {
  const auto& I = *impl_;
  const auto& opts = I.opts;
  const auto& c = I.c;
  const int hd = c.head_dim, f = c.intermediate;
  {  // q, k, v read the attention norm's output.
    for (Matrix* w : {&L.wq, &L.wk, &L.wv}) {
      Work x(*w);
      if (opts.fuse_norms) x.scale_columns(L.attn_norm);
      if (opts.r1) x.right(I.q1);
      if (w == &L.wv && opts.r2) {
        // Per KV head: the head's block of rows gets H^T from the left.
        for (int kvh = 0; kvh < c.n_kv_heads; ++kvh) I.h_head->left_transpose(x.d.data() + std::size_t(kvh) * hd * w->cols, w->cols);
      }
    }
    if (opts.r2 && !L.bv.empty()) {
      auto b = to_double(L.bv.data(), L.bv.size());
      I.h_head->right(b.data(), c.n_kv_heads, hd);
      from_double(b, L.bv.data());
    }
  }
  {  // o_proj: input side gets (I (x) H_hd)(H_heads (x) I); output side Q^T.
    Work o(L.wo);
    if (opts.r2) {
      o.right_segments(*I.h_head, hd);
      if (I.h_heads) cross_head(*I.h_heads, o.d.data(), int(L.wo.rows), c.n_heads, hd);
    }
    if (opts.r1) o.left_transpose(I.q1);
  }
  if (opts.r1 && !L.bo.empty()) right_vec(L.bo, I.q1);
  for (Matrix* w : {&L.w_gate, &L.w_up}) {
    Work x(*w);
    if (opts.fuse_norms) x.scale_columns(L.ffn_norm);
    if (opts.r1) x.right(I.q1);
  }
  {
    Work x(L.w_down);
    if (opts.r4) x.right_segments(*I.h_inter, f);
    if (opts.r1) x.left_transpose(I.q1);
  }
  if (opts.fuse_norms) {
    std::fill(L.attn_norm.begin(), L.attn_norm.end(), 1.f);
    std::fill(L.ffn_norm.begin(), L.ffn_norm.end(), 1.f);
  }
}

void Rotator::rotate_classifier(Matrix& lm_head, std::vector<float>& final_norm) const {
  {
    Work x(lm_head);
    if (impl_->opts.fuse_norms) x.scale_columns(final_norm);
    if (impl_->opts.r1) x.right(impl_->q1);
  }
  if (impl_->opts.fuse_norms) std::fill(final_norm.begin(), final_norm.end(), 1.f);
}

void Rotator::finish_report(RotationReport* report) const {
  if (!report) return;
  const auto& opts = impl_->opts;
  auto log = [&](const std::string& s) { report->steps.push_back(s); };
  if (opts.fuse_norms) log("fused the RMSNorm scales into q/k/v, gate/up and the classifier");
  if (opts.r1) log("R1 absorbed: embedding, q/k/v/gate/up/classifier inputs, o/down outputs");
  if (opts.r2) log(std::string("R2 absorbed: v_proj rows per KV head, o_proj input") + (impl_->h_heads ? " (cross-head factor online)" : ""));
  if (opts.r4) log("R4: H^T absorbed into down_proj, H online on its input");
  if (opts.r3) log("R3: online per-head Hadamard on queries and keys after RoPE");
}

bool untie_for_rotation(ModelWeights& m, const RotationOptions& opts, RotationReport* report) {
  if ((opts.fuse_norms || opts.r1) && m.config.tied_embeddings) {
    m.lm_head = m.tok_embeddings;  // the classifier gets its own copy before either changes
    m.config.tied_embeddings = false;
    if (report) report->steps.push_back("untied the embeddings (classifier copied)");
    return true;
  }
  return false;
}

void center_embeddings(Matrix& tok_embeddings, RotationReport* report) {
  const int64_t d = tok_embeddings.cols;
  for (int64_t v = 0; v < tok_embeddings.rows; ++v) {
    float* row = tok_embeddings.row(v);
    double mean = 0;
    for (int64_t i = 0; i < d; ++i) mean += row[i];
    mean /= double(d);
    for (int64_t i = 0; i < d; ++i) row[i] = float(row[i] - mean);
  }
  if (report) report->steps.push_back("centred the embedding rows (not exact for RMSNorm)");
}

OnlineTransforms rotate_model(ModelWeights& m, const RotationOptions& opts, RotationReport* report) {
  if (opts.r1 && !opts.fuse_norms)
    throw Error("--rotate", "R1 needs the RMSNorm scales fused first (a rotation does not commute with them)");
  if (is_rotated(m))
    throw Error(m.source, std::string("is already rotated (it carries a '") + kRotationMetadataKey +
                              "' record); rotate the original model instead, or use this one as it is");
  untie_for_rotation(m, opts, report);
  if (opts.center_embeddings) center_embeddings(m.tok_embeddings, report);
  const Rotator r(m.config, opts, report);
  r.rotate_embeddings(m.tok_embeddings);
  for (auto& L : m.layers) r.rotate_layer(L);
  r.rotate_classifier(m.lm_head, m.final_norm);
  r.finish_report(report);
  return r.online();
}

void record_rotation(ModelWeights& m, const RotationOptions& opts, const OnlineTransforms& online) {
  nlohmann::json j = {
      {"version", 1},
      {"seed", opts.seed},
      {"fused_norms", opts.fuse_norms},
      {"r1", opts.r1 ? (opts.r1_kind == R1Kind::Hadamard ? "randomized-hadamard" : "random-orthogonal") : "none"},
      {"r2", opts.r2},
      {"centered_embeddings", opts.center_embeddings},
      {"online",
       {{"r3_head_dim", online.r3 ? online.r3->size() : 0},
        {"cross_head_n_heads", online.cross_head ? online.cross_head->size() : 0},
        {"r4_intermediate", online.r4 ? online.r4->size() : 0}}},
      {"constructions",
       {{"r3", online.r3 ? online.r3->construction() : ""},
        {"cross_head", online.cross_head ? online.cross_head->construction() : ""},
        {"r4", online.r4 ? online.r4->construction() : ""}}},
  };
  m.metadata[kRotationMetadataKey] = j.dump();
}

OnlineTransforms online_transforms_of(const ModelWeights& m) {
  OnlineTransforms t;
  auto it = m.metadata.find(kRotationMetadataKey);
  if (it == m.metadata.end()) return t;
  const auto& c = m.config;
  t.n_heads = c.n_heads;
  t.head_dim = c.head_dim;
  check_json_limits(it->second, m.source + ": metadata '" + kRotationMetadataKey + "'");
  try {
    const auto j = nlohmann::json::parse(it->second);
    if (j.at("version").get<int>() != 1) throw Error(m.source, "unsupported quarot.rotation version");
    const uint64_t seed = j.at("seed").get<uint64_t>();
    const auto& on = j.at("online");
    auto get = [&](const char* key, const char* what, int expected, const char* field) -> std::shared_ptr<const Hadamard> {
      const auto& v = on.at(key);
      if (!v.is_number_integer()) throw Error(m.source, std::string("quarot.rotation: ") + key + " must be an integer, got " + v.dump());
      const int64_t n = v.get<int64_t>();
      if (n == 0) return nullptr;
      // The size is the config's width (bounded by the config limits), never the file's choice.
      if (n != expected)
        throw Error(m.source, std::string("quarot.rotation: ") + key + " = " + std::to_string(n) + " does not match the config's " +
                                  field + " (" + std::to_string(expected) + ")");
      check_fallback_size(int(n), m.source, std::string("quarot.rotation: ") + key);
      // The construction recorded at rotation time must be the one rebuilt: files rotated before
      // the Goethals-Seidel bases existed used the older choice (e.g. a random orthogonal base
      // for 11008), so that one is tried next; anything else is refused, never silently wrong.
      const auto recorded = j.contains("constructions") ? j.at("constructions").at(what).get<std::string>() : std::string();
      for (bool goethals_seidel : {true, false}) {
        auto h = std::make_shared<const Hadamard>(Hadamard::make(int(n), seed, goethals_seidel));
        if (recorded.empty() || h->construction() == recorded) return h;
      }
      throw Error(m.source, std::string("quarot.rotation: the ") + what + " transform was built as '" + recorded +
                                "', which this quarot cannot rebuild");
    };
    t.r3 = get("r3_head_dim", "r3", c.head_dim, "'head_dim'");
    t.cross_head = get("cross_head_n_heads", "cross_head", c.n_heads, "'num_attention_heads'");
    t.r4 = get("r4_intermediate", "r4", c.intermediate, "'intermediate_size'");
  } catch (const nlohmann::json::exception& e) {
    throw Error(m.source, std::string("malformed quarot.rotation metadata: ") + e.what());
  }
  return t;
}

bool is_rotated(const ModelWeights& m) { return m.metadata.count(kRotationMetadataKey) != 0; }

RotationPlan plan_rotation(const ModelWeights& m, bool rotate_requested) {
  RotationPlan p;
  if (!is_rotated(m)) {
    p.rotate = rotate_requested;
    return p;
  }
  p.already_rotated = true;
  p.online = online_transforms_of(m);
  if (rotate_requested)
    p.note = m.source + " is already rotated: not rotating again; its recorded online transforms are used" +
             (p.online.empty() ? " (none)" : "");
  return p;
}

RotationPlan plan_rotation(const ModelConfig& config, const std::map<std::string, std::string>& metadata,
                           const std::string& source, bool rotate_requested) {
  ModelWeights header;  // config and metadata only: all online_transforms_of reads
  header.config = config;
  header.metadata = metadata;
  header.source = source;
  return plan_rotation(header, rotate_requested);
}

void check_online_transforms(const ModelWeights& m, const OnlineTransforms& online) {
  if (!online.empty() || !is_rotated(m)) return;
  if (!online_transforms_of(m).empty())
    throw Error(m.source, std::string("is rotated: its '") + kRotationMetadataKey +
                              "' record names online transforms, which this step was not given (it would compute garbage)");
}

template <class T>
ForwardHook<T> online_hook(const OnlineTransforms& t, ForwardHook<T> next) {
  return [t, next](HookPoint p, int layer, const ActivationView<T>& v) {
    switch (p) {
      case HookPoint::QueryAfterRope:
      case HookPoint::KeyAfterRope:
        if (t.r3) t.r3->right(v.data, v.rows * (v.cols / t.head_dim), t.head_dim);
        break;
      case HookPoint::OProjInput:
        if (t.cross_head) cross_head(*t.cross_head, v.data, v.rows, t.n_heads, t.head_dim);
        break;
      case HookPoint::DownProjInput:
        if (t.r4) t.r4->right(v.data, v.rows, v.cols);
        break;
      default:
        break;
    }
    if (next) next(p, layer, v);
  };
}

template ForwardHook<float> online_hook(const OnlineTransforms&, ForwardHook<float>);
template ForwardHook<double> online_hook(const OnlineTransforms&, ForwardHook<double>);

std::vector<ActivationStats> activation_stats(const ModelWeights& m, const OnlineTransforms* online,
                                              const std::vector<std::vector<int>>& windows) {
  struct Acc {
    std::vector<double> chan_max;
    double sum = 0, sum2 = 0, sum3 = 0, sum4 = 0, n = 0, max_abs = 0;
  };
  std::map<std::pair<int, int>, Acc> acc;  // (layer, point)
  ForwardHook<float> collect = [&](HookPoint p, int layer, const ActivationView<float>& v) {
    // Queries are neither cached nor a linear input; the layer output is not quantized.
    if (p == HookPoint::QueryAfterRope || p == HookPoint::LayerOutput) return;
    Acc& a = acc[{layer, int(p)}];
    a.chan_max.resize(std::size_t(v.cols), 0.0);
    for (int r = 0; r < v.rows; ++r)
      for (int c = 0; c < v.cols; ++c) {
        const double x = v.row(r)[c], ax = std::fabs(x);
        a.chan_max[c] = std::max(a.chan_max[c], ax);
        a.max_abs = std::max(a.max_abs, ax);
        a.sum += x;
        a.sum2 += x * x;
        a.sum3 += x * x * x;
        a.sum4 += x * x * x * x;
        a.n += 1;
      }
  };
  int max_len = 1;
  for (const auto& w : windows) max_len = std::max(max_len, int(w.size()));
  // fp32 (moments accumulated in fp64): a 7B model's fp64 copy would not fit in memory.
  Transformer<float> model(m, max_len);
  model.set_hook(online && !online->empty() ? online_hook<float>(*online, collect) : collect);
  std::vector<float> logits;
  for (const auto& w : windows) {
    model.reset();
    model.forward(w, logits);
  }
  std::vector<ActivationStats> out;
  for (auto& [key, a] : acc) {
    auto sorted = a.chan_max;
    std::nth_element(sorted.begin(), sorted.begin() + std::ptrdiff_t(sorted.size() / 2), sorted.end());
    const double median = sorted[sorted.size() / 2];
    const double mean = a.sum / a.n;
    const double var = a.sum2 / a.n - mean * mean;
    // Fourth central moment from the raw moments.
    const double m4 = a.sum4 / a.n - 4 * mean * a.sum3 / a.n + 6 * mean * mean * a.sum2 / a.n - 3 * std::pow(mean, 4);
    out.push_back({HookPoint(key.second), key.first, int(a.chan_max.size()),
                   median > 0 ? *std::max_element(a.chan_max.begin(), a.chan_max.end()) / median : 0.0,
                   var > 0 ? m4 / (var * var) : 0.0, a.max_abs});
  }
  return out;
}

}  // namespace quarot
