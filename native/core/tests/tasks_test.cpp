// The task table, the error codes each phase gives its errors, and the one sampler and threaded
// loader every dataset kind trains through.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include "common/error.h"
#include "common/json_config.h"
#include "data/sampler.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "tasks/task.h"
#include "test_util.h"
#include "train/training_data.h"

namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// The task table

TEST(TaskTable, EveryEntryIsCompleteAndFoundByName) {
  std::set<std::string> names;
  for (const auto& task : vt::tasks()) {
    EXPECT_TRUE(names.insert(task.name).second) << task.name << " is defined twice";
    EXPECT_EQ(vt::find_task(task.name), &task);
    EXPECT_TRUE(task.check_options != nullptr) << task.name;
    EXPECT_TRUE(task.post_process != nullptr) << task.name;
    EXPECT_FALSE(task.metrics.empty()) << task.name;
    EXPECT_EQ(vt::reported_metrics(&task).front(), "eval_loss");
  }
  EXPECT_EQ(names, (std::set<std::string>{"classification", "object_detection", "segmentation"}));
  EXPECT_TRUE(vt::find_task("object_detection")->pads_batches);
  EXPECT_FALSE(vt::find_task("classification")->pads_batches);
}

TEST(TaskTable, AnUnknownNameListsTheKnownOnes) {
  try {
    vt::find_task("depth_estimation");
    FAIL() << "expected an error";
  } catch (const vt::Error& error) {
    EXPECT_EQ(error.code(), vt::ErrorCode::InvalidArgument);
    const std::string message = error.what();
    for (const char* part : {"depth_estimation", "classification", "object_detection", "segmentation"}) {
      EXPECT_NE(message.find(part), std::string::npos) << message;
    }
  }
}

TEST(TaskTable, OptionsAreCheckedByTheirTask) {
  vt::PredictOptions bad;
  bad.top_k = 0;
  bad.threshold = 1.5;
  EXPECT_THROW(vt::find_task("classification")->check_options(bad), vt::Error);
  EXPECT_THROW(vt::find_task("object_detection")->check_options(bad), vt::Error);
  // Segmentation reads the threshold too (instance and panoptic segments), and its own options.
  EXPECT_THROW(vt::find_task("segmentation")->check_options(bad), vt::Error);
  vt::PredictOptions segmentation;
  segmentation.segmentation_task = "boxes";
  EXPECT_THROW(vt::find_task("segmentation")->check_options(segmentation), vt::Error);
  segmentation.segmentation_task = "panoptic";
  segmentation.label_ids_to_fuse = {0, 2};
  segmentation.mask_threshold = 0.3;
  EXPECT_NO_THROW(vt::find_task("segmentation")->check_options(segmentation));
  // Options of other tasks are left alone.
  vt::PredictOptions top_k_only;
  top_k_only.top_k = 0;
  EXPECT_NO_THROW(vt::find_task("segmentation")->check_options(top_k_only));
  EXPECT_NO_THROW(vt::find_task("object_detection")->check_options(top_k_only));
}

TEST(TaskTable, ClassificationRanksTheLabels) {
  const std::vector<std::string> labels{"a", "b", "c"};
  const json config = json::object();
  vt::PredictContext context{labels, config, {{4, 4}, {4, 4}}};
  vt::ModelOutputs outputs{{"logits", torch::tensor({{0.0f, 2.0f, 1.0f}, {3.0f, 0.0f, 0.0f}})}};
  vt::PredictOptions options;
  options.top_k = 2;
  auto predictions = vt::find_task("classification")->post_process(outputs, context, options);
  ASSERT_EQ(predictions.size(), 2u);
  ASSERT_EQ(predictions[0].value.size(), 2u);
  EXPECT_EQ(predictions[0].value[0]["label"], "b");
  EXPECT_EQ(predictions[0].value[1]["label"], "c");
  EXPECT_EQ(predictions[1].value[0]["index"], 0);
  const double expected = std::exp(3.0) / (std::exp(3.0) + 2.0);
  EXPECT_NEAR(predictions[1].value[0]["score"].get<double>(), expected, 1e-6);
}

TEST(TaskTable, SegmentationCountsThePixelsOfEachClass) {
  const std::vector<std::string> labels{"sky", "road"};
  const json config = json::object();
  vt::PredictContext context{labels, config, {{2, 3}}};
  // Class 1 wins on four of the six pixels.
  auto logits = torch::zeros({1, 2, 2, 3});
  logits[0][1].fill_(1.0);
  logits[0][0][0][0] = 2.0;
  logits[0][0][1][2] = 2.0;
  auto predictions = vt::find_task("segmentation")->post_process({{"logits", logits}}, context, {});
  ASSERT_EQ(predictions.size(), 1u);
  const auto& value = predictions[0].value;
  EXPECT_EQ(value["width"], 3);
  EXPECT_EQ(value["height"], 2);
  ASSERT_EQ(value["segments"].size(), 2u);
  EXPECT_EQ(value["segments"][0]["label"], "road");
  EXPECT_EQ(value["segments"][0]["pixels"], 4);
  EXPECT_EQ(value["segments"][1]["pixels"], 2);
  ASSERT_EQ(predictions[0].maps.size(), 1u);
  EXPECT_EQ(predictions[0].maps[0].first, "label_map");
  EXPECT_TRUE(torch::equal(predictions[0].maps[0].second, torch::tensor({{0, 1, 1}, {1, 1, 0}}, torch::kInt32)));
}

// ---------------------------------------------------------------------------------------------
// Error codes

template <typename Body>
vt::ErrorCode code_of(Body&& body) {
  try {
    body();
  } catch (const vt::Error& error) {
    return error.code();
  }
  ADD_FAILURE() << "expected a vt::Error";
  return vt::ErrorCode::Torch;
}

TEST(ErrorCodes, EachPhaseGivesItsErrorsItsCode) {
  vt_test::TempDir dir;
  {
    std::ofstream out(dir.file("broken.safetensors"), std::ios::binary);
    out << "not a safetensors file";
  }
  EXPECT_EQ(code_of([&] { vt::load_safetensors(dir.file("broken.safetensors")); }), vt::ErrorCode::Checkpoint);
  const std::string garbage = "neither a JPEG nor a PNG";
  EXPECT_EQ(code_of([&] { vt::decode_image(reinterpret_cast<const uint8_t*>(garbage.data()), garbage.size(), "garbage"); }),
            vt::ErrorCode::Image);
  EXPECT_EQ(code_of([&] { vt::read_image_file(dir.file("missing.png")); }), vt::ErrorCode::Image);
  EXPECT_EQ(code_of([&] { vt::read_json_file(dir.file("missing.json")); }), vt::ErrorCode::Config);
}

TEST(ErrorCodes, ScopesNestAndRestore) {
  EXPECT_EQ(vt::ErrorScope::current(), vt::ErrorCode::InvalidArgument);
  {
    vt::ErrorScope outer(vt::ErrorCode::Dataset);
    {
      vt::ErrorScope inner(vt::ErrorCode::Image);
      EXPECT_EQ(code_of([] { vt::fail("inner"); }), vt::ErrorCode::Image);
    }
    EXPECT_EQ(code_of([] { vt::fail("outer"); }), vt::ErrorCode::Dataset);
    EXPECT_EQ(code_of([] { vt::fail_with(vt::ErrorCode::Io, "explicit"); }), vt::ErrorCode::Io);
  }
  EXPECT_EQ(vt::ErrorScope::current(), vt::ErrorCode::InvalidArgument);
  EXPECT_STREQ(vt::error_code_name(vt::ErrorCode::Checkpoint), "ERR_VISIONTORCH_CHECKPOINT");
}

// ---------------------------------------------------------------------------------------------
// One sampler, and detection batches built on the loader threads

TEST(Sampler, ShufflesEachEpochReproduciblyOverItsIndices) {
  const vt::Sampler sampler({10, 11, 12, 13, 14, 15, 16, 17}, /*shuffle=*/true, 7);
  const auto first = sampler.epoch_order(0);
  EXPECT_EQ(first, vt::Sampler({10, 11, 12, 13, 14, 15, 16, 17}, true, 7).epoch_order(0));
  EXPECT_NE(first, sampler.epoch_order(1));
  auto sorted = first;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, sampler.indices());
  EXPECT_EQ(vt::Sampler::over(4, false, 7).epoch_order(3), (std::vector<size_t>{0, 1, 2, 3}));
}

// The sample photo as `count` COCO images, each with the photo's annotations.
std::string coco_copies(const vt_test::TempDir& dir, int count) {
  json instances = vt::read_json_file(vt_test::fixture("coco-sample/instances.json"));
  const json image = instances["images"][0];
  json images = json::array(), annotations = json::array();
  for (int i = 0; i < count; ++i) {
    json copy = image;
    copy["id"] = i + 1;
    images.push_back(copy);
    for (const auto& annotation : instances["annotations"]) {
      if (annotation["image_id"] != image["id"]) continue;
      json moved = annotation;
      moved["image_id"] = i + 1;
      moved["id"] = annotations.size() + 1;
      annotations.push_back(moved);
    }
  }
  instances["images"] = images;
  instances["annotations"] = annotations;
  vt::write_json_file(dir.file("instances.json"), instances);
  return dir.file("instances.json");
}

std::vector<vt::Batch> epoch_batches(vt::TrainingData& data, int64_t epoch) {
  std::vector<vt::Batch> batches;
  data.start_epoch(epoch, 0);
  while (auto batch = data.next()) batches.push_back(std::move(*batch));
  return batches;
}

TEST(TrainingData, DetectionBatchesAreTheSameOnLoaderThreadsAsInline) {
  vt_test::TempDir dir;
  vt::DatasetSpec spec;
  spec.format = "coco";
  spec.annotations = coco_copies(dir, 5);
  spec.images = vt_test::fixture("coco-sample");
  spec.validation_split = 0.0;
  spec.augment.horizontal_flip = true;
  auto processor = std::make_shared<vt::ImageProcessor>(
      vt::ImageProcessorConfig::from_json(vt::read_json_file(vt_test::fixture("detr-tiny-random/preprocessor_config.json"))), 3);
  auto open = [&](int workers) {
    vt::DataOptions options;
    options.batch_size = 2;
    options.seed = 3;
    options.num_workers = workers;
    return vt::open_training_data(vt::find_task("object_detection"), spec, options, processor, {});
  };
  auto inline_data = open(0);
  auto threaded_data = open(2);
  ASSERT_EQ(inline_data->batches_per_epoch(), 3u);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    const auto expected = epoch_batches(*inline_data, epoch);
    const auto actual = epoch_batches(*threaded_data, epoch);
    ASSERT_EQ(actual.size(), expected.size());
    std::vector<size_t> visited;
    for (size_t b = 0; b < actual.size(); ++b) {
      EXPECT_EQ(actual[b].indices, expected[b].indices);
      EXPECT_TRUE(torch::equal(actual[b].pixel_values, expected[b].pixel_values)) << "epoch " << epoch << " batch " << b;
      EXPECT_TRUE(torch::equal(actual[b].pixel_mask, expected[b].pixel_mask));
      ASSERT_EQ(actual[b].targets.size(), expected[b].targets.size());
      for (size_t i = 0; i < actual[b].targets.size(); ++i) {
        EXPECT_TRUE(torch::equal(actual[b].targets[i].boxes, expected[b].targets[i].boxes));
        EXPECT_TRUE(torch::equal(actual[b].targets[i].class_labels, expected[b].targets[i].class_labels));
      }
      EXPECT_EQ(actual[b].original_sizes, expected[b].original_sizes);
      visited.insert(visited.end(), actual[b].indices.begin(), actual[b].indices.end());
    }
    // Each image once per epoch.
    std::sort(visited.begin(), visited.end());
    EXPECT_EQ(visited, (std::vector<size_t>{0, 1, 2, 3, 4}));
  }
}

}  // namespace
