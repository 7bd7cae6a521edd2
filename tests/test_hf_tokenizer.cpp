// Hugging Face tokenizer.json / vocab.json + merges.txt against independent test vectors:
// llama.cpp's (ids produced with the real HF tokenizers, no BOS) and transformers.js's (ids with
// what HF adds by default, and the decoded text), plus SentencePiece on WikiText-2 where a
// tokenizer.json has a SentencePiece twin. Each big tokenizer is loaded once per test binary.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "quarot/atomic_file.hpp"
#include "quarot/error.hpp"
#include "quarot/hf_tokenizer.hpp"
#include "quarot/tokenizer.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

namespace {

const HfTokenizer& hf(const std::string& rel) {
  static std::map<std::string, std::unique_ptr<HfTokenizer>> cache;
  static std::mutex mu;
  std::lock_guard lock(mu);
  auto& slot = cache[rel];
  if (!slot) {
    const std::string path = data_file(rel);
    if (std::filesystem::is_directory(path)) slot = load_hf_vocab_merges(path);
    else slot = load_hf_tokenizer_json(path);
  }
  return *slot;
}

std::string join(const std::vector<int>& ids) {
  std::string s;
  for (int id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

// llama.cpp's ggml-vocab-*.gguf.inp/.out: texts joined by "\n__ggml_vocab_test__\n", one line of
// ids per text.
void check_llamacpp(const std::string& vocab, const std::string& tokenizer_rel) {
  const std::string base = "tokenizers/vectors/llama.cpp/ggml-vocab-" + vocab + ".gguf.";
  const std::string inp = read_text_file(data_file(base + "inp"));
  const std::string out = read_text_file(data_file(base + "out"));
  std::vector<std::string> texts;
  const std::string sep = "\n__ggml_vocab_test__\n";
  for (std::size_t at = 0; at < inp.size();) {
    const auto next = inp.find(sep, at);
    ASSERT_NE(next, std::string::npos) << "unterminated last text in " << base << "inp";
    texts.push_back(inp.substr(at, next - at));
    at = next + sep.size();
  }
  std::vector<std::vector<int>> expected;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::vector<int> ids;
    std::istringstream in(line);
    for (int id; in >> id;) ids.push_back(id);
    expected.push_back(ids);
  }
  ASSERT_EQ(texts.size(), expected.size());
  ASSERT_EQ(texts.size(), 46u);
  const auto& tok = hf(tokenizer_rel);
  int pass = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tok.encode(texts[i]);
    EXPECT_EQ(join(ids), join(expected[i])) << vocab << " text " << i << ": '" << texts[i] << "'";
    EXPECT_EQ(tok.decode(expected[i]), texts[i]) << vocab << " decode of text " << i;
    pass += ids == expected[i];
  }
  std::printf("[ llama.cpp ] %s: %d/%zu texts id for id\n", vocab.c_str(), pass, texts.size());
}

// transformers.js vectors: {model: {case: {text, ids, decoded}}}; ids include the special tokens
// HF adds by default, decoded is transformers' decode(ids) (special tokens kept, clean-up per config).
void check_transformersjs(const std::string& model, const std::string& tokenizer_rel) {
  static const nlohmann::json vectors = nlohmann::json::parse(
      read_text_file(data_file("tokenizers/vectors/transformers.js/transformersjs_tokenizer_vectors.json")));
  ASSERT_TRUE(vectors.contains(model)) << model;
  const auto& tok = hf(tokenizer_rel);
  int pass = 0, n = 0;
  for (const auto& [name, c] : vectors[model].items()) {
    ++n;
    const std::string text = c["text"];
    const std::vector<int> want = c["ids"].get<std::vector<int>>();
    const auto ids = tok.encode_with_special(text);
    EXPECT_EQ(join(ids), join(want)) << model << " " << name;
    const std::string decoded = tok.decode(want, false, tok.clean_up_spaces_default());
    EXPECT_EQ(decoded, c["decoded"].get<std::string>()) << model << " " << name;
    pass += ids == want && decoded == c["decoded"].get<std::string>();
  }
  std::printf("[ transformers.js ] %s: %d/%d cases (ids and decoded text)\n", model.c_str(), pass, n);
}

// A chunk of WikiText-2 (LF line endings), cut at a line end.
std::string wikitext_chunk(std::size_t bytes) {
  std::string t = read_text_lf(data_file("wikitext-2/wiki.test.txt"));
  if (t.size() > bytes) t.resize(t.rfind('\n', bytes) + 1);
  return t;
}

}  // namespace

// --- llama.cpp vectors: one test per file --------------------------------------------------------
TEST(HfTokenizerVectors, LlamaCppLlamaBpeIsLlama3) {
  QUAROT_REQUIRE_DATA("tokenizers/llama3/Meta-Llama-3-8B.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/llama.cpp/ggml-vocab-llama-bpe.gguf.inp");
  check_llamacpp("llama-bpe", "tokenizers/llama3/Meta-Llama-3-8B.tokenizer.json");
}
TEST(HfTokenizerVectors, LlamaCppQwen2) {
  QUAROT_REQUIRE_DATA("tokenizers/qwen2/Qwen3.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/llama.cpp/ggml-vocab-qwen2.gguf.inp");
  check_llamacpp("qwen2", "tokenizers/qwen2/Qwen3.tokenizer.json");
}
TEST(HfTokenizerVectors, LlamaCppQwen2FromVocabAndMerges) {
  QUAROT_REQUIRE_DATA("tokenizers/qwen2/Qwen2.5-0.5B-Instruct/vocab.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/llama.cpp/ggml-vocab-qwen2.gguf.inp");
  check_llamacpp("qwen2", "tokenizers/qwen2/Qwen2.5-0.5B-Instruct");
}
TEST(HfTokenizerVectors, LlamaCppGpt2) {
  QUAROT_REQUIRE_DATA("tokenizers/gpt2/gpt2_tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/llama.cpp/ggml-vocab-gpt-2.gguf.inp");
  check_llamacpp("gpt-2", "tokenizers/gpt2/gpt2_tokenizer.json");
}
TEST(HfTokenizerVectors, LlamaCppLlamaSpmIsLlama2Json) {
  QUAROT_REQUIRE_DATA("tokenizers/llama2/llama2.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/llama.cpp/ggml-vocab-llama-spm.gguf.inp");
  check_llamacpp("llama-spm", "tokenizers/llama2/llama2.tokenizer.json");
}

// --- transformers.js vectors: one test per tokenizer we hold the files of -------------------------
TEST(HfTokenizerVectors, TransformersJsLlama2) {
  QUAROT_REQUIRE_DATA("tokenizers/llama2/llama2.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/transformers.js/transformersjs_tokenizer_vectors.json");
  check_transformersjs("Xenova/llama-tokenizer", "tokenizers/llama2/llama2.tokenizer.json");
}
TEST(HfTokenizerVectors, TransformersJsLlama3) {
  QUAROT_REQUIRE_DATA("tokenizers/llama3/Meta-Llama-3-8B.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/transformers.js/transformersjs_tokenizer_vectors.json");
  check_transformersjs("Xenova/llama3-tokenizer", "tokenizers/llama3/Meta-Llama-3-8B.tokenizer.json");
}
TEST(HfTokenizerVectors, TransformersJsLlama3InstructAddsBos) {
  QUAROT_REQUIRE_DATA("tokenizers/llama3/Meta-Llama-3-8B-Instruct.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/transformers.js/transformersjs_tokenizer_vectors.json");
  check_transformersjs("Xenova/llama3-tokenizer-new", "tokenizers/llama3/Meta-Llama-3-8B-Instruct.tokenizer.json");
}
TEST(HfTokenizerVectors, TransformersJsQwen) {  // Qwen1.5's vocabulary and merges are Qwen2/2.5/3's
  QUAROT_REQUIRE_DATA("tokenizers/qwen2/Qwen3.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/transformers.js/transformersjs_tokenizer_vectors.json");
  check_transformersjs("Xenova/Qwen1.5-0.5B-Chat", "tokenizers/qwen2/Qwen3.tokenizer.json");
}
TEST(HfTokenizerVectors, TransformersJsGpt2) {
  QUAROT_REQUIRE_DATA("tokenizers/gpt2/gpt2_tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/vectors/transformers.js/transformersjs_tokenizer_vectors.json");
  check_transformersjs("Xenova/gpt2", "tokenizers/gpt2/gpt2_tokenizer.json");
  check_transformersjs("openai-community/gpt2", "tokenizers/gpt2/gpt2_tokenizer.json");
}

// --- twins on WikiText-2 -----------------------------------------------------------------------
TEST(HfTokenizer, Llama2JsonEqualsSentencePieceOnWikiText) {
  QUAROT_REQUIRE_DATA("tokenizers/llama2/llama2.tokenizer.json");
  QUAROT_REQUIRE_DATA("llama2-tokenizer/tokenizer.model");
  QUAROT_REQUIRE_DATA("wikitext-2/wiki.test.txt");
  const std::string text = wikitext_chunk(200'000);
  const auto sp = load_sentencepiece(data_file("llama2-tokenizer/tokenizer.model"));
  const auto& tok = hf("tokenizers/llama2/llama2.tokenizer.json");
  const auto want = sp->encode(text);
  EXPECT_EQ(tok.encode(text), want);
  EXPECT_EQ(tok.encode_with_special(text).front(), 1);
  EXPECT_EQ(tok.decode(want), text);
}

// The newer form of the same tokenizer (transformers' legacy=false conversion, Mistral v0.3 and
// later LLaMA files): no normalizer, a Metaspace pre-tokenizer prepending only at the start, a
// Metaspace decoder. On text without special tokens or leading spaces it equals SentencePiece.
TEST(HfTokenizer, MetaspacePreTokenizerFormEqualsSentencePiece) {
  QUAROT_REQUIRE_DATA("tokenizers/llama2/llama2.tokenizer.json");
  QUAROT_REQUIRE_DATA("llama2-tokenizer/tokenizer.model");
  QUAROT_REQUIRE_DATA("wikitext-2/wiki.test.txt");
  auto j = nlohmann::json::parse(read_text_file(data_file("tokenizers/llama2/llama2.tokenizer.json")));
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", false}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", {{{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", false}},
                                {{"type", "ByteFallback"}},
                                {{"type", "Fuse"}}}}};
  const auto tok = parse_hf_tokenizer_json(j.dump(), "metaspace-form/tokenizer.json");
  const auto sp = load_sentencepiece(data_file("llama2-tokenizer/tokenizer.model"));
  const std::string text = wikitext_chunk(50'000);
  const auto ids = sp->encode(text);
  EXPECT_EQ(tok->encode(text), ids);
  EXPECT_EQ(tok->decode(ids), text);
  for (const char* t : {"Hello world", "caf\u00e9 \U0001F999 x", "\n\tTabs"}) {
    EXPECT_EQ(tok->encode(t), sp->encode(t)) << t;
  }
  // Where the crate and SentencePiece differ: a text that already starts with a space gets no
  // extra "\u2581" from the crate's Metaspace (SentencePiece's dummy prefix always adds one).
  EXPECT_EQ(tok->encode("  two leading"), (std::vector<int>{29871, 1023, 8236}));
  EXPECT_EQ(sp->encode("  two leading"), (std::vector<int>{259, 1023, 8236}));
}

TEST(HfTokenizer, MistralJsonEqualsSentencePieceV1OnWikiText) {
  QUAROT_REQUIRE_DATA("tokenizers/mistral/Mistral-7B-v0.1.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/mistral/tokenizer.model.v1");
  QUAROT_REQUIRE_DATA("wikitext-2/wiki.test.txt");
  const std::string text = wikitext_chunk(200'000);
  const auto sp = load_sentencepiece(data_file("tokenizers/mistral/tokenizer.model.v1"));
  const auto tok = load_hf_tokenizer_json(data_file("tokenizers/mistral/Mistral-7B-v0.1.tokenizer.json"));
  EXPECT_EQ(tok->encode(text), sp->encode(text));
  EXPECT_EQ(tok->encode_with_special("Hello"), (std::vector<int>{1, 22557}));
}

TEST(HfTokenizer, QwenVocabMergesEqualsTokenizerJsonOnWikiText) {
  QUAROT_REQUIRE_DATA("tokenizers/qwen2/Qwen3.tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/qwen2/Qwen2.5-0.5B-Instruct/vocab.json");
  QUAROT_REQUIRE_DATA("wikitext-2/wiki.test.txt");
  const std::string text = wikitext_chunk(300'000) + "<|im_start|>user\nCafe\u0301 \u00bd<|im_end|>";
  const auto& fast = hf("tokenizers/qwen2/Qwen3.tokenizer.json");
  const auto& slow = hf("tokenizers/qwen2/Qwen2.5-0.5B-Instruct");
  const auto ids = fast.encode(text);
  EXPECT_EQ(slow.encode(text), ids);
  EXPECT_EQ(fast.decode(ids), slow.decode(ids));
  EXPECT_EQ(fast.bos_id(), -1);  // Qwen has no BOS and adds nothing
  EXPECT_EQ(fast.encode_with_special("Hello"), fast.encode("Hello"));
  EXPECT_EQ(slow.encode_with_special("Hello"), slow.encode("Hello"));
  EXPECT_EQ(slow.eos_id(), 151645);  // <|im_end|>, from tokenizer_config.json
}

TEST(HfTokenizer, Llama3WholeWikiTextRoundTripsAndMatchesSpecialTokensInText) {
  QUAROT_REQUIRE_DATA("tokenizers/llama3/Meta-Llama-3-8B.tokenizer.json");
  QUAROT_REQUIRE_DATA("wikitext-2/wiki.test.txt");
  const auto& tok = hf("tokenizers/llama3/Meta-Llama-3-8B.tokenizer.json");
  EXPECT_EQ(tok.vocab_size(), 128256);
  const std::string text = read_text_lf(data_file("wikitext-2/wiki.test.txt"));
  const auto ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.encode("<|begin_of_text|>Hello"), (std::vector<int>{128000, 9906}));
  EXPECT_EQ(tok.decode(std::vector<int>{128000, 9906}, true, false), "Hello");
}

// --- loading paths -------------------------------------------------------------------------------
TEST(HfTokenizer, LoadTokenizerDispatchesJsonAndFolders) {
  QUAROT_REQUIRE_DATA("tokenizers/gpt2/gpt2_tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/qwen2/Qwen2.5-0.5B-Instruct/vocab.json");
  EXPECT_EQ(load_tokenizer(data_file("tokenizers/gpt2/gpt2_tokenizer.json"))->encode("Hello world"), (std::vector<int>{15496, 995}));
  const auto qwen = load_tokenizer(data_file("tokenizers/qwen2/Qwen2.5-0.5B-Instruct"));
  EXPECT_EQ(qwen->encode("Hello world"), (std::vector<int>{9707, 1879}));
  // A model folder: tokenizer.json beside config.json is found and loaded.
  TempDir dir;
  std::filesystem::copy_file(data_file("tokenizers/gpt2/gpt2_tokenizer.json"), dir / "tokenizer.json");
  std::ofstream(dir / "config.json") << "{}";
  EXPECT_EQ(find_model_tokenizer(dir / "config.json"), dir / "tokenizer.json");
  EXPECT_EQ(find_model_tokenizer(dir.path().string()), dir / "tokenizer.json");
  EXPECT_EQ(load_tokenizer(dir.path().string())->vocab_size(), 50257);
  TempDir empty;
  EXPECT_EQ(find_model_tokenizer(empty.path().string()), "");
  EXPECT_THROW(load_tokenizer(empty.path().string()), Error);
}

// --- bad input: one line naming the file and the field --------------------------------------------
namespace {
std::string tiny_json(const std::string& model_type, const std::string& pre) {
  return R"({"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":)" + pre +
         R"(,"post_processor":null,"decoder":{"type":"ByteLevel"},"model":{"type":")" + model_type +
         R"(","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}})";
}
std::string error_of(const std::string& json) {
  try {
    parse_hf_tokenizer_json(json, "bad/tokenizer.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST(HfTokenizer, TinyHandMadeTokenizerMerges) {
  const auto tok = parse_hf_tokenizer_json(tiny_json("BPE", "null"), "tiny.json");
  EXPECT_EQ(tok->encode("abab"), (std::vector<int>{2, 2}));
  EXPECT_EQ(tok->encode("ba"), (std::vector<int>{1, 0}));
  EXPECT_EQ(tok->decode(std::vector<int>{2, 1}), "abb");
  EXPECT_THROW(tok->decode(std::vector<int>{7}), Error);
  EXPECT_THROW(tok->encode("\xff"), Error);  // not UTF-8
}

TEST(HfTokenizer, RefusesWhatItDoesNotSupportNamingFileAndField) {
  auto has = [](const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; };
  std::string e = error_of(tiny_json("Unigram", "null"));
  EXPECT_TRUE(has(e, "bad/tokenizer.json") && has(e, "model.type") && has(e, "Unigram")) << e;
  e = error_of(tiny_json("WordPiece", "null"));
  EXPECT_TRUE(has(e, "model.type") && has(e, "WordPiece")) << e;
  e = error_of(tiny_json("BPE", R"({"type":"BertPreTokenizer"})"));
  EXPECT_TRUE(has(e, "bad/tokenizer.json") && has(e, "pre_tokenizer.type") && has(e, "BertPreTokenizer")) << e;
  e = error_of(tiny_json("BPE", R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"(["},"behavior":"Isolated"}]})"));
  EXPECT_TRUE(has(e, "pre_tokenizer.pretokenizers[0].pattern")) << e;
  const std::string full = tiny_json("BPE", "null");
  e = error_of(full.substr(0, full.size() / 2));
  EXPECT_TRUE(has(e, "bad/tokenizer.json") && has(e, "not valid JSON")) << e;
  e = error_of(std::string(100000, '[') + std::string(100000, ']'));
  EXPECT_TRUE(has(e, "nested deeper")) << e;
  std::string bad_merge = full;
  bad_merge.replace(bad_merge.find("\"a b\""), 5, "\"a c\"");
  e = error_of(bad_merge);
  EXPECT_TRUE(has(e, "model.merges[0]")) << e;
  std::string bad_norm = full;
  bad_norm.replace(bad_norm.find("\"normalizer\":null"), 17, R"("normalizer":{"type":"BertNormalizer"})");
  e = error_of(bad_norm);
  EXPECT_TRUE(has(e, "normalizer.type") && has(e, "BertNormalizer")) << e;
  std::string bad_dec = full;
  bad_dec.replace(bad_dec.find(R"({"type":"ByteLevel"})"), 20, R"({"type":"WordPiece"})");
  e = error_of(bad_dec);
  EXPECT_TRUE(has(e, "decoder.type") && has(e, "WordPiece")) << e;
}

// --- the tool ------------------------------------------------------------------------------------
TEST(HfTokenizer, QuarotTokenizeEncodesDecodesAndFailsCleanly) {
  QUAROT_REQUIRE_DATA("tokenizers/llama3/Meta-Llama-3-8B-Instruct.tokenizer.json");
  const std::string tj = data_file("tokenizers/llama3/Meta-Llama-3-8B-Instruct.tokenizer.json");
  TempDir dir;
  std::ofstream(dir / "t.txt") << "Hello world";
  auto r = run_tool("quarot-tokenize", tj + " " + (dir / "t.txt"));
  EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(r.stdout_text, "9906 1917\n");
  r = run_tool("quarot-tokenize", tj + " " + (dir / "t.txt") + " --add-special");
  EXPECT_EQ(r.stdout_text, "128000 9906 1917\n");
  std::ofstream(dir / "ids.txt") << "128000 9906 1917\n";
  r = run_tool("quarot-tokenize", tj + " " + (dir / "ids.txt") + " --decode");
  EXPECT_EQ(r.stdout_text, "<|begin_of_text|>Hello world");
  r = run_tool("quarot-tokenize", tj + " " + (dir / "ids.txt") + " --decode --skip-special");
  EXPECT_EQ(r.stdout_text, "Hello world");
  std::ofstream(dir / "bad.json") << "{\"model\": {\"type\": \"Unigram\"}}";
  r = run_tool("quarot-tokenize", (dir / "bad.json") + " " + (dir / "t.txt"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("model.type"), std::string::npos) << r.stderr_text;
  EXPECT_TRUE(r.stdout_text.empty());
  r = run_tool("quarot-tokenize", tj);
  EXPECT_EQ(r.exit_code, 2);
}

TEST(HfTokenizer, ToolsPickUpTheTokenizerBesideConfigJson) {
  QUAROT_REQUIRE_DATA("tokenizers/llama2/llama2.tokenizer.json");
  TempDir dir;
  const std::string model = dir / "m";
  auto r = run_tool("quarot-synth", "--preset tiny --vocab 32000 -o " + model);
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  std::filesystem::copy_file(data_file("tokenizers/llama2/llama2.tokenizer.json"), model + "/tokenizer.json");
  r = run_tool("quarot-run", model + " --prompt 'Hello world' -n 2");
  EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("tokenizer.json (from the model's folder)"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("text: "), std::string::npos) << r.stdout_text;
}
