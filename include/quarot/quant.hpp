#pragma once
// Quantizers (QuaRot / GPTQ as published):
//  - integer grids of 2-8 bits: symmetric (scale = max|x| / (2^(b-1) - 1), codes clamped to
//    [-2^(b-1), 2^(b-1) - 1]) or asymmetric (scale = (max - min) / (2^b - 1), integer zero point,
//    codes in [0, 2^b - 1]); round half to even;
//  - weights per output channel or per group of input columns: RTN with an optional clip search
//    (shrink p = 1 - i/100, i < 80, minimizing sum |q(w) - w|^2.4), or GPTQ;
//  - activations per token (symmetric, clip ratio) and the KV cache per head (asymmetric).
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "quarot/forward.hpp"

namespace quarot {

struct Grid {
  int bits = 4;
  bool symmetric = true;
  int qmin() const { return symmetric ? -(1 << (bits - 1)) : 0; }
  int qmax() const { return symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1; }
};

struct QParams {
  double scale = 1.0;
  int zero = 0;  // 0 for symmetric grids
};

// Parameters covering x (times `clip` <= 1). A zero range gives scale 1 (every value is 0).
QParams grid_params(std::span<const float> x, const Grid& g, double clip = 1.0);
inline int quantize_code(double x, const QParams& p, const Grid& g);
inline double dequantize_code(int q, const QParams& p) { return (q - p.zero) * p.scale; }
// Round trip of one value through the grid.
double fake_quant(double x, const QParams& p, const Grid& g);

struct WeightQuantOptions {
  Grid grid{4, true};
  int group_size = 0;        // 0: one group per output channel (row); else columns per group
  bool clip_search = true;   // per row / group: the shrink p minimizing sum |q(w)-w|^2.4
};

// The result of quantizing one weight matrix [rows][cols]: integer codes and parameters (for
// packing) and the dequantized weights (for simulation).
struct QuantizedMatrix {
  int64_t rows = 0, cols = 0;
  int group_size = 0;              // columns per group (cols when per channel)
  Grid grid;
  std::vector<int8_t> codes;       // rows * cols
  std::vector<QParams> params;     // rows * (cols / group_size), row-major
  std::vector<float> dequantized;  // rows * cols
};

// Throws quarot::Error when bits are outside 2..8 or the group size does not divide cols.
void check_weight_options(const WeightQuantOptions& o, int64_t cols, const std::string& what);

QuantizedMatrix quantize_rtn(const float* w, int64_t rows, int64_t cols, const WeightQuantOptions& o);

// The embedding table and the classifier at `bits` (2..8; the packed file's INT8 tables): one
// fp32 scale per row, s = max|w| / (2^(bits-1) - 1) with its significand cut to 16 bits, codes
// round(w / s) in -(2^(bits-1) - 1)..2^(bits-1) - 1 stored as int8. The short significand makes
// code * s exact in fp32 (16 + 8 bits), so dequantizing is exact whatever the order and
// quantizing a dequantized table gives the same codes and scales back: the simulation's
// quantized table and the packed file's are one table, whoever quantized it first.
struct Int8RowTable {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> codes;  // [rows][cols]
  std::vector<float> scales;  // [rows]
  void dequantize_into(float* out) const;  // out[r][c] = codes[r][c] * scales[r] (exact)
};
Int8RowTable quantize_int8_rows(const float* w, int64_t rows, int64_t cols, int bits);

struct GptqOptions {
  WeightQuantOptions weights;
  double damp = 0.01;        // fraction of the mean Hessian diagonal added to the diagonal
  int block_size = 128;
  bool act_order = false;
  bool static_groups = false;
};

struct GptqResult {
  QuantizedMatrix q;
  double loss = 0;        // sum over columns of (w - q)^2 / d^2 / 2, as the reference reports
  double damp_used = 0;   // the damping fraction that made H positive definite
  int dead_inputs = 0;    // columns with H_ii == 0 (zeroed)
  double seconds = 0;
};

// GPTQ on W [rows][cols] (row-major fp32) with Hessian H [cols][cols] (row-major fp64,
// H = 2/N sum x x^T). When H is not positive definite after damping, retries with 10x the
// damping (up to 3 times) and says so in damp_used; throws quarot::Error after that.
GptqResult gptq_quantize(const float* w, int64_t rows, int64_t cols, std::vector<double> hessian, const GptqOptions& o);

// A grid fixed per weight before quantization (e.g. llama.cpp's blocks, gguf.hpp): rounds w at
// (row, col) to its nearest level, returns the level and sets *code (codes fit in int8).
using GridRounder = std::function<double(int64_t row, int64_t col, double w, int* code)>;
// GPTQ onto such a grid: o.weights' grid and groups are not used (o.act_order, damp and block
// size are); the result's codes are the grid's, its params empty.
GptqResult gptq_quantize_onto(const float* w, int64_t rows, int64_t cols, std::vector<double> hessian, const GptqOptions& o,
                              const GridRounder& round);
// Round to nearest onto such a grid.
QuantizedMatrix quantize_onto(const float* w, int64_t rows, int64_t cols, const GridRounder& round);

// Activation and KV-cache quantization in the forward pass (fake quant: values are rounded to
// the grid and dequantized in place).
// One decoder layer's own settings (the precision planner's choice, pipeline): the K and V cache
// bits, the activation bits of its linears' inputs and the clip ratios of its activations, keys
// and values. Weight bits stay the model's (the packed format stores 2..4-bit weights).
struct LayerActQuant {
  int k_bits = 16, v_bits = 16;
  double a_clip = 1.0, k_clip = 1.0, v_clip = 1.0;
  // 0: the model's a_bits (ActQuantOptions::layer resolves it; every recipe before per-layer
  // activation bits); else this layer's (the INT4 GEMM takes 2..8-bit activation codes).
  int a_bits = 0;
  bool operator==(const LayerActQuant&) const = default;
};
struct ActQuantOptions {
  int a_bits = 16;       // 16: activations not quantized (check_act_options refuses other values outside 2..8)
  double a_clip = 1.0;   // QuaRot: 0.9
  int a_group = 0;       // 0: per token; else groups of columns
  int k_bits = 16, v_bits = 16;
  double kv_clip = 1.0;  // QuaRot: 0.95
  bool kv_asym = true;   // per head, asymmetric (QuaRot)
  // a_bits 16 only: >= 0 rounds the linears' inputs per token to 16-bit codes in groups of this
  // many columns (the weights' group: 0, the whole row), as a packed W4A16 model's integer path
  // runs them (int4_gemm_a16_int16; the rule: quarot/act16.hpp). -1: fp32 inputs (a recipe that
  // is not packed, and packed files written before 2026-12-01, run with int4_gemm_f32).
  int a16_group = -1;
  // Per decoder layer (empty: every layer as above; else one entry per layer, which then
  // replaces k_bits, v_bits, a_clip and kv_clip for that layer, and a_bits when its a_bits is set).
  std::vector<LayerActQuant> layers;
  // Layer l's settings, a_bits resolved (never 0).
  LayerActQuant layer(int l) const {
    if (layers.empty()) return {k_bits, v_bits, a_clip, kv_clip, kv_clip, a_bits};
    LayerActQuant x = layers.at(std::size_t(l));
    if (x.a_bits == 0) x.a_bits = a_bits;
    return x;
  }
  bool any() const {
    bool kv = k_bits < 16 || v_bits < 16;
    bool act = a_bits < 16;
    for (const auto& l : layers) {
      kv = kv || l.k_bits < 16 || l.v_bits < 16;
      act = act || (l.a_bits > 0 && l.a_bits < 16);
    }
    return act || kv;
  }
  bool operator==(const ActQuantOptions&) const = default;
};
void check_act_options(const ActQuantOptions& o);
// The KV cache's size per cached element (keys and values averaged): `codes` counts the code
// bits alone (16 for a cache that is not quantized, as the paper counts fp16), `stored` what the
// integer path keeps (src/runtime, kv_kernels.hpp): nibble- or byte-aligned codes plus each
// head's fp32 scale and 8-bit zero point spread over head_dim, fp32 when not quantized. E.g.
// K8V4 at head_dim 8: codes 6, stored 11; at head_dim 128: codes 6, stored 6.3125.
struct KvCacheBits {
  double k_codes = 16, v_codes = 16, k_stored = 32, v_stored = 32;
  double codes() const { return (k_codes + v_codes) / 2; }
  double stored() const { return (k_stored + v_stored) / 2; }
};
// Per-layer settings (o.layers): the mean over the layers.
KvCacheBits kv_cache_bits(const ActQuantOptions& o, int head_dim);
// Quantizes rows of `x` in groups of `group` columns (0: whole row).
template <class T>
void fake_quant_rows(T* x, int rows, int cols, int group, const Grid& g, double clip);
// A hook quantizing the linear inputs (q/k/v, o, gate/up, down) and the keys/values; chain it
// after the online transforms: online_hook(t, act_quant_hook<T>(o)).
template <class T>
ForwardHook<T> act_quant_hook(const ActQuantOptions& o, int head_dim, ForwardHook<T> next = {});

inline int quantize_code(double x, const QParams& p, const Grid& g) {
  double q = __builtin_nearbyint(x / p.scale) + p.zero;  // round half to even (default FP mode)
  if (q < g.qmin()) q = g.qmin();
  if (q > g.qmax()) q = g.qmax();
  return int(q);
}

}  // namespace quarot
