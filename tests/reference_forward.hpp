#pragma once
// A plain scalar fp64 forward pass, written independently of src/model/forward.cpp (no Eigen,
// no KV cache, loops as in llama2.c's run.c), that the real one is checked against.
#include <cmath>
#include <numbers>
#include <vector>

#include "quarot/weights.hpp"

namespace quarot::test {

inline std::vector<std::vector<double>> reference_logits(const ModelWeights& m, const std::vector<int>& tokens) {
  const auto& c = m.config;
  const int n = int(tokens.size()), d = c.hidden, hd = c.head_dim, f = c.intermediate;
  const int qd = c.q_dim(), kvd = c.kv_dim(), group = c.n_heads / c.n_kv_heads;
  auto matvec = [](const auto& W, int rows, int cols, const std::vector<double>& x, const std::vector<float>* bias) {
    std::vector<double> y(rows);
    for (int r = 0; r < rows; ++r) {
      double s = bias && !bias->empty() ? (*bias)[r] : 0.0;
      for (int k = 0; k < cols; ++k) s += double(W.data[std::size_t(r) * cols + k]) * x[k];
      y[r] = s;
    }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, const std::vector<float>& w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / double(x.size()) + c.rms_eps);
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w[i];
    return y;
  };
  auto head_norms = [&](std::vector<double>& v, const std::vector<float>& w) {  // Qwen3's q/k norm
    if (w.empty()) return;
    for (std::size_t h0 = 0; h0 < v.size(); h0 += std::size_t(hd)) {
      double ss = 0;
      for (int i = 0; i < hd; ++i) ss += v[h0 + i] * v[h0 + i];
      const double inv = 1.0 / std::sqrt(ss / hd + c.rms_eps);
      for (int i = 0; i < hd; ++i) v[h0 + i] *= inv * w[i];
    }
  };
  auto rope = [&](std::vector<double>& v, int heads, int p) {
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        double freq = std::pow(c.rope_theta, -2.0 * i / hd);
        if (c.rope_scaling.type == RopeScalingType::Linear) freq /= c.rope_scaling.factor;
        if (c.rope_scaling.type == RopeScalingType::Llama3) {  // transformers' _compute_llama3_parameters
          const auto& r = c.rope_scaling;
          const double wavelen = 2 * std::numbers::pi / freq;
          const double low = r.original_max_positions / r.low_freq_factor, high = r.original_max_positions / r.high_freq_factor;
          const double scaled = wavelen > low ? freq / r.factor : freq;
          const double smooth = (r.original_max_positions / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          freq = !(wavelen < high) && !(wavelen > low) ? (1 - smooth) * scaled / r.factor + smooth * scaled : scaled;
        }
        const double ang = p * freq, cs = std::cos(ang), sn = std::sin(ang);
        const int a = c.rope_layout == RopeLayout::Interleaved ? h * hd + 2 * i : h * hd + i;
        const int b = c.rope_layout == RopeLayout::Interleaved ? a + 1 : a + hd / 2;
        const double x0 = v[a], x1 = v[b];
        v[a] = x0 * cs - x1 * sn;
        v[b] = x0 * sn + x1 * cs;
      }
  };
  std::vector<std::vector<double>> x(n, std::vector<double>(d));
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < d; ++i) x[t][i] = m.tok_embeddings.data[std::size_t(tokens[t]) * d + i];
  for (const auto& L : m.layers) {
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const auto h = rmsnorm(x[t], L.attn_norm);
      q[t] = matvec(L.wq, qd, d, h, &L.bq);
      k[t] = matvec(L.wk, kvd, d, h, &L.bk);
      v[t] = matvec(L.wv, kvd, d, h, &L.bv);
      head_norms(q[t], L.q_norm);
      head_norms(k[t], L.k_norm);
      rope(q[t], c.n_heads, t);
      rope(k[t], c.n_kv_heads, t);
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> att(qd, 0.0);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kh = h / group;
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          double dot = 0;
          for (int i = 0; i < hd; ++i) dot += q[t][h * hd + i] * k[j][kh * hd + i];
          s[j] = dot / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (int j = 0; j <= t; ++j)
          for (int i = 0; i < hd; ++i) att[h * hd + i] += s[j] / sum * v[j][kh * hd + i];
      }
      const auto o = matvec(L.wo, d, qd, att, &L.bo);
      for (int i = 0; i < d; ++i) x[t][i] += o[i];
      const auto h2 = rmsnorm(x[t], L.ffn_norm);
      const auto g = matvec(L.w_gate, f, d, h2, nullptr);
      const auto u = matvec(L.w_up, f, d, h2, nullptr);
      std::vector<double> a(f);
      for (int i = 0; i < f; ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const auto down = matvec(L.w_down, d, f, a, nullptr);
      for (int i = 0; i < d; ++i) x[t][i] += down[i];
    }
  }
  std::vector<std::vector<double>> logits(n);
  for (int t = 0; t < n; ++t) logits[t] = matvec(m.classifier(), c.vocab, d, rmsnorm(x[t], m.final_norm), nullptr);
  return logits;
}

// max |a - b| / max |b| over all logits of all positions.
template <class T>
double max_rel_error(const std::vector<T>& flat, const std::vector<std::vector<double>>& ref) {
  double num = 0, den = 0;
  std::size_t k = 0;
  for (const auto& row : ref)
    for (double r : row) {
      num = std::max(num, std::fabs(double(flat[k++]) - r));
      den = std::max(den, std::fabs(r));
    }
  return num / den;
}

}  // namespace quarot::test
