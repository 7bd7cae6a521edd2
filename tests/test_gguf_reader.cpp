// The GGUF reader: real files from llama.cpp (vocabulary-only ones refused, the tiny random LLaMA
// loaded), round trips through a test-local writer for each tensor type it dequantizes, and
// hostile edits of a valid file, each refused with one line naming the file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <utility>
#include <string>

#include "gguf_test_writer.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/forward.hpp"
#include "quarot/gguf_reader.hpp"
#include "quarot/mapped_file.hpp"
#include "quarot/synth.hpp"
#include "test_support.hpp"

using namespace quarot::test;

namespace {

using quarot::test::GgmlType;

std::span<const uint8_t> bytes_of(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

quarot::ModelWeights small_model(bool tied) {
  quarot::SynthSpec spec = quarot::synth_preset("tiny");
  spec.config.hidden = 64;
  spec.config.intermediate = 96;
  spec.config.n_layers = 2;
  spec.config.n_heads = 4;
  spec.config.n_kv_heads = 2;
  spec.config.head_dim = 16;
  spec.config.vocab = 64;
  spec.config.tied_embeddings = tied;
  spec.config.q_bias = spec.config.k_bias = spec.config.v_bias = spec.config.o_bias = false;
  spec.config.family = quarot::Family::Llama;
  spec.config.rope_layout = quarot::RopeLayout::Interleaved;
  spec.config.max_positions = 128;
  spec.seed = 7;
  quarot::ModelWeights m = quarot::make_synthetic(spec);
  m.config.rope_layout = quarot::RopeLayout::Interleaved;  // random weights: read them as llama.cpp's layout
  return m;
}

std::string message_of(const std::string& file) {
  try {
    quarot::parse_gguf_model(bytes_of(file), "x.gguf");
  } catch (const quarot::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(GgufReader, VocabularyOnlyFilesAreRefusedCleanly) {
  for (const char* name : {"gguf/ggml-vocab-llama-spm.gguf", "gguf/ggml-vocab-gpt-2.gguf", "gguf/ggml-vocab-phi-3.gguf"}) {
    QUAROT_REQUIRE_DATA(name);
    const std::string path = data_file(name);
    try {
      quarot::load_model(path);
      FAIL() << name << " loaded";
    } catch (const quarot::Error& e) {
      EXPECT_NE(std::string(e.what()).find("no tensors"), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).rfind(path, 0), 0u) << e.what();
    }
    // The header and metadata parse: a vocabulary is there.
    quarot::MappedFile f(path);
    const auto g = quarot::parse_gguf(f.bytes(), path);
    EXPECT_EQ(g.version, 3u);
    EXPECT_TRUE(g.tensors.empty());
    ASSERT_TRUE(g.metadata.count("tokenizer.ggml.tokens"));
    EXPECT_GT(g.metadata.at("tokenizer.ggml.tokens").array_count, 1000u);
  }
}

TEST(GgufReader, TinyRandomLlamaLoadsThroughTheCheckpointFacade) {
  QUAROT_REQUIRE_DATA("gguf/llama-2-tiny-random.gguf");
  const std::string path = data_file("gguf/llama-2-tiny-random.gguf");
  const quarot::ModelWeights m = quarot::load_model(path);
  const auto& c = m.config;
  EXPECT_EQ(c.hidden, 8);
  EXPECT_EQ(c.intermediate, 32);
  EXPECT_EQ(c.n_layers, 1);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.vocab, 32000);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_EQ(c.rope_layout, quarot::RopeLayout::Interleaved);
  EXPECT_EQ(m.source_dtype, quarot::DType::F16);
  EXPECT_EQ(quarot::read_model_config(path).vocab, 32000);
  // F16 converted exactly: the first embedding value read by hand from the file.
  quarot::MappedFile f(path);
  const auto g = quarot::parse_gguf(f.bytes(), path);
  const auto* t = g.find("token_embd.weight");
  ASSERT_TRUE(t);
  uint16_t h;
  std::memcpy(&h, f.bytes().data() + g.data_offset + t->offset + 2 * 9, 2);  // row 1, column 1
  EXPECT_EQ(m.tok_embeddings.data[9], quarot::f16_to_f32(h));
  // The streaming reader gives the same weights in the HF layout.
  quarot::CheckpointReader r(path);
  EXPECT_EQ(r.config().rope_layout, quarot::RopeLayout::Half);
  EXPECT_EQ(r.layer(0).wv.data[5], m.layers[0].wv.data[5]);
}

TEST(GgufReader, EachTypeRoundTripsWithinItsGrid) {
  const quarot::ModelWeights m = small_model(false);
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0}) {
    const std::string file = quarot::test::gguf_of(m, t, nullptr);
    const quarot::ModelWeights r = quarot::parse_gguf_model(bytes_of(file), "x.gguf");
    ASSERT_EQ(r.config.n_layers, 2);
    EXPECT_EQ(r.config.rope_layout, quarot::RopeLayout::Interleaved);
    // The writer's RTN bound: half a step of the block's scale, relative to the block's max.
    const double tol = t == GgmlType::F32 ? 0 : t == GgmlType::F16 ? 1e-3 : t == GgmlType::Q8_0 ? 0.5 / 127 + 1e-3 : 1.0 / 8 + 1e-3;  // Q4_0: the side opposite the max clamps at +7, one step
    const auto& a = m.layers[1].w_up.data;
    const auto& b = r.layers[1].w_up.data;
    double worst = 0;
    for (std::size_t blk = 0; blk < a.size(); blk += 32) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(a[blk + j]));
      for (int j = 0; j < 32; ++j) worst = std::max(worst, std::fabs(double(a[blk + j]) - b[blk + j]) / amax);
    }
    EXPECT_LE(worst, tol) << int(t);
    if (t != GgmlType::F32) {
      EXPECT_GT(worst, 0) << int(t);
    }
    EXPECT_EQ(r.metadata.count("gguf.dequantized_types"), t == GgmlType::Q8_0 || t == GgmlType::Q4_0 ? 1u : 0u);
  }
}

TEST(GgufReader, FloatGgufGivesTheSameLogitsAsTheModel) {
  const quarot::ModelWeights m = small_model(true);
  const std::string file = quarot::test::gguf_of(m, GgmlType::F32, nullptr);
  const quarot::ModelWeights r = quarot::parse_gguf_model(bytes_of(file), "x.gguf");
  EXPECT_TRUE(r.config.tied_embeddings);
  quarot::Transformer<float> a(m, 16), b(r, 16);
  std::vector<float> la, lb;
  const std::vector<int> ids = {1, 5, 9, 33, 2, 60};
  a.forward(ids, la);
  b.forward(ids, lb);
  // The file stores rms_eps as f32 (1e-5 rounds to 9.99999975e-06): equal up to that.
  ASSERT_EQ(la.size(), lb.size());
  for (std::size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(la[i], lb[i], 1e-5 * (1 + std::fabs(la[i])));
}

TEST(GgufReader, HostileEditsAreRefusedNamingTheFile) {
  const quarot::ModelWeights m = small_model(false);
  const std::string good = quarot::test::gguf_of(m, GgmlType::Q4_0, nullptr);
  ASSERT_EQ(message_of(good), "");
  auto edited = [&](std::size_t at, const void* v, std::size_t n) {
    std::string s = good;
    std::memcpy(s.data() + at, v, n);
    return s;
  };
  auto expect = [&](const std::string& file, const std::string& part) {
    const std::string msg = message_of(file);
    EXPECT_EQ(msg.rfind("x.gguf: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  };
  const uint32_t v4 = 4, bad_type = 99;
  const uint64_t huge = uint64_t(1) << 60;
  expect(edited(0, "GGUX", 4), "not a GGUF file");
  expect(edited(4, &v4, 4), "version 4");
  expect(edited(8, &huge, 8), "tensor count");
  expect(edited(16, &huge, 8), "metadata count");
  expect(good.substr(0, good.size() - 100), "truncated");
  expect(good.substr(0, 200), "cannot fit in the file");
  // The first tensor entry follows the metadata: find its name and edit its fields.
  const std::size_t name_at = good.find("token_embd.weight");
  ASSERT_NE(name_at, std::string::npos);
  const std::size_t dims_at = name_at + 17 + 4, type_at = dims_at + 16, offset_at = type_at + 4;
  expect(edited(type_at, &bad_type, 4), "unknown ggml type 99");
  const uint32_t q4k = 12;
  expect(edited(type_at, &q4k, 4), "columns, not a multiple");  // 64 columns, Q4_K needs 256
  const uint64_t misaligned = 3;
  expect(edited(offset_at, &misaligned, 8), "alignment");
  const uint64_t far = uint64_t(1) << 40;
  expect(edited(offset_at, &far, 8), "runs past the end");
  expect(edited(dims_at, &huge, 8), "dimension");
  const uint64_t fewer_rows = 32;  // token_embd's vocabulary 64 -> 32: output.weight disagrees
  expect(edited(dims_at + 8, &fewer_rows, 8), "metadata implies");
  // Two tensors on the same bytes (a file could otherwise claim a model far larger than itself).
  const std::size_t norm_at = good.find("blk.0.attn_norm.weight");
  ASSERT_NE(norm_at, std::string::npos);
  const uint64_t zero = 0;
  expect(edited(norm_at + 22 + 4 + 8 + 4, &zero, 8), "overlap");
  std::string arch = good;
  arch.replace(arch.find("llama"), 5, "gemma");
  expect(arch, "architecture 'gemma'");
  const uint32_t f16_type = 1;  // a type whose data no longer matches the size: out of file
  expect(edited(name_at - 8 + 0, &huge, 8), "length");
  (void)f16_type;
}

TEST(GgufReader, UnsupportedTypeIsRefusedNamingTensorAndType) {
  // A known type the reader does not dequantize (Q8_1: 36 bytes per 32, inside the F32 data).
  quarot::ModelWeights m = small_model(true);
  std::string file = quarot::test::gguf_of(m, GgmlType::F32, nullptr);
  const std::size_t name_at = file.find("blk.0.ffn_gate.weight");
  ASSERT_NE(name_at, std::string::npos);
  const std::size_t type_at = name_at + 21 + 4 + 16;
  const uint32_t bf16 = 30, q8_1 = 9;
  std::string as_bf16 = file;
  std::memcpy(as_bf16.data() + type_at, &bf16, 4);
  EXPECT_EQ(message_of(as_bf16).find("type"), std::string::npos);  // BF16 of half the bytes: in the file, read
  std::string as_q8_1 = file;
  std::memcpy(as_q8_1.data() + type_at, &q8_1, 4);
  const std::string msg = message_of(as_q8_1);
  EXPECT_NE(msg.find("'blk.0.ffn_gate.weight' has type Q8_1"), std::string::npos) << msg;
}

// A checkpoint whose name does not say its format (`quarot-quantize -o model` writes the name it
// is given) is recognised by content: GGUF's magic, a llama2.c header; a stray safetensors file
// and anything else get one line naming the file.
TEST(GgufReader, FormatFromContentWhenTheExtensionIsSilent) {
  QUAROT_REQUIRE_DATA("gguf/llama-2-tiny-random.gguf");
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const TempDir dir;
  const std::string gguf = dir / "tiny-random", l2c = dir / "stories";
  std::filesystem::copy_file(data_file("gguf/llama-2-tiny-random.gguf"), gguf);
  std::filesystem::copy_file(data_file("stories260K/stories260K.bin"), l2c);
  EXPECT_EQ(quarot::load_model(gguf).layers[0].wq.data, quarot::load_model(data_file("gguf/llama-2-tiny-random.gguf")).layers[0].wq.data);
  EXPECT_EQ(quarot::read_model_config(gguf).vocab, 32000);
  EXPECT_EQ(quarot::CheckpointReader(gguf).config().hidden, 8);
  EXPECT_EQ(quarot::load_model(l2c).layers[1].w_down.data, quarot::load_model(data_file("stories260K/stories260K.bin")).layers[1].w_down.data);
  EXPECT_EQ(quarot::read_model_config(l2c).hidden, 64);
  const std::string junk = dir / "junk", st = dir / "stray";
  { std::ofstream(junk, std::ios::binary) << std::string(100, 'x'); }
  { std::ofstream(st, std::ios::binary) << std::string("\x02\0\0\0\0\0\0\0{}", 10); }
  for (const auto& [path, why] : {std::pair{junk, "unknown checkpoint format"}, std::pair{st, "not a quarot packed model"}}) {
    try {
      (void)quarot::load_model(path);
      ADD_FAILURE() << path;
    } catch (const quarot::Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(path, 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
}
