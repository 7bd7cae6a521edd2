#pragma once
// The float forward pass of a LLaMA-family decoder: a window of tokens at once (prefill, causal
// attention) or one token at a time (decode), both through the same KV cache.
//
// Per layer, in order (the named hook points are where later stages insert online transforms
// and fake quantizers; a hook sees the activation as [tokens][width], row-major, and may
// change it in place):
//   h = RMSNorm(x) * attn_norm            -> QkvInput       (input of q/k/v_proj)
//   q, k, v = h Wq^T + bq, ...            ; RoPE on q and k
//                                         -> QueryAfterRope, KeyAfterRope, ValueAfterProj
//   a = softmax(q k^T / sqrt(d) + causal) v
//                                         -> OProjInput     (input of o_proj)
//   x += a Wo^T + bo
//   h = RMSNorm(x) * ffn_norm             -> GateUpInput    (input of gate/up_proj)
//   m = silu(h Wg^T) * (h Wu^T)           -> DownProjInput  (input of down_proj)
//   x += m Wd^T                           -> LayerOutput    (the residual stream; observe only)
// then logits = RMSNorm(x) * final_norm W_cls^T (the classifier's input is not hooked).
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
const char* linear_module_name(LinearModule m);  // "q_proj", ..., "down_proj"
inline constexpr LinearModule kLinearModules[] = {LinearModule::Q,    LinearModule::K,  LinearModule::V,   LinearModule::O,
                                                  LinearModule::Gate, LinearModule::Up, LinearModule::Down};
// The member of LayerWeights holding that linear's weight: L.*linear_member(m).
Matrix LayerWeights::*linear_member(LinearModule m);

// Runs the decoder's linear layers and holds the KV cache for a Transformer<float> (the packed
// INT4 model, src/pack): the transformer keeps embeddings, norms, biases, RoPE, attention and
// the classifier in fp32. One backend per transformer (it owns that transformer's cache).
class LinearBackend {
 public:
  virtual ~LinearBackend() = default;
  virtual void allocate(const ModelConfig& config, int max_context) = 0;
  // out[n][rows] = in[n][cols] W^T for `module` of `layer` (biases are added by the caller).
  // Calls come in forward order: Q, K, V on the same input, then O, Gate and Up on the same
  // input, then Down.
  virtual void linear(int layer, LinearModule module, const float* in, int n, int cols, float* out, int rows) = 0;
  // Stores the keys and values [n][kv_dim] of positions pos .. pos+n-1 (after RoPE and the
  // online transforms), then dequantizes positions 0 .. pos+n-1 into k_out / v_out [ctx][kv_dim].
  virtual void store_and_load_kv(int layer, int pos, int n, const float* k, const float* v, float* k_out, float* v_out) = 0;
};

// T = float (weights used in place, no copy) or double (weights converted once; for tests and
// invariance proofs). Threads: OpenMP, all cores unless QUAROT_THREADS / omp settings say less.
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
