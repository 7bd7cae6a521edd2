// RunReport <-> report.json: the one place that spells the report's keys (docs/report.schema.json).
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "quarot/error.hpp"
#include "quarot/report.hpp"

namespace quarot {

using json = nlohmann::json;

namespace {

json figures_json(const EvalFigures& f) {
  json j = {{"ppl", f.ppl}, {"seconds", f.seconds}};
  if (f.kld == EvalFigures::Kld::Present) {
    j["kld_mean"] = f.kld_mean;
    j["kld_p99"] = f.kld_p99;
    j["top1_agreement"] = f.top1_agreement;
  } else if (f.kld == EvalFigures::Kld::Null) {
    for (const char* k : {"kld_mean", "kld_p99", "top1_agreement"}) j[k] = nullptr;
  }
  if (f.isa) j["isa"] = *f.isa;
  if (f.qdec) j["qdec"] = *f.qdec;
  return j;
}

EvalFigures figures_of(const json& j) {
  EvalFigures f;
  f.ppl = j.at("ppl").get<double>();
  f.seconds = j.at("seconds").get<double>();
  if (!j.contains("kld_mean")) {
    f.kld = EvalFigures::Kld::Absent;
  } else if (j.at("kld_mean").is_null()) {
    f.kld = EvalFigures::Kld::Null;
  } else {
    f.kld_mean = j.at("kld_mean").get<double>();
    f.kld_p99 = j.at("kld_p99").get<double>();
    f.top1_agreement = j.at("top1_agreement").get<double>();
  }
  if (j.contains("isa")) f.isa = j.at("isa").get<std::string>();
  if (j.contains("qdec")) f.qdec = j.at("qdec").get<bool>();
  return f;
}

json optional_figures(const std::optional<EvalFigures>& f) { return f ? figures_json(*f) : json(nullptr); }
std::optional<EvalFigures> optional_figures_of(const json& j) {
  if (j.is_null()) return std::nullopt;
  return figures_of(j);
}

json tuner_json(const RunReport::Qdec::Tuner& t) {
  json table = json::object();
  for (const auto& [kind, row] : t.cost_seconds) table[kind] = row;
  return {{"slowdown_percent", t.slowdown_percent}, {"base_seconds_per_token", t.base_seconds_per_token},
          {"budget_seconds_per_token", t.budget_seconds_per_token}, {"cost_seconds_per_token", t.cost_seconds_per_token},
          {"levels", t.levels}, {"cost_seconds", table}, {"steps", t.steps}};
}

RunReport::Qdec::Tuner tuner_of(const json& j) {
  RunReport::Qdec::Tuner t;
  t.slowdown_percent = j.at("slowdown_percent").get<double>();
  t.base_seconds_per_token = j.at("base_seconds_per_token").get<double>();
  t.budget_seconds_per_token = j.at("budget_seconds_per_token").get<double>();
  t.cost_seconds_per_token = j.at("cost_seconds_per_token").get<double>();
  t.levels = j.at("levels").get<std::vector<int>>();
  for (const auto& [kind, row] : j.at("cost_seconds").items()) t.cost_seconds[kind] = row.get<std::vector<double>>();
  t.steps = j.at("steps").get<std::vector<std::string>>();
  return t;
}

json precision_plan_json(const RunReport::PrecisionPlan& p) {
  json layers = json::array();
  for (const auto& l : p.layers)
    layers.push_back({{"layer", l.layer}, {"k_sensitivity", l.k_sensitivity}, {"v_sensitivity", l.v_sensitivity}, {"k_bits", l.k_bits},
                      {"v_bits", l.v_bits}, {"a_clip", l.a_clip}, {"k_clip", l.k_clip}, {"v_clip", l.v_clip},
                      {"a_sensitivity", l.a_sensitivity}, {"a_bits", l.a_bits}});
  return {{"budget_kv_bits", p.budget_kv_bits}, {"target_kld", p.target_kld}, {"windows", p.windows}, {"tokens", p.tokens},
          {"kld_high", p.kld_high}, {"kld_low", p.kld_low}, {"kld_planned", p.kld_planned},
          {"kv_bits_per_element", p.kv_bits_per_element}, {"limits", p.limits}, {"layers", layers},
          {"budget_act_bits", p.budget_act_bits}, {"act_bits_per_element", p.act_bits_per_element}};
}

RunReport::PrecisionPlan precision_plan_of(const json& j) {
  RunReport::PrecisionPlan p;
  p.budget_kv_bits = j.at("budget_kv_bits").get<double>();
  p.target_kld = j.at("target_kld").get<double>();
  p.windows = j.at("windows").get<int>();
  p.tokens = j.at("tokens").get<int>();
  p.kld_high = j.at("kld_high").get<double>();
  p.kld_low = j.at("kld_low").get<double>();
  p.kld_planned = j.at("kld_planned").get<double>();
  p.kv_bits_per_element = j.at("kv_bits_per_element").get<double>();
  p.limits = j.at("limits").get<std::string>();
  // Reports before per-layer activation bits have neither key.
  p.budget_act_bits = j.value("budget_act_bits", 0.0);
  p.act_bits_per_element = j.value("act_bits_per_element", 0.0);
  for (const auto& l : j.at("layers")) {
    RunReport::PrecisionPlan::Layer x;
    x.layer = l.at("layer").get<int>();
    x.k_sensitivity = l.at("k_sensitivity").get<double>();
    x.v_sensitivity = l.at("v_sensitivity").get<double>();
    x.k_bits = l.at("k_bits").get<int>();
    x.v_bits = l.at("v_bits").get<int>();
    x.a_clip = l.at("a_clip").get<double>();
    x.k_clip = l.at("k_clip").get<double>();
    x.v_clip = l.at("v_clip").get<double>();
    x.a_sensitivity = l.value("a_sensitivity", 0.0);
    x.a_bits = l.value("a_bits", 0);
    p.layers.push_back(x);
  }
  return p;
}

json task_figures_json(const RunReport::TaskFigures& f, const std::optional<RunReport::TaskFigures>& base) {
  json j = {{"acc", f.acc}, {"acc_stderr", f.acc_stderr}, {"acc_norm", f.acc_norm}, {"acc_norm_stderr", f.acc_norm_stderr},
            {"truncated_items", f.truncated_items}, {"seconds", f.seconds}, {"seconds_per_item", f.seconds_per_item}};
  if (f.isa) j["isa"] = *f.isa;
  // Derived, so not read back: the share of the float model's accuracy kept (null when the
  // float model scored 0 or was not run).
  if (base) {
    auto ratio = [](double q, double b) { return b > 0 ? json(q / b) : json(nullptr); };
    j["retained"] = {{"acc", ratio(f.acc, base->acc)}, {"acc_norm", ratio(f.acc_norm, base->acc_norm)}};
  }
  return j;
}

std::optional<RunReport::TaskFigures> task_figures_of(const json& j) {
  if (j.is_null()) return std::nullopt;
  RunReport::TaskFigures f;
  f.acc = j.at("acc").get<double>();
  f.acc_stderr = j.at("acc_stderr").get<double>();
  f.acc_norm = j.at("acc_norm").get<double>();
  f.acc_norm_stderr = j.at("acc_norm_stderr").get<double>();
  f.truncated_items = j.at("truncated_items").get<int>();
  f.seconds = j.at("seconds").get<double>();
  f.seconds_per_item = j.at("seconds_per_item").get<double>();
  if (j.contains("isa")) f.isa = j.at("isa").get<std::string>();
  return f;
}

json report_json(const RunReport& r) {
  json j = {{"schema", "quarot-report/1"},
            {"tool", {{"name", r.tool_name}, {"version", r.tool_version}, {"git_commit", r.git_commit}}},
            {"input", {{"path", r.input.path}, {"sha256", r.input.sha256 ? json(*r.input.sha256) : json(nullptr)},
                       {"bytes", r.input.bytes}, {"parameters", r.input.parameters}}},
            {"config", json::parse(r.config_json)},
            {"flags", r.flags},
            {"seeds", {{"rotation", r.rotation_seed}, {"calibration", r.calibration_seed}}},
            {"rotation", {{"steps", r.rotation.steps}, {"fallbacks", r.rotation.fallbacks}}},
            {"modules", json::array()},
            {"outliers", json::array()}};
  if (r.rotation.online) j["rotation"]["online"] = *r.rotation.online;
  for (const auto& m : r.modules)
    j["modules"].push_back({{"layer", m.layer}, {"module", m.module}, {"rel_weight_error", m.rel_weight_error},
                            {"gptq_loss", m.gptq_loss}, {"damp", m.damp}, {"dead_inputs", m.dead_inputs}, {"seconds", m.seconds}});
  for (const auto& o : r.outliers) j["outliers"].push_back({{"layer", o.layer}, {"point", o.point}, {"before", o.before}, {"after", o.after}});
  const auto& s = r.sizes;
  j["sizes"] = {{"fp32_bytes", s.fp32_bytes}, {"input_bytes", s.input_bytes}, {"linear_parameters", s.linear_parameters},
                {"packed_bytes", s.packed_bytes ? json(*s.packed_bytes) : json(nullptr)}, {"bits_per_weight", s.bits_per_weight}};
  if (s.qdec_residual_bytes) j["sizes"]["qdec_residual_bytes"] = *s.qdec_residual_bytes;
  if (s.kv_bits_per_element) j["sizes"]["kv_bits_per_element"] = *s.kv_bits_per_element;
  if (s.kv_stored_bits_per_element) j["sizes"]["kv_stored_bits_per_element"] = *s.kv_stored_bits_per_element;
  j["eval"] = nullptr;
  if (r.eval) {
    const auto& e = *r.eval;
    j["eval"] = {{"ids", e.ids}, {"ctx", e.ctx}, {"windows", e.windows}, {"protocol", e.protocol},
                 {"float", optional_figures(e.float_model)}, {"quantized", optional_figures(e.quantized)},
                 {"packed", optional_figures(e.packed)}};
    if (e.text) j["eval"]["text"] = *e.text;
  }
  j["qdec"] = nullptr;
  if (r.qdec) {
    const auto& q = *r.qdec;
    json& jq = j["qdec"];
    jq = {{"bits", q.bits}, {"residual_bytes", q.residual_bytes}, {"tuner", q.tuner ? tuner_json(*q.tuner) : json(nullptr)},
          {"k_chunk", {{"qkv", q.k_qkv}, {"o", q.k_o}, {"gate_up", q.k_gate_up}, {"down", q.k_down}}},
          {"k_chunk_text", q.k_chunk_text}};
    if (q.residual_percent_of_packed_linears) jq["residual_percent_of_packed_linears"] = *q.residual_percent_of_packed_linears;
    if (q.simulated) jq["simulated"] = figures_json(*q.simulated);
    if (q.decode_seconds_per_token)
      jq["decode_seconds_per_token"] = {{"plain", q.decode_seconds_per_token->plain}, {"qdec", q.decode_seconds_per_token->qdec},
                                        {"slowdown_percent", q.decode_seconds_per_token->slowdown_percent}};
    if (q.sweep) {
      jq["sweep"] = json::array();
      for (const auto& row : *q.sweep) {
        json jr = {{"k_chunk", row.k_chunk < 0 ? json("all") : json(row.k_chunk)}};
        if (row.packed) jr["packed"] = figures_json(*row.packed);
        if (row.decode_seconds_per_token) jr["decode_seconds_per_token"] = *row.decode_seconds_per_token;
        jr["simulated"] = figures_json(row.simulated);
        jq["sweep"].push_back(jr);
      }
    }
  }
  if (r.tokenizer) {
    const auto& t = *r.tokenizer;
    j["tokenizer"] = {{"path", t.path}, {"kind", t.kind}, {"found", t.found}, {"bos_id", t.bos_id ? json(*t.bos_id) : json(nullptr)},
                      {"special_policy", t.special_policy}, {"calibration", t.calibration ? json(*t.calibration) : json(nullptr)}};
    if (t.evaluation) j["tokenizer"]["evaluation"] = *t.evaluation;
  }
  if (!r.tasks.empty()) {
    j["tasks"] = json::array();
    for (const auto& t : r.tasks) {
      auto entry = [&](const std::optional<RunReport::TaskFigures>& f, bool vs_float) {
        return f ? task_figures_json(*f, vs_float ? t.float_model : std::nullopt) : json(nullptr);
      };
      j["tasks"].push_back({{"name", t.name}, {"file", t.file}, {"items", t.items}, {"limit", t.limit},
                            {"float", entry(t.float_model, false)}, {"quantized", entry(t.quantized, true)}, {"packed", entry(t.packed, true)}});
    }
  }
  if (r.precision_plan) j["precision_plan"] = precision_plan_json(*r.precision_plan);
  j["timings"] = json::object();
  for (const auto& [k, v] : r.timings) j["timings"][k] = v;
  j["peak_rss_bytes"] = r.peak_rss_bytes;
  return j;
}

RunReport report_of(const json& j) {
  RunReport r;
  r.tool_name = j.at("tool").at("name").get<std::string>();
  r.tool_version = j.at("tool").at("version").get<std::string>();
  r.git_commit = j.at("tool").at("git_commit").get<std::string>();
  const json& in = j.at("input");
  r.input.path = in.at("path").get<std::string>();
  if (!in.at("sha256").is_null()) r.input.sha256 = in.at("sha256").get<std::string>();
  r.input.bytes = in.at("bytes").get<uint64_t>();
  r.input.parameters = in.at("parameters").get<int64_t>();
  r.config_json = j.at("config").dump();
  r.flags = j.at("flags").get<std::string>();
  r.rotation_seed = j.at("seeds").at("rotation").get<uint64_t>();
  r.calibration_seed = j.at("seeds").at("calibration").get<uint64_t>();
  const json& rot = j.at("rotation");
  r.rotation.steps = rot.at("steps").get<std::vector<std::string>>();
  r.rotation.fallbacks = rot.at("fallbacks").get<std::vector<std::string>>();
  if (rot.contains("online")) r.rotation.online = rot.at("online").get<std::string>();
  for (const auto& m : j.at("modules"))
    r.modules.push_back({m.at("layer").get<int>(), m.at("module").get<std::string>(), m.at("rel_weight_error").get<double>(),
                         m.at("gptq_loss").get<double>(), m.at("damp").get<double>(), m.at("dead_inputs").get<int>(),
                         m.at("seconds").get<double>()});
  for (const auto& o : j.at("outliers"))
    r.outliers.push_back({o.at("layer").get<int>(), o.at("point").get<std::string>(), o.at("before").get<double>(), o.at("after").get<double>()});
  const json& s = j.at("sizes");
  r.sizes.fp32_bytes = s.at("fp32_bytes").get<double>();
  r.sizes.input_bytes = s.at("input_bytes").get<uint64_t>();
  r.sizes.linear_parameters = s.at("linear_parameters").get<int64_t>();
  if (!s.at("packed_bytes").is_null()) r.sizes.packed_bytes = s.at("packed_bytes").get<uint64_t>();
  r.sizes.bits_per_weight = s.at("bits_per_weight").get<double>();
  if (s.contains("qdec_residual_bytes")) r.sizes.qdec_residual_bytes = s.at("qdec_residual_bytes").get<uint64_t>();
  if (s.contains("kv_bits_per_element")) r.sizes.kv_bits_per_element = s.at("kv_bits_per_element").get<double>();
  if (s.contains("kv_stored_bits_per_element")) r.sizes.kv_stored_bits_per_element = s.at("kv_stored_bits_per_element").get<double>();
  if (const json& e = j.at("eval"); !e.is_null()) {
    RunReport::Eval ev;
    ev.ids = e.at("ids").get<std::string>();
    ev.ctx = e.at("ctx").get<int>();
    ev.windows = e.at("windows").get<int>();
    ev.protocol = e.at("protocol").get<std::string>();
    ev.float_model = optional_figures_of(e.at("float"));
    ev.quantized = optional_figures_of(e.at("quantized"));
    ev.packed = optional_figures_of(e.at("packed"));
    if (e.contains("text")) ev.text = e.at("text").get<std::string>();
    r.eval = ev;
  }
  if (const json& q = j.at("qdec"); !q.is_null()) {
    RunReport::Qdec d;
    d.bits = q.at("bits").get<int>();
    d.residual_bytes = q.at("residual_bytes").get<uint64_t>();
    if (!q.at("tuner").is_null()) d.tuner = tuner_of(q.at("tuner"));
    const json& k = q.at("k_chunk");
    d.k_qkv = k.at("qkv").get<int>();
    d.k_o = k.at("o").get<int>();
    d.k_gate_up = k.at("gate_up").get<int>();
    d.k_down = k.at("down").get<int>();
    d.k_chunk_text = q.at("k_chunk_text").get<std::string>();
    if (q.contains("residual_percent_of_packed_linears")) d.residual_percent_of_packed_linears = q.at("residual_percent_of_packed_linears").get<double>();
    if (q.contains("simulated")) d.simulated = figures_of(q.at("simulated"));
    if (q.contains("decode_seconds_per_token")) {
      const json& ds = q.at("decode_seconds_per_token");
      d.decode_seconds_per_token = RunReport::Qdec::Decode{ds.at("plain").get<double>(), ds.at("qdec").get<double>(),
                                                           ds.at("slowdown_percent").get<double>()};
    }
    if (q.contains("sweep")) {
      d.sweep.emplace();
      for (const auto& row : q.at("sweep")) {
        RunReport::QdecSweepRow sr;
        sr.k_chunk = row.at("k_chunk").is_string() ? -1 : row.at("k_chunk").get<int>();
        if (row.contains("packed")) sr.packed = figures_of(row.at("packed"));
        if (row.contains("decode_seconds_per_token")) sr.decode_seconds_per_token = row.at("decode_seconds_per_token").get<double>();
        sr.simulated = figures_of(row.at("simulated"));
        d.sweep->push_back(sr);
      }
    }
    r.qdec = d;
  }
  if (j.contains("tokenizer")) {
    const json& t = j.at("tokenizer");
    RunReport::TokenizerUse u;
    u.path = t.at("path").get<std::string>();
    u.kind = t.at("kind").get<std::string>();
    u.found = t.at("found").get<std::string>();
    if (!t.at("bos_id").is_null()) u.bos_id = t.at("bos_id").get<int>();
    u.special_policy = t.at("special_policy").get<std::string>();
    if (!t.at("calibration").is_null()) u.calibration = t.at("calibration").get<std::string>();
    if (t.contains("evaluation")) u.evaluation = t.at("evaluation").get<std::string>();
    r.tokenizer = u;
  }
  if (j.contains("tasks"))
    for (const auto& t : j.at("tasks")) {
      RunReport::Task task;
      task.name = t.at("name").get<std::string>();
      task.file = t.at("file").get<std::string>();
      task.items = t.at("items").get<int>();
      task.limit = t.at("limit").get<int>();
      task.float_model = task_figures_of(t.at("float"));
      task.quantized = task_figures_of(t.at("quantized"));
      task.packed = task_figures_of(t.at("packed"));
      r.tasks.push_back(task);
    }
  if (j.contains("precision_plan")) r.precision_plan = precision_plan_of(j.at("precision_plan"));
  for (const auto& [k, v] : j.at("timings").items()) r.timings[k] = v.get<double>();
  r.peak_rss_bytes = j.at("peak_rss_bytes").get<uint64_t>();
  return r;
}

}  // namespace

std::string RunReport::Qdec::Tuner::to_json() const { return tuner_json(*this).dump(); }
std::string RunReport::PrecisionPlan::to_json() const { return precision_plan_json(*this).dump(); }

std::string RunReport::to_json(int indent) const {
  const json j = report_json(*this);
  return indent >= 0 ? j.dump(indent) + "\n" : j.dump();
}

RunReport RunReport::from_json(const std::string& text) {
  try {
    return report_of(json::parse(text));
  } catch (const json::exception& e) {
    throw Error("report.json", std::string("not a quarot report: ") + e.what());
  }
}

const EvalFigures* RunReport::headline_eval() const {
  if (!eval) return nullptr;
  if (eval->packed) return &*eval->packed;
  return eval->quantized ? &*eval->quantized : nullptr;
}

std::string error_per_layer_svg(const RunReport& r) {
  std::map<std::string, ChartSeries> err;
  for (const auto& m : r.modules) {
    if (m.layer < 0) continue;
    auto& s = err[m.module];
    s.name = m.module;
    s.x.push_back(m.layer);
    s.y.push_back(m.rel_weight_error);
  }
  std::vector<ChartSeries> es;
  for (auto& [k, s] : err) es.push_back(s);
  return svg_chart(es, {"Weight quantization error per layer", "layer", "||W - Q(W)|| / ||W||"});
}

std::string precision_plan_svg(const RunReport& r) {
  if (!r.precision_plan) return "";
  ChartSeries k{"K (8 -> 4 bits)", {}, {}, {}, false}, v{"V (8 -> 4 bits)", {}, {}, {}, true};
  for (const auto& l : r.precision_plan->layers) {
    k.x.push_back(l.layer);
    k.y.push_back(std::max(l.k_sensitivity, 1e-7));  // log axis: a part with no measurable effect sits at the floor
    k.labels.push_back(std::to_string(l.k_bits));
    v.x.push_back(l.layer);
    v.y.push_back(std::max(l.v_sensitivity, 1e-7));
    v.labels.push_back(std::to_string(l.v_bits));
  }
  std::vector<ChartSeries> series{k, v};
  if (r.precision_plan->activations_planned()) {
    ChartSeries a{"activations (8 -> 4 bits)", {}, {}, {}, false};
    for (const auto& l : r.precision_plan->layers) {
      a.x.push_back(l.layer);
      a.y.push_back(std::max(l.a_sensitivity, 1e-7));
      a.labels.push_back(std::to_string(l.a_bits));
    }
    series.push_back(a);
  }
  ChartOptions o{"Precision planner: KLD increase per layer when one part alone goes 8 -> 4 bits (labels: bits chosen)", "layer",
                 "calibration KLD increase"};
  o.log_y = true;
  return svg_chart(series, o);
}

std::string outliers_svg(const RunReport& r) {
  std::map<std::string, ChartSeries> before, after;
  for (const auto& o : r.outliers) {
    auto& b = before[o.point];
    b.name = o.point + " before";
    b.dashed = true;
    b.x.push_back(o.layer);
    b.y.push_back(o.before);
    auto& a = after[o.point];
    a.name = o.point + " after";
    a.x.push_back(o.layer);
    a.y.push_back(o.after);
  }
  std::vector<ChartSeries> os;
  for (auto& [k, s] : before) os.push_back(s);
  for (auto& [k, s] : after) os.push_back(s);
  ChartOptions oo{"Activation outliers before (dashed) and after rotation", "layer", "max channel / median channel"};
  oo.log_y = true;
  return svg_chart(os, oo);
}

}  // namespace quarot
