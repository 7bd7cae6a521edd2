#pragma once
// The packed INT4 model file (docs/format.md): a safetensors container with nibble-packed
// weights, fp32 scales (and zero points when asymmetric), the float tensors, and in
// __metadata__ the config, the quantization recipe, the rotation, the tool version and CRC32s.
// The reader validates everything and memory-maps the packed weights; src/runtime runs them
// (runtime.hpp: the integer backend, the INT4 KV cache, LoadedModel).
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "quarot/forward.hpp"
#include "quarot/int4.hpp"
#include "quarot/int8_gemv.hpp"
#include "quarot/qdec.hpp"
#include "quarot/quant.hpp"
#include "quarot/quantize.hpp"
#include "quarot/rotate.hpp"
#include "quarot/safetensors.hpp"
#include "quarot/version.hpp"
#include "quarot/weights.hpp"

namespace quarot {

// Version 2: the embedding table and the classifier stored as INT8 row tables when the recipe's
// classifier_bits < 16 (version 1 kept them fp32). The writer writes version 1 when the tables are
// fp32 (those files are version 1 files byte for byte); the reader reads both.
inline constexpr int kPackedFormatVersion = 2;
inline constexpr int kPackedFormatOldestVersion = 1;
inline constexpr const char* kPackedFormatName = "quarot-int4";

// What a packed model was made with and what its integer path runs.
struct PackRecipe {
  std::string preset;        // informational
  std::string method;        // "rtn" | "gptq"
  int w_bits = 4;            // 2..4 (packed in nibbles)
  bool w_symmetric = true;
  int w_group = 0;           // 0: per output channel; else a multiple of 64
  bool clip_search = true;
  ActQuantOptions act;       // activations (per token, or per a_group columns), KV cache
  // < 16: the embedding table and the classifier are INT8 row tables (quantize_int8_rows) in a
  // version-2 file; 16: fp32. (Version-1 files stored them fp32, dequantized, whatever this says.)
  int classifier_bits = 16;
  // The precision planner's plan (JSON object text: budget, sensitivities, choices), kept as
  // it is for readers; empty: none. The settings it chose are act.layers.
  std::string plan;
};
std::string recipe_json(const PackRecipe& r);
// The recipe of a quantization config; throws quarot::Error (naming the flag) when the packed
// format cannot hold it (no weight quantization, bits > 4, groups not multiples of 64, grouped
// activations).
PackRecipe make_pack_recipe(const QuantConfig& c);
PackRecipe parse_recipe_json(const std::string& text, const std::string& source);

// The HF-style name prefix of a linear module, e.g. "model.layers.3.self_attn.q_proj".
std::string linear_tensor_prefix(int layer, LinearModule m);

// Collects the quantized linears of a model and writes the packed file.
class PackedWriter {
 public:
  // `m`: the model as quantized (rotated, fused); its float tensors (embeddings, norms, biases,
  // classifier) are written as they are, its linear weights are not (add() gives them).
  PackedWriter(const ModelWeights& m, const PackRecipe& recipe);
  // Packs one linear layer now (its codes and scales are all that is kept). Throws quarot::Error
  // for bits > 4 or groups that are not multiples of 64.
  void add(int layer, LinearModule module, const QuantizedMatrix& q);
  // The optional QDEC section (docs/format.md): one residual store per linear (all or none) and
  // the k_chunk per module kind the integer path uses by default; `info` (JSON text, e.g. the
  // tuner's measurements) goes into the metadata as it is.
  void add_residual(int layer, LinearModule module, ResidualStore r);
  void set_qdec(QdecK k, const std::string& info = "{}");
  // Writes atomically (temporary file + rename); throws when a linear is missing.
  // `extra_metadata` adds free-form keys (e.g. the input checksum).
  void write(const std::string& path, const std::map<std::string, std::string>& extra_metadata = {}) const;
  uint64_t packed_bytes() const;  // bytes of the packed linears so far
  // Tests only: 1 writes what version 1 wrote (the tables fp32 as `m` holds them, version 1), to
  // check that such files still read.
  void set_format_version(int v) { format_version_ = v; }
  // The recipe written (e.g. with the precision planner's per-layer settings, chosen after the
  // linears were quantized).
  void set_recipe(const PackRecipe& r) { recipe_ = r; }
  const PackRecipe& recipe() const { return recipe_; }

 private:
  struct Linear {
    int64_t rows = 0, cols = 0, group = 0;
    std::vector<uint8_t> packed, zeros;
    std::vector<float> scales;
  };
  const ModelWeights& m_;
  PackRecipe recipe_;
  std::map<std::pair<int, int>, Linear> linears_;
  std::map<std::pair<int, int>, ResidualStore> residuals_;
  QdecK qdec_k_;
  std::string qdec_info_ = "{}";
  int format_version_ = kPackedFormatVersion;
};

// The bytes of the packed file `recipe` makes of a model of config `c` (tied: the embeddings are
// still tied when written, i.e. not rotated): every tensor exactly, the header estimated (within a
// few %). What --dry-run reports.
uint64_t packed_file_bytes_estimate(const ModelConfig& c, const PackRecipe& recipe, bool tied);

class PackedModel {
 public:
  // Maps and validates `path`: format name and version, every tensor present with the shape
  // the config implies, CRC32 of every tensor and of the header (verify_crc = false skips the
  // tensor CRCs, not the structure). Errors are one line naming the file (and the tensor).
  explicit PackedModel(const std::string& path, bool verify_crc = true);
  ~PackedModel();
  PackedModel(PackedModel&&) noexcept;

  const std::string& path() const;
  const ModelConfig& config() const;
  const PackRecipe& recipe() const;
  const OnlineTransforms& online() const;
  // Config, embeddings, norms, biases, classifier; linear matrices empty (rows/cols set).
  // With INT8 tables (int8_tables()), tok_embeddings / lm_head have their shape and no data.
  const ModelWeights& float_weights() const;
  int format_version() const;
  bool int8_tables() const;  // the embedding table and the classifier are INT8 (version 2)
  Int8Rows embedding_table() const;   // valid when int8_tables()
  Int8Rows classifier_table() const;  // the embedding table when tied
  Int4Weights linear(int layer, LinearModule m) const;
  uint64_t file_bytes() const;
  // The QDEC section: nullptr when the file has none; its codes are used in place from the map.
  const QdecStore* qdec() const;
  QdecK qdec_k() const;  // the k the file asks for (zero without a section)

  // The same weights dequantized to fp32 (for the fake-quant simulation of this very model).
  ModelWeights dequantized() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True for a .safetensors file whose metadata names the packed format.
bool is_packed_model(const std::string& path);

}  // namespace quarot
