// GGUF export: the block quantizers against hand-computed blocks and grid properties, GPTQ onto
// the blocks bit for bit, and whole files read back with a small reader written here (header,
// key/values, tensor infos, offsets, alignment), independent of the writer.
#include <gtest/gtest.h>

#include <dlfcn.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <tuple>
#include <map>
#include <random>

#include "quarot/checkpoint.hpp"
#include "quarot/dtype.hpp"
#include "quarot/error.hpp"
#include "quarot/forward.hpp"
#include "quarot/gguf.hpp"
#include "quarot/gguf_reader.hpp"
#include "quarot/mapped_file.hpp"
#include "quarot/hf_tokenizer.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/synth.hpp"
#include "quarot/tokenizer.hpp"
#include "llama_cpp_client.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using namespace quarot;
using quarot::test::data_file;

namespace {

// ---------------------------------------------------------------- a test-local GGUF reader

struct KvValue {
  uint32_t type = 0;
  double number = 0;  // scalars
  std::string text;   // strings
  std::vector<std::string> strings;
  std::vector<double> numbers;
};
struct TensorInfo {
  std::vector<uint64_t> dims;
  uint32_t type = 0;
  uint64_t offset = 0;
};
struct ParsedGguf {
  uint32_t version = 0;
  std::map<std::string, KvValue> kv;
  std::vector<std::string> order;
  std::map<std::string, TensorInfo> tensors;
  std::size_t data_start = 0;
  std::vector<uint8_t> bytes;
  const uint8_t* data(const std::string& name) const { return bytes.data() + data_start + tensors.at(name).offset; }
};

struct Cursor {
  const std::vector<uint8_t>& b;
  std::size_t at = 0;
  template <class T>
  T get() {
    if (at + sizeof(T) > b.size()) throw std::runtime_error("truncated");
    T v;
    std::memcpy(&v, b.data() + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  std::string str() {
    const auto n = get<uint64_t>();
    if (at + n > b.size()) throw std::runtime_error("truncated string");
    std::string s(reinterpret_cast<const char*>(b.data() + at), n);
    at += n;
    return s;
  }
  double scalar(uint32_t t) {
    switch (t) {
      case 0: return get<uint8_t>();
      case 1: return get<int8_t>();
      case 2: return get<uint16_t>();
      case 3: return get<int16_t>();
      case 4: return get<uint32_t>();
      case 5: return get<int32_t>();
      case 6: return get<float>();
      case 7: return get<uint8_t>();
      case 10: return double(get<uint64_t>());
      case 11: return double(get<int64_t>());
      case 12: return get<double>();
    }
    throw std::runtime_error("bad type " + std::to_string(t));
  }
};

ParsedGguf parse_gguf(const std::string& path) {
  ParsedGguf g;
  g.bytes = quarot::test::read_bytes(path);
  Cursor c{g.bytes};
  EXPECT_EQ(c.get<uint32_t>(), 0x46554747u);  // "GGUF"
  g.version = c.get<uint32_t>();
  const auto n_tensors = c.get<uint64_t>();
  const auto n_kv = c.get<uint64_t>();
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = c.str();
    KvValue v;
    v.type = c.get<uint32_t>();
    if (v.type == 8) {
      v.text = c.str();
    } else if (v.type == 9) {
      const auto et = c.get<uint32_t>();
      const auto n = c.get<uint64_t>();
      for (uint64_t j = 0; j < n; ++j) {
        if (et == 8) v.strings.push_back(c.str());
        else v.numbers.push_back(c.scalar(et));
      }
    } else {
      v.number = c.scalar(v.type);
    }
    EXPECT_EQ(g.kv.count(key), 0u) << "duplicate key " << key;
    g.kv[key] = v;
    g.order.push_back(key);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const std::string name = c.str();
    TensorInfo t;
    const auto nd = c.get<uint32_t>();
    for (uint32_t d = 0; d < nd; ++d) t.dims.push_back(c.get<uint64_t>());
    t.type = c.get<uint32_t>();
    t.offset = c.get<uint64_t>();
    g.tensors[name] = t;
  }
  uint32_t alignment = 32;
  if (g.kv.count("general.alignment")) alignment = uint32_t(g.kv["general.alignment"].number);
  g.data_start = (c.at + alignment - 1) / alignment * alignment;
  for (std::size_t i = c.at; i < g.data_start; ++i) EXPECT_EQ(g.bytes[i], 0) << "padding byte " << i;
  return g;
}

std::vector<float> dequantize_tensor(const ParsedGguf& g, const std::string& name) {
  const auto& t = g.tensors.at(name);
  int64_t n = 1;
  for (auto d : t.dims) n *= int64_t(d);
  std::vector<float> out(static_cast<std::size_t>(n));
  gguf_dequantize_row(GgufType(t.type), g.data(name), out.data(), n);
  return out;
}

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("quarot_gguf_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::vector<float> logits_of(const ModelWeights& m, const std::vector<int>& ids) {
  Transformer<float> t(m, int(ids.size()));
  std::vector<float> logits;
  t.forward(ids, logits);
  return logits;
}

}  // namespace

// ---------------------------------------------------------------- block quantizers

TEST(GgufQuants, Q4_0HandComputedBlock) {
  float x[32];
  for (int j = 0; j < 32; ++j) x[j] = float(j - 16);  // -16 .. 15: max |x| at -16 -> d = -16 / -8 = 2
  uint8_t y[18];
  quantize_row_q4_0_ref(x, y, 32);
  uint16_t d;
  std::memcpy(&d, y, 2);
  EXPECT_EQ(d, 0x4000);  // fp16 2.0
  // Element j is (j - 16) / 2 + 8.5 truncated: 0 for -16, 8 for 0, min(15, 16) for 15.
  EXPECT_EQ(y[2 + 0], 0x80);   // x[0] = -16 -> 0, x[16] = 0 -> 8
  EXPECT_EQ(y[2 + 1], 0x91);   // x[1] = -15 -> -7.5 + 8.5 = 1; x[17] = 1 -> 0.5 + 8.5 = 9
  EXPECT_EQ(y[2 + 15] >> 4, 15);  // x[31] = 15 -> 16, clamped to 15
  float back[32];
  gguf_dequantize_row(GgufType::Q4_0, y, back, 32);
  EXPECT_EQ(back[0], -16.f);
  EXPECT_EQ(back[16], 0.f);
  EXPECT_EQ(back[31], 14.f);  // the clamp
}

TEST(GgufQuants, Q8_0HandComputedBlock) {
  float x[32] = {};
  x[0] = 127.f;
  x[1] = -63.5f;  // 63.5 rounds half away from zero (roundf) to -64
  x[2] = 0.49f;
  uint8_t y[34];
  quantize_row_q8_0_ref(x, y, 32);
  uint16_t d;
  std::memcpy(&d, y, 2);
  EXPECT_EQ(d, 0x3C00);  // fp16 1.0
  EXPECT_EQ(int8_t(y[2]), 127);
  EXPECT_EQ(int8_t(y[3]), -64);
  EXPECT_EQ(int8_t(y[4]), 0);
}

TEST(GgufQuants, ExactGridValuesRoundTrip) {
  std::mt19937 rng(7);
  // Values already on each type's grid come back exactly.
  for (int trial = 0; trial < 20; ++trial) {
    float x[32];
    const float d = std::ldexp(1.f, int(rng() % 8) - 4);
    // Q4_0: codes 0..15 around 8, with the most negative present (it sets d).
    for (int j = 0; j < 32; ++j) x[j] = float(int(rng() % 16) - 8) * d;
    x[int(rng() % 32)] = -8 * d;
    uint8_t y[34];
    float back[32];
    quantize_row_q4_0_ref(x, y, 32);
    gguf_dequantize_row(GgufType::Q4_0, y, back, 32);
    for (int j = 0; j < 32; ++j) ASSERT_EQ(back[j], x[j]) << "q4_0 " << j;
    // Q8_0: codes in -127..127 with 127 present.
    for (int j = 0; j < 32; ++j) x[j] = float(int(rng() % 255) - 127) * d;
    x[int(rng() % 32)] = 127 * d;
    quantize_row_q8_0_ref(x, y, 32);
    gguf_dequantize_row(GgufType::Q8_0, y, back, 32);
    for (int j = 0; j < 32; ++j) ASSERT_EQ(back[j], x[j]) << "q8_0 " << j;
    // Q4_1: codes 0..15 above a minimum, both ends present.
    const float m = -3 * d;
    for (int j = 0; j < 32; ++j) x[j] = float(rng() % 16) * d + m;
    x[0] = m;
    x[1] = 15 * d + m;
    quantize_row_q4_1_ref(x, y, 32);
    gguf_dequantize_row(GgufType::Q4_1, y, back, 32);
    for (int j = 0; j < 32; ++j) ASSERT_EQ(back[j], x[j]) << "q4_1 " << j;
    // IQ4_NL: table levels times d, -127 d present.
    for (int j = 0; j < 32; ++j) x[j] = float(kIq4nlLevels[rng() % 16]) * d;
    x[int(rng() % 32)] = -127 * d;
    quantize_row_iq4_nl_ref(x, y, 32);
    gguf_dequantize_row(GgufType::IQ4_NL, y, back, 32);
    for (int j = 0; j < 32; ++j) ASSERT_EQ(back[j], x[j]) << "iq4_nl " << j;
  }
}

TEST(GgufQuants, KQuantsErrorBoundedByTheirStep) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x(512);
  for (auto& v : x) v = g(rng);
  for (GgufType t : {GgufType::Q4_K, GgufType::Q6_K}) {
    std::vector<uint8_t> y(gguf_row_bytes(t, 512));
    std::vector<float> back(512);
    gguf_quantize_row(t, x.data(), y.data(), 512);
    gguf_dequantize_row(t, y.data(), back.data(), 512);
    double err = 0, norm = 0;
    for (int i = 0; i < 512; ++i) {
      err += (x[std::size_t(i)] - back[std::size_t(i)]) * (x[std::size_t(i)] - back[std::size_t(i)]);
      norm += x[std::size_t(i)] * x[std::size_t(i)];
    }
    // 4 bits: ~ 1/15 of a sub-block's range; 6 bits: ~ 1/63.
    EXPECT_LT(std::sqrt(err / norm), t == GgufType::Q4_K ? 0.12 : 0.03) << gguf_type_name(t);
    EXPECT_GT(std::sqrt(err / norm), 0.0) << gguf_type_name(t);
  }
}

TEST(GgufQuants, IqSearchBeatsTheReferenceScale) {
  // quantize_iq4_nl's scale search (llama-quantize's path) never loses to the ref's single scale
  // in its own weighted error (weights x^2).
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x(32 * 64);
  for (auto& v : x) v = g(rng);
  std::vector<uint8_t> a(gguf_row_bytes(GgufType::IQ4_NL, int64_t(x.size()))), b(a.size());
  quantize_row_iq4_nl_ref(x.data(), a.data(), int64_t(x.size()));
  quantize_row_iq4_nl(x.data(), b.data(), int64_t(x.size()));
  std::vector<float> da(x.size()), db(x.size());
  gguf_dequantize_row(GgufType::IQ4_NL, a.data(), da.data(), int64_t(x.size()));
  gguf_dequantize_row(GgufType::IQ4_NL, b.data(), db.data(), int64_t(x.size()));
  double ea = 0, eb = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    ea += double(x[i]) * x[i] * (x[i] - da[i]) * (x[i] - da[i]);
    eb += double(x[i]) * x[i] * (x[i] - db[i]) * (x[i] - db[i]);
  }
  EXPECT_LT(eb, ea);
}

TEST(GgufQuants, BlockGridLevelsAreWhatLlamaCppDequantizes) {
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.f, 1.f);
  const int64_t cols = 512;
  std::vector<float> row(static_cast<std::size_t>(cols));
  for (auto& v : row) v = g(rng);
  for (GgufType t : {GgufType::Q4_0, GgufType::Q4_1, GgufType::Q5_0, GgufType::Q8_0, GgufType::IQ4_NL, GgufType::Q4_K, GgufType::Q6_K})
    for (bool clip : {false, true}) {
      const BlockGridRow grid(t, row.data(), cols, clip);
      std::vector<int> codes(static_cast<std::size_t>(cols));
      std::vector<float> levels(static_cast<std::size_t>(cols));
      for (int64_t j = 0; j < cols; ++j) levels[std::size_t(j)] = grid.round(j, row[std::size_t(j)] * 1.1f, &codes[std::size_t(j)]);
      std::vector<uint8_t> y(gguf_row_bytes(t, cols));
      grid.encode(codes.data(), y.data());
      std::vector<float> back(static_cast<std::size_t>(cols));
      gguf_dequantize_row(t, y.data(), back.data(), cols);
      for (int64_t j = 0; j < cols; ++j) ASSERT_EQ(back[std::size_t(j)], levels[std::size_t(j)]) << gguf_type_name(t) << " col " << j;
      // Without clip search the grid's scales are the reference quantizer's; the codes may differ
      // by one where ggml rounds with the unrounded scale (x / d before fp16) and the grid with
      // the stored one.
      if (!clip && t == GgufType::Q8_0) {
        std::vector<uint8_t> ref(y.size());
        gguf_quantize_row(t, row.data(), ref.data(), cols);
        for (int64_t j = 0; j < cols; ++j) grid.round(j, row[std::size_t(j)], &codes[std::size_t(j)]);
        grid.encode(codes.data(), y.data());
        for (int64_t b = 0; b < cols / 32; ++b) {
          EXPECT_EQ(std::memcmp(&y[std::size_t(b) * 34], &ref[std::size_t(b) * 34], 2), 0) << "scale of block " << b;
          for (int j = 0; j < 32; ++j)
            EXPECT_LE(std::abs(int(int8_t(y[std::size_t(b) * 34 + 2 + std::size_t(j)])) - int8_t(ref[std::size_t(b) * 34 + 2 + std::size_t(j)])), 1);
        }
      }
    }
}

// With an importance per column, each block's scale is chosen for the weighted error: on the
// uniform types the clip search's own measure (sum imp_j |q_j - x_j|^2.4 over the same 80
// candidates) is never worse than the unweighted choice's and better on some blocks; on IQ4_NL
// the weighted least-squares error of ggml's quant_weights rule goes down in total. Levels stay
// what llama.cpp dequantizes (the encoded blocks are checked like the unweighted ones above).
TEST(GgufQuants, ImportanceWeightsTheBlockScales) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.f, 1.f);
  const int64_t cols = 1024;
  std::vector<float> row(static_cast<std::size_t>(cols)), imp(static_cast<std::size_t>(cols));
  for (auto& v : row) v = g(rng);
  for (int64_t j = 0; j < cols; ++j) imp[std::size_t(j)] = j % 7 == 0 ? 50.f : 0.1f + 0.01f * float(j % 5);  // a few loud inputs
  auto weighted = [&](const BlockGridRow& grid, int64_t b, double power) {
    double e = 0;
    int code = 0;
    for (int64_t j = b * 32; j < b * 32 + 32; ++j)
      e += imp[std::size_t(j)] * std::pow(std::fabs(double(grid.round(j, row[std::size_t(j)], &code)) - row[std::size_t(j)]), power);
    return e;
  };
  for (GgufType t : {GgufType::Q4_0, GgufType::Q4_1, GgufType::Q5_0, GgufType::Q8_0, GgufType::IQ4_NL}) {
    const bool uniform = t != GgufType::IQ4_NL;
    const BlockGridRow plain(t, row.data(), cols, true), weighted_grid(t, row.data(), cols, true, imp.data());
    double e_plain = 0, e_weighted = 0;
    int better = 0;
    for (int64_t b = 0; b < cols / 32; ++b) {
      const double p = weighted(plain, b, uniform ? 2.4 : 2.0), w = weighted(weighted_grid, b, uniform ? 2.4 : 2.0);
      if (uniform) {
        EXPECT_LE(w, p * (1 + 1e-12)) << gguf_type_name(t) << " block " << b;
      }
      better += w < p * (1 - 1e-9);
      e_plain += p, e_weighted += w;
    }
    EXPECT_GT(better, 0) << gguf_type_name(t);
    EXPECT_LT(e_weighted, e_plain) << gguf_type_name(t);
    std::vector<int> codes(static_cast<std::size_t>(cols));
    std::vector<float> levels(static_cast<std::size_t>(cols)), back(static_cast<std::size_t>(cols));
    for (int64_t j = 0; j < cols; ++j) levels[std::size_t(j)] = weighted_grid.round(j, row[std::size_t(j)], &codes[std::size_t(j)]);
    std::vector<uint8_t> y(gguf_row_bytes(t, cols));
    weighted_grid.encode(codes.data(), y.data());
    gguf_dequantize_row(t, y.data(), back.data(), cols);
    for (int64_t j = 0; j < cols; ++j) ASSERT_EQ(back[std::size_t(j)], levels[std::size_t(j)]) << gguf_type_name(t) << " col " << j;
  }
}

TEST(GgufQuants, GptqOntoQ4_0BlocksIsBitExact) {
  std::mt19937 rng(2);
  std::normal_distribution<float> g(0.f, 1.f);
  const int64_t rows = 24, cols = 96, n = 400;
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (auto& v : w) v = g(rng);
  std::vector<double> h(std::size_t(cols * cols), 0.0);
  std::vector<double> xrow(static_cast<std::size_t>(cols));
  for (int64_t s = 0; s < n; ++s) {
    for (auto& v : xrow) v = g(rng) * (1 + 0.1 * double(&v - xrow.data()) / double(cols));
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) h[std::size_t(i * cols + j)] += 2.0 / n * xrow[std::size_t(i)] * xrow[std::size_t(j)];
  }
  for (GgufType t : {GgufType::Q4_0, GgufType::IQ4_NL, GgufType::Q4_1}) {
    std::vector<BlockGridRow> grids;
    for (int64_t r = 0; r < rows; ++r) grids.emplace_back(t, w.data() + r * cols, cols, true);
    GptqOptions o;
    o.act_order = true;
    const auto res = gptq_quantize_onto(w.data(), rows, cols, h, o, [&](int64_t r, int64_t c, double x, int* code) {
      return double(grids[std::size_t(r)].round(c, float(x), code));
    });
    const std::size_t rb = gguf_row_bytes(t, cols);
    std::vector<uint8_t> y(rb);
    std::vector<float> back(static_cast<std::size_t>(cols));
    std::vector<int> codes(static_cast<std::size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < cols; ++j) codes[std::size_t(j)] = res.q.codes[std::size_t(r * cols + j)];
      grids[std::size_t(r)].encode(codes.data(), y.data());
      gguf_dequantize_row(t, y.data(), back.data(), cols);
      for (int64_t j = 0; j < cols; ++j)
        ASSERT_EQ(back[std::size_t(j)], res.q.dequantized[std::size_t(r * cols + j)]) << gguf_type_name(t) << " " << r << "," << j;
    }
    // And GPTQ does better than rounding onto the same grid in the Hessian's norm.
    double e_gptq = 0, e_rtn = 0;
    std::vector<double> dg(static_cast<std::size_t>(cols)), dr(static_cast<std::size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < cols; ++j) {
        int code;
        dg[std::size_t(j)] = double(w[std::size_t(r * cols + j)]) - res.q.dequantized[std::size_t(r * cols + j)];
        dr[std::size_t(j)] = double(w[std::size_t(r * cols + j)]) - grids[std::size_t(r)].round(j, w[std::size_t(r * cols + j)], &code);
      }
      for (int64_t i = 0; i < cols; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          e_gptq += dg[std::size_t(i)] * h[std::size_t(i * cols + j)] * dg[std::size_t(j)];
          e_rtn += dr[std::size_t(i)] * h[std::size_t(i * cols + j)] * dr[std::size_t(j)];
        }
    }
    EXPECT_LT(e_gptq, e_rtn) << gguf_type_name(t);
  }
}

// ---------------------------------------------------------------- options

TEST(GgufOptions, PresetsAndOnlineTransformsRefused) {
  for (const auto& name : plan_preset_names()) {
    if (plan_preset(name).gguf) {
      EXPECT_NO_THROW(validate_gguf_options(plan_preset(name).gguf.value())) << name;
    }
  }
  EXPECT_NE(quarot::test::error_of([] { (void)plan_preset("gguf-q3"); }).find("gguf-q4_0"), std::string::npos);
  auto o = plan_preset("gguf-q4_0").gguf.value();
  o.rotation.r4 = true;
  EXPECT_NE(quarot::test::error_of([&] { validate_gguf_options(o); }).find("R4"), std::string::npos);
  o = plan_preset("gguf-q4_0").gguf.value();
  o.rotation.r3 = true;
  EXPECT_NE(quarot::test::error_of([&] { validate_gguf_options(o); }).find("R3"), std::string::npos);
  o = plan_preset("gguf-q4_0").gguf.value();
  o.rotation.r2_online_cross_head = true;
  EXPECT_NE(quarot::test::error_of([&] { validate_gguf_options(o); }).find("cross-head"), std::string::npos);
}

// ---------------------------------------------------------------- whole files

TEST(GgufExport, Stories260KFloatReadsBack) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  ModelWeights m = load_llama2c(data_file("stories260K/stories260K.bin"));
  const ModelWeights original = load_llama2c(data_file("stories260K/stories260K.bin"));
  const auto tok = load_tokenizer(data_file("stories260K/tok512.bin"));
  const std::string path = temp_path("f32.gguf");
  const auto rep = export_gguf(m, tok.get(), plan_preset("gguf-f32").gguf.value(), {}, path);
  const auto g = parse_gguf(path);
  EXPECT_EQ(g.version, 3u);
  EXPECT_EQ(g.kv.at("general.architecture").text, "llama");
  EXPECT_EQ(g.kv.at("general.file_type").number, 0);
  const auto& c = original.config;
  EXPECT_EQ(g.kv.at("llama.embedding_length").number, c.hidden);
  EXPECT_EQ(g.kv.at("llama.block_count").number, c.n_layers);
  EXPECT_EQ(g.kv.at("llama.feed_forward_length").number, c.intermediate);  // float: not padded
  EXPECT_EQ(g.kv.at("llama.attention.head_count").number, c.n_heads);
  EXPECT_EQ(g.kv.at("llama.attention.head_count_kv").number, c.n_kv_heads);
  EXPECT_EQ(g.kv.at("llama.rope.dimension_count").number, c.head_dim);
  EXPECT_EQ(g.kv.at("llama.context_length").number, c.max_positions);
  EXPECT_EQ(float(g.kv.at("llama.attention.layer_norm_rms_epsilon").number), float(c.rms_eps));
  EXPECT_EQ(g.kv.at("tokenizer.ggml.model").text, "llama");
  ASSERT_EQ(g.kv.at("tokenizer.ggml.tokens").strings.size(), 512u);
  EXPECT_EQ(g.kv.at("tokenizer.ggml.tokens").strings[1], "<s>");
  EXPECT_EQ(g.kv.at("tokenizer.ggml.tokens").strings[259], "\xe2\x96\x81t");  // " t" with U+2581
  EXPECT_EQ(g.kv.at("tokenizer.ggml.token_type").numbers[0], 2);
  EXPECT_EQ(g.kv.at("tokenizer.ggml.token_type").numbers[2], 3);
  EXPECT_EQ(g.kv.at("tokenizer.ggml.token_type").numbers[3], 6);
  EXPECT_EQ(g.kv.at("tokenizer.ggml.scores").numbers.size(), 512u);
  EXPECT_EQ(g.kv.at("quantize.tool").text, "quarot");
  // Tensors: names, GGUF dims order (ne[0] = columns), offsets aligned, values equal.
  EXPECT_EQ(g.tensors.size(), rep.tensors.size());
  const int64_t expect_tensors = 1 + int64_t(c.n_layers) * 9 + 1 + (c.tied_embeddings ? 0 : 1);
  EXPECT_EQ(int64_t(g.tensors.size()), expect_tensors);
  for (const auto& [name, t] : g.tensors) {
    EXPECT_EQ(t.offset % 32, 0u) << name;
    EXPECT_EQ(t.type, 0u) << name;
  }
  EXPECT_EQ(g.data_start % 32, 0u);
  EXPECT_EQ(g.tensors.at("token_embd.weight").dims, (std::vector<uint64_t>{uint64_t(c.hidden), uint64_t(c.vocab)}));
  EXPECT_EQ(g.tensors.at("blk.0.ffn_down.weight").dims, (std::vector<uint64_t>{uint64_t(c.intermediate), uint64_t(c.hidden)}));
  EXPECT_EQ(g.tensors.at("blk.0.attn_k.weight").dims, (std::vector<uint64_t>{uint64_t(c.hidden), uint64_t(c.kv_dim())}));
  EXPECT_EQ(std::memcmp(g.data("token_embd.weight"), original.tok_embeddings.data.data(), original.tok_embeddings.data.size() * 4), 0);
  // llama2.c rows are already interleaved: q is written as loaded.
  const auto& wq = original.layers[1].wq;
  EXPECT_EQ(std::memcmp(g.data("blk.1.attn_q.weight"), wq.data.data(), wq.data.size() * 4), 0);
  const auto& wd = original.layers[2].w_down;
  EXPECT_EQ(std::memcmp(g.data("blk.2.ffn_down.weight"), wd.data.data(), wd.data.size() * 4), 0);
  EXPECT_EQ(std::memcmp(g.data("output_norm.weight"), original.final_norm.data(), original.final_norm.size() * 4), 0);
  EXPECT_EQ(rep.file_bytes, g.bytes.size());
  // Deterministic bytes.
  ModelWeights again = load_llama2c(data_file("stories260K/stories260K.bin"));
  const std::string path2 = temp_path("f32b.gguf");
  export_gguf(again, tok.get(), plan_preset("gguf-f32").gguf.value(), {}, path2);
  EXPECT_EQ(quarot::test::read_bytes(path2), g.bytes);
  fs::remove(path);
  fs::remove(path2);
}

TEST(GgufExport, PaddingIsExact) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  ModelWeights m = load_llama2c(data_file("stories260K/stories260K.bin"));
  ASSERT_NE(m.config.intermediate % 32, 0);
  const std::vector<int> ids = {1, 403, 407, 261, 378, 324, 270, 301, 286, 263, 340, 275};
  const auto before = logits_of(m, ids);
  const int old = pad_intermediate(m, 32);
  EXPECT_EQ(old, 172);
  EXPECT_EQ(m.config.intermediate, 192);
  const auto after = logits_of(m, ids);
  ASSERT_EQ(before.size(), after.size());
  for (std::size_t i = 0; i < before.size(); ++i) ASSERT_NEAR(after[i], before[i], 1e-5 * (1 + std::fabs(before[i]))) << i;
}

TEST(GgufExport, QuantizedExportsDequantizeToTheModel) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const auto tok = load_tokenizer(data_file("stories260K/tok512.bin"));
  const auto calib_ids = read_ids_file(data_file("stories260K/calib-t1-seed42.ids"), 512);
  const auto calib = calibration_windows(calib_ids, 16, 128, 0, "calib");
  for (const std::string preset : {"gguf-q4_0", "gguf-q8_0", "gguf-q4_k_m"}) {
    ModelWeights m = load_llama2c(data_file("stories260K/stories260K.bin"));
    const std::string path = temp_path(preset + ".gguf");
    const auto opts = plan_preset(preset).gguf.value();
    const auto rep = export_gguf(m, tok.get(), opts, calib, path);
    const auto g = parse_gguf(path);
    // Padded FFN (172 -> 192) so that every linear takes a 32-block type.
    EXPECT_EQ(g.kv.at("llama.feed_forward_length").number, 192) << preset;
    EXPECT_EQ(rep.padded_intermediate, 192) << preset;
    for (int l = 0; l < m.config.n_layers; ++l) {
      const auto& L = m.layers[std::size_t(l)];
      const std::string blk = "blk." + std::to_string(l) + ".";
      const std::pair<const char*, const Matrix*> linears[] = {{"attn_q", &L.wq}, {"attn_k", &L.wk}, {"attn_v", &L.wv}, {"attn_output", &L.wo},
                                                               {"ffn_gate", &L.w_gate}, {"ffn_up", &L.w_up}, {"ffn_down", &L.w_down}};
      for (const auto& [name, w] : linears) {
        const auto& t = g.tensors.at(blk + name + ".weight");
        if (preset != "gguf-q4_k_m") {
          EXPECT_EQ(t.type, uint32_t(opts.type)) << preset << " " << name;
        }
        const auto back = dequantize_tensor(g, blk + name + ".weight");
        ASSERT_EQ(back.size(), w->data.size());
        // What llama.cpp dequantizes is, bit for bit, what GPTQ (or RTN) optimized.
        for (std::size_t i = 0; i < back.size(); ++i) ASSERT_EQ(back[i], w->data[i]) << preset << " " << blk << name << " " << i;
      }
    }
    const auto embd = dequantize_tensor(g, "token_embd.weight");
    for (std::size_t i = 0; i < embd.size(); ++i) ASSERT_EQ(embd[i], m.tok_embeddings.data[i]) << preset;
    // The untied classifier too (GPTQ onto its blocks where the linears are GPTQ'd).
    const auto cls = dequantize_tensor(g, "output.weight");
    ASSERT_EQ(cls.size(), m.lm_head.data.size());
    for (std::size_t i = 0; i < cls.size(); ++i) ASSERT_EQ(cls[i], m.lm_head.data[i]) << preset << " output.weight " << i;
    if (preset == "gguf-q4_k_m") {
      // Width 64: no 256-block fits, every k-quant falls back as llama-quantize does (reported).
      EXPECT_FALSE(rep.fallbacks.empty());
      EXPECT_EQ(g.tensors.at("blk.0.attn_q.weight").type, uint32_t(GgufType::Q5_0));
      // use_more_bits for 5 layers: layers 2 and 4 get Q6_K on attn_v/ffn_down, which falls back to Q8_0.
      EXPECT_EQ(g.tensors.at("blk.0.attn_v.weight").type, uint32_t(GgufType::Q5_0));
      EXPECT_EQ(g.tensors.at("blk.2.attn_v.weight").type, uint32_t(GgufType::Q8_0));
      EXPECT_EQ(g.tensors.at("blk.4.ffn_down.weight").type, uint32_t(GgufType::Q8_0));
      EXPECT_EQ(g.tensors.at("blk.1.ffn_down.weight").type, uint32_t(GgufType::Q5_0));
      EXPECT_EQ(g.kv.at("general.file_type").number, 15);
    }
    EXPECT_EQ(g.kv.at("quantize.method").text, preset == "gguf-q8_0" ? "llama-quantize reference rtn" : "gptq") << preset;
    EXPECT_GT(rep.bits_per_weight, 4.0) << preset;
    fs::remove(path);
  }
}

// GPTQ on the classifier minimizes its output error on the calibration tokens: with the decoder
// the same bits in both files, the logits of a GPTQ'd Q4_0 classifier are closer to the float
// classifier's than those of llama-quantize's rounding of it.
TEST(GgufExport, GptqClassifierBeatsRoundingOnItsCalibration) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const auto tok = load_tokenizer(data_file("stories260K/tok512.bin"));
  const auto calib_ids = read_ids_file(data_file("stories260K/calib-t1-seed42.ids"), 512);
  const auto calib = calibration_windows(calib_ids, 8, 64, 0, "calib");
  auto export_with = [&](std::optional<GgufType> out, bool gptq_classifier, GgufExportReport* rep) {
    ModelWeights m = load_llama2c(data_file("stories260K/stories260K.bin"));
    auto o = plan_preset("gguf-q4_0").gguf.value();
    o.output_type = out;
    o.gptq_classifier = gptq_classifier;
    const std::string path = temp_path("cls.gguf");
    *rep = export_gguf(m, tok.get(), o, calib, path);
    fs::remove(path);
    return m;
  };
  GgufExportReport rf, rg, rr;
  const ModelWeights f = export_with(GgufType::F32, true, &rf);
  const ModelWeights g = export_with(GgufType::Q4_0, true, &rg);
  const ModelWeights r = export_with(GgufType::Q4_0, false, &rr);
  auto same = [](const Matrix& a, const Matrix& b) { return std::equal(a.data.begin(), a.data.end(), b.data.begin(), b.data.end()); };
  for (int l = 0; l < f.config.n_layers; ++l) {  // the decoder: the same bits in all three
    ASSERT_TRUE(same(f.layers[std::size_t(l)].w_down, g.layers[std::size_t(l)].w_down)) << l;
    ASSERT_TRUE(same(r.layers[std::size_t(l)].wq, g.layers[std::size_t(l)].wq)) << l;
  }
  ASSERT_FALSE(same(g.lm_head, r.lm_head));
  auto lm_head_stat = [](const GgufExportReport& rep) {
    for (const auto& s : rep.stats)
      if (s.module == "lm_head") return true;
    return false;
  };
  EXPECT_TRUE(lm_head_stat(rg));
  EXPECT_FALSE(lm_head_stat(rr));
  EXPECT_FALSE(lm_head_stat(rf));
  auto logits_error = [&](const ModelWeights& m) {
    Transformer<float> tf(f, 64), tm(m, 64);
    std::vector<float> a, b;
    double e = 0;
    for (const auto& w : calib) {
      tf.reset(), tm.reset();
      tf.forward(w, a), tm.forward(w, b);
      for (std::size_t i = 0; i < a.size(); ++i) e += double(a[i] - b[i]) * double(a[i] - b[i]);
    }
    return e;
  };
  const double eg = logits_error(g), er = logits_error(r);
  EXPECT_LT(eg, 0.8 * er) << "GPTQ " << eg << " vs rounding " << er;
}

// ---------------------------------------------------------------- against the real ggml

// With libggml-base.so (from the @node-llama-cpp/linux-x64 npm
// package), every quantizer is compared byte for byte with ggml's own on gaussian rows with
// outliers, and the dequantizers value for value. Skipped without it.
// ggml's base library: $QUAROT_GGML_BASE, else the one scripts/install-llama-cpp.sh installed
// beside libllama (llama_cpp_client.hpp). Skips when there is none (fails with
// QUAROT_REQUIRE_LLAMA_CPP=1, as CI sets) and in sanitized builds (ggml is not instrumented).
#define QUAROT_GGML_BASE_OR_SKIP(lib)                                                                   \
  if (quarot::test::kSanitizedBuild) GTEST_SKIP() << "ggml's libraries are not instrumented; release only"; \
  std::string lib;                                                                                      \
  if (const char* env = std::getenv("QUAROT_GGML_BASE"); env && *env)                                   \
    lib = env;                                                                                          \
  else                                                                                                  \
    lib = quarot::llama_cpp::default_library_dir() + "/libggml-base.so";                                \
  if (!fs::exists(lib)) {                                                                               \
    if (const char* must = std::getenv("QUAROT_REQUIRE_LLAMA_CPP"); must && std::string(must) == "1")    \
      FAIL() << "no " << lib << " (QUAROT_REQUIRE_LLAMA_CPP=1: run scripts/install-llama-cpp.sh)";       \
    GTEST_SKIP() << "no " << lib << ": run scripts/install-llama-cpp.sh or set QUAROT_GGML_BASE";        \
  }

TEST(GgufQuants, MatchesTheRealGgml) {
  QUAROT_GGML_BASE_OR_SKIP(lib);
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << dlerror();
  using Chunk = std::size_t (*)(int, const float*, void*, int64_t, int64_t, int64_t, const float*);
  using ToFloat = void (*)(const void*, float*, int64_t);
  auto chunk = reinterpret_cast<Chunk>(dlsym(h, "ggml_quantize_chunk"));
  ASSERT_NE(chunk, nullptr);
  std::mt19937 rng(17);
  std::normal_distribution<float> g(0.f, 1.f);
  const int64_t rows = 64, cols = 512;
  std::vector<float> x(static_cast<std::size_t>(rows * cols));
  for (auto& v : x) v = g(rng) * (rng() % 50 == 0 ? 8.f : 1.f);
  for (int64_t j = 0; j < 32; ++j) x[std::size_t(5 * cols + 64 + j)] = 0.f;  // an all-zero block
  const std::pair<GgufType, const char*> types[] = {{GgufType::Q4_0, "dequantize_row_q4_0"}, {GgufType::Q4_1, "dequantize_row_q4_1"},
                                                    {GgufType::Q5_0, "dequantize_row_q5_0"}, {GgufType::Q8_0, "dequantize_row_q8_0"},
                                                    {GgufType::IQ4_NL, "dequantize_row_iq4_nl"}, {GgufType::Q4_K, "dequantize_row_q4_K"},
                                                    {GgufType::Q6_K, "dequantize_row_q6_K"}};
  for (const auto& [t, deq_name] : types) {
    const std::size_t rb = gguf_row_bytes(t, cols);
    std::vector<uint8_t> theirs(rb * std::size_t(rows)), ours(theirs.size());
    chunk(int(t), x.data(), theirs.data(), 0, rows, cols, nullptr);
    for (int64_t r = 0; r < rows; ++r) gguf_quantize_row(t, x.data() + r * cols, ours.data() + std::size_t(r) * rb, cols);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < ours.size(); ++i) differ += ours[i] != theirs[i];
    EXPECT_EQ(differ, 0u) << gguf_type_name(t) << ": bytes differing from ggml_quantize_chunk";
    auto deq = reinterpret_cast<ToFloat>(dlsym(h, deq_name));
    ASSERT_NE(deq, nullptr) << deq_name;
    std::vector<float> a(x.size()), b(x.size());
    deq(theirs.data(), a.data(), int64_t(x.size()));
    gguf_dequantize_row(t, theirs.data(), b.data(), int64_t(x.size()));
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << gguf_type_name(t) << ": dequantized values";
  }
  // IQ4_NL's reference path (no scale search) too; rows without an all-zero block, whose codes
  // ggml leaves uninitialized there.
  using RowRef = void (*)(const float*, void*, int64_t);
  auto iq_ref = reinterpret_cast<RowRef>(dlsym(h, "quantize_row_iq4_nl_ref"));
  ASSERT_NE(iq_ref, nullptr);
  std::vector<uint8_t> theirs(gguf_row_bytes(GgufType::IQ4_NL, cols)), ours(theirs.size());
  for (int64_t r = 0; r < rows; ++r) {
    if (r == 5) continue;
    iq_ref(x.data() + r * cols, theirs.data(), cols);
    quantize_row_iq4_nl_ref(x.data() + r * cols, ours.data(), cols);
    ASSERT_EQ(ours, theirs) << "iq4_nl ref, row " << r;
  }
  dlclose(h);
}

namespace {
ModelWeights small_synthetic(Family family) {
  SynthSpec s = synth_preset(family == Family::Qwen2 ? "qwen2-small" : "tiny");
  auto& c = s.config;
  c.hidden = 128;
  c.intermediate = 200;  // not a multiple of 32: padded for block types
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 32;
  c.vocab = 300;
  c.bos_id = 1;
  c.eos_id = 2;
  c.max_positions = 256;
  c.tied_embeddings = family == Family::Qwen2;
  ModelWeights m = make_synthetic(s);
  m.source = family == Family::Qwen2 ? "synthetic-qwen2" : "synthetic-llama";
  return m;
}
}  // namespace

TEST(GgufExport, HfLayoutsAndQwen2Biases) {
  for (Family family : {Family::Llama, Family::Qwen2}) {
    ModelWeights m = small_synthetic(family);
    ASSERT_EQ(m.config.rope_layout, RopeLayout::Half);
    ModelWeights expect = small_synthetic(family);
    // llama.cpp's llama architecture wants interleaved pairs; qwen2 keeps rotate-half.
    if (family == Family::Llama) convert_rope_layout(expect, RopeLayout::Interleaved);
    const std::string path = temp_path("synth.gguf");
    const auto rep = export_gguf(m, nullptr, plan_preset("gguf-f32").gguf.value(), {}, path);
    const auto g = parse_gguf(path);
    const std::string arch = family == Family::Qwen2 ? "qwen2" : "llama";
    EXPECT_EQ(g.kv.at("general.architecture").text, arch);
    EXPECT_EQ(g.kv.at(arch + ".attention.head_count_kv").number, 2);
    EXPECT_EQ(g.kv.count("tokenizer.ggml.model"), 0u);
    for (int l = 0; l < 2; ++l) {
      const auto& L = expect.layers[std::size_t(l)];
      const std::string blk = "blk." + std::to_string(l) + ".";
      EXPECT_EQ(std::memcmp(g.data(blk + "attn_q.weight"), L.wq.data.data(), L.wq.data.size() * 4), 0) << arch;
      EXPECT_EQ(std::memcmp(g.data(blk + "attn_k.weight"), L.wk.data.data(), L.wk.data.size() * 4), 0) << arch;
      if (family == Family::Qwen2) {
        ASSERT_EQ(g.tensors.count(blk + "attn_q.bias"), 1u);
        EXPECT_EQ(g.tensors.at(blk + "attn_k.bias").dims, (std::vector<uint64_t>{64}));
        EXPECT_EQ(std::memcmp(g.data(blk + "attn_q.bias"), L.bq.data(), L.bq.size() * 4), 0);
        EXPECT_EQ(std::memcmp(g.data(blk + "attn_v.bias"), L.bv.data(), L.bv.size() * 4), 0);
      } else {
        EXPECT_EQ(g.tensors.count(blk + "attn_q.bias"), 0u);
      }
    }
    EXPECT_EQ(g.tensors.count("output.weight"), family == Family::Qwen2 ? 0u : 1u);  // tied: llama.cpp reuses token_embd
    EXPECT_FALSE(rep.notes.empty());
    fs::remove(path);
  }
}

TEST(GgufExport, RotatedGptqQwen2AndRefusals) {
  ModelWeights m = small_synthetic(Family::Qwen2);
  std::mt19937 rng(9);
  std::vector<std::vector<int>> calib(8, std::vector<int>(64));
  for (auto& w : calib)
    for (auto& id : w) id = int(rng() % 300);
  const ModelWeights original = small_synthetic(Family::Qwen2);
  const std::string path = temp_path("qwen2-iq4.gguf");
  auto opts = plan_preset("gguf-iq4_nl").gguf.value();
  const auto rep = export_gguf(m, nullptr, opts, calib, path);
  EXPECT_EQ(rep.padded_intermediate, 224);
  const auto g = parse_gguf(path);
  EXPECT_EQ(g.kv.at("qwen2.feed_forward_length").number, 224);
  EXPECT_EQ(g.tensors.at("blk.1.ffn_down.weight").type, uint32_t(GgufType::IQ4_NL));
  EXPECT_EQ(g.tensors.count("output.weight"), 1u);  // rotation unties the classifier
  const auto back = dequantize_tensor(g, "blk.1.ffn_down.weight");
  for (std::size_t i = 0; i < back.size(); ++i) ASSERT_EQ(back[i], m.layers[1].w_down.data[i]) << i;
  // The exported (rotated, padded, quantized) model still computes nearly what the float one did.
  const std::vector<int> ids = {1, 5, 17, 200, 33, 9, 120, 64};
  const auto a = logits_of(original, ids), b = logits_of(m, ids);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += a[i] * a[i];
  }
  EXPECT_LT(std::sqrt(num / den), 0.5);  // 4 bits on a model with planted outliers up to 100x
  // The offline rotation alone (norm fusion, R1, R2 per head) computes the same logits.
  ModelWeights rotated = small_synthetic(Family::Qwen2);
  auto f32 = plan_preset("gguf-f32").gguf.value();
  f32.rotate = true;
  export_gguf(rotated, nullptr, f32, {}, path);
  const auto r = logits_of(rotated, ids);
  double rnum = 0;
  for (std::size_t i = 0; i < a.size(); ++i) rnum += (a[i] - r[i]) * (a[i] - r[i]);
  EXPECT_LT(std::sqrt(rnum / den), 1e-3);  // fp32 with 100x outliers (test_rotate's bar for this shape)
  // GPTQ without calibration, and online rotations, are refused before anything is written.
  fs::remove(path);
  ModelWeights again = small_synthetic(Family::Qwen2);
  EXPECT_NE(quarot::test::error_of([&] { export_gguf(again, nullptr, opts, {}, path); }).find("calibration"), std::string::npos);
  opts.rotation.r4 = true;
  EXPECT_NE(quarot::test::error_of([&] { export_gguf(again, nullptr, opts, calib, path); }).find("R4"), std::string::npos);
  EXPECT_FALSE(fs::exists(path));
}

// ggml's own GGUF parser reads our files (header, key/values, tensor infos, offsets): with
// QUAROT_GGML_BASE as above.
TEST(GgufExport, GgmlReadsOurFile) {
  QUAROT_GGML_BASE_OR_SKIP(lib);
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << dlerror();
  struct InitParams {
    bool no_alloc;
    void** ctx;
  };
  auto init = reinterpret_cast<void* (*)(const char*, InitParams)>(dlsym(h, "gguf_init_from_file"));
  auto n_tensors = reinterpret_cast<int64_t (*)(const void*)>(dlsym(h, "gguf_get_n_tensors"));
  auto tensor_name = reinterpret_cast<const char* (*)(const void*, int64_t)>(dlsym(h, "gguf_get_tensor_name"));
  auto tensor_type = reinterpret_cast<int (*)(const void*, int64_t)>(dlsym(h, "gguf_get_tensor_type"));
  auto tensor_offset = reinterpret_cast<std::size_t (*)(const void*, int64_t)>(dlsym(h, "gguf_get_tensor_offset"));
  auto data_offset = reinterpret_cast<std::size_t (*)(const void*)>(dlsym(h, "gguf_get_data_offset"));
  auto find_key = reinterpret_cast<int64_t (*)(const void*, const char*)>(dlsym(h, "gguf_find_key"));
  auto val_str = reinterpret_cast<const char* (*)(const void*, int64_t)>(dlsym(h, "gguf_get_val_str"));
  auto val_u32 = reinterpret_cast<uint32_t (*)(const void*, int64_t)>(dlsym(h, "gguf_get_val_u32"));
  auto free_ctx = reinterpret_cast<void (*)(void*)>(dlsym(h, "gguf_free"));
  ASSERT_TRUE(init && n_tensors && tensor_name && tensor_type && tensor_offset && data_offset && find_key && val_str && val_u32 && free_ctx);
  const auto tok = load_tokenizer(data_file("stories260K/tok512.bin"));
  ModelWeights m = load_llama2c(data_file("stories260K/stories260K.bin"));
  auto opts = plan_preset("gguf-q4_0").gguf.value();
  opts.method = WeightMethod::Rtn;
  const std::string path = temp_path("ggml-reads.gguf");
  export_gguf(m, tok.get(), opts, {}, path);
  const auto ours = parse_gguf(path);
  void* ctx = init(path.c_str(), InitParams{true, nullptr});
  ASSERT_NE(ctx, nullptr) << "gguf_init_from_file refused the file";
  EXPECT_EQ(n_tensors(ctx), int64_t(ours.tensors.size()));
  EXPECT_EQ(data_offset(ctx), ours.data_start);
  for (int64_t i = 0; i < n_tensors(ctx); ++i) {
    const auto& t = ours.tensors.at(tensor_name(ctx, i));
    EXPECT_EQ(tensor_type(ctx, i), int(t.type));
    EXPECT_EQ(tensor_offset(ctx, i), t.offset);
  }
  EXPECT_STREQ(val_str(ctx, find_key(ctx, "general.architecture")), "llama");
  EXPECT_EQ(val_u32(ctx, find_key(ctx, "llama.feed_forward_length")), 192u);
  EXPECT_EQ(val_u32(ctx, find_key(ctx, "general.file_type")), 2u);
  free_ctx(ctx);
  dlclose(h);
  fs::remove(path);
}

// ---------------------------------------------------------------- byte-level BPE tokenizers

namespace {
// A 1-layer Qwen2-shaped model of tiny widths with `vocab` embedding rows (tied).
ModelWeights tiny_qwen2(int vocab) {
  SynthSpec s = synth_preset("qwen2-small");
  auto& c = s.config;
  c.hidden = 32;
  c.intermediate = 64;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 16;
  c.vocab = vocab;
  c.bos_id = 1;
  c.eos_id = 2;
  c.max_positions = 256;
  c.tied_embeddings = true;
  return make_synthetic(s);
}
}  // namespace

// Qwen3's tokenizer.json on a model with Qwen2's 151,936 embedding rows: model "gpt2", pre
// "qwen2", tokens by id with the added tokens typed by their `special` flag, the rows past the
// tokenizer padded as llama.cpp's converter pads them, merges in the file's order, no BOS added.
TEST(GgufExport, ByteLevelBpeTokenizerKeys) {
  QUAROT_REQUIRE_DATA("tokenizers/qwen2/Qwen3.tokenizer.json");
  const auto tok = load_tokenizer(data_file("tokenizers/qwen2/Qwen3.tokenizer.json"));
  ModelWeights m = tiny_qwen2(151936);
  const std::string path = temp_path("qwen3-tok.gguf");
  const auto rep = export_gguf(m, tok.get(), plan_preset("gguf-f32").gguf.value(), {}, path);
  const auto g = parse_gguf(path);
  fs::remove(path);
  EXPECT_EQ(g.kv.at("tokenizer.ggml.model").text, "gpt2");
  EXPECT_EQ(g.kv.at("tokenizer.ggml.pre").text, "qwen2");
  const auto& tokens = g.kv.at("tokenizer.ggml.tokens").strings;
  const auto& types = g.kv.at("tokenizer.ggml.token_type").numbers;
  ASSERT_EQ(tokens.size(), 151936u);
  ASSERT_EQ(types.size(), 151936u);
  EXPECT_EQ(tokens[0], "!");
  EXPECT_EQ(tokens[220], "\xc4\xa0");  // "Ġ": the byte-level space
  EXPECT_EQ(types[220], 1);
  EXPECT_EQ(tokens[151643], "<|endoftext|>");
  EXPECT_EQ(types[151643], 3);  // special: control
  EXPECT_EQ(tokens[151657], "<tool_call>");
  EXPECT_EQ(types[151657], 4);  // not special: user-defined
  EXPECT_EQ(tokens[151669], "[PAD151669]");
  EXPECT_EQ(types[151669], 5);
  EXPECT_EQ(tokens[151935], "[PAD151935]");
  const auto& merges = g.kv.at("tokenizer.ggml.merges").strings;
  ASSERT_EQ(merges.size(), 151387u);
  EXPECT_EQ(merges[0], "\xc4\xa0 \xc4\xa0");  // "Ġ Ġ"
  EXPECT_EQ(merges[1], "\xc4\xa0\xc4\xa0 \xc4\xa0\xc4\xa0");
  EXPECT_EQ(g.kv.count("tokenizer.ggml.scores"), 0u);
  EXPECT_EQ(g.kv.at("tokenizer.ggml.add_bos_token").number, 0);
  EXPECT_EQ(g.kv.at("tokenizer.ggml.eos_token_id").number, tok->eos_id());
  bool padded_note = false;
  for (const auto& n : rep.notes) padded_note |= n.find("267 embedding rows") != std::string::npos;
  EXPECT_TRUE(padded_note);
}

// GPT-2's and Llama-3's pre-tokenizers map to "gpt-2" / "llama-bpe" (Llama-3-Instruct's
// post-processor adds BOS); a pre-tokenizer llama.cpp does not reproduce under any name (GPT-2's
// with a prefix space) leaves the keys out with a note, not a file llama.cpp tokenizes differently.
TEST(GgufExport, ByteLevelBpePreTokenizerNames) {
  QUAROT_REQUIRE_DATA("tokenizers/gpt2/gpt2_tokenizer.json");
  QUAROT_REQUIRE_DATA("tokenizers/llama3/Meta-Llama-3-8B-Instruct.tokenizer.json");
  const auto gpt2 = gguf_vocab_of(*load_tokenizer(data_file("tokenizers/gpt2/gpt2_tokenizer.json")));
  EXPECT_EQ(gpt2.model, "gpt2");
  EXPECT_EQ(gpt2.pre, "gpt-2");
  EXPECT_EQ(gpt2.tokens.size(), 50257u);
  EXPECT_EQ(gpt2.merges.size(), 50000u);
  EXPECT_FALSE(gpt2.add_bos);
  const auto llama3 = gguf_vocab_of(*load_tokenizer(data_file("tokenizers/llama3/Meta-Llama-3-8B-Instruct.tokenizer.json")));
  EXPECT_EQ(llama3.pre, "llama-bpe");
  EXPECT_EQ(llama3.tokens.size(), 128256u);
  EXPECT_EQ(llama3.bos, 128000);
  EXPECT_TRUE(llama3.add_bos);
  EXPECT_EQ(llama3.token_types[128000], 3);

  // The slow form (vocab.json + merges.txt) of Qwen2.5 maps as its tokenizer.json would.
  if (fs::exists(data_file("tokenizers/qwen2/Qwen2.5-0.5B-Instruct/vocab.json"))) {
    const auto slow = gguf_vocab_of(*load_tokenizer(data_file("tokenizers/qwen2/Qwen2.5-0.5B-Instruct")));
    EXPECT_EQ(slow.pre, "qwen2");
    EXPECT_EQ(slow.merges.size(), 151387u);
    ASSERT_GT(slow.tokens.size(), 151645u);
    EXPECT_EQ(slow.tokens[151645], "<|im_end|>");
    EXPECT_EQ(slow.token_types[151645], 3);
  }

  std::string text = read_text_lf(data_file("tokenizers/gpt2/gpt2_tokenizer.json"));
  const std::string plain = "\"add_prefix_space\": false";
  const auto at = text.find(plain);  // the pre-tokenizer's (the first ByteLevel in the file)
  ASSERT_NE(at, std::string::npos);
  text.replace(at, plain.size(), "\"add_prefix_space\": true");
  const auto shifted = parse_hf_tokenizer_json(text, "gpt2-prefix-space.tokenizer.json");
  EXPECT_NE(test::error_of([&] { gguf_vocab_of(*shifted); }).find("pre-tokenizer"), std::string::npos);
  ModelWeights m = tiny_qwen2(50257);
  const std::string path = temp_path("gpt2-prefix.gguf");
  const auto rep = export_gguf(m, shifted.get(), plan_preset("gguf-f32").gguf.value(), {}, path);
  const auto g = parse_gguf(path);
  fs::remove(path);
  EXPECT_EQ(g.kv.count("tokenizer.ggml.model"), 0u);
  bool noted = false;
  for (const auto& n : rep.notes) noted |= n.find("no tokenizer.ggml.* keys") != std::string::npos;
  EXPECT_TRUE(noted);
}

// LLaMA-2's tokenizer.json (metaspace BPE with byte fallback) becomes the same tokenizer.ggml.*
// vocabulary as its SentencePiece .model: the same pieces and token types id for id (unknown,
// control, byte, normal), BOS added, scores from the merge ranks (a piece made by an earlier merge
// scores higher). Any other pipeline is refused naming the file and the part.
TEST(GgufExport, MetaspaceTokenizerJsonAsSentencePiece) {
  QUAROT_REQUIRE_DATA("tokenizers/llama2/llama2.tokenizer.json");
  QUAROT_REQUIRE_DATA("llama2-tokenizer/tokenizer.model");
  const auto json_tok = load_tokenizer(data_file("tokenizers/llama2/llama2.tokenizer.json"));
  const auto spm_tok = load_tokenizer(data_file("llama2-tokenizer/tokenizer.model"));
  const GgufVocab a = gguf_vocab_of(*json_tok);
  const GgufVocab b = gguf_vocab_of(*spm_tok);
  EXPECT_EQ(a.model, "llama");
  EXPECT_EQ(a.pre, "default");
  ASSERT_EQ(a.tokens.size(), 32000u);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.token_types, b.token_types);
  EXPECT_EQ(a.bos, 1);
  EXPECT_EQ(a.eos, 2);
  EXPECT_EQ(a.unk, 0);
  EXPECT_TRUE(a.add_bos);
  EXPECT_FALSE(a.add_eos);
  ASSERT_EQ(a.scores.size(), 32000u);
  const auto id = [&](const char* piece) { return std::size_t(std::find(a.tokens.begin(), a.tokens.end(), piece) - a.tokens.begin()); };
  EXPECT_GT(a.scores[id("\xe2\x96\x81t")], a.scores[id("\xe2\x96\x81the")]);  // "▁t" is merged before "▁the"
  EXPECT_GT(a.scores[id("\xe2\x96\x81the")], a.scores[id("a")]);             // a single character is never a merge

  const std::string text = read_text_lf(data_file("tokenizers/llama2/llama2.tokenizer.json"));
  const std::string path = temp_path("not-metaspace.tokenizer.json");
  for (const auto& [from, to, why] : {std::tuple<std::string, std::string, std::string>{"\"prepend\": \"\xe2\x96\x81\"", "\"prepend\": \"_\"", "normalizer"},
                                      {"\"byte_fallback\": true", "\"byte_fallback\": false", "byte_fallback"},
                                      {"\"type\": \"Fuse\"", "\"type\": \"ByteFallback\"", "decoder"}}) {
    std::string edited = text;
    const auto at = edited.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    edited.replace(at, from.size(), to);
    std::ofstream(path, std::ios::binary) << edited;
    const auto t = load_tokenizer(path);  // quarot tokenizes it; llama.cpp's SPM would not
    try {
      gguf_vocab_of(*t);
      ADD_FAILURE() << "accepted " << to;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find(why), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  fs::remove(path);
}

// Llama-3.1's RoPE scaling: the export writes rope_freqs.weight (F32 [head_dim/2], the factors
// convert_hf_to_gguf.py computes), the reader recovers factor and thresholds from it, and the
// model read back runs the same forward pass. A table that is not Llama-3's curve is refused.
TEST(GgufExport, Llama3RopeScalingRoundTrips) {
  SynthSpec spec = synth_preset("tiny");
  spec.config.n_layers = 1;
  spec.config.max_positions = 256;
  spec.config.rope_scaling.type = RopeScalingType::Llama3;
  spec.config.rope_scaling.factor = 8;
  spec.config.rope_scaling.low_freq_factor = 1;
  spec.config.rope_scaling.high_freq_factor = 4;
  spec.config.rope_scaling.original_max_positions = 64;  // wavelengths 16..64 in the band
  ModelWeights m = make_synthetic(spec);
  const ModelWeights original = m;
  const std::string path = temp_path("llama3-rope.gguf");
  export_gguf(m, nullptr, plan_preset("gguf-f32").gguf.value(), {}, path);
  {
    MappedFile f(path);
    const GgufFile g = parse_gguf(f.bytes(), path);
    const GgufTensorInfo* t = g.find("rope_freqs.weight");
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->ne, std::vector<uint64_t>{uint64_t(spec.config.head_dim / 2)});
    std::vector<float> factors(t->ne[0]);
    std::memcpy(factors.data(), f.bytes().data() + g.data_offset + t->offset, factors.size() * 4);
    // head_dim 8, theta 10000: wavelengths 6.3, 63, 628, 6283: one kept, one in the band, two slowed 8x.
    EXPECT_EQ(factors[0], 1.f);
    EXPECT_GT(factors[1], 1.f);
    EXPECT_LT(factors[1], 8.f);
    EXPECT_EQ(factors[2], 8.f);
  }
  const ModelWeights back = load_gguf(path);
  EXPECT_EQ(back.config.rope_scaling.type, RopeScalingType::Llama3);
  EXPECT_NEAR(back.config.rope_scaling.factor, 8, 1e-6);
  std::vector<int> ids;
  for (int i = 0; i < 200; ++i) ids.push_back((i * 37 + 11) % spec.config.vocab);
  ModelWeights back_half = back;
  convert_rope_layout(back_half, original.config.rope_layout);
  const auto want = logits_of(original, ids), got = logits_of(back_half, ids);
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i) diff = std::max(diff, double(std::fabs(want[i] - got[i]))), scale = std::max(scale, double(std::fabs(want[i])));
  EXPECT_LE(diff / scale, 1e-5);
  ModelWeights unscaled = original;  // the scaling matters at these positions
  unscaled.config.rope_scaling = {};
  const auto plain = logits_of(unscaled, ids);
  double moved = 0;
  for (std::size_t i = 0; i < want.size(); ++i) moved = std::max(moved, double(std::fabs(want[i] - plain[i])));
  EXPECT_GT(moved / scale, 1e-2);

  // A table off the curve (the band factor moved) is refused naming the file.
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  {
    const GgufFile g = parse_gguf({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, path);
    const float off = 5.5f;
    std::memcpy(bytes.data() + g.data_offset + g.find("rope_freqs.weight")->offset + 4 * 2, &off, 4);
  }
  try {
    parse_gguf_model({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, path);
    ADD_FAILURE() << "accepted a rope_freqs table off Llama-3's curve";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rope_freqs.weight"), std::string::npos) << e.what();
  }
  fs::remove(path);
}

// --gguf-embd-type (GgufExportOptions::embd_type): a tied source's embedding takes the asked
// type (by default it keeps llama-quantize's classifier rule, Q8_0 for 64 columns), the
// classifier the rotation unties keeps its rule, the file shrinks by exactly the embedding's
// bytes saved, and the embedding read back is the dequantized table the model now holds. The
// flag is refused (usage) without a block-quantized GGUF output, or with an unknown type.
TEST(GgufExport, EmbeddingTypeOfATiedSource) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const auto tok = load_tokenizer(data_file("stories260K/tok512.bin"));
  auto opts = plan_preset("gguf-q4_0").gguf.value();
  opts.method = WeightMethod::Rtn;
  auto types = [](const GgufExportReport& r) {
    std::map<std::string, std::pair<GgufType, std::size_t>> t;
    for (const auto& x : r.tensors) t[x.name] = {x.type, x.bytes};
    return t;
  };
  ModelWeights m0 = load_llama2c(data_file("stories260K/stories260K.bin"));
  ASSERT_TRUE(m0.config.tied_embeddings);
  const std::string path0 = temp_path("embd-default.gguf");
  const auto r0 = export_gguf(m0, tok.get(), opts, {}, path0);
  fs::remove(path0);
  opts.embd_type = GgufType::Q4_0;
  ModelWeights m1 = load_llama2c(data_file("stories260K/stories260K.bin"));
  const std::string path = temp_path("embd-q4_0.gguf");
  const auto r1 = export_gguf(m1, tok.get(), opts, {}, path);
  const auto t0 = types(r0), t1 = types(r1);
  EXPECT_EQ(t0.at("token_embd.weight").first, GgufType::Q8_0);
  EXPECT_EQ(t1.at("token_embd.weight").first, GgufType::Q4_0);
  EXPECT_EQ(t0.at("output.weight").first, GgufType::Q8_0);
  EXPECT_EQ(t1.at("output.weight").first, GgufType::Q8_0);
  EXPECT_EQ(t1.at("token_embd.weight").second, 512u * 64 / 32 * 18);
  EXPECT_EQ(r0.file_bytes - r1.file_bytes, 512u * 64 / 32 * (34 - 18));
  const auto g = parse_gguf(path);
  EXPECT_EQ(g.tensors.at("token_embd.weight").type, uint32_t(GgufType::Q4_0));
  const auto back = load_gguf(path);
  ASSERT_EQ(back.tok_embeddings.rows, m1.tok_embeddings.rows);
  for (int64_t i = 0; i < m1.tok_embeddings.rows * m1.tok_embeddings.cols; ++i)
    ASSERT_EQ(back.tok_embeddings.values()[i], m1.tok_embeddings.values()[i]) << i;
  fs::remove(path);

  PlanOptions a;
  a.model = data_file("stories260K/stories260K.bin");
  a.dry_run = true;
  a.gguf_embd_type = "q4_0";
  a.preset = "w4a16";
  a.output = "x.q4.safetensors";
  EXPECT_NE(quarot::test::error_of([&] { (void)make_plan(a); }).find("--gguf-embd-type"), std::string::npos);
  a.output.clear();
  EXPECT_NE(quarot::test::error_of([&] { (void)make_plan(a); }).find("--gguf-embd-type"), std::string::npos);
  a.preset = "gguf-f32";
  a.output = "x.gguf";
  EXPECT_NE(quarot::test::error_of([&] { (void)make_plan(a); }).find("--gguf-embd-type"), std::string::npos);
  a.preset = "gguf-q4_0";
  a.gguf_embd_type = "q3_k";
  EXPECT_NE(quarot::test::error_of([&] { (void)make_plan(a); }).find("--gguf-embd-type"), std::string::npos);
  a.gguf_embd_type = "iq4_nl";
  const Plan p = make_plan(a);
  EXPECT_EQ(p.gguf_embd_type, "iq4_nl");
  EXPECT_NE(plan_command(p).find("--gguf-embd-type iq4_nl"), std::string::npos) << plan_command(p);
  try {
    a.preset = "w4a16";
    a.output = "x.q4.safetensors";
    (void)make_plan(a);
    ADD_FAILURE() << "accepted";
  } catch (const UsageError&) {  // exit 2
  }
}
