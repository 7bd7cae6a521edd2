#pragma once
// Non-finite weights (NaN/Inf) are refused when a checkpoint is loaded, naming the file and the
// tensor: a NaN weight or norm would otherwise give NaN logits (and perplexity) silently. The
// environment variable QUAROT_ALLOW_NONFINITE=1 loads such a float checkpoint anyway.
#include <cstdint>
#include <span>
#include <string>

#include "quarot/weights.hpp"

namespace quarot {

// Index of the first NaN/Inf in `values`, or -1 (a vectorized scan, then a search in the block).
int64_t first_nonfinite(std::span<const float> values);
bool nonfinite_weights_allowed();  // QUAROT_ALLOW_NONFINITE=1
// "FILE: tensor 'NAME' holds NaN at element I (QUAROT_ALLOW_NONFINITE=1 loads it anyway)"
std::string nonfinite_message(const std::string& file, const std::string& tensor, std::size_t index, float value);
// Throws quarot::Error at the first NaN/Inf of any tensor of `m` (unless allowed).
void check_finite(const ModelWeights& m, const std::string& file);

}  // namespace quarot
