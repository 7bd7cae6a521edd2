#pragma once
// Synthetic checkpoints of real shapes, generated from a seed. No real 7B checkpoint can be had
// on our machines, so shapes and outliers are planted here: a handful of residual-stream
// channels (embedding columns and the o/down output rows that write them) and FFN channels (up_proj rows,
// hence down_proj's input) are 20-100x larger than the rest, as in trained LLMs. Values come
// from an integer PRNG and IEEE add/multiply only, so a seed gives the same bits everywhere.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "quarot/weights.hpp"

namespace quarot {

struct SynthSpec {
  ModelConfig config;
  uint64_t seed = 0;
  int residual_outliers = 4;  // channels of the residual stream
  int ffn_outliers = 4;       // channels of the FFN activation (down_proj's input)
  int kv_outliers = 2;        // key and value channels (rows of k_proj / v_proj), hence o_proj's input
  float outlier_min = 20.f, outlier_max = 100.f;
};

std::vector<std::string> synth_preset_names();
// Throws quarot::Error for an unknown name (listing the known ones).
SynthSpec synth_preset(const std::string& name);

struct PlantedOutliers {
  std::vector<int> residual_channels, ffn_channels, kv_channels;
  std::vector<float> residual_scales, ffn_scales, kv_scales;
};
PlantedOutliers planted_outliers(const SynthSpec& spec);

// One tensor of the model (name and shape as tensor_shapes gives them): what make_synthetic
// puts there, generated alone (so a model larger than memory can be written shard by shard).
void synthetic_tensor(const SynthSpec& spec, const PlantedOutliers& outliers, const std::string& name,
                      const std::vector<int64_t>& shape, std::span<float> data);

// Generates the model (Hugging Face RoPE layout). `progress(done, total)` counts tensors.
ModelWeights make_synthetic(const SynthSpec& spec,
                            const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace quarot
