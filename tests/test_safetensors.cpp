// The safetensors reader against every class of malformed file, and the writer's guarantees
// (round trip, determinism, alignment, atomic replacement).
#include <gtest/gtest.h>

#include <cstring>

#include "quarot/error.hpp"
#include "quarot/safetensors.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

namespace {

// A file from a header text and a data buffer of `data_bytes` bytes.
std::vector<uint8_t> make_file(const std::string& header, std::size_t data_bytes, uint64_t len_override = 0) {
  std::vector<uint8_t> f(8 + header.size() + data_bytes, 0x5a);
  const uint64_t len = len_override ? len_override : header.size();
  for (int i = 0; i < 8; ++i) f[i] = uint8_t(len >> (8 * i));
  std::memcpy(f.data() + 8, header.data(), header.size());
  return f;
}

// Expects a parse failure whose one-line message names the file and contains `needle`.
void expect_error(const std::vector<uint8_t>& f, const std::string& needle) {
  try {
    parse_safetensors(f, "bad.safetensors");
    FAIL() << "accepted a file that should fail with: " << needle;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("bad.safetensors: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\nexpected: " << needle;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

}  // namespace

TEST(SafetensorsReader, AcceptsAValidFile) {
  const auto f = make_file(
      R"({"__metadata__":{"k":"v"},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"I8","shape":[0],"data_offsets":[14,14]}})",
      14);
  const auto h = parse_safetensors(f, "ok");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "a");  // sorted by offset
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].dtype, DType::F16);
  EXPECT_EQ(h.metadata.at("k"), "v");
}

TEST(SafetensorsReader, RejectsEveryMalformedClass) {
  const std::string t8 = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  expect_error({1, 2, 3}, "shorter than the 8-byte header length");
  expect_error(make_file("{" + t8 + "}", 8, 1000), "runs past the end of the file");
  expect_error(make_file("{" + t8 + "}", 8, 200ull * 1000 * 1000), "exceeds the 100 MB limit");
  expect_error(make_file("[1,2]", 0), "does not start with '{'");
  expect_error(make_file("{\"t\": nope}", 0), "not valid UTF-8 JSON");
  expect_error(make_file("{\"t\xff\xfe\":{}}", 0), "not valid UTF-8 JSON");
  expect_error(make_file("{" + t8 + "," + t8 + "}", 8), "duplicate tensor name 't'");
  expect_error(make_file(R"({"t":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype 'F7'");
  expect_error(make_file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
               "F32 [3] needs 12 bytes but data_offsets span 8");
  expect_error(make_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "not a non-negative integer");
  expect_error(make_file(R"({"t":{"dtype":"F32","shape":[2]}})", 8), "missing field 'data_offsets'");
  expect_error(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("u":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
               "overlaps");
  expect_error(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "unused bytes 0..4");
  expect_error(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "past the end of the data");
  expect_error(make_file("{" + t8 + "}", 12), "trailing garbage");
  expect_error(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "end before they begin");
  expect_error(make_file(R"({"__metadata__":{"k":1}})", 0), "is not a string");
  expect_error(make_file(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8), "overflows");
}

TEST(SafetensorsReader, MissingFileNamesThePath) {
  try {
    SafetensorsFile f("/nonexistent/x.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.safetensors: cannot open"), std::string::npos);
  }
}

TEST(SafetensorsWriter, RoundTripDeterministicAligned) {
  TempDir dir;
  std::vector<float> a = {1.f, -2.f, 3.5f, 0.25f, 7.f, -0.5f};
  std::vector<uint8_t> raw = {1, 2, 3};
  const std::vector<TensorToWrite> ts = {
      {"w", DType::F32, {2, 3}, a.data(), DType::F32},
      {"w16", DType::F16, {6}, a.data(), DType::F32},
      {"wbf", DType::BF16, {3, 2}, a.data(), DType::F32},
      {"bytes", DType::U8, {3}, raw.data(), DType::U8},
  };
  write_safetensors(dir / "a.safetensors", ts, {{"who", "test"}});
  write_safetensors(dir / "b.safetensors", ts, {{"who", "test"}});
  EXPECT_EQ(read_bytes(dir / "a.safetensors"), read_bytes(dir / "b.safetensors"));

  SafetensorsFile f(dir / "a.safetensors");
  EXPECT_EQ(f.header().data_start % 64, 0u);
  EXPECT_EQ(f.header().metadata.at("who"), "test");
  for (const char* name : {"w", "w16", "wbf"}) {
    const TensorInfo* t = f.find(name);
    ASSERT_NE(t, nullptr);
    std::vector<float> back(6);
    convert_to_f32(t->dtype, f.data(*t).data(), 6, back.data());
    EXPECT_EQ(back, a) << name;  // every value is exact in 16 bits
  }
  EXPECT_EQ(f.find("w16")->shape, (std::vector<int64_t>{6}));
  const auto b = f.data(*f.find("bytes"));
  EXPECT_EQ(std::vector<uint8_t>(b.begin(), b.end()), raw);
}

TEST(SafetensorsWriter, LeavesNoPartialFileOnFailure) {
  TempDir dir;
  std::vector<float> a = {1.f};
  write_safetensors(dir / "m.safetensors", {{"x", DType::F32, {1}, a.data(), DType::F32}}, {});
  const auto before = read_bytes(dir / "m.safetensors");
  // A duplicate name fails before anything is written; the old file stays, no temp remains.
  EXPECT_THROW(write_safetensors(dir / "m.safetensors",
                                 {{"x", DType::F32, {1}, a.data(), DType::F32}, {"x", DType::F32, {1}, a.data(), DType::F32}},
                                 {}),
               Error);
  EXPECT_EQ(read_bytes(dir / "m.safetensors"), before);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}
