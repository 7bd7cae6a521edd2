#pragma once
// Tests run the pipeline as quarot-quantize does (a Plan from PlanOptions, then run()) and take
// the quantized model run() held in memory from Observer::quantized, instead of assembling
// rotate -> calibrate -> quantize -> pack themselves.
#include <optional>
#include <string>
#include <vector>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/qdec.hpp"
#include "test_support.hpp"

namespace quarot::test {

// What a whole-model run held after its quantize stage (copied), and its report.
struct PipelineRun {
  ModelWeights quantized;  // rotated, RoPE in the packed layout, linears on their grids
  OnlineTransforms online;
  QuantConfig config;  // as run (the model's defaults applied)
  std::optional<QdecStore> qdec;
  RunReport report;
};

// make_plan(o) and run() with an observer that keeps the quantized model; quiet, no checksums,
// no outlier statistics (report-only forwards). The packed file goes to o.output (and
// its report in OUT.report/).
inline PipelineRun run_plan(PlanOptions o) {
  o.no_checksum = true;
  o.outlier_windows = 0;
  o.progress = "none";
  o.quiet = true;
  struct Keep : Observer {
    PipelineRun* out = nullptr;
    void quantized(const QuantizedModel& q) override {
      out->quantized = q.weights;
      out->online = q.online;
      out->config = q.config;
      if (q.qdec) out->qdec = *q.qdec;
    }
  };
  PipelineRun r;
  Keep keep;
  keep.out = &r;
  r.report = run(make_plan(o), keep);
  return r;
}

// An in-memory model as a checkpoint run() loads: a Hugging Face folder at `dir`, fp32 (exact).
inline std::string saved_model(const ModelWeights& m, const std::string& dir) {
  save_hf(m, dir);
  return dir;
}

// Calibration windows as a *.ids file at `path`, with nsamples and seqlen set so that run()
// takes them as they are (each window must have the same length).
inline void use_calibration(PlanOptions& o, const std::vector<std::vector<int>>& windows, const std::string& path) {
  std::string text;
  for (const auto& w : windows) {
    for (int t : w) text += std::to_string(t) + " ";
    text += "\n";
  }
  write_file_atomic(path, text);
  o.calib = path;
  o.nsamples = int(windows.size());
  o.seqlen = int(windows.front().size());
}

}  // namespace quarot::test
