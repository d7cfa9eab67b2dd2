// libFuzzer target: bytes as a config.json or preprocessor_config.json: parsed as every JSON file
// is (nesting limit, with and without the duplicate-key check), read through the typed accessors
// the model configs use, and as an image processor configuration that is then applied.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "common/json_config.h"
#include "data/image_processor.h"

namespace {

template <typename Read>
void attempt(Read&& read) {
  try {
    read();
  } catch (const std::exception&) {}
}

// Every typed accessor on the object's first keys, as the architectures' from_json read fields.
void read_fields(const nlohmann::json& json) {
  if (!json.is_object()) return;
  const vt::JsonConfig fields(json, "config.json");
  int count = 0;
  for (const auto& item : json.items()) {
    if (++count > 32) break;
    const std::string& key = item.key();
    attempt([&] { fields.has(key); });
    attempt([&] { fields.get_string(key, ""); });
    attempt([&] { fields.get_bool(key, false); });
    attempt([&] { fields.get_number(key, 0.0); });
    attempt([&] { fields.get_probability(key, 0.0); });
    attempt([&] { fields.get_positive_number(key, 1.0); });
    attempt([&] { fields.get_int(key, 0); });
    attempt([&] { fields.get_positive_int(key, 1); });
    attempt([&] { fields.get_non_negative_int(key, 0); });
    attempt([&] { fields.get_positive_ints(key, {}); });
    attempt([&] { fields.get_numbers(key, {}); });
    attempt([&] { fields.get_strings(key, {}); });
    attempt([&] { fields.get_size_pair(key, 224); });
  }
}

// Whether preprocessing an image of a few pixels stays small under this configuration. Sizes up
// to 2^30 are valid and their output is allocated as asked; those are parsed and sized, not run.
bool small_output(const vt::ImageProcessorConfig& config) {
  for (const auto& side :
       {config.size_height, config.size_width, config.shortest_edge, config.longest_edge, config.crop_height, config.crop_width}) {
    if (side && *side > 64) return false;
  }
  return (!config.crop_pct || *config.crop_pct >= 0.25) && config.size_divisor <= 64;
}

vt::Image test_image(int width, int height, int channels) {
  vt::Image image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  image.pixels.resize(static_cast<size_t>(width) * height * channels);
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<uint8_t>(i * 37);
  return image;
}

void apply_processor(const nlohmann::json& json) {
  vt::ImageProcessorConfig config;
  try {
    config = vt::ImageProcessorConfig::from_json(json);
  } catch (const std::exception&) {
    return;
  }
  // What save() writes must read back.
  attempt([&] { vt::ImageProcessorConfig::from_json(config.to_json()); });
  for (int channels : {1, 3}) {
    attempt([&] {
      const vt::ImageProcessor processor(config, channels);
      for (const auto& size : {std::pair{1, 1}, std::pair{480, 640}, std::pair{4000, 3}, std::pair{2, 100000}}) {
        attempt([&] { processor.output_size(size.first, size.second); });
      }
      if (!small_output(config)) return;
      attempt([&] { processor.process(test_image(5, 3, 3)); });
      attempt([&] { processor.process(test_image(2, 9, 4)); });
      attempt([&] { processor.resize_and_crop(test_image(7, 7, 1), vt::Resample::Nearest); });
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Refusing bad input is the readers' job: only crashes and sanitizer reports are findings.
  const std::string text(reinterpret_cast<const char*>(data), size);
  nlohmann::json json;
  try {
    json = vt::parse_json(text, "fuzz.json");
  } catch (const std::exception&) {
    return 0;
  }
  attempt([&] { vt::parse_json(text, "fuzz.json", /*unique_keys=*/true); });
  read_fields(json);
  apply_processor(json);
  return 0;
}
