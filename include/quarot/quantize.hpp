#pragma once
// Quantizing a whole model: weight quantization (RTN, or GPTQ with Hessians from calibration
// tokens flowing through the rotated, online-transformed, not yet activation-quantized model,
// layer by layer in the reference's order), plus the activation/KV quantizers of the forward
// pass. The presets (the paper's settings by name) are the pipeline's (pipeline.hpp).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "quarot/quant.hpp"
#include "quarot/rotate.hpp"

namespace quarot {

enum class WeightMethod { None, Rtn, Gptq };

struct QuantConfig {
  std::string preset = "none";
  WeightMethod method = WeightMethod::None;
  GptqOptions gptq;  // .weights holds the grid/groups/clip search for RTN too
  ActQuantOptions act;
  bool rotate = true;
  RotationOptions rotation;
  // < 16: the classifier (lm_head) is RTN-quantized per output channel, symmetric, with clip
  // search (untied from the embeddings first); 16: it stays float as in the paper.
  int classifier_bits = 16;
  int nsamples = 128;
  int seqlen = 2048;  // capped at the model's max positions
  uint64_t seed = 0;
  // The preset's KV clip is a head_dim-128 setting; true: apply_model_defaults() chooses it for
  // the model. Presets set it; a user's --kv-clip clears it.
  bool kv_clip_follows_model = false;
  // When set, every decoder linear is quantized (RTN or GPTQ) onto the grid it returns for that
  // weight, fixed before quantization (llama.cpp's blocks: gguf.hpp), instead of gptq.weights'
  // integer grid; the QuantizedMatrix then holds the grid's codes and no params.
  std::function<GridRounder(int layer, LinearModule module, const Matrix& w)> custom_grid;
  std::string describe() const;  // the effective flags, one line
};

// The settings that follow the model, once its config is known (before packing or simulating):
// with kv_clip_follows_model and a quantized KV cache, kv_clip = 1.0 below head_dim 32 (a head's
// 8-16 values leave no outliers worth clipping: issue 17 measured -0.1 .. -3.8% perplexity on the
// three 260K models), else the paper's 0.95 at 4 bits. Returns the log line saying what was
// chosen and why ("" when nothing follows the model).
std::string apply_model_defaults(QuantConfig& c, const ModelConfig& m);

struct ModuleQuantStats {
  int layer;
  std::string module;          // "q_proj", ..., "down_proj"
  double rel_weight_error;     // ||W - Q(W)||_F / ||W||_F
  double gptq_loss = 0;        // GPTQ only
  double damp_used = 0;        // GPTQ only
  int dead_inputs = 0;
  double seconds = 0;
};

// Calibration windows: the first `nsamples` sequences of `seqs` if each has >= seqlen tokens
// (cut to seqlen), else `nsamples` random windows of `seqlen` from their concatenation (seeded,
// as the reference samples its calibration text). Throws when the tokens are too few.
std::vector<std::vector<int>> calibration_windows(const std::vector<std::vector<int>>& seqs, int nsamples, int seqlen,
                                                  uint64_t seed, const std::string& source);

// Calibration tokens from `path`: a pre-tokenized ids file (*.ids, one sequence per line) or
// text (anything else) tokenized whole with `tokenizer` (required for text; BOS once at the
// start, as the reference tokenizes its joined calibration text). Throws quarot::Error naming
// the file.
class Tokenizer;
class CheckpointReader;
std::vector<std::vector<int>> read_calibration(const std::string& path, const Tokenizer* tokenizer, int vocab);

using QuantProgress = std::function<void(int layer, int layers, const std::string& module)>;
// Receives every quantized linear (codes and parameters), e.g. to pack it (packed.hpp), with
// the weight it was quantized from (the rotated float weight, e.g. for QDEC's residual).
using QuantizedSink = std::function<void(int layer, LinearModule module, const QuantizedMatrix& q, const Matrix& original)>;

// Quantizes m's decoder weights in place (embeddings stay float; the classifier too unless
// cfg.classifier_bits < 16, reported as module "lm_head" of layer -1). `online`: the
// model's online transforms (empty when not rotated). `calib` is needed by GPTQ only.
std::vector<ModuleQuantStats> quantize_weights(ModelWeights& m, const OnlineTransforms& online, const QuantConfig& cfg,
                                               const std::vector<std::vector<int>>& calib, const QuantProgress& progress = {},
                                               const QuantizedSink& sink = {});

// The forward hook of a quantized model: online transforms, then activation/KV quantizers.
template <class T>
ForwardHook<T> quantized_model_hook(const OnlineTransforms& online, const ActQuantOptions& act, int head_dim);

// The pipeline for a checkpoint larger than memory: the float parts (embeddings, norms,
// classifier) are read, untied and rotated first; then run() reads one decoder layer at a time
// from the memory-mapped input, rotates it (Rotator), quantizes it (RTN, or GPTQ on the
// calibration windows' activations carried from layer to layer through the layers already
// quantized), hands every quantized linear to `sink` and drops the layer. Same arithmetic as
// rotate_model + quantize_weights on the whole model, so the same quantized weights (tested).
class StreamingQuantizer {
 public:
  StreamingQuantizer(const CheckpointReader& src, const QuantConfig& cfg);
  ~StreamingQuantizer();
  // Config (untied when rotated), embeddings, classifier, final norm; after run(), every layer's
  // norms and biases. Linear matrices stay empty (rows/cols set). What PackedWriter needs.
  const ModelWeights& model() const { return model_; }
  const OnlineTransforms& online() const { return online_; }
  const RotationReport& rotation() const { return rotation_; }
  using LayerDone = std::function<void(int layer, int layers)>;
  std::vector<ModuleQuantStats> run(const std::vector<std::vector<int>>& calib, const QuantProgress& progress = {},
                                    const QuantizedSink& sink = {}, const LayerDone& layer_done = {});

 private:
  const CheckpointReader& src_;
  QuantConfig cfg_;
  ModelWeights model_;
  OnlineTransforms online_;
  RotationReport rotation_;
  std::unique_ptr<Rotator> rotator_;
  std::vector<ModuleQuantStats> stats_;  // the classifier's, when quantized
};

}  // namespace quarot
