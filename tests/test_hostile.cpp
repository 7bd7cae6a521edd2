// Hostile inputs to the parsers and output files (issue 20): nesting and size limits before
// parsing, derived sizes and layer counts against the file, non-finite weights, the llama2.c
// tokenizer (short vocabularies; the O(n log n) merge against run.c's O(n^2) one), and output
// file safety (non-regular targets, exclusive temporaries, signals, identity checks).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/file_identity.hpp"
#include "quarot/finite.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/safetensors.hpp"
#include "quarot/synth.hpp"
#include "quarot/tokenizer.hpp"
#include "reference_llama2c_bpe.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;
using nlohmann::json;

namespace {

#define EXPECT_ERROR_HAS(expr, needle)                                               \
  do {                                                                               \
    const std::string msg_ = error_of([&] { (void)(expr); });                        \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "message: " << msg_;          \
    EXPECT_EQ(msg_.find('\n'), std::string::npos) << msg_;                           \
  } while (0)

std::string nested(std::size_t depth, char open = '[', char close = ']') {
  return std::string(depth, open) + std::string(depth, close);
}

const json kBaseConfig = {{"model_type", "llama"}, {"hidden_size", 64}, {"intermediate_size", 128},
                          {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"vocab_size", 100}};

}  // namespace

TEST(DocumentLimits, JsonNestingIsCountedOutsideStrings) {
  EXPECT_FALSE(json_limits_problem(R"({"a": [[1, 2], {"b": "[[[[[[[[[[[[[[["}]})", {.max_depth = 4, .max_bytes = 1000}));
  EXPECT_FALSE(json_limits_problem(R"({"a\"[[[[[[": 1})", {.max_depth = 1, .max_bytes = 1000}));
  const auto p = json_limits_problem("{\"a\": " + nested(5) + "}", {.max_depth = 4, .max_bytes = 1000});
  ASSERT_TRUE(p);
  EXPECT_NE(p->find("nested deeper than 4 levels at byte 9"), std::string::npos) << *p;
  EXPECT_TRUE(json_limits_problem(std::string(2000, ' '), {.max_depth = 4, .max_bytes = 1000}));
  EXPECT_ERROR_HAS(check_json_limits(nested(100000), "x.json"), "x.json: JSON nested deeper than 64 levels");
}

TEST(DocumentLimits, TomlNestingAndDottedKeys) {
  const DocumentLimits l{.max_depth = 8, .max_bytes = 1 << 20};
  EXPECT_FALSE(toml_limits_problem("[a.b]\nx = [[1, 2], {y = 1.5}]\ns = \"[[[[[[[[[[[[\" # [[[[[[[[[[[[\n", l));
  EXPECT_FALSE(toml_limits_problem("s = '''\n[[[[[[[[[[[[[[\n'''\nt = \"\"\"\\\"\"\"[[[[[[[[[[[[\"\"\"\n", l));
  EXPECT_TRUE(toml_limits_problem("x = " + nested(9) + "\n", l));
  EXPECT_TRUE(toml_limits_problem("x = " + nested(9, '{', '}') + "\n", l));
  std::string dotted = "a";
  for (int i = 0; i < 9; ++i) dotted += ".a";
  EXPECT_TRUE(toml_limits_problem(dotted + " = 1\n", l));
  EXPECT_FALSE(toml_limits_problem("a.a.a = 1\nb.b.b = 2\nc.c.c = 3\n", l));
}

TEST(HostileJson, DeepConfigIsRefusedBeforeParsing) {
  // Before the limit: nlohmann's recursive dump of the value in the error message overflowed
  // the stack (SIGSEGV).
  const std::string deep = R"({"model_type": "llama", "hidden_size": )" + nested(1000000) + "}";
  EXPECT_ERROR_HAS(parse_hf_config(deep, "config.json"), "config.json: JSON nested deeper than 64 levels");
  EXPECT_ERROR_HAS(parse_hf_index("{\"weight_map\": " + nested(100000, '{', '}') + "}", "i.json"),
                   "i.json: JSON nested deeper than 16 levels");
  const std::string header = "{\"__metadata__\": {\"a\": " + nested(100000) + "}}";
  std::vector<uint8_t> f(8 + header.size());
  for (int i = 0; i < 8; ++i) f[std::size_t(i)] = uint8_t(uint64_t(header.size()) >> (8 * i));
  std::memcpy(f.data() + 8, header.data(), header.size());
  EXPECT_ERROR_HAS(parse_safetensors(f, "m.safetensors"), "m.safetensors: JSON nested deeper than 16 levels");
}

TEST(HostileJson, TensorCountsAreBoundedAndLinear) {
  // nlohmann's callback parser rescans the parent object after every nested object: a header of
  // 200,000 tensors took minutes. Now the count is bounded (65,536 per file) and checked by a
  // linear SAX pass; timing is for bench/, not asserted.
  auto header_of = [](int n) {
    std::string header = "{";
    for (int i = 0; i < n; ++i)
      header += (i ? "," : "") + std::string("\"t") + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" +
                std::to_string(4 * i) + "," + std::to_string(4 * i + 4) + "]}";
    header += "}";
    std::vector<uint8_t> f(8 + header.size() + 4 * std::size_t(n), 0);
    for (int i = 0; i < 8; ++i) f[std::size_t(i)] = uint8_t(uint64_t(header.size()) >> (8 * i));
    std::memcpy(f.data() + 8, header.data(), header.size());
    return f;
  };
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(parse_safetensors(header_of(65536), "many").tensors.size(), 65536u);
  std::printf("65,536-tensor header parsed in %.3f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  const auto f = header_of(200000);
  t0 = std::chrono::steady_clock::now();
  EXPECT_ERROR_HAS(parse_safetensors(f, "many"), "many: safetensors header lists more than 65536 tensors");
  std::printf("200,000-tensor header refused in %.3f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  // Duplicates are still found (by the SAX pre-pass).
  const std::string dup = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::vector<uint8_t> g(8 + dup.size() + 4, 0);
  g[0] = uint8_t(dup.size());
  std::memcpy(g.data() + 8, dup.data(), dup.size());
  EXPECT_ERROR_HAS(parse_safetensors(g, "dup"), "duplicate tensor name 'a'");
}

TEST(HostileConfig, DerivedSizesAndCountsNameTheField) {
  auto err = [&](const json& j) { return error_of([&] { parse_hf_config(j.dump(), "config.json"); }); };
  EXPECT_EQ(err(kBaseConfig), "(no error)");
  auto j = kBaseConfig;
  j["num_attention_heads"] = 65536;  // x head_dim 65536 = 2^32: int overflow in q_dim() before
  j["head_dim"] = 65536;
  j["num_key_value_heads"] = 1;
  EXPECT_NE(err(j).find("config.json: config field 'num_attention_heads' x 'head_dim' = 4294967296 is larger"), std::string::npos) << err(j);
  for (int64_t layers : {int64_t(3000000), int64_t(INT32_MAX)}) {
    j = kBaseConfig;
    j["num_hidden_layers"] = layers;
    EXPECT_NE(err(j).find("config field 'num_hidden_layers' = " + std::to_string(layers) + " is larger than the limit"),
              std::string::npos) << err(j);
  }
  j = kBaseConfig;
  j["vocab_size"] = 1 << 22;
  j["hidden_size"] = 1 << 20;
  j["num_attention_heads"] = 1 << 10;
  EXPECT_NE(err(j).find("'vocab_size' x 'hidden_size'"), std::string::npos) << err(j);
  // Special tokens: outside the vocabulary, and values that int would wrap into it.
  j = kBaseConfig;
  j["bos_token_id"] = 4294967297ull;  // 2^32 + 1 wrapped to 1 before
  EXPECT_NE(err(j).find("'bos_token_id' = 4294967297 lies outside the vocabulary"), std::string::npos) << err(j);
  j = kBaseConfig;
  j["eos_token_id"] = {100, 1};
  EXPECT_NE(err(j).find("'eos_token_id' = 100 lies outside the vocabulary (vocab_size 100)"), std::string::npos) << err(j);
  j = kBaseConfig;
  j["bos_token_id"] = -7;
  EXPECT_NE(err(j).find("'bos_token_id' = -7 lies outside"), std::string::npos) << err(j);
}

namespace {

ModelWeights tiny_model() {
  SynthSpec s = synth_preset("tiny");
  s.seed = 3;
  return make_synthetic(s);
}

}  // namespace

TEST(HostileFolder, LayerCountBeyondTheFilesFailsAtOnceNamingTheField) {
  TempDir dir;
  const std::string path = dir / "m";
  save_hf(tiny_model(), path, {DType::F32, 0, {}});
  auto j = json::parse(read_text_file(path + "/config.json"));
  j["num_hidden_layers"] = 4000;
  write_file_atomic(path + "/config.json", j.dump());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_ERROR_HAS(load_model(path), "config.json: config field 'num_hidden_layers' = 4000, but the safetensors files hold no tensor of layer 3999");
  EXPECT_ERROR_HAS(CheckpointReader{path}, "hold no tensor of layer 3999");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60.0);
}

TEST(HostileWeights, NonFiniteValuesAreRefusedNamingTheTensor) {
  TempDir dir;
  const std::string path = dir / "m";
  auto m = tiny_model();
  m.layers[1].ffn_norm[5] = std::nanf("");
  m.layers[0].w_up.data[17] = -INFINITY;
  save_hf(m, path, {DType::BF16, 0, {}});
  EXPECT_ERROR_HAS(load_model(path), "tensor 'model.layers.0.mlp.up_proj.weight' holds -Inf at element 17");
  EXPECT_ERROR_HAS(CheckpointReader(path).layer(1), "model.safetensors: tensor 'model.layers.1.post_attention_layernorm.weight' holds NaN at element 5");
  ::setenv("QUAROT_ALLOW_NONFINITE", "1", 1);
  const auto loaded = load_model(path);
  ::unsetenv("QUAROT_ALLOW_NONFINITE");
  EXPECT_TRUE(std::isnan(loaded.layers[1].ffn_norm[5]));
  EXPECT_EQ(first_nonfinite(std::vector<float>(10000, 1.f)), -1);
  std::vector<float> v(10000, 1.f);
  v[9999] = INFINITY;
  EXPECT_EQ(first_nonfinite(v), 9999);
}

TEST(HostileWeights, Llama2cNonFiniteIsRefused) {
  // dim 8, hidden 16, 1 layer, 2 heads, 2 kv heads, vocab 16 (shared), seq_len 4.
  const int32_t h[7] = {8, 16, 1, 2, 2, 16, 4};
  const std::size_t floats = 16 * 8 + 8 + 4 * 8 * 8 + 8 + 3 * 16 * 8 + 8 + 4 * 4;
  std::vector<uint8_t> f(28 + 4 * floats, 0);
  std::memcpy(f.data(), h, 28);
  const float nan = std::nanf("");
  std::memcpy(f.data() + 28 + 4 * 3, &nan, 4);  // an embedding value
  EXPECT_ERROR_HAS(parse_llama2c(f, "m.bin"), "m.bin: tensor 'model.embed_tokens.weight' holds NaN at element 3");
}

namespace {

std::vector<int> reference_encode(const Llama2cTokenizer& t, const std::string& text) {
  return reference::rescanning_encode(t, reference::piece_lookup(t), text);
}

}  // namespace

TEST(HostileTokenizer, ShortLlama2cVocabularyIsRefused) {
  // Byte fallback assumed ids 3..258: a 10-piece tokenizer read out of bounds (ASan: heap overflow).
  Llama2cTokenizer t;
  t.max_token_length = 4;
  for (int i = 0; i < 10; ++i) {
    t.pieces.push_back(std::string(1, char('a' + i)));
    t.scores.push_back(float(i));
  }
  EXPECT_ERROR_HAS(make_llama2c_bpe(t, "tok.bin"), "tok.bin: llama2.c tokenizer has 10 pieces; it needs at least 259");
}

TEST(HostileTokenizer, CorruptSentencePieceModelIsRefusedNotAborted) {
  // Found by fuzz_sentencepiece: a piece whose text is "\0\4</s>" made libsentencepiece's trie
  // builder throw through the library: std::terminate, the process aborted.
  const uint8_t crash[] = {0x0a, 0x0e, 0x0a, 0x05, '<', 'u', 'n', 'k', '>', 0x15, 0, 0, 0, 0, 0x18, 0x02, 0x0a, 0x0c, 0x0a, 0x03, '<',
                           's', '>', 0x15, 0, 0, 0, 0, 0x18, 0x03, 0x0a, 0x0d, 0x0a, 0x06, 0x00, 0x04, '<', '/', 's', '>', 0x15,
                           0, 0, 0, 0, 0x18, 0x03, 0x0a, 0x0c, 0x0a, 0x03, 0xe2, 0x96, 0x81, 0x15, 0, 0, 0, 0x80, 0x18, 0x00,
                           0xc0, 0x18, 0x01, 0x0a, 0x0a, 0x0a, 0x01, 'c', 0x15, 0, 0, 0x40, 0xc0, 0x18, 0x01};
  const std::string_view bytes(reinterpret_cast<const char*>(crash), sizeof crash);
  EXPECT_ERROR_HAS(make_sentencepiece(bytes, "bad.model"), "bad.model: piece 2 is empty or holds a NUL byte");
  EXPECT_ERROR_HAS(make_sentencepiece(bytes.substr(0, 20), "cut.model"), "cut.model: not a SentencePiece model (corrupt protobuf framing");
  EXPECT_ERROR_HAS(make_sentencepiece("", "empty.model"), "empty.model: not a SentencePiece model (no pieces)");
  QUAROT_REQUIRE_DATA("llama2-tokenizer/tokenizer.model");
  EXPECT_EQ(load_sentencepiece(data_file("llama2-tokenizer/tokenizer.model"))->vocab_size(), 32000);
}

TEST(HostileTokenizer, FastMergeGivesRunCsIdsOnRealText) {
  QUAROT_REQUIRE_DATA("llama2-tokenizer/tokenizer.bin");
  QUAROT_REQUIRE_DATA("wikitext-2/wiki.test.txt");
  QUAROT_REQUIRE_DATA("stories260K/tok512.bin");
  const std::string wiki = read_text_lf(data_file("wikitext-2/wiki.test.txt"));
  std::mt19937 rng(7);
  for (const char* file : {"llama2-tokenizer/tokenizer.bin", "stories260K/tok512.bin"}) {
    const auto pieces = load_llama2c_tokenizer(data_file(file));
    const auto tok = make_llama2c_bpe(pieces, file);
    // Chunks of real text (the reference is O(n^2): a few KB each), UTF-8 included.
    for (int k = 0; k < (kSanitizedBuild ? 4 : 12); ++k) {
      const std::size_t at = rng() % (wiki.size() - 3000);
      const std::string chunk = wiki.substr(at, 500 + rng() % 2500);
      ASSERT_EQ(tok->encode(chunk), reference_encode(pieces, chunk)) << file << " at byte " << at;
    }
    // Ties, repeats, byte fallback, invalid UTF-8.
    for (const std::string s : {"aaaaaaaaaaaaaaaaaaaaaaaaaaa", "   the the the   ", "\xff\xfe\x80 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
                                "a", " ", "\n\n\n", "x\xc3"}) {
      ASSERT_EQ(tok->encode(s), reference_encode(pieces, s)) << file << ": " << s;
    }
  }
}

namespace {

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST(HostileOutputs, NonRegularTargetsAreRefusedAndKept) {
  TempDir dir;
  fs::create_directory(dir / "folder");
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  write_file_atomic(dir / "victim", "precious");
  fs::create_symlink(dir / "victim", dir / "link");
  EXPECT_ERROR_HAS(write_file_atomic(dir / "folder", "x"), "folder: exists and is a folder; outputs only replace regular files");
  EXPECT_ERROR_HAS(write_file_atomic(dir / "fifo", "x"), "fifo: exists and is a FIFO");
  EXPECT_ERROR_HAS(write_file_atomic(dir / "link", "x"), "link: exists and is a symbolic link");
  EXPECT_TRUE(fs::is_symlink(dir / "link"));
  EXPECT_EQ(read_text_file(dir / "victim"), "precious");
  EXPECT_TRUE(fs::is_fifo(dir / "fifo"));
  // A device is refused before any work (never written here: as root it used to be replaced).
  EXPECT_ERROR_HAS(refuse_unsafe_output("/dev/null", {}), "/dev/null: exists and is a character device");
  EXPECT_EQ(entries(dir.path().string()), (std::vector<std::string>{"fifo", "folder", "link", "victim"}));
}

TEST(HostileOutputs, PlantedTemporaryLinksAreNotFollowed) {
  // The temporary used to be ".NAME.tmp-PID-N": a link planted there redirected the write.
  TempDir dir;
  write_file_atomic(dir / "victim", "precious");
  for (int n = 0; n < 64; ++n)
    fs::create_symlink(dir / "victim", dir / (".out.tmp-" + std::to_string(::getpid()) + "-" + std::to_string(n)));
  write_file_atomic(dir / "out", "new contents");
  write_file_atomic(dir / "out", "newer contents");
  EXPECT_EQ(read_text_file(dir / "out"), "newer contents");
  EXPECT_EQ(read_text_file(dir / "victim"), "precious");
  EXPECT_FALSE(fs::is_symlink(dir / "out"));
  EXPECT_EQ(entries(dir.path().string()).size(), 64u + 2u);  // no temporary left
}

TEST(HostileOutputs, SignalsRemoveLiveTemporaries) {
  TempDir dir;
  for (int sig : {SIGINT, SIGTERM}) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      AtomicFile f(dir / "out");
      f.write(std::string(1 << 20, 'x'));
      ::raise(sig);
      ::_exit(0);  // not reached
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    // Status 130 either way (issue 20): SIGINT dies of the signal (the shell's 128 + 2), SIGTERM
    // exits 130 (dying of it would read 143).
    if (sig == SIGINT)
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) << "status " << status;
    else
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << "status " << status;
    EXPECT_TRUE(entries(dir.path().string()).empty()) << entries(dir.path().string()).front();
  }
}

TEST(HostileOutputs, InputsAreRecognizedByIdentityNotName) {
  TempDir dir;
  write_file_atomic(dir / "in.ids", "1 2 3\n");
  fs::create_hard_link(dir / "in.ids", dir / "other-name.ids");
  fs::create_directory(dir / "sub");
  EXPECT_TRUE(same_file(dir / "in.ids", dir / "sub/../other-name.ids"));
  EXPECT_FALSE(same_file(dir / "in.ids", dir / "absent"));
  EXPECT_ERROR_HAS(refuse_unsafe_output(dir / "other-name.ids", {"", dir / "in.ids"}), "refusing to overwrite an input file");
  EXPECT_NO_THROW(refuse_unsafe_output(dir / "new.json", {dir / "in.ids"}));
  EXPECT_EQ(read_text_file(dir / "in.ids"), "1 2 3\n");
}
