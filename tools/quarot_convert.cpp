// quarot-convert: any checkpoint quarot reads -> a Hugging Face folder (dtype and sharding of
// choice). From llama2.c, q/k rows are permuted to Hugging Face's RoPE layout.
#include <cstdio>
#include <filesystem>

#include "cli.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/file_identity.hpp"
#include "quarot/progress.hpp"

int main(int argc, char** argv) {
  struct Args {
    std::string in, out, dtype = "f32", shard_size = "0", progress = "auto";
    bool quiet = false;
  } args;
  CLI::App app{
      "Convert a checkpoint (llama2.c .bin or Hugging Face folder) into a Hugging Face folder:\n"
      "config.json + model.safetensors (or shards + index). llama2.c's interleaved RoPE pairs\n"
      "are permuted into Hugging Face's rotate_half layout, as Hugging Face's own converter does.",
      "quarot-convert"};
  app.add_option("input", args.in, "checkpoint to read")->required();
  app.add_option("-o,--output", args.out, "output folder")->required();
  app.add_option("--dtype", args.dtype, "weights dtype: f32, f16, bf16")->capture_default_str();
  app.add_option("--shard-size", args.shard_size, "shards of at most this size (e.g. 2G); 0: one file")
      ->capture_default_str();
  quarot::cli::add_progress(app, args.progress, "progress display");
  quarot::cli::add_quiet(app, args.quiet);
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;

  quarot::HfWriteOptions opts;
  try {
    opts.max_shard_bytes = quarot::cli::parse_bytes(args.shard_size);
    opts.dtype = quarot::cli::parse_float_dtype(args.dtype);
  } catch (const CLI::ValidationError& e) {
    std::fprintf(stderr, "quarot-convert: error: %s (see --help)\n", e.what());
    return quarot::cli::kExitUsage;
  }
  return quarot::cli::run("quarot-convert", [&] {
    // Every file it will write against every input file, by identity, before any work.
    opts.inputs = quarot::cli::input_files(args.in);  // never write into the input's own files
    for (const auto& path : quarot::hf_output_paths(quarot::read_model_config(args.in), args.out, opts))
      quarot::refuse_unsafe_output(path, opts.inputs);
    const auto mode = quarot::cli::progress_mode(args.progress, args.quiet);
    quarot::Progress load("load", mode);
    const auto m = quarot::load_model(args.in, [&](uint64_t d, uint64_t t) { load.update(d, t); });
    load.finish(args.in);
    quarot::Progress write("write", mode);
    quarot::save_hf(m, args.out, opts);
    write.finish(args.out);
    std::printf("wrote %s (%s, %lld parameters)\n", args.out.c_str(), args.dtype.c_str(),
                static_cast<long long>(quarot::parameter_count(m)));
    return 0;
  });
}
