#pragma once
// A client of the real llama.cpp, loaded at run time with dlopen from the prebuilt npm package
// @node-llama-cpp/linux-x64 (scripts/install-llama-cpp.sh). The package ships no headers, so this
// client declares only what it calls and checks the ABI it relies on when it opens the library:
// the default values of the parameter structs at the offsets it writes, and the values llama.cpp
// logs back when a context is made (docs/gguf.md, "reading GGUF and the llama.cpp harness").
// Used by tests/test_llama_cpp.cpp and bench/bench_llama_cpp.cpp; never by quarot itself.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "quarot/eval.hpp"
#include "quarot/weights.hpp"

namespace quarot::llama_cpp {

// The folder holding libllama*.so and libggml*.so: $QUAROT_LLAMA_CPP_LIB when set, else the
// package folder scripts/install-llama-cpp.sh fills ($QUAROT_LLAMA_CPP_DIR or
// ~/.cache/quarot/llama.cpp-3.22.1, then package/bins/linux-x64).
std::string default_library_dir();

class Library;

// llama.cpp's importance matrix from quarot's fp32 forward pass of `model` (llama layout, GGUF
// tensor names) over `sequences` (each cut to max_context): for every linear weight, the mean
// over all tokens of the square of each input column.
std::map<std::string, std::vector<float>> importance_matrix(const ModelWeights& model,
                                                           const std::vector<std::vector<int>>& sequences, int max_context);

// One GGUF model and one context of n_ctx positions, every position's logits returned.
class Model {
 public:
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  int vocab() const { return vocab_; }
  int n_ctx() const { return n_ctx_; }
  // Runs `tokens` (at most n_ctx) from an empty KV cache as one sequence; logits [n][vocab].
  std::vector<float> logits(const std::vector<int>& tokens);
  // Perplexity on quarot's windows (eval.hpp's make_windows), aggregated as quarot::evaluate
  // does for the protocol (paper: mean of the windows' mean NLL; llama.cpp: mean of all NLL).
  EvalResult evaluate(const std::vector<Window>& windows, Protocol p);
  double load_seconds() const { return load_seconds_; }
  // Generation timing from an empty KV cache: `prompt` as one batch (logits of its last position
  // only), then n_decode single-token steps (each the argmax of the previous logits), as
  // llama.cpp runs a chat. Returns {prefill seconds, decode seconds}.
  std::pair<double, double> time_generation(const std::vector<int>& prompt, int n_decode);
  // llama_tokenize with the file's own vocabulary (tokenizer.ggml.*): add_special adds what
  // tokenizer.ggml.add_bos_token/add_eos_token say; parse_special matches control and
  // user-defined tokens written in the text. Throws when llama.cpp reports an error.
  std::vector<int> tokenize(const std::string& text, bool add_special, bool parse_special) const;

 private:
  friend class Library;
  Model() = default;
  const Library* lib_ = nullptr;
  void* model_ = nullptr;
  void* ctx_ = nullptr;
  int vocab_ = 0, n_ctx_ = 0;
  double load_seconds_ = 0;
};

class Library {
 public:
  // Opens the libraries in `dir` and checks the ABI; nullptr with `why` set when the folder or a
  // library is missing (the caller skips); throws quarot::Error when a library is there but its
  // ABI is not the one this client was written against.
  static std::unique_ptr<Library> open(const std::string& dir, std::string* why);
  ~Library();
  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;

  std::string ggml_version() const;
  // The ABI facts checked at open, one per line, for logs and docs.
  const std::string& abi_report() const { return abi_report_; }
  // The lines llama.cpp logged since the last call (its log callback is routed here).
  std::string take_log() const;

  // n_ctx positions, all of them outputs; F32 KV cache (no fp16 rounding of keys/values).
  std::unique_ptr<Model> load(const std::string& gguf, int n_ctx, int threads = 1) const;
  // llama_model_quantize with the given llama_ftype code (2 Q4_0, 3 Q4_1, 7 Q8_0, 15 Q4_K_M,
  // 25 IQ4_NL, ...), optionally with an importance matrix (GGUF tensor name -> one weight per
  // input column, as llama.cpp's imatrix tool computes: the mean of x_j^2 over the calibration
  // tokens); throws quarot::Error when it fails.
  void quantize(const std::string& in, const std::string& out, int ftype, int threads = 1,
                const std::map<std::string, std::vector<float>>* imatrix = nullptr) const;

  // ggml's own dequantization of n elements of ggml type `type` (ggml_get_type_traits()->to_float;
  // the traits' name, block and size are checked against `type_name`, `block`, `block_bytes`).
  std::vector<float> ggml_to_float(uint32_t type, const char* type_name, int64_t block, std::size_t block_bytes,
                                   const uint8_t* data, int64_t n) const;

  struct Api;
  const Api& api() const { return *api_; }

 private:
  Library() = default;
  std::unique_ptr<Api> api_;
  std::vector<void*> handles_;
  std::string abi_report_;
};

}  // namespace quarot::llama_cpp
