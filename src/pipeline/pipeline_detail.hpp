#pragma once
// Shared between the pipeline's plan and its stages.
#include <cstdarg>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "quarot/config.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/report.hpp"

namespace quarot::pipeline_detail {

// Bits per linear weight in the packed file: codes + fp32 scales (+ zero points) per group.
double bits_per_weight(const QuantConfig& c, int64_t cols);
int64_t linear_params(const ModelConfig& c);
// vsnprintf into a string: the one formatter behind the plan's text and the run's messages.
std::string vformat(const char* fmt, va_list ap);

// The precision planner (precision_plan.cpp): measures on `calibration` (the first o.windows
// windows, at most 512 tokens each) and nothing else; sets act.layers to the plan (bits and clips
// per layer) and returns what it measured and chose. `log` hears one line per step.
RunReport::PrecisionPlan plan_precision(const ModelWeights& float_model, const ModelWeights& quantized, const OnlineTransforms& online,
                                        ActQuantOptions& act, int w_bits, const std::vector<std::vector<int>>& calibration,
                                        const Plan::Planner& o, const std::function<void(const std::string&)>& log);

}  // namespace quarot::pipeline_detail
