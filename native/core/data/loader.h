// The training data pipeline: loader threads (separate from libtorch's compute threads) decode,
// augment and preprocess samples with the model's own image processor, batch them straight into
// one tensor, and keep a few batches ready ahead of the trainer. For a given seed the order and
// the augmentation of every sample are the same on every run, whatever the thread timing, and an
// epoch can be resumed from any batch.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include <torch/torch.h>

#include "data/augment.h"  // CropBox, random_resized_crop_box
#include "data/dataset.h"
#include "data/image_processor.h"

namespace vt {

struct Batch {
  torch::Tensor pixel_values;  // [B, C, H, W] float32
  torch::Tensor labels;        // [B] int64
  std::vector<size_t> indices; // dataset indices, in batch order
};

struct LoaderOptions {
  size_t batch_size = 8;
  bool shuffle = true;
  bool drop_last = false;
  bool augment = false;          // apply the AugmentSpec (training), or not (evaluation)
  uint64_t seed = 42;
  int num_workers = 2;           // loader threads; 0 loads on the calling thread
  int prefetch_batches = 4;      // batches kept ready ahead of next()
};

class BatchLoader {
 public:
  BatchLoader(std::shared_ptr<ImageDataset> dataset, std::shared_ptr<const ImageProcessor> processor,
              AugmentSpec augment, LoaderOptions options);
  ~BatchLoader();  // stops and joins the loader threads
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  size_t batches_per_epoch() const;
  // Begins epoch `epoch` at batch `first_batch` (a resumed run skips what it already saw); the
  // order is a permutation seeded by (seed, epoch) when shuffling.
  void start_epoch(int64_t epoch, size_t first_batch = 0);
  // The next batch of the current epoch, or nullopt at its end. A sample that fails to load
  // rethrows its vt::Error (naming the sample) here, on the caller's thread.
  std::optional<Batch> next();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One training sample as the loader prepares it (exposed for tests): decode, convert channels,
// augment with an RNG seeded by (seed, epoch, index), then the processor's resize/crop (skipped
// when RandomResizedCrop already produced the output size), rescale and normalize.
torch::Tensor prepare_sample(const Image& image, const ImageProcessor& processor, const AugmentSpec& augment,
                             bool apply_augment, uint64_t seed, int64_t epoch, size_t index);

}  // namespace vt
