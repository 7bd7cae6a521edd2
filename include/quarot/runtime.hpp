#pragma once
// Running a model (src/runtime): the packed model on the integer path (INT4 GEMM, per-token
// activation quantization, INT4 KV cache, QDEC compensation) or as its fake-quant simulation,
// and LoadedModel, which opens any checkpoint ready to run.
#include <memory>
#include <optional>
#include <string>

#include "quarot/forward.hpp"
#include "quarot/isa.hpp"
#include "quarot/packed.hpp"
#include "quarot/qdec.hpp"
#include "quarot/rotate.hpp"
#include "quarot/weights.hpp"

namespace quarot {

// The integer model: Transformer<float> with the INT4 backend and the online transforms, plus
// QDEC's compensation when the file has the section (k: the file's unless given; needs the
// section when any k > 0).
Transformer<float> integer_model(const PackedModel& m, int max_context, Isa isa = best_isa(), std::optional<QdecK> k = std::nullopt);
// The simulation: dequantized weights (m.dequantized()), online transforms and the recipe's
// fake quantizers. `weights` must outlive the returned transformer (it is used in place).
Transformer<float> simulated_model(const PackedModel& m, const ModelWeights& weights, int max_context,
                                   std::optional<QdecK> k = std::nullopt);

// Any checkpoint, ready to run: a float one (with its online transforms when rotated) or a
// packed one (the integer path; with simulate = true, the fake-quant simulation of the same
// weights instead).
class LoadedModel {
 public:
  // qdec_k: QDEC's k_chunk per kind for a packed model with the section (default: the file's).
  explicit LoadedModel(const std::string& path, bool simulate = false, bool verify_crc = true,
                       std::optional<QdecK> qdec_k = std::nullopt);
  const ModelConfig& config() const;
  bool packed() const { return packed_ != nullptr; }
  std::string describe() const;  // one line: what runs and how
  Transformer<float> transformer(int max_context) const;
  const PackedModel* packed_model() const { return packed_.get(); }
  const ModelWeights* float_weights() const { return weights_.get(); }
  const OnlineTransforms& online() const { return packed_ ? packed_->online() : online_; }

 private:
  std::unique_ptr<PackedModel> packed_;
  std::unique_ptr<ModelWeights> weights_;  // float model, or the packed model dequantized (simulate)
  OnlineTransforms online_;
  bool simulate_ = false;
  std::optional<QdecK> qdec_k_;
};

}  // namespace quarot
