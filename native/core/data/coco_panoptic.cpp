#include "data/coco_panoptic.h"

#include <filesystem>
#include <map>

#include "common/error.h"
#include "common/json_config.h"
#include "data/coco_json.h"

namespace vt {

namespace fs = std::filesystem;
using coco_json::int_field;
using coco_json::list_field;
using coco_json::string_field;
using nlohmann::json;

CocoPanopticDataset::CocoPanopticDataset(const std::string& annotations_file, const std::string& images_dir, const std::string& masks_dir) {
  const std::string& file = annotations_file;
  const json root = read_json_file(file);
  VT_CHECK(root.is_object(), file, ": expected a COCO panoptic object, got ", root.type_name());
  const json& images = list_field(root, file, "images");
  const json& annotations = list_field(root, file, "annotations");
  const json& categories = list_field(root, file, "categories");
  VT_CHECK(!categories.empty(), file, ": categories is empty");

  std::map<int64_t, std::pair<std::string, bool>> by_id;  // category id -> (name, isthing)
  for (size_t i = 0; i < categories.size(); ++i) {
    const std::string where = str_cat("categories[", i, "]");
    const json& c = categories[i];
    VT_CHECK(c.is_object(), file, ": ", where, " must be an object, got ", c.dump());
    const int64_t id = int_field(c, file, where, "id");
    const bool isthing =
        !c.contains("isthing") || (c.at("isthing").is_number_integer() ? c.at("isthing").get<int64_t>() != 0
                                                                       : c.at("isthing").is_boolean() && c.at("isthing").get<bool>());
    VT_CHECK(by_id.emplace(id, std::make_pair(string_field(c, file, where, "name"), isthing)).second, file, ": ", where, ".id ", id,
             " repeats another category's");
  }
  std::map<int64_t, int64_t> label_of;
  for (const auto& [id, category] : by_id) {
    label_of.emplace(id, static_cast<int64_t>(class_names_.size()));
    class_names_.push_back(category.first);
    things_.push_back(category.second);
  }

  std::map<int64_t, std::string> image_files;
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string where = str_cat("images[", i, "]");
    VT_CHECK(images[i].is_object(), file, ": ", where, " must be an object, got ", images[i].dump());
    const int64_t id = int_field(images[i], file, where, "id");
    VT_CHECK(image_files.emplace(id, string_field(images[i], file, where, "file_name")).second, file, ": ", where, ".id ", id,
             " repeats another image's");
  }
  for (size_t i = 0; i < annotations.size(); ++i) {
    const std::string where = str_cat("annotations[", i, "]");
    const json& a = annotations[i];
    VT_CHECK(a.is_object(), file, ": ", where, " must be an object, got ", a.dump());
    const int64_t image_id = int_field(a, file, where, "image_id");
    const auto image = image_files.find(image_id);
    VT_CHECK(image != image_files.end(), file, ": ", where, ".image_id ", image_id, " is not the id of any image");
    Entry entry;
    entry.image = (fs::path(images_dir) / image->second).string();
    entry.png = (fs::path(masks_dir) / string_field(a, file, where, "file_name")).string();
    entry.source = str_cat(file, ": ", where);
    VT_CHECK(fs::is_regular_file(entry.image), file, ": ", where, ": image file ", entry.image, " does not exist");
    VT_CHECK(fs::is_regular_file(entry.png), file, ": ", where, ".file_name: panoptic PNG ", entry.png, " does not exist");
    const json& segments = list_field(a, str_cat(file, ": ", where), "segments_info");
    for (size_t s = 0; s < segments.size(); ++s) {
      const std::string at = str_cat(where, ".segments_info[", s, "]");
      Segment segment;
      segment.id = int_field(segments[s], file, at, "id");
      VT_CHECK(segment.id > 0, file, ": ", at, ".id must be positive (0 is unlabelled), got ", segment.id);
      const int64_t category = int_field(segments[s], file, at, "category_id");
      VT_CHECK(label_of.count(category), file, ": ", at, ".category_id ", category, " is not the id of any category");
      segment.label = label_of.at(category);
      segment.iscrowd =
          segments[s].contains("iscrowd") && segments[s].at("iscrowd").is_number_integer() && segments[s].at("iscrowd").get<int64_t>() == 1;
      entry.segments.push_back(segment);
    }
    entries_.push_back(std::move(entry));
  }
  VT_CHECK(!entries_.empty(), file, ": annotations is empty");
}

std::string CocoPanopticDataset::describe(size_t index) const {
  VT_CHECK(index < entries_.size(), "COCO panoptic dataset: index ", index, " is out of range (", entries_.size(), " images)");
  return entries_[index].image;
}

MaskedImage CocoPanopticDataset::sample(size_t index) const {
  VT_CHECK(index < entries_.size(), "COCO panoptic dataset: index ", index, " is out of range (", entries_.size(), " images)");
  const Entry& entry = entries_[index];
  MaskedImage sample;
  sample.image = read_image_file(entry.image);
  const Image png = read_image_file(entry.png);
  VT_CHECK(png.width == sample.image.width && png.height == sample.image.height, entry.png, ": ", png.width, "x", png.height,
           ", but its image ", entry.image, " is ", sample.image.width, "x", sample.image.height);
  VT_CHECK(png.channels >= 3, entry.png, ": a panoptic PNG is RGB (segment ids as R + 256 G + 256^2 B), got ", png.channels, " channel(s)");
  auto rgb = torch::from_blob(const_cast<uint8_t*>(png.pixels.data()), {png.height, png.width, png.channels}, torch::kUInt8)
                 .slice(2, 0, 3)
                 .to(torch::kInt64);
  auto ids = rgb.select(2, 0) + 256 * rgb.select(2, 1) + 65536 * rgb.select(2, 2);
  std::vector<torch::Tensor> masks;
  for (const auto& segment : entry.segments) {
    masks.push_back(ids.eq(segment.id).to(torch::kUInt8));
    sample.class_labels.push_back(segment.label);
    sample.crowd.push_back(segment.iscrowd);
  }
  sample.masks = masks.empty() ? torch::zeros({0, sample.image.height, sample.image.width}, torch::kUInt8) : torch::stack(masks);
  return sample;
}

}  // namespace vt
