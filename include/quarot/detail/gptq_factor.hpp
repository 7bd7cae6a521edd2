#pragma once
// The part of GPTQ that depends on the Hessian alone: its dead inputs (H_ii == 0), the
// act-order permutation and the upper Cholesky factor of the damped inverse Hessian. The
// linears that read one input (k/v/q, up/gate) share it: one Cholesky and triangular inverse
// per Hessian instead of one per linear (the same bits: the same computation).
#include <cstdint>
#include <vector>

#include "quarot/quant.hpp"

namespace quarot::detail {

struct GptqHessianFactor {
  int64_t cols = 0;
  std::vector<uint8_t> dead;   // [cols]: 1 where H_ii == 0 (the weights' column is zeroed)
  std::vector<int64_t> perm;   // column order (identity without act-order)
  std::vector<double> hinv_u;  // [cols][cols] row-major, in the permuted order
  double damp_used = 0;
  int dead_inputs = 0;
  bool act_order = false;  // the GptqOptions it was made for (checked on use)
  double damp = 0;
};

// Throws quarot::Error as gptq_quantize does (size mismatch, not positive definite).
GptqHessianFactor gptq_factor(std::vector<double> hessian, int64_t cols, const GptqOptions& o);
GptqResult gptq_quantize(const float* w, int64_t rows, int64_t cols, const GptqHessianFactor& f, const GptqOptions& o);
GptqResult gptq_quantize_onto(const float* w, int64_t rows, int64_t cols, const GptqHessianFactor& f, const GptqOptions& o,
                              const GridRounder& round);

}  // namespace quarot::detail
