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
// -- 15 bits plus sign, against bf16's 8. Then, per output, in one fixed order on every path:
// 16 int32 lanes, lane j summing (u - z) * q over the columns 64b + 2j, 64b + 2j + 1,
// 64b + 32 + 2j, 64b + 33 + 2j of every block b of a span (a group, or at most 1024 blocks of a
// per-channel row, so no lane can overflow); at the end of each span, lane j of an fp32
// accumulator += float(lane) * (s_w[o][g] * s_x[t][g]) with one FMA; then the 16 fp32 lanes added
// pairwise (i + (i + 8), + 4, + 2, + 1) and the bias. So the AVX-512 path equals the scalar
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
