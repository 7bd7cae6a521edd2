// LoadedModel (include/quarot/runtime.hpp): any checkpoint, ready to run.
#include <set>
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/runtime.hpp"
#include "runtime_internal.hpp"

namespace quarot {

LoadedModel::LoadedModel(const std::string& path, bool simulate, bool verify_crc, std::optional<QdecK> qdec_k)
    : simulate_(simulate), qdec_k_(qdec_k) {
  if (is_packed_model(path)) {
    packed_ = std::make_unique<PackedModel>(path, verify_crc);
    (void)checked_qdec_k(*packed_, qdec_k);
    if (simulate) weights_ = std::make_unique<ModelWeights>(packed_->dequantized());
  } else {
    if (simulate) throw Error(path, "--simulate applies to packed models only");
    if (qdec_k && qdec_k->any()) throw Error(path, "--qdec-k applies to packed models with a QDEC section only");
    weights_ = std::make_unique<ModelWeights>(load_model(path));
    online_ = online_transforms_of(*weights_);
  }
}

const ModelConfig& LoadedModel::config() const { return packed_ ? packed_->config() : weights_->config; }

std::string LoadedModel::describe() const {
  if (packed_) {
    const auto& r = packed_->recipe();
    // A planned recipe's bits differ per layer: "A4/8" says the layers hold both widths.
    const auto bits = [&](int LayerActQuant::*field, int model_bits) {
      std::set<int> seen;
      for (std::size_t l = 0; l < r.act.layers.size(); ++l) seen.insert(r.act.layer(int(l)).*field);
      if (seen.empty()) seen.insert(model_bits);
      std::string t;
      for (const int b : seen) t += (t.empty() ? "" : "/") + std::to_string(b);
      return t;
    };
    const std::string a = bits(&LayerActQuant::a_bits, r.act.a_bits), kb = bits(&LayerActQuant::k_bits, r.act.k_bits),
                      vb = bits(&LayerActQuant::v_bits, r.act.v_bits);
    std::string s = "packed INT" + std::to_string(r.w_bits) + " (" + r.preset + ": W" + std::to_string(r.w_bits) + "A" + a +
                    (kb == vb ? "KV" + kb : "K" + kb + "V" + vb) + (r.act.layers.empty() ? "" : " per layer") + ", " + r.method + ")";
    s += simulate_ ? ", fake-quant simulation of the same weights" : std::string(", integer path (") + isa_name(best_isa()) + ")";
    if (packed_->qdec()) {
      const QdecK k = qdec_k_ ? *qdec_k_ : packed_->qdec_k();
      s += ", QDEC " + std::to_string(packed_->qdec()->bits) + "-bit residual, k per 1024 " + (k.any() ? k.describe() : "0 (off)");
    }
    if (packed_->int8_tables()) s += ", INT8 embedding/classifier tables";
    return s + (packed_->online().empty() ? "" : ", rotated");
  }
  return online_.empty() ? "float" : "float, rotated (online transforms)";
}

Transformer<float> LoadedModel::transformer(int max_context) const {
  if (packed_)
    return simulate_ ? simulated_model(*packed_, *weights_, max_context, qdec_k_) : integer_model(*packed_, max_context, best_isa(), qdec_k_);
  Transformer<float> t(*weights_, max_context);
  if (!online_.empty()) t.set_hook(online_hook<float>(online_));
  return t;
}

}  // namespace quarot
