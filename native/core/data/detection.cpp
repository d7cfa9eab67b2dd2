// Object detection data, following transformers 4.31's DetrImageProcessor
// (prepare_coco_detection_annotation, resize_annotation, normalize_annotation, pad,
// post_process_object_detection). Decisions worth knowing:
// - box arithmetic is float32 step by step, as numpy does it on the float32 arrays there, so the
//   targets equal transformers' to the bit;
// - boxes are always normalised to (cx, cy, w, h) / image size: 4.31 skipped that when
//   do_normalize was false (a bug later fixed by do_convert_annotations), which hands the model
//   pixel boxes it cannot train on;
// - images are always padded to the batch's largest one (do_pad false could not batch anyway);
// - a COCO JSON's width/height are checked against the decoded image, because a mismatch would
//   silently misplace every box.
#include "data/detection.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_config.h"
#include "data/augment.h"
#include "data/coco_json.h"
#include "data/random.h"

namespace vt {
namespace fs = std::filesystem;

namespace {

using coco_json::int_field;
using coco_json::list_field;
using coco_json::optional_size;
using coco_json::string_field;
using nlohmann::json;

// An image after the processor's geometric steps, and the size its annotations are given in.
struct Sample {
  Image prepared;  // after channel conversion and resize, before rescale/normalize
  int orig_h = 0, orig_w = 0;
};

// prepare_coco_detection_annotation + resize_annotation + normalize_annotation for one image.
DetectionTarget make_target(const std::vector<CocoAnnotation>& annotations, const Sample& sample,
                            const std::map<int64_t, int64_t>* category_to_label, const std::string& name) {
  const float orig_w = static_cast<float>(sample.orig_w), orig_h = static_cast<float>(sample.orig_h);
  const int new_w = sample.prepared.width, new_h = sample.prepared.height;
  // float(s) / float(s_orig) in float64, then np.asarray(..., dtype=np.float32).
  const float ratio_w = static_cast<float>(static_cast<double>(new_w) / sample.orig_w);
  const float ratio_h = static_cast<float>(static_cast<double>(new_h) / sample.orig_h);
  const float norm_w = static_cast<float>(new_w), norm_h = static_cast<float>(new_h);

  std::vector<int64_t> labels;
  std::vector<float> boxes;
  for (size_t k = 0; k < annotations.size(); ++k) {
    const CocoAnnotation& a = annotations[k];
    VT_CHECK(std::isfinite(a.x) && std::isfinite(a.y) && std::isfinite(a.width) && std::isfinite(a.height), name, ": annotation ", k,
             ": bbox [", a.x, ", ", a.y, ", ", a.width, ", ", a.height, "] must be finite numbers");
    // Checked before the crowd / degenerate filters too: an unknown id is a data error either way.
    int64_t label = a.category_id;
    if (category_to_label != nullptr) {
      const auto found = category_to_label->find(a.category_id);
      VT_CHECK(found != category_to_label->end(), name, ": annotation ", k, ": unknown category_id ", a.category_id,
               " (not in the dataset's categories)");
      label = found->second;
    }
    if (a.iscrowd) continue;
    float x0 = static_cast<float>(a.x), y0 = static_cast<float>(a.y);
    float x1 = x0 + static_cast<float>(a.width), y1 = y0 + static_cast<float>(a.height);
    // numpy's clip(min=0, max=size) is minimum(maximum(v, 0), size), against the original size.
    auto clip = [](float v, float hi) { return std::min(std::max(v, 0.0f), hi); };
    x0 = clip(x0, orig_w);
    x1 = clip(x1, orig_w);
    y0 = clip(y0, orig_h);
    y1 = clip(y1, orig_h);
    if (!(x1 > x0 && y1 > y0)) continue;
    x0 *= ratio_w;
    x1 *= ratio_w;
    y0 *= ratio_h;
    y1 *= ratio_h;
    // corners_to_center_format, then / [w, h, w, h] of the resized image (both float32).
    boxes.insert(boxes.end(), {(x0 + x1) / 2.0f / norm_w, (y0 + y1) / 2.0f / norm_h, (x1 - x0) / norm_w, (y1 - y0) / norm_h});
    labels.push_back(label);
  }
  DetectionTarget target;
  const int64_t n = static_cast<int64_t>(labels.size());
  target.class_labels = torch::tensor(labels, torch::kInt64).reshape({n});
  target.boxes = torch::tensor(boxes, torch::kFloat32).reshape({n, 4});
  return target;
}

DetectionBatch assemble(const std::vector<Sample>& samples, const ImageProcessor& processor,
                        const std::vector<std::vector<CocoAnnotation>>* annotations, const std::map<int64_t, int64_t>* category_to_label,
                        const std::vector<std::string>& names) {
  int64_t max_h = 0, max_w = 0;
  for (const Sample& s : samples) {
    max_h = std::max<int64_t>(max_h, s.prepared.height);
    max_w = std::max<int64_t>(max_w, s.prepared.width);
  }
  const int64_t batch = static_cast<int64_t>(samples.size());
  DetectionBatch out;
  out.pixel_values = torch::zeros({batch, processor.channels(), max_h, max_w}, torch::kFloat32);
  out.pixel_mask = torch::zeros({batch, max_h, max_w}, torch::kInt64);
  for (int64_t i = 0; i < batch; ++i) {
    const Sample& s = samples[i];
    const int64_t h = s.prepared.height, w = s.prepared.width;
    out.pixel_values[i].narrow(1, 0, h).narrow(2, 0, w).copy_(processor.normalize(s.prepared));
    out.pixel_mask[i].narrow(0, 0, h).narrow(1, 0, w).fill_(1);
    out.original_sizes.emplace_back(s.orig_h, s.orig_w);
    if (annotations != nullptr) {
      out.targets.push_back(make_target((*annotations)[i], s, category_to_label, names[i]));
    }
  }
  return out;
}

Sample prepare_sample(const Image& image, const ImageProcessor& processor, const std::string& name) {
  Sample s;
  s.orig_h = image.height;
  s.orig_w = image.width;
  try {
    s.prepared = processor.prepare(image);
  } catch (const Error& e) {
    fail(name, ": ", e.what());
  }
  return s;
}

void check_boxes_can_follow(const ImageProcessor& processor) {
  // Boxes are scaled with the resize; a crop would also shift and cut them. ConvNeXt crops below
  // a shortest edge of 384 without do_center_crop (its crop_pct rule).
  const ImageProcessorConfig& c = processor.config();
  const bool convnext_crop = c.processor_type == "ConvNextImageProcessor" && c.do_resize && c.shortest_edge && *c.shortest_edge < 384;
  VT_CHECK(!c.do_center_crop && !convnext_crop, "detection preprocessing: the image processor (", c.processor_type,
           ") crops, which annotation boxes cannot follow");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Preprocessing and post-processing

DetectionBatch preprocess_detection(const std::vector<Image>& images, const ImageProcessor& processor,
                                    const std::vector<std::vector<CocoAnnotation>>* annotations,
                                    const std::map<int64_t, int64_t>* category_to_label) {
  VT_CHECK(!images.empty(), "detection preprocessing: empty batch");
  if (annotations != nullptr) {
    VT_CHECK(annotations->size() == images.size(), "detection preprocessing: ", images.size(), " images but ", annotations->size(),
             " annotation lists");
    check_boxes_can_follow(processor);
  }
  std::vector<Sample> samples;
  std::vector<std::string> names;
  samples.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    names.push_back(str_cat("image ", i));
    samples.push_back(prepare_sample(images[i], processor, names.back()));
  }
  return assemble(samples, processor, annotations, category_to_label, names);
}

std::vector<std::vector<Detection>> post_process_object_detection(const torch::Tensor& logits, const torch::Tensor& pred_boxes,
                                                                  double threshold, const std::vector<std::pair<int, int>>& target_sizes) {
  const char* what = "post_process_object_detection: ";
  VT_CHECK(logits.defined() && pred_boxes.defined(), what, "logits and pred_boxes are required");
  VT_CHECK(logits.dim() == 3, what, "logits must be [batch, queries, classes + 1], got ", logits.sizes());
  VT_CHECK(logits.size(2) >= 2, what, "logits need at least one class and the no-object class, got ", logits.sizes());
  VT_CHECK(pred_boxes.dim() == 3 && pred_boxes.size(2) == 4, what, "pred_boxes must be [batch, queries, 4], got ", pred_boxes.sizes());
  VT_CHECK(pred_boxes.size(0) == logits.size(0) && pred_boxes.size(1) == logits.size(1), what, "logits ", logits.sizes(),
           " and pred_boxes ", pred_boxes.sizes(), " differ in batch or query count");
  VT_CHECK(logits.is_floating_point() && pred_boxes.is_floating_point(), what, "logits and pred_boxes must be floating point");
  const int64_t batch = logits.size(0);
  VT_CHECK(target_sizes.empty() || static_cast<int64_t>(target_sizes.size()) == batch, what, batch, " images in the batch but ",
           target_sizes.size(), " target sizes");
  for (size_t i = 0; i < target_sizes.size(); ++i) {
    VT_CHECK(target_sizes[i].first > 0 && target_sizes[i].second > 0, what, "target_sizes[", i, "] = (", target_sizes[i].first, ", ",
             target_sizes[i].second, ") must be a positive (height, width)");
  }

  torch::NoGradGuard no_grad;
  const torch::Tensor prob = torch::softmax(logits.detach().cpu(), -1);
  const auto best = prob.slice(-1, 0, prob.size(-1) - 1).max(-1);
  const torch::Tensor scores = std::get<0>(best), labels = std::get<1>(best);
  // center_to_corners_format: the same ops in the same order as transformers' torch version.
  const torch::Tensor b = pred_boxes.detach().cpu();
  const torch::Tensor cx = b.select(-1, 0), cy = b.select(-1, 1), w = b.select(-1, 2), h = b.select(-1, 3);
  torch::Tensor boxes = torch::stack({cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h}, -1);
  if (!target_sizes.empty()) {
    std::vector<int64_t> scale;
    for (const auto& [th, tw] : target_sizes) scale.insert(scale.end(), {tw, th, tw, th});
    // An integer tensor, like torch.tensor(target_sizes): boxes keep their floating dtype.
    boxes = boxes * torch::tensor(scale, torch::kInt64).reshape({batch, 1, 4});
  }
  const torch::Tensor keep = scores > threshold;

  std::vector<std::vector<Detection>> results(static_cast<size_t>(batch));
  const torch::Tensor scores64 = scores.to(torch::kFloat64).contiguous();
  const torch::Tensor boxes64 = boxes.to(torch::kFloat64).contiguous();
  const torch::Tensor labels64 = labels.contiguous();
  const torch::Tensor keep_c = keep.contiguous();
  const int64_t queries = logits.size(1);
  const double* s = scores64.data_ptr<double>();
  const double* bx = boxes64.data_ptr<double>();
  const int64_t* l = labels64.data_ptr<int64_t>();
  const bool* k = keep_c.data_ptr<bool>();
  for (int64_t i = 0; i < batch; ++i) {
    for (int64_t q = 0; q < queries; ++q) {
      const int64_t at = i * queries + q;
      if (!k[at]) continue;
      Detection d;
      d.score = s[at];
      d.label = l[at];
      d.xmin = bx[at * 4];
      d.ymin = bx[at * 4 + 1];
      d.xmax = bx[at * 4 + 2];
      d.ymax = bx[at * 4 + 3];
      results[i].push_back(d);
    }
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// COCO dataset

CocoDetectionDataset::CocoDetectionDataset(const std::string& annotations_file, const std::string& images_dir) {
  const std::string& file = annotations_file;
  const json root = read_json_file(file);
  VT_CHECK(root.is_object(), file, ": expected a COCO instances object, got ", root.type_name());
  const json& images = list_field(root, file, "images");
  const json& annotations = list_field(root, file, "annotations");
  const json& categories = list_field(root, file, "categories");
  VT_CHECK(!images.empty(), file, ": images is empty");
  VT_CHECK(!categories.empty(), file, ": categories is empty");

  // Categories: classes sorted by id.
  std::map<int64_t, std::pair<std::string, size_t>> by_id;  // id -> (name, index in the JSON)
  for (size_t i = 0; i < categories.size(); ++i) {
    const std::string where = str_cat("categories[", i, "]");
    const json& c = categories[i];
    VT_CHECK(c.is_object(), file, ": ", where, " must be an object, got ", c.dump());
    const int64_t id = int_field(c, file, where, "id");
    const std::string name = string_field(c, file, where, "name");
    const auto [it, inserted] = by_id.emplace(id, std::make_pair(name, i));
    VT_CHECK(inserted, file, ": ", where, ".id ", id, " repeats categories[", it->second.second, "].id");
  }
  for (const auto& [id, named] : by_id) {
    category_to_label_.emplace(id, static_cast<int64_t>(class_names_.size()));
    class_names_.push_back(named.first);
  }

  // Images, in the JSON's order.
  std::map<int64_t, size_t> image_index;
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string where = str_cat("images[", i, "]");
    const json& im = images[i];
    VT_CHECK(im.is_object(), file, ": ", where, " must be an object, got ", im.dump());
    Entry e;
    e.id = int_field(im, file, where, "id");
    const std::string name = string_field(im, file, where, "file_name");
    e.width = optional_size(im, file, where, "width");
    e.height = optional_size(im, file, where, "height");
    const fs::path p(name);
    e.path = (p.is_absolute() ? p : fs::path(images_dir) / p).string();
    e.source = str_cat(file, ": ", where);
    const auto [it, inserted] = image_index.emplace(e.id, i);
    VT_CHECK(inserted, file, ": ", where, ".id ", e.id, " repeats images[", it->second, "].id");
    std::error_code ec;
    VT_CHECK(fs::is_regular_file(e.path, ec), file, ": ", where, ".file_name: image file ", e.path, " does not exist");
    entries_.push_back(std::move(e));
  }

  // Annotations, grouped by image in the JSON's order.
  for (size_t i = 0; i < annotations.size(); ++i) {
    const std::string where = str_cat("annotations[", i, "]");
    const json& an = annotations[i];
    VT_CHECK(an.is_object(), file, ": ", where, " must be an object, got ", an.dump());
    const int64_t image_id = int_field(an, file, where, "image_id");
    const auto image = image_index.find(image_id);
    VT_CHECK(image != image_index.end(), file, ": ", where, ".image_id ", image_id, " is not the id of any image");
    CocoAnnotation a;
    a.category_id = int_field(an, file, where, "category_id");
    VT_CHECK(by_id.count(a.category_id), file, ": ", where, ".category_id ", a.category_id, " is not the id of any category");
    const json* bbox = an.contains("bbox") ? &an.at("bbox") : nullptr;
    const bool bbox_ok =
        bbox != nullptr && bbox->is_array() && bbox->size() == 4 &&
        std::all_of(bbox->begin(), bbox->end(), [](const json& v) { return v.is_number() && std::isfinite(v.get<double>()); });
    VT_CHECK(bbox_ok, file, ": ", where, ".bbox must be [x, y, width, height], got ",
             bbox != nullptr ? bbox->dump() : std::string("nothing"));
    a.x = (*bbox)[0].get<double>();
    a.y = (*bbox)[1].get<double>();
    a.width = (*bbox)[2].get<double>();
    a.height = (*bbox)[3].get<double>();
    VT_CHECK(a.width >= 0 && a.height >= 0, file, ": ", where, ".bbox has a negative width or height: ", bbox->dump());
    if (an.contains("area") && !an.at("area").is_null()) {
      const json& v = an.at("area");
      VT_CHECK(v.is_number() && std::isfinite(v.get<double>()) && v.get<double>() >= 0, file, ": ", where,
               ".area must be a non-negative number, got ", v.dump());
      a.area = v.get<double>();
    }
    if (an.contains("iscrowd") && !an.at("iscrowd").is_null()) {
      const json& v = an.at("iscrowd");
      const bool ok = v.is_boolean() || (v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1));
      VT_CHECK(ok, file, ": ", where, ".iscrowd must be 0 or 1, got ", v.dump());
      a.iscrowd = v.is_boolean() ? v.get<bool>() : v.get<int64_t>() == 1;
    }
    if (an.contains("segmentation")) a.segmentation = an.at("segmentation");
    entries_[image->second].annotations.push_back(a);
  }
}

size_t CocoDetectionDataset::size() const { return entries_.size(); }
const std::vector<std::string>& CocoDetectionDataset::class_names() const { return class_names_; }
const std::map<int64_t, int64_t>& CocoDetectionDataset::category_to_label() const { return category_to_label_; }

const CocoDetectionDataset::Entry& CocoDetectionDataset::entry(size_t index) const {
  VT_CHECK(index < entries_.size(), "COCO dataset: index ", index, " is out of range (", entries_.size(), " images)");
  return entries_[index];
}

int64_t CocoDetectionDataset::image_id(size_t index) const { return entry(index).id; }
std::string CocoDetectionDataset::describe(size_t index) const { return entry(index).path; }
const std::vector<CocoAnnotation>& CocoDetectionDataset::annotations(size_t index) const { return entry(index).annotations; }

Image CocoDetectionDataset::image(size_t index) const {
  const Entry& e = entry(index);
  Image image = read_image_file(e.path);
  if ((e.width && *e.width != image.width) || (e.height && *e.height != image.height)) {
    fail(e.source, " says ", e.width ? std::to_string(*e.width) : "?", "x", e.height ? std::to_string(*e.height) : "?",
         " (width x height) but ", e.path, " decodes to ", image.width, "x", image.height, "; the boxes would not fit the image");
  }
  return image;
}

// ---------------------------------------------------------------------------------------------
// Training batches

DetectionBatch load_detection_batch(const CocoDetectionDataset& dataset, const std::vector<size_t>& indices,
                                    const ImageProcessor& processor, const DetectionAugment& augment, bool apply_augment, uint64_t seed,
                                    int64_t epoch) {
  VT_CHECK(!indices.empty(), "detection batch: no indices");
  check_boxes_can_follow(processor);
  const bool multi_scale = apply_augment && !augment.shortest_edges.empty();
  std::map<int, ImageProcessor> scaled;  // one processor per shortest edge used in this batch
  if (multi_scale) {
    const ImageProcessorConfig& c = processor.config();
    VT_CHECK(c.do_resize && c.shortest_edge && !c.size_height, "detection augmentation: multi-scale needs an image ",
             "processor that resizes by shortest_edge, but ", c.processor_type, " has do_resize = ", c.do_resize,
             " and no shortest_edge rule");
    for (int edge : augment.shortest_edges) {
      VT_CHECK(edge > 0, "detection augmentation: shortest_edges must be positive, got ", edge);
      if (scaled.count(edge)) continue;
      ImageProcessorConfig copy = c;
      copy.shortest_edge = edge;
      scaled.emplace(edge, ImageProcessor(std::move(copy), processor.channels()));
    }
  }

  std::vector<Sample> samples;
  std::vector<std::vector<CocoAnnotation>> annotations;
  std::vector<std::string> names;
  for (const size_t index : indices) {
    names.push_back(dataset.describe(index));
    Image image = dataset.image(index);
    std::vector<CocoAnnotation> boxes = dataset.annotations(index);
    const ImageProcessor* use = &processor;
    if (apply_augment) {
      std::mt19937_64 rng(mix_seed(seed, static_cast<uint64_t>(epoch), index));
      // Both draws happen whatever is enabled, so switching one augmentation on or off leaves the
      // other's choices unchanged.
      const bool flip = uniform01(rng) < 0.5;
      const size_t pick = static_cast<size_t>(uniform_below(rng, std::max<size_t>(augment.shortest_edges.size(), 1)));
      if (augment.horizontal_flip && flip) {
        flip_horizontal(image);
        for (CocoAnnotation& a : boxes) a.x = image.width - a.x - a.width;
      }
      if (multi_scale) use = &scaled.at(augment.shortest_edges[pick]);
    }
    samples.push_back(prepare_sample(image, *use, names.back()));
    annotations.push_back(std::move(boxes));
  }
  return assemble(samples, processor, &annotations, &dataset.category_to_label(), names);
}

}  // namespace vt
