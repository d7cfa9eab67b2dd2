#include "common/json_config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"

namespace vt {

namespace {

std::string describe(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

}  // namespace

JsonConfig::JsonConfig(const nlohmann::json& json, std::string source) : json_(json), source_(std::move(source)) {
  VT_CHECK(json_.is_object(), source_, ": expected a JSON object, got ", describe(json_));
}

bool JsonConfig::has(const std::string& key) const {
  auto found = json_.find(key);
  return found != json_.end() && !found->is_null();
}

const nlohmann::json& JsonConfig::at(const std::string& key) const { return json_.at(key); }

void JsonConfig::fail_field(const std::string& key, const std::string& expectation) const {
  fail(source_, ": ", key, " must be ", expectation, ", got ", has(key) ? describe(at(key)) : "nothing");
}

std::string JsonConfig::get_string(const std::string& key, const std::string& fallback) const {
  if (!has(key)) return fallback;
  if (!at(key).is_string()) fail_field(key, "a string");
  return at(key).get<std::string>();
}

bool JsonConfig::get_bool(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  if (!at(key).is_boolean()) fail_field(key, "true or false");
  return at(key).get<bool>();
}

double JsonConfig::get_number(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  if (!at(key).is_number()) fail_field(key, "a number");
  double value = at(key).get<double>();
  if (!std::isfinite(value)) fail_field(key, "a finite number");
  return value;
}

double JsonConfig::get_probability(const std::string& key, double fallback) const {
  double value = get_number(key, fallback);
  if (value < 0.0 || value > 1.0) fail_field(key, "a number between 0 and 1");
  return value;
}

double JsonConfig::get_positive_number(const std::string& key, double fallback) const {
  double value = get_number(key, fallback);
  if (!(value > 0.0)) fail_field(key, "a positive number");
  return value;
}

int64_t JsonConfig::get_int(const std::string& key, int64_t fallback) const {
  if (!has(key)) return fallback;
  const auto& value = at(key);
  if (value.is_number_integer()) return value.get<int64_t>();
  // JSON writers may print integral values as 224.0.
  if (value.is_number_float()) {
    double number = value.get<double>();
    if (std::isfinite(number) && std::floor(number) == number && std::fabs(number) < 9e15) {
      return static_cast<int64_t>(number);
    }
  }
  fail_field(key, "an integer");
}

int64_t JsonConfig::get_positive_int(const std::string& key, int64_t fallback) const {
  if (has(key) && !(at(key).is_number() && at(key).get<double>() > 0)) fail_field(key, "a positive integer");
  int64_t value = get_int(key, fallback);
  if (value <= 0) fail_field(key, "a positive integer");
  return value;
}

int64_t JsonConfig::get_non_negative_int(const std::string& key, int64_t fallback) const {
  int64_t value = get_int(key, fallback);
  if (value < 0) fail_field(key, "a non-negative integer");
  return value;
}

std::vector<int64_t> JsonConfig::get_positive_ints(const std::string& key, std::vector<int64_t> fallback) const {
  if (!has(key)) return fallback;
  const auto& value = at(key);
  if (!value.is_array()) fail_field(key, "a list of positive integers");
  std::vector<int64_t> result;
  for (const auto& item : value) {
    if (!item.is_number_integer() || item.get<int64_t>() <= 0) fail_field(key, "a list of positive integers");
    result.push_back(item.get<int64_t>());
  }
  return result;
}

std::vector<double> JsonConfig::get_numbers(const std::string& key, std::vector<double> fallback) const {
  if (!has(key)) return fallback;
  const auto& value = at(key);
  if (value.is_number()) return {value.get<double>()};
  if (!value.is_array()) fail_field(key, "a list of numbers");
  std::vector<double> result;
  for (const auto& item : value) {
    if (!item.is_number()) fail_field(key, "a list of numbers");
    result.push_back(item.get<double>());
  }
  return result;
}

std::vector<std::string> JsonConfig::get_strings(const std::string& key, std::vector<std::string> fallback) const {
  if (!has(key)) return fallback;
  const auto& value = at(key);
  if (!value.is_array()) fail_field(key, "a list of strings");
  std::vector<std::string> result;
  for (const auto& item : value) {
    if (!item.is_string()) fail_field(key, "a list of strings");
    result.push_back(item.get<std::string>());
  }
  return result;
}

std::pair<int64_t, int64_t> JsonConfig::get_size_pair(const std::string& key, int64_t fallback) const {
  if (!has(key)) return {fallback, fallback};
  const auto& value = at(key);
  if (value.is_array()) {
    if (value.size() != 2 || !value[0].is_number_integer() || !value[1].is_number_integer() || value[0].get<int64_t>() <= 0 ||
        value[1].get<int64_t>() <= 0) {
      fail_field(key, "a positive integer or a [height, width] pair of them");
    }
    return {value[0].get<int64_t>(), value[1].get<int64_t>()};
  }
  int64_t size = get_positive_int(key, fallback);
  return {size, size};
}

nlohmann::json parse_json(const std::string& text, const std::string& source, bool unique_keys) {
  using Event = nlohmann::json::parse_event_t;
  std::vector<std::set<std::string>> keys;  // of each object being read, innermost last
  auto check = [&](int depth, Event event, nlohmann::json& parsed) {
    if (event == Event::object_start || event == Event::array_start) {
      VT_CHECK(depth < kMaxJsonDepth, source, ": JSON nested deeper than ", kMaxJsonDepth, " levels");
      if (event == Event::object_start && unique_keys) keys.emplace_back();
    } else if (event == Event::object_end && unique_keys) {
      keys.pop_back();
    } else if (event == Event::key && unique_keys) {
      const std::string key = parsed.get<std::string>();
      VT_CHECK(keys.back().insert(key).second, source, ": key \"", key, "\" appears twice in one object");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text, check);
  } catch (const nlohmann::json::parse_error& error) {
    fail(source, ": invalid JSON at byte ", error.byte, ": ", error.what());
  }
}

nlohmann::json read_json_file(const std::string& path) {
  ErrorScope errors(ErrorCode::Config);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open (", std::strerror(errno), ")");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_json(buffer.str(), path);
}

void write_json_file(const std::string& path, const nlohmann::json& json) { write_file_atomically(path, json.dump(2) + "\n"); }

}  // namespace vt
