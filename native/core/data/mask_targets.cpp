#include "data/mask_targets.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "data/augment.h"
#include "io/coco_masks.h"

namespace vt {

namespace {

// A [height, width] uint8 mask as a one-channel image, and back.
Image mask_image(const torch::Tensor& mask) {
  auto bytes = mask.to(torch::kUInt8).contiguous();
  Image image;
  image.height = static_cast<int>(bytes.size(0));
  image.width = static_cast<int>(bytes.size(1));
  image.channels = 1;
  image.pixels.assign(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
  return image;
}

torch::Tensor mask_tensor(const Image& image) {
  return torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), {image.height, image.width}, torch::kUInt8).clone();
}

class CocoInstanceMasks : public MaskedImageSource {
 public:
  explicit CocoInstanceMasks(std::shared_ptr<const CocoDetectionDataset> dataset) : dataset_(std::move(dataset)) {}
  size_t size() const override { return dataset_->size(); }
  std::string describe(size_t index) const override { return dataset_->describe(index); }
  const std::vector<std::string>& class_names() const override { return dataset_->class_names(); }
  Kind kind() const override { return Kind::Instances; }

  MaskedImage sample(size_t index) const override {
    MaskedImage sample;
    sample.image = dataset_->image(index);
    const auto& annotations = dataset_->annotations(index);
    std::vector<torch::Tensor> masks;
    for (const auto& annotation : annotations) {
      try {
        masks.push_back(decode_segmentation(annotation.segmentation, sample.image.height, sample.image.width));
      } catch (const Error& e) {
        fail(describe(index), ": annotation of category ", annotation.category_id, ": ", e.what());
      }
      sample.class_labels.push_back(dataset_->category_to_label().at(annotation.category_id));
      sample.crowd.push_back(annotation.iscrowd);
    }
    sample.masks = masks.empty() ? torch::zeros({0, sample.image.height, sample.image.width}, torch::kUInt8) : torch::stack(masks);
    return sample;
  }

 private:
  std::shared_ptr<const CocoDetectionDataset> dataset_;
};

class SemanticClassMasks : public MaskedImageSource {
 public:
  SemanticClassMasks(std::shared_ptr<const SegmentationDataset> dataset, std::vector<std::string> class_names, bool reduce_labels,
                     int64_t ignore_index)
      : dataset_(std::move(dataset)), class_names_(std::move(class_names)), reduce_labels_(reduce_labels), ignore_index_(ignore_index) {}
  size_t size() const override { return dataset_->size(); }
  std::string describe(size_t index) const override { return dataset_->describe(index); }
  const std::vector<std::string>& class_names() const override { return class_names_; }
  Kind kind() const override { return Kind::Semantic; }

  MaskedImage sample(size_t index) const override {
    MaskedImage sample;
    sample.image = dataset_->image(index);
    auto map = mask_tensor(dataset_->mask(index)).to(torch::kInt64);
    if (reduce_labels_) map = torch::where(map.eq(0), torch::full_like(map, ignore_index_), map - 1);
    const auto present = std::get<0>(torch::_unique(map.flatten(), /*sorted=*/true));
    std::vector<torch::Tensor> masks;
    for (int64_t i = 0; i < present.size(0); ++i) {
      const int64_t label = present[i].item<int64_t>();
      if (label == ignore_index_) continue;
      VT_CHECK(label >= 0 && label < static_cast<int64_t>(class_names_.size()), describe(index), ": its mask holds class ", label,
               ", outside the model's ", class_names_.size(), " classes (", ignore_index_, " marks pixels to ignore)");
      sample.class_labels.push_back(label);
      sample.crowd.push_back(false);
      masks.push_back(map.eq(label).to(torch::kUInt8));
    }
    sample.masks = masks.empty() ? torch::zeros({0, sample.image.height, sample.image.width}, torch::kUInt8) : torch::stack(masks);
    return sample;
  }

 private:
  std::shared_ptr<const SegmentationDataset> dataset_;
  std::vector<std::string> class_names_;
  bool reduce_labels_;
  int64_t ignore_index_;
};

}  // namespace

std::shared_ptr<MaskedImageSource> coco_instance_masks(std::shared_ptr<const CocoDetectionDataset> dataset) {
  return std::make_shared<CocoInstanceMasks>(std::move(dataset));
}

std::shared_ptr<MaskedImageSource> semantic_class_masks(std::shared_ptr<const SegmentationDataset> dataset,
                                                        std::vector<std::string> class_names, bool reduce_labels, int64_t ignore_index) {
  return std::make_shared<SemanticClassMasks>(std::move(dataset), std::move(class_names), reduce_labels, ignore_index);
}

MaskTargetsBatch load_mask_targets_batch(const MaskedImageSource& source, const std::vector<size_t>& indices,
                                         const ImageProcessor& processor, const AugmentSpec& augment, bool apply_augment, uint64_t seed,
                                         int64_t epoch) {
  VT_CHECK(!indices.empty(), "mask targets: empty batch");
  struct Prepared {
    torch::Tensor pixels;  // [C, h, w]
    std::vector<int64_t> class_labels;
    torch::Tensor masks;  // [n, h, w] uint8
  };
  MaskTargetsBatch batch;
  std::vector<Prepared> prepared;
  int64_t max_height = 0, max_width = 0;
  for (const size_t index : indices) {
    MaskedImage sample = source.sample(index);
    batch.original_sizes.emplace_back(sample.image.height, sample.image.width);
    std::vector<Image> masks;
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < sample.masks.size(0); ++i) {
      if (sample.crowd[static_cast<size_t>(i)]) continue;  // crowd regions are not instances to learn
      masks.push_back(mask_image(sample.masks[i]));
      labels.push_back(sample.class_labels[static_cast<size_t>(i)]);
    }
    if (apply_augment) {
      const AugmentDraw draw = draw_augment(sample.image.height, sample.image.width, augment, seed, epoch, index);
      if (draw.crop) {
        sample.image = crop_image(sample.image, *draw.crop);
        for (auto& mask : masks) mask = crop_image(mask, *draw.crop);
      }
      if (draw.flip) {
        flip_horizontal(sample.image);
        for (auto& mask : masks) flip_horizontal(mask);
      }
    }
    Prepared item;
    item.pixels = processor.normalize(processor.prepare(sample.image));
    const int64_t height = item.pixels.size(1), width = item.pixels.size(2);
    std::vector<torch::Tensor> resized;
    for (size_t i = 0; i < masks.size(); ++i) {
      auto mask = mask_tensor(processor.resize_and_crop(masks[i], Resample::Nearest));
      VT_CHECK(mask.size(0) == height && mask.size(1) == width, source.describe(index), ": a mask resized to ", mask.sizes(),
               " but its image to ", height, "x", width);
      if (!mask.any().item<bool>()) continue;  // cropped away
      resized.push_back(mask);
      item.class_labels.push_back(labels[i]);
    }
    item.masks = resized.empty() ? torch::zeros({0, height, width}, torch::kUInt8) : torch::stack(resized);
    batch.resized_sizes.emplace_back(static_cast<int>(height), static_cast<int>(width));
    max_height = std::max(max_height, height);
    max_width = std::max(max_width, width);
    prepared.push_back(std::move(item));
  }
  const int64_t channels = prepared.front().pixels.size(0);
  const auto count = static_cast<int64_t>(prepared.size());
  batch.pixel_values = torch::zeros({count, channels, max_height, max_width}, torch::kFloat32);
  batch.pixel_mask = torch::zeros({count, max_height, max_width}, torch::kInt64);
  for (int64_t b = 0; b < count; ++b) {
    auto& item = prepared[static_cast<size_t>(b)];
    const int64_t height = item.pixels.size(1), width = item.pixels.size(2);
    batch.pixel_values[b].slice(1, 0, height).slice(2, 0, width).copy_(item.pixels);
    batch.pixel_mask[b].slice(0, 0, height).slice(1, 0, width).fill_(1);
    Target target;
    target.class_labels = torch::tensor(item.class_labels, torch::kInt64);
    target.mask_labels = torch::zeros({item.masks.size(0), max_height, max_width}, torch::kFloat32);
    target.mask_labels.slice(1, 0, height).slice(2, 0, width).copy_(item.masks);
    batch.targets.push_back(std::move(target));
  }
  return batch;
}

}  // namespace vt
