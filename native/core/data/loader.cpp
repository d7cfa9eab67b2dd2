// The batch loader. Workers claim batch numbers in order, build each whole batch on their own
// (the builder decodes, augments, preprocesses and writes into the batch tensor) and park it until next() takes it,
// so batches come out in order whatever the timing. At most prefetch_batches batches are claimed
// ahead of the last one delivered. Everything random depends only on (seed, epoch) for the order
// and (seed, epoch, dataset index) for a sample's augmentation, never on which thread did what:
// any number of workers, and a resumed epoch, give the same tensors.
#include "data/loader.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "data/augment.h"
#include "data/random.h"

namespace vt {
namespace {

// The uint8 image the loader normalizes: the processor's own geometry (evaluation), or the
// augmentation, whose RandomResizedCrop replaces the processor's resize and crop.
Image prepare_image(const Image& image, const ImageProcessor& processor, const AugmentSpec& augment, bool apply_augment, uint64_t seed,
                    int64_t epoch, size_t index) {
  if (!apply_augment || !augment.any()) return processor.prepare(image);
  const AugmentDraw draw = draw_augment(image.height, image.width, augment, seed, epoch, index);
  Image out;
  if (draw.crop) {
    const CropBox& box = *draw.crop;
    Image cropped = crop_image(convert_channels(image, processor.channels()), box);
    // The processor's output size for this crop: fixed for {height, width} processors and for
    // those ending in a center crop.
    const auto [out_h, out_w] = processor.output_size(box.height, box.width);
    out = out_h == box.height && out_w == box.width ? std::move(cropped) : resize_image(cropped, out_w, out_h, processor.config().resample);
  } else {
    out = processor.prepare(image);
  }
  if (draw.flip) flip_horizontal(out);
  return out;
}

std::string shape_text(const Image& image) { return str_cat(image.channels, "x", image.height, "x", image.width); }

}  // namespace

torch::Tensor prepare_sample(const Image& image, const ImageProcessor& processor, const AugmentSpec& augment, bool apply_augment,
                             uint64_t seed, int64_t epoch, size_t index) {
  if (apply_augment) check_augment(augment);
  return processor.normalize(prepare_image(image, processor, augment, apply_augment, seed, epoch, index));
}

// ---------------------------------------------------------------------------------------------

// Classification's batches: each image decoded, augmented and normalised straight into the batch
// tensor, with its class index.
BatchBuilder classification_batches(std::shared_ptr<ImageDataset> dataset, std::shared_ptr<const ImageProcessor> processor,
                                    AugmentSpec augment, bool apply_augment, uint64_t seed) {
  return [dataset = std::move(dataset), processor = std::move(processor), augment, apply_augment, seed](
             const std::vector<size_t>& indices, int64_t epoch, const std::atomic<bool>& cancel) -> std::optional<Batch> {
    const int64_t count = static_cast<int64_t>(indices.size());
    Batch batch;
    batch.indices = indices;
    batch.labels = torch::empty({count}, torch::kInt64);
    int64_t* labels = batch.labels.data_ptr<int64_t>();
    float* pixels = nullptr;
    Image first;
    for (int64_t k = 0; k < count; ++k) {
      if (cancel.load(std::memory_order_relaxed)) return std::nullopt;
      const size_t index = batch.indices[k];
      Image prepared;
      try {
        labels[k] = dataset->label(index);
        prepared = prepare_image(dataset->image(index), *processor, augment, apply_augment, seed, epoch, index);
      } catch (const std::exception& e) {
        fail("decode failed for ", dataset->describe(index), ": ", e.what());
      }
      if (k == 0) {
        // The batch tensor is allocated once, sized by its first sample.
        batch.pixel_values = torch::empty({count, prepared.channels, prepared.height, prepared.width}, torch::kFloat32);
        pixels = batch.pixel_values.data_ptr<float>();
        first.width = prepared.width;
        first.height = prepared.height;
        first.channels = prepared.channels;
      } else if (prepared.width != first.width || prepared.height != first.height) {
        fail("sample ", dataset->describe(index), " comes out as ", shape_text(prepared), " (CxHxW) but ",
             dataset->describe(batch.indices[0]), " as ", shape_text(first),
             ": this image processor does not produce a fixed size, so they cannot share a batch");
      }
      const size_t sample_floats = static_cast<size_t>(first.channels) * first.height * first.width;
      processor->normalize_into(prepared, pixels + k * sample_floats);
    }
    return batch;
  };
}

struct BatchLoader::Impl {
  Sampler sampler;
  BatchBuilder builder;
  LoaderOptions options;

  // The epoch in progress; set by start_epoch before the workers start, constant while they run.
  bool started = false;
  int64_t epoch = 0;
  std::vector<size_t> order;
  size_t end_batch = 0;

  struct Done {
    std::optional<Batch> batch;
    std::exception_ptr error;
  };

  std::mutex mutex;
  std::condition_variable can_claim;  // workers: the window moved, or stop
  std::condition_variable ready;      // next(): a batch is done
  bool stop = false;
  bool halted = false;              // a batch failed: no point building later ones
  size_t next_claim = 0;            // the next batch a worker takes
  size_t next_deliver = 0;          // the next batch next() returns
  std::map<size_t, Done> done;      // built, not yet delivered
  std::atomic<bool> cancel{false};  // lets a worker abandon a batch between samples
  std::vector<std::thread> workers;
  std::exception_ptr failed;  // a delivered error stays until the next start_epoch

  size_t batches_per_epoch() const {
    const size_t n = sampler.size(), b = options.batch_size;
    return options.drop_last ? n / b : (n + b - 1) / b;
  }

  // Builds batch `b` of the current epoch; nullopt when cancelled.
  std::optional<Batch> build(size_t b) const {
    ErrorScope errors(ErrorCode::Dataset);  // on a loader thread: a failing sample is the dataset's
    const size_t begin = b * options.batch_size;
    const size_t end = std::min(order.size(), begin + options.batch_size);
    return builder(
        std::vector<size_t>(order.begin() + static_cast<std::ptrdiff_t>(begin), order.begin() + static_cast<std::ptrdiff_t>(end)), epoch,
        cancel);
  }

  void worker_loop() {
    // Decoding and resizing are ours; libtorch's intra-op pool must not multiply these threads.
    at::set_num_threads(1);
    const size_t window = static_cast<size_t>(options.prefetch_batches);
    while (true) {
      size_t b = 0;
      {
        std::unique_lock<std::mutex> lock(mutex);
        can_claim.wait(lock, [&] { return stop || halted || next_claim >= end_batch || next_claim < next_deliver + window; });
        if (stop || halted || next_claim >= end_batch) return;
        b = next_claim++;
      }
      Done result;
      try {
        result.batch = build(b);
        if (!result.batch) return;  // cancelled
      } catch (...) {
        result.error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (result.error) halted = true;
        done.emplace(b, std::move(result));
      }
      ready.notify_all();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    cancel = true;
    can_claim.notify_all();
    for (std::thread& t : workers) t.join();
    workers.clear();
    done.clear();
    stop = false;
    halted = false;
    cancel = false;
  }

  void start_workers() {
    const size_t remaining = end_batch - next_claim;
    const size_t count = std::min(static_cast<size_t>(options.num_workers), remaining);
    // at::set_num_threads in a worker also stores the process-wide default that a thread adopts
    // lazily on its first parallel call; asking now fixes the calling thread's count first.
    if (count > 0) (void)at::get_num_threads();
    try {
      for (size_t i = 0; i < count; ++i) workers.emplace_back([this] { worker_loop(); });
    } catch (...) {
      stop_workers();
      throw;
    }
  }
};

BatchLoader::BatchLoader(Sampler sampler, BatchBuilder build, LoaderOptions options) : impl_(std::make_unique<Impl>()) {
  VT_CHECK(build != nullptr, "BatchLoader: no batch builder");
  VT_CHECK(options.batch_size > 0, "BatchLoader: batch_size must be positive");
  VT_CHECK(options.num_workers >= 0 && options.num_workers <= 256, "BatchLoader: num_workers must be between 0 and 256, got ",
           options.num_workers);
  VT_CHECK(options.num_workers == 0 || options.prefetch_batches >= 1, "BatchLoader: prefetch_batches must be at least 1, got ",
           options.prefetch_batches);
  impl_->sampler = std::move(sampler);
  impl_->builder = std::move(build);
  impl_->options = options;
}

namespace {

std::shared_ptr<ImageDataset> checked(std::shared_ptr<ImageDataset> dataset, const std::shared_ptr<const ImageProcessor>& processor,
                                      const AugmentSpec& augment, const LoaderOptions& options) {
  VT_CHECK(dataset != nullptr, "BatchLoader: no dataset");
  VT_CHECK(processor != nullptr, "BatchLoader: no image processor");
  if (options.augment) check_augment(augment);
  return dataset;
}

}  // namespace

BatchLoader::BatchLoader(std::shared_ptr<ImageDataset> dataset, std::shared_ptr<const ImageProcessor> processor, AugmentSpec augment,
                         LoaderOptions options)
    : BatchLoader(Sampler::over(checked(dataset, processor, augment, options)->size(), options.shuffle, options.seed),
                  classification_batches(dataset, processor, augment, options.augment, options.seed), options) {}

BatchLoader::~BatchLoader() { impl_->stop_workers(); }

size_t BatchLoader::batches_per_epoch() const { return impl_->batches_per_epoch(); }

void BatchLoader::start_epoch(int64_t epoch, size_t first_batch) {
  Impl& s = *impl_;
  const size_t batches = s.batches_per_epoch();
  VT_CHECK(first_batch <= batches, "BatchLoader: cannot start at batch ", first_batch, ": an epoch has ", batches, " batches");
  s.stop_workers();
  s.order = s.sampler.epoch_order(epoch);
  s.epoch = epoch;
  s.end_batch = batches;
  s.next_claim = s.next_deliver = first_batch;
  s.failed = nullptr;
  s.started = true;
  s.start_workers();
}

std::optional<Batch> BatchLoader::next() {
  Impl& s = *impl_;
  VT_CHECK(s.started, "BatchLoader: call start_epoch before next()");
  if (s.failed) std::rethrow_exception(s.failed);
  if (s.next_deliver >= s.end_batch) return std::nullopt;
  if (s.options.num_workers == 0) {
    try {
      std::optional<Batch> batch = s.build(s.next_deliver);
      ++s.next_deliver;
      return batch;
    } catch (...) {
      s.failed = std::current_exception();
      throw;
    }
  }
  Impl::Done result;
  {
    std::unique_lock<std::mutex> lock(s.mutex);
    s.ready.wait(lock, [&] { return s.done.count(s.next_deliver) > 0; });
    auto found = s.done.find(s.next_deliver);
    result = std::move(found->second);
    s.done.erase(found);
    if (!result.error) ++s.next_deliver;
  }
  if (result.error) {
    s.failed = result.error;
    std::rethrow_exception(result.error);
  }
  s.can_claim.notify_all();
  return std::move(result.batch);
}

}  // namespace vt
