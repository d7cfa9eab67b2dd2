// The training data pipeline: loader threads (separate from libtorch's compute threads) decode,
// augment and preprocess samples with the model's own image processor, batch them straight into
// one tensor, and keep a few batches ready ahead of the trainer; every dataset kind (classified
// images, COCO detection, segmentation masks) loads through it with its own batch builder. For a given seed the order and
// the augmentation of every sample are the same on every run, whatever the thread timing, and an
// epoch can be resumed from any batch.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include <torch/torch.h>

#include "data/augment.h"  // CropBox, random_resized_crop_box
#include "data/dataset.h"
#include "data/image_processor.h"
#include "data/sampler.h"
#include "nn/module.h"

namespace vt {

// A batch of model inputs as the loader delivers it: what the model takes (pixel values, with the
// labels or targets of the task), and where it came from.
struct Batch : ModelInputs {
  std::vector<size_t> indices;                      // dataset indices, in batch order
  std::vector<std::pair<int, int>> original_sizes;  // (height, width) before preprocessing, where post-processing needs them
  std::vector<std::pair<int, int>> resized_sizes;   // (height, width) after resizing, before padding (padded batches)
};

// Builds the batch of these dataset indices for `epoch` (decode, augment, preprocess), on a loader
// thread; may return nullopt once `cancel` is set. Errors name the sample.
using BatchBuilder =
    std::function<std::optional<Batch>(const std::vector<size_t>& indices, int64_t epoch, const std::atomic<bool>& cancel)>;

struct LoaderOptions {
  size_t batch_size = 8;
  bool shuffle = true;
  bool drop_last = false;
  bool augment = false;      // apply the AugmentSpec (training), or not (evaluation)
  uint64_t seed = 0;         // the run's (TrainingOptions::seed): the order and augmentation follow it
  int num_workers = 2;       // loader threads; 0 loads on the calling thread
  int prefetch_batches = 4;  // batches kept ready ahead of next()
};

class BatchLoader {
 public:
  // Batches of `sampler`'s order, each made by `build` (LoaderOptions' shuffle, augment and seed
  // are the sampler's and the builder's business here).
  BatchLoader(Sampler sampler, BatchBuilder build, LoaderOptions options);
  // Classification: images and their class indices, augmented with `augment` when options.augment.
  BatchLoader(std::shared_ptr<ImageDataset> dataset, std::shared_ptr<const ImageProcessor> processor, AugmentSpec augment,
              LoaderOptions options);
  ~BatchLoader();  // stops and joins the loader threads
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  size_t batches_per_epoch() const;
  // Begins epoch `epoch` at batch `first_batch` (a resumed run skips what it already saw), in
  // the sampler's order for that epoch.
  void start_epoch(int64_t epoch, size_t first_batch = 0);
  // The next batch of the current epoch, or nullopt at its end. A sample that fails to load
  // rethrows its vt::Error (naming the sample) here, on the caller's thread.
  std::optional<Batch> next();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Classification's batches: images with their class indices, decoded, augmented (with
// `apply_augment`) and normalised straight into the batch tensor.
BatchBuilder classification_batches(std::shared_ptr<ImageDataset> dataset, std::shared_ptr<const ImageProcessor> processor,
                                    AugmentSpec augment, bool apply_augment, uint64_t seed);

// One training sample as the loader prepares it (exposed for tests): decode, convert channels,
// augment with an RNG seeded by (seed, epoch, index), then the processor's resize/crop (skipped
// when RandomResizedCrop already produced the output size), rescale and normalize.
torch::Tensor prepare_sample(const Image& image, const ImageProcessor& processor, const AugmentSpec& augment, bool apply_augment,
                             uint64_t seed, int64_t epoch, size_t index);

}  // namespace vt
