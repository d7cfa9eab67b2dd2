// The batch loader: epoch coverage and shapes, order and augmentation reproducible across runs,
// worker counts and resumption, evaluation equal to ImageProcessor::process, RandomResizedCrop
// bounds, errors from workers, and shutdown mid-epoch.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/image_processor.h"
#include "data/loader.h"
#include "io/image.h"
#include "test_util.h"

namespace fs = std::filesystem;
using vt_test::expect_error;
using vt_test::TempDir;

namespace {

// Images made from their index, of varying sizes; optionally slow, or failing at one index.
class SyntheticDataset : public vt::ImageDataset {
 public:
  explicit SyntheticDataset(size_t n, int channels = 3) : n_(n), channels_(channels) {}
  size_t size() const override { return n_; }
  vt::Image image(size_t index) const override {
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    if (fail_at && index == *fail_at) vt::fail("synthetic failure");
    ++decoded;
    vt::Image image;
    image.width = 20 + static_cast<int>(index % 7);
    image.height = 15 + static_cast<int>(index % 5);
    image.channels = channels_;
    image.pixels.resize(static_cast<size_t>(image.width) * image.height * channels_);
    for (size_t p = 0; p < image.pixels.size(); ++p) image.pixels[p] = static_cast<uint8_t>(index * 13 + p * 5 + p / 17);
    return image;
  }
  int64_t label(size_t index) const override { return static_cast<int64_t>(index % 4); }
  std::string describe(size_t index) const override { return "synthetic[" + std::to_string(index) + "]"; }

  int delay_ms = 0;
  std::optional<size_t> fail_at;
  mutable std::atomic<int> decoded{0};

 private:
  size_t n_;
  int channels_;
};

std::shared_ptr<const vt::ImageProcessor> vit_processor(int size = 16, int resample = 2) {
  const nlohmann::json j = {{"image_processor_type", "ViTImageProcessor"},
                            {"do_resize", true},
                            {"size", {{"height", size}, {"width", size}}},
                            {"resample", resample},
                            {"do_rescale", true},
                            {"rescale_factor", 1.0 / 255.0},
                            {"do_normalize", true},
                            {"image_mean", {0.485, 0.456, 0.406}},
                            {"image_std", {0.229, 0.224, 0.225}}};
  return std::make_shared<vt::ImageProcessor>(vt::ImageProcessorConfig::from_json(j), 3);
}

vt::AugmentSpec full_augment() {
  vt::AugmentSpec a;
  a.random_resized_crop = true;
  a.horizontal_flip = true;
  return a;
}

vt::LoaderOptions options(size_t batch, int workers, bool augment = false) {
  vt::LoaderOptions o;
  o.batch_size = batch;
  o.num_workers = workers;
  o.augment = augment;
  o.seed = 1234;
  return o;
}

std::vector<vt::Batch> epoch_batches(vt::BatchLoader& loader, int64_t epoch, size_t first = 0) {
  loader.start_epoch(epoch, first);
  std::vector<vt::Batch> out;
  while (auto batch = loader.next()) out.push_back(std::move(*batch));
  return out;
}

void expect_same_batches(const std::vector<vt::Batch>& a, const std::vector<vt::Batch>& b, size_t b_offset = 0) {
  ASSERT_EQ(a.size(), b.size() + b_offset);
  for (size_t i = 0; i < b.size(); ++i) {
    const vt::Batch& x = a[i + b_offset];
    const vt::Batch& y = b[i];
    EXPECT_EQ(x.indices, y.indices) << "batch " << i + b_offset;
    EXPECT_TRUE(torch::equal(x.pixel_values, y.pixel_values)) << "batch " << i + b_offset;
    EXPECT_TRUE(torch::equal(x.labels, y.labels)) << "batch " << i + b_offset;
  }
}

}  // namespace

TEST(Loader, EpochCoversEverySampleOnceWithBatchShapes) {
  auto data = std::make_shared<SyntheticDataset>(23);
  for (const int workers : {0, 2}) {
    SCOPED_TRACE(workers);
    vt::BatchLoader loader(data, vit_processor(), {}, options(5, workers));
    EXPECT_EQ(loader.batches_per_epoch(), 5u);
    const std::vector<vt::Batch> batches = epoch_batches(loader, 0);
    ASSERT_EQ(batches.size(), 5u);
    std::multiset<size_t> seen;
    for (size_t b = 0; b < batches.size(); ++b) {
      const int64_t expected = b < 4 ? 5 : 3;
      EXPECT_EQ(batches[b].pixel_values.sizes(), (std::vector<int64_t>{expected, 3, 16, 16}));
      EXPECT_EQ(batches[b].pixel_values.dtype(), torch::kFloat32);
      EXPECT_EQ(batches[b].labels.sizes(), (std::vector<int64_t>{expected}));
      EXPECT_EQ(batches[b].labels.dtype(), torch::kInt64);
      ASSERT_EQ(batches[b].indices.size(), static_cast<size_t>(expected));
      for (size_t k = 0; k < batches[b].indices.size(); ++k) {
        EXPECT_EQ(batches[b].labels[k].item<int64_t>(), data->label(batches[b].indices[k]));
      }
      seen.insert(batches[b].indices.begin(), batches[b].indices.end());
    }
    EXPECT_EQ(seen.size(), 23u);
    EXPECT_EQ(std::set<size_t>(seen.begin(), seen.end()).size(), 23u);
    EXPECT_FALSE(loader.next().has_value());  // stays at the end
  }
}

TEST(Loader, DropLastAndSequentialOrder) {
  auto data = std::make_shared<SyntheticDataset>(23);
  vt::LoaderOptions o = options(5, 2);
  o.drop_last = true;
  o.shuffle = false;
  vt::BatchLoader loader(data, vit_processor(), {}, o);
  EXPECT_EQ(loader.batches_per_epoch(), 4u);
  const std::vector<vt::Batch> batches = epoch_batches(loader, 0);
  ASSERT_EQ(batches.size(), 4u);
  for (size_t b = 0; b < 4; ++b) {
    EXPECT_EQ(batches[b].indices, (std::vector<size_t>{b * 5, b * 5 + 1, b * 5 + 2, b * 5 + 3, b * 5 + 4}));
  }
}

TEST(Loader, SameSeedSameBatchesAcrossLoadersAndWorkerCounts) {
  auto data = std::make_shared<SyntheticDataset>(19);
  const auto processor = vit_processor();
  vt::BatchLoader two(data, processor, full_augment(), options(4, 2, true));
  vt::BatchLoader again(data, processor, full_augment(), options(4, 2, true));
  vt::BatchLoader inline_loader(data, processor, full_augment(), options(4, 0, true));
  vt::LoaderOptions many = options(4, 3, true);
  many.prefetch_batches = 1;
  vt::BatchLoader narrow(data, processor, full_augment(), many);
  const std::vector<vt::Batch> reference = epoch_batches(two, 2);
  expect_same_batches(reference, epoch_batches(again, 2));
  expect_same_batches(reference, epoch_batches(inline_loader, 2));
  expect_same_batches(reference, epoch_batches(narrow, 2));

  vt::LoaderOptions other_seed = options(4, 2, true);
  other_seed.seed = 99;
  vt::BatchLoader different(data, processor, full_augment(), other_seed);
  EXPECT_NE(reference[0].indices, epoch_batches(different, 2)[0].indices);
}

TEST(Loader, ResumingMidEpochGivesTheRemainingBatches) {
  auto data = std::make_shared<SyntheticDataset>(26);
  vt::BatchLoader loader(data, vit_processor(), full_augment(), options(4, 2, true));
  const std::vector<vt::Batch> full = epoch_batches(loader, 3);
  ASSERT_EQ(full.size(), 7u);
  vt::BatchLoader resumed(data, vit_processor(), full_augment(), options(4, 2, true));
  expect_same_batches(full, epoch_batches(resumed, 3, 4), 4);
  vt::BatchLoader resumed_inline(data, vit_processor(), full_augment(), options(4, 0, true));
  expect_same_batches(full, epoch_batches(resumed_inline, 3, 2), 2);
  EXPECT_TRUE(epoch_batches(resumed, 3, 7).empty());
  expect_error([&] { resumed.start_epoch(3, 8); }, {"batch 8", "7 batches"});

  // start_epoch in the middle of an epoch stops it and starts over cleanly.
  vt::BatchLoader interrupted(data, vit_processor(), full_augment(), options(4, 2, true));
  interrupted.start_epoch(0);
  ASSERT_TRUE(interrupted.next().has_value());
  expect_same_batches(full, epoch_batches(interrupted, 3));
}

TEST(Loader, ShuffleDiffersBetweenEpochs) {
  auto data = std::make_shared<SyntheticDataset>(30);
  vt::BatchLoader loader(data, vit_processor(), {}, options(30, 2));
  const std::vector<size_t> e0 = epoch_batches(loader, 0)[0].indices;
  const std::vector<size_t> e1 = epoch_batches(loader, 1)[0].indices;
  EXPECT_NE(e0, e1);
  EXPECT_EQ(std::set<size_t>(e0.begin(), e0.end()), std::set<size_t>(e1.begin(), e1.end()));
  EXPECT_EQ(epoch_batches(loader, 0)[0].indices, e0);
}

TEST(Loader, EvaluationEqualsImageProcessorExactly) {
  TempDir dir;
  fs::create_directories(dir.path() / "photos" / "a");
  fs::create_directories(dir.path() / "photos" / "b");
  fs::copy_file(vt_test::fixture("images/chelsea.png"), dir.path() / "photos" / "a" / "chelsea.png");
  fs::copy_file(vt_test::fixture("images/rocket.jpg"), dir.path() / "photos" / "b" / "rocket.jpg");
  fs::copy_file(vt_test::fixture("coco-sample/000000039769.jpg"), dir.path() / "photos" / "b" / "cats.jpg");
  vt::DatasetSpec spec;
  spec.format = "imagefolder";
  spec.root = (dir.path() / "photos").string();
  spec.validation_split = 0.0;
  const vt::DatasetSplits splits = vt::open_classification_dataset(spec, 5);
  const auto processor = vit_processor(40, 3);

  vt::BatchLoader loader(splits.train, processor, full_augment(), options(2, 2, /*augment=*/false));
  size_t checked = 0;
  for (const vt::Batch& batch : epoch_batches(loader, 1)) {
    for (size_t k = 0; k < batch.indices.size(); ++k) {
      const vt::Image image = splits.train->image(batch.indices[k]);
      const torch::Tensor expected = processor->process(image);
      EXPECT_TRUE(torch::equal(batch.pixel_values[k], expected)) << splits.train->describe(batch.indices[k]);
      EXPECT_TRUE(torch::equal(vt::prepare_sample(image, *processor, full_augment(), false, 1, 1, 0), expected));
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3u);
}

TEST(Loader, AugmentationIsReproducibleAndKeepsTheShape) {
  SyntheticDataset data(4);
  const auto processor = vit_processor();
  const vt::Image image = data.image(2);
  const torch::Tensor plain = processor->process(image);
  const vt::AugmentSpec augment = full_augment();
  const torch::Tensor a = vt::prepare_sample(image, *processor, augment, true, 42, 0, 2);
  EXPECT_EQ(a.sizes(), plain.sizes());
  EXPECT_FALSE(torch::equal(a, plain));
  EXPECT_TRUE(torch::equal(a, vt::prepare_sample(image, *processor, augment, true, 42, 0, 2)));
  // Another epoch, index or seed draws another crop.
  EXPECT_FALSE(torch::equal(a, vt::prepare_sample(image, *processor, augment, true, 42, 1, 2)));
  EXPECT_FALSE(torch::equal(a, vt::prepare_sample(image, *processor, augment, true, 42, 0, 3)));
  EXPECT_FALSE(torch::equal(a, vt::prepare_sample(image, *processor, augment, true, 43, 0, 2)));

  // Flip only: the processed image, mirrored, for about half of the samples.
  vt::AugmentSpec flip;
  flip.horizontal_flip = true;
  int flipped = 0;
  for (size_t index = 0; index < 40; ++index) {
    const torch::Tensor t = vt::prepare_sample(image, *processor, flip, true, 42, 0, index);
    if (torch::equal(t, plain)) continue;
    EXPECT_TRUE(torch::equal(t, plain.flip({2}))) << index;
    ++flipped;
  }
  EXPECT_GT(flipped, 8);
  EXPECT_LT(flipped, 32);
}

TEST(Loader, RandomResizedCropOfTheWholeImageIsTheProcessorsResize) {
  SyntheticDataset data(4);
  const auto processor = vit_processor();
  const vt::Image image = data.image(3);  // 23 x 18
  vt::AugmentSpec whole;
  whole.random_resized_crop = true;
  whole.scale = {1.0, 1.0};
  const double aspect = static_cast<double>(image.width) / image.height;
  whole.ratio = {aspect, aspect};
  EXPECT_TRUE(torch::equal(vt::prepare_sample(image, *processor, whole, true, 1, 2, 3), processor->process(image)));
}

TEST(Loader, RandomResizedCropStaysInsideTheImage) {
  const vt::AugmentSpec augment = full_augment();
  const std::pair<int, int> sizes[] = {{18, 23}, {224, 224}, {1, 1}, {3, 400}, {400, 3}, {7, 5}};
  int fallbacks = 0;
  for (const auto& [height, width] : sizes) {
    for (uint64_t seed = 0; seed < 300; ++seed) {
      std::mt19937_64 rng(seed);
      const vt::CropBox box = vt::random_resized_crop_box(height, width, augment, rng);
      ASSERT_GE(box.top, 0);
      ASSERT_GE(box.left, 0);
      ASSERT_GE(box.height, 1);
      ASSERT_GE(box.width, 1);
      ASSERT_LE(box.top + box.height, height) << height << "x" << width << " seed " << seed;
      ASSERT_LE(box.left + box.width, width) << height << "x" << width << " seed " << seed;
      const double area = static_cast<double>(box.height) * box.width / (static_cast<double>(height) * width);
      if (height >= 18 && width >= 18 && height == width) {
        // Large square inputs: the area fraction is inside the scale range, up to rounding.
        EXPECT_GE(area, 0.08 * 0.85);
        EXPECT_LE(area, 1.0);
      }
      if (height == 3 && box.height == 3 && box.width == 4) ++fallbacks;  // 3 x round(3 * 4/3)
    }
  }
  EXPECT_GT(fallbacks, 0);  // the center-crop fallback, ratio clamped to 4/3
}

TEST(Loader, CorruptImageFileIsNamedByNext) {
  TempDir dir;
  vt::Image ok;
  ok.width = 6;
  ok.height = 6;
  ok.channels = 3;
  ok.pixels.assign(108, 100);
  fs::create_directories(dir.path() / "root" / "cat");
  fs::create_directories(dir.path() / "root" / "dog");
  vt::write_png(ok, dir.file("root/cat/a.png"));
  vt::write_png(ok, dir.file("root/cat/b.png"));
  vt_test::write_bytes(dir.file("root/dog/broken.jpg"), "this is not a JPEG at all");
  vt::DatasetSpec spec;
  spec.format = "imagefolder";
  spec.root = dir.file("root");
  spec.validation_split = 0.0;
  const vt::DatasetSplits splits = vt::open_classification_dataset(spec, 5);
  for (const int workers : {0, 2}) {
    SCOPED_TRACE(workers);
    vt::LoaderOptions o = options(1, workers);
    o.shuffle = false;
    vt::BatchLoader loader(splits.train, vit_processor(), {}, o);
    loader.start_epoch(0);
    ASSERT_TRUE(loader.next().has_value());
    ASSERT_TRUE(loader.next().has_value());
    expect_error([&] { loader.next(); }, {"decode failed for", dir.file("root/dog/broken.jpg")});
    expect_error([&] { loader.next(); }, {"broken.jpg"});  // the epoch stays failed
    loader.start_epoch(0, 1);                              // a new start recovers
    ASSERT_TRUE(loader.next().has_value());
  }
}

TEST(Loader, WorkerErrorsArriveInOrderOnTheCallersThread) {
  auto data = std::make_shared<SyntheticDataset>(20);
  data->fail_at = 13;
  vt::LoaderOptions o = options(4, 2);
  o.shuffle = false;
  vt::BatchLoader loader(data, vit_processor(), {}, o);
  loader.start_epoch(0);
  for (int b = 0; b < 3; ++b) ASSERT_TRUE(loader.next().has_value()) << b;  // batches before the failure
  expect_error([&] { loader.next(); }, {"decode failed for synthetic[13]", "synthetic failure"});
}

TEST(Loader, MismatchedSizesNameTheSamples) {
  auto data = std::make_shared<SyntheticDataset>(4);
  nlohmann::json j = {{"image_processor_type", "ViTImageProcessor"}, {"do_resize", false}};
  auto processor = std::make_shared<vt::ImageProcessor>(vt::ImageProcessorConfig::from_json(j), 3);
  vt::LoaderOptions o = options(2, 0);
  o.shuffle = false;
  vt::BatchLoader loader(data, processor, {}, o);
  loader.start_epoch(0);
  expect_error([&] { loader.next(); }, {"synthetic[1]", "synthetic[0]", "fixed size"});
}

TEST(Loader, DestroyingMidEpochDoesNotHang) {
  auto data = std::make_shared<SyntheticDataset>(200);
  data->delay_ms = 5;
  auto loader = std::make_unique<vt::BatchLoader>(data, vit_processor(), full_augment(), options(8, 2, true));
  loader->start_epoch(0);
  ASSERT_TRUE(loader->next().has_value());
  std::promise<void> destroyed;
  std::future<void> done = destroyed.get_future();
  std::thread([&loader, &destroyed] {
    loader.reset();
    destroyed.set_value();
  }).detach();
  if (done.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "~BatchLoader did not return within 30 s";
    std::_Exit(1);  // a hung worker cannot be joined: fail the process rather than hang ctest
  }
  // Prefetching is bounded: at most the window's batches (plus the one delivered) were built.
  EXPECT_LE(data->decoded.load(), 8 * (1 + 4));
}

TEST(Loader, CallersIntraOpThreadsAreLeftAlone) {
  // A fresh thread that set its count but made no parallel call yet: libtorch initialises its
  // count lazily from a process-wide default, which the workers' set_num_threads(1) changes.
  int after = 0;
  std::thread caller([&] {
    at::set_num_threads(2);
    auto data = std::make_shared<SyntheticDataset>(12);
    vt::BatchLoader loader(data, vit_processor(), full_augment(), options(3, 2, true));
    EXPECT_EQ(epoch_batches(loader, 0).size(), 4u);
    after = at::get_num_threads();
  });
  caller.join();
  EXPECT_EQ(after, 2);
}
