// The integer path of a packed model (include/quarot/runtime.hpp): INT4 GEMM on per-token
// quantized activations, the INT4 KV cache, QDEC's compensation; and its fake-quant simulation.
#include <optional>

#include "quarot/error.hpp"
#include "quarot/int4.hpp"
#include "quarot/int4_a16.hpp"
#include "quarot/int8_gemv.hpp"
#include "quarot/kv_kernels.hpp"
#include "quarot/qdec_kernels.hpp"
#include "quarot/qdec_runtime.hpp"
#include "quarot/quantize.hpp"
#include "quarot/runtime.hpp"
#include "runtime_internal.hpp"

namespace quarot {

namespace {

// The KV cache of one layer, keys or values (each at its own width: K8V4 keeps an INT8 key cache
// beside an INT4 value cache): per position and KV head, codes (nibble-packed when <= 4 bits,
// element 2j in the low nibble; kv_kernels.hpp) with an fp32 scale and a zero point, or fp32
// when not quantized.
struct KvCache {
  int bits = 16;
  bool asym = true;
  double clip = 1.0;
  int heads = 0, hd = 0, bytes_per_head = 0;
  std::vector<uint8_t> codes;
  std::vector<float> scale, raw;
  std::vector<uint8_t> zero;

  void allocate(int b, bool a, double c, int h, int d, int max_ctx) {
    bits = b;
    asym = a;
    clip = c;
    heads = h;
    hd = d;
    if (bits >= 16) {
      raw.assign(std::size_t(max_ctx) * h * d, 0.f);
      return;
    }
    bytes_per_head = kv_slot_bytes(bits, d);
    codes.assign(std::size_t(max_ctx) * h * bytes_per_head, 0);
    scale.assign(std::size_t(max_ctx) * h, 0.f);
    zero.assign(std::size_t(max_ctx) * h, 0);
  }
  // The fake quantizer's arithmetic (quant.cpp), so the integer model caches what the
  // simulation computes.
  void store(int pos, int n, const float* x) {
    const int kvd = heads * hd;
    if (bits >= 16) {
      std::copy(x, x + std::size_t(n) * kvd, raw.begin() + std::ptrdiff_t(pos) * kvd);
      return;
    }
    const Grid g{bits, !asym};
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < heads; ++h) {
        const float* v = x + std::size_t(t) * kvd + std::size_t(h) * hd;
        const QParams p = grid_params(std::span<const float>(v, std::size_t(hd)), g, clip);
        const std::size_t slot = std::size_t(pos + t) * heads + h;
        scale[slot] = float(p.scale);
        zero[slot] = uint8_t(g.symmetric ? -g.qmin() : p.zero);  // dequantized = (u - zero) * scale
        uint8_t* out = codes.data() + slot * bytes_per_head;
        if (bits <= 4) std::fill(out, out + bytes_per_head, 0);
        for (int i = 0; i < hd; ++i) {
          const uint8_t u = uint8_t(quantize_code(v[i], p, g) - g.qmin());
          if (bits <= 4)
            out[i / 2] = uint8_t(out[i / 2] | (i % 2 ? u << 4 : u));
          else
            out[i] = u;
        }
      }
  }
  void load(int ctx, float* out, Isa isa) const {
    const int kvd = heads * hd;
    if (bits >= 16) {
      std::copy(raw.begin(), raw.begin() + std::ptrdiff_t(ctx) * kvd, out);
      return;
    }
    // Slots are [position][head], so positions 0 .. ctx-1 are ctx*heads consecutive slots.
    kv_dequantize(codes.data(), scale.data(), zero.data(), int64_t(ctx) * heads, hd, bits, out, isa);
  }
};

class IntegerBackend : public LinearBackend {
 public:
  IntegerBackend(const PackedModel& m, Isa isa, QdecK k) : m_(m), isa_(isa), qdec_k_(k) {}
  void allocate(const ModelConfig& c, int max_context) override {
    const auto& a = m_.recipe().act;
    k_.resize(std::size_t(c.n_layers));
    v_.resize(std::size_t(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerActQuant at = a.layer(l);  // the layer's own bits and clips (the precision planner's), else the model's
      k_[l].allocate(at.k_bits, a.kv_asym, at.k_clip, c.n_kv_heads, c.head_dim, max_context);
      v_[l].allocate(at.v_bits, a.kv_asym, at.v_clip, c.n_kv_heads, c.head_dim, max_context);
    }
  }
  void linear(int layer, LinearModule m, const float* in, int n, int cols, float* out, int /*rows*/, bool same_input) override {
    const Int4Weights w = m_.linear(layer, m);
    const auto& a = m_.recipe().act;
    const LayerActQuant la = a.layer(layer);  // the layer's activation bits (4 or 8 with the planner's), else the model's
    if (la.a_bits >= 16) {
      // W4A16: 16-bit activation codes per weight group where the recipe says so (every M: the
      // simulation rounds every token, and int16 is no slower at decode; bench/RESULTS.md), else
      // (files before 2026-12-01) fp32 activations.
      if (a.a16_group >= 0)
        int4_gemm_a16_int16(w, in, n, nullptr, out, isa_);
      else
        int4_gemm_f32(w, in, n, nullptr, out, isa_);
      compensate(layer, m, in, n, cols, out, same_input);
      return;
    }
    // q/k/v share one input, and gate/up another: quantize it once. 8-bit codes run the same
    // INT4 GEMM (u4 x s8 in vpdpbusd / vpmaddubsw: no saturation, exact int32 sums).
    if (!same_input) quantize_activations(in, n, cols, la.a_bits, la.a_clip, a.a_group, act_, isa_);
    int4_gemm(w, act_, nullptr, out, isa_);
    compensate(layer, m, in, n, cols, out, same_input);
  }
  // The INT8 embedding table and classifier of a version-2 file: rows dequantized on lookup
  // (exact, the simulation's table), logits by int8_matmul (1 byte per weight per decode step).
  bool owns_tables() const override { return m_.int8_tables(); }
  void embed(int token, float* out) override { int8_dequantize_row(m_.embedding_table(), token, out); }
  void classify(const float* h, int n, float* logits) override { int8_matmul(m_.classifier_table(), h, n, logits, isa_); }
  void store_and_load_kv(int layer, int pos, int n, const float* k, const float* v, float* k_out, float* v_out) override {
    k_[layer].store(pos, n, k);
    v_[layer].store(pos, n, v);
    k_[layer].load(pos + n, k_out, isa_);
    v_[layer].load(pos + n, v_out, isa_);
  }

 private:
  // QDEC: select on the unquantized input (shared by q/k/v and by gate/up) and add back.
  void compensate(int layer, LinearModule m, const float* in, int n, int cols, float* out, bool same_input) {
    const int k = qdec_k(qdec_k_.of(m), cols);
    if (k == 0) return;
    if (!same_input) qdec_select(in, n, cols, k, sel_);
    qdec_apply(m_.qdec()->at(layer, m), in, n, k, sel_.data(), out, isa_);
  }

  const PackedModel& m_;
  Isa isa_;
  QdecK qdec_k_;
  std::vector<int> sel_;
  Int8Activations act_;
  std::vector<KvCache> k_, v_;
};

}  // namespace

QdecK checked_qdec_k(const PackedModel& m, std::optional<QdecK> k) {
  const QdecK use = k ? *k : m.qdec_k();
  if (use.any() && !m.qdec())
    throw Error(m.path(), "has no QDEC section (quantize with --qdec to use --qdec-k)");
  return use;
}

Transformer<float> integer_model(const PackedModel& m, int max_context, Isa isa, std::optional<QdecK> k) {
  Transformer<float> t(m.float_weights(), max_context, std::make_unique<IntegerBackend>(m, isa, checked_qdec_k(m, k)));
  if (!m.online().empty()) t.set_hook(online_hook<float>(m.online()));
  return t;
}

Transformer<float> simulated_model(const PackedModel& m, const ModelWeights& weights, int max_context, std::optional<QdecK> k) {
  const QdecK use = checked_qdec_k(m, k);
  if (use.any()) return qdec_simulation_model(weights, *m.qdec(), use, m.online(), m.recipe().act, max_context);
  Transformer<float> t(weights, max_context);
  t.set_hook(quantized_model_hook<float>(m.online(), m.recipe().act, weights.config.head_dim));
  return t;
}

}  // namespace quarot
