#pragma once
// What every quarot tool shares: exit codes (0 ok, 1 failure, 2 usage), one-line errors, and
// CLI11 errors remapped to those codes.
#include <CLI/CLI.hpp>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "quarot/error.hpp"
#include "quarot/options.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/progress.hpp"
#include "quarot/qdec.hpp"
#include "quarot/signal_cleanup.hpp"
#include "quarot/version.hpp"

namespace quarot::cli {

inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// The range check of an option table row (options.hpp) as a CLI11 check. A value that is not a
// number at all is left to CLI11's own conversion error.
inline CLI::Validator table_check(const OptionSpec& spec) {
  return CLI::Validator(
      [&spec](std::string& v) -> std::string {
        if (spec.kind == OptionKind::Uint) {
          if (v.find('-') != std::string::npos) return "must be " + option_range_text(spec) + " (" + std::string(spec.meaning) + "), got " + v;
          return {};
        }
        char* end = nullptr;
        const double x = std::strtod(v.c_str(), &end);
        if (end == v.c_str() || *end != '\0') return {};
        if (auto p = option_value_problem(spec, x)) return *p;
        return {};
      },
      "");
}

// Every option of `app` (and its subcommands) whose long name is a row of the option table gets
// that row's range check: the ranges are declared once, in options.cpp, not per tool.
inline void check_ranges_from_table(CLI::App& app) {
  for (CLI::Option* o : app.get_options()) {
    for (const auto& name : o->get_lnames()) {
      const OptionSpec* spec = find_option_spec(name);
      if (spec && (spec->kind == OptionKind::Int || spec->kind == OptionKind::Uint || spec->kind == OptionKind::Real)) o->check(table_check(*spec));
    }
  }
  for (CLI::App* sub : app.get_subcommands({})) check_ranges_from_table(*sub);
}

// Parses argv; returns -1 to go on, or the exit code to return now (help: 0, usage error: 2).
// Every tool answers --version with the one version string (project(VERSION), generated into
// quarot/version.hpp).
// libgomp reads OMP_WAIT_POLICY once, when the program is loaded, and by default a waiting worker
// spins (~300000 rounds) before it sleeps: on a machine busier than its cores the spinning workers
// take the core the working thread needs (measured on the 2-core dev VM: two threads 4-25x slower
// than one; passive waits gave the speed back). A passive wait costs a futex wake per parallel
// region, microseconds against the milliseconds of work a region gets (small products stay on the
// calling thread). So a tool started without the variable sets it and executes itself again
// (same pid, same arguments); a value the user gave is kept. If the exec fails, it goes on as is.
inline void prefer_passive_openmp_waits(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  // The resolved path, not /proc/self/exe itself: the kernel names the process after the file
  // it executes, and a tool that shows up as "exe" in ps/top cannot be found by pgrep or killall.
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    ::execv(self, argv);
  }
  ::execv("/proc/self/exe", argv);
}

inline int parse(CLI::App& app, int argc, char** argv) {
  prefer_passive_openmp_waits(argv);
  quarot::install_signal_cleanup();  // SIGINT/SIGTERM: temporaries removed, exit 130, from the start
  check_ranges_from_table(app);
  if (!app.get_version_ptr()) app.set_version_flag("--version", app.get_name() + " " + quarot::kQuarotVersion);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", app.get_name().c_str(), e.what());
    return kExitUsage;
  }
  return -1;
}

// Runs the tool body; any quarot::Error (or other exception) becomes one line and exit 1.
template <class Fn>
int run(const std::string& tool, Fn&& body) {
  try {
    return body();
  } catch (const quarot::UsageError& e) {  // a bad option file or plan: usage, exit 2
    std::fprintf(stderr, "%s: error: %s (see --help)\n", tool.c_str(), e.what());
    return kExitUsage;
  } catch (const quarot::Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool.c_str(), e.what());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "%s: error: out of memory\n", tool.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool.c_str(), e.what());
  }
  return kExitFailure;
}

// A CLI11 check from a parser that throws quarot::Error: a bad value is a usage error (exit 2
// through parse()) with the parser's own message.
template <class Parse>
CLI::Validator error_check(Parse parse, const std::string& description = "") {
  return CLI::Validator(
      [parse](std::string& value) -> std::string {
        try {
          (void)parse(value);
        } catch (const quarot::Error& e) {
          // CLI11 names the option itself: drop a "--flag: " subject the parser put first.
          std::string m = e.what();
          if (const auto colon = m.find(": "); m.rfind("--", 0) == 0 && colon != std::string::npos) m.erase(0, colon + 2);
          return m;
        }
        return {};
      },
      description);
}

// Shared argument groups: one declaration for every tool that has the option.
inline CLI::Option* add_threads(CLI::App& app, int& threads) {
  return app.add_option("--threads", threads,
                        "threads, at most 1024 (0, the default: $OMP_NUM_THREADS when set, else one per core;\n"
                        "--threads 1 can be faster for small models on a busy machine)");
}

// --progress: auto (a bar on a terminal, lines otherwise), bar, plain or none.
inline CLI::Option* add_progress(CLI::App& app, std::string& progress, const std::string& what = "progress display") {
  return app.add_option("--progress", progress, what + ": auto (a bar on a terminal, lines otherwise), bar, plain or none")
      ->check(CLI::IsMember({"auto", "bar", "plain", "none"}))
      ->capture_default_str();
}

// -q/--quiet: nothing on stderr but warnings and errors (no progress, no log lines).
inline CLI::Option* add_quiet(CLI::App& app, bool& quiet) {
  return app.add_flag("-q,--quiet", quiet, "nothing on stderr but warnings and errors (implies --progress none)");
}

// --rotation: the R1 kind, for the tools that rotate (quarot-rotate, quarot-quantize).
inline CLI::Option* add_rotation_kind(CLI::App& app, std::string& kind) {
  return app.add_option("--rotation", kind, "R1: hadamard (randomized Hadamard) or random (seeded random orthogonal)")
      ->check(CLI::IsMember({"hadamard", "random"}))
      ->capture_default_str();
}

// The progress mode a tool uses: none when quiet, auto resolved (bar on a terminal).
inline ProgressMode progress_mode(const std::string& progress, bool quiet) {
  if (quiet) return ProgressMode::None;
  const ProgressMode m = parse_progress_mode(progress);
  if (m != ProgressMode::Auto) return m;
  return ::isatty(STDERR_FILENO) ? ProgressMode::Bar : ProgressMode::Plain;  // as quarot::Progress decides
}

// --qdec-k for the tools that run a packed model (quarot-eval, quarot-run): the k per kind to
// use instead of the one stored in the file.
inline CLI::Option* add_qdec_k_override(CLI::App& app, std::string& qdec_k) {
  return app
      .add_option("--qdec-k", qdec_k,
                  "packed model with a QDEC section: channels added back per 1024 inputs (N, 'all', or\n"
                  "qkv=N,o=N,gate_up=N,down=N; 0: off; default: the k stored in the file)")
      ->check(error_check([](const std::string& v) { return parse_qdec_k(v); }));
}

}  // namespace quarot::cli

#include <cctype>
#include <cstdint>

#include "quarot/dtype.hpp"

namespace quarot::cli {

// "512M", "2G", "2GB", "1048576" -> bytes (powers of 1024). Throws CLI::ValidationError.
inline uint64_t parse_bytes(const std::string& s) {
  std::size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(s, &pos);
  } catch (const std::exception&) {
    throw CLI::ValidationError("size", "'" + s + "' is not a size like 512M or 2G");
  }
  std::string unit = s.substr(pos);
  for (auto& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  if (unit.ends_with("IB")) unit.resize(unit.size() - 2);
  else if (unit.ends_with("B")) unit.pop_back();
  const int shift = unit.empty() ? 0 : unit == "K" ? 10 : unit == "M" ? 20 : unit == "G" ? 30 : unit == "T" ? 40 : -1;
  if (shift < 0) throw CLI::ValidationError("size", "'" + s + "' has an unknown unit (K, M, G, T)");
  return uint64_t(v) << shift;
}

inline DType parse_float_dtype(const std::string& s) {
  if (s == "f32" || s == "F32" || s == "float32") return DType::F32;
  if (s == "f16" || s == "F16" || s == "float16") return DType::F16;
  if (s == "bf16" || s == "BF16" || s == "bfloat16") return DType::BF16;
  throw CLI::ValidationError("--dtype", "'" + s + "' is not one of f32, f16, bf16");
}

}  // namespace quarot::cli

namespace quarot::cli {

// The files of a checkpoint given as a path, for HfWriteOptions::inputs: a tool never writes
// over what it read (pipeline.hpp's checkpoint_files, which the report's checksum reads too).
inline std::vector<std::string> input_files(const std::string& path) { return checkpoint_files(path); }

}  // namespace quarot::cli
