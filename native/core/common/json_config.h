// Typed access to HuggingFace JSON configs (config.json, preprocessor_config.json) with errors
// that name the file and the field: `config.json: hidden_size must be a positive integer, got "x"`.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vt {

class JsonConfig {
 public:
  JsonConfig(const nlohmann::json& json, std::string source);

  const nlohmann::json& json() const { return json_; }
  const std::string& source() const { return source_; }
  bool has(const std::string& key) const;  // present and not null

  std::string get_string(const std::string& key, const std::string& fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  double get_number(const std::string& key, double fallback) const;
  double get_probability(const std::string& key, double fallback) const;  // in [0, 1]
  double get_positive_number(const std::string& key, double fallback) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  int64_t get_positive_int(const std::string& key, int64_t fallback) const;
  int64_t get_non_negative_int(const std::string& key, int64_t fallback) const;
  std::vector<int64_t> get_positive_ints(const std::string& key, std::vector<int64_t> fallback) const;
  std::vector<double> get_numbers(const std::string& key, std::vector<double> fallback) const;
  std::vector<std::string> get_strings(const std::string& key, std::vector<std::string> fallback) const;
  // An integer or an [h, w] pair (image_size, patch_size), as height and width.
  std::pair<int64_t, int64_t> get_size_pair(const std::string& key, int64_t fallback) const;

  [[noreturn]] void fail_field(const std::string& key, const std::string& expectation) const;

 private:
  const nlohmann::json& at(const std::string& key) const;
  const nlohmann::json& json_;
  std::string source_;
};

// JSON nested deeper than this is refused: copying, printing and destroying a value recurse
// once per level, so a file could otherwise exhaust the stack.
constexpr int kMaxJsonDepth = 128;

// Parses JSON text; errors name `source` (invalid JSON with the byte position, nesting deeper
// than kMaxJsonDepth, and with `unique_keys` an object that repeats a key).
nlohmann::json parse_json(const std::string& text, const std::string& source, bool unique_keys = false);

// Reads and parses a JSON file; errors name the file (missing, unreadable, invalid JSON with
// the byte position, nesting deeper than kMaxJsonDepth).
nlohmann::json read_json_file(const std::string& path);
// Writes JSON (2-space indent, sorted keys, trailing newline) atomically.
void write_json_file(const std::string& path, const nlohmann::json& json);

}  // namespace vt
