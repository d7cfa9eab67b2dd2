// Shared helpers of the image, resample and image processor tests (own namespace: other test
// helpers use vt_test, and same-named inline functions there would clash at link time).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/image.h"
#include "test_util.h"

namespace vt_image_test {

inline std::string source_path(const std::string& relative) { return std::string(VISIONTORCH_SOURCE_DIR) + "/" + relative; }

inline std::string fixture_path(const std::string& relative) { return vt_test::fixture(relative); }

inline std::string test_data_path(const std::string& relative) { return source_path("native/core/tests/data/" + relative); }

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot read " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return nlohmann::json();
  }
  return nlohmann::json::parse(in);
}

// FNV-1a, 64 bit, as 16 hex digits (the golden files' hash).
inline std::string fnv1a64(const uint8_t* data, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) {
    h ^= data[i];
    h *= 0x100000001b3ull;
  }
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(h));
  return text;
}

inline std::string fnv1a64(const std::vector<uint8_t>& bytes) { return fnv1a64(bytes.data(), bytes.size()); }

// A fresh directory for one test's files, under VISIONTORCH_TEST_TMP when set.
inline std::filesystem::path make_temp_dir(const std::string& name) {
  static std::atomic<int> counter{0};
  const char* base = std::getenv("VISIONTORCH_TEST_TMP");
  std::filesystem::path root = base && *base ? std::filesystem::path(base) : std::filesystem::temp_directory_path();
  std::filesystem::path dir = root / ("vt-" + name + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

using vt_test::expect_error;

}  // namespace vt_image_test
