// Hugging Face checkpoint folders: config.json + safetensors (one file, or shards + index).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include <sys/mman.h>
#include <unistd.h>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/file_identity.hpp"
#include "quarot/finite.hpp"
#include "quarot/gguf_reader.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/mapped_file.hpp"
#include "quarot/safetensors.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace quarot {

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";
// An index lists one short entry per tensor: a few MB even for the largest models.
constexpr uint64_t kMaxIndexBytes = 64ull << 20;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

bool is_shard_name(const std::string& n) {
  return n.rfind("model-", 0) == 0 && n.size() > 12 && n.ends_with(".safetensors") &&
         n.find("-of-") != std::string::npos;
}

struct Located {
  const SafetensorsFile* file;
  const TensorInfo* info;
};

// One unit of conversion work: a slice of one tensor.
struct Job {
  const uint8_t* src;
  DType dtype;
  float* dst;
  std::size_t n;
  std::string tensor, file;  // for the error on a non-finite value
  std::size_t first = 0;     // index of dst[0] in its tensor
};

// Converts every slice to fp32 and refuses NaN/Inf (scanned right after the conversion, while
// the slice is in cache), unless allowed: a NaN weight or norm would give NaN logits silently.
void run_jobs(const std::vector<Job>& jobs, const LoadProgress& progress) {
  uint64_t total = 0;
  for (const auto& j : jobs) total += j.n * dtype_size(j.dtype);
  std::atomic<std::size_t> next{0};
  std::mutex mu;
  uint64_t done = 0;
  const bool check = !nonfinite_weights_allowed();
  // The first non-finite value in file order (threads must not throw). Jobs are taken in order,
  // so when job i finds one, every earlier job has been taken and will finish its own check.
  std::string bad;
  std::size_t bad_job = jobs.size();
  auto worker = [&] {
    for (std::size_t i; (i = next++) < jobs.size();) {
      const Job& j = jobs[i];
      if (!check) {
        convert_to_f32(j.dtype, j.src, j.n, j.dst);
      } else {
        // Converted and scanned block by block: the scan reads the block from L1/L2, not memory.
        constexpr std::size_t kBlock = 16384;
        const std::size_t esize = dtype_size(j.dtype);
        for (std::size_t off = 0; off < j.n; off += kBlock) {
          const std::size_t m = std::min(kBlock, j.n - off);
          convert_to_f32(j.dtype, j.src + off * esize, m, j.dst + off);
          if (const int64_t at = first_nonfinite({j.dst + off, m}); at >= 0) {
            std::lock_guard lock(mu);
            if (i < bad_job) {
              bad_job = i;
              bad = nonfinite_message(j.file, j.tensor, j.first + off + std::size_t(at), j.dst[off + std::size_t(at)]);
            }
            next = jobs.size();  // stop the other workers early
            return;
          }
        }
      }
      if (progress) {
        std::lock_guard lock(mu);
        done += j.n * dtype_size(j.dtype);
        progress(done, total);
      }
    }
  };
  const unsigned n_threads = std::max(1u, std::min(std::thread::hardware_concurrency(), 8u));
  std::vector<std::thread> threads;
  for (unsigned t = 1; t < n_threads; ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (!bad.empty()) throw Error("", bad);
}

}  // namespace

std::map<std::string, std::string> parse_hf_index(const std::string& json_text, const std::string& label) {
  check_json_limits(json_text, label, {.max_depth = 16, .max_bytes = kMaxIndexBytes});
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(label, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(label, "no 'weight_map' object (not a safetensors index)");
  std::map<std::string, std::string> map;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      throw Error(label, "weight_map entry '" + it.key() + "' is not a file name");
    const auto file = it.value().get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      throw Error(label, "weight_map entry '" + it.key() + "' names '" + file +
                             "', not a file in the same folder");
    map[it.key()] = file;
  }
  if (map.empty()) throw Error(label, "weight_map is empty");
  return map;
}

// ---------------------------------------------------------------- rotated configs

namespace {
constexpr std::string_view kRotatedArchPrefix = "QuarotRotated";
constexpr std::string_view kRotatedTypePrefix = "quarot_rotated_";
}  // namespace

std::string hf_config_json_with_rotation(const ModelConfig& config, const std::string& torch_dtype,
                                         const std::string& rotation_record) {
  std::string text = hf_config_json(config, torch_dtype);
  if (rotation_record.empty()) return text;
  const std::string label = std::string("metadata '") + kRotationMetadataKey + "'";
  check_json_limits(rotation_record, label);
  json record;
  try {
    record = json::parse(rotation_record);
  } catch (const json::exception& e) {
    throw Error(label, std::string("not valid JSON: ") + e.what());
  }
  if (!record.is_object()) throw Error(label, "is not a JSON object");
  json j = json::parse(text);
  record["original_architectures"] = j["architectures"];
  record["original_model_type"] = j["model_type"];
  // Names no other loader knows: transformers, llama.cpp's converters and vLLM refuse the folder
  // instead of running it without its online transforms (which would compute garbage).
  j["architectures"] = {std::string(kRotatedArchPrefix) + j["architectures"][0].get<std::string>()};
  j["model_type"] = std::string(kRotatedTypePrefix) + j["model_type"].get<std::string>();
  j[kRotatedConfigKey] = record;
  return j.dump(2) + "\n";
}

ModelConfig parse_hf_config_with_rotation(const std::string& json_text, const std::string& source,
                                          std::string* rotation_record) {
  if (rotation_record) rotation_record->clear();
  check_json_limits(json_text, source);
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception&) {
    return parse_hf_config(json_text, source);  // its message names the problem
  }
  if (!j.is_object()) return parse_hf_config(json_text, source);
  auto starts = [](const json& v, std::string_view prefix) {
    return v.is_string() && v.get<std::string>().starts_with(prefix);
  };
  const bool marked = (j.contains("model_type") && starts(j["model_type"], kRotatedTypePrefix)) ||
                      (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
                       starts(j["architectures"][0], kRotatedArchPrefix));
  if (!j.contains(kRotatedConfigKey)) {
    if (marked)
      throw Error(source, std::string("marks a quarot-rotated model (model_type/architectures) but has no '") + kRotatedConfigKey +
                              "' record of its rotation");
    return parse_hf_config(json_text, source);
  }
  json record = j[kRotatedConfigKey];
  const std::string field = std::string("config field '") + kRotatedConfigKey + "'";
  if (!record.is_object()) throw Error(source, field + " must be an object");
  const json type = record.contains("original_model_type") ? record["original_model_type"] : json();
  const json arch = record.contains("original_architectures") ? record["original_architectures"] : json();
  if (!type.is_string()) throw Error(source, field + ": 'original_model_type' must be a string");
  if (!arch.is_array() || arch.empty() || !arch[0].is_string())
    throw Error(source, field + ": 'original_architectures' must be a list of names");
  j["model_type"] = type;
  j["architectures"] = arch;
  j.erase(kRotatedConfigKey);
  record.erase("original_model_type");
  record.erase("original_architectures");
  if (rotation_record) *rotation_record = record.dump();
  return parse_hf_config(j.dump(), source);
}

namespace {

// An opened Hugging Face folder: its config, mapped safetensors files and where each tensor is,
// validated against the config (every implied tensor present, shapes, float dtypes, nothing
// unexpected) before any tensor is converted.
struct HfFolder {
  ModelConfig config;
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, Located> where;
  std::map<std::string, std::string> metadata;  // the rotation record of a marked config.json included
  DType dtype = DType::F32;
};

HfFolder open_hf(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw Error(dir, "no such file or folder");
  if (!fs::is_directory(dir, ec)) throw Error(dir, "not a Hugging Face model folder");
  const fs::path root(dir);
  const std::string config_path = (root / "config.json").string();
  if (!fs::exists(config_path, ec)) throw Error(dir, "no config.json in this folder");
  HfFolder h;
  std::string config_rotation;  // the rotation record of a marked config.json
  h.config = parse_hf_config_with_rotation(read_json_file(config_path), config_path, &config_rotation);

  // Open the safetensors file(s).
  auto& files = h.files;
  auto& where = h.where;
  const std::string index_path = (root / kIndexName).string();
  auto add_file = [&](const std::string& path) -> SafetensorsFile& {
    files.push_back(std::make_unique<SafetensorsFile>(path));
    SafetensorsFile& f = *files.back();
    for (const auto& t : f.header().tensors) {
      auto [it, fresh] = where.emplace(t.name, Located{&f, &t});
      if (!fresh)
        throw Error(path, "duplicate tensor '" + t.name + "' (also in " + it->second.file->path() + ")");
    }
    return f;
  };
  if (fs::exists(index_path, ec)) {
    const auto weight_map = parse_hf_index(read_json_file(index_path, {.max_depth = 16, .max_bytes = kMaxIndexBytes}), index_path);
    std::set<std::string> shard_names;
    for (const auto& [name, file] : weight_map) shard_names.insert(file);
    for (const auto& shard : shard_names) {
      const std::string path = (root / shard).string();
      if (!fs::exists(path, ec)) throw Error(index_path, "lists shard '" + shard + "', which is missing");
      add_file(path);
    }
    for (const auto& [name, file] : weight_map) {
      auto it = where.find(name);
      if (it == where.end() || fs::path(it->second.file->path()).filename() != file)
        throw Error((root / file).string(), "tensor '" + name + "' listed in the index is not in this shard");
    }
    for (const auto& [name, loc] : where)
      if (!weight_map.count(name))
        throw Error(loc.file->path(), "tensor '" + name + "' is not in the index's weight_map");
  } else if (fs::exists(root / kSingleName, ec)) {
    add_file((root / kSingleName).string());
  } else {
    throw Error(dir, std::string("no ") + kSingleName + " or " + kIndexName + " in this folder");
  }
  for (const auto& [k, v] : files.front()->header().metadata) {
    // quarot's own metadata values hold JSON (the rotation record) that is parsed later.
    if (k.rfind("quarot.", 0) == 0)
      if (auto p = json_limits_problem(v)) throw Error(files.front()->path(), "metadata '" + k + "': JSON " + *p);
    if (k != "format") h.metadata[k] = v;
  }
  // Rotation state: the safetensors metadata (older folders carry only that) and the marked
  // config.json must agree; either one alone makes the model rotated.
  if (!config_rotation.empty()) {
    auto it = h.metadata.find(kRotationMetadataKey);
    if (it == h.metadata.end()) {
      h.metadata[kRotationMetadataKey] = config_rotation;
    } else {
      json in_file;
      try {
        in_file = json::parse(it->second);
      } catch (const json::exception& e) {
        throw Error(files.front()->path(), std::string("metadata '") + kRotationMetadataKey + "': not valid JSON: " + e.what());
      }
      if (in_file != json::parse(config_rotation))
        throw Error(config_path, std::string("'") + kRotatedConfigKey + "' differs from the rotation record '" + kRotationMetadataKey +
                                     "' in " + files.front()->path());
    }
  }
  // A small folder whose config claims many layers fails at once, naming the field: the last
  // layer config.json implies must have tensors in the files (one map lookup).
  const std::string last_layer = "model.layers." + std::to_string(h.config.n_layers - 1) + ".";
  if (auto it = where.lower_bound(last_layer); it == where.end() || it->first.rfind(last_layer, 0) != 0)
    throw Error(config_path, "config field 'num_hidden_layers' = " + std::to_string(h.config.n_layers) +
                                 ", but the safetensors files hold no tensor of layer " + std::to_string(h.config.n_layers - 1));
  std::set<std::string> used;
  for (const auto& [name, shape] : tensor_shapes(h.config)) {
    auto it = where.find(name);
    if (it == where.end()) throw Error(dir, "missing tensor '" + name + "' (config.json implies it)");
    const auto& [file, info] = it->second;
    if (info->shape != shape)
      throw Error(file->path(), "tensor '" + name + "' has shape " + shape_str(info->shape) + " but config.json implies " + shape_str(shape));
    if (!is_float(info->dtype))
      throw Error(file->path(), "tensor '" + name + "' has dtype " + std::string(dtype_name(info->dtype)) +
                                    "; weights must be F32, F16 or BF16");
    if (name == "model.embed_tokens.weight") h.dtype = info->dtype;
    used.insert(name);
  }
  for (const auto& [name, loc] : where) {
    if (used.count(name) || name.ends_with("rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && h.config.tied_embeddings) continue;  // tied: the embedding wins
    throw Error(loc.file->path(), "unexpected tensor '" + name +
                                      "' (config.json does not describe it: unsupported architecture?)");
  }
  return h;
}

// Conversion jobs for one tensor (slices balance the threads).
void add_jobs(const HfFolder& h, const TensorRef& t, std::vector<Job>& jobs) {
  const auto& [file, info] = h.where.at(t.name);
  const auto bytes = file->data(*info);
  const std::size_t esize = dtype_size(info->dtype);
  constexpr std::size_t kSlice = std::size_t(16) << 20;  // elements per job
  for (std::size_t off = 0; off < t.data.size(); off += kSlice)
    jobs.push_back({bytes.data() + off * esize, info->dtype, t.data.data() + off, std::min(kSlice, t.data.size() - off),
                    t.name, file->path(), off});
}

// Drops the file pages of a tensor that was converted: they would stay in this process's RSS.
void release(std::span<const uint8_t> bytes) {
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(bytes.data()) + page - 1) / page * page;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(bytes.data()) + bytes.size()) / page * page;
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

}  // namespace

ModelWeights load_hf(const std::string& dir, const LoadProgress& progress) {
  const HfFolder h = open_hf(dir);
  ModelWeights m;
  m.config = h.config;
  m.source = dir;
  m.source_dtype = h.dtype;
  m.metadata = h.metadata;
  allocate(m);
  std::vector<Job> jobs;
  for_each_tensor(m, [&](const TensorRef& t) { add_jobs(h, t, jobs); });
  run_jobs(jobs, progress);
  return m;
}

namespace {

// A checkpoint file's format: from its extension (.bin llama2.c, .gguf), else from its content
// (`quarot-quantize -o model` writes whatever name it is given): GGUF's magic, or a llama2.c
// header whose seven fields are plausible. A safetensors file reaching here is not a packed
// model (those are opened by the runtime first): said so, with where its kind is read from.
enum class FileFormat { Llama2c, Gguf };
FileFormat file_format(const std::string& path) {
  const fs::path p(path);
  if (p.extension() == ".bin") return FileFormat::Llama2c;
  if (p.extension() == ".gguf") return FileFormat::Gguf;
  const MappedFile f(path);
  const auto b = f.bytes();
  if (b.size() >= 4 && std::memcmp(b.data(), "GGUF", 4) == 0) return FileFormat::Gguf;
  uint64_t header = 0;
  if (b.size() >= 9) std::memcpy(&header, b.data(), 8);
  if (b.size() >= 9 && b[8] == '{' && header >= 2 && header <= b.size() - 8)
    throw Error(path, "a safetensors file that is not a quarot packed model (a Hugging Face checkpoint is read from its folder, with config.json)");
  try {
    (void)parse_llama2c_config(b, path);
    return FileFormat::Llama2c;
  } catch (const Error&) {
  }
  throw Error(path, "unknown checkpoint format (neither the extension nor the content says: expected a llama2.c .bin, a GGUF .gguf, a packed .safetensors or a Hugging Face folder)");
}

}  // namespace

struct CheckpointReader::Impl {
  std::string source;
  HfFolder hf;                       // a Hugging Face folder, read tensor by tensor, or
  std::unique_ptr<ModelWeights> whole;  // a llama2.c file, loaded whole (its layout is by tensor kind)
};

CheckpointReader::CheckpointReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->source = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(path, "no such file or folder");
  const fs::path p(path);
  const std::string name = p.filename().string();
  if (fs::is_directory(path, ec)) {
    impl_->hf = open_hf(path);
  } else if (name == "config.json" || name == kSingleName || name == kIndexName || is_shard_name(name)) {
    impl_->hf = open_hf((p.has_parent_path() ? p.parent_path() : fs::path(".")).string());
  } else {
    impl_->whole = std::make_unique<ModelWeights>(file_format(path) == FileFormat::Gguf ? load_gguf(path) : load_llama2c(path));
    convert_rope_layout(*impl_->whole, RopeLayout::Half);
  }
  if (!impl_->whole && impl_->hf.config.rope_layout != RopeLayout::Half)
    throw Error(path, "expected the Hugging Face RoPE layout");  // parse_hf_config always gives it
}
CheckpointReader::~CheckpointReader() = default;

const ModelConfig& CheckpointReader::config() const { return impl_->whole ? impl_->whole->config : impl_->hf.config; }
const std::string& CheckpointReader::source() const { return impl_->source; }
DType CheckpointReader::dtype() const { return impl_->whole ? impl_->whole->source_dtype : impl_->hf.dtype; }
const std::map<std::string, std::string>& CheckpointReader::metadata() const {
  return impl_->whole ? impl_->whole->metadata : impl_->hf.metadata;
}

ModelWeights CheckpointReader::float_parts() const {
  ModelWeights m;
  m.config = config();
  m.source = impl_->source;
  m.source_dtype = dtype();
  const auto& c = m.config;
  auto size = [](Matrix& x, int64_t r, int64_t k, bool data) {
    x.rows = r;
    x.cols = k;
    x.data.assign(data ? std::size_t(r * k) : 0, 0.f);
  };
  size(m.tok_embeddings, c.vocab, c.hidden, true);
  if (!c.tied_embeddings) size(m.lm_head, c.vocab, c.hidden, true);
  m.final_norm.assign(std::size_t(c.hidden), 0.f);
  m.layers.assign(std::size_t(c.n_layers), LayerWeights{});
  for (auto& L : m.layers) {
    size(L.wq, c.q_dim(), c.hidden, false);
    size(L.wk, c.kv_dim(), c.hidden, false);
    size(L.wv, c.kv_dim(), c.hidden, false);
    size(L.wo, c.hidden, c.q_dim(), false);
    size(L.w_gate, c.intermediate, c.hidden, false);
    size(L.w_up, c.intermediate, c.hidden, false);
    size(L.w_down, c.hidden, c.intermediate, false);
  }
  if (impl_->whole) {
    const auto& w = *impl_->whole;
    m.metadata = w.metadata;
    m.tok_embeddings.data = w.tok_embeddings.data;
    if (!c.tied_embeddings) m.lm_head.data = w.lm_head.data;
    m.final_norm = w.final_norm;
    return m;
  }
  m.metadata = impl_->hf.metadata;
  std::vector<Job> jobs;
  auto tensor = [&](const char* name, std::span<float> out) {
    add_jobs(impl_->hf, TensorRef{name, {}, out}, jobs);
  };
  tensor("model.embed_tokens.weight", m.tok_embeddings.data);
  tensor("model.norm.weight", m.final_norm);
  if (!c.tied_embeddings) tensor("lm_head.weight", m.lm_head.data);
  run_jobs(jobs, {});
  for (const char* n : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"})
    if (auto it = impl_->hf.where.find(n); it != impl_->hf.where.end()) release(it->second.file->data(*it->second.info));
  return m;
}

LayerWeights CheckpointReader::layer(int l) const {
  const auto& c = config();
  if (l < 0 || l >= c.n_layers) throw Error(impl_->source, "no layer " + std::to_string(l));
  if (impl_->whole) return impl_->whole->layers[std::size_t(l)];
  // A one-layer model of this config gives the layer's tensors, names and shapes.
  ModelWeights one;
  one.config = c;
  one.config.n_layers = l + 1;
  one.config.vocab = 1;
  one.config.tied_embeddings = true;
  one.source = impl_->source;
  one.tok_embeddings.rows = 0;
  one.layers.assign(std::size_t(l + 1), LayerWeights{});
  LayerWeights& L = one.layers[std::size_t(l)];
  auto size = [](Matrix& x, int64_t r, int64_t k) {
    x.rows = r;
    x.cols = k;
    x.data.assign(std::size_t(r * k), 0.f);
  };
  L.attn_norm.assign(std::size_t(c.hidden), 0.f);
  L.ffn_norm.assign(std::size_t(c.hidden), 0.f);
  size(L.wq, c.q_dim(), c.hidden);
  size(L.wk, c.kv_dim(), c.hidden);
  size(L.wv, c.kv_dim(), c.hidden);
  size(L.wo, c.hidden, c.q_dim());
  size(L.w_gate, c.intermediate, c.hidden);
  size(L.w_up, c.intermediate, c.hidden);
  size(L.w_down, c.hidden, c.intermediate);
  L.bq.assign(c.q_bias ? std::size_t(c.q_dim()) : 0, 0.f);
  L.bk.assign(c.k_bias ? std::size_t(c.kv_dim()) : 0, 0.f);
  L.bv.assign(c.v_bias ? std::size_t(c.kv_dim()) : 0, 0.f);
  L.bo.assign(c.o_bias ? std::size_t(c.hidden) : 0, 0.f);
  L.q_norm.assign(c.qk_norm ? std::size_t(c.head_dim) : 0, 0.f);
  L.k_norm.assign(c.qk_norm ? std::size_t(c.head_dim) : 0, 0.f);
  const std::string prefix = "model.layers." + std::to_string(l) + ".";
  std::vector<Job> jobs;
  std::vector<std::string> names;
  for_each_tensor(one, [&](const TensorRef& t) {
    if (t.name.rfind(prefix, 0) != 0) return;
    add_jobs(impl_->hf, t, jobs);
    names.push_back(t.name);
  });
  run_jobs(jobs, {});
  for (const auto& n : names) {
    const auto& loc = impl_->hf.where.at(n);
    release(loc.file->data(*loc.info));
  }
  return std::move(L);
}

ModelWeights load_model(const std::string& path, const LoadProgress& progress) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(path, "no such file or folder");
  if (fs::is_directory(path, ec)) return load_hf(path, progress);
  const fs::path p(path);
  const std::string name = p.filename().string();
  if (name == "config.json" || name == kSingleName || name == kIndexName || is_shard_name(name)) {
    const fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
    return load_hf(parent.string(), progress);
  }
  return file_format(path) == FileFormat::Gguf ? load_gguf(path) : load_llama2c(path);
}

ModelConfig read_model_config(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(path, "no such file or folder");
  fs::path dir;
  if (fs::is_directory(path, ec)) {
    dir = path;
  } else {
    const fs::path p(path);
    const std::string name = p.filename().string();
    if (name == "config.json" || name == kSingleName || name == kIndexName || is_shard_name(name)) {
      dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    } else {
      const FileFormat format = file_format(path);
      const MappedFile f(path);
      if (format == FileFormat::Llama2c) return parse_llama2c_config(f.bytes(), path);
      return gguf_model_config(parse_gguf(f.bytes(), path), f.bytes(), path);
    }
  }
  const std::string cfg = (dir / "config.json").string();
  return parse_hf_config_with_rotation(read_json_file(cfg), cfg, nullptr);
}

void save_hf(const ModelWeights& model, const std::string& dir, const HfWriteOptions& opts) {
  // Hugging Face files use the rotate_half layout; permute a copy when needed.
  std::unique_ptr<ModelWeights> converted;
  const ModelWeights* m = &model;
  if (model.config.rope_layout != RopeLayout::Half) {
    converted = std::make_unique<ModelWeights>(model);
    convert_rope_layout(*converted, RopeLayout::Half);
    m = converted.get();
  }
  std::map<std::string, std::span<const float>> data;
  for_each_tensor(*m, [&](const TensorRef& t) { data[t.name] = t.data; });
  save_hf_tensors(m->config, m->metadata, dir, opts, [&](const std::string& name, FloatBuffer&) { return data.at(name); });
}

namespace {

struct HfEntry {
  std::string name;
  std::vector<int64_t> shape;
};
struct HfShards {
  std::vector<std::vector<HfEntry>> shards;
  uint64_t total_bytes = 0;
};
// Tensors grouped into shards (of at most max_shard_bytes, in file order).
HfShards hf_shards(const ModelConfig& config, const HfWriteOptions& opts) {
  HfShards r;
  r.shards.resize(1);
  uint64_t shard_bytes = 0;
  for (auto& [name, shape] : tensor_shapes(config)) {
    const uint64_t b = tensor_bytes(opts.dtype, shape);
    r.total_bytes += b;
    if (opts.max_shard_bytes && shard_bytes > 0 && shard_bytes + b > opts.max_shard_bytes) {
      r.shards.emplace_back();
      shard_bytes = 0;
    }
    r.shards.back().push_back({name, shape});
    shard_bytes += b;
  }
  return r;
}

std::string shard_name(std::size_t s, std::size_t n) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n);
  return name;
}

}  // namespace

std::vector<std::string> hf_output_paths(const ModelConfig& config, const std::string& dir, const HfWriteOptions& opts) {
  const fs::path root(dir);
  std::vector<std::string> paths;
  if (!opts.max_shard_bytes) {
    paths.push_back((root / kSingleName).string());
  } else {
    const std::size_t n = hf_shards(config, opts).shards.size();
    for (std::size_t s = 0; s < n; ++s) paths.push_back((root / shard_name(s, n)).string());
    paths.push_back((root / kIndexName).string());
  }
  paths.push_back((root / "config.json").string());
  return paths;
}

void save_hf_tensors(const ModelConfig& config, const std::map<std::string, std::string>& metadata, const std::string& dir,
                     const HfWriteOptions& opts, const TensorSource& tensor) {
  if (opts.dtype != DType::F32 && opts.dtype != DType::F16 && opts.dtype != DType::BF16)
    throw Error(dir, "Hugging Face weights are written as F32, F16 or BF16, not " +
                         std::string(dtype_name(opts.dtype)));
  if (config.rope_layout != RopeLayout::Half) throw Error(dir, "tensors to write must be in the Hugging Face RoPE layout");

  const HfShards plan = hf_shards(config, opts);
  const auto& shards = plan.shards;
  const uint64_t total = plan.total_bytes;
  // Every file this write makes, against the inputs and anything not a regular file, before
  // the first byte is written (an in-place sharded convert wrote shards into its input folder
  // before refusing config.json).
  for (const auto& path : hf_output_paths(config, dir, opts)) refuse_unsafe_output(path, opts.inputs);
  // The whole folder is written into a hidden sibling and moved into place at the end: a kill,
  // Ctrl-C or full disk leaves no folder (or the earlier one), never a partial one; two runs
  // writing the same folder do not mix (one fails). An existing folder is replaced only when it
  // holds nothing but a checkpoint's files.
  StagedFolder staged(dir, [](const std::string& n) {
    return n == "config.json" || n == kSingleName || n == kIndexName || is_shard_name(n);
  }, opts.inputs);
  // One tensor in fp32 at a time: what is held is the largest tensor, not a shard (a 7B-sized
  // synthetic model in one file held all of it, 27 GB, and was killed at 24 GB).
  FloatBuffer scratch;
  auto write_shard = [&](const std::string& path, const std::vector<HfEntry>& entries, const std::map<std::string, std::string>& meta) {
    std::vector<TensorToWrite> tensors;
    for (const auto& e : entries) tensors.push_back({e.name, opts.dtype, e.shape, nullptr, DType::F32});
    write_safetensors(path, tensors, meta, [&](std::size_t i) -> const void* {
      const auto& e = entries[i];
      std::size_t n = 1;
      for (int64_t d : e.shape) n *= std::size_t(d);
      const std::span<const float> data = tensor(e.name, scratch);
      if (data.size() != n) throw Error(dir, "tensor '" + e.name + "' has " + std::to_string(data.size()) + " values, its shape " + std::to_string(n));
      return data.data();
    });
  };
  const fs::path root(staged.path());
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";
  if (!opts.max_shard_bytes) {
    write_shard((root / kSingleName).string(), shards.front(), meta);
  } else {
    json weight_map = json::object();
    for (std::size_t s = 0; s < shards.size(); ++s) {
      const std::string name = shard_name(s, shards.size());
      write_shard((root / name).string(), shards[s], meta);
      for (const auto& t : shards[s]) weight_map[t.name] = name;
    }
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic((root / kIndexName).string(), index.dump(2) + "\n");
  }
  const char* torch_dtype = opts.dtype == DType::F32 ? "float32" : opts.dtype == DType::F16 ? "float16" : "bfloat16";
  auto record = metadata.find(kRotationMetadataKey);
  write_file_atomic((root / "config.json").string(),
                    hf_config_json_with_rotation(config, torch_dtype, record == metadata.end() ? std::string() : record->second));
  staged.commit();
}

}  // namespace quarot
