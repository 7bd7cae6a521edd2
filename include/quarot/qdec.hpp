#pragma once
// QDEC (arXiv 2412.20185, "DecDEC" in its v2): keep the weight residual R = W - Q(W) of every
// decoder linear outside the fast path and, per token, add back the residual rows of the input
// channels with the largest |x| (the salient channels):
//   y[o] += scale[o] * sum_{i in S} q[i][o] * x[i],   S = top-k of |x|
// R is quantized symmetric (4-bit: levels -7..7; 8-bit: -127..127) with one scale per output
// channel chosen by a small grid search for the lowest MSE, and stored transposed ([in][out],
// 4-bit nibble-packed along the output dimension) so one input channel's residual is one
// contiguous row.
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "quarot/forward.hpp"
#include "quarot/qdec_kernels.hpp"
#include "quarot/weights.hpp"

namespace quarot {

// R = w - wq ([rows][cols] row-major both), quantized as above. Throws for bits other than 4 or 8.
ResidualStore make_residual_store(const float* w, const float* wq, int64_t rows, int64_t cols, int bits);

// k_chunk per module kind (the same for every layer), as the paper tunes it.
// The module kinds: 0 q/k/v, 1 o_proj, 2 gate/up, 3 down_proj (LinearSpec::qdec_kind).
inline constexpr int kQdecKinds = 4;
const char* qdec_kind_name(int kind);  // "qkv", "o", "gate_up", "down"
int qdec_kind_of(LinearModule m);
struct QdecK {
  int qkv = 0, o = 0, gate_up = 0, down = 0;
  static QdecK all(int k) { return {k, k, k, k}; }
  int of(LinearModule m) const { return kind(qdec_kind_of(m)); }
  int kind(int i) const { return i == 0 ? qkv : i == 1 ? o : i == 2 ? gate_up : down; }
  int& kind(int i) { return i == 0 ? qkv : i == 1 ? o : i == 2 ? gate_up : down; }
  bool any() const { return qkv != 0 || o != 0 || gate_up != 0 || down != 0; }
  bool operator==(const QdecK&) const = default;
  std::string describe() const;  // "qkv=4,o=4,gate_up=4,down=4" (-1 written "all")
};
// "4" (every kind), "all", or "qkv=4,o=2,gate_up=4,down=8" (kinds left out keep `base`'s value).
// Throws quarot::Error naming --qdec-k.
QdecK parse_qdec_k(const std::string& text, QdecK base = {});

// The residual stores of a model: [layer * kLinearsPerLayer + module] in LinearModule order.
struct QdecStore {
  int bits = 4;
  std::vector<ResidualStore> linears;
  const ResidualStore& at(int layer, LinearModule m) const { return linears[std::size_t(layer * kLinearsPerLayer + int(m))]; }
  int layers() const { return int(linears.size() / kLinearsPerLayer); }
  uint64_t bytes() const;  // codes + scales
};
// `original`: the float model as quantized (after fusion and rotation); `quantized`: the same
// with Q(W) in its linears.
QdecStore build_qdec_store(const ModelWeights& original, const ModelWeights& quantized, int bits);

}  // namespace quarot
