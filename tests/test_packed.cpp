// The packed INT4 model file and the integer model: round trip, determinism, corruption, and
// the integer path against the fake-quant simulation of the same quantized weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/eval.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/runtime.hpp"
#include "quarot/synth.hpp"
#include "quarot/tokenizer.hpp"
#include "rotation_support.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

namespace {

ModelWeights tiny(bool asym_groups = false) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 11;
  s.config.vocab = 96;
  if (asym_groups) s.config.intermediate = 192;  // groups of 64 divide every width
  return make_synthetic(s);
}

std::vector<int> tokens(int n, int vocab, uint64_t seed) {
  std::vector<int> t = {1};
  for (uint64_t s = seed; int(t.size()) < n;) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t.push_back(int(3 + (s >> 33) % uint64_t(vocab - 3)));
  }
  return t;
}

void flip_bit(const std::string& path, std::size_t byte, int bit) {
  auto b = read_bytes(path);
  b.at(byte) = uint8_t(b[byte] ^ (1u << bit));
  write_bytes(path, b);
}

std::string open_error(const std::string& path) {
  try {
    PackedModel m(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Packed, RoundTripsTheQuantizedWeightsExactlyAndDeterministically) {
  TempDir dir;
  for (const bool asym : {false, true}) {
    auto m = tiny(asym);
    auto cfg = plan_preset("w4a4kv4-rtn").quant;
    if (asym) {
      cfg.gptq.weights.grid.symmetric = false;
      cfg.gptq.weights.group_size = 64;
    }
    const std::string a = dir / "a.q4.safetensors", b = dir / "b.q4.safetensors";
    auto m2 = m;
    quantize_and_pack(m, cfg, {}, a);
    quantize_and_pack(m2, cfg, {}, b);
    EXPECT_EQ(read_bytes(a), read_bytes(b)) << "same inputs and seed, different bytes";
    const PackedModel p(a);
    EXPECT_EQ(p.recipe().w_symmetric, !asym);
    EXPECT_EQ(p.recipe().act.a_bits, 4);
    EXPECT_DOUBLE_EQ(p.recipe().act.kv_clip, 0.95);
    EXPECT_FALSE(p.online().empty());
    EXPECT_EQ(p.config().intermediate, m.config.intermediate);
    const auto d = p.dequantized();
    for (int l = 0; l < m.config.n_layers; ++l) {
      const auto& x = m.layers[l];
      const auto& y = d.layers[l];
      for (const LinearSpec& spec : kLinearSpecs) {
        const auto mem = spec.weight;
        ASSERT_EQ((x.*mem).data.size(), (y.*mem).data.size());
        EXPECT_EQ(0, std::memcmp((x.*mem).data.data(), (y.*mem).data.data(), (x.*mem).data.size() * 4)) << "layer " << l;
      }
      EXPECT_EQ(x.attn_norm, y.attn_norm);
    }
    EXPECT_EQ(std::vector<float>(m.tok_embeddings.data.begin(), m.tok_embeddings.data.end()),
              std::vector<float>(d.tok_embeddings.data.begin(), d.tok_embeddings.data.end()));
    // The file is smaller than the fp32 model: 4-bit linears (tiny models are embedding-heavy).
    EXPECT_LT(double(p.file_bytes()), 0.6 * double(parameter_count(m)) * 4);
  }
}

TEST(Packed, IntegerModelMatchesTheSimulation) {
  // KV4, INT8 keys beside INT4 values (K8V4), and activation scales per group of 16 columns
  // (narrower than a packed block) or 48 (dividing no width of the tiny model), on every ISA.
  for (const auto& [k_bits, a_group] : {std::pair{4, 0}, {8, 0}, {8, 16}, {4, 48}}) {
    TempDir dir;
    auto m = tiny();
    const std::string path = dir / "m.q4.safetensors";
    auto cfg = plan_preset("w4a4kv4-rtn").quant;
    cfg.act.k_bits = k_bits;
    cfg.act.a_group = a_group;
    quantize_and_pack(m, cfg, {}, path);
    const PackedModel p(path);
    ASSERT_EQ(p.recipe().act.k_bits, k_bits);
    ASSERT_EQ(p.recipe().act.a_group, a_group);
    const auto deq = p.dequantized();
    for (Isa isa : kAllIsas) {
      if (!isa_supported(isa)) continue;
      SCOPED_TRACE(std::string("K") + std::to_string(k_bits) + " a_group " + std::to_string(a_group) + " on " + isa_name(isa));
      auto integer = integer_model(p, 64, isa);
      auto sim = simulated_model(p, deq, 64);
      std::vector<float> li, ls;
      const auto t = tokens(40, 96, 3);
      integer.forward(t, li);
      sim.forward(t, ls);
      ASSERT_EQ(li.size(), ls.size());
      double num = 0, den = 0;
      for (std::size_t i = 0; i < li.size(); ++i) {
        num += (double(li[i]) - ls[i]) * (double(li[i]) - ls[i]);
        den += double(ls[i]) * ls[i];
      }
      // Only fp32 summation order differs (the grids and codes are the same): ~1e-6.
      EXPECT_LT(std::sqrt(num / den), 1e-4) << isa_name(isa);
      // Decode through the INT4 KV cache, token by token, agrees with the window.
      integer.reset();
      std::vector<float> step;
      for (int i = 0; i < 40; ++i) integer.forward_last(std::span<const int>(&t[std::size_t(i)], 1), step);
      double worst = 0;
      for (int v = 0; v < 96; ++v) worst = std::max(worst, std::fabs(double(step[v]) - li[std::size_t(39 * 96 + v)]));
      EXPECT_LT(worst, 1e-3);
    }
  }
}

TEST(Packed, CorruptionIsCaughtWithTheTensorsName) {
  TempDir dir;
  auto m = tiny();
  const std::string good = dir / "good.q4.safetensors";
  quantize_and_pack(m, plan_preset("w4a4kv4-rtn").quant, {}, good);
  const auto bytes = read_bytes(good);
  const SafetensorsFile f(good);
  const auto* qw = f.find("model.layers.1.mlp.down_proj.qweight");
  ASSERT_NE(qw, nullptr);
  const std::string bad = dir / "bad.q4.safetensors";

  write_bytes(bad, std::vector<uint8_t>(bytes.begin(), bytes.end() - 100));  // truncated
  EXPECT_NE(open_error(bad).find("bad.q4.safetensors"), std::string::npos) << open_error(bad);

  write_bytes(bad, bytes);
  flip_bit(bad, std::size_t(f.header().data_start + qw->begin + 7), 3);  // a bit in a tensor
  EXPECT_NE(open_error(bad).find("'model.layers.1.mlp.down_proj.qweight': CRC32 mismatch"), std::string::npos) << open_error(bad);

  // A bit in the header: inside the metadata's recipe text, so the JSON stays valid.
  const std::string text(bytes.begin(), bytes.begin() + std::ptrdiff_t(f.header().data_start));
  const auto at = text.find("a_clip");
  ASSERT_NE(at, std::string::npos);
  write_bytes(bad, bytes);
  flip_bit(bad, at + 12, 0);
  EXPECT_NE(open_error(bad).find("bad.q4.safetensors"), std::string::npos);
  EXPECT_FALSE(open_error(bad).empty());

  // A wrong version and a missing tensor: rewritten files with a valid container.
  auto rewrite = [&](const std::string& drop, const std::string& version) {
    std::vector<TensorToWrite> t;
    for (const auto& info : f.header().tensors)
      if (info.name != drop) t.push_back({info.name, info.dtype, info.shape, f.data(info).data(), info.dtype});
    auto meta = f.header().metadata;
    if (!version.empty()) meta["format_version"] = version;
    write_safetensors(bad, t, meta);
  };
  rewrite("", "2");
  EXPECT_NE(open_error(bad).find("packed format version 2 is not supported"), std::string::npos) << open_error(bad);
  rewrite("model.layers.0.self_attn.k_proj.scales", "");
  EXPECT_NE(open_error(bad).find("tensor 'model.layers.0.self_attn.k_proj.scales' is missing"), std::string::npos)
      << open_error(bad);
  EXPECT_TRUE(open_error(good).empty());
}

// stories260K quantized with `preset` (the model's defaults applied, as the tool does): the
// integer path's perplexity and greedy tokens against the simulation of the same file.
static double integer_path_agrees_with_the_simulation(const std::string& preset, int a_group = 0) {
  auto m = load_model(data_file("stories260K/stories260K.bin"));
  // Under ASan+UBSan (3-8x slower) a smaller run still exercises every path; the 0.5% bound is
  // checked in the release build, where 76 windows make it statistically meaningful.
  auto cfg = plan_preset(preset).quant;  // GPTQ, per-channel symmetric weights with clip search
  std::printf("%s\n", apply_model_defaults(cfg, m.config).c_str());
  cfg.act.a_group = a_group;
  cfg.nsamples = kSanitizedBuild ? 4 : 16;
  cfg.seqlen = 512;
  const auto calib = calibration_windows(read_ids_file(data_file("stories260K/calib-t1-seed42.ids"), 512), cfg.nsamples,
                                         cfg.seqlen, 0, "calib");
  TempDir dir;
  const std::string path = dir / "stories.q4.safetensors";
  quantize_and_pack(m, cfg, calib, path);
  const PackedModel p(path);
  EXPECT_EQ(p.recipe().act.k_bits, cfg.act.k_bits);
  EXPECT_EQ(p.recipe().act.v_bits, cfg.act.v_bits);
  EXPECT_EQ(p.recipe().act.a_group, a_group);
  const auto deq = p.dequantized();
  std::vector<int> stream;
  for (const auto& s : read_ids_file(data_file("tinystories/validation_100.tok512.ids"), 512)) stream.insert(stream.end(), s.begin(), s.end());
  const auto windows = make_windows(stream, Protocol::Paper, 512, 1, kSanitizedBuild ? 6 : 0);
  auto integer = integer_model(p, 512);
  auto sim = simulated_model(p, deq, 512);
  const auto ri = evaluate(integer, windows, Protocol::Paper);
  const auto rs = evaluate(sim, windows, Protocol::Paper);
  std::printf("stories260K %s a_group %d (GPTQ, %d calibration windows), %d windows: integer PPL %.4f, simulation %.4f\n",
              preset.c_str(), a_group, cfg.nsamples, ri.windows, ri.ppl, rs.ppl);
  // W4A4KV4 is discontinuous in its inputs: a 1e-7 difference (fp32 summation order: the
  // integer sums are exact, the simulation's fp32 GEMM is not) can flip one 4-bit KV code and
  // change later attention outputs by ~20%. Measured per window, the fp32 simulation, an fp64
  // simulation and the integer path each differ from the others by up to 0.05 nats in a few
  // windows (2026-11-23); over all 76 windows the perplexities agree far inside 0.5%.
  if (!kSanitizedBuild) {
    EXPECT_LT(std::fabs(ri.ppl / rs.ppl - 1), 0.005);
  }
  // Greedy from BOS: the first 20 tokens identical.
  const std::vector<int> bos = {1};
  integer.reset();
  sim.reset();
  const auto gi = generate_greedy(integer, bos, 20, false);
  const auto gs = generate_greedy(sim, bos, 20, false);
  EXPECT_EQ(gi, gs);
  return ri.ppl;
}

TEST(Packed, Stories260KIntegerPathAgreesWithTheSimulation) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  integer_path_agrees_with_the_simulation("w4a4kv4");
}

// INT8 keys beside INT4 values (issue 17): the integer path's mixed cache equals the simulation,
// and the 8-bit keys recover most of what 4-bit keys lose at head_dim 8.
TEST(Packed, Stories260KEightBitKeysIntegerPathAgreesWithTheSimulation) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  const double ppl = integer_path_agrees_with_the_simulation("w4a4k8v4");
  // Issue 17's goal for the preset alone (measured 4.88 here, 2026-11-30; W4A4KV4 8.08).
  if (!kSanitizedBuild) {
    EXPECT_LT(ppl, 5.2);
  }
}

// Activation scales per group of 16 columns (issue 17: four groups per token of stories260K's
// hidden 64; the FFN's 172 ends in a group of 12): the integer path equals the simulation.
TEST(Packed, Stories260KActivationGroupsIntegerPathAgreesWithTheSimulation) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  integer_path_agrees_with_the_simulation("w4a4k8v4", 16);
}

TEST(PackedTools, QuantizeWritesEvalAndRunExecute) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  const std::string model = data_file("stories260K/stories260K.bin");
  const std::string ids = data_file("tinystories/validation_100.tok512.ids");
  TempDir dir;
  const std::string out = dir / "s.q4.safetensors";
  // Bad combinations are usage errors, before any work; nothing is written.
  auto r = run_tool("quarot-quantize", model + " --preset w8a8kv8 -o " + out + " --progress none");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.stderr_text.find("--w-bits: the packed format stores 2..4-bit weights"), std::string::npos) << r.stderr_text;
  r = run_tool("quarot-quantize", model + " --preset w4a4kv4-rtn -o " + model + " --progress none");
  EXPECT_EQ(r.exit_code, 1);  // refuses to overwrite its input
  EXPECT_FALSE(std::filesystem::exists(out));

  r = run_tool("quarot-quantize", model + " --preset w4a4kv4-rtn -o " + out + " --progress none --eval-ids " + ids +
                                      " --ctx 512 --chunks 4");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("packed model: " + out), std::string::npos);
  EXPECT_NE(r.stdout_text.find("packed integer model"), std::string::npos);
  ASSERT_TRUE(is_packed_model(out));

  r = run_tool("quarot-eval", out + " --ids " + ids + " --ctx 512 --chunks 4 --progress none --kld-base " + model);
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("integer path"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("perplexity:"), std::string::npos);

  const auto gen = run_tool("quarot-run", out + " -n 20");
  ASSERT_EQ(gen.exit_code, 0) << gen.stderr_text;
  const auto sim = run_tool("quarot-run", out + " -n 20 --simulate");
  ASSERT_EQ(sim.exit_code, 0) << sim.stderr_text;
  EXPECT_EQ(gen.stdout_text, sim.stdout_text);  // the same 20 greedy tokens
  EXPECT_EQ(run_tool("quarot-run", out + " --prompt hi").exit_code, 2);  // --prompt needs --tokenizer
  EXPECT_EQ(run_tool("quarot-run", out + " --ids \"1 9999\"").exit_code, 1);
  EXPECT_EQ(run_tool("quarot-run", model + " --simulate").exit_code, 1);  // not a packed model
}
