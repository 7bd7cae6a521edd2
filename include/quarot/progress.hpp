#pragma once
// Progress for long work: a bar on a terminal, a plain line every few seconds otherwise (CI
// logs), nothing when asked; always a closing summary line unless mode is None.
#include <chrono>
#include <cstdint>
#include <string>

namespace quarot {

// Peak resident memory of this process so far (getrusage), for summaries and reports.
uint64_t peak_rss_bytes();
// MemAvailable of /proc/meminfo (0 when unknown): what a new allocation can use without swapping.
uint64_t available_memory_bytes();

enum class ProgressMode { Auto, Bar, Plain, None };
ProgressMode parse_progress_mode(const std::string& s);  // auto|bar|plain|none

class Progress {
 public:
  Progress(std::string label, ProgressMode mode);
  // `what`: the item in progress, e.g. "layer 3/32 up_proj". Thread-compatible, not thread-safe.
  void update(uint64_t done, uint64_t total, const std::string& what = {});
  void finish(const std::string& summary);     // prints "label: summary (elapsed)"
  double elapsed_s() const;

 private:
  std::string label_;
  ProgressMode mode_;
  std::chrono::steady_clock::time_point start_, last_print_;
  bool printed_bar_ = false;
};

}  // namespace quarot
