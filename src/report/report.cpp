#include "quarot/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
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

std::string fmt(const json& v, const char* f = "%.4f") {
  if (v.is_null()) return "–";
  if (v.is_number()) return num(v.get<double>(), f);
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}
std::string mib(const json& v) { return v.is_number() ? num(v.get<double>() / (1 << 20), "%.2f") + " MiB" : "–"; }
const json& at(const json& j, const char* k) {
  static const json null;
  return j.is_object() && j.contains(k) ? j.at(k) : null;
}

}  // namespace

std::string report_markdown(const std::string& report_json) {
  const json r = json::parse(report_json);
  std::ostringstream m;
  const auto& ev = at(r, "eval");
  const auto& f = at(ev, "float");
  const auto& q = at(ev, "quantized");
  const auto& p = at(ev, "packed");
  const auto& sz = at(r, "sizes");
  m << "# quarot report: " << fmt(at(at(r, "input"), "path")) << " → " << fmt(at(at(r, "config"), "preset")) << "\n\n";
  m << "| | float | quantized (simulated) | packed (integer kernels) |\n|---|---|---|---|\n";
  m << "| perplexity | " << fmt(at(f, "ppl")) << " | " << fmt(at(q, "ppl")) << " | " << fmt(at(p, "ppl")) << " |\n";
  m << "| KLD vs float (mean) | 0 | " << fmt(at(q, "kld_mean"), "%.5f") << " | " << fmt(at(p, "kld_mean"), "%.5f") << " |\n";
  m << "| top-1 agreement | 100% | " << (at(q, "top1_agreement").is_number() ? num(100 * at(q, "top1_agreement").get<double>(), "%.2f") + "%" : "–")
    << " | " << (at(p, "top1_agreement").is_number() ? num(100 * at(p, "top1_agreement").get<double>(), "%.2f") + "%" : "–") << " |\n";
  m << "| size | " << mib(at(sz, "fp32_bytes")) << " (fp32) | – | " << mib(at(sz, "packed_bytes")) << " |\n";
  m << "| bits per linear weight | 32 | " << fmt(at(sz, "bits_per_weight"), "%.3f") << " | " << fmt(at(sz, "bits_per_weight"), "%.3f") << " |\n";
  if (at(sz, "kv_bits_per_element").is_number())  // codes (K and V averaged); stored: with each head's scale and zero point
    m << "| bits per cached K/V element | 16 | " << fmt(at(sz, "kv_bits_per_element"), "%.2f") << " | "
      << fmt(at(sz, "kv_bits_per_element"), "%.2f") << " (" << fmt(at(sz, "kv_stored_bits_per_element"), "%.2f")
      << " stored with scales) |\n";
  if (ev.is_object() && at(ev, "float").is_null())
    m << "\nStreamed run (`--stream`): the float model was never whole in memory, so there is no float perplexity, KLD or "
         "simulation; the packed model ran from its file.\n";
  m << "\nEvaluation: `" << fmt(at(ev, "ids")) << "`, ctx " << fmt(at(ev, "ctx"), "%.0f") << ", " << fmt(at(ev, "windows"), "%.0f")
    << " windows (paper protocol). Wall time " << fmt(at(at(r, "timings"), "total"), "%.1f") << " s, peak RSS "
    << mib(at(r, "peak_rss_bytes")) << ".\n\n";
  m << "## Configuration\n\n`" << fmt(at(r, "flags")) << "`\n\n";
  m << "Tool " << fmt(at(at(r, "tool"), "name")) << " " << fmt(at(at(r, "tool"), "version")) << " (git "
    << fmt(at(at(r, "tool"), "git_commit")) << "); input sha256 `" << fmt(at(at(r, "input"), "sha256")) << "`.\n\n";
  if (const auto& rot = at(r, "rotation"); rot.is_object() && at(rot, "steps").is_array()) {
    m << "## Rotation\n\n";
    for (const auto& s : rot["steps"]) m << "- " << s.get<std::string>() << "\n";
    m << "\n";
  }
  if (const auto& mods = at(r, "modules"); mods.is_array() && !mods.empty()) {
    std::map<std::string, std::vector<double>> err;
    std::map<std::string, double> secs;
    for (const auto& x : mods) {
      err[x["module"].get<std::string>()].push_back(x["rel_weight_error"].get<double>());
      secs[x["module"].get<std::string>()] += x["seconds"].get<double>();
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
  if (const auto& o = at(r, "outliers"); o.is_array() && !o.empty()) {
    m << "## Activation outliers (max over channels / median channel max), before → after rotation\n\n"
      << "| layer | point | before | after |\n|---|---|---|---|\n";
    for (const auto& x : o)
      m << "| " << x["layer"].get<int>() << " | " << x["point"].get<std::string>() << " | " << num(x["before"].get<double>(), "%.2f")
        << " | " << num(x["after"].get<double>(), "%.2f") << " |\n";
    m << "\n![outliers](outliers.svg)\n\n";
  }
  if (const auto& qd = at(r, "qdec"); qd.is_object()) {
    const auto& sim = at(qd, "simulated");
    const auto& dec = at(qd, "decode_seconds_per_token");
    m << "## QDEC (residual compensation, arXiv 2412.20185)\n\n";
    m << "k per 1024 input channels: `" << fmt(at(qd, "k_chunk_text")) << "`; " << fmt(at(qd, "bits"), "%.0f") << "-bit residual, "
      << mib(at(qd, "residual_bytes"));
    if (at(qd, "residual_percent_of_packed_linears").is_number())
      m << " (" << fmt(at(qd, "residual_percent_of_packed_linears"), "%.1f") << "% of the packed linears)";
    m << ".\n\n| | without QDEC | with QDEC |\n|---|---|---|\n";
    m << "| perplexity (simulated) | " << fmt(at(q, "ppl")) << " | " << fmt(at(sim, "ppl")) << " |\n";
    m << "| KLD vs float (simulated) | " << fmt(at(q, "kld_mean"), "%.5f") << " | " << fmt(at(sim, "kld_mean"), "%.5f") << " |\n";
    if (dec.is_object())
      m << "| decode time per token (integer path) | " << num(at(dec, "plain").get<double>() * 1e6, "%.1f") << " µs | "
        << num(at(dec, "qdec").get<double>() * 1e6, "%.1f") << " µs (" << num(at(dec, "slowdown_percent").get<double>(), "%+.1f") << "%) |\n";
    if (const auto& tu = at(qd, "tuner"); tu.is_object()) {
      m << "\nTuner: budget " << fmt(at(tu, "slowdown_percent"), "%.2f") << "% of " << num(at(tu, "base_seconds_per_token").get<double>() * 1e6, "%.1f")
        << " µs per token = " << num(at(tu, "budget_seconds_per_token").get<double>() * 1e6, "%.2f") << " µs; the compensation's measured cost "
        << num(at(tu, "cost_seconds_per_token").get<double>() * 1e6, "%.2f") << " µs. Steps:";
      for (const auto& st : at(tu, "steps")) m << " " << st.get<std::string>() << ";";
      m << "\n";
    }
    if (const auto& sw = at(qd, "sweep"); sw.is_array() && !sw.empty()) {
      m << "\n| k per 1024 | perplexity (simulated) | KLD (simulated) | perplexity (integer) | KLD (integer) | decode µs/token |\n"
        << "|---|---|---|---|---|---|\n";
      for (const auto& row : sw) {
        const auto& d = at(row, "decode_seconds_per_token");
        m << "| " << fmt(at(row, "k_chunk"), "%.0f") << " | " << fmt(at(at(row, "simulated"), "ppl")) << " | "
          << fmt(at(at(row, "simulated"), "kld_mean"), "%.5f") << " | " << fmt(at(at(row, "packed"), "ppl")) << " | "
          << fmt(at(at(row, "packed"), "kld_mean"), "%.5f") << " | " << (d.is_number() ? num(d.get<double>() * 1e6, "%.1f") : "–") << " |\n";
      }
    }
    m << "\n";
  }
  if (const auto& t = at(r, "timings"); t.is_object()) {
    m << "## Timings\n\n| step | seconds |\n|---|---|\n";
    for (auto it = t.begin(); it != t.end(); ++it) m << "| " << it.key() << " | " << fmt(it.value(), "%.2f") << " |\n";
  }
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
