// dlopen client of the prebuilt llama.cpp (see the header). The parameter structs are handled
// as opaque blobs larger than the real ones: on x86-64 System V a struct over 16 bytes is
// returned through a caller-provided buffer and passed by value as a copy on the stack, so a
// larger blob carries the real struct in its first bytes either way; this client writes only the
// fields whose offsets it verified (defaults below, and llama.cpp's own log of the context).
#include "llama_cpp_client.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <cctype>

#include "quarot/error.hpp"
#include "quarot/forward.hpp"

namespace fs = std::filesystem;

namespace quarot::llama_cpp {

namespace {

// Larger than any of llama.cpp's parameter structs (model ~80 bytes, context ~140, quantize ~64).
struct Blob {
  alignas(16) unsigned char b[1024];
  template <class T>
  T get(std::size_t off) const {
    T v;
    std::memcpy(&v, b + off, sizeof v);
    return v;
  }
  template <class T>
  void set(std::size_t off, T v) {
    std::memcpy(b + off, &v, sizeof v);
  }
};

// struct llama_batch, unchanged since 2023 (checked at open: llama_batch_init fills exactly the
// pointers this layout names).
struct Batch {
  int32_t n_tokens;
  int32_t* token;
  float* embd;
  int32_t* pos;
  int32_t* n_seq_id;
  int32_t** seq_id;
  int8_t* logits;
};

// Offsets in llama_context_params (this build; the public header of the same era agrees):
// uint32 n_ctx, n_batch, n_ubatch, n_seq_max, n_rs_seq, n_outputs_max, n_outputs_max_per_seq;
// int32 n_threads, n_threads_batch; int32 ctx_type, rope_scaling_type, pooling_type,
// attention_type, flash_attn_type; 8 floats/uint32 (rope, yarn, defrag); 2 pointers (cb_eval);
// int32 type_k, type_v; ...
constexpr std::size_t kCtxNCtx = 0, kCtxNBatch = 4, kCtxNUbatch = 8, kCtxNSeqMax = 12, kCtxNOutputsMax = 20,
                      kCtxNOutputsMaxPerSeq = 24, kCtxNThreads = 28, kCtxNThreadsBatch = 32, kCtxFlashAttn = 52,
                      kCtxTypeK = 104, kCtxTypeV = 108;
// llama_model_quantize_params: int32 nthread; int32 ftype; int32 output_tensor_type; int32 token_embedding_type; bools...
// then (this build) bools @16..@21 and pointers: imatrix @24, kv_overrides @32, tensor_types @40, prune_layers @48.
constexpr std::size_t kQuantNThread = 0, kQuantFtype = 4, kQuantOutputType = 8, kQuantEmbeddingType = 12, kQuantImatrix = 24;

// struct llama_model_imatrix_data (this build: `imatrix` is an array of these, ended by a null
// name; older builds took a C++ unordered_map there).
struct ImatrixEntry {
  const char* name;
  const float* data;
  std::size_t size;
};

std::mutex g_log_mutex;
std::string g_log;

void log_callback(int /*level*/, const char* text, void* /*user*/) {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  if (g_log.size() < (1u << 20)) g_log += text;
}

// The end of a log (where llama.cpp says what went wrong), at most 1500 characters.
std::string tail(const std::string& log) { return log.size() > 1500 ? "..." + log.substr(log.size() - 1500) : log; }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// struct ggml_type_traits (ggml.h, unchanged for years): checked per use against known values.
struct TypeTraits {
  const char* type_name;
  int64_t blck_size;
  int64_t blck_size_interleave;
  std::size_t type_size;
  bool is_quantized;
  void (*to_float)(const void*, float*, int64_t);
  void (*from_float_ref)(const float*, void*, int64_t);
};

struct Library::Api {
  const TypeTraits* (*ggml_get_type_traits)(int) = nullptr;
  const char* (*ggml_version)() = nullptr;
  void (*ggml_log_set)(void (*)(int, const char*, void*), void*) = nullptr;
  void (*ggml_backend_load_all_from_path)(const char*) = nullptr;
  std::size_t (*ggml_backend_dev_count)() = nullptr;
  void (*llama_log_set)(void (*)(int, const char*, void*), void*) = nullptr;
  void (*llama_backend_init)() = nullptr;
  Blob (*llama_model_default_params)() = nullptr;
  Blob (*llama_context_default_params)() = nullptr;
  Blob (*llama_model_quantize_default_params)() = nullptr;
  void* (*llama_model_load_from_file)(const char*, Blob) = nullptr;
  void (*llama_model_free)(void*) = nullptr;
  void* (*llama_init_from_model)(void*, Blob) = nullptr;
  void (*llama_free)(void*) = nullptr;
  const void* (*llama_model_get_vocab)(const void*) = nullptr;
  int32_t (*llama_vocab_n_tokens)(const void*) = nullptr;
  // llama.h: int32_t llama_tokenize(const llama_vocab*, const char* text, int32_t text_len,
  //   llama_token* tokens, int32_t n_tokens_max, bool add_special, bool parse_special);
  // returns the count, or minus the count needed when n_tokens_max is too small.
  int32_t (*llama_tokenize)(const void*, const char*, int32_t, int32_t*, int32_t, bool, bool) = nullptr;
  Batch (*llama_batch_init)(int32_t, int32_t, int32_t) = nullptr;
  void (*llama_batch_free)(Batch) = nullptr;
  int32_t (*llama_decode)(void*, Batch) = nullptr;
  float* (*llama_get_logits_ith)(void*, int32_t) = nullptr;
  void* (*llama_get_memory)(void*) = nullptr;
  void (*llama_memory_clear)(void*, bool) = nullptr;
  uint32_t (*llama_model_quantize)(const char*, const char*, const Blob*) = nullptr;
};

std::string default_library_dir() {
  if (const char* lib = std::getenv("QUAROT_LLAMA_CPP_LIB"); lib && *lib) return lib;
  std::string root;
  if (const char* d = std::getenv("QUAROT_LLAMA_CPP_DIR"); d && *d) {
    root = d;
  } else {
    const char* home = std::getenv("HOME");
    root = std::string(home ? home : ".") + "/.cache/quarot/llama.cpp-3.22.1";
  }
  return root + "/package/bins/linux-x64";
}

std::string Library::take_log() const {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  std::string s;
  s.swap(g_log);
  return s;
}

std::unique_ptr<Library> Library::open(const std::string& dir, std::string* why) {
  std::error_code ec;
  std::string llama_path;
  if (fs::is_directory(dir, ec))
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("libllama", 0) == 0 && n.find("common") == std::string::npos && n.ends_with(".so")) llama_path = e.path().string();
    }
  if (llama_path.empty()) {
    if (why) *why = "no libllama*.so in " + dir + " (run scripts/install-llama-cpp.sh)";
    return nullptr;
  }
  std::unique_ptr<Library> lib(new Library);
  // libllama's RUNPATH ($ORIGIN) brings libggml and libggml-base from the same folder.
  void* h = dlopen(llama_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    if (why) *why = std::string("dlopen failed: ") + dlerror();
    return nullptr;
  }
  lib->handles_.push_back(h);
  lib->api_ = std::make_unique<Api>();
  Api& a = *lib->api_;
  auto sym = [&](auto& fn, const char* name) {
    void* p = dlsym(h, name);
    if (!p) throw Error(llama_path, std::string("llama.cpp library lacks symbol ") + name + " (ABI changed?)");
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
  };
  sym(a.ggml_version, "ggml_version");
  sym(a.ggml_get_type_traits, "ggml_get_type_traits");
  sym(a.ggml_log_set, "ggml_log_set");
  sym(a.ggml_backend_load_all_from_path, "ggml_backend_load_all_from_path");
  sym(a.ggml_backend_dev_count, "ggml_backend_dev_count");
  sym(a.llama_log_set, "llama_log_set");
  sym(a.llama_backend_init, "llama_backend_init");
  sym(a.llama_model_default_params, "llama_model_default_params");
  sym(a.llama_context_default_params, "llama_context_default_params");
  sym(a.llama_model_quantize_default_params, "llama_model_quantize_default_params");
  sym(a.llama_model_load_from_file, "llama_model_load_from_file");
  sym(a.llama_model_free, "llama_model_free");
  sym(a.llama_init_from_model, "llama_init_from_model");
  sym(a.llama_free, "llama_free");
  sym(a.llama_model_get_vocab, "llama_model_get_vocab");
  sym(a.llama_vocab_n_tokens, "llama_vocab_n_tokens");
  sym(a.llama_tokenize, "llama_tokenize");
  sym(a.llama_batch_init, "llama_batch_init");
  sym(a.llama_batch_free, "llama_batch_free");
  sym(a.llama_decode, "llama_decode");
  sym(a.llama_get_logits_ith, "llama_get_logits_ith");
  sym(a.llama_get_memory, "llama_get_memory");
  sym(a.llama_memory_clear, "llama_memory_clear");
  sym(a.llama_model_quantize, "llama_model_quantize");

  a.llama_log_set(log_callback, nullptr);
  a.ggml_log_set(log_callback, nullptr);
  // The CPU backends (one .so per ISA level) are found only by scanning the folder.
  a.ggml_backend_load_all_from_path(dir.c_str());
  if (a.ggml_backend_dev_count() == 0) throw Error(dir, "llama.cpp: no backend device after ggml_backend_load_all_from_path");
  a.llama_backend_init();

  // ABI checks: the defaults of the fields this client writes, at the offsets it writes them.
  std::string& r = lib->abi_report_;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) throw Error(llama_path, "llama.cpp ABI differs from the one this client checks: " + what);
    r += what + "\n";
  };
  Blob c{};
  c = a.llama_context_default_params();
  check(c.get<uint32_t>(kCtxNCtx) == 512 && c.get<uint32_t>(kCtxNBatch) == 2048 && c.get<uint32_t>(kCtxNUbatch) == 512 &&
            c.get<uint32_t>(kCtxNSeqMax) == 1,
        "llama_context_params: n_ctx 512 @0, n_batch 2048 @4, n_ubatch 512 @8, n_seq_max 1 @12");
  check(c.get<uint32_t>(kCtxNOutputsMax) == 0 && c.get<uint32_t>(kCtxNOutputsMaxPerSeq) == 1,
        "llama_context_params: n_outputs_max 0 @20, n_outputs_max_per_seq 1 @24 (must be raised for every position's logits)");
  check(c.get<int32_t>(kCtxNThreads) > 0 && c.get<int32_t>(kCtxNThreads) == c.get<int32_t>(kCtxNThreadsBatch),
        "llama_context_params: n_threads = n_threads_batch = " + std::to_string(c.get<int32_t>(kCtxNThreads)) + " @28/@32");
  check(c.get<int32_t>(kCtxFlashAttn) == -1, "llama_context_params: flash_attn_type -1 (auto) @52");
  check(c.get<int32_t>(kCtxTypeK) == 1 && c.get<int32_t>(kCtxTypeV) == 1, "llama_context_params: type_k = type_v = GGML_TYPE_F16 (1) @104/@108");
  Blob q{};
  q = a.llama_model_quantize_default_params();
  check(q.get<int32_t>(kQuantNThread) == 0 && q.get<int32_t>(kQuantOutputType) == q.get<int32_t>(kQuantEmbeddingType) &&
            q.get<int32_t>(kQuantOutputType) > 30,
        "llama_model_quantize_params: nthread 0 @0, ftype " + std::to_string(q.get<int32_t>(kQuantFtype)) +
            " @4, output/token_embedding type GGML_TYPE_COUNT (" + std::to_string(q.get<int32_t>(kQuantOutputType)) + ") @8/@12");
  Batch b = a.llama_batch_init(4, 0, 1);
  const bool batch_ok = b.token && !b.embd && b.pos && b.n_seq_id && b.seq_id && b.seq_id[0] && b.logits;
  a.llama_batch_free(b);
  check(batch_ok, "llama_batch: {n_tokens, token, embd, pos, n_seq_id, seq_id, logits} (embd null for token batches)");
  lib->take_log();
  return lib;
}

Library::~Library() {
  // The libraries stay loaded: ggml keeps global state (backend registry, thread pools) whose
  // destructors must not run after dlclose.
}

std::string Library::ggml_version() const { return api_->ggml_version(); }

std::unique_ptr<Model> Library::load(const std::string& gguf, int n_ctx, int threads) const {
  const Api& a = *api_;
  std::unique_ptr<Model> m(new Model);
  m->lib_ = this;
  m->n_ctx_ = n_ctx;
  const auto t0 = std::chrono::steady_clock::now();
  Blob mp{};
  mp = a.llama_model_default_params();
  m->model_ = a.llama_model_load_from_file(gguf.c_str(), mp);
  if (!m->model_) throw Error(gguf, "llama.cpp could not load it: " + tail(take_log()));
  m->load_seconds_ = seconds_since(t0);
  Blob cp{};
  cp = a.llama_context_default_params();
  cp.set<uint32_t>(kCtxNCtx, uint32_t(n_ctx));
  cp.set<uint32_t>(kCtxNBatch, uint32_t(n_ctx));
  cp.set<uint32_t>(kCtxNUbatch, uint32_t(n_ctx));
  cp.set<uint32_t>(kCtxNOutputsMax, uint32_t(n_ctx));
  cp.set<uint32_t>(kCtxNOutputsMaxPerSeq, uint32_t(n_ctx));
  cp.set<int32_t>(kCtxNThreads, threads);
  cp.set<int32_t>(kCtxNThreadsBatch, threads);
  cp.set<int32_t>(kCtxFlashAttn, 0);  // disabled: the plain attention path, softmax in fp32
  cp.set<int32_t>(kCtxTypeK, 0);      // GGML_TYPE_F32 keys and values
  cp.set<int32_t>(kCtxTypeV, 0);
  take_log();
  m->ctx_ = a.llama_init_from_model(m->model_, cp);
  const std::string log = take_log();
  if (!m->ctx_) throw Error(gguf, "llama.cpp could not make a context: " + tail(log));
  // llama.cpp logs the context it made: the fields must read back as written.
  // "<field> = <digits>" with <field> a whole word (no std::regex: g++ 12 warns inside it under ASan).
  auto logged = [&](const std::string& field) -> long {
    for (std::size_t at = log.find(field); at != std::string::npos; at = log.find(field, at + 1)) {
      if (at > 0 && (std::isalnum(static_cast<unsigned char>(log[at - 1])) || log[at - 1] == '_')) continue;
      std::size_t i = at + field.size();
      while (i < log.size() && log[i] == ' ') ++i;
      if (i >= log.size() || log[i] != '=') continue;
      ++i;
      while (i < log.size() && log[i] == ' ') ++i;
      std::size_t j = i;
      while (j < log.size() && std::isdigit(static_cast<unsigned char>(log[j]))) ++j;
      if (j > i && j - i < 10) return std::stol(log.substr(i, j - i));
    }
    return -1;
  };
  if (logged("n_outputs_max_per_seq") != n_ctx || logged("n_ctx") != n_ctx)
    throw Error(gguf, "llama.cpp context does not read back n_ctx/n_outputs_max_per_seq = " + std::to_string(n_ctx) +
                          " (ABI offsets wrong?): " + tail(log));
  m->vocab_ = a.llama_vocab_n_tokens(a.llama_model_get_vocab(m->model_));
  return m;
}

void Library::quantize(const std::string& in, const std::string& out, int ftype, int threads,
                       const std::map<std::string, std::vector<float>>* imatrix) const {
  Blob q{};
  q = api_->llama_model_quantize_default_params();
  q.set<int32_t>(kQuantNThread, threads);
  q.set<int32_t>(kQuantFtype, ftype);
  // llama.cpp logs the entry count it found, checked below.
  std::vector<ImatrixEntry> table;
  if (imatrix) {
    if (q.get<void*>(kQuantImatrix) != nullptr) throw Error(in, "llama_model_quantize_params: imatrix @24 is not null by default (ABI?)");
    for (const auto& [name, v] : *imatrix) table.push_back({name.c_str(), v.data(), v.size()});
    table.push_back({nullptr, nullptr, 0});
    q.set<const void*>(kQuantImatrix, table.data());
  }
  take_log();
  if (api_->llama_model_quantize(in.c_str(), out.c_str(), &q) != 0)
    throw Error(in, "llama_model_quantize (ftype " + std::to_string(ftype) + ") failed: " + tail(take_log()));
  const std::string log = take_log();
  if (imatrix && log.find("have importance matrix data with " + std::to_string(imatrix->size()) + " entries") == std::string::npos)
    throw Error(in, "llama_model_quantize did not report the " + std::to_string(imatrix->size()) + " imatrix entries (ABI?): " + tail(log));
}

std::map<std::string, std::vector<float>> importance_matrix(const ModelWeights& model,
                                                           const std::vector<std::vector<int>>& sequences, int max_context) {
  const ModelConfig& c = model.config;
  // Sums of squares per (layer, hook point) and the token count.
  std::map<std::pair<int, HookPoint>, std::vector<double>> sums;
  long long tokens = 0;
  Transformer<float> t(model, max_context);
  t.set_hook([&](HookPoint p, int layer, const ActivationView<float>& a) {
    if (p != HookPoint::QkvInput && p != HookPoint::OProjInput && p != HookPoint::GateUpInput && p != HookPoint::DownProjInput) return;
    auto& s = sums[{layer, p}];
    s.resize(std::size_t(a.cols), 0.0);
    for (int r = 0; r < a.rows; ++r)
      for (int j = 0; j < a.cols; ++j) s[std::size_t(j)] += double(a.row(r)[j]) * a.row(r)[j];
  });
  std::vector<float> logits;
  for (const auto& seq : sequences) {
    const std::size_t n = std::min(seq.size(), std::size_t(max_context));
    if (n == 0) continue;
    t.reset();
    t.forward(std::span<const int>(seq.data(), n), logits);
    tokens += (long long)n;
  }
  if (tokens == 0) throw Error("imatrix", "no calibration tokens");
  std::map<std::string, std::vector<float>> out;
  const char* gguf_names[kLinearsPerLayer] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  for (int l = 0; l < c.n_layers; ++l)
    for (const LinearSpec& s : kLinearSpecs) {
      const auto& sum = sums.at({l, s.input});
      std::vector<float> v(sum.size());
      for (std::size_t j = 0; j < v.size(); ++j) v[j] = float(sum[j] / double(tokens));
      out["blk." + std::to_string(l) + "." + gguf_names[int(s.module)] + ".weight"] = std::move(v);
    }
  return out;
}

std::vector<float> Library::ggml_to_float(uint32_t type, const char* type_name, int64_t block, std::size_t block_bytes,
                                          const uint8_t* data, int64_t n) const {
  const TypeTraits* t = api_->ggml_get_type_traits(int(type));
  if (!t || !t->type_name || std::string(t->type_name) != type_name || t->blck_size != block || t->type_size != block_bytes ||
      !t->to_float)
    throw Error("ggml_get_type_traits", "type " + std::to_string(type) + " is not " + type_name + " with blocks of " +
                                            std::to_string(block) + " in " + std::to_string(block_bytes) + " bytes (ABI?)");
  std::vector<float> out(static_cast<std::size_t>(n));
  t->to_float(data, out.data(), n);
  return out;
}

Model::~Model() {
  const auto& a = lib_->api();
  if (ctx_) a.llama_free(ctx_);
  if (model_) a.llama_model_free(model_);
}

std::vector<float> Model::logits(const std::vector<int>& tokens) {
  const auto& a = lib_->api();
  const int n = int(tokens.size());
  if (n == 0 || n > n_ctx_) throw Error("llama.cpp", "window of " + std::to_string(n) + " tokens does not fit n_ctx " + std::to_string(n_ctx_));
  a.llama_memory_clear(a.llama_get_memory(ctx_), true);
  Batch b = a.llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; ++i) {
    b.token[i] = tokens[std::size_t(i)];
    b.pos[i] = i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = 1;
  }
  b.n_tokens = n;
  const int32_t rc = a.llama_decode(ctx_, b);
  std::vector<float> out;
  if (rc == 0) {
    out.resize(std::size_t(n) * std::size_t(vocab_));
    for (int i = 0; i < n; ++i) {
      const float* x = a.llama_get_logits_ith(ctx_, i);
      if (!x) {
        out.clear();
        break;
      }
      std::copy(x, x + vocab_, out.begin() + std::ptrdiff_t(i) * vocab_);
    }
  }
  a.llama_batch_free(b);
  if (out.empty()) throw Error("llama.cpp", "llama_decode failed (rc " + std::to_string(rc) + "): " + tail(lib_->take_log()));
  return out;
}

std::vector<int> Model::tokenize(const std::string& text, bool add_special, bool parse_special) const {
  const Library::Api& a = lib_->api();
  const void* vocab = a.llama_model_get_vocab(model_);
  // Asked with no room first: llama.cpp answers minus the count it needs (the ABI check: a
  // second call with that room must return exactly that count).
  const int32_t need = a.llama_tokenize(vocab, text.data(), int32_t(text.size()), nullptr, 0, add_special, parse_special);
  if (need > 0 || (need == 0 && !text.empty() && !add_special))
    throw Error("llama_tokenize", "returned " + std::to_string(need) + " with no room for tokens (ABI changed?)");
  std::vector<int32_t> ids(std::size_t(-int64_t(need)));
  const int32_t got = a.llama_tokenize(vocab, text.data(), int32_t(text.size()), ids.data(), int32_t(ids.size()), add_special, parse_special);
  if (got != -need) throw Error("llama_tokenize", "returned " + std::to_string(got) + " tokens after asking for " + std::to_string(-need));
  return std::vector<int>(ids.begin(), ids.end());
}

std::pair<double, double> Model::time_generation(const std::vector<int>& prompt, int n_decode) {
  const auto& a = lib_->api();
  const int n = int(prompt.size());
  if (n == 0 || n + n_decode > n_ctx_) throw Error("llama.cpp", "prompt + decode do not fit n_ctx " + std::to_string(n_ctx_));
  a.llama_memory_clear(a.llama_get_memory(ctx_), true);
  auto run = [&](const int* tokens, int count, int pos0) {
    Batch b = a.llama_batch_init(count, 0, 1);
    for (int i = 0; i < count; ++i) {
      b.token[i] = tokens[i];
      b.pos[i] = pos0 + i;
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = 0;
      b.logits[i] = i == count - 1;
    }
    b.n_tokens = count;
    const int32_t rc = a.llama_decode(ctx_, b);
    a.llama_batch_free(b);
    const float* x = rc == 0 ? a.llama_get_logits_ith(ctx_, -1) : nullptr;
    if (!x) throw Error("llama.cpp", "llama_decode failed (rc " + std::to_string(rc) + "): " + tail(lib_->take_log()));
    return int(std::max_element(x, x + vocab_) - x);
  };
  const auto t0 = std::chrono::steady_clock::now();
  int next = run(prompt.data(), n, 0);
  const auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < n_decode; ++i) next = run(&next, 1, n + i);
  const auto t2 = std::chrono::steady_clock::now();
  return {std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count()};
}

EvalResult Model::evaluate(const std::vector<Window>& windows, Protocol p) {
  // The aggregation of quarot::evaluate (src/eval/eval.cpp), on llama.cpp's logits.
  EvalResult r;
  r.protocol = p;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> all_nll;
  double sum_window_means = 0;
  for (const Window& w : windows) {
    r.ctx = std::max(r.ctx, int(w.tokens.size()));
    const std::vector<float> lg = logits(w.tokens);
    double window_sum = 0;
    int window_n = 0;
    for (int j = w.first_scored; j + 1 < int(w.tokens.size()); ++j) {
      const float* x = lg.data() + std::size_t(j) * std::size_t(vocab_);
      const double mx = *std::max_element(x, x + vocab_);
      double s = 0;
      for (int i = 0; i < vocab_; ++i) s += std::exp(double(x[i]) - mx);
      const double nll = mx + std::log(s) - x[w.tokens[std::size_t(j) + 1]];
      window_sum += nll;
      ++window_n;
      all_nll.push_back(nll);
    }
    if (window_n == 0) continue;
    r.window_nll.push_back(window_sum / window_n);
    sum_window_means += window_sum / window_n;
    r.tokens_scored += window_n;
  }
  r.windows = int(r.window_nll.size());
  if (r.windows == 0) throw Error("llama.cpp evaluation", "no window to score");
  double sum = 0;
  for (double v : all_nll) sum += v;
  r.mean_nll = p == Protocol::Paper ? sum_window_means / r.windows : sum / double(all_nll.size());
  r.ppl = std::exp(r.mean_nll);
  r.seconds = seconds_since(t0);
  return r;
}

}  // namespace quarot::llama_cpp
