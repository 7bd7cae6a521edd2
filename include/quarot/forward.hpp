#pragma once
// The float forward pass of a LLaMA-family decoder: a window of tokens at once (prefill, causal
// attention) or one token at a time (decode), both through the same KV cache.
//
// Per layer, in order (the named hook points are where later stages insert online transforms
// and fake quantizers; a hook sees the activation as [tokens][width], row-major, and may
// change it in place):
//   h = RMSNorm(x) * attn_norm            -> QkvInput       (input of q/k/v_proj)
//   q, k, v = h Wq^T + bq, ...            ; Qwen3: per-head RMSNorm on q and k (q_norm, k_norm)
//                                         ; RoPE on q and k
//                                         -> QueryAfterRope, KeyAfterRope, ValueAfterProj
//   a = softmax(q k^T / sqrt(d) + causal) v
//                                         -> OProjInput     (input of o_proj)
//   x += a Wo^T + bo
//   h = RMSNorm(x) * ffn_norm             -> GateUpInput    (input of gate/up_proj)
//   m = silu(h Wg^T) * (h Wu^T)           -> DownProjInput  (input of down_proj)
//   x += m Wd^T                           -> LayerOutput    (the residual stream; observe only)
// then logits = RMSNorm(x) * final_norm W_cls^T (the classifier's input is not hooked).
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "quarot/weights.hpp"

namespace quarot {

enum class HookPoint { QkvInput, QueryAfterRope, KeyAfterRope, ValueAfterProj, OProjInput, GateUpInput, DownProjInput, LayerOutput };
const char* hook_point_name(HookPoint p);

template <class T>
struct ActivationView {
  T* data;
  int rows;  // tokens
  int cols;  // width at this point
  T* row(int r) const { return data + int64_t(r) * cols; }
};

template <class T>
using ForwardHook = std::function<void(HookPoint, int layer, const ActivationView<T>&)>;

// The decoder's linear layers, in the order the forward pass calls them within a layer.
enum class LinearModule { Q, K, V, O, Gate, Up, Down };
inline constexpr int kLinearsPerLayer = 7;

// A width in terms of the config.
enum class ConfigDim { Hidden, QDim, KvDim, Intermediate };
int64_t config_dim(const ModelConfig& c, ConfigDim d);

// The layer schema: one row per linear, in LinearModule order. Every place that walks a layer's
// linears (tensor names, shapes, the packed format, the quantizers, QDEC, the backends, tests
// and benches) reads this table instead of spelling the list out.
struct LinearSpec {
  LinearModule module;
  const char* name;                     // Hugging Face: model.layers.N.<block>.<name>.weight
  const char* block;                    // "self_attn" | "mlp"
  Matrix LayerWeights::*weight;         // L.*weight
  std::vector<float> LayerWeights::*bias;  // nullptr: this linear never has a bias
  bool ModelConfig::*has_bias;          // whether the config gives it one (nullptr with bias)
  ConfigDim rows, cols;                 // the weight's [out][in]
  HookPoint input;                      // the activation it reads; linears with the same input share it
  int qdec_kind;                        // QDEC's module kind (qdec.hpp): 0 q/k/v, 1 o, 2 gate/up, 3 down
  int quant_order;                      // position in the reference GPTQ's sequential order (k, v, q, o, up, gate, down)
};
inline constexpr LinearSpec kLinearSpecs[kLinearsPerLayer] = {
    {LinearModule::Q, "q_proj", "self_attn", &LayerWeights::wq, &LayerWeights::bq, &ModelConfig::q_bias, ConfigDim::QDim,
     ConfigDim::Hidden, HookPoint::QkvInput, 0, 2},
    {LinearModule::K, "k_proj", "self_attn", &LayerWeights::wk, &LayerWeights::bk, &ModelConfig::k_bias, ConfigDim::KvDim,
     ConfigDim::Hidden, HookPoint::QkvInput, 0, 0},
    {LinearModule::V, "v_proj", "self_attn", &LayerWeights::wv, &LayerWeights::bv, &ModelConfig::v_bias, ConfigDim::KvDim,
     ConfigDim::Hidden, HookPoint::QkvInput, 0, 1},
    {LinearModule::O, "o_proj", "self_attn", &LayerWeights::wo, &LayerWeights::bo, &ModelConfig::o_bias, ConfigDim::Hidden,
     ConfigDim::QDim, HookPoint::OProjInput, 1, 3},
    {LinearModule::Gate, "gate_proj", "mlp", &LayerWeights::w_gate, nullptr, nullptr, ConfigDim::Intermediate, ConfigDim::Hidden,
     HookPoint::GateUpInput, 2, 5},
    {LinearModule::Up, "up_proj", "mlp", &LayerWeights::w_up, nullptr, nullptr, ConfigDim::Intermediate, ConfigDim::Hidden,
     HookPoint::GateUpInput, 2, 4},
    {LinearModule::Down, "down_proj", "mlp", &LayerWeights::w_down, nullptr, nullptr, ConfigDim::Hidden, ConfigDim::Intermediate,
     HookPoint::DownProjInput, 3, 6},
};
constexpr const LinearSpec& linear_spec(LinearModule m) { return kLinearSpecs[int(m)]; }
inline constexpr auto kLinearModules = [] {
  std::array<LinearModule, kLinearsPerLayer> a{};
  for (int i = 0; i < kLinearsPerLayer; ++i) a[std::size_t(i)] = kLinearSpecs[i].module;
  return a;
}();
static_assert([] {
  for (int i = 0; i < kLinearsPerLayer; ++i)
    if (int(kLinearSpecs[i].module) != i) return false;
  return true;
}(), "kLinearSpecs is indexed by LinearModule");
inline const char* linear_module_name(LinearModule m) { return linear_spec(m).name; }  // "q_proj", ..., "down_proj"
// The member of LayerWeights holding that linear's weight: L.*linear_member(m).
inline Matrix LayerWeights::*linear_member(LinearModule m) { return linear_spec(m).weight; }
inline int64_t linear_rows(const ModelConfig& c, LinearModule m) { return config_dim(c, linear_spec(m).rows); }
inline int64_t linear_cols(const ModelConfig& c, LinearModule m) { return config_dim(c, linear_spec(m).cols); }
// True when m reads the same activation as the linear called just before it in a layer (k and v
// after q, up after gate): what a backend may reuse (quantized codes, a QDEC selection).
constexpr bool reads_previous_input(LinearModule m) {
  return int(m) > 0 && kLinearSpecs[int(m) - 1].input == linear_spec(m).input;
}
// The linears grouped by the input they read, groups in forward order, each group in the
// reference GPTQ's order (quant_order): [k, v, q], [o], [up, gate], [down].
struct LinearInputGroup {
  HookPoint input;
  std::vector<LinearModule> modules;
};
std::vector<LinearInputGroup> linear_input_groups();

// Runs the decoder's linear layers and holds the KV cache for a Transformer<float> (the packed
// INT4 model, src/pack): the transformer keeps embeddings, norms, biases, RoPE, attention and
// the classifier in fp32. One backend per transformer (it owns that transformer's cache).
class LinearBackend {
 public:
  virtual ~LinearBackend() = default;
  virtual void allocate(const ModelConfig& config, int max_context) = 0;
  // out[n][rows] = in[n][cols] W^T for `module` of `layer` (biases are added by the caller).
  // same_input: `in` holds the activation the previous call read (reads_previous_input(module):
  // k and v after q, up after gate), so what the backend derived from it may be reused.
  virtual void linear(int layer, LinearModule module, const float* in, int n, int cols, float* out, int rows,
                      bool same_input) = 0;
  // Stores the keys and values [n][kv_dim] of positions pos .. pos+n-1 (after RoPE and the
  // online transforms), then dequantizes positions 0 .. pos+n-1 into k_out / v_out [ctx][kv_dim].
  virtual void store_and_load_kv(int layer, int pos, int n, const float* k, const float* v, float* k_out, float* v_out) = 0;
  // True when the backend holds the embedding table and the classifier itself (a packed file's
  // INT8 tables; the weights' tables are then empty): embed() writes a token's row [hidden],
  // classify() the logits [n][vocab] of the final-normed rows h [n][hidden].
  virtual bool owns_tables() const { return false; }
  virtual void embed(int /*token*/, float* /*out*/) {}
  virtual void classify(const float* /*h*/, int /*n*/, float* /*logits*/) {}
};

// T = float (weights used in place, no copy) or double (weights converted once; for tests and
// invariance proofs). Threads: OpenMP, all cores unless OMP_NUM_THREADS / omp_set_num_threads (the
// tools' --threads) say less.
template <class T>
class Transformer {
 public:
  Transformer(const ModelWeights& weights, int max_context);
  // With a backend (float only): the linear layers of `weights` may be empty (rows/cols set).
  Transformer(const ModelWeights& weights, int max_context, std::unique_ptr<LinearBackend> backend);
  ~Transformer();
  Transformer(Transformer&&) noexcept;
  Transformer& operator=(Transformer&&) noexcept;

  const ModelConfig& config() const;
  int max_context() const;
  int position() const;  // tokens in the KV cache
  void reset();          // empties the KV cache
  void set_hook(ForwardHook<T> hook);
  // Calibration: make forward() return (with no logits) right after the hook at (layer, point),
  // so that collecting one layer's inputs costs only the layers before it. layer < 0: never.
  void set_stop_after(int layer, HookPoint point);

  // Runs `tokens` at positions position() .. position()+n-1 (attending to the cache and to each
  // other causally), appends their keys/values to the cache and writes logits [n][vocab].
  // Throws quarot::Error when the cache would overflow max_context or a token is out of range.
  void forward(std::span<const int> tokens, std::vector<T>& logits);
  // Logits of the last token only (decode): saves the classifier GEMM for the other tokens.
  void forward_last(std::span<const int> tokens, std::vector<T>& logits);
  // The decoder layers alone on residual-stream rows x [n][hidden] (no embedding lookup, no
  // final norm or classifier): out = the residual stream after the last layer (empty when a
  // stop point ended the pass). A model streamed layer by layer runs one layer at a time so.
  void forward_hidden(std::span<const T> x, std::vector<T>& out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

extern template class Transformer<float>;
extern template class Transformer<double>;

// Greedy decoding from `prompt`: appends `n_new` argmax tokens (stops early at eos if asked).
std::vector<int> generate_greedy(Transformer<float>& model, std::span<const int> prompt, int n_new, bool stop_at_eos);

}  // namespace quarot
