// The precision planner (issue 17): per-layer K/V bits and clips chosen from calibration data
// only, within a budget, recorded in the packed file and run by the integer path as simulated.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "quarot/atomic_file.hpp"
#include "quarot/error.hpp"
#include "quarot/eval.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/runtime.hpp"
#include "quarot/tokenizer.hpp"
#include "pipeline_support.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

namespace {

double mean_bits(const std::vector<std::pair<int, int>>& b) {
  double s = 0;
  for (const auto& [k, v] : b) s += k + v;
  return s / (2.0 * double(b.size()));
}

// Every budget from 4 to 8 in steps that land on and between the reachable means: the mean
// never exceeds it, one more 8-bit part would, and the 8-bit parts are the most sensitive.
TEST(Planner, ChooseKvBitsRespectsTheBudgetExactly) {
  uint64_t st = 7;
  auto rnd = [&st] {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    return double(st >> 11) / double(1ull << 53);
  };
  for (int layers : {1, 2, 5, 8}) {
    std::vector<double> ks(static_cast<std::size_t>(layers)), vs(static_cast<std::size_t>(layers));
    for (int l = 0; l < layers; ++l) {
      ks[std::size_t(l)] = rnd();
      vs[std::size_t(l)] = rnd() * 0.5;
    }
    const double step = 4.0 / (2.0 * layers);  // one part 4 -> 8 bits
    for (double budget = 4.0; budget <= 8.0 + 1e-12; budget += step / 3) {
      SCOPED_TRACE("layers " + std::to_string(layers) + " budget " + std::to_string(budget));
      const auto bits = choose_kv_bits(ks, vs, budget);
      ASSERT_EQ(bits.size(), std::size_t(layers));
      const double mean = mean_bits(bits);
      EXPECT_LE(mean, budget + 1e-12);
      if (mean < 8) {
        EXPECT_GT(mean + step, budget + 1e-12) << "a part more would still fit";
      }
      double lowest_raised = 1e9, highest_kept = -1;
      for (int l = 0; l < layers; ++l) {
        for (auto [b, s] : {std::pair{bits[std::size_t(l)].first, ks[std::size_t(l)]}, {bits[std::size_t(l)].second, vs[std::size_t(l)]}}) {
          ASSERT_TRUE(b == 4 || b == 8);
          (b == 8 ? lowest_raised = std::min(lowest_raised, s) : highest_kept = std::max(highest_kept, s));
        }
      }
      EXPECT_GE(lowest_raised, highest_kept);
    }
  }
  // Reachable budgets exactly: 5 layers, 6 bits = half of the 10 parts at 8.
  const auto half = choose_kv_bits({5, 4, 3, 2, 1}, {0.5, 0.4, 0.3, 0.2, 0.1}, 6.0);
  EXPECT_EQ(mean_bits(half), 6.0);
  EXPECT_THROW(choose_kv_bits({1}, {1}, 3.5), Error);
}

// The activation budget (mean bits over layers): the same guarantees, one part per layer.
TEST(Planner, ChooseActBitsRespectsTheBudgetExactly) {
  uint64_t st = 11;
  auto rnd = [&st] {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    return double(st >> 11) / double(1ull << 53);
  };
  for (int layers : {1, 2, 5, 8}) {
    std::vector<double> sens(static_cast<std::size_t>(layers));
    for (auto& x : sens) x = rnd();
    const double step = 4.0 / layers;  // one layer 4 -> 8 bits
    for (double budget = 4.0; budget <= 8.0 + 1e-12; budget += step / 3) {
      SCOPED_TRACE("layers " + std::to_string(layers) + " budget " + std::to_string(budget));
      const auto bits = choose_act_bits(sens, budget, 4, 8);
      ASSERT_EQ(bits.size(), std::size_t(layers));
      double mean = 0, lowest_raised = 1e9, highest_kept = -1;
      for (int l = 0; l < layers; ++l) {
        const int b = bits[std::size_t(l)];
        ASSERT_TRUE(b == 4 || b == 8);
        mean += double(b) / layers;
        (b == 8 ? lowest_raised = std::min(lowest_raised, sens[std::size_t(l)]) : highest_kept = std::max(highest_kept, sens[std::size_t(l)]));
      }
      EXPECT_LE(mean, budget + 1e-12);
      if (mean < 8) {
        EXPECT_GT(mean + step, budget + 1e-12) << "a layer more would still fit";
      }
      EXPECT_GE(lowest_raised, highest_kept);
    }
  }
  // Reachable budgets exactly: 5 layers, 5.6 bits = 2 layers at 8; ties go to the lower layer.
  const auto two = choose_act_bits({1, 3, 2, 3, 0}, 5.6, 4, 8);
  EXPECT_EQ(two, (std::vector<int>{4, 8, 4, 8, 4}));
  EXPECT_THROW(choose_act_bits({1}, 3.5, 4, 8), Error);
}

TEST(Planner, PerLayerRecipeRoundTripsAndOldRecipesRead) {
  PackRecipe r;
  r.preset = "w4a4kv4";
  r.method = "gptq";
  r.act.a_bits = 4;
  r.act.k_bits = r.act.v_bits = 4;
  r.act.kv_clip = 1.0;
  const std::string old_text = recipe_json(r);
  EXPECT_EQ(old_text.find("layers"), std::string::npos) << "files without per-layer settings stay as they were";
  EXPECT_TRUE(parse_recipe_json(old_text, "old").act.layers.empty());
  r.act.layers = {{8, 4, 0.9, 1.0, 0.95}, {4, 8, 1.0, 0.9, 1.0}, {4, 4, 0.85, 1.0, 1.0}};
  r.plan = R"({"budget_kv_bits":5.5})";
  const PackRecipe back = parse_recipe_json(recipe_json(r), "new");
  EXPECT_EQ(back.act, r.act);
  EXPECT_EQ(back.plan, r.plan);
  EXPECT_EQ(kv_cache_bits(back.act, 8).codes(), (8 + 4 + 4 + 4 + 8 + 4) / 6.0);
  // Entries without activation bits (every file before them) have no "a_bits" key and take the
  // model's; entries with them round-trip.
  EXPECT_EQ(recipe_json(r).find("\"a_bits\":4,\"a_clip\":0.9"), std::string::npos);
  EXPECT_EQ(back.act.layer(1).a_bits, 4);
  r.act.layers[0].a_bits = 8;
  r.act.layers[1].a_bits = r.act.layers[2].a_bits = 4;
  const PackRecipe with_a = parse_recipe_json(recipe_json(r), "a8");
  EXPECT_EQ(with_a.act, r.act);
  EXPECT_EQ(recipe_json(with_a), recipe_json(r));
  EXPECT_EQ(with_a.act.layer(0).a_bits, 8);
  EXPECT_EQ(with_a.act.layer(2).a_bits, 4);
  // Bad entries are refused naming the field.
  for (const char* bad : {R"("layers":[{"k_bits":9,"v_bits":4,"a_clip":1,"k_clip":1,"v_clip":1}])",
                          R"("layers":[{"k_bits":4,"v_bits":4,"a_clip":0,"k_clip":1,"v_clip":1}])",
                          R"("layers":[{"k_bits":4.5,"v_bits":4,"a_clip":1,"k_clip":1,"v_clip":1}])", R"("layers":[])",
                          R"("layers":[{"k_bits":4}])", R"("layers":[{"k_bits":4,"v_bits":4,"a_clip":1,"k_clip":1,"v_clip":1,"a_bits":9}])",
                          R"("layers":[{"k_bits":4,"v_bits":4,"a_clip":1,"k_clip":1,"v_clip":1,"a_bits":7.5}])"}) {
    std::string text = old_text;
    text.insert(1, std::string(bad) + ",");
    try {
      (void)parse_recipe_json(text, "f.safetensors");
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("layers"), std::string::npos) << e.what();
    }
  }
}

TEST(Planner, UsageRules) {
  PlanOptions o;
  o.model = "m.bin";
  o.budget_kv_bits = 6;
  EXPECT_THROW(make_plan(o), UsageError) << "no --calib";
  o.calib = "c.ids";
  o.w_method = "rtn";
  EXPECT_NO_THROW(make_plan(o));
  o.stream = true;
  EXPECT_THROW(make_plan(o), UsageError);
  o.stream = false;
  o.budget_kv_bits = 9;
  EXPECT_THROW(make_plan(o), UsageError);
  o.budget_kv_bits = 6;
  o.budget_act_bits = 9;
  EXPECT_THROW(make_plan(o), UsageError);
  o.budget_act_bits = 6;
  EXPECT_NO_THROW(make_plan(o));
  o.a_bits = 8;  // per-layer activations choose between 4 and 8 bits
  EXPECT_THROW(make_plan(o), UsageError);
  o.budget_act_bits = 0;
  o.target_kld = 0.1;  // a target from 8-bit activations: K/V alone are planned (no activation part)
  EXPECT_NO_THROW(make_plan(o));
  o.budget_act_bits = 6;  // ... but an activation budget there has nothing to choose
  EXPECT_THROW(make_plan(o), UsageError);
  o.a_bits = 0;
  o.budget_act_bits = 0;
  o.target_kld = 0;
  o.preset = "w4a16";  // KV not quantized: nothing to plan
  EXPECT_THROW(make_plan(o), UsageError);
  o.budget_kv_bits = 0;
  o.target_kld = 0.1;  // nor with a target alone
  EXPECT_THROW(make_plan(o), UsageError);
}

std::string data_path(const std::string& rel) { return data_file(rel); }

// Between stories260K's W4A4KV4-RTN calibration KLD (1 window) with every part at 4 bits and with
// every activation at 8 (K/V at 4): 0.766 and 0.624 measured; the 3 most sensitive activation
// parts reach 0.710 (2: 0.737), so activation parts alone meet it, and not all of them.
constexpr double kActOnlyTarget = 0.72;

PlanOptions stories_plan(const std::string& out, double budget) {
  PlanOptions o;
  o.model = data_path("stories260K/stories260K.bin");
  o.output = out;
  o.preset = "w4a4kv4";
  o.budget_kv_bits = budget;
  o.plan_windows = 2;
  o.nsamples = kSanitizedBuild ? 2 : 8;
  o.seqlen = 512;
  o.calib = data_path("stories260K/calib-t1-seed42.ids");
  return o;
}

// The plan in the packed file is the report's; the integer path runs the per-layer settings as
// the simulation does (perplexity within 0.5% over the validation windows); the budget holds.
TEST(Planner, Stories260KPlanInPackedFileAndIntegerPathAgreesWithSimulation) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  TempDir dir;
  const std::string path = dir / "planned.safetensors";
  const PipelineRun run = run_plan(stories_plan(path, 6.0));
  ASSERT_TRUE(run.report.precision_plan);
  const auto& plan = *run.report.precision_plan;
  EXPECT_LE(plan.kv_bits_per_element, 6.0);
  EXPECT_GT(plan.kv_bits_per_element + 0.4, 6.0) << "5 layers: a part is 0.4 bits of the mean";
  ASSERT_TRUE(run.report.sizes.kv_bits_per_element);
  EXPECT_EQ(*run.report.sizes.kv_bits_per_element, plan.kv_bits_per_element);
  EXPECT_LE(plan.kld_planned, plan.kld_low);
  const PackedModel p(path);
  ASSERT_EQ(p.recipe().act.layers.size(), 5u);
  for (int l = 0; l < 5; ++l) {
    const auto& x = p.recipe().act.layers[std::size_t(l)];
    EXPECT_EQ(x.k_bits, plan.layers[std::size_t(l)].k_bits);
    EXPECT_EQ(x.v_bits, plan.layers[std::size_t(l)].v_bits);
    EXPECT_EQ(x.k_clip, plan.layers[std::size_t(l)].k_clip);
    EXPECT_EQ(x.v_clip, plan.layers[std::size_t(l)].v_clip);
    EXPECT_EQ(x.a_clip, plan.layers[std::size_t(l)].a_clip);
  }
  EXPECT_EQ(plan.to_json(), p.recipe().plan);
  // The report's files: the plot is there, the report validates against its schema.
  EXPECT_TRUE(std::filesystem::exists(path + ".report/precision_plan.svg"));
  const std::string schema = read_text_file(std::string(QUAROT_SOURCE_DIR) + "/docs/report.schema.json");
  EXPECT_EQ(validate_json_schema(schema, read_text_file(path + ".report/report.json")), std::vector<std::string>{});

  const auto deq = p.dequantized();
  std::vector<int> stream;
  for (const auto& s : read_ids_file(data_path("tinystories/validation_100.tok512.ids"), 512)) stream.insert(stream.end(), s.begin(), s.end());
  const auto windows = make_windows(stream, Protocol::Paper, 512, 1, kSanitizedBuild ? 6 : 0);
  auto integer = integer_model(p, 512);
  auto sim = simulated_model(p, deq, 512);
  const auto ri = evaluate(integer, windows, Protocol::Paper);
  const auto rs = evaluate(sim, windows, Protocol::Paper);
  std::printf("stories260K planned at 6 bits per cached element (%.2f): integer PPL %.4f, simulation %.4f\n", plan.kv_bits_per_element, ri.ppl,
              rs.ppl);
  if (!kSanitizedBuild) {
    EXPECT_LT(std::fabs(ri.ppl / rs.ppl - 1), 0.005);
  }
}

// The planner reads the calibration windows and nothing else: the same run with a poisoned
// evaluation set (a stream that would change every sensitivity if it were measured, one token
// repeated) and with none gives the same plan, bit for bit.
TEST(Planner, NeverReadsTheEvaluationData) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  TempDir dir;
  std::string poisoned;
  for (int i = 0; i < 2048; ++i) poisoned += (i % 512 == 0 ? "1" : std::to_string(500 - i % 7)) + (i % 512 == 511 ? "\n" : " ");
  write_file_atomic(dir / "poisoned.ids", poisoned);
  auto plan_with = [&](const std::string& eval, const std::string& name) {
    PlanOptions o = stories_plan("", 5.0);
    o.budget_act_bits = 5.0;  // the activation sensitivities too
    o.target_kld = 0.3;       // and the target's walk over K, V and activation parts (the budgets cap it)
    o.w_method = "rtn";  // the plan is what is compared: RTN keeps the three runs quick
    o.report_dir = dir / name;
    o.eval_ids = eval;
    o.chunks = 2;
    const PipelineRun r = run_plan(o);
    EXPECT_TRUE(r.report.precision_plan);
    return r;
  };
  const auto clean = plan_with(data_path("tinystories/validation_100.tok512.ids"), "clean");
  const auto poison = plan_with(dir / "poisoned.ids", "poisoned");
  const auto none = plan_with("", "none");
  ASSERT_TRUE(clean.report.precision_plan && poison.report.precision_plan && none.report.precision_plan);
  EXPECT_EQ(clean.report.precision_plan->to_json(), poison.report.precision_plan->to_json());
  EXPECT_EQ(clean.report.precision_plan->to_json(), none.report.precision_plan->to_json());
  // The evaluations did differ: the poison reached the evaluation, not the plan.
  ASSERT_TRUE(clean.report.eval && poison.report.eval);
  EXPECT_NE(clean.report.eval->quantized->ppl, poison.report.eval->quantized->ppl);
  EXPECT_LE(clean.report.precision_plan->kv_bits_per_element, 5.0);
  EXPECT_LE(clean.report.precision_plan->act_bits_per_element, 5.0);
  bool measured = false;
  for (const auto& l : clean.report.precision_plan->layers) measured = measured || l.a_sensitivity != 0;
  EXPECT_TRUE(measured) << "the activation sensitivities were measured (and compared above)";
}

// W4A8 layers (--budget-act-bits): the planner's activation bits are in the packed file, the
// integer path quantizes those layers' linear inputs to 8-bit codes for the INT4 GEMM, and agrees
// with the simulation (perplexity within 0.5%); the budget holds exactly (5 layers, budget 6:
// 2 layers at 8 bits = 5.6).
TEST(Planner, ActivationBitsPerLayerRunOnTheIntegerPathAsSimulated) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  TempDir dir;
  const std::string path = dir / "a8.safetensors";
  PlanOptions o = stories_plan(path, 6.0);
  o.budget_act_bits = 6.0;
  o.nsamples = 2;
  o.plan_windows = 1;
  const PipelineRun run = run_plan(o);
  ASSERT_TRUE(run.report.precision_plan);
  const auto& plan = *run.report.precision_plan;
  EXPECT_DOUBLE_EQ(plan.act_bits_per_element, 5.6);
  EXPECT_EQ(plan.budget_act_bits, 6.0);
  const PackedModel p(path);
  ASSERT_EQ(p.recipe().act.layers.size(), 5u);
  int eight = 0;
  for (int l = 0; l < 5; ++l) {
    EXPECT_EQ(p.recipe().act.layers[std::size_t(l)].a_bits, plan.layers[std::size_t(l)].a_bits);
    eight += plan.layers[std::size_t(l)].a_bits == 8;
  }
  EXPECT_EQ(eight, 2);
  EXPECT_EQ(plan.to_json(), p.recipe().plan);
  const std::string schema = read_text_file(std::string(QUAROT_SOURCE_DIR) + "/docs/report.schema.json");
  EXPECT_EQ(validate_json_schema(schema, read_text_file(path + ".report/report.json")), std::vector<std::string>{});
  const std::string described = LoadedModel(path, false, false).describe();  // what quarot-run/eval print
  EXPECT_NE(described.find("A4/8"), std::string::npos) << described;
  EXPECT_NE(described.find(" per layer"), std::string::npos) << described;

  const auto deq = p.dequantized();
  std::vector<int> stream;
  for (const auto& s : read_ids_file(data_path("tinystories/validation_100.tok512.ids"), 512)) stream.insert(stream.end(), s.begin(), s.end());
  const auto windows = make_windows(stream, Protocol::Paper, 512, 1, kSanitizedBuild ? 4 : 20);
  auto integer = integer_model(p, 512);
  auto sim = simulated_model(p, deq, 512);
  const auto ri = evaluate(integer, windows, Protocol::Paper);
  const auto rs = evaluate(sim, windows, Protocol::Paper);
  std::printf("stories260K W4A4/A8 (%.2f activation bits per layer): integer PPL %.4f, simulation %.4f\n", plan.act_bits_per_element, ri.ppl,
              rs.ppl);
  if (!kSanitizedBuild) {
    EXPECT_LT(std::fabs(ri.ppl / rs.ppl - 1), 0.005);
  }
}

// Sensitivity per bit added to the part's own mean (precision_plan.cpp): a K/V part adds
// 4 / (2 L) bits per cached element, an activation part 4 / L bits per activation.
struct PartOrder {
  double lowest_raised = 1e300, highest_kept = -1e300;
  int raised_act = 0, raised_kv = 0;
};
PartOrder part_order(const RunReport::PrecisionPlan& plan) {
  const double L = double(plan.layers.size());
  PartOrder r;
  for (const auto& l : plan.layers) {
    for (auto [bits, per_bit, act] : {std::tuple{l.k_bits, l.k_sensitivity * 2 * L / 4, false}, {l.v_bits, l.v_sensitivity * 2 * L / 4, false},
                                      {l.a_bits, l.a_sensitivity * L / 4, true}}) {
      EXPECT_TRUE(bits == 4 || bits == 8) << bits;
      if (bits == 8) {
        r.lowest_raised = std::min(r.lowest_raised, per_bit);
        (act ? r.raised_act : r.raised_kv) += 1;
      } else {
        r.highest_kept = std::max(r.highest_kept, per_bit);
      }
    }
  }
  return r;
}

// --target-kld: parts (K, V and, from 4-bit activations, activations) go to 8 bits in order of
// sensitivity per bit added only until the calibration KLD is at most the target (the clip search
// can only lower it); an unreachable target keeps every part at 8.
TEST(Planner, TargetKldStopsAtTheTarget) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  auto plan = [](double target) {
    PlanOptions o = stories_plan("", 0);
    o.preset = "w4a4kv4-rtn";
    o.target_kld = target;
    o.plan_windows = 1;
    o.nsamples = 1;
    return *run_plan(o).report.precision_plan;
  };
  const auto reachable = plan(0.5);
  EXPECT_LE(reachable.kld_planned, 0.5);
  EXPECT_GT(reachable.kld_low, 0.5) << "the all-4-bit cache must miss the target for the test to mean anything";
  EXPECT_LT(reachable.kv_bits_per_element, 8.0);
  EXPECT_GT(reachable.kv_bits_per_element, 4.0);
  EXPECT_TRUE(reachable.activations_planned()) << "4-bit activations: their parts are in play";
  const PartOrder order = part_order(reachable);
  EXPECT_GE(order.lowest_raised, order.highest_kept) << "the raised parts lead the one order";
  EXPECT_EQ(reachable.act_bits_per_element, 4.0 + 4.0 * order.raised_act / 5);
  const auto unreachable = plan(1e-6);
  EXPECT_EQ(unreachable.kv_bits_per_element, 8.0);
  EXPECT_EQ(unreachable.act_bits_per_element, 8.0);
}

// A target that only activation parts can meet: --budget-kv-bits 4 allows no K/V part at 8 bits
// (the budget caps the target), so the KLD must come down by 8-bit activations alone; the
// activation bits are the fewest that reach it (most sensitive first).
TEST(Planner, TargetKldMetByActivationPartsWhenTheCacheBudgetIsSpent) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  PlanOptions o = stories_plan("", 4.0);
  o.preset = "w4a4kv4-rtn";
  o.target_kld = kActOnlyTarget;
  o.plan_windows = 1;
  o.nsamples = 1;
  const auto plan = *run_plan(o).report.precision_plan;
  EXPECT_GT(plan.kld_low, kActOnlyTarget) << "all-4-bit must miss the target for the test to mean anything";
  EXPECT_LE(plan.kld_planned, kActOnlyTarget);
  EXPECT_EQ(plan.kv_bits_per_element, 4.0);
  EXPECT_GT(plan.act_bits_per_element, 4.0);
  EXPECT_LT(plan.act_bits_per_element, 8.0) << "the target needs some activation parts, not all";
  double lowest_raised = 1e300, highest_kept = -1e300;
  for (const auto& l : plan.layers) {
    EXPECT_EQ(l.k_bits, 4);
    EXPECT_EQ(l.v_bits, 4);
    (l.a_bits == 8 ? lowest_raised = std::min(lowest_raised, l.a_sensitivity) : highest_kept = std::max(highest_kept, l.a_sensitivity));
  }
  EXPECT_GE(lowest_raised, highest_kept);
  // From 8-bit activations no activation part is plannable: the target plans K/V alone.
  o.a_bits = 8;
  o.budget_kv_bits = 0;
  const auto a8 = *run_plan(o).report.precision_plan;
  EXPECT_FALSE(a8.activations_planned());
  EXPECT_EQ(a8.act_bits_per_element, 8.0);
  for (const auto& l : a8.layers) EXPECT_EQ(l.a_bits, 8);
}

}  // namespace
