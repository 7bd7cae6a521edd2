// Eigen first: detail/eigen.hpp silences GCC 12 false positives inside it.
#include "quarot/detail/eigen.hpp"
#include "quarot/qdec.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "quarot/error.hpp"

namespace quarot {

int ResidualStore::code(int64_t in, int64_t out) const {
  const uint8_t* row = codes.data() + in * row_bytes();
  if (bits == 4) {
    const uint8_t b = row[out / 2];
    return int(out % 2 ? b >> 4 : b & 0x0F) - 8;
  }
  return int(row[out]) - 128;
}

ResidualStore make_residual_store(const float* w, const float* wq, int64_t rows, int64_t cols, int bits) {
  if (bits != 4 && bits != 8) throw Error("--qdec-bits", "must be 4 or 8, got " + std::to_string(bits));
  ResidualStore r;
  r.rows = rows;
  r.cols = cols;
  r.bits = bits;
  r.scales.assign(std::size_t(rows), 0.f);
  r.codes.assign(std::size_t(cols * r.row_bytes()), bits == 4 ? 0x88 : 128);
  const int qmax = bits == 4 ? 7 : 127;
  std::vector<float> res(static_cast<std::size_t>(cols));
  for (int64_t o = 0; o < rows; ++o) {
    float amax = 0;
    for (int64_t i = 0; i < cols; ++i) {
      res[std::size_t(i)] = w[o * cols + i] - wq[o * cols + i];
      amax = std::max(amax, std::fabs(res[std::size_t(i)]));
    }
    if (amax == 0) continue;  // scale 0, codes 0: nothing to add back
    // Grid search of the scale: shrink factors 1.0, 0.95, ..., 0.5 of max|R| / qmax, lowest MSE.
    float best_s = amax / float(qmax);
    double best_e = INFINITY;
    for (int k = 0; k <= 10; ++k) {
      const float s = amax / float(qmax) * (1.0f - 0.05f * float(k));
      double e = 0;
      for (float v : res) {
        const float q = std::clamp(std::nearbyint(v / s), float(-qmax), float(qmax));
        e += double(q * s - v) * double(q * s - v);
      }
      if (e < best_e) {
        best_e = e;
        best_s = s;
      }
    }
    r.scales[std::size_t(o)] = best_s;
    for (int64_t i = 0; i < cols; ++i) {
      const int q = int(std::clamp(std::nearbyint(res[std::size_t(i)] / best_s), float(-qmax), float(qmax)));
      uint8_t* row = r.codes.data() + i * r.row_bytes();
      if (bits == 4) {
        const uint8_t u = uint8_t(q + 8);
        row[o / 2] = o % 2 ? uint8_t((row[o / 2] & 0x0F) | (u << 4)) : uint8_t((row[o / 2] & 0xF0) | u);
      } else {
        row[o] = uint8_t(q + 128);
      }
    }
  }
  return r;
}

void top_k_abs(const float* x, int n, int k, std::vector<int>& out) {
  k = std::clamp(k, 0, n);
  out.resize(std::size_t(n));
  for (int i = 0; i < n; ++i) out[std::size_t(i)] = i;
  auto before = [x](int a, int b) {
    const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
    return fa != fb ? fa > fb : a < b;  // a strict total order: deterministic ties
  };
  std::partial_sort(out.begin(), out.begin() + k, out.end(), before);
  out.resize(std::size_t(k));
}

int qdec_k(int k_chunk, int64_t cols) {
  if (k_chunk < 0) return int(cols);
  return int(std::min<int64_t>(cols, (int64_t(k_chunk) * cols + 1023) / 1024));
}

void qdec_compensate(const ResidualStore& r, const float* x, int tokens, int k, float* y) {
  if (k <= 0) return;
  std::vector<int> sel;
  std::vector<float> acc(std::size_t(r.rows));
  for (int t = 0; t < tokens; ++t) {
    const float* xt = x + int64_t(t) * r.cols;
    top_k_abs(xt, int(r.cols), k, sel);
    std::fill(acc.begin(), acc.end(), 0.f);
    // Sum of the selected residual rows weighted by x, then one multiply by the per-output
    // scale (it factors out of the sum).
    for (int i : sel) {
      const float xi = xt[i];
      const uint8_t* row = r.codes.data() + int64_t(i) * r.row_bytes();
      if (r.bits == 4) {
        for (int64_t o = 0; o + 1 < r.rows; o += 2) {
          acc[std::size_t(o)] += float(int(row[o / 2] & 0x0F) - 8) * xi;
          acc[std::size_t(o + 1)] += float(int(row[o / 2] >> 4) - 8) * xi;
        }
        if (r.rows % 2) acc[std::size_t(r.rows - 1)] += float(int(row[r.rows / 2] & 0x0F) - 8) * xi;
      } else {
        for (int64_t o = 0; o < r.rows; ++o) acc[std::size_t(o)] += float(int(row[o]) - 128) * xi;
      }
    }
    float* yt = y + int64_t(t) * r.rows;
    for (int64_t o = 0; o < r.rows; ++o) yt[o] += r.scales[std::size_t(o)] * acc[std::size_t(o)];
  }
}

int QdecK::of(LinearModule m) const {
  switch (m) {
    case LinearModule::Q:
    case LinearModule::K:
    case LinearModule::V: return qkv;
    case LinearModule::O: return o;
    case LinearModule::Gate:
    case LinearModule::Up: return gate_up;
    case LinearModule::Down: return down;
  }
  return 0;
}

uint64_t QdecStore::bytes() const {
  uint64_t n = 0;
  for (const auto& r : linears) n += r.codes.size() + r.scales.size() * 4;
  return n;
}

namespace {

class QdecSimulationBackend : public LinearBackend {
 public:
  QdecSimulationBackend(const ModelWeights& m, const QdecStore& s, QdecK k) : m_(m), s_(s), k_(k) {}
  void allocate(const ModelConfig& c, int max_context) override {
    kv_ = c.kv_dim();
    k_cache_.assign(std::size_t(c.n_layers), std::vector<float>(std::size_t(max_context) * kv_));
    v_cache_.assign(std::size_t(c.n_layers), std::vector<float>(std::size_t(max_context) * kv_));
  }
  void linear(int layer, LinearModule m, const float* in, int n, int cols, float* out, int rows) override {
    using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const Matrix& w = m_.layers[std::size_t(layer)].*linear_member(m);
    Eigen::Map<Mat>(out, n, rows).noalias() =
        Eigen::Map<const Mat>(in, n, cols) * Eigen::Map<const Mat>(w.data.data(), rows, cols).transpose();
    const ResidualStore& r = s_.at(layer, m);
    qdec_compensate(r, in, n, qdec_k(k_.of(m), cols), out);
  }
  void store_and_load_kv(int layer, int pos, int n, const float* k, const float* v, float* k_out, float* v_out) override {
    auto& kc = k_cache_[std::size_t(layer)];
    auto& vc = v_cache_[std::size_t(layer)];
    std::copy(k, k + std::size_t(n) * kv_, kc.begin() + std::ptrdiff_t(pos) * kv_);
    std::copy(v, v + std::size_t(n) * kv_, vc.begin() + std::ptrdiff_t(pos) * kv_);
    std::copy(kc.begin(), kc.begin() + std::ptrdiff_t(pos + n) * kv_, k_out);
    std::copy(vc.begin(), vc.begin() + std::ptrdiff_t(pos + n) * kv_, v_out);
  }

 private:
  const ModelWeights& m_;
  const QdecStore& s_;
  QdecK k_;
  int kv_ = 0;
  std::vector<std::vector<float>> k_cache_, v_cache_;
};

}  // namespace

QdecStore build_qdec_store(const ModelWeights& original, const ModelWeights& quantized, int bits) {
  QdecStore s;
  s.bits = bits;
  for (int l = 0; l < original.config.n_layers; ++l)
    for (LinearModule m : kLinearModules) {
      const Matrix& w = original.layers[std::size_t(l)].*linear_member(m);
      const Matrix& q = quantized.layers[std::size_t(l)].*linear_member(m);
      if (w.rows != q.rows || w.cols != q.cols) throw Error("qdec", "original and quantized models differ in shape");
      s.linears.push_back(make_residual_store(w.data.data(), q.data.data(), w.rows, w.cols, bits));
    }
  return s;
}

std::unique_ptr<LinearBackend> make_qdec_simulation_backend(const ModelWeights& quantized, const QdecStore& store, QdecK k) {
  return std::make_unique<QdecSimulationBackend>(quantized, store, k);
}

}  // namespace quarot
