#pragma once
// QDEC at run time (src/runtime): the fake-quant simulation backend, and the tuner that picks
// k_chunk per module kind from costs measured on this machine.
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "quarot/forward.hpp"
#include "quarot/qdec.hpp"
#include "quarot/quant.hpp"
#include "quarot/rotate.hpp"

namespace quarot {

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
