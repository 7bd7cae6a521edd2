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
#include "quarot/int4.hpp"
#include "quarot/quant.hpp"
#include "quarot/rotate.hpp"
#include "quarot/weights.hpp"

namespace quarot {

struct ResidualStore {
  int64_t rows = 0, cols = 0;  // the linear's [out][in]
  int bits = 4;                // 4 or 8
  std::vector<uint8_t> codes;  // [cols][row_bytes()]: 4-bit u = q + 8 (out 2j low nibble, 2j+1 high); 8-bit u = q + 128
  std::vector<float> scales;   // [rows]
  const uint8_t* external = nullptr;  // when set, the codes live elsewhere (a mapped packed file)
  int64_t row_bytes() const { return bits == 4 ? (rows + 1) / 2 : rows; }
  const uint8_t* code_data() const { return external ? external : codes.data(); }
  uint64_t bytes() const { return uint64_t(cols * row_bytes()) + uint64_t(rows) * 4; }
  int code(int64_t in, int64_t out) const;                                     // q in -qmax..qmax
  float residual(int64_t in, int64_t out) const { return float(code(in, out)) * scales[std::size_t(out)]; }
};

// R = w - wq ([rows][cols] row-major both), quantized as above. Throws for bits other than 4 or 8.
ResidualStore make_residual_store(const float* w, const float* wq, int64_t rows, int64_t cols, int bits);

// The indices of the k largest |x[i]| (exact), largest first; ties go to the lower index.
// O(n): a selection of the k-th largest |x| (nth_element on a copy), then a sort of the k.
void top_k_abs(const float* x, int n, int k, std::vector<int>& out);

// k_chunk channels per 1024 input channels: ceil(k_chunk * cols / 1024), at most cols;
// k_chunk < 0 selects every channel.
int qdec_k(int k_chunk, int64_t cols);

// y[t][o] += scale[o] * sum_{i in top-k(|x[t]|)} q[i][o] * x[t][i] for tokens t (x [tokens][cols],
// y [tokens][rows]). k = 0 leaves y untouched.
void qdec_compensate(const ResidualStore& r, const float* x, int tokens, int k, float* y);
// The same in two steps, so that linears reading one input share one selection:
// sel [tokens][k] = top_k_abs of each token; then apply. `isa` picks the kernel (AVX-512 when
// supported: same sums as the scalar reference up to fp32 reassociation, ~1e-6 relative).
void qdec_select(const float* x, int tokens, int cols, int k, std::vector<int>& sel);
void qdec_apply(const ResidualStore& r, const float* x, int tokens, int k, const int* sel, float* y, Isa isa = best_isa());
// The plain loop qdec_apply is tested against.
void qdec_apply_reference(const ResidualStore& r, const float* x, int tokens, int k, const int* sel, float* y);

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

// Per token, QDEC selects and compensates with the linear's input *before* activation
// quantization (the integer path has it: it quantizes the input itself), so with quantized
// activations the selection is not blurred by the 4-bit grid's ties.
//
// A backend for Transformer<float> that runs `quantized`'s linears in fp32 on the fake-quantized
// input (act.a_bits per token) and adds the compensation. `quantized` and `store` must outlive it.
// The transformer's hook must then not quantize the linears' inputs: use qdec_simulation_model.
std::unique_ptr<LinearBackend> make_qdec_simulation_backend(const ModelWeights& quantized, const QdecStore& store, QdecK k,
                                                            const ActQuantOptions& act = {});
// The fake-quant simulation of a quantized model with QDEC: online transforms and KV quantizers in
// the hook, activation quantization and compensation in the backend.
Transformer<float> qdec_simulation_model(const ModelWeights& quantized, const QdecStore& store, QdecK k,
                                         const OnlineTransforms& online, const ActQuantOptions& act, int max_context);

// The tuner (--qdec-slowdown): k_chunk per module kind, the same for every layer, as large as a
// time budget allows, grown greedily where the next step costs least.
inline constexpr int kQdecLevels[] = {0, 1, 2, 4, 8, 16, 32, 64};
struct QdecCosts {
  // seconds per token of one decode step's compensation (all layers) for kind i at level j
  // (kQdecLevels[j]): selection + application, measured on the store's real rows.
  double seconds[kQdecKinds][std::size(kQdecLevels)] = {};
};
// Measures the costs on this machine: one token at a time over eight different inputs; a store
// of 64 MB or more (a model larger than the cache) is timed cold (caches evicted before each
// token, the median of 4 * repeats tokens), a smaller one warm (the minimum of `repeats` runs).
QdecCosts measure_qdec_costs(const QdecStore& store, int repeats = 5, Isa isa = best_isa());
struct QdecTuning {
  QdecK k;
  double budget_seconds = 0, cost_seconds = 0;  // per token
  std::vector<std::string> steps;               // the greedy steps taken, for the report
};
// Starts at k = 0 and repeatedly raises the kind whose next level adds the least time, while the
// total stays within budget_seconds; stops when no step fits.
QdecTuning tune_qdec(const QdecCosts& costs, double budget_seconds);

}  // namespace quarot
