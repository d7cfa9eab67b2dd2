// Reading COCO-format JSON files (instances, panoptic): typed fields whose errors name the file
// and the entry ("instances.json: annotations[3].category_id must be an integer").
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace vt::coco_json {

const nlohmann::json& list_field(const nlohmann::json& root, const std::string& file, const char* key);
int64_t int_field(const nlohmann::json& entry, const std::string& file, const std::string& where, const char* key);
std::string string_field(const nlohmann::json& entry, const std::string& file, const std::string& where, const char* key);
// A positive size (width, height) when present and not null.
std::optional<int> optional_size(const nlohmann::json& entry, const std::string& file, const std::string& where, const char* key);

}  // namespace vt::coco_json
