#pragma once
// Shared between the pipeline's plan and its stages.
#include <cstdarg>
#include <cstdint>
#include <string>

#include "quarot/config.hpp"
#include "quarot/quantize.hpp"

namespace quarot::pipeline_detail {

// Bits per linear weight in the packed file: codes + fp32 scales (+ zero points) per group.
double bits_per_weight(const QuantConfig& c, int64_t cols);
int64_t linear_params(const ModelConfig& c);
// vsnprintf into a string: the one formatter behind the plan's text and the run's messages.
std::string vformat(const char* fmt, va_list ap);

}  // namespace quarot::pipeline_detail
