#pragma once
// GGUF export (docs/gguf.md): a float model, rotated offline (norm fusion, R1, R2 within each
// head) and quantized with RTN or GPTQ exactly onto llama.cpp's block formats, written as a GGUF
// v3 file that llama.cpp runs as it is.
//
// Block quantizers: every `*_ref` function reproduces ggml's reference code (ggml-quants.c) bit
// for bit: the same float operations in the same order, fp16 by round to nearest even. The
// quantizer source is compiled with -ffp-contract=off, as ggml-base is built without FMA.
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "quarot/quantize.hpp"
#include "quarot/weights.hpp"

namespace quarot {

class Tokenizer;

// ggml_type values (ggml.h) of the types quarot writes.
enum class GgufType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q8_0 = 8, Q4_K = 12, Q6_K = 14, IQ4_NL = 20 };

std::string_view gguf_type_name(GgufType t);             // "q4_0", "iq4_nl", ...
std::optional<GgufType> parse_gguf_type(std::string_view name);  // the same names, any case
int gguf_block_elems(GgufType t);                       // elements per block (1 for F32/F16)
std::size_t gguf_block_bytes(GgufType t);               // bytes per block
std::size_t gguf_row_bytes(GgufType t, int64_t cols);   // cols must be a multiple of the block
inline bool gguf_fits(GgufType t, int64_t cols) { return cols % gguf_block_elems(t) == 0; }

// IQ4_NL's 16 levels (ggml-common.h kvalues_iq4nl).
inline constexpr int8_t kIq4nlLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// ggml's reference quantizers, k elements (a multiple of the block) into blocks.
void quantize_row_q4_0_ref(const float* x, uint8_t* y, int64_t k);
void quantize_row_q4_1_ref(const float* x, uint8_t* y, int64_t k);
void quantize_row_q5_0_ref(const float* x, uint8_t* y, int64_t k);
void quantize_row_q8_0_ref(const float* x, uint8_t* y, int64_t k);
void quantize_row_iq4_nl_ref(const float* x, uint8_t* y, int64_t k);  // ntry -1: no scale search
void quantize_row_q4_K_ref(const float* x, uint8_t* y, int64_t k);
void quantize_row_q6_K_ref(const float* x, uint8_t* y, int64_t k);
// IQ4_NL as llama-quantize writes it without an imatrix (quantize_iq4_nl: scale search, ntry 7).
void quantize_row_iq4_nl(const float* x, uint8_t* y, int64_t k);
// What llama-quantize writes for `t` without an imatrix (F32/F16 copy or convert).
void gguf_quantize_row(GgufType t, const float* x, uint8_t* y, int64_t k);
// ggml's dequantizers (dequantize_row_*), the values llama.cpp computes with.
void gguf_dequantize_row(GgufType t, const uint8_t* y, float* x, int64_t k);

// One row's block grid for `t` fixed before quantization, as GPTQ needs it: the scales (fp16, and
// Q4_K's 6-bit sub-scales and mins) come from the row's original weights through the reference
// quantizer (or, with clip search, from the shrink of each block's range that minimizes
// sum |q(w) - w|^2.4 on the fp16 grid), so that round() lands on exactly the values llama.cpp
// dequantizes. Types: Q4_0, Q4_1, Q5_0, Q8_0, IQ4_NL, Q4_K, Q6_K. `importance` (one value per
// column, e.g. the mean x_j^2 of the weight's inputs; null: none) weights the scale choice as
// llama-quantize's imatrix does: the clip search's error terms, and IQ4_NL's scale search
// (ggml's quant_weights rule); Q4_K and Q6_K keep the reference scales.
class BlockGridRow {
 public:
  BlockGridRow(GgufType t, const float* row, int64_t cols, bool clip_search, const float* importance = nullptr);
  // The level nearest to w for column `col` (as a float llama.cpp computes it) and its code.
  float round(int64_t col, float w, int* code) const;
  // The blocks of the row from one code per column (codes from round()).
  void encode(const int* codes, uint8_t* out) const;

 private:
  GgufType type_;
  int64_t cols_;
  std::vector<uint8_t> blocks_;  // the reference blocks (scales read from them)
  BlockGridRow(GgufType t, const uint8_t* blocks, int64_t cols);  // a grid from blocks as they are
  float level(int64_t col, int code) const;
  int max_code() const;
};

enum class GgufArch { Llama, Qwen2 };

struct GgufExportOptions {
  GgufType type = GgufType::Q4_0;        // the file's main type (general.file_type follows it)
  bool k_mix = false;                    // Q4_K_M: Q6_K on attn_v/ffn_down of some layers (llama-quant.cpp)
  std::optional<GgufType> embd_type;     // default: llama-quantize's choice
  std::optional<GgufType> output_type;   // default: llama-quantize's choice
  WeightMethod method = WeightMethod::Gptq;  // Rtn, Gptq; None = llama-quantize's own reference RTN
  bool clip_search = true;               // RTN/GPTQ on Q4_0/Q4_1/Q5_0/Q8_0 grids
  // GPTQ also on output.weight (an untied classifier at a block type), with the Hessian of its
  // input (the final RMSNorm of the quantized model's last layer on the calibration windows):
  // llama-quantize rounds it, and at 4 bits it is what a file of llama-quantize's size loses.
  bool gptq_classifier = true;
  // GPTQ: each block's scale chosen with its columns weighted by the Hessian's diagonal (the
  // clip search's error terms; IQ4_NL's scale search as llama-quantize does with an imatrix).
  bool importance_grid = true;
  double damp = 0.01;
  bool act_order = false;
  int gptq_block_size = 128;
  bool rotate = true;
  RotationOptions rotation = [] {
    RotationOptions r;
    r.r3 = r.r4 = false;
    r.r2_online_cross_head = false;
    return r;
  }();
  bool pad_ffn = true;  // zero-pad FFN widths no block of the asked type holds (exact)
  std::string name;     // general.name (default: the model's file name)
  std::string recipe;   // quantize.recipe: the preset or the flags, for provenance
  std::string calibration_hash;  // quantize.calibration.sha256 (empty: not recorded)
  std::string preset;
};

// The gguf-* presets that name these options are the pipeline's (pipeline.hpp: plan_preset).
// Throws quarot::Error (a usage error) when the options ask for something llama.cpp cannot run:
// R3, R4 or R2's cross-head factor (online transforms), R1 without norm fusion.
void validate_gguf_options(const GgufExportOptions& o);

struct GgufTensorReport {
  std::string name;
  std::vector<int64_t> dims;  // GGUF order: ne[0] = columns
  GgufType type;
  std::size_t bytes;
  std::string note;  // e.g. "fell back from q4_K: 64 columns not a multiple of 256"
};

struct GgufExportReport {
  std::string path;
  GgufArch arch = GgufArch::Llama;
  std::size_t file_bytes = 0;
  int64_t weights = 0;          // elements of every tensor
  double bits_per_weight = 0;   // 8 * tensor bytes / weights
  std::vector<GgufTensorReport> tensors;
  std::vector<std::string> fallbacks;  // tensors written in another type than asked, and why
  std::vector<std::string> notes;      // padding, rotation steps, tokenizer
  std::vector<ModuleQuantStats> stats;
  int padded_intermediate = 0;  // 0: not padded
  double seconds = 0;
};

using GgufProgress = std::function<void(const std::string& what)>;

// Rotates (opts.rotate), pads, quantizes and writes `m` to `path` (atomically). `m` is consumed:
// it holds the rotated, padded, dequantized model afterwards (what llama.cpp computes with).
// `tokenizer` may be null (no tokenizer.ggml.* keys). `calib`: GPTQ's calibration windows.
GgufExportReport export_gguf(ModelWeights& m, const Tokenizer* tokenizer, const GgufExportOptions& opts,
                             const std::vector<std::vector<int>>& calib, const std::string& path,
                             const GgufProgress& progress = {});

// Zero-pads the FFN width to a multiple of `multiple` (zero rows in gate/up, zero columns in
// down: the forward pass is unchanged). Returns the new width (the old one when it divides).
int pad_intermediate(ModelWeights& m, int multiple);

// Tokenizer metadata for tokenizer.ggml.*: what a Tokenizer exposes for export.
struct GgufVocab {
  std::string model;  // "llama" (SentencePiece-style scores) or "gpt2" (BPE merges)
  std::string pre;    // gpt2 only: "llama-bpe", "qwen2", "default"
  std::vector<std::string> tokens;
  std::vector<float> scores;         // llama
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
  std::vector<std::string> merges;   // gpt2
  int bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = true;
  bool add_eos = false;
};
// Throws quarot::Error when the tokenizer cannot be described (a kind quarot cannot export).
// Hugging Face byte-level BPE (tokenizer.json, vocab.json + merges.txt) becomes model "gpt2" with
// pre "gpt-2", "llama-bpe" or "qwen2" (from the pre-tokenizer's split regex; anything else is
// refused), its merges, added tokens as control (special) or user-defined.
GgufVocab gguf_vocab_of(const Tokenizer& t);
// Appends "[PAD<id>]" tokens (unused, type 5) up to model_vocab, as llama.cpp's converter does
// for embedding rows the tokenizer has no token for (Qwen2: 151,936 rows, 151,665 tokens).
void pad_gguf_vocab(GgufVocab& v, int model_vocab);

}  // namespace quarot
