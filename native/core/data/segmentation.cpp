// Semantic segmentation data. Decisions worth knowing:
// - masks are read as PIL reads them for transformers (io: read_label_map_file), so a palette PNG
//   yields its indices; a mask must have its image's size, or labels would silently misalign;
// - label maps stay uint8 through reduce_labels, cropping, resizing and flipping, as in
//   transformers (reduce_label works on the uint8 array, PIL resizes it), and become int64 last;
// - the mask goes through the processor's own geometry with NEAREST, so it always has the size
//   of the processed image; augmentation crops both with one box and resizes both to one size;
// - folder datasets pair files by stem: every image needs <stem>.png among the masks, masks
//   without an image are ignored (a masks folder may hold more than a subset's images).
#include "data/segmentation.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <system_error>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "data/augment.h"
#include "data/files.h"
#include "data/manifest.h"
#include "data/random.h"
#include "data/resample.h"

namespace vt {
namespace fs = std::filesystem;

namespace {

std::string quoted(const std::string& s) { return nlohmann::json(s).dump(); }

std::string lowercase(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// BeitImageProcessor.reduce_label on a uint8 array: 0 -> 255, then v - 1 (wrapping), 254 -> 255;
// so 0 and 255 end up 255 and every other v becomes v - 1.
void reduce_labels_in_place(Image& mask) {
  for (uint8_t& v : mask.pixels) v = (v == 0 || v == 255) ? 255 : static_cast<uint8_t>(v - 1);
}

torch::Tensor label_tensor(const Image& mask) {
  torch::Tensor out = torch::empty({mask.height, mask.width}, torch::kInt64);
  std::copy(mask.pixels.begin(), mask.pixels.end(), out.data_ptr<int64_t>());
  return out;
}

// The mask after reduce_labels and the processor's geometry, still uint8.
Image prepare_label_map(const Image& mask, const ImageProcessor& processor, bool reduce_labels, const std::string& source) {
  Image labels = label_map_channel(mask, source);
  if (reduce_labels) reduce_labels_in_place(labels);
  try {
    return processor.resize_and_crop(std::move(labels), Resample::Nearest);
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
}

std::string size_text(const Image& image) { return str_cat(image.width, "x", image.height); }

// ---------------------------------------------------------------------------------------------
// Opening datasets

struct Pairs {
  std::vector<std::string> images, masks;
  std::string source;  // what names the set in errors
};

// Images of `images_dir` (sorted by name) paired with <stem>.png in `masks_dir`.
Pairs pair_folders(const std::string& images_dir, const std::string& masks_dir, const char* images_field, const char* masks_field) {
  VT_CHECK(!images_dir.empty() && !masks_dir.empty(), "segmentation dataset: ", images_field, " and ", masks_field,
           " must be given together");
  require_directory(images_dir, images_field);
  require_directory(masks_dir, masks_field);
  std::map<std::string, std::string> mask_by_stem;
  for (const fs::directory_entry& entry : list_directory(masks_dir)) {
    std::error_code ec;
    if (is_hidden(entry.path()) || !entry.is_regular_file(ec) || lowercase(entry.path().extension().string()) != ".png") {
      continue;
    }
    const auto [it, inserted] = mask_by_stem.emplace(entry.path().stem().string(), entry.path().string());
    VT_CHECK(inserted, masks_field, " ", masks_dir, ": masks ", it->second, " and ", entry.path().string(),
             " have the same name; which one belongs to the image is ambiguous");
  }
  Pairs pairs;
  pairs.source = images_dir;
  std::map<std::string, std::string> image_by_stem;
  for (const fs::directory_entry& entry : list_directory(images_dir)) {
    std::error_code ec;
    if (is_hidden(entry.path()) || !entry.is_regular_file(ec) || !has_image_extension(entry.path())) continue;
    const std::string stem = entry.path().stem().string();
    const auto [seen, inserted] = image_by_stem.emplace(stem, entry.path().string());
    VT_CHECK(inserted, images_field, " ", images_dir, ": images ", seen->second, " and ", entry.path().string(), " would share the mask ",
             stem, ".png");
    const auto mask = mask_by_stem.find(stem);
    VT_CHECK(mask != mask_by_stem.end(), "image ", entry.path().string(), " has no mask: expected ",
             (fs::path(masks_dir) / (stem + ".png")).string());
    pairs.images.push_back(entry.path().string());
    pairs.masks.push_back(mask->second);
  }
  VT_CHECK(!pairs.images.empty(), "no images found in ", images_field, " ", images_dir, " (expected .jpg, .jpeg or .png files)");
  return pairs;
}

std::string manifest_format(const std::string& path) {
  const std::string ext = lowercase(fs::path(path).extension().string());
  if (ext == ".csv") return "csv";
  if (ext == ".jsonl") return "jsonl";
  fail("segmentation manifest ", path, ": cannot tell its format from the extension ", quoted(ext), " (expected .csv or .jsonl)");
}

Pairs read_manifest_pairs(const SegmentationSpec& spec, const std::string& path) {
  const std::vector<ManifestPaths> rows = read_manifest_paths(path, manifest_format(path), {spec.image_column, spec.mask_column});
  VT_CHECK(!rows.empty(), "no images found in ", path, ": the manifest lists none");
  const fs::path manifest_dir = fs::path(path).parent_path();
  const fs::path base = !spec.root.empty() ? fs::path(spec.root) : manifest_dir.empty() ? fs::path(".") : manifest_dir;
  Pairs pairs;
  pairs.source = path;
  for (const ManifestPaths& row : rows) {
    const std::string* columns[2] = {&spec.image_column, &spec.mask_column};
    std::vector<std::string>* lists[2] = {&pairs.images, &pairs.masks};
    for (int c = 0; c < 2; ++c) {
      const fs::path file(row.values[c]);
      const std::string resolved = (file.is_absolute() ? file : base / file).string();
      std::error_code ec;
      VT_CHECK(fs::is_regular_file(resolved, ec), path, ":", row.line, ": ", quoted(*columns[c]), " file ", resolved,
               fs::exists(resolved, ec) ? " is not a regular file" : " not found");
      lists[c]->push_back(resolved);
    }
  }
  return pairs;
}

std::shared_ptr<SegmentationDataset> make_dataset(const Pairs& pairs, const std::vector<size_t>& indices, std::optional<int64_t> limit) {
  const size_t n = limit ? std::min(indices.size(), static_cast<size_t>(*limit)) : indices.size();
  std::vector<std::string> images, masks;
  for (size_t k = 0; k < n; ++k) {
    images.push_back(pairs.images[indices[k]]);
    masks.push_back(pairs.masks[indices[k]]);
  }
  return std::make_shared<SegmentationDataset>(std::move(images), std::move(masks));
}

std::vector<size_t> all_indices(size_t n) {
  std::vector<size_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = i;
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Preprocessing, post-processing

torch::Tensor preprocess_label_map(const Image& mask, const ImageProcessor& processor, bool reduce_labels, const std::string& source) {
  return label_tensor(prepare_label_map(mask, processor, reduce_labels, source));
}

torch::Tensor post_process_semantic_segmentation(const torch::Tensor& logits, std::optional<std::pair<int, int>> target_size) {
  const char* what = "post_process_semantic_segmentation: ";
  VT_CHECK(logits.defined() && logits.dim() == 3, what, "logits must be [num_labels, height, width], got ",
           logits.defined() ? logits.sizes() : c10::IntArrayRef{});
  VT_CHECK(logits.is_floating_point(), what, "logits must be floating point, got ", logits.scalar_type());
  torch::NoGradGuard no_grad;
  const torch::Tensor x = logits.detach();
  if (!target_size) return x.argmax(0);
  const auto [height, width] = *target_size;
  VT_CHECK(height > 0 && width > 0, what, "target size (", height, ", ", width, ") must be a positive (height, width)");
  namespace F = torch::nn::functional;
  const torch::Tensor resized = F::interpolate(
      x.unsqueeze(0), F::InterpolateFuncOptions().size(std::vector<int64_t>{height, width}).mode(torch::kBilinear).align_corners(false));
  return resized[0].argmax(0);
}

// ---------------------------------------------------------------------------------------------
// Mean IoU

MeanIoU::MeanIoU(int64_t num_labels, int64_t ignore_index) : num_labels_(num_labels), ignore_index_(ignore_index) {
  VT_CHECK(num_labels > 0, "MeanIoU: num_labels must be positive, got ", num_labels);
  intersection_.assign(static_cast<size_t>(num_labels), 0.0);
  union_.assign(static_cast<size_t>(num_labels), 0.0);
  label_area_.assign(static_cast<size_t>(num_labels), 0.0);
}

void MeanIoU::sum_over(ReplicaGroup& replicas) {
  for (auto* areas : {&intersection_, &union_, &label_area_}) replicas.sum(*areas);
}

void MeanIoU::add(const torch::Tensor& predicted, const torch::Tensor& labels) {
  VT_CHECK(predicted.defined() && labels.defined(), "MeanIoU: predictions and labels are required");
  VT_CHECK(predicted.sizes() == labels.sizes(), "MeanIoU: predictions ", predicted.sizes(), " and labels ", labels.sizes(),
           " differ in shape");
  VT_CHECK(labels.dim() == 2 || labels.dim() == 3, "MeanIoU: expected [batch, height, width] or [height, width], got ", labels.sizes());
  const auto integral = [](const torch::Tensor& t) { return c10::isIntegralType(t.scalar_type(), false); };
  VT_CHECK(integral(predicted) && integral(labels), "MeanIoU: predictions and labels must be integer tensors, got ",
           predicted.scalar_type(), " and ", labels.scalar_type());
  const torch::Tensor p = predicted.detach().to(torch::kCPU, torch::kInt64).contiguous();
  const torch::Tensor l = labels.detach().to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t* pred = p.data_ptr<int64_t>();
  const int64_t* label = l.data_ptr<int64_t>();
  const int64_t n = l.numel();
  // Counted exactly in integers, then added to the running double totals (as evaluate sums
  // per-image histograms into float64 arrays).
  std::vector<int64_t> inter(num_labels_, 0), uni(num_labels_, 0), area(num_labels_, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pv = pred[i], lv = label[i];
    VT_CHECK(pv >= 0 && pv < num_labels_, "MeanIoU: predicted class ", pv, " is outside [0, ", num_labels_,
             "): predictions must be class indices of the ", num_labels_, " labels");
    if (lv == ignore_index_) continue;
    VT_CHECK(lv >= 0 && lv < num_labels_, "MeanIoU: label value ", lv, " is outside [0, ", num_labels_, ") and is not the ignore index ",
             ignore_index_);
    ++area[lv];
    ++uni[lv];
    if (pv == lv) {
      ++inter[lv];
    } else {
      ++uni[pv];
    }
  }
  for (int64_t c = 0; c < num_labels_; ++c) {
    intersection_[c] += static_cast<double>(inter[c]);
    union_[c] += static_cast<double>(uni[c]);
    label_area_[c] += static_cast<double>(area[c]);
  }
}

std::map<std::string, double> MeanIoU::compute(const std::vector<std::string>& class_names) const {
  VT_CHECK(class_names.empty() || static_cast<int64_t>(class_names.size()) == num_labels_, "MeanIoU: ", class_names.size(),
           " class names for ", num_labels_, " labels");
  std::set<std::string> seen;
  for (const std::string& name : class_names) {
    VT_CHECK(seen.insert(name).second, "MeanIoU: the class name ", quoted(name), " appears twice");
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::map<std::string, double> out;
  // numpy's nanmean: the mean of the non-NaN values, NaN when there are none.
  double iou_sum = 0, acc_sum = 0, total_intersection = 0, total_label = 0;
  int64_t iou_count = 0, acc_count = 0;
  for (int64_t c = 0; c < num_labels_; ++c) {
    const std::string name = class_names.empty() ? std::to_string(c) : class_names[c];
    // x / 0 is NaN for x = 0 (and intersection <= union, label area), as numpy's division gives.
    const double iou = union_[c] > 0 ? intersection_[c] / union_[c] : nan;
    const double acc = label_area_[c] > 0 ? intersection_[c] / label_area_[c] : nan;
    out["iou_" + name] = iou;
    out["accuracy_" + name] = acc;
    if (!std::isnan(iou)) {
      iou_sum += iou;
      ++iou_count;
    }
    if (!std::isnan(acc)) {
      acc_sum += acc;
      ++acc_count;
    }
    total_intersection += intersection_[c];
    total_label += label_area_[c];
  }
  out["mean_iou"] = iou_count > 0 ? iou_sum / static_cast<double>(iou_count) : nan;
  out["mean_accuracy"] = acc_count > 0 ? acc_sum / static_cast<double>(acc_count) : nan;
  out["overall_accuracy"] = total_label > 0 ? total_intersection / total_label : nan;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Dataset

SegmentationDataset::SegmentationDataset(std::vector<std::string> images, std::vector<std::string> masks)
    : images_(std::move(images)), masks_(std::move(masks)) {
  VT_CHECK(images_.size() == masks_.size(), "segmentation dataset: ", images_.size(), " images but ", masks_.size(), " masks");
}

std::pair<std::shared_ptr<SegmentationDataset>, std::shared_ptr<SegmentationDataset>> SegmentationDataset::open(
    const SegmentationSpec& spec, uint64_t seed) {
  const bool folders = !spec.images.empty() || !spec.masks.empty();
  const bool manifest = !spec.manifest.empty();
  VT_CHECK(folders != manifest, "segmentation dataset: give either images and masks (two folders) or manifest",
           folders ? ", not both" : "");
  const bool validation_folders = !spec.validation_images.empty() || !spec.validation_masks.empty();
  const bool validation_manifest = !spec.validation_manifest.empty();
  VT_CHECK(!(validation_folders && validation_manifest),
           "segmentation dataset: give either validation_images and validation_masks or validation_manifest, not both");
  const bool has_validation_set = validation_folders || validation_manifest;
  const double split = spec.validation_split.value_or(has_validation_set ? 0.0 : 0.1);
  VT_CHECK(split >= 0.0 && split < 1.0, "segmentation dataset: validation_split must be in [0, 1), got ", split);
  VT_CHECK(!(has_validation_set && split > 0.0), "segmentation dataset: validation_split (", split,
           ") cannot be combined with a validation set: give one or the other");
  VT_CHECK(!spec.limit || *spec.limit > 0, "segmentation dataset: limit must be a positive integer, got ", spec.limit.value_or(0));

  const Pairs train = folders ? pair_folders(spec.images, spec.masks, "images", "masks") : read_manifest_pairs(spec, spec.manifest);
  if (has_validation_set) {
    const Pairs validation = validation_folders
                                 ? pair_folders(spec.validation_images, spec.validation_masks, "validation_images", "validation_masks")
                                 : read_manifest_pairs(spec, spec.validation_manifest);
    return {make_dataset(train, all_indices(train.images.size()), spec.limit),
            make_dataset(validation, all_indices(validation.images.size()), spec.limit)};
  }
  if (split == 0.0) return {make_dataset(train, all_indices(train.images.size()), spec.limit), nullptr};
  const size_t n = train.images.size();
  const SplitIndices parts = seeded_split(n, split, seed);
  VT_CHECK(!parts.train.empty(), "segmentation dataset: validation_split ", split, " of the ", n, " samples of ", train.source,
           " leaves none for training");
  return {make_dataset(train, parts.train, spec.limit), make_dataset(train, parts.validation, spec.limit)};
}

size_t SegmentationDataset::size() const { return images_.size(); }

std::string SegmentationDataset::describe(size_t index) const {
  VT_CHECK(index < images_.size(), "segmentation dataset: index ", index, " is out of range (", images_.size(), " samples)");
  return images_[index];
}

Image SegmentationDataset::image(size_t index) const { return read_image_file(describe(index)); }

Image SegmentationDataset::mask(size_t index) const { return mask_for(index, image(index)); }

Image SegmentationDataset::mask_for(size_t index, const Image& image) const {
  const std::string& path = masks_.at(index);
  Image mask = read_label_map_file(path);
  VT_CHECK(mask.width == image.width && mask.height == image.height, "mask ", path, " is ", size_text(mask), " but its image ",
           images_[index], " is ", size_text(image), " (width x height)");
  return mask;
}

// ---------------------------------------------------------------------------------------------
// Batches

SegmentationBatch load_segmentation_batch(const SegmentationDataset& dataset, const std::vector<size_t>& indices,
                                          const ImageProcessor& processor, bool reduce_labels, const AugmentSpec& augment,
                                          bool apply_augment, uint64_t seed, int64_t epoch) {
  VT_CHECK(!indices.empty(), "segmentation batch: no indices");
  const bool augmenting = apply_augment && augment.any();
  if (augmenting) check_augment(augment);
  std::vector<Image> images, masks;
  for (const size_t index : indices) {
    const std::string name = dataset.describe(index);
    const Image image = dataset.image(index);
    const Image mask = dataset.mask_for(index, image);
    Image img, labels;
    try {
      const AugmentDraw draw = augmenting ? draw_augment(image.height, image.width, augment, seed, epoch, index) : AugmentDraw{};
      if (draw.crop) {
        // One box for both, then one output size for both: the processor's for this crop
        // (RandomResizedCrop replaces the processor's resize and crop, as in classification).
        const CropBox& box = *draw.crop;
        img = crop_image(convert_channels(image, processor.channels()), box);
        labels = crop_image(mask, box);
        if (reduce_labels) reduce_labels_in_place(labels);
        const auto [out_h, out_w] = processor.output_size(box.height, box.width);
        if (out_h != box.height || out_w != box.width) {
          img = resize_image(img, out_w, out_h, processor.config().resample);
          labels = resize_image(labels, out_w, out_h, Resample::Nearest);
        }
      } else {
        img = processor.prepare(image);
        labels = prepare_label_map(mask, processor, reduce_labels, dataset.masks_[index]);
      }
      if (draw.flip) {
        flip_horizontal(img);
        flip_horizontal(labels);
      }
    } catch (const Error& e) {
      fail(name, ": ", e.what());
    }
    VT_CHECK(img.width == labels.width && img.height == labels.height, name, ": the image comes out as ", size_text(img),
             " but its mask as ", size_text(labels));
    if (!images.empty() && (img.width != images[0].width || img.height != images[0].height)) {
      fail("sample ", name, " comes out as ", size_text(img), " but ", dataset.describe(indices[0]), " as ", size_text(images[0]),
           ": this image processor does not produce a fixed size, so they cannot share a batch");
    }
    images.push_back(std::move(img));
    masks.push_back(std::move(labels));
  }
  const int64_t count = static_cast<int64_t>(images.size());
  const int64_t h = images[0].height, w = images[0].width;
  SegmentationBatch batch;
  batch.pixel_values = torch::empty({count, processor.channels(), h, w}, torch::kFloat32);
  batch.labels = torch::empty({count, h, w}, torch::kInt64);
  float* pixels = batch.pixel_values.data_ptr<float>();
  for (int64_t k = 0; k < count; ++k) {
    processor.normalize_into(images[k], pixels + k * processor.channels() * h * w);
    batch.labels[k].copy_(label_tensor(masks[k]));
  }
  return batch;
}

}  // namespace vt
