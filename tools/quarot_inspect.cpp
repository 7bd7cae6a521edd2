// quarot-inspect: load a checkpoint (llama2.c .bin or Hugging Face folder) and print what it is.
#include <cstdio>

#include "cli.hpp"
#include <filesystem>

#include "quarot/checkpoint.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/progress.hpp"

int main(int argc, char** argv) {
  struct Args {
    std::string model, tokenizer, progress = "auto";
    bool quiet = false;
    bool config_only = false;
  } args;
  CLI::App app{
      "Load a LLaMA-style checkpoint and print its summary: architecture, shapes, parameter\n"
      "count, dtype and bytes. MODEL is a llama2.c .bin file or a Hugging Face folder\n"
      "(config.json + model.safetensors, or sharded with model.safetensors.index.json).\n"
      "Every tensor is read and validated, so this also checks a checkpoint end to end.\n"
      "With --config-only, only the config is read (MODEL may then be any config JSON file):\n"
      "the derived shapes, the tensors it implies, parameters and bytes; an unsupported\n"
      "architecture is refused naming the config field.",
      "quarot-inspect"};
  app.add_option("model", args.model, "checkpoint: llama2.c .bin or Hugging Face folder")->required();
  app.add_option("--tokenizer", args.tokenizer, "also load a llama2.c tokenizer.bin and summarize it");
  app.add_flag("--config-only", args.config_only, "read the config only and print the shapes it implies");
  quarot::cli::add_progress(app, args.progress, "progress display while loading");
  quarot::cli::add_quiet(app, args.quiet);
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;

  return quarot::cli::run("quarot-inspect", [&] {
    if (args.config_only) {
      std::error_code ec;
      const bool json_file = std::filesystem::is_regular_file(args.model, ec) && args.model.ends_with(".json") &&
                             !args.model.ends_with("model.safetensors.index.json");
      const auto c = json_file ? quarot::parse_hf_config(quarot::read_json_file(args.model), args.model)
                               : quarot::read_model_config(args.model);
      std::printf("config:       %s\n", args.model.c_str());
      std::fputs(quarot::describe_config(c).c_str(), stdout);
      return 0;
    }
    quarot::Progress progress("load", quarot::cli::progress_mode(args.progress, args.quiet));
    const auto m = quarot::load_model(args.model, [&](uint64_t d, uint64_t t) { progress.update(d, t); });
    progress.finish(std::to_string(quarot::parameter_count(m)) + " parameters read");
    std::fputs(quarot::describe(m).c_str(), stdout);
    if (!args.tokenizer.empty()) {
      const auto tok = quarot::load_llama2c_tokenizer(args.tokenizer);
      std::printf("tokenizer:    %s: %zu pieces, max piece length %d%s\n", args.tokenizer.c_str(),
                  tok.pieces.size(), tok.max_token_length,
                  int(tok.pieces.size()) == m.config.vocab ? "" : "  (WARNING: vocab size differs from the model's)");
    }
    return 0;
  });
}
