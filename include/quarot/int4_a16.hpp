#pragma once
// W4A16 with 16-bit integer activations (src/ops/int4_a16.cpp), issue 19 item 3: the packed
// runtime's W4A16 path for files whose recipe says so (ActQuantOptions::a16_group; older files run
// int4_gemm_f32, quarot/int4.hpp). fp32 FMA peaks at half the rate of vpdpwssd (16-bit pairs into
// int32) on this CPU, so the fp32 path cannot reach ggml Q4_0's int8 speed; this path trades the
// fp32 products for exact integer sums of 16-bit codes.
//
// Each token's activations are quantized per weight group by quarot/act16.hpp (the rule the
// simulation rounds with too): s_x[t][g] = max |x| / 32767 over the group's columns,
// q = nearbyint(x * (32767 / max |x|)) in -32767..32767 (an all-zero group has s_x = 0, q = 0)
// -- 15 bits plus sign, against bf16's 8. Then, per output, in one fixed order on every path: for
// each span (a group, or at most 1024 blocks of 64 columns of it, so the span's integer sum fits
// int32), in column order, the exact int32 sum of (u - z) * q over the span's columns (any
// summation order gives the same integer); then total = fma(float(sum), s_w[o][g] * s_x[t][g],
// total) from total = 0, span by span (in group order); then the bias. So the AVX-512 path equals the scalar
// reference bit for bit, whatever the number of threads or tokens in the call. Non-finite
// activations (a NaN or an infinity anywhere) fall back to int4_gemm_f32 for the whole call. The
// error against int4_gemm_f32 is the activations' rounding: |dy| <= sum_g s_x[t][g] / 2 * sum_{i in g} |w[o][i]| plus fp32 rounding.
#include "quarot/int4.hpp"

namespace quarot {

// y[t][o] as above (+ bias[o]), x row-major [rows][w.cols]. Multi-threaded (OpenMP, dynamic chunks
// of output rows). AVX-512 VNNI: vpdpwssd; AVX2 and scalar: the scalar reference. Throws
// quarot::Error when the group size is not a multiple of 64 dividing the width.
void int4_gemm_a16_int16(const Int4Weights& w, const float* x, int rows, const float* bias, float* y, Isa isa = best_isa());
inline void int4_gemm_a16_int16_ref(const Int4Weights& w, const float* x, int rows, const float* bias, float* y) {
  int4_gemm_a16_int16(w, x, rows, bias, y, Isa::Scalar);
}

}  // namespace quarot
