// Helpers shared by the core tests: fixture paths, per-test temporary directories, whole-file
// byte I/O and error-message assertions.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "common/error.h"

namespace vt_test {

inline std::string fixture(const std::string& relative) { return std::string(VISIONTORCH_SOURCE_DIR) + "/test/fixtures/" + relative; }

// A fresh directory for one test, removed when the test ends.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("VISIONTORCH_TEST_TMP");
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = (base != nullptr && *base != '\0' ? std::filesystem::path(base) : std::filesystem::temp_directory_path()) /
            (std::string(info->test_suite_name()) + "." + info->name() + "." + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& item : std::filesystem::directory_iterator(path_)) names.push_back(item.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// Runs `action`, which must throw vt::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& action, const std::vector<std::string>& parts) {
  try {
    action();
  } catch (const vt::Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "message lacks \"" << part << "\": " << message;
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected vt::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected vt::Error mentioning \"" << (parts.empty() ? "" : parts.front()) << "\", nothing thrown";
}

}  // namespace vt_test
