// The streaming pipeline (one decoder layer at a time from the memory-mapped input) against the
// whole-model pipeline, both through quarot::run as quarot-quantize runs them: the same packed file, byte for byte, for RTN and GPTQ, rotated or not,
// tied or untied, bf16 shards; the reader's validation; forward_hidden against forward.
// Eigen first: detail/eigen.hpp silences GCC 12 false positives inside it.
#include "quarot/detail/eigen.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/synth.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;
namespace fs = std::filesystem;

namespace {

std::vector<std::vector<int>> calib_windows(int vocab) {
  std::vector<std::vector<int>> c;
  for (int w = 0; w < 3; ++w) {
    std::vector<int> t = {1};
    for (int i = 1; i < 20; ++i) t.push_back(3 + (i * 31 + w * 17) % (vocab - 3));
    c.push_back(t);
  }
  return c;
}

// Counts the quantize stage's progress reports: one per linear as it starts.
struct CountingObserver : Observer {
  uint64_t linears = 0;
  void progress(std::string_view stage, uint64_t, uint64_t, const std::string&) override { linears += stage == "quantize"; }
};

// quarot-quantize's pipeline (quarot::run): whole model in memory, or streamed layer by layer.
void pack(const std::string& in, const PlanOptions& base, bool stream, const std::string& out) {
  PlanOptions o = base;
  o.model = in;
  o.output = out;
  o.report_dir = out + ".report";
  o.stream = stream;
  o.no_checksum = true;
  o.progress = "none";
  CountingObserver seen;
  (void)run(make_plan(o), seen);
  EXPECT_EQ(seen.linears, uint64_t(read_model_config(in).n_layers) * kLinearsPerLayer);
}

}  // namespace

TEST(Stream, ForwardHiddenIsTheDecoderOfForward) {
  SynthSpec s = synth_preset("tiny");
  s.config.vocab = 64;
  const auto m = make_synthetic(s);
  Transformer<float> a(m, 16), b(m, 16);
  std::vector<int> t = {1, 5, 9, 33, 12};
  std::vector<float> la, x, out;
  std::vector<float> hooked;
  a.set_hook([&](HookPoint p, int l, const ActivationView<float>& v) {
    if (p == HookPoint::LayerOutput && l == m.config.n_layers - 1) hooked.assign(v.data, v.data + std::size_t(v.rows) * v.cols);
  });
  a.forward(t, la);
  for (int tok : t) x.insert(x.end(), m.tok_embeddings.row(tok), m.tok_embeddings.row(tok) + m.config.hidden);
  b.forward_hidden(x, out);
  EXPECT_EQ(out, hooked);  // bit for bit
  EXPECT_EQ(b.position(), 5);
  EXPECT_THROW(b.forward_hidden(std::span<const float>(x.data(), 3), out), Error);
}

TEST(Stream, SamePackedFileAsTheWholeModelPipeline) {
  TempDir dir;
  struct Case {
    const char* preset;
    bool rotate;
    bool tied;
  };
  for (const Case k : {Case{"w4a16-rtn", true, false}, Case{"w4a16-rtn", false, true}, Case{"w4a4kv4", true, true}, Case{"w4a4kv4", false, false}}) {
    SynthSpec s = synth_preset("tiny");
    s.seed = 5;
    s.config.vocab = 80;
    s.config.tied_embeddings = k.tied;
    const auto m = make_synthetic(s);
    const std::string in = dir / (std::string("in-") + k.preset + (k.rotate ? "-r" : "") + (k.tied ? "-t" : ""));
    HfWriteOptions o;
    o.dtype = DType::BF16;
    o.max_shard_bytes = 40000;  // several shards
    save_hf(m, in, o);
    ASSERT_TRUE(fs::exists(fs::path(in) / "model.safetensors.index.json"));
    PlanOptions plan;
    plan.preset = k.preset;
    plan.no_rotate = !k.rotate;
    plan.w_group = 0;
    plan.nsamples = 3;
    plan.seqlen = 20;  // the windows as they are
    plan.calib = dir / "calib.ids";
    std::string ids;
    for (const auto& w : calib_windows(s.config.vocab)) {
      for (int t : w) ids += std::to_string(t) + " ";
      ids += "\n";
    }
    write_file_atomic(plan.calib, ids);
    const std::string a = dir / "whole.q4.safetensors", b = dir / "stream.q4.safetensors";
    pack(in, plan, false, a);
    pack(in, plan, true, b);
    EXPECT_TRUE(read_bytes(a) == read_bytes(b)) << k.preset << " rotate " << k.rotate << " tied " << k.tied;
  }
}

TEST(Stream, ReaderValidatesLikeTheLoader) {
  TempDir dir;
  SynthSpec s = synth_preset("tiny");
  s.config.vocab = 64;
  const auto m = make_synthetic(s);
  const std::string in = dir / "m";
  save_hf(m, in);
  const CheckpointReader r(in);
  EXPECT_EQ(r.config().n_layers, m.config.n_layers);
  const auto L = r.layer(1);
  EXPECT_TRUE(L.w_down.data == m.layers[1].w_down.data);
  EXPECT_EQ(L.attn_norm, m.layers[1].attn_norm);
  const auto f = r.float_parts();
  EXPECT_TRUE(f.tok_embeddings.data == m.tok_embeddings.data);
  EXPECT_TRUE(f.layers[0].wq.data.empty());
  EXPECT_EQ(f.layers[0].wq.rows, m.layers[0].wq.rows);
  EXPECT_THROW(r.layer(m.config.n_layers), Error);
  EXPECT_THROW(CheckpointReader(dir / "missing"), Error);
  // A tensor missing from the file is reported when opening, naming it.
  auto cut = m;
  cut.config.n_layers = 1;
  cut.layers.resize(1);
  save_hf(cut, dir / "cut");
  write_bytes(dir / "cut/config.json", read_bytes(dir / "m/config.json"));  // claims more layers than the file has
  try {
    CheckpointReader bad(dir / "cut");
    FAIL() << "missing tensors not caught";
  } catch (const Error& e) {
    // The whole of layer 1 is absent: named as the config field that claims it.
    EXPECT_NE(std::string(e.what()).find("'num_hidden_layers' = 2, but the safetensors files hold no tensor of layer 1"),
              std::string::npos)
        << e.what();
  }
  // The shapes table matches the allocated model's tensors.
  std::vector<std::pair<std::string, std::vector<int64_t>>> seen;
  for_each_tensor(m, [&](const TensorRef& t) { seen.push_back({t.name, t.shape}); });
  EXPECT_EQ(seen, tensor_shapes(m.config));
}

// GPTQ's Hessians come from calibration activations carried layer to layer; the reference
// recomputes them with the whole model from the embeddings for every group (the original
// implementation). Same quantized weights, bit for bit.
TEST(Stream, CarriedActivationsGiveTheSameGptqAsWholeModelForwards) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 9;
  s.config.vocab = 72;
  auto m = make_synthetic(s);
  auto cfg = plan_preset("w4a4kv4").quant;
  cfg.gptq.weights.group_size = 0;
  const auto online = rotate_model(m, cfg.rotation);
  const auto calib = calib_windows(s.config.vocab);
  auto ref = m;
  quantize_weights(m, online, cfg, calib);
  // The reference, module group by module group as GPTQ's reference code does.
  for (int l = 0; l < ref.config.n_layers; ++l)
    for (const auto& [point, mods] : linear_input_groups()) {
      const int width = int((ref.layers[std::size_t(l)].*linear_member(mods[0])).cols);
      using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
      MatD hm = MatD::Zero(width, width);
      double tokens = 0;
      Transformer<float> model(ref, 32);
      ForwardHook<float> collect = [&](HookPoint p, int layer, const ActivationView<float>& v) {
        if (layer != l || p != point) return;
        const MatD x = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(v.data, v.rows, v.cols)
                           .cast<double>();
        hm.noalias() += x.transpose() * x;
        tokens += v.rows;
      };
      model.set_hook(online_hook<float>(online, collect));
      model.set_stop_after(l, point);
      std::vector<float> logits;
      for (const auto& w : calib) {
        model.reset();
        model.forward(w, logits);
      }
      hm *= 2.0 / tokens;
      const std::vector<double> h(hm.data(), hm.data() + hm.size());
      for (LinearModule mod : mods) {
        Matrix& w = ref.layers[std::size_t(l)].*linear_member(mod);
        const auto r = gptq_quantize(w.data.data(), w.rows, w.cols, h, cfg.gptq);
        std::copy(r.q.dequantized.begin(), r.q.dequantized.end(), w.data.begin());
      }
    }
  std::size_t differ = 0, total = 0;
  for (int l = 0; l < m.config.n_layers; ++l)
    for (LinearModule mod : kLinearModules) {
      const auto& a = (m.layers[std::size_t(l)].*linear_member(mod)).data;
      const auto& b = (ref.layers[std::size_t(l)].*linear_member(mod)).data;
      for (std::size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
      total += a.size();
    }
  EXPECT_EQ(differ, 0u) << " of " << total;
}

TEST(StreamCli, QuantizeStreamWritesTheSameFile) {
  TempDir dir;
  SynthSpec s = synth_preset("tiny");
  s.config.vocab = 64;
  HfWriteOptions o;
  o.dtype = DType::BF16;
  o.max_shard_bytes = 50000;
  save_hf(make_synthetic(s), dir / "m", o);
  const std::string in = dir / "m";
  const auto a = run_tool("quarot-quantize", in + " --preset w4a4kv4-rtn --w-group 0 -o " + std::string(dir / "a/m.q4.safetensors") + " --progress none");
  ASSERT_EQ(a.exit_code, 0) << a.stderr_text;
  const auto b = run_tool("quarot-quantize", in + " --stream --preset w4a4kv4-rtn --w-group 0 -o " + std::string(dir / "b/m.q4.safetensors") +
                                                 " --progress none");
  ASSERT_EQ(b.exit_code, 0) << b.stderr_text;
  EXPECT_TRUE(read_bytes(dir / "a/m.q4.safetensors") == read_bytes(dir / "b/m.q4.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "b/m.q4.safetensors.report/report.json"));
  EXPECT_EQ(run_tool("quarot-quantize", in + " --stream --w-method none").exit_code, 2);
}

// The generator's scratch holds one tensor: every call gets the same buffer (a buffer per tensor
// of a shard, or of the single file, held a whole 7B model in memory), and the files are the ones
// save_hf writes from the whole model, sharded and in one file.
TEST(Stream, SyntheticModelsWrittenTensorByTensorAreTheSameFiles) {
  TempDir dir;
  SynthSpec s = synth_preset("qwen2-small");  // biases, tied embeddings
  s.config.n_layers = 2;
  s.config.vocab = 300;
  s.config.bos_id = 1;
  s.config.eos_id = 2;
  s.seed = 4;
  HfWriteOptions o;
  o.dtype = DType::BF16;
  o.max_shard_bytes = 1 << 20;
  const auto planted = planted_outliers(s);
  auto cfg = s.config;
  cfg.rope_layout = RopeLayout::Half;
  const auto shapes = tensor_shapes(cfg);
  const ModelWeights whole = make_synthetic(s);
  for (const uint64_t shard_bytes : {uint64_t(1) << 20, uint64_t(0)}) {
    SCOPED_TRACE(shard_bytes);
    o.max_shard_bytes = shard_bytes;
    const fs::path a = dir / ("whole" + std::to_string(shard_bytes)), b = dir / ("streamed" + std::to_string(shard_bytes));
    save_hf(whole, a, o);
    std::set<const FloatBuffer*> scratches;
    std::size_t calls = 0;
    save_hf_tensors(cfg, {}, b, o, [&](const std::string& name, FloatBuffer& scratch) {
      scratches.insert(&scratch);
      ++calls;
      for (const auto& [n, shape] : shapes)
        if (n == name) {
          scratch.assign(std::size_t(shape.size() == 2 ? shape[0] * shape[1] : shape[0]), 0.f);
          synthetic_tensor(s, planted, name, shape, scratch);
        }
      return std::span<const float>(scratch);
    });
    EXPECT_EQ(calls, shapes.size());
    EXPECT_EQ(scratches.size(), 1u) << "one scratch buffer for the whole write";
    std::size_t files = 0;
    for (const auto& e : fs::directory_iterator(a)) {
      ++files;
      EXPECT_TRUE(read_bytes(e.path()) == read_bytes(b / e.path().filename())) << e.path();
    }
    EXPECT_GT(files, shard_bytes ? 3u : 1u);  // config, index, shards / config, model.safetensors
  }
}
