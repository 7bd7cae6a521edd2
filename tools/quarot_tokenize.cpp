// quarot-tokenize: the ids a tokenizer gives a text file (or the text of an ids file) -- the tool
// to check a tokenizer against Hugging Face, SentencePiece or llama.cpp output.
#include <cstdio>
#include <string>

#include "cli.hpp"
#include "quarot/atomic_file.hpp"
#include "quarot/hf_tokenizer.hpp"
#include "quarot/tokenizer.hpp"

int main(int argc, char** argv) {
  struct Args {
    std::string tokenizer, file;
    bool add_special = false, decode = false, skip_special = false, verbose = false;
  } a;
  CLI::App app{
      "Encodes the whole text of FILE (UTF-8, taken as one string, line endings kept) and prints its\n"
      "token ids space-separated on one line; with --decode, reads token ids (whitespace-separated, any\n"
      "number of lines) from FILE and prints their text.\n"
      "Without --add-special nothing is added around the text (Hugging Face encode(...,\n"
      "add_special_tokens=False)); special tokens written in the text are still matched.\n"
      "TOKENIZER: a Hugging Face tokenizer.json (BPE: Llama-3, Qwen2/2.5/3, GPT-2, LLaMA-2, Mistral;\n"
      "a tokenizer_config.json beside it is read), a folder holding tokenizer.json or vocab.json +\n"
      "merges.txt, a SentencePiece .model, or a llama2.c tokenizer.bin.\n"
      "Examples:\n"
      "  quarot-tokenize Meta-Llama-3-8B-Instruct.tokenizer.json text.txt --add-special\n"
      "  quarot-tokenize Qwen2.5-0.5B-Instruct/ ids.txt --decode",
      "quarot-tokenize"};
  app.add_option("tokenizer", a.tokenizer, "tokenizer.json, a folder with one (or vocab.json + merges.txt), .model or .bin")
      ->required();
  app.add_option("file", a.file, "text to encode, or with --decode the ids to decode ('-': standard input)")->required();
  app.add_flag("--add-special", a.add_special,
               "add what the tokenizer adds by default: the post-processor's tokens (e.g. BOS for LLaMA-2,\n"
               "Mistral, Llama-3-Instruct; nothing for Qwen, GPT-2), BOS for SentencePiece and llama2.c");
  app.add_flag("--decode", a.decode, "FILE holds token ids: print their text (as transformers' decode)");
  app.add_flag("--skip-special", a.skip_special, "with --decode: leave special tokens (BOS, EOS, ...) out of the text");
  app.add_flag("-v,--verbose", a.verbose, "print the tokenizer kind, what --add-special adds and the count on stderr");
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;
  if (a.skip_special && !a.decode) {
    std::fprintf(stderr, "quarot-tokenize: error: --skip-special goes with --decode (see --help)\n");
    return quarot::cli::kExitUsage;
  }
  if (a.add_special && a.decode) {
    std::fprintf(stderr, "quarot-tokenize: error: --add-special goes with encoding, not --decode (see --help)\n");
    return quarot::cli::kExitUsage;
  }
  return quarot::cli::run("quarot-tokenize", [&] {
    const auto tok = quarot::load_tokenizer(a.tokenizer);
    const std::string path = a.file == "-" ? "/dev/stdin" : a.file;
    if (a.verbose) std::fprintf(stderr, "quarot-tokenize: %s: %s; --add-special adds %s\n", a.tokenizer.c_str(), tok->kind().c_str(), tok->special_policy().c_str());
    if (a.decode) {
      std::vector<int> ids;
      for (const auto& line : quarot::read_ids_file(path, tok->vocab_size())) ids.insert(ids.end(), line.begin(), line.end());
      std::string text;
      if (const auto* hf = dynamic_cast<const quarot::HfTokenizer*>(tok.get()))
        text = hf->decode(ids, a.skip_special, hf->clean_up_spaces_default());
      else
        text = tok->decode(ids);
      std::fwrite(text.data(), 1, text.size(), stdout);
      if (a.verbose) std::fprintf(stderr, "quarot-tokenize: %zu ids, %zu bytes\n", ids.size(), text.size());
      return 0;
    }
    const std::string text = quarot::read_text_file(path);
    std::vector<int> ids;
    try {
      ids = a.add_special ? tok->encode_with_special(text) : tok->encode(text);
    } catch (const quarot::Error& e) {
      throw quarot::Error(a.file, e.what());
    }
    std::string line;
    line.reserve(ids.size() * 6 + 1);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (i) line.push_back(' ');
      line += std::to_string(ids[i]);
    }
    line.push_back('\n');
    std::fwrite(line.data(), 1, line.size(), stdout);
    if (a.verbose) std::fprintf(stderr, "quarot-tokenize: %zu bytes, %zu ids\n", text.size(), ids.size());
    return 0;
  });
}
