// A COCO panoptic dataset: the panoptic JSON (images, annotations with segments_info, categories
// with isthing), the directory of its images and the directory of its PNGs, whose pixels hold
// segment ids as R + 256 G + 256^2 B (panopticapi's rgb2id; 0 is unlabelled).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/mask_targets.h"

namespace vt {

class CocoPanopticDataset : public MaskedImageSource {
 public:
  // Validates the JSON (names the file and the offending entry) and that every image and PNG exists.
  CocoPanopticDataset(const std::string& annotations_file, const std::string& images_dir, const std::string& masks_dir);
  size_t size() const override { return entries_.size(); }
  std::string describe(size_t index) const override;
  // One mask per segment listed in segments_info (crowds marked), classes by category (sorted by id).
  MaskedImage sample(size_t index) const override;
  const std::vector<std::string>& class_names() const override { return class_names_; }
  Kind kind() const override { return Kind::Panoptic; }
  std::vector<bool> things() const override { return things_; }

 private:
  struct Segment {
    int64_t id = 0;
    int64_t label = 0;
    bool iscrowd = false;
  };
  struct Entry {
    std::string image, png, source;
    std::vector<Segment> segments;
  };
  std::vector<Entry> entries_;
  std::vector<std::string> class_names_;
  std::vector<bool> things_;
};

}  // namespace vt
