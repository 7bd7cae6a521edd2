#pragma once
// QuaRot's rotations (arXiv 2404.00456, sections 4-5): make the model outlier-free without
// changing what it computes.
//   fusion: untie embeddings; fold each RMSNorm scale into the linear layers that read it
//   R1: residual stream x -> x Q, Q = diag(s) H_d / sqrt(d) (or a seeded random orthogonal Q),
//       absorbed: embedding rows and q/k/v/gate/up/classifier inputs get W Q; o/down outputs
//       (and their biases) get Q^T W
//   R2: per-head H_hd on v_proj's output rows (per KV head, bias too); o_proj's input gets the
//       full H_heads (x) H_hd, split into the head-wise factor (absorbed into W_o) and the
//       cross-head factor H_heads (x) I (online, before o_proj's input quantizer)
//   R3: online per-head H_hd on queries and keys after RoPE (cancels in q k^T)
//   R4: online H_inter on down_proj's input, its transpose absorbed into W_down
// Every weight transform runs in fp64 and is cast to fp32 once.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quarot/forward.hpp"
#include "quarot/hadamard.hpp"
#include "quarot/weights.hpp"

namespace quarot {

enum class R1Kind { Hadamard, Random };

struct RotationOptions {
  bool fuse_norms = true;
  bool r1 = true, r2 = true, r3 = true, r4 = true;
  bool r2_online_cross_head = true;  // QuaRot's full Hadamard at o_proj's input
  R1Kind r1_kind = R1Kind::Hadamard;
  uint64_t seed = 0;
  bool center_embeddings = false;  // not exact for RMSNorm: off unless asked
};

// What the forward pass must apply online to a rotated model. Empty pointers: not applied.
struct OnlineTransforms {
  std::shared_ptr<const Hadamard> r3;          // size head_dim, on queries and keys after RoPE
  std::shared_ptr<const Hadamard> r4;          // size intermediate, on down_proj's input
  std::shared_ptr<const Hadamard> cross_head;  // size n_heads, on o_proj's input (x I_head_dim)
  int n_heads = 0, head_dim = 0;
  bool empty() const { return !r3 && !r4 && !cross_head; }
  std::string describe() const;  // one line per transform: where, size, construction
};

struct RotationReport {
  std::vector<std::string> steps;  // what was done, in order, for the log and the report
  std::vector<std::string> fallbacks;  // sizes without a Hadamard construction
};

// Rotates `m` in place and returns the online transforms its forward pass needs.
// Throws quarot::Error for an impossible combination (R1 without norm fusion) and for a model
// that is rotated already (is_rotated): rotating twice loses the first online transforms.
OnlineTransforms rotate_model(ModelWeights& m, const RotationOptions& opts, RotationReport* report = nullptr);

// The same rotations one piece at a time, for a model streamed layer by layer (rotate_model is
// built on it, so both give the same bits). Untie and center first (the helpers below), then
// rotate the embeddings, every layer and the classifier, in any order.
class Rotator {
 public:
  Rotator(const ModelConfig& c, const RotationOptions& opts, RotationReport* report = nullptr);
  ~Rotator();
  void rotate_embeddings(Matrix& tok_embeddings) const;
  void rotate_layer(LayerWeights& L) const;
  void rotate_classifier(Matrix& lm_head, std::vector<float>& final_norm) const;
  void finish_report(RotationReport* report) const;  // the summary lines rotate_model logs last
  const OnlineTransforms& online() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};
// Throws quarot::Error (as Rotator would, but from the config alone, before any weight is read)
// when a rotation `opts` asks for has a size with no Hadamard construction whose dense fallback
// would be too large to build.
void check_rotation_sizes(const ModelConfig& c, const RotationOptions& opts);
// A tied classifier becomes its own copy of the embeddings (returns whether it was tied).
bool untie_for_rotation(ModelWeights& m, const RotationOptions& opts, RotationReport* report = nullptr);
void center_embeddings(Matrix& tok_embeddings, RotationReport* report = nullptr);

// Records `opts` and `online` in m.metadata, so that the online transforms can be rebuilt.
void record_rotation(ModelWeights& m, const RotationOptions& opts, const OnlineTransforms& online);
// The online transforms a loaded checkpoint needs: empty for an unrotated one. Throws
// quarot::Error naming the model when the metadata is malformed or does not fit the config.
OnlineTransforms online_transforms_of(const ModelWeights& m);

// Whether `m` is a rotated checkpoint: it carries a rotation record (kRotationMetadataKey, from
// the safetensors metadata or a marked config.json), so its online transforms are part of it.
bool is_rotated(const ModelWeights& m);

// What a tool that may rotate does with its input (quarot-quantize's pipeline):
//   not rotated: rotate = rotate_requested, online empty (rotate_model gives the transforms);
//   rotated: rotate = false and online = the recorded transforms, whatever was requested: the
//   model is used as it is (rotating again would be wrong, dropping the transforms too).
// Throws quarot::Error naming the model when its record is malformed (online_transforms_of).
struct RotationPlan {
  bool rotate = false;
  bool already_rotated = false;
  OnlineTransforms online;
  std::string note;  // for the log: empty, or why the requested rotation is skipped
};
RotationPlan plan_rotation(const ModelWeights& m, bool rotate_requested);
// The same for a streamed input, from what CheckpointReader gives without reading tensors.
RotationPlan plan_rotation(const ModelConfig& config, const std::map<std::string, std::string>& metadata,
                           const std::string& source, bool rotate_requested);

// Throws quarot::Error naming `m` when `online` is not what `m` needs: a rotated model handed to
// the quantizer or the forward pass without its recorded online transforms.
void check_online_transforms(const ModelWeights& m, const OnlineTransforms& online);

// A forward hook applying the online transforms (then `next`, if any, at the same point).
template <class T>
ForwardHook<T> online_hook(const OnlineTransforms& t, ForwardHook<T> next = {});

// Per (hook point, layer): activation statistics on some tokens, before quantization.
struct ActivationStats {
  HookPoint point;
  int layer;
  int channels;
  double max_over_median;  // max over channels of (max |x| over tokens) / median of the same
  double kurtosis;         // of all values at this point (3 for a Gaussian)
  double max_abs;
};
// Runs each window through the model (fp32, with its online transforms when given) and collects
// the statistics at every linear input (q/k/v, o, gate/up, down) and at the keys and values,
// where a quantizer would see them.
std::vector<ActivationStats> activation_stats(const ModelWeights& m, const OnlineTransforms* online,
                                              const std::vector<std::vector<int>>& windows);

}  // namespace quarot
