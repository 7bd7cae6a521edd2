// QDEC's residual stores and k per module kind (include/quarot/qdec.hpp). The kernels are in
// src/ops/qdec_kernels.cpp, the simulation backend and the tuner in src/runtime/qdec_runtime.cpp.
#include "quarot/qdec.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "quarot/error.hpp"

namespace quarot {

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

const char* qdec_kind_name(int kind) {
  static const char* names[] = {"qkv", "o", "gate_up", "down"};
  return kind >= 0 && kind < kQdecKinds ? names[kind] : "?";
}

int qdec_kind_of(LinearModule m) { return linear_spec(m).qdec_kind; }

std::string QdecK::describe() const {
  std::string s;
  for (int i = 0; i < kQdecKinds; ++i)
    s += std::string(i ? "," : "") + qdec_kind_name(i) + "=" + (kind(i) < 0 ? std::string("all") : std::to_string(kind(i)));
  return s;
}

QdecK parse_qdec_k(const std::string& text, QdecK base) {
  auto value = [&](const std::string& v) {
    if (v == "all") return -1;
    std::size_t used = 0;
    int k = -2;
    try {
      k = std::stoi(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || v.empty() || k < 0 || k > 1024)
      throw Error("--qdec-k", "'" + v + "' is not a channel count per 1024 inputs (0..1024 or 'all') in '" + text + "'");
    return k;
  };
  if (text.find('=') == std::string::npos) return QdecK::all(value(text));
  QdecK k = base;
  std::size_t at = 0;
  while (at <= text.size()) {
    const std::size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) throw Error("--qdec-k", "expected KIND=K items (qkv, o, gate_up, down) in '" + text + "'");
    const std::string name = item.substr(0, eq);
    int kind = -1;
    for (int i = 0; i < kQdecKinds; ++i)
      if (name == qdec_kind_name(i)) kind = i;
    if (kind < 0) throw Error("--qdec-k", "unknown module kind '" + name + "' (qkv, o, gate_up, down) in '" + text + "'");
    k.kind(kind) = value(item.substr(eq + 1));
    at = comma + 1;
  }
  return k;
}

uint64_t QdecStore::bytes() const {
  uint64_t n = 0;
  for (const auto& r : linears) n += r.bytes();
  return n;
}

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

}  // namespace quarot
