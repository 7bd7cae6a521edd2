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
#include <memory>
#include <vector>

#include "quarot/forward.hpp"
#include "quarot/weights.hpp"

namespace quarot {

struct ResidualStore {
  int64_t rows = 0, cols = 0;  // the linear's [out][in]
  int bits = 4;                // 4 or 8
  std::vector<uint8_t> codes;  // [cols][row_bytes()]: 4-bit u = q + 8 (out 2j low nibble, 2j+1 high); 8-bit u = q + 128
  std::vector<float> scales;   // [rows]
  int64_t row_bytes() const { return bits == 4 ? (rows + 1) / 2 : rows; }
  int code(int64_t in, int64_t out) const;                                     // q in -qmax..qmax
  float residual(int64_t in, int64_t out) const { return float(code(in, out)) * scales[std::size_t(out)]; }
};

// R = w - wq ([rows][cols] row-major both), quantized as above. Throws for bits other than 4 or 8.
ResidualStore make_residual_store(const float* w, const float* wq, int64_t rows, int64_t cols, int bits);

// The indices of the k largest |x[i]| (exact), largest first; ties go to the lower index.
void top_k_abs(const float* x, int n, int k, std::vector<int>& out);

// k_chunk channels per 1024 input channels: ceil(k_chunk * cols / 1024), at most cols;
// k_chunk < 0 selects every channel.
int qdec_k(int k_chunk, int64_t cols);

// y[t][o] += scale[o] * sum_{i in top-k(|x[t]|)} q[i][o] * x[t][i] for tokens t (x [tokens][cols],
// y [tokens][rows]). k = 0 leaves y untouched.
void qdec_compensate(const ResidualStore& r, const float* x, int tokens, int k, float* y);

// k_chunk per module kind (the same for every layer), as the paper tunes it.
struct QdecK {
  int qkv = 0, o = 0, gate_up = 0, down = 0;
  static QdecK all(int k) { return {k, k, k, k}; }
  int of(LinearModule m) const;
};

// The residual stores of a model: [layer * 7 + module] in LinearModule order.
struct QdecStore {
  int bits = 4;
  std::vector<ResidualStore> linears;
  const ResidualStore& at(int layer, LinearModule m) const { return linears[std::size_t(layer * 7 + int(m))]; }
  uint64_t bytes() const;  // codes + scales
};
// `original`: the float model as quantized (after fusion and rotation); `quantized`: the same
// with Q(W) in its linears.
QdecStore build_qdec_store(const ModelWeights& original, const ModelWeights& quantized, int bits);

// A backend for Transformer<float> that runs `quantized`'s linears in fp32 and adds the QDEC
// compensation per token (the fake-quant simulation with QDEC; the activation and KV quantizers
// stay in the hooks). `quantized` and `store` must outlive it.
std::unique_ptr<LinearBackend> make_qdec_simulation_backend(const ModelWeights& quantized, const QdecStore& store, QdecK k);

}  // namespace quarot
