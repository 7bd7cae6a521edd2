#include "quarot/packed.hpp"

#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <utility>

#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/finite.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/large_buffer.hpp"
#include "quarot/options.hpp"
#include "quarot/quantize.hpp"

namespace quarot {

using json = nlohmann::json;

namespace {

constexpr const char* kCrcKey = "quarot.crc32";
constexpr const char* kHeaderCrcKey = "quarot.header_crc32";
constexpr const char* kQdecKey = "qdec";
constexpr const char* kEmbedName = "model.embed_tokens";
constexpr const char* kHeadName = "lm_head";

uint32_t crc32_of(const void* data, std::size_t n) {
  return uint32_t(crc32_z(crc32_z(0L, Z_NULL, 0), static_cast<const Bytef*>(data), n));
}
std::string hex8(uint32_t v) {
  char b[9];
  std::snprintf(b, sizeof b, "%08x", v);
  return b;
}
std::string shape_text(const std::vector<int64_t>& s) { return json(s).dump(); }

// Every tensor's name, dtype, shape and offsets, and the metadata without the header CRC itself:
// what the header CRC covers (the JSON text of the header is not canonical, this is).
std::string canonical_header(const std::vector<TensorInfo>& tensors, std::map<std::string, std::string> meta) {
  meta.erase(kHeaderCrcKey);
  json t = json::array();
  for (const auto& x : tensors) t.push_back({x.name, dtype_name(x.dtype), x.shape, x.begin, x.end});
  return json{{"tensors", t}, {"metadata", meta}}.dump();
}

struct LinearShape {
  int64_t rows, cols;
};
LinearShape linear_shape(const ModelConfig& c, LinearModule m) { return {linear_rows(c, m), linear_cols(c, m)}; }

// The float parts of a model of config c: embeddings, norms, biases, classifier sized; linear
// matrices get their shape and no data.
void allocate_float_parts(ModelWeights& m) {
  const auto& c = m.config;
  c.validate(m.source);
  auto size = [](Matrix& x, int64_t r, int64_t k, bool data) {
    x.rows = r;
    x.cols = k;
    if (data) x.data.assign(std::size_t(r * k), 0.f);
  };
  size(m.tok_embeddings, c.vocab, c.hidden, false);  // mapped in place (PackedModel)
  m.layers.assign(c.n_layers, LayerWeights{});
  for (auto& L : m.layers) {
    L.attn_norm.assign(c.hidden, 0.f);
    L.ffn_norm.assign(c.hidden, 0.f);
    L.bq.assign(c.q_bias ? c.q_dim() : 0, 0.f);
    L.bk.assign(c.k_bias ? c.kv_dim() : 0, 0.f);
    L.bv.assign(c.v_bias ? c.kv_dim() : 0, 0.f);
    L.bo.assign(c.o_bias ? c.hidden : 0, 0.f);
    L.q_norm.assign(c.qk_norm ? c.head_dim : 0, 0.f);
    L.k_norm.assign(c.qk_norm ? c.head_dim : 0, 0.f);
    for (LinearModule mod : kLinearModules) {
      const auto s = linear_shape(c, mod);
      size(L.*linear_member(mod), s.rows, s.cols, false);
    }
  }
  m.final_norm.assign(c.hidden, 0.f);
  if (!c.tied_embeddings) size(m.lm_head, c.vocab, c.hidden, false);
}

// Drops the pages of a mapped range that was copied out (embeddings, classifier, norms): they
// would otherwise stay resident after the CRC check read them, doubling their memory.
void release_mapped(std::span<const uint8_t> bytes) {
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  uintptr_t b = (reinterpret_cast<uintptr_t>(bytes.data()) + page - 1) / page * page;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(bytes.data()) + bytes.size()) / page * page;
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

// The bytes of the tensors that config `c` and `recipe` imply (int64: every width is at most
// 2^20, layers at most 4096, vocab x hidden at most 2^36 after the config's own limits, so no
// sum below can overflow) must be present in the file before anything of that size is
// allocated or built. Per-field so the error says which field asks for more than the file has.
void check_config_fits_file(const ModelConfig& c, const PackRecipe& recipe, bool int8_tables, const SafetensorsHeader& h,
                            const std::string& path) {
  int64_t held = 0;
  for (const auto& t : h.tensors) held += int64_t(t.end - t.begin);
  const int64_t tensors = int64_t(h.tensors.size());
  auto need = [&](int64_t bytes, int64_t count, const std::string& what) {
    if (bytes > held || count > tensors)
      throw Error(path, "the config implies " + std::to_string(count) + " tensors of " + std::to_string(bytes) + " bytes (" + what +
                            "), the file holds " + std::to_string(tensors) + " tensors of " + std::to_string(held) +
                            " bytes (corrupt or hostile config?)");
  };
  const int64_t d = c.hidden, vocab = c.vocab;
  const int64_t tables = c.tied_embeddings ? 1 : 2;
  need((int8_tables ? vocab * d + vocab * 4 : vocab * d * 4) * tables, int8_tables ? 2 * tables : tables,
       "'vocab_size' " + std::to_string(vocab) + " x 'hidden_size' " + std::to_string(d) + " embeddings");
  int64_t per_layer = 2 * d * 4, per_layer_count = 2;  // the two norms
  if (c.qk_norm) {  // and Qwen3's q/k norms
    per_layer += 2 * int64_t(c.head_dim) * 4;
    per_layer_count += 2;
  }
  for (LinearModule mod : kLinearModules) {
    const int64_t rows = linear_rows(c, mod), cols = linear_cols(c, mod);
    const int64_t group = recipe.w_group > 0 ? recipe.w_group : cols;
    const int64_t groups = std::max<int64_t>(1, cols / std::max<int64_t>(1, group));
    per_layer += rows * (int4_padded_cols(cols) / 2) + rows * groups * 4;  // codes and scales
    per_layer_count += 2;
  }
  need(per_layer, per_layer_count, "one layer of 'hidden_size' " + std::to_string(d) + ", 'intermediate_size' " +
                                        std::to_string(c.intermediate) + ", 'num_attention_heads' x 'head_dim' " +
                                        std::to_string(int64_t(c.n_heads) * c.head_dim));
  need(int64_t(c.n_layers) * per_layer, int64_t(c.n_layers) * per_layer_count,
       "'num_hidden_layers' = " + std::to_string(c.n_layers) + " layers of " + std::to_string(per_layer) + " bytes");
}

bool is_table(const std::string& name) { return name == std::string(kEmbedName) + ".weight" || name == std::string(kHeadName) + ".weight"; }

bool is_linear_weight(const std::string& name) {
  for (const LinearSpec& spec : kLinearSpecs) {
    const std::string s = std::string(spec.name) + ".weight";
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) return true;
  }
  return false;
}

}  // namespace

std::string linear_tensor_prefix(int layer, LinearModule m) {
  return "model.layers." + std::to_string(layer) + "." + linear_spec(m).block + "." + linear_spec(m).name;
}

std::string recipe_json(const PackRecipe& r) {
  json j{{"preset", r.preset},
              {"method", r.method},
              {"w_bits", r.w_bits},
              {"w_symmetric", r.w_symmetric},
              {"w_group", r.w_group},
              {"clip_search", r.clip_search},
              {"a_bits", r.act.a_bits},
              {"a_clip", r.act.a_clip},
              {"a_group", r.act.a_group},
              {"k_bits", r.act.k_bits},
              {"v_bits", r.act.v_bits},
              {"kv_clip", r.act.kv_clip},
              {"kv_asymmetric", r.act.kv_asym},
              {"classifier_bits", r.classifier_bits}};
  // W4A16 run with 16-bit activation codes per weight group (act.a16_group == w_group): only when
  // set, so files without it (fp32 activations, int4_gemm_f32) read and write as before.
  if (r.act.a16_group >= 0) j["a16_codes"] = true;
  // Per-layer KV bits and clips (the precision planner's): only when set, so files without them
  // read and write as before.
  if (!r.act.layers.empty()) {
    json layers = json::array();
    for (const auto& l : r.act.layers) {
      json e{{"k_bits", l.k_bits}, {"v_bits", l.v_bits}, {"a_clip", l.a_clip}, {"k_clip", l.k_clip}, {"v_clip", l.v_clip}};
      if (l.a_bits != 0) e["a_bits"] = l.a_bits;  // only when set (the planner's activation bits): older files stay byte-identical
      layers.push_back(e);
    }
    j["layers"] = layers;
  }
  if (!r.plan.empty()) j["plan"] = json::parse(r.plan);
  return j.dump();
}

PackRecipe make_pack_recipe(const QuantConfig& c) {
  const auto& w = c.gptq.weights;
  if (c.method == WeightMethod::None) throw Error("--output", "a packed model needs quantized weights (--w-method rtn or gptq)");
  if (w.grid.bits > 4) throw Error("--w-bits", "the packed format stores 2..4-bit weights, got " + std::to_string(w.grid.bits));
  if (w.group_size > 0 && w.group_size % kInt4Block != 0)
    throw Error("--w-group", "packed weight groups must be multiples of 64, got " + std::to_string(w.group_size));
  PackRecipe r;
  r.preset = c.preset;
  r.method = c.method == WeightMethod::Gptq ? "gptq" : "rtn";
  r.w_bits = w.grid.bits;
  r.w_symmetric = w.grid.symmetric;
  r.w_group = w.group_size;
  r.clip_search = w.clip_search;
  r.act = c.act;
  if (r.act.a16_group >= 0 && r.act.a16_group != w.group_size)  // the kernel rounds per the weights' own groups
    throw Error("--w-group", "16-bit activation codes per " + std::to_string(r.act.a16_group) + " columns against weight groups of " +
                                 std::to_string(w.group_size));
  r.classifier_bits = c.classifier_bits;
  return r;
}

PackRecipe parse_recipe_json(const std::string& text, const std::string& source) {
  check_json_limits(text, source + ": metadata 'recipe'");
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw Error(source, std::string("bad recipe metadata: ") + e.what());
  }
  // Each field is range-checked where it is read: one line naming the file and the field.
  auto bad = [&](const char* key, const std::string& why) -> Error {
    return Error(source, std::string("recipe field '") + key + "' " + why);
  };
  auto field = [&](const char* key) -> const json& {
    if (!j.is_object()) throw Error(source, "bad recipe metadata: not a JSON object");
    const auto it = j.find(key);
    if (it == j.end()) throw bad(key, "is missing");
    return *it;
  };
  // Numeric fields: the range of the quarot-quantize option that set them (options.hpp's one
  // table), so a file cannot hold what the flags refuse.
  auto integer = [&](const char* key, const char* option) {
    const json& v = field(key);
    if (!v.is_number_integer()) throw bad(key, "must be an integer, got " + v.dump());
    const double x = v.is_number_unsigned() ? double(v.get<uint64_t>()) : double(v.get<int64_t>());
    if (auto problem = option_value_problem(*find_option_spec(option), x)) throw bad(key, *problem);
    return int(x);
  };
  auto boolean = [&](const char* key) {
    const json& v = field(key);
    if (!v.is_boolean()) throw bad(key, "must be true or false, got " + v.dump());
    return v.get<bool>();
  };
  auto string = [&](const char* key) {
    const json& v = field(key);
    if (!v.is_string()) throw bad(key, "must be a string, got " + v.dump());
    return v.get<std::string>();
  };
  auto clip = [&](const char* key, const char* option) {
    const json& v = field(key);
    if (!v.is_number()) throw bad(key, "must be a number, got " + v.dump());
    const double x = v.get<double>();
    if (auto problem = option_value_problem(*find_option_spec(option), x)) throw bad(key, *problem);
    return x;
  };
  PackRecipe r;
  r.preset = string("preset");
  r.method = string("method");
  if (r.method != "rtn" && r.method != "gptq") throw bad("method", "must be \"rtn\" or \"gptq\", got \"" + r.method + "\"");
  r.w_bits = integer("w_bits", "w-bits");
  if (r.w_bits > 4) throw bad("w_bits", "must be 2..4 (the packed format's codes), got " + std::to_string(r.w_bits));
  r.w_symmetric = boolean("w_symmetric");
  r.w_group = integer("w_group", "w-group");
  if (r.w_group % kInt4Block != 0) throw bad("w_group", "must be 0 or a multiple of 64, got " + std::to_string(r.w_group));
  r.clip_search = boolean("clip_search");
  r.act.a_bits = integer("a_bits", "a-bits");
  r.act.a_clip = clip("a_clip", "a-clip");
  r.act.a_group = integer("a_group", "a-group");  // 0: per token (every file before per-group activations)
  r.act.k_bits = integer("k_bits", "k-bits");
  r.act.v_bits = integer("v_bits", "v-bits");
  r.act.kv_clip = clip("kv_clip", "kv-clip");
  r.act.kv_asym = boolean("kv_asymmetric");
  r.classifier_bits = integer("classifier_bits", "classifier-bits");
  if (j.contains("a16_codes") && boolean("a16_codes")) {  // optional: files before 2026-12-01 ran W4A16 on fp32 activations
    if (r.act.a_bits < 16) throw bad("a16_codes", "is for 16-bit activations, got a_bits " + std::to_string(r.act.a_bits));
    r.act.a16_group = r.w_group;
  }
  if (j.contains("layers")) {  // optional: files before per-layer settings have none
    const json& ls = j.at("layers");
    if (!ls.is_array() || ls.empty()) throw bad("layers", "must be a non-empty array, got " + ls.dump().substr(0, 80));
    for (std::size_t i = 0; i < ls.size(); ++i) {
      const json& e = ls[i];
      const std::string where = "layers[" + std::to_string(i) + "]";
      if (!e.is_object()) throw bad(where.c_str(), "must be an object");
      auto num = [&](const char* key, const char* option) {
        const auto it = e.find(key);
        if (it == e.end()) throw bad(where.c_str(), std::string("has no '") + key + "'");
        if (!it->is_number()) throw bad(where.c_str(), std::string("'") + key + "' must be a number, got " + it->dump());
        const double x = it->get<double>();
        if (auto problem = option_value_problem(*find_option_spec(option), x)) throw bad(where.c_str(), std::string(key) + ": " + *problem);
        return x;
      };
      LayerActQuant l;
      l.k_bits = int(num("k_bits", "k-bits"));
      l.v_bits = int(num("v_bits", "v-bits"));
      if (double(l.k_bits) != e.at("k_bits").get<double>() || double(l.v_bits) != e.at("v_bits").get<double>())
        throw bad(where.c_str(), "bits must be integers");
      l.a_clip = num("a_clip", "a-clip");
      l.k_clip = num("k_clip", "kv-clip");
      l.v_clip = num("v_clip", "kv-clip");
      if (e.contains("a_bits")) {  // optional: files before per-layer activation bits have none (the model's a_bits)
        l.a_bits = int(num("a_bits", "a-bits"));
        if (double(l.a_bits) != e.at("a_bits").get<double>()) throw bad(where.c_str(), "bits must be integers");
      }
      r.act.layers.push_back(l);
    }
  }
  if (j.contains("plan")) {
    if (!j.at("plan").is_object()) throw bad("plan", "must be an object");
    r.plan = j.at("plan").dump();
  }
  return r;
}

// ---------------------------------------------------------------- writer

PackedWriter::PackedWriter(const ModelWeights& m, const PackRecipe& recipe) : m_(m), recipe_(recipe) {
  if (m.config.rope_layout != RopeLayout::Half)
    throw Error(m.source, "the packed format stores the Hugging Face RoPE layout; convert the model first");
}

void PackedWriter::add(int layer, LinearModule module, const QuantizedMatrix& q) {
  const std::string name = linear_tensor_prefix(layer, module);
  if (q.grid.bits > 4) throw Error(name, "the packed format stores 2..4-bit weights, got " + std::to_string(q.grid.bits));
  const auto want = linear_shape(m_.config, module);
  if (q.rows != want.rows || q.cols != want.cols) throw Error(name, "quantized shape does not match the config");
  const bool per_channel = q.group_size >= q.cols;
  if (!per_channel && q.group_size % kInt4Block != 0)
    throw Error(name, "weight groups must be multiples of 64 columns to pack, got " + std::to_string(q.group_size));
  Linear L;
  L.rows = q.rows;
  L.cols = q.cols;
  L.group = per_channel ? q.cols : q.group_size;
  const int64_t G = per_channel ? 1 : q.cols / q.group_size, K = int4_padded_cols(q.cols);
  L.scales.resize(std::size_t(q.rows * G));
  if (!q.grid.symmetric) L.zeros.resize(std::size_t(q.rows * G));
  L.packed.resize(std::size_t(q.rows * K / 2));
  std::vector<uint8_t> u(std::size_t(q.cols));
  for (int64_t r = 0; r < q.rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const QParams& p = q.params[std::size_t(r * G + g)];
      L.scales[std::size_t(r * G + g)] = float(p.scale);
      if (!q.grid.symmetric) L.zeros[std::size_t(r * G + g)] = uint8_t(p.zero);
    }
    for (int64_t c = 0; c < q.cols; ++c) {
      const int code = q.codes[std::size_t(r * q.cols + c)];
      u[std::size_t(c)] = uint8_t(q.grid.symmetric ? code + 8 : code + 128);  // asym codes are stored offset by -128
    }
    pack_int4_row(u.data(), q.cols, q.grid.symmetric ? 8 : L.zeros[std::size_t(r * G)], L.packed.data() + r * K / 2);
  }
  linears_[{layer, int(module)}] = std::move(L);
}

void PackedWriter::add_residual(int layer, LinearModule module, ResidualStore r) {
  const std::string name = linear_tensor_prefix(layer, module);
  const auto want = linear_shape(m_.config, module);
  if (r.rows != want.rows || r.cols != want.cols) throw Error(name, "QDEC residual shape does not match the config");
  if (r.bits != 4 && r.bits != 8) throw Error(name, "QDEC residual bits must be 4 or 8");
  if (!residuals_.empty() && residuals_.begin()->second.bits != r.bits) throw Error(name, "QDEC residuals of mixed bits");
  if (r.external) {
    r.codes.assign(r.external, r.external + r.cols * r.row_bytes());
    r.external = nullptr;
  }
  residuals_[{layer, int(module)}] = std::move(r);
}

void PackedWriter::set_qdec(QdecK k, const std::string& info) {
  qdec_k_ = k;
  qdec_info_ = info;
}

uint64_t PackedWriter::packed_bytes() const {
  uint64_t n = 0;
  for (const auto& [k, L] : linears_) n += L.packed.size() + L.scales.size() * 4 + L.zeros.size();
  return n;
}

void PackedWriter::write(const std::string& path, const std::map<std::string, std::string>& extra) const {
  std::vector<TensorToWrite> tensors;
  // Version 2: the embedding table and the classifier as INT8 row tables after the other float
  // tensors (quantize_int8_rows gives back the very table the simulation quantized, since that
  // one is already on its grid). Version 1 (fp32 tables): the same bytes as before version 2.
  const bool int8_tables = recipe_.classifier_bits < 16 && format_version_ >= 2;
  for_each_tensor(m_, [&](const TensorRef& t) {
    if (is_linear_weight(t.name) || (int8_tables && is_table(t.name))) return;
    tensors.push_back({t.name, DType::F32, t.shape, t.data.data(), DType::F32});
  });
  std::vector<Int8RowTable> tables;
  tables.reserve(2);
  if (int8_tables)
    for (const auto& [name, w] : {std::pair{kEmbedName, &m_.tok_embeddings}, std::pair{kHeadName, &m_.lm_head}}) {
      if (name == kHeadName && m_.config.tied_embeddings) continue;
      tables.push_back(quantize_int8_rows(w->values(), w->rows, w->cols, recipe_.classifier_bits));
      const Int8RowTable& t = tables.back();
      tensors.push_back({std::string(name) + ".qweight", DType::I8, {t.rows, t.cols}, t.codes.data(), DType::I8});
      tensors.push_back({std::string(name) + ".scales", DType::F32, {t.rows}, t.scales.data(), DType::F32});
    }
  for (int l = 0; l < m_.config.n_layers; ++l)
    for (LinearModule mod : kLinearModules) {
      const auto it = linears_.find({l, int(mod)});
      const std::string p = linear_tensor_prefix(l, mod);
      if (it == linears_.end()) throw Error(path, "linear layer " + p + " was not quantized");
      const Linear& L = it->second;
      const int64_t G = int64_t(L.scales.size()) / L.rows;
      tensors.push_back({p + ".qweight", DType::U8, {L.rows, int64_t(L.packed.size()) / L.rows}, L.packed.data(), DType::U8});
      tensors.push_back({p + ".scales", DType::F32, {L.rows, G}, L.scales.data(), DType::F32});
      if (!L.zeros.empty()) tensors.push_back({p + ".zeros", DType::U8, {L.rows, G}, L.zeros.data(), DType::U8});
    }
  if (!residuals_.empty()) {
    for (int l = 0; l < m_.config.n_layers; ++l)
      for (LinearModule mod : kLinearModules) {
        const auto it = residuals_.find({l, int(mod)});
        const std::string p = linear_tensor_prefix(l, mod);
        if (it == residuals_.end()) throw Error(path, "QDEC residual of " + p + " is missing (all linears or none)");
        const ResidualStore& r = it->second;
        tensors.push_back({p + ".qdec_residual", DType::U8, {r.cols, r.row_bytes()}, r.codes.data(), DType::U8});
        tensors.push_back({p + ".qdec_scales", DType::F32, {r.rows}, r.scales.data(), DType::F32});
      }
  }
  std::map<std::string, std::string> meta = extra;
  if (!residuals_.empty()) {
    json k = json::object();
    for (int i = 0; i < kQdecKinds; ++i) k[qdec_kind_name(i)] = qdec_k_.kind(i);
    json info;
    try {
      info = json::parse(qdec_info_);
    } catch (const std::exception&) {
      throw Error(path, "QDEC info is not JSON");
    }
    meta[kQdecKey] = json{{"bits", residuals_.begin()->second.bits}, {"k_chunk", k}, {"info", info}}.dump();
  }
  meta["format"] = kPackedFormatName;
  meta["format_version"] = std::to_string(int8_tables ? 2 : 1);
  meta["config"] = hf_config_json(m_.config, "float32");
  meta["recipe"] = recipe_json(recipe_);
  meta["tool"] = "quarot " + quarot_version();
  if (auto it = m_.metadata.find(kRotationMetadataKey); it != m_.metadata.end()) meta[kRotationMetadataKey] = it->second;
  json crcs = json::object();
  std::vector<TensorInfo> infos;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const uint64_t bytes = tensor_bytes(t.dtype, t.shape);
    crcs[t.name] = hex8(crc32_of(t.data, bytes));
    TensorInfo info;
    info.name = t.name;
    info.dtype = t.dtype;
    info.shape = t.shape;
    info.begin = offset;
    info.end = offset + bytes;
    infos.push_back(info);
    offset += bytes;
  }
  meta[kCrcKey] = crcs.dump();
  const std::string canon = canonical_header(infos, meta);
  meta[kHeaderCrcKey] = hex8(crc32_of(canon.data(), canon.size()));
  write_safetensors(path, tensors, meta);
}

// ---------------------------------------------------------------- reader

// The INT4 codes of one linear, copied out of the file mapping onto anonymous memory: blocks of
// 4 MiB and more come from large_alloc (2 MiB aligned, MADV_HUGEPAGE), and the decode GEMV streams
// them from 2 MiB pages instead of the page cache's 4 KiB ones (a file mapping cannot get
// anonymous huge pages). Measured on the 4-layer 7B-shaped W4A4KV4 model (bench/RESULTS.md, "the
// packed model's INT4 weights on 2 MiB pages"): decode 7-25% faster, load +0.9 s (zeroing the
// fresh pages on this VM), peak RSS unchanged (the mapped pages are dropped).
class AnonymousBytes {
 public:
  AnonymousBytes() = default;
  explicit AnonymousBytes(std::span<const uint8_t> src) : data_(static_cast<uint8_t*>(large_alloc(src.size()))), size_(src.size()) {
    if (size_ > 0) std::memcpy(data_, src.data(), size_);
  }
  AnonymousBytes(AnonymousBytes&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AnonymousBytes& operator=(AnonymousBytes&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  AnonymousBytes(const AnonymousBytes&) = delete;
  AnonymousBytes& operator=(const AnonymousBytes&) = delete;
  ~AnonymousBytes() { large_free(data_, size_); }
  const uint8_t* data() const { return data_; }

 private:
  uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

struct PackedModel::Impl {
  SafetensorsFile file;
  ModelWeights fw;
  PackRecipe recipe;
  OnlineTransforms online;
  struct Linear {
    Int4Weights view;
    std::vector<float> scales;  // copied: the mapped bytes need not be 4-byte aligned
    AnonymousBytes packed;      // the codes, copied onto huge pages (above)
  };
  std::vector<Linear> linears;  // [layer * kLinearsPerLayer + module]
  std::unique_ptr<QdecStore> qdec;
  QdecK qdec_k;
  int version = 1;
  bool int8_tables = false;
  Int8Rows embed_q, head_q;
  std::vector<float> embed_scales, head_scales;  // copied (alignment, as the linears' scales)
  explicit Impl(const std::string& path) : file(path) {}
};

PackedModel::~PackedModel() = default;
PackedModel::PackedModel(PackedModel&&) noexcept = default;

PackedModel::PackedModel(const std::string& path, bool verify_crc) : impl_(std::make_unique<Impl>(path)) {
  auto& I = *impl_;
  const auto& h = I.file.header();
  auto meta = [&](const char* key) -> const std::string& {
    auto it = h.metadata.find(key);
    if (it == h.metadata.end()) throw Error(path, std::string("not a quarot packed model: no '") + key + "' in the metadata");
    return it->second;
  };
  if (meta("format") != kPackedFormatName) throw Error(path, "not a quarot packed model (format '" + meta("format") + "')");
  I.version = 0;
  for (int v = kPackedFormatOldestVersion; v <= kPackedFormatVersion; ++v)
    if (meta("format_version") == std::to_string(v)) I.version = v;
  if (I.version == 0)
    throw Error(path, "packed format version " + meta("format_version") + " is not supported (this quarot reads versions " +
                          std::to_string(kPackedFormatOldestVersion) + ".." + std::to_string(kPackedFormatVersion) + ")");
  json crcs;
  check_json_limits(meta(kCrcKey), path + ": metadata '" + kCrcKey + "'");
  try {
    crcs = json::parse(meta(kCrcKey));
    if (!crcs.is_object()) throw Error(path, "malformed CRC32 table in the metadata");
  } catch (const std::exception&) {
    throw Error(path, "malformed CRC32 table in the metadata");
  }

  I.fw.source = path;
  check_json_limits(meta("config"), path + ": metadata 'config'");
  I.fw.config = parse_hf_config(meta("config"), path);
  I.recipe = parse_recipe_json(meta("recipe"), path);
  if (!I.recipe.act.layers.empty() && int64_t(I.recipe.act.layers.size()) != int64_t(I.fw.config.n_layers))
    throw Error(path, "recipe field 'layers' has " + std::to_string(I.recipe.act.layers.size()) + " entries for " +
                          std::to_string(I.fw.config.n_layers) + " layers");
  if (auto it = h.metadata.find(kRotationMetadataKey); it != h.metadata.end()) I.fw.metadata[kRotationMetadataKey] = it->second;
  // Nothing is allocated or built before the tensors the config implies are known to be paid
  // for by the file: a header of a few hundred bytes could otherwise claim 4096 layers of width
  // 2^20 (gigabytes of norms) or widths whose transforms take minutes to build.
  I.int8_tables = I.version >= 2 && I.recipe.classifier_bits < 16;
  check_config_fits_file(I.fw.config, I.recipe, I.int8_tables, h, path);
  allocate_float_parts(I.fw);
  I.online = online_transforms_of(I.fw);

  // NaN/Inf in scales, norms or embeddings would give NaN logits with exit 0 (a vectorized scan
  // of bytes the CRC check reads anyway). QUAROT_ALLOW_NONFINITE=1 opts out, as for checkpoints.
  const bool allow_nonfinite = nonfinite_weights_allowed();
  auto check_finite_tensor = [&](const std::string& name, std::span<const float> v) {
    if (allow_nonfinite) return;
    if (const int64_t at = first_nonfinite(v); at >= 0) throw Error("", nonfinite_message(path, name, std::size_t(at), v[std::size_t(at)]));
  };
  std::set<std::string> expected;
  auto tensor = [&](const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
    expected.insert(name);
    const TensorInfo* t = I.file.find(name);
    if (!t) throw Error(path, "tensor '" + name + "' is missing");
    if (t->dtype != dtype || t->shape != shape)
      throw Error(path, "tensor '" + name + "' is " + std::string(dtype_name(t->dtype)) + " " + shape_text(t->shape) +
                            ", the config implies " + std::string(dtype_name(dtype)) + " " + shape_text(shape));
    const auto bytes = I.file.data(*t);
    if (verify_crc) {
      const auto crc = crcs.find(name);
      if (crc == crcs.end() || !crc->is_string()) throw Error(path, "tensor '" + name + "' has no CRC32");
      if (hex8(crc32_of(bytes.data(), bytes.size())) != crc->get<std::string>())
        throw Error(path, "tensor '" + name + "': CRC32 mismatch (corrupted data)");
    }
    return bytes;
  };
  for_each_tensor(I.fw, [&](const TensorRef& t) {
    if (is_linear_weight(t.name) || (I.int8_tables && is_table(t.name))) return;
    const auto b = tensor(t.name, DType::F32, t.shape);
    if (t.data.empty()) return;  // embeddings / classifier: used in place (below)
    std::memcpy(t.data.data(), b.data(), b.size());
    check_finite_tensor(t.name, t.data);
    release_mapped(b);
  });
  // The embeddings and the classifier stay in the memory map: a decode touches only the rows
  // it looks up, and nothing is held twice. (F32 tensors come first in the file, so they are
  // 4-byte aligned.) Their pages read by the CRC check are dropped; they come back on use.
  auto in_place = [&](Matrix& x, const char* name) {
    const auto b = I.file.data(*I.file.find(name));
    if (reinterpret_cast<uintptr_t>(b.data()) % alignof(float) != 0) throw Error(path, std::string(name) + " is not 4-byte aligned");
    x.external = reinterpret_cast<const float*>(b.data());
    check_finite_tensor(name, {x.external, b.size() / sizeof(float)});
    release_mapped(b);
  };
  const auto& c = I.fw.config;
  // INT8 tables: the codes used in place too (int8 needs no alignment), the scales copied.
  auto int8_table = [&](const char* name, Int8Rows& view, std::vector<float>& scales) {
    const std::string n = name;
    const auto q = tensor(n + ".qweight", DType::I8, {c.vocab, c.hidden});
    const auto sc = tensor(n + ".scales", DType::F32, {c.vocab});
    scales.resize(std::size_t(c.vocab));
    std::memcpy(scales.data(), sc.data(), sc.size());
    check_finite_tensor(n + ".scales", scales);
    view = {c.vocab, c.hidden, reinterpret_cast<const int8_t*>(q.data()), scales.data()};
    release_mapped(q);
  };
  if (I.int8_tables) {
    int8_table(kEmbedName, I.embed_q, I.embed_scales);
    if (!c.tied_embeddings) int8_table(kHeadName, I.head_q, I.head_scales);
  } else {
    in_place(I.fw.tok_embeddings, "model.embed_tokens.weight");
    if (!c.tied_embeddings) in_place(I.fw.lm_head, "lm_head.weight");
  }
  const bool asym = !I.recipe.w_symmetric;
  for (int l = 0; l < c.n_layers; ++l)
    for (LinearModule mod : kLinearModules) {
      const auto s = linear_shape(c, mod);
      const std::string p = linear_tensor_prefix(l, mod);
      const int64_t group = I.recipe.w_group > 0 ? I.recipe.w_group : s.cols;
      if (s.cols % group != 0 || (group < s.cols && group % kInt4Block != 0))
        throw Error(path, "recipe group size " + std::to_string(group) + " does not fit " + p);
      const int64_t G = s.cols / group;
      Impl::Linear L;
      const auto q = tensor(p + ".qweight", DType::U8, {s.rows, int4_padded_cols(s.cols) / 2});
      const auto sc = tensor(p + ".scales", DType::F32, {s.rows, G});
      L.scales.resize(std::size_t(s.rows * G));
      std::memcpy(L.scales.data(), sc.data(), sc.size());
      check_finite_tensor(p + ".scales", L.scales);
      L.view.rows = s.rows;
      L.view.cols = s.cols;
      L.view.group_size = group;
      // Copied, then the mapped pages dropped: the codes are resident once, not twice.
      L.packed = AnonymousBytes(q);
      release_mapped(q);
      L.view.packed = L.packed.data();
      if (asym) L.view.zeros = tensor(p + ".zeros", DType::U8, {s.rows, G}).data();
      I.linears.push_back(std::move(L));
      I.linears.back().view.scales = I.linears.back().scales.data();
    }
  if (auto it = h.metadata.find(kQdecKey); it != h.metadata.end()) {
    json q;
    check_json_limits(it->second, path + ": metadata '" + kQdecKey + "'");
    try {
      q = json::parse(it->second);
      I.qdec = std::make_unique<QdecStore>();
      I.qdec->bits = q.at("bits").get<int>();
      for (int i = 0; i < kQdecKinds; ++i) I.qdec_k.kind(i) = q.at("k_chunk").at(qdec_kind_name(i)).get<int>();
    } catch (const std::exception& e) {
      throw Error(path, std::string("bad QDEC metadata: ") + e.what());
    }
    if (I.qdec->bits != 4 && I.qdec->bits != 8) throw Error(path, "QDEC residual bits must be 4 or 8");
    for (int i = 0; i < kQdecKinds; ++i)
      if (I.qdec_k.kind(i) < -1 || I.qdec_k.kind(i) > 1024) throw Error(path, "QDEC k_chunk out of range");
    for (int l = 0; l < c.n_layers; ++l)
      for (LinearModule mod : kLinearModules) {
        const auto s = linear_shape(c, mod);
        const std::string p = linear_tensor_prefix(l, mod);
        ResidualStore r;
        r.rows = s.rows;
        r.cols = s.cols;
        r.bits = I.qdec->bits;
        r.external = tensor(p + ".qdec_residual", DType::U8, {s.cols, r.row_bytes()}).data();
        const auto sc = tensor(p + ".qdec_scales", DType::F32, {s.rows});
        r.scales.resize(std::size_t(s.rows));
        std::memcpy(r.scales.data(), sc.data(), sc.size());
        check_finite_tensor(p + ".qdec_scales", r.scales);
        I.qdec->linears.push_back(std::move(r));
      }
  }
  for (const auto& t : h.tensors)
    if (!expected.count(t.name)) throw Error(path, "unexpected tensor '" + t.name + "'");
  // Last, so that a missing or misshapen tensor is reported by name first.
  const std::string canon = canonical_header(h.tensors, h.metadata);
  if (hex8(crc32_of(canon.data(), canon.size())) != meta(kHeaderCrcKey))
    throw Error(path, "header CRC32 mismatch (the header is corrupted)");
}

const std::string& PackedModel::path() const { return impl_->file.path(); }
const ModelConfig& PackedModel::config() const { return impl_->fw.config; }
const PackRecipe& PackedModel::recipe() const { return impl_->recipe; }
const OnlineTransforms& PackedModel::online() const { return impl_->online; }
const ModelWeights& PackedModel::float_weights() const { return impl_->fw; }
Int4Weights PackedModel::linear(int layer, LinearModule m) const { return impl_->linears[std::size_t(layer * kLinearsPerLayer + int(m))].view; }
const QdecStore* PackedModel::qdec() const { return impl_->qdec.get(); }
int PackedModel::format_version() const { return impl_->version; }
bool PackedModel::int8_tables() const { return impl_->int8_tables; }
Int8Rows PackedModel::embedding_table() const { return impl_->embed_q; }
Int8Rows PackedModel::classifier_table() const { return impl_->fw.config.tied_embeddings ? impl_->embed_q : impl_->head_q; }
QdecK PackedModel::qdec_k() const { return impl_->qdec_k; }
uint64_t PackedModel::file_bytes() const { return impl_->file.header().data_start + (impl_->file.header().tensors.empty() ? 0 : impl_->file.header().tensors.back().end); }

ModelWeights PackedModel::dequantized() const {
  ModelWeights m = impl_->fw;
  for (Matrix* x : {&m.tok_embeddings, &m.lm_head})  // a self-contained float model
    if (x->external) {
      x->data.assign(x->external, x->external + x->rows * x->cols);
      x->external = nullptr;
    }
  if (impl_->int8_tables) {  // exact: code * scale has no rounding (quantize_int8_rows)
    const bool tied = m.config.tied_embeddings;
    for (const auto& [x, t] : {std::pair{&m.tok_embeddings, embedding_table()}, std::pair{&m.lm_head, classifier_table()}}) {
      if (x == &m.lm_head && tied) continue;
      x->data.assign(std::size_t(t.rows * t.cols), 0.f);
      for (int64_t r = 0; r < t.rows; ++r) int8_dequantize_row(t, r, x->row(r));
    }
  }
  for (int l = 0; l < m.config.n_layers; ++l)
    for (LinearModule mod : kLinearModules) {
      Matrix& w = m.layers[l].*linear_member(mod);
      const Int4Weights v = linear(l, mod);
      w.data.assign(std::size_t(w.rows * w.cols), 0.f);
      for (int64_t r = 0; r < w.rows; ++r)
        for (int64_t c = 0; c < w.cols; ++c) w.row(r)[c] = v.weight(r, c);
    }
  return m;
}

uint64_t packed_file_bytes_estimate(const ModelConfig& c, const PackRecipe& r, bool tied) {
  // Every tensor's bytes exactly; the header is its JSON: per tensor the entry and its CRC
  // (about twice the name and 90 bytes), and the config, recipe and rotation records.
  uint64_t data = 0, header = 8 + 1200 + hf_config_json(c, "float32").size() + recipe_json(r).size();
  auto add = [&](const std::string& name, uint64_t bytes) {
    data += bytes;
    header += 2 * name.size() + 90;
  };
  const uint64_t V = uint64_t(c.vocab), d = uint64_t(c.hidden);
  for (const char* t : {kEmbedName, kHeadName}) {
    if (t == kHeadName && tied) continue;
    if (r.classifier_bits < 16) {
      add(std::string(t) + ".qweight", V * d);
      add(std::string(t) + ".scales", V * 4);
    } else {
      add(std::string(t) + ".weight", V * d * 4);
    }
  }
  add("model.norm.weight", d * 4);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", d * 4);
    add(p + "post_attention_layernorm.weight", d * 4);
    if (c.qk_norm) {
      add(p + "self_attn.q_norm.weight", uint64_t(c.head_dim) * 4);
      add(p + "self_attn.k_norm.weight", uint64_t(c.head_dim) * 4);
    }
    for (LinearModule mod : kLinearModules) {
      const std::string n = linear_tensor_prefix(l, mod);
      const auto s = linear_shape(c, mod);
      const int64_t G = r.w_group > 0 ? s.cols / r.w_group : 1;
      add(n + ".qweight", uint64_t(s.rows * (int4_padded_cols(s.cols) / 2)));
      add(n + ".scales", uint64_t(s.rows * G) * 4);
      if (!r.w_symmetric) add(n + ".zeros", uint64_t(s.rows * G));
    }
    const std::pair<bool, int64_t> biases[] = {{c.q_bias, c.q_dim()}, {c.k_bias, c.kv_dim()}, {c.v_bias, c.kv_dim()}, {c.o_bias, c.hidden}};
    for (const auto& [has, n] : biases)
      if (has) add(p + "self_attn.x_proj.bias", uint64_t(n) * 4);
  }
  return (header + 63) / 64 * 64 + data;
}

bool is_packed_model(const std::string& path) {
  const std::string ext = ".safetensors";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  if (path.size() < ext.size() || path.compare(path.size() - ext.size(), ext.size(), ext) != 0) {
    // Another name (`quarot-quantize -o model` writes the name it is given): a safetensors file
    // by content, its 8-byte header length then the JSON header's '{'.
    const uint64_t size = std::filesystem::file_size(path, ec);
    std::ifstream in(path, std::ios::binary);
    char head[9];
    if (ec || !in.read(head, 9)) return false;
    uint64_t header = 0;
    std::memcpy(&header, head, 8);
    if (head[8] != '{' || header < 2 || header > size - 8) return false;
  }
  const SafetensorsFile f(path);
  const auto it = f.header().metadata.find("format");
  return it != f.header().metadata.end() && it->second == kPackedFormatName;
}

}  // namespace quarot
