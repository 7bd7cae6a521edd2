// quarot-rotate: QuaRot's rotations on a float checkpoint (no quantization), written as a
// Hugging Face folder whose metadata records the online transforms; with --stats-ids, the
// activation outlier statistics before and after.
#include <cstdio>

#include "cli.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/file_identity.hpp"
#include "quarot/progress.hpp"
#include "quarot/rotate.hpp"
#include "quarot/tokenizer.hpp"

namespace {

void print_stats(const std::vector<quarot::ActivationStats>& before, const std::vector<quarot::ActivationStats>& after) {
  std::printf("\nactivation outliers (max over channels of max|x|, divided by the median channel; kurtosis):\n");
  std::printf("  %-16s %5s %7s | %10s %10s %7s | %9s %9s\n", "point", "layer", "width", "before", "after", "drop",
              "kurt bef", "kurt aft");
  for (std::size_t i = 0; i < before.size() && i < after.size(); ++i) {
    const auto& b = before[i];
    const auto& a = after[i];
    std::printf("  %-16s %5d %7d | %10.2f %10.2f %6.1fx | %9.2f %9.2f\n", quarot::hook_point_name(b.point), b.layer,
                b.channels, b.max_over_median, a.max_over_median, b.max_over_median / a.max_over_median, b.kurtosis,
                a.kurtosis);
  }
}

}  // namespace

int main(int argc, char** argv) {
  struct Args {
    std::string model, out, rotation = "hadamard", stats_ids, dtype = "f32", progress = "auto";
    uint64_t seed = 0;
    bool quiet = false, no_fuse = false, no_r1 = false, no_r2 = false, no_r3 = false, no_r4 = false, center = false;
    int stats_windows = 8, stats_ctx = 256;
  } args;
  CLI::App app{
      "Apply QuaRot's rotations (arXiv 2404.00456) to a float checkpoint without changing what it\n"
      "computes: fold RMSNorm scales into the linear layers, rotate the residual stream with a\n"
      "randomized Hadamard (R1), rotate V/O per head (R2), and set up the online Hadamards on\n"
      "queries/keys (R3) and before down_proj (R4). Writes a Hugging Face folder whose metadata\n"
      "records the online transforms (quarot-eval and quarot-run apply them); its config.json names\n"
      "the architecture QuarotRotated<Arch> so that other loaders refuse it. A rotated model is refused.\n"
      "Example: quarot-rotate stories260K.bin -o rotated/ --stats-ids calib-t1-seed42.ids",
      "quarot-rotate"};
  app.add_option("model", args.model, "checkpoint: llama2.c .bin or Hugging Face folder")->required();
  app.add_option("-o,--output", args.out, "output folder (Hugging Face layout)");
  quarot::cli::add_rotation_kind(app, args.rotation);
  app.add_option("--seed", args.seed, "seed of R1's signs / random rotation and of fallback bases")->capture_default_str();
  app.add_flag("--no-fuse", args.no_fuse, "do not fold the RMSNorm scales (implies --no-r1)");
  app.add_flag("--no-r1", args.no_r1, "skip the residual rotation");
  app.add_flag("--no-r2", args.no_r2, "skip the per-head V/O rotation");
  app.add_flag("--no-r3", args.no_r3, "skip the online query/key Hadamard");
  app.add_flag("--no-r4", args.no_r4, "skip the online down_proj Hadamard");
  app.add_flag("--center-embeddings", args.center, "subtract each embedding row's mean (NOT exact for RMSNorm)");
  app.add_option("--stats-ids", args.stats_ids, "token ids (one sequence per line) for outlier statistics before/after");
  // Ranges checked by the option table's checker (cli::table_check), with rows of their own: the
  // table in options.cpp holds quarot-quantize's keys (--config files and plans accept exactly
  // those), which these are not.
  static const quarot::OptionSpec kStatsWindows{"stats-windows", quarot::OptionKind::Int, 1, 1 << 20, false, {}, "", "statistics sequences"};
  static const quarot::OptionSpec kStatsCtx{"stats-ctx", quarot::OptionKind::Int, 2, 1 << 20, false, {}, "", "statistics tokens per sequence"};
  app.add_option("--stats-windows", args.stats_windows, "sequences used for the statistics")
      ->check(quarot::cli::table_check(kStatsWindows))->capture_default_str();
  app.add_option("--stats-ctx", args.stats_ctx, "tokens per sequence used for the statistics")
      ->check(quarot::cli::table_check(kStatsCtx))->capture_default_str();
  app.add_option("--dtype", args.dtype, "output dtype: f32, f16, bf16")->capture_default_str();
  quarot::cli::add_progress(app, args.progress);
  quarot::cli::add_quiet(app, args.quiet);
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;
  if (args.out.empty() && args.stats_ids.empty()) {
    std::fprintf(stderr, "quarot-rotate: error: nothing to do: give -o and/or --stats-ids (see --help)\n");
    return quarot::cli::kExitUsage;
  }
  quarot::HfWriteOptions write_opts;
  try {
    write_opts.dtype = quarot::cli::parse_float_dtype(args.dtype);
  } catch (const CLI::ValidationError& e) {
    std::fprintf(stderr, "quarot-rotate: error: %s (see --help)\n", e.what());
    return quarot::cli::kExitUsage;
  }

  return quarot::cli::run("quarot-rotate", [&] {
    // Every file it will write against every input file (the model's, --stats-ids), by identity,
    // before any work.
    write_opts.inputs = quarot::cli::input_files(args.model);
    write_opts.inputs.push_back(args.stats_ids);
    if (!args.out.empty())
      for (const auto& path : quarot::hf_output_paths(quarot::read_model_config(args.model), args.out, write_opts))
        quarot::refuse_unsafe_output(path, write_opts.inputs);
    const auto mode = quarot::cli::progress_mode(args.progress, args.quiet);
    quarot::Progress load("load", mode);
    auto m = quarot::load_model(args.model, [&](uint64_t d, uint64_t t) { load.update(d, t); });
    load.finish(args.model);
    // Checked before any work (rotate_model refuses too): a rotated model's online transforms
    // would be lost by a second rotation.
    if (quarot::is_rotated(m))
      throw quarot::Error(args.model, "is already rotated (it carries a 'quarot.rotation' record); rotate the original instead");

    std::vector<std::vector<int>> windows;
    if (!args.stats_ids.empty()) {
      for (auto& s : quarot::read_ids_file(args.stats_ids, m.config.vocab)) {
        if (int(windows.size()) >= args.stats_windows) break;
        if (int(s.size()) > args.stats_ctx) s.resize(std::size_t(args.stats_ctx));
        windows.push_back(std::move(s));
      }
    }
    std::vector<quarot::ActivationStats> before;
    if (!windows.empty()) before = quarot::activation_stats(m, nullptr, windows);

    quarot::RotationOptions o;
    o.fuse_norms = !args.no_fuse;
    o.r1 = !args.no_r1 && !args.no_fuse;
    o.r2 = !args.no_r2;
    o.r3 = !args.no_r3;
    o.r4 = !args.no_r4;
    o.r1_kind = args.rotation == "random" ? quarot::R1Kind::Random : quarot::R1Kind::Hadamard;
    o.seed = args.seed;
    o.center_embeddings = args.center;
    quarot::RotationReport report;
    quarot::Progress rot("rotate", mode);
    const auto online = quarot::rotate_model(m, o, &report);
    quarot::record_rotation(m, o, online);
    rot.finish(std::to_string(report.steps.size()) + " steps");
    for (const auto& s : report.steps) std::printf("  %s\n", s.c_str());
    for (const auto& f : report.fallbacks)
      std::fprintf(stderr, "quarot-rotate: warning: not a Hadamard matrix: %s\n", f.c_str());
    std::printf("online transforms:\n%s", online.describe().c_str());

    if (!windows.empty()) print_stats(before, quarot::activation_stats(m, &online, windows));
    if (!args.out.empty()) {
      quarot::save_hf(m, args.out, write_opts);
      std::printf("wrote %s\n", args.out.c_str());
    }
    return 0;
  });
}
