#pragma once
// Shared between the pipeline's plan and its stages.
#include <cstdint>

#include "quarot/config.hpp"
#include "quarot/quantize.hpp"

namespace quarot::pipeline_detail {

// Bits per linear weight in the packed file: codes + fp32 scales (+ zero points) per group.
double bits_per_weight(const QuantConfig& c, int64_t cols);
int64_t linear_params(const ModelConfig& c);

}  // namespace quarot::pipeline_detail
