#include "data/coco_json.h"

#include <climits>

#include "common/error.h"

namespace vt::coco_json {

using json = nlohmann::json;

const json& list_field(const json& root, const std::string& file, const char* key) {
  VT_CHECK(root.contains(key) && root.at(key).is_array(), file, ": ", key, " must be a list");
  return root.at(key);
}

int64_t int_field(const json& entry, const std::string& file, const std::string& where, const char* key) {
  VT_CHECK(entry.contains(key), file, ": ", where, ".", key, " is missing");
  const json& v = entry.at(key);
  VT_CHECK(v.is_number_integer(), file, ": ", where, ".", key, " must be an integer, got ", v.dump());
  VT_CHECK(!v.is_number_unsigned() || v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX), file, ": ", where, ".", key,
           " is out of range: ", v.dump());
  return v.get<int64_t>();
}

std::string string_field(const json& entry, const std::string& file, const std::string& where, const char* key) {
  VT_CHECK(entry.contains(key), file, ": ", where, ".", key, " is missing");
  const json& v = entry.at(key);
  VT_CHECK(v.is_string() && !v.get<std::string>().empty(), file, ": ", where, ".", key, " must be a non-empty string, got ", v.dump());
  return v.get<std::string>();
}

std::optional<int> optional_size(const json& entry, const std::string& file, const std::string& where, const char* key) {
  if (!entry.contains(key) || entry.at(key).is_null()) return std::nullopt;
  const json& v = entry.at(key);
  VT_CHECK(v.is_number_integer() && v.get<int64_t>() > 0 && v.get<int64_t>() <= (int64_t{1} << 30), file, ": ", where, ".", key,
           " must be a positive integer, got ", v.dump());
  return static_cast<int>(v.get<int64_t>());
}

}  // namespace vt::coco_json
