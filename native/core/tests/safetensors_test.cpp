#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test_util.h"

namespace {

using nlohmann::json;
using vt_test::expect_error;
using vt_test::fixture;
using vt_test::read_bytes;
using vt_test::TempDir;
using vt_test::write_bytes;

uint64_t header_length(const std::string& bytes) {
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<uint8_t>(bytes[i]);
  return length;
}

// A safetensors file from a header text and a data section, exactly as given.
std::string assemble(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((uint64_t{header.size()} >> (8 * i)) & 0xff);
  return bytes + header + data;
}

void expect_same_tensors(const vt::TensorMap& expected, const vt::TensorMap& actual) {
  ASSERT_EQ(expected.size(), actual.size());
  for (const auto& [name, tensor] : expected) {
    auto found = actual.find(name);
    ASSERT_NE(found, actual.end()) << name;
    EXPECT_EQ(found->second.scalar_type(), tensor.scalar_type()) << name;
    EXPECT_EQ(found->second.sizes(), tensor.sizes()) << name;
    EXPECT_TRUE(torch::equal(found->second, tensor)) << name;
  }
}

TEST(SafetensorsDtypes, NamesMapBothWays) {
  for (const char* name : {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}) {
    EXPECT_EQ(vt::safetensors_dtype_name(vt::safetensors_dtype(name)), name);
  }
  EXPECT_EQ(vt::safetensors_dtype("BF16"), torch::kBFloat16);
  EXPECT_THROW(vt::safetensors_dtype("F99"), vt::Error);
  EXPECT_THROW(vt::safetensors_dtype_name(torch::kComplexFloat), vt::Error);
}

TEST(Safetensors, RoundTripsEveryDtypeWithMetadata) {
  TempDir dir;
  torch::manual_seed(0);
  vt::TensorMap tensors = {
      {"f64", torch::randn({2, 3}, torch::kFloat64)},      {"f32", torch::randn({4, 5})},
      {"f16_odd", torch::randn({3}).to(torch::kFloat16)},  // 6 bytes: would misalign what follows
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)}, {"i64", torch::tensor({INT64_MIN, int64_t{-1}, INT64_MAX})},
      {"i32", torch::tensor({INT32_MIN, 7, INT32_MAX})},   {"i16", torch::tensor({-32768, 1, 32767}, torch::kInt16)},
      {"i8", torch::tensor({-128, 0, 127}, torch::kInt8)}, {"u8", torch::tensor({0, 128, 255}, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},        {"empty", torch::zeros({0, 3})},
      {"scalar", torch::tensor(2.5, torch::kFloat64)},     {"transposed", torch::arange(6, torch::kFloat32).reshape({2, 3}).t()},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcode"}};
  const std::string path = dir.file("model.safetensors");
  vt::save_safetensors(path, tensors, metadata);

  auto file = vt::SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata(), metadata);
  expect_same_tensors(tensors, file->tensors());
  EXPECT_EQ(file->entry("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(file->entry("empty").shape, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(file->entry("bf16").dtype, "BF16");
  EXPECT_EQ(vt::load_safetensors(path).size(), tensors.size());
}

TEST(Safetensors, WrittenFileFollowsTheFormat) {
  TempDir dir;
  vt::TensorMap tensors = {
      {"b_half", torch::ones({3}, torch::kFloat16)},
      {"a_float", torch::ones({2})},
      {"c_long", torch::ones({1}, torch::kInt64)},
      {"d_bool", torch::ones({5}, torch::kBool)},
  };
  const std::string path = dir.file("model.safetensors");
  vt::save_safetensors(path, tensors, {{"format", "pt"}});
  const std::string bytes = read_bytes(path);

  const uint64_t length = header_length(bytes);
  EXPECT_EQ(length % 8, 0u) << "header is padded with spaces to a multiple of 8";
  ASSERT_LE(8 + length, bytes.size());
  const std::string header_text = bytes.substr(8, length);
  EXPECT_EQ(header_text.rfind("{\"__metadata__\":", 0), 0u) << header_text;
  const size_t last_brace = header_text.find_last_of('}');
  EXPECT_EQ(header_text.find_first_not_of(' ', last_brace + 1), std::string::npos) << "padding is spaces";
  // Tensor names appear in sorted order.
  size_t previous = 0;
  for (const char* name : {"a_float", "b_half", "c_long", "d_bool"}) {
    size_t position = header_text.find(std::string("\"") + name + "\"");
    ASSERT_NE(position, std::string::npos) << name;
    EXPECT_GT(position, previous) << name;
    previous = position;
  }

  // Spans tile the data section exactly, each aligned to its element size.
  const json header = json::parse(header_text);
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const uint64_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
    EXPECT_EQ(begin % c10::elementSize(vt::safetensors_dtype(entry["dtype"])), 0u) << name;
    spans.emplace_back(begin, end);
  }
  std::sort(spans.begin(), spans.end());
  uint64_t cursor = 0;
  for (const auto& [begin, end] : spans) {
    EXPECT_EQ(begin, cursor);
    cursor = end;
  }
  EXPECT_EQ(cursor, bytes.size() - 8 - length);
}

TEST(Safetensors, TensorsViewTheMappingAndKeepItAlive) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  vt::save_safetensors(path, {{"w", torch::arange(8, torch::kFloat32)}});

  auto file = vt::SafetensorsFile::open(path);
  torch::Tensor first = file->tensor("w");
  torch::Tensor second = file->tensor("w");
  EXPECT_EQ(first.data_ptr(), second.data_ptr()) << "both view the same mapped bytes";
  file.reset();
  EXPECT_TRUE(torch::equal(first, torch::arange(8, torch::kFloat32)));

  // The mapping is private: writing through a view must not change the file.
  first.add_(100);
  EXPECT_TRUE(torch::equal(vt::load_safetensors(path).at("w"), torch::arange(8, torch::kFloat32)));
}

TEST(Safetensors, MisalignedDataIsCopied) {
  TempDir dir;
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  while ((8 + header.size()) % 4 != 1) header += ' ';  // data starts 1 byte past 4-byte alignment
  const float values[2] = {1.5f, -2.0f};
  const std::string path = dir.file("odd.safetensors");
  write_bytes(path, assemble(header, std::string(reinterpret_cast<const char*>(values), sizeof values)));

  torch::Tensor x = vt::load_safetensors(path).at("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data_ptr()) % 4, 0u);
  EXPECT_TRUE(torch::equal(x, torch::tensor({1.5f, -2.0f})));
}

TEST(Safetensors, LoadsTheVitFixture) {
  const std::string path = fixture("vit-tiny-random/model.safetensors");
  auto file = vt::SafetensorsFile::open(path);

  const std::string bytes = read_bytes(path);
  const json header = json::parse(bytes.substr(8, header_length(bytes)));
  size_t listed = 0;
  for (const auto& item : header.items()) listed += item.key() != "__metadata__";
  EXPECT_EQ(file->entries().size(), listed);
  EXPECT_GT(listed, 10u);

  const vt::SafetensorsEntry& cls = file->entry("vit.embeddings.cls_token");
  EXPECT_EQ(cls.dtype, "F32");
  EXPECT_EQ(cls.shape, (std::vector<int64_t>{1, 1, 32}));
  torch::Tensor cls_token = file->tensor("vit.embeddings.cls_token");
  EXPECT_EQ(cls_token.sizes(), (std::vector<int64_t>{1, 1, 32}));
  EXPECT_EQ(cls_token.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(cls_token).all().item<bool>());

  for (size_t i = 1; i < file->entries().size(); ++i) {
    EXPECT_LE(file->entries()[i - 1].end, file->entries()[i].begin) << "entries are in offset order";
  }
  expect_error([&] { file->entry("no.such.tensor"); }, {"model.safetensors", "\"no.such.tensor\""});
}

TEST(Safetensors, MissingFileNamesIt) {
  TempDir dir;
  expect_error([&] { vt::load_safetensors(dir.file("absent.safetensors")); }, {"absent.safetensors", "cannot open"});
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints

TEST(SafetensorsSharded, MatchesTheSingleFile) {
  vt::TensorMap sharded = vt::load_sharded_safetensors(fixture("vit-tiny-random-sharded/model.safetensors.index.json"));
  vt::TensorMap single = vt::load_safetensors(fixture("vit-tiny-random/model.safetensors"));
  expect_same_tensors(single, sharded);
}

class SafetensorsShardedIndex : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string source = fixture("vit-tiny-random-sharded/");
    for (const char* shard : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}) {
      std::filesystem::copy_file(source + shard, dir.file(shard));
    }
    index = json::parse(read_bytes(source + "model.safetensors.index.json"));
  }
  std::string write_index() {
    const std::string path = dir.file("model.safetensors.index.json");
    write_bytes(path, index.dump(2));
    return path;
  }
  TempDir dir;
  json index;
};

TEST_F(SafetensorsShardedIndex, CopyLoads) { EXPECT_EQ(vt::load_sharded_safetensors(write_index()).size(), index["weight_map"].size()); }

TEST_F(SafetensorsShardedIndex, MissingShardIsNamed) {
  index["weight_map"]["classifier.bias"] = "model-00009-of-00003.safetensors";
  expect_error([&] { vt::load_sharded_safetensors(write_index()); },
               {"model.safetensors.index.json", "\"model-00009-of-00003.safetensors\"", "does not exist", "classifier.bias"});
}

TEST_F(SafetensorsShardedIndex, TensorMissingFromItsShardIsNamed) {
  // classifier.bias lives in shard 1; the index claims shard 2.
  index["weight_map"]["classifier.bias"] = "model-00002-of-00003.safetensors";
  expect_error([&] { vt::load_sharded_safetensors(write_index()); },
               {"model.safetensors.index.json", "\"classifier.bias\"", "\"model-00002-of-00003.safetensors\""});
}

TEST_F(SafetensorsShardedIndex, ShardOutsideTheDirectoryIsRefused) {
  for (const char* shard : {"../evil.safetensors", "sub/../../evil.safetensors", "/evil.safetensors"}) {
    index["weight_map"]["classifier.bias"] = shard;
    expect_error([&] { vt::load_sharded_safetensors(write_index()); },
                 {"model.safetensors.index.json", std::string("\"") + shard + "\"", "\"classifier.bias\""});
  }
}

TEST_F(SafetensorsShardedIndex, MalformedIndexIsRefused) {
  index.erase("weight_map");
  expect_error([&] { vt::load_sharded_safetensors(write_index()); }, {"model.safetensors.index.json", "weight_map"});
  write_bytes(dir.file("model.safetensors.index.json"), "{\"weight_map\": ");
  expect_error([&] { vt::load_sharded_safetensors(dir.file("model.safetensors.index.json")); },
               {"model.safetensors.index.json", "invalid JSON"});
}

// ---------------------------------------------------------------------------------------------
// Corrupt files: each starts from a valid file and breaks one thing.

class SafetensorsCorrupt : public ::testing::Test {
 protected:
  // A valid file holding "a" (F32 [2,2]) and "b" (I64 [3]).
  void SetUp() override {
    const std::string valid = dir.file("valid.safetensors");
    vt::save_safetensors(valid, {{"a", torch::arange(4, torch::kFloat32).reshape({2, 2})}, {"b", torch::arange(3, torch::kInt64)}});
    bytes = read_bytes(valid);
    const uint64_t length = header_length(bytes);
    header = json::parse(bytes.substr(8, length));
    data = bytes.substr(8 + length);
    ASSERT_EQ(header["a"]["data_offsets"], json({24, 40}));
    ASSERT_EQ(header["b"]["data_offsets"], json({0, 24}));
  }
  std::string write(const std::string& file_bytes) {
    const std::string path = dir.file("corrupt.safetensors");
    write_bytes(path, file_bytes);
    return path;
  }
  std::string write_header(const json& changed) { return write(assemble(changed.dump(), data)); }
  void expect_open_error(const std::string& path, std::vector<std::string> parts) {
    parts.insert(parts.begin(), "corrupt.safetensors");
    expect_error([&] { vt::SafetensorsFile::open(path); }, parts);
  }

  TempDir dir;
  std::string bytes;
  json header;
  std::string data;
};

TEST_F(SafetensorsCorrupt, ValidBaseLoads) {
  EXPECT_TRUE(torch::equal(vt::load_safetensors(write(bytes)).at("b"), torch::arange(3, torch::kInt64)));
}

TEST_F(SafetensorsCorrupt, TruncatedBelowEightBytes) { expect_open_error(write(bytes.substr(0, 5)), {"5 bytes", "too short"}); }

TEST_F(SafetensorsCorrupt, EmptyFile) { expect_open_error(write(""), {"0 bytes", "too short"}); }

TEST_F(SafetensorsCorrupt, HeaderLengthZero) { expect_open_error(write(assemble("", data)), {"header length is 0"}); }

TEST_F(SafetensorsCorrupt, HeaderLengthBeyondFile) {
  std::string broken = bytes;
  const uint64_t too_long = bytes.size();
  for (int i = 0; i < 8; ++i) broken[i] = static_cast<char>((too_long >> (8 * i)) & 0xff);
  expect_open_error(write(broken), {"header length " + std::to_string(too_long), "truncated"});
}

TEST_F(SafetensorsCorrupt, AbsurdHeaderLength) {
  std::string broken = bytes;
  for (int i = 0; i < 8; ++i) broken[i] = '\xff';
  expect_open_error(write(broken), {"100 MB"});
}

TEST_F(SafetensorsCorrupt, TruncatedData) {
  expect_open_error(write(bytes.substr(0, bytes.size() - 4)), {"tensor \"a\"", "end beyond the data section"});
}

TEST_F(SafetensorsCorrupt, HeaderNotJson) {
  std::string text = header.dump();
  text[text.size() / 2] = '\x01';
  expect_open_error(write(assemble(text, data)), {"header: invalid JSON"});
}

TEST_F(SafetensorsCorrupt, HeaderIsAnArray) { expect_open_error(write(assemble("[1, 2, 3]", data)), {"does not start with '{'"}); }

TEST_F(SafetensorsCorrupt, EntryIsNotAnObject) {
  header["a"] = 42;
  expect_open_error(write_header(header), {"tensor \"a\"", "expected an object"});
}

TEST_F(SafetensorsCorrupt, MissingDataOffsets) {
  header["a"].erase("data_offsets");
  expect_open_error(write_header(header), {"tensor \"a\"", "missing \"data_offsets\""});
}

TEST_F(SafetensorsCorrupt, UnknownDtype) {
  header["a"]["dtype"] = "F99";
  expect_open_error(write_header(header), {"tensor \"a\"", "unknown dtype \"F99\""});
}

TEST_F(SafetensorsCorrupt, NegativeShape) {
  header["a"]["shape"] = {-2, -2};
  expect_open_error(write_header(header), {"tensor \"a\"", "shape[0] is -2"});
}

TEST_F(SafetensorsCorrupt, NonIntegerShape) {
  header["b"]["shape"] = {1.5};
  expect_open_error(write_header(header), {"tensor \"b\"", "shape[0] is 1.5"});
}

TEST_F(SafetensorsCorrupt, ShapeDoesNotMatchSpan) {
  header["a"]["shape"] = {1, 1, 32};
  expect_open_error(write_header(header), {"tensor \"a\": data_offsets [24, 40] span 16 bytes but shape [1,1,32] of F32 needs 128"});
}

TEST_F(SafetensorsCorrupt, ShapeProductOverflows) {
  // 2^32 * 2^32 * 4 bytes wraps a 64-bit product around to 0; the span is 0 too.
  header["a"]["shape"] = {uint64_t{1} << 32, uint64_t{1} << 32};
  header["a"]["data_offsets"] = {40, 40};
  expect_open_error(write_header(header), {"tensor \"a\"", "more than 2^64"});
}

TEST_F(SafetensorsCorrupt, BeginAfterEnd) {
  header["a"]["data_offsets"] = {40, 24};
  expect_open_error(write_header(header), {"tensor \"a\"", "[40, 24] begin after end"});
}

TEST_F(SafetensorsCorrupt, EndBeyondFile) {
  header["a"]["data_offsets"] = {32, 48};
  expect_open_error(write_header(header), {"tensor \"a\"", "[32, 48] end beyond the data section (40 bytes)"});
}

TEST_F(SafetensorsCorrupt, OverlappingSpans) {
  header["a"]["data_offsets"] = {16, 32};
  expect_open_error(write_header(header), {"tensor \"a\"", "overlap tensor \"b\" [0, 24]"});
}

TEST_F(SafetensorsCorrupt, MetadataValueIsNotAString) {
  header["__metadata__"] = {{"format", "pt"}, {"epoch", 3}};
  expect_open_error(write_header(header), {"__metadata__ \"epoch\" is a number, expected a string"});
}

TEST_F(SafetensorsCorrupt, MetadataIsNotAnObject) {
  header["__metadata__"] = "pt";
  expect_open_error(write_header(header), {"__metadata__ is a string"});
}

// As the reference reader (safetensors' validate): the tensors cover the data section exactly.
TEST_F(SafetensorsCorrupt, GapBetweenSpans) {
  header["a"]["data_offsets"] = {28, 44};
  expect_open_error(write(assemble(header.dump(), data + std::string(4, '\0'))), {"tensor \"a\"", "bytes 24 to 28", "a gap"});
}

TEST_F(SafetensorsCorrupt, TrailingBytes) {
  expect_open_error(write(bytes + std::string(3, '\0')), {"3 byte(s) after the last tensor", "trailing bytes"});
}

TEST_F(SafetensorsCorrupt, HeaderLengthOneByteShort) {
  // The header's padding makes the shorter text valid JSON: every tensor would read one byte early.
  const std::string text = header.dump() + std::string(8, ' ');
  std::string broken = assemble(text, data);
  const uint64_t length = text.size() - 1;
  for (int i = 0; i < 8; ++i) broken[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  expect_open_error(write(broken), {"1 byte(s) after the last tensor"});
}

TEST_F(SafetensorsCorrupt, DuplicateKey) {
  std::string text = header.dump();
  text.insert(1, R"("b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)");
  expect_open_error(write(assemble(text, data)), {"key \"b\" appears twice"});
}

TEST_F(SafetensorsCorrupt, HeaderNotAnObjectText) {
  expect_open_error(write(assemble(" " + header.dump(), data)), {"does not start with '{'"});
}

TEST_F(SafetensorsCorrupt, DeeplyNestedMetadata) {
  const std::string nested = std::string(100000, '[') + std::string(100000, ']');
  std::string text = header.dump();
  text.insert(text.size() - 1, R"(,"__metadata__":{"x":)" + nested + "}");
  expect_open_error(write(assemble(text, data)), {"nested deeper than"});
}

// ---------------------------------------------------------------------------------------------
// Writer

TEST(SafetensorsWriter, UnsupportedDtypeLeavesTheOldFileAndNoTempFile) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  vt::save_safetensors(path, {{"w", torch::ones({2})}});
  const std::string before = read_bytes(path);

  expect_error(
      [&] {
        vt::save_safetensors(path, {{"w", torch::zeros({2})}, {"z", torch::zeros({2}, torch::kComplexFloat)}});
      },
      {"model.safetensors", "tensor \"z\"", "ComplexFloat"});
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"model.safetensors"});
}

TEST(SafetensorsWriter, FailedRenameRemovesTheTempFile) {
  TempDir dir;
  // A non-empty directory in the target's place: everything succeeds up to the rename.
  const std::string path = dir.file("model.safetensors");
  std::filesystem::create_directories(std::filesystem::path(path) / "occupied");
  expect_error([&] { vt::save_safetensors(path, {{"w", torch::ones({2})}}); }, {"model.safetensors", "rename"});
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"model.safetensors"});
  EXPECT_TRUE(std::filesystem::is_directory(path));
}

TEST(SafetensorsWriter, OverwritesAnExistingFile) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  vt::save_safetensors(path, {{"old", torch::ones({2})}});
  vt::save_safetensors(path, {{"new", torch::full({3}, 7.0)}});
  vt::TensorMap loaded = vt::load_safetensors(path);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_TRUE(torch::equal(loaded.at("new"), torch::full({3}, 7.0)));
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"model.safetensors"});
}

TEST(SafetensorsWriter, RefusesTheMetadataKeyAsATensorName) {
  TempDir dir;
  expect_error(
      [&] {
        vt::save_safetensors(dir.file("m.safetensors"), {{"__metadata__", torch::ones({1})}});
      },
      {"m.safetensors", "__metadata__"});
  EXPECT_TRUE(dir.listing().empty());
}

TEST(SafetensorsWriter, EmptyTensorMapWritesAValidFile) {
  TempDir dir;
  const std::string path = dir.file("empty.safetensors");
  vt::save_safetensors(path, {});
  EXPECT_TRUE(vt::load_safetensors(path).empty());
  EXPECT_EQ(header_length(read_bytes(path)) % 8, 0u);
}

}  // namespace

namespace {

// The fuzzing harness reads safetensors from memory: held to the same checks as a file.
TEST(SafetensorsFromBytes, MatchesTheFileAndIsCheckedAsStrictly) {
  const std::string path = vt_test::fixture("vit-tiny-random/model.safetensors");
  const std::string bytes = vt_test::read_bytes(path);
  const auto in_memory = vt::SafetensorsFile::from_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "in memory");
  const vt::TensorMap from_file = vt::load_safetensors(path);
  const vt::TensorMap from_memory = in_memory->tensors();
  ASSERT_EQ(from_memory.size(), from_file.size());
  for (const auto& [name, tensor] : from_file) EXPECT_TRUE(torch::equal(from_memory.at(name), tensor)) << name;
  const std::string trailing = bytes + "junk";
  vt_test::expect_error(
      [&] { vt::SafetensorsFile::from_bytes(reinterpret_cast<const uint8_t*>(trailing.data()), trailing.size(), "with trailing bytes"); },
      {"with trailing bytes"});
}

}  // namespace
