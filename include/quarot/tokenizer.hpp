#pragma once
// Tokenizers: SentencePiece models (libsentencepiece) and llama2.c's tokenizer.bin (its own BPE
// merge by score and decoding, as run.c does). encode() never adds BOS: callers decide, by the
// evaluation protocol.
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace quarot {

// One vocabulary entry as the tokenizer's own model stores it (for export, e.g. GGUF's
// tokenizer.ggml.*). type: SentencePiece's piece types (1 normal, 2 unknown, 3 control,
// 4 user defined, 5 unused, 6 byte).
struct TokenPiece {
  std::string text;
  float score = 0;
  int type = 1;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int> encode(const std::string& text) const = 0;
  virtual std::string decode(std::span<const int> ids) const = 0;
  virtual int vocab_size() const = 0;
  virtual int bos_id() const { return 1; }
  virtual int eos_id() const { return 2; }
  virtual std::string kind() const = 0;
  // The vocabulary, id by id, in SentencePiece's convention (spaces as U+2581, <unk>/<s>/</s>,
  // <0xXX> byte pieces); empty for kinds that do not expose one.
  virtual std::vector<TokenPiece> pieces() const { return {}; }
  // The ids with what the tokenizer's own convention adds around a text (Hugging Face: the
  // post-processor, e.g. BOS for LLaMA-2/Mistral/Llama-3-Instruct, nothing for Qwen/GPT-2;
  // SentencePiece and llama2.c: BOS in front).
  virtual std::vector<int> encode_with_special(const std::string& text) const {
    std::vector<int> ids = encode(text);
    if (bos_id() >= 0) ids.insert(ids.begin(), bos_id());
    return ids;
  }
  // What encode_with_special adds and why, in words (for logs and reports).
  virtual std::string special_policy() const {
    return bos_id() >= 0 ? "BOS " + std::to_string(bos_id()) + " in front (the SentencePiece / llama2.c default)" : "nothing";
  }
};

// By file: *.json or a folder -> Hugging Face (hf_tokenizer.hpp); *.model -> SentencePiece;
// anything else -> llama2.c tokenizer.bin.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path);
std::unique_ptr<Tokenizer> load_llama2c_bpe(const std::string& path);
// A SentencePiece model from its bytes (a serialized ModelProto), whose protobuf framing and
// pieces are checked before libsentencepiece sees them (it aborts on some corrupt models).
std::unique_ptr<Tokenizer> make_sentencepiece(std::string_view model, const std::string& label);
// The same from pieces already read (parse_llama2c_tokenizer); `label` names them in errors.
struct Llama2cTokenizer;
std::unique_ptr<Tokenizer> make_llama2c_bpe(Llama2cTokenizer pieces, const std::string& label);

// Whether `tok` can drive a model with `model_vocab` embedding rows: every id it produces
// (< vocab_size()) must be a row. Fewer tokens than rows is normal (Qwen2/3: 151,669 tokens,
// 151,936 rows padded for the GPU); more is refused, naming `label` (a tokenizer of another
// model).
void check_tokenizer_fits_model(const Tokenizer& tok, int model_vocab, const std::string& label);

// Reads a text file for tokenization with Windows line endings (CRLF) turned into LF: the
// evaluation protocols are defined on LF text (WikiText-2 as shipped in ../shared/data has CRLF,
// which costs 8,713 extra LLaMA-2 tokens). `crlf_count`, when given, receives how many.
std::string read_text_lf(const std::string& path, std::size_t* crlf_count = nullptr);

// Pre-tokenized ids: whitespace-separated integers, one sequence per line (blank lines
// skipped). Every id is checked against `vocab` (when > 0); errors name file and line.
std::vector<std::vector<int>> read_ids_file(const std::string& path, int vocab);
// The same on text already read; `label` names it in errors.
std::vector<std::vector<int>> parse_ids(std::string_view text, const std::string& label, int vocab);

}  // namespace quarot
