#pragma once
// Quantizing a whole model: weight quantization (RTN, or GPTQ with Hessians from calibration
// tokens flowing through the rotated, online-transformed, not yet activation-quantized model,
// layer by layer in the reference's order), plus the activation/KV quantizers of the forward
// pass. The presets (the paper's settings by name) are the pipeline's (pipeline.hpp).
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
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
  // < 16: the embedding table and the classifier (one table when tied) are quantized per row,
  // symmetric (quantize_int8_rows), as a packed file stores them (INT8); 16: float as in the
  // paper. The tools default to 8 for a packed output, 16 otherwise.
  int classifier_bits = 16;
  int nsamples = 128;
  int seqlen = 2048;  // capped at the model's max positions
  uint64_t seed = 0;
  // The preset's KV clip is a head_dim-128 setting; true: apply_model_defaults() chooses it for
  // the model. Presets set it; a user's --kv-clip clears it.
  bool kv_clip_follows_model = false;
  // When set, every decoder linear is quantized (RTN or GPTQ) onto the grid it returns for that
  // weight, fixed before quantization (llama.cpp's blocks: gguf.hpp), instead of gptq.weights'
  // integer grid; the QuantizedMatrix then holds the grid's codes and no params. `input_energy`:
  // the diagonal of the weight's GPTQ Hessian (2/N sum x_j^2 per input column; empty under RTN),
  // for grids that weight their scale search by it (llama.cpp's imatrix is the same statistic).
  std::function<GridRounder(int layer, LinearModule module, const Matrix& w, std::span<const double> input_energy)> custom_grid;
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

// The decoder layers of a quantization run, in order, and the float parts around them. The
// stages (quantize, pack) go through one code path over it, whether the model is in memory or
// read from its checkpoint one layer at a time.
class LayerSource {
 public:
  LayerSource() = default;
  LayerSource(const LayerSource&) = delete;  // model()'s pointer and the Rotator's report point into it
  LayerSource& operator=(const LayerSource&) = delete;
  virtual ~LayerSource() = default;
  // Config, embeddings, classifier, final norm, each layer's norms and biases: the float tensors
  // PackedWriter writes (it keeps a reference: the source outlives the writer). In memory also
  // every layer's linear weights; streamed they stay empty (rows/cols set), and a layer's norms
  // and biases are there once it has been put back.
  ModelWeights& model() { return *model_; }
  const ModelWeights& model() const { return *model_; }
  // The online transforms the layers need (empty when not rotated).
  const OnlineTransforms& online() const { return online_; }
  // What rotating did (empty when not rotated). Streamed: the float parts' rotation, as of
  // construction.
  const RotationReport& rotation() const { return rotation_; }
  // Whether layers are read from a checkpoint (then put() drops the linear weights).
  virtual bool streamed() const = 0;
  // Layer l, rotated, for quantizing; layers are taken in order, each put back before the next.
  virtual LayerWeights take(int layer) = 0;
  // Layer l back, its linears quantized (dequantized floats).
  virtual void put(int layer, LayerWeights&& quantized) = 0;

 protected:
  ModelWeights* model_ = nullptr;
  OnlineTransforms online_;
  RotationReport rotation_;
};

// The whole model in memory: take() moves a layer out of it and put() moves it back (no copy),
// so after quantization `m` holds the quantized model.
class ModelLayers final : public LayerSource {
 public:
  // `m` as it is (rotated already or not) with its online transforms. Throws quarot::Error when
  // m is a rotated checkpoint whose transforms `online` lacks (quantizing it would be garbage).
  ModelLayers(ModelWeights& m, OnlineTransforms online);
  // Rotates `m` in place first when cfg.rotate (rotate_model, and the record of it in m's
  // metadata); then as above.
  ModelLayers(ModelWeights& m, const QuantConfig& cfg);
  bool streamed() const override { return false; }
  LayerWeights take(int layer) override;
  void put(int layer, LayerWeights&& quantized) override;
};

// A checkpoint larger than memory: the float parts (embeddings, norms, classifier) are read,
// untied and rotated at construction; take() reads one decoder layer from the memory-mapped
// input and rotates it (Rotator); put() keeps its norms and biases and drops its weights. Same
// arithmetic as rotate_model on the whole model, so the same quantized weights (tested).
class StreamedLayers final : public LayerSource {
 public:
  // Throws quarot::Error when cfg.rotate and `src` is a rotated checkpoint.
  StreamedLayers(const CheckpointReader& src, const QuantConfig& cfg);
  ~StreamedLayers() override;
  bool streamed() const override { return true; }
  LayerWeights take(int layer) override;
  void put(int layer, LayerWeights&& quantized) override;

 private:
  const CheckpointReader& src_;
  ModelWeights float_parts_;
  std::unique_ptr<Rotator> rotator_;
};

using LayerDone = std::function<void(int layer, int layers)>;
// Quantizes the source's decoder weights layer by layer (embeddings stay float; the classifier
// too unless cfg.classifier_bits < 16, reported as module "lm_head" of layer -1): RTN, or GPTQ
// with Hessians from `calib` (needed by GPTQ only) carried through the layers as quantized.
// Every quantized linear goes to `sink`; `layer_done` hears each layer put back. A streamed
// source needs quantized weights (throws for WeightMethod::None).
std::vector<ModuleQuantStats> quantize_layers(LayerSource& layers, const QuantConfig& cfg, const std::vector<std::vector<int>>& calib,
                                              const QuantProgress& progress = {}, const QuantizedSink& sink = {},
                                              const LayerDone& layer_done = {});

// quantize_layers over m in memory (ModelLayers(m, online)): m's decoder weights quantized in
// place (embeddings and classifier stay float unless cfg.classifier_bits < 16: per-row tables,
// reported as module "lm_head" of layer -1). `online`: the model's online transforms (empty when
// not rotated).
std::vector<ModuleQuantStats> quantize_weights(ModelWeights& m, const OnlineTransforms& online, const QuantConfig& cfg,
                                               const std::vector<std::vector<int>>& calib, const QuantProgress& progress = {},
                                               const QuantizedSink& sink = {});

// The forward hook of a quantized model: online transforms, then activation/KV quantizers.
template <class T>
ForwardHook<T> quantized_model_hook(const OnlineTransforms& online, const ActQuantOptions& act, int head_dim);

namespace detail {
// GPTQ's calibration keeps each window's attention output for the layer's later groups when all
// windows' fit in this many bytes (default 1 GiB), else it recomputes attention per group. Returns
// the previous budget; tests set 0 to check that both routes give the same bits.
double set_attention_cache_bytes(double bytes);
}  // namespace detail

}  // namespace quarot
