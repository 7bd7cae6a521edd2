#include "quarot/progress.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include "quarot/error.hpp"

namespace quarot {

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return uint64_t(u.ru_maxrss) * 1024;  // Linux reports KiB
}

uint64_t available_memory_bytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  uint64_t kib = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %lu kB", &kib) == 1) break;
  std::fclose(f);
  return kib * 1024;
}

ProgressMode parse_progress_mode(const std::string& s) {
  if (s == "auto") return ProgressMode::Auto;
  if (s == "bar") return ProgressMode::Bar;
  if (s == "plain") return ProgressMode::Plain;
  if (s == "none") return ProgressMode::None;
  throw Error("--progress", "must be auto, bar, plain or none, got '" + s + "'");
}

Progress::Progress(std::string label, ProgressMode mode)
    : label_(std::move(label)), mode_(mode), start_(std::chrono::steady_clock::now()), last_print_(start_) {
  if (mode_ == ProgressMode::Auto) mode_ = ::isatty(STDERR_FILENO) ? ProgressMode::Bar : ProgressMode::Plain;
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(uint64_t done, uint64_t total, const std::string& what) {
  if (mode_ == ProgressMode::None || total == 0) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_print_).count();
  const bool last = done >= total;
  // A bar redraws often; plain lines (logs) come every 5 s at most.
  if (!last && since < (mode_ == ProgressMode::Bar ? 0.1 : 5.0)) return;
  last_print_ = now;
  const double frac = double(done) / double(total);
  const double el = elapsed_s();
  const double eta = frac > 0 ? el * (1 - frac) / frac : 0;
  if (mode_ == ProgressMode::Bar) {
    char bar[31];
    const int filled = int(frac * 30);
    for (int i = 0; i < 30; ++i) bar[i] = i < filled ? '#' : '.';
    bar[30] = 0;
    std::fprintf(stderr, "\r%s [%s] %5.1f%% %s %.1fs elapsed, ETA %.1fs   ", label_.c_str(), bar, 100 * frac, what.c_str(), el, eta);
    printed_bar_ = true;
  } else if (!last) {
    std::fprintf(stderr, "%s: %.1f%%%s%s (%.1fs elapsed, ETA %.1fs)\n", label_.c_str(), 100 * frac, what.empty() ? "" : " ",
                 what.c_str(), el, eta);
  }
}

void Progress::finish(const std::string& summary) {
  if (mode_ == ProgressMode::None) return;
  if (printed_bar_) std::fprintf(stderr, "\n");
  std::fprintf(stderr, "%s: %s (%.2fs)\n", label_.c_str(), summary.c_str(), elapsed_s());
}

}  // namespace quarot
