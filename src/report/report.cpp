#include "quarot/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "quarot/error.hpp"

namespace quarot {

using json = nlohmann::json;

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default: o += c;
    }
  return o;
}

namespace {

std::string num(double v, const char* fmt = "%.4g") {
  char b[64];
  std::snprintf(b, sizeof b, fmt, v);
  return b;
}

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

}  // namespace

std::string svg_chart(const std::vector<ChartSeries>& series, const ChartOptions& o) {
  const double L = 70, R = 190, T = 40, B = 50;
  const double pw = o.width - L - R, ph = o.height - T - B;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  auto ty = [&](double y) { return o.log_y ? std::log10(std::max(y, 1e-300)) : y; };
  for (const auto& s : series)
    for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i]) || (o.log_y && s.y[i] <= 0)) continue;
      x0 = std::min(x0, s.x[i]);
      x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, ty(s.y[i]));
      y1 = std::max(y1, ty(s.y[i]));
    }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x0 -= 0.5, x1 += 0.5;
  if (y1 == y0) y0 -= 0.5, y1 += 0.5;
  const double ypad = (y1 - y0) * 0.05;
  y0 -= ypad;
  y1 += ypad;
  if (!o.log_y && y0 > 0 && y0 < (y1 - y0)) y0 = 0;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return T + ph - (ty(y) - y0) / (y1 - y0) * ph; };
  auto py_raw = [&](double v) { return T + ph - (v - y0) / (y1 - y0) * ph; };

  std::ostringstream s;
  s << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << o.width << "\" height=\"" << o.height << "\" viewBox=\"0 0 "
    << o.width << " " << o.height << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<title>" << xml_escape(o.title) << "</title>\n"
    << "<rect x=\"0\" y=\"0\" width=\"" << o.width << "\" height=\"" << o.height << "\" fill=\"white\"/>\n"
    << "<text x=\"" << L + pw / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << xml_escape(o.title) << "</text>\n"
    << "<g class=\"axes\" stroke=\"#333\">\n"
    << "<line x1=\"" << L << "\" y1=\"" << T + ph << "\" x2=\"" << L + pw << "\" y2=\"" << T + ph << "\"/>\n"
    << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << T + ph << "\"/>\n</g>\n<g class=\"ticks\">\n";
  for (int i = 0; i <= 4; ++i) {
    const double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    s << "<text x=\"" << num(px(xv), "%.1f") << "\" y=\"" << T + ph + 18 << "\" text-anchor=\"middle\">" << num(xv) << "</text>\n";
    s << "<text x=\"" << L - 6 << "\" y=\"" << num(py_raw(yv) + 4, "%.1f") << "\" text-anchor=\"end\">"
      << num(o.log_y ? std::pow(10.0, yv) : yv) << "</text>\n";
    s << "<line x1=\"" << L << "\" y1=\"" << num(py_raw(yv), "%.1f") << "\" x2=\"" << L + pw << "\" y2=\"" << num(py_raw(yv), "%.1f")
      << "\" stroke=\"#ddd\"/>\n";
  }
  s << "</g>\n"
    << "<text x=\"" << L + pw / 2 << "\" y=\"" << o.height - 10 << "\" text-anchor=\"middle\">" << xml_escape(o.x_label) << "</text>\n"
    << "<text x=\"16\" y=\"" << T + ph / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " << T + ph / 2 << ")\">"
    << xml_escape(o.y_label + (o.log_y ? " (log scale)" : "")) << "</text>\n";
  for (std::size_t k = 0; k < series.size(); ++k) {
    const auto& sr = series[k];
    const char* color = kColors[k % 8];
    s << "<g class=\"series\" data-name=\"" << xml_escape(sr.name) << "\" stroke=\"" << color << "\" fill=\"" << color << "\">\n";
    std::string pts;
    for (std::size_t i = 0; i < sr.x.size() && i < sr.y.size(); ++i) {
      if (!std::isfinite(sr.y[i]) || (o.log_y && sr.y[i] <= 0)) continue;
      pts += num(px(sr.x[i]), "%.1f") + "," + num(py(sr.y[i]), "%.1f") + " ";
      s << "<circle cx=\"" << num(px(sr.x[i]), "%.1f") << "\" cy=\"" << num(py(sr.y[i]), "%.1f") << "\" r=\"3\"/>\n";
      if (i < sr.labels.size() && !sr.labels[i].empty())
        s << "<text x=\"" << num(px(sr.x[i]) + 5, "%.1f") << "\" y=\"" << num(py(sr.y[i]) - 5, "%.1f") << "\" stroke=\"none\" font-size=\"10\">"
          << xml_escape(sr.labels[i]) << "</text>\n";
    }
    if (o.lines && !pts.empty())
      s << "<polyline fill=\"none\" stroke-width=\"2\"" << (sr.dashed ? " stroke-dasharray=\"6 4\"" : "") << " points=\"" << pts
        << "\"/>\n";
    s << "</g>\n";
    const double ly = T + 14 + 18 * double(k);
    s << "<g class=\"legend\"><line x1=\"" << L + pw + 12 << "\" y1=\"" << ly - 4 << "\" x2=\"" << L + pw + 32 << "\" y2=\"" << ly - 4
      << "\" stroke=\"" << color << "\" stroke-width=\"2\"" << (sr.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/><text x=\""
      << L + pw + 38 << "\" y=\"" << ly << "\">" << xml_escape(sr.name) << "</text></g>\n";
  }
  s << "</svg>\n";
  return s.str();
}

// ---------------------------------------------------------------- Markdown

namespace {

std::string fmt(const std::optional<double>& v, const char* f = "%.4f") { return v ? num(*v, f) : "–"; }
std::string fmt(const std::optional<std::string>& v) { return v ? *v : "–"; }
std::string mib(const std::optional<double>& v) { return v ? num(*v / (1 << 20), "%.2f") + " MiB" : "–"; }
std::string percent(const std::optional<double>& v) { return v ? num(100 * *v, "%.2f") + "%" : "–"; }
using Figures = std::optional<EvalFigures>;
std::optional<double> ppl(const Figures& f) { return f ? std::optional<double>(f->ppl) : std::nullopt; }
std::optional<double> kld(const Figures& f) {
  return f && f->kld == EvalFigures::Kld::Present ? std::optional<double>(f->kld_mean) : std::nullopt;
}
std::optional<double> top1(const Figures& f) {
  return f && f->kld == EvalFigures::Kld::Present ? std::optional<double>(f->top1_agreement) : std::nullopt;
}
std::optional<double> bytes(const std::optional<uint64_t>& v) { return v ? std::optional<double>(double(*v)) : std::nullopt; }

}  // namespace

std::string report_markdown(const RunReport& r) {
  std::ostringstream m;
  const auto& ev = r.eval;
  const Figures none;
  const Figures& f = ev ? ev->float_model : none;
  const Figures& q = ev ? ev->quantized : none;
  const Figures& p = ev ? ev->packed : none;
  const auto& sz = r.sizes;
  const json config = json::parse(r.config_json);
  const std::optional<std::string> preset =
      config.contains("preset") && config["preset"].is_string() ? std::optional<std::string>(config["preset"].get<std::string>()) : std::nullopt;
  m << "# quarot report: " << r.input.path << " → " << fmt(preset) << "\n\n";
  m << "| | float | quantized (simulated) | packed (integer kernels) |\n|---|---|---|---|\n";
  m << "| perplexity | " << fmt(ppl(f)) << " | " << fmt(ppl(q)) << " | " << fmt(ppl(p)) << " |\n";
  m << "| KLD vs float (mean) | 0 | " << fmt(kld(q), "%.5f") << " | " << fmt(kld(p), "%.5f") << " |\n";
  m << "| top-1 agreement | 100% | " << percent(top1(q)) << " | " << percent(top1(p)) << " |\n";
  m << "| size | " << mib(sz.fp32_bytes) << " (fp32) | – | " << mib(bytes(sz.packed_bytes)) << " |\n";
  m << "| bits per linear weight | 32 | " << num(sz.bits_per_weight, "%.3f") << " | " << num(sz.bits_per_weight, "%.3f") << " |\n";
  if (sz.kv_bits_per_element && sz.kv_stored_bits_per_element)  // codes (K and V averaged); stored: with each head's scale and zero point
    m << "| bits per cached K/V element | 16 | " << num(*sz.kv_bits_per_element, "%.2f") << " | " << num(*sz.kv_bits_per_element, "%.2f")
      << " (" << num(*sz.kv_stored_bits_per_element, "%.2f") << " stored with scales) |\n";
  if (ev && !ev->float_model)
    m << "\nStreamed run (`--stream`): the float model was never whole in memory, so there is no float perplexity, KLD or "
         "simulation; the packed model ran from its file.\n";
  const auto total = r.timings.find("total");
  m << "\nEvaluation: `" << (ev ? ev->text.value_or(ev->ids) : "–") << "`, ctx " << (ev ? num(ev->ctx, "%.0f") : "–") << ", "
    << (ev ? num(ev->windows, "%.0f") : "–") << " windows (paper protocol). Wall time "
    << (total != r.timings.end() ? num(total->second, "%.1f") : "–") << " s, peak RSS " << mib(double(r.peak_rss_bytes)) << ".\n\n";
  if (r.tokenizer) {
    const auto& t = *r.tokenizer;
    m << "Tokenizer `" << t.path << "` (" << t.kind << ", from " << t.found << "); per task sequence it adds " << t.special_policy;
    if (t.calibration) m << "; calibration text: " << *t.calibration;
    if (t.evaluation) m << "; evaluation text: " << *t.evaluation;
    m << ".\n\n";
  }
  for (const auto& task : r.tasks) {
    // The paper's other claim: the share of the float model's zero-shot accuracy kept.
    auto acc = [](const std::optional<RunReport::TaskFigures>& x, bool norm) {
      if (!x) return std::string("–");
      return num(norm ? x->acc_norm : x->acc, "%.4f") + " ± " + num(norm ? x->acc_norm_stderr : x->acc_stderr, "%.4f");
    };
    auto kept = [&](const std::optional<RunReport::TaskFigures>& x) {
      const auto& b = task.float_model;
      if (!x || !b) return std::string("–");
      auto one = [](double v, double base) { return base > 0 ? num(100 * v / base, "%.1f") + "%" : std::string("–"); };
      return one(x->acc, b->acc) + " / " + one(x->acc_norm, b->acc_norm);
    };
    auto per_item = [](const std::optional<RunReport::TaskFigures>& x) { return x ? num(x->seconds_per_item * 1e3, "%.2f") + " ms" : std::string("–"); };
    m << "## Zero-shot " << task.name << " (`" << task.file << "`, " << task.items << " items; lm-eval acc / acc_norm ± stderr)\n\n"
      << "| | float | quantized (simulated) | packed (integer kernels) |\n|---|---|---|---|\n"
      << "| acc | " << acc(task.float_model, false) << " | " << acc(task.quantized, false) << " | " << acc(task.packed, false) << " |\n"
      << "| acc_norm | " << acc(task.float_model, true) << " | " << acc(task.quantized, true) << " | " << acc(task.packed, true) << " |\n"
      << "| retained vs float (acc / acc_norm) | " << (task.float_model ? "100%" : "–") << " | " << kept(task.quantized) << " | " << kept(task.packed) << " |\n"
      << "| time per item | " << per_item(task.float_model) << " | " << per_item(task.quantized) << " | " << per_item(task.packed) << " |\n\n";
  }
  m << "## Configuration\n\n`" << r.flags << "`\n\n";
  m << "Tool " << r.tool_name << " " << r.tool_version << " (git " << r.git_commit << "); input sha256 `" << fmt(r.input.sha256) << "`.\n\n";
  m << "## Rotation\n\n";
  for (const auto& s : r.rotation.steps) m << "- " << s << "\n";
  m << "\n";
  if (!r.modules.empty()) {
    std::map<std::string, std::vector<double>> err;
    std::map<std::string, double> secs;
    for (const auto& x : r.modules) {
      err[x.module].push_back(x.rel_weight_error);
      secs[x.module] += x.seconds;
    }
    m << "## Weight error ||W − Q(W)|| / ||W|| per module kind\n\n| module | mean | worst | layer of worst | time |\n|---|---|---|---|---|\n";
    for (const auto& [k, v] : err) {
      const auto worst = std::max_element(v.begin(), v.end());
      double mean = 0;
      for (double e : v) mean += e / double(v.size());
      m << "| " << k << " | " << num(mean, "%.5f") << " | " << num(*worst, "%.5f") << " | " << (k == "lm_head" ? -1 : int(worst - v.begin()))
        << " | " << num(secs[k], "%.2f") << " s |\n";
    }
    m << "\n![per-layer weight error](error_per_layer.svg)\n\n";
  }
  if (!r.outliers.empty()) {
    m << "## Activation outliers (max over channels / median channel max), before → after rotation\n\n"
      << "| layer | point | before | after |\n|---|---|---|---|\n";
    for (const auto& x : r.outliers)
      m << "| " << x.layer << " | " << x.point << " | " << num(x.before, "%.2f") << " | " << num(x.after, "%.2f") << " |\n";
    m << "\n![outliers](outliers.svg)\n\n";
  }
  if (r.precision_plan) {
    const auto& pp = *r.precision_plan;
    m << "## Precision plan (calibration data only)\n\n";
    if (pp.budget_kv_bits > 0) m << "Budget: " << num(pp.budget_kv_bits, "%.2f") << " bits per cached K/V element. ";
    if (pp.target_kld > 0) m << "Target calibration KLD: " << num(pp.target_kld, "%.5f") << ". ";
    m << "Planned: " << num(pp.kv_bits_per_element, "%.2f") << " bits per cached element; calibration KLD vs float "
      << num(pp.kld_planned, "%.5f") << " (every K/V at 8 bits: " << num(pp.kld_high, "%.5f") << ", at 4 bits: " << num(pp.kld_low, "%.5f")
      << "), " << pp.windows << " windows, " << pp.tokens << " tokens. ";
    if (pp.activations_planned())
      m << "Activations: " << (pp.budget_act_bits > 0 ? "budget " + num(pp.budget_act_bits, "%.2f") + " bits on average over the layers, " : std::string())
        << "planned " << num(pp.act_bits_per_element, "%.2f") << " bits per activation (mean over the layers). ";
    m << pp.limits << "\n\n"
      << "| layer | K sensitivity | V sensitivity | activation sensitivity | K bits | V bits | activation bits | activation clip | K clip | V clip |\n"
      << "|---|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& l : pp.layers)
      m << "| " << l.layer << " | " << num(l.k_sensitivity, "%.5f") << " | " << num(l.v_sensitivity, "%.5f") << " | "
        << (pp.activations_planned() ? num(l.a_sensitivity, "%.5f") : std::string("–")) << " | " << l.k_bits << " | " << l.v_bits << " | "
        << l.a_bits << " | " << num(l.a_clip, "%.2f") << " | " << num(l.k_clip, "%.2f") << " | " << num(l.v_clip, "%.2f") << " |\n";
    m << "\n![sensitivity per layer](precision_plan.svg)\n\n";
  }
  if (r.qdec) {
    const auto& qd = *r.qdec;
    m << "## QDEC (residual compensation, arXiv 2412.20185)\n\n";
    m << "k per 1024 input channels: `" << qd.k_chunk_text << "`; " << num(qd.bits, "%.0f") << "-bit residual, "
      << mib(double(qd.residual_bytes));
    if (qd.residual_percent_of_packed_linears) m << " (" << num(*qd.residual_percent_of_packed_linears, "%.1f") << "% of the packed linears)";
    m << ".\n\n| | without QDEC | with QDEC |\n|---|---|---|\n";
    m << "| perplexity (simulated) | " << fmt(ppl(q)) << " | " << fmt(ppl(qd.simulated)) << " |\n";
    m << "| KLD vs float (simulated) | " << fmt(kld(q), "%.5f") << " | " << fmt(kld(qd.simulated), "%.5f") << " |\n";
    if (const auto& dec = qd.decode_seconds_per_token)
      m << "| decode time per token (integer path) | " << num(dec->plain * 1e6, "%.1f") << " µs | " << num(dec->qdec * 1e6, "%.1f") << " µs ("
        << num(dec->slowdown_percent, "%+.1f") << "%) |\n";
    if (const auto& tu = qd.tuner) {
      m << "\nTuner: budget " << num(tu->slowdown_percent, "%.2f") << "% of " << num(tu->base_seconds_per_token * 1e6, "%.1f")
        << " µs per token = " << num(tu->budget_seconds_per_token * 1e6, "%.2f") << " µs; the compensation's measured cost "
        << num(tu->cost_seconds_per_token * 1e6, "%.2f") << " µs. Steps:";
      for (const auto& st : tu->steps) m << " " << st << ";";
      m << "\n";
    }
    if (qd.sweep && !qd.sweep->empty()) {
      m << "\n| k per 1024 | perplexity (simulated) | KLD (simulated) | perplexity (integer) | KLD (integer) | decode µs/token |\n"
        << "|---|---|---|---|---|---|\n";
      for (const auto& row : *qd.sweep) {
        const auto& d = row.decode_seconds_per_token;
        m << "| " << (row.k_chunk < 0 ? std::string("all") : num(row.k_chunk, "%.0f")) << " | " << num(row.simulated.ppl, "%.4f") << " | "
          << fmt(kld(row.simulated), "%.5f") << " | " << fmt(ppl(row.packed)) << " | " << fmt(kld(row.packed), "%.5f") << " | "
          << (d ? num(*d * 1e6, "%.1f") : "–") << " |\n";
      }
    }
    m << "\n";
  }
  m << "## Timings\n\n| step | seconds |\n|---|---|\n";
  for (const auto& [k, v] : r.timings) m << "| " << k << " | " << num(v, "%.2f") << " |\n";
  return m.str();
}

// ---------------------------------------------------------------- JSON Schema (subset)

namespace {

bool type_matches(const json& v, const std::string& t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  if (t == "number") return v.is_number();
  if (t == "integer") return v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  return false;
}

void validate(const json& root, const json& s, const json& v, const std::string& path, std::vector<std::string>& errs) {
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"].get<std::string>();
    const std::string prefix = "#/definitions/";
    if (ref.rfind(prefix, 0) != 0 || !root.contains("definitions") || !root["definitions"].contains(ref.substr(prefix.size()))) {
      errs.push_back(path + ": unresolvable $ref " + ref);
      return;
    }
    validate(root, root["definitions"][ref.substr(prefix.size())], v, path, errs);
    return;
  }
  if (s.contains("type")) {
    bool ok = false;
    if (s["type"].is_array()) {
      for (const auto& t : s["type"]) ok = ok || type_matches(v, t.get<std::string>());
    } else {
      ok = type_matches(v, s["type"].get<std::string>());
    }
    if (!ok) {
      errs.push_back(path + ": expected type " + s["type"].dump() + ", got " + v.type_name());
      return;
    }
  }
  if (s.contains("enum")) {
    bool found = false;
    for (const auto& e : s["enum"]) found = found || e == v;
    if (!found) errs.push_back(path + ": " + v.dump() + " not in " + s["enum"].dump());
  }
  if (s.contains("const") && s["const"] != v) errs.push_back(path + ": must be " + s["const"].dump());
  if (s.contains("minimum") && v.is_number() && v.get<double>() < s["minimum"].get<double>())
    errs.push_back(path + ": " + v.dump() + " < minimum " + s["minimum"].dump());
  if (v.is_object()) {
    if (s.contains("required"))
      for (const auto& k : s["required"])
        if (!v.contains(k.get<std::string>())) errs.push_back(path + ": missing required '" + k.get<std::string>() + "'");
    const json props = s.value("properties", json::object());
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (props.contains(it.key())) {
        validate(root, props[it.key()], it.value(), path + "/" + it.key(), errs);
      } else if (s.contains("additionalProperties") && s["additionalProperties"].is_boolean() && !s["additionalProperties"].get<bool>()) {
        errs.push_back(path + ": unexpected property '" + it.key() + "'");
      }
    }
  }
  if (v.is_array()) {
    if (s.contains("minItems") && v.size() < s["minItems"].get<std::size_t>())
      errs.push_back(path + ": fewer than " + s["minItems"].dump() + " items");
    if (s.contains("items"))
      for (std::size_t i = 0; i < v.size(); ++i) validate(root, s["items"], v[i], path + "/" + std::to_string(i), errs);
  }
}

}  // namespace

std::vector<std::string> validate_json_schema(const std::string& schema, const std::string& document) {
  std::vector<std::string> errs;
  json s, d;
  try {
    s = json::parse(schema);
  } catch (const std::exception& e) {
    return {std::string("schema: ") + e.what()};
  }
  try {
    d = json::parse(document);
  } catch (const std::exception& e) {
    return {std::string("document: ") + e.what()};
  }
  validate(s, s, d, "", errs);
  return errs;
}

}  // namespace quarot
