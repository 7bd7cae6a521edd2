#pragma once
// Hugging Face tokenizers: `tokenizer.json` (the `tokenizers` library's format) and the slow form
// `vocab.json` + `merges.txt` (+ `added_tokens.json`, `tokenizer_config.json`), encoded and decoded
// exactly as the Rust crate does for the models quarot supports: BPE with byte-level
// pre-tokenization (GPT-2, Llama-3, Qwen2/2.5/3) and BPE with metaspace normalizers and byte
// fallback (LLaMA-2, Mistral, TinyLlama in tokenizer.json form). Any other model type or an
// unknown normalizer / pre-tokenizer / post-processor / decoder type is refused with a one-line
// quarot::Error naming the file and the field, never tokenized differently.
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "quarot/tokenizer.hpp"

namespace quarot {

class HfTokenizer final : public Tokenizer {
 public:
  struct Impl;
  explicit HfTokenizer(std::unique_ptr<Impl> impl);
  ~HfTokenizer() override;

  // encode(text, add_special_tokens=False): added/special tokens written in the text are still
  // matched (as HF does), nothing is added around it. Throws quarot::Error on invalid UTF-8.
  std::vector<int> encode(const std::string& text) const override;
  // encode(text) with HF's defaults: what the post-processor (or tokenizer_config.json's
  // add_bos_token / add_eos_token for Llama-class tokenizers) adds, e.g. BOS in front.
  std::vector<int> encode_with_special(const std::string& text) const override;
  // decode(ids, skip_special_tokens=False) without clean-up: the decoder's text.
  std::string decode(std::span<const int> ids) const override;
  // transformers' tokenizer.decode: optionally dropping special tokens, and applying
  // clean_up_tokenization_spaces (" ." -> "." ...) when asked.
  std::string decode(std::span<const int> ids, bool skip_special_tokens, bool clean_up_spaces) const;
  // tokenizer_config.json's clean_up_tokenization_spaces (false when absent).
  bool clean_up_spaces_default() const;

  int vocab_size() const override;  // model vocabulary and added tokens: the largest id + 1
  int bos_id() const override;      // -1 when the tokenizer has none (Qwen)
  int eos_id() const override;      // -1 when unknown
  std::string kind() const override;
  std::string special_policy() const override;
  std::optional<int> token_to_id(std::string_view piece) const;
  std::string id_to_token(int id) const;  // "" when the id has no piece

  // The vocabulary as the files hold it, for export (GGUF's tokenizer.ggml.*).
  struct Vocabulary {
    std::vector<std::string> pieces;  // the BPE model's vocabulary by id ("" where an id has none)
    std::vector<std::string> merges;  // "a b", in rank order
    struct Added {
      int id;
      std::string content;
      bool special;
    };
    std::vector<Added> added;
    // The normalizer / pre-tokenizer / decoder as JSON (tokenizer.json's nodes; for vocab.json +
    // merges.txt, the nodes transformers' converter builds); "" when absent.
    std::string normalizer, pre_tokenizer, decoder;
    bool byte_fallback = false;
    bool ignore_merges = false;
    int unk = -1;                                     // the model's unk_token id, -1 when none
    std::vector<std::pair<int, int>> merge_ids;       // `merges` as (left id, right id)
    std::string file;                 // the tokenizer's file (or folder), for messages
    std::vector<int> prefix, suffix;  // what encode_with_special puts around a text
  };
  Vocabulary vocabulary() const;

 private:
  std::unique_ptr<Impl> impl_;
};

// A tokenizer.json file; a tokenizer_config.json beside it (same folder, named by replacing the
// file name's trailing "tokenizer.json" with "tokenizer_config.json") is read when present.
std::unique_ptr<HfTokenizer> load_hf_tokenizer_json(const std::string& path);
// The same from bytes in memory (`name` is what errors cite; `config_json` may be empty).
std::unique_ptr<HfTokenizer> parse_hf_tokenizer_json(std::string_view json, const std::string& name,
                                                     std::string_view config_json = {});
// A folder holding vocab.json + merges.txt (+ added_tokens.json, tokenizer_config.json).
std::unique_ptr<HfTokenizer> load_hf_vocab_merges(const std::string& dir);

// load_tokenizer's Hugging Face branch: a path ending in .json, or a folder holding
// tokenizer.json, vocab.json + merges.txt, or a SentencePiece tokenizer.model. Returns nullptr
// for any other path (a .model or llama2.c .bin file), so load_tokenizer goes on.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);

// The tokenizer shipped with a model: for a model folder (or a file in one, e.g. config.json or
// model.safetensors) the path of tokenizer.json, else the folder when it holds vocab.json +
// merges.txt, else tokenizer.model; "" when there is none.
std::string find_model_tokenizer(const std::string& model_path);

}  // namespace quarot
