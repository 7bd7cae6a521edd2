// quarot-synth: write a synthetic LLaMA-family checkpoint of real shape, with planted outliers,
// as a Hugging Face folder.
#include <cstdio>

#include "cli.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/progress.hpp"
#include "quarot/synth.hpp"

int main(int argc, char** argv) {
  struct Args {
    std::string preset = "tiny", out, dtype = "f32", shard_size = "0", progress = "auto";
    bool quiet = false;
    int layers = 0, vocab = 0, residual_outliers = -1, ffn_outliers = -1;
    uint64_t seed = 0;
  } args;
  std::string presets;
  for (const auto& n : quarot::synth_preset_names()) presets += "  " + n + "\n";
  CLI::App app{
      "Generate a synthetic checkpoint of a real model's shape from a seed, with planted outlier\n"
      "channels (20-100x) in the residual stream and the FFN activation, and write it as a\n"
      "Hugging Face folder (config.json + safetensors). The same seed gives the same bytes.\n"
      "Presets:\n" + presets +
      "The '-layer' presets default to 1 layer; --layers N gives more.",
      "quarot-synth"};
  app.add_option("-o,--output", args.out, "output folder")->required();
  app.add_option("--preset", args.preset, "model shape")->capture_default_str();
  app.add_option("--layers", args.layers, "number of decoder layers (default: the preset's)")->check(CLI::Range(1, 1024));
  app.add_option("--vocab", args.vocab, "vocabulary size (default: the preset's)")->check(CLI::Range(2, 1 << 22));
  app.add_option("--seed", args.seed, "random seed")->capture_default_str();
  app.add_option("--residual-outliers", args.residual_outliers, "planted residual-stream outlier channels");
  app.add_option("--ffn-outliers", args.ffn_outliers, "planted FFN-activation outlier channels");
  app.add_option("--dtype", args.dtype, "weights dtype: f32, f16, bf16")->capture_default_str();
  app.add_option("--shard-size", args.shard_size, "shard the weights into files of at most this size (e.g. 2G); 0: one file")
      ->capture_default_str();
  quarot::cli::add_progress(app, args.progress, "progress display");
  quarot::cli::add_quiet(app, args.quiet);
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;

  uint64_t shard_bytes = 0;
  quarot::DType dtype;
  try {
    shard_bytes = quarot::cli::parse_bytes(args.shard_size);
    dtype = quarot::cli::parse_float_dtype(args.dtype);
  } catch (const CLI::ValidationError& e) {
    std::fprintf(stderr, "quarot-synth: error: %s (see --help)\n", e.what());
    return quarot::cli::kExitUsage;
  }
  return quarot::cli::run("quarot-synth", [&] {
    quarot::SynthSpec spec = quarot::synth_preset(args.preset);
    spec.seed = args.seed;
    if (args.layers) spec.config.n_layers = args.layers;
    if (args.vocab) spec.config.vocab = args.vocab;
    if (spec.config.bos_id >= spec.config.vocab) spec.config.bos_id = 1;
    if (spec.config.eos_id >= spec.config.vocab) spec.config.eos_id = 2;
    if (args.residual_outliers >= 0) spec.residual_outliers = args.residual_outliers;
    if (args.ffn_outliers >= 0) spec.ffn_outliers = args.ffn_outliers;
    const auto mode = quarot::cli::progress_mode(args.progress, args.quiet);

    // Generated tensor by tensor: a model larger than memory can be written, sharded or not.
    spec.config.rope_layout = quarot::RopeLayout::Half;
    const auto shapes = quarot::tensor_shapes(spec.config);
    int64_t params = 0;
    for (const auto& [name, shape] : shapes) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      params += n;
    }
    const auto planted_now = quarot::planted_outliers(spec);
    quarot::Progress gen("generate + write", mode);
    uint64_t done = 0;
    quarot::HfWriteOptions opts;
    opts.dtype = dtype;
    opts.max_shard_bytes = shard_bytes;
    quarot::save_hf_tensors(spec.config, {}, args.out, opts, [&](const std::string& name, quarot::FloatBuffer& scratch) {
      std::vector<int64_t> shape;
      for (const auto& [n, sh] : shapes)
        if (n == name) shape = sh;
      std::size_t count = 1;
      for (int64_t d : shape) count *= std::size_t(d);
      scratch.assign(count, 0.f);
      quarot::synthetic_tensor(spec, planted_now, name, shape, scratch);
      gen.update(++done, shapes.size(), name);
      return std::span<const float>(scratch);
    });
    gen.finish(args.out + " (" + args.dtype + ", " + std::to_string(params) + " parameters)");
    const auto m_params = params;

    const auto planted = quarot::planted_outliers(spec);
    std::printf("wrote %s: %s, %d layers, %lld parameters, seed %llu\n", args.out.c_str(), args.preset.c_str(),
                spec.config.n_layers, static_cast<long long>(m_params),
                static_cast<unsigned long long>(spec.seed));
    std::printf("planted residual outlier channels:");
    for (std::size_t i = 0; i < planted.residual_channels.size(); ++i)
      std::printf(" %d (x%.1f)", planted.residual_channels[i], planted.residual_scales[i]);
    std::printf("\nplanted FFN outlier channels:");
    for (std::size_t i = 0; i < planted.ffn_channels.size(); ++i)
      std::printf(" %d (x%.1f)", planted.ffn_channels[i], planted.ffn_scales[i]);
    std::printf("\n");
    return 0;
  });
}
