// Mask2Former against transformers 4.31's own outputs (test/fixtures/mask2former-tiny-random): the
// module names, class and mask logits in eval mode, and in training mode (seeded as the fixture's
// call, so the loss samples the same points) the loss and every parameter's gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <set>

#include "common/json_config.h"
#include "io/safetensors.h"
#include "models/mask2former.h"
#include "pretrained/weights.h"
#include "test_util.h"
#include "train/optimizer.h"

namespace {

using vt_test::expect_error;
using vt_test::fixture;

const std::string kFixture = "mask2former-tiny-random/";

nlohmann::json fixture_config() { return vt::read_json_file(fixture(kFixture + "config.json")); }

struct M2fFixture {
  std::shared_ptr<vt::mask2former::Mask2FormerForUniversalSegmentation> model;
  vt::TensorMap reference;
};

M2fFixture load_fixture() {
  auto config = vt::mask2former::Mask2FormerConfig::from_json(fixture_config());
  auto model = std::make_shared<vt::mask2former::Mask2FormerForUniversalSegmentation>(config);
  vt::load_weights(*model, vt::load_safetensors(fixture(kFixture + "model.safetensors")), "model.safetensors", false);
  return {model, vt::load_safetensors(fixture(kFixture + "reference.safetensors"))};
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// |actual - expected| <= atol + rtol |expected| everywhere (the fixtures' comparison).
void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double atol, double rtol, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  auto excess = (actual.to(torch::kFloat64) - expected.to(torch::kFloat64)).abs() - rtol * expected.to(torch::kFloat64).abs();
  EXPECT_LE(excess.max().item<double>(), atol) << what << " (max abs diff " << max_abs_diff(actual, expected) << ")";
}

vt::ModelInputs fixture_inputs(const vt::TensorMap& reference, bool with_targets) {
  vt::ModelInputs inputs;
  inputs.pixel_values = reference.at("pixel_values");
  inputs.pixel_mask = reference.at("pixel_mask");
  if (with_targets) {
    for (int i = 0; reference.count("class_labels_" + std::to_string(i)); ++i) {
      vt::Target target;
      target.class_labels = reference.at("class_labels_" + std::to_string(i));
      target.mask_labels = reference.at("mask_labels_" + std::to_string(i));
      inputs.targets.push_back(target);
    }
  }
  return inputs;
}

TEST(Mask2Former, ModuleNamesAreTransformersKeys) {
  auto [model, reference] = load_fixture();
  std::set<std::string> expected, actual;
  for (const auto& [key, value] : vt::load_safetensors(fixture(kFixture + "model.safetensors"))) expected.insert(key);
  for (const auto& [key, value] : model->named_state()) actual.insert(key);
  EXPECT_EQ(actual, expected);
}

TEST(Mask2Former, EvalOutputsMatchTransformers) {
  auto [model, reference] = load_fixture();
  model->eval();
  torch::NoGradGuard no_grad;
  auto outputs = model->forward(fixture_inputs(reference, false));
  auto classes = vt::find_output(outputs, "class_queries_logits");
  auto masks = vt::find_output(outputs, "masks_queries_logits");
  expect_close(classes, reference.at("class_queries_logits"), 1e-4, 1e-4, "class_queries_logits");
  expect_close(masks, reference.at("masks_queries_logits"), 1e-4, 1e-4, "masks_queries_logits");
  std::cout << "[ parity ] max abs diff class_queries_logits " << max_abs_diff(classes, reference.at("class_queries_logits"))
            << ", masks_queries_logits " << max_abs_diff(masks, reference.at("masks_queries_logits")) << "\n";
}

TEST(Mask2Former, TrainingLossAndEveryGradientMatchTransformers) {
  auto [model, reference] = load_fixture();
  model->train();
  auto inputs = fixture_inputs(reference, true);
  torch::manual_seed(7892);
  auto outputs = model->forward(inputs);
  auto loss = vt::find_output(outputs, "loss");
  ASSERT_TRUE(loss.defined());
  for (const auto& [name, value] : outputs) {
    if (name.rfind("loss", 0) == 0) std::cout << "[ values ] " << name << " = " << value.item<double>() << "\n";
  }
  expect_close(loss.reshape({}), reference.at("loss").reshape({}), 1e-5, 1e-4, "loss");
  std::cout << "[ parity ] loss " << loss.item<double>() << " vs " << reference.at("loss").item<double>() << ", diff "
            << max_abs_diff(loss.reshape({}), reference.at("loss").reshape({})) << "\n";
  for (const auto& [name, value] : outputs) {
    if (name.rfind("loss_dict.", 0) == 0 && reference.count(name)) expect_close(value, reference.at(name), 1e-5, 1e-4, name);
  }
  loss.backward();
  size_t compared = 0;
  double worst = 0.0;
  std::string worst_name;
  for (const auto& item : model->named_parameters()) {
    const auto found = reference.find("grad." + item.key());
    ASSERT_TRUE(found != reference.end()) << "reference lacks grad." << item.key();
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    expect_close(item.value().grad(), found->second, 1e-5, 1e-3, "grad." + item.key());
    const double diff = max_abs_diff(item.value().grad(), found->second);
    if (diff > worst) {
      worst = diff;
      worst_name = item.key();
    }
    ++compared;
  }
  size_t references = 0;
  for (const auto& [key, value] : reference) references += key.rfind("grad.", 0) == 0;
  EXPECT_EQ(compared, references);
  std::cout << "[ parity ] " << compared << " gradients, max abs diff " << worst << " (" << worst_name << ")\n";
}

// Two AdamW(lr 1e-3, weight_decay 0.01) steps on the same batch, as the fixture's training call:
// the second forward pass continues the random stream the first one left.
TEST(Mask2Former, TwoAdamWStepsFollowTransformers) {
  auto [model, reference] = load_fixture();
  model->train();
  auto inputs = fixture_inputs(reference, true);
  vt::NamedParameters parameters;
  for (const auto& item : model->named_parameters()) parameters.emplace_back(item.key(), item.value());
  vt::OptimizerConfig config;
  config.weight_decay = 0.01;
  vt::Optimizer optimizer(parameters, {}, config);
  torch::manual_seed(7892);
  for (int step = 1; step <= 2; ++step) {
    optimizer.zero_grad();
    auto loss = vt::find_output(model->forward(inputs), "loss");
    if (step == 2) {
      expect_close(loss.reshape({}), reference.at("loss_step2").reshape({}), 1e-4, 1e-4, "loss_step2");
      std::cout << "[ parity ] loss_step2 " << loss.item<double>() << " vs " << reference.at("loss_step2").item<double>() << ", diff "
                << max_abs_diff(loss.reshape({}), reference.at("loss_step2").reshape({})) << "\n";
    }
    loss.backward();
    optimizer.step(1e-3);
    const std::string prefix = "after_step" + std::to_string(step) + ".";
    double worst = 0.0;
    int64_t elements = 0, close = 0;
    for (const auto& [key, value] : model->named_state()) {
      const auto& expected = reference.at(prefix + key);
      const auto diff = (value.to(torch::kFloat64) - expected.to(torch::kFloat64)).abs();
      worst = std::max(worst, diff.max().item<double>());
      elements += diff.numel();
      close += diff.le(1e-5).sum().item<int64_t>();
    }
    EXPECT_LE(worst, step == 1 ? 2e-3 : 4e-3) << prefix;
    EXPECT_GE(static_cast<double>(close), 0.99 * static_cast<double>(elements)) << prefix;
    std::cout << "[ parity ] " << prefix << "* max abs diff " << worst << ", " << close << "/" << elements << " within 1e-5\n";
  }
}

TEST(Mask2Former, ImagesWithoutTargetsTrain) {
  auto [model, reference] = load_fixture();
  model->train();
  auto inputs = fixture_inputs(reference, true);
  inputs.targets[0].class_labels = torch::zeros({0}, torch::kInt64);
  inputs.targets[0].mask_labels = torch::zeros({0, 64, 64});
  auto outputs = model->forward(inputs);
  auto loss = vt::find_output(outputs, "loss");
  ASSERT_TRUE(loss.defined());
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  loss.backward();
  EXPECT_TRUE(model->class_predictor->weight.grad().isfinite().all().item<bool>());
  // No target at all: only the no-object cross-entropy remains.
  for (auto& target : inputs.targets) {
    target.class_labels = torch::zeros({0}, torch::kInt64);
    target.mask_labels = torch::zeros({0, 64, 64});
  }
  outputs = model->forward(inputs);
  EXPECT_EQ(vt::find_output(outputs, "loss_dict.loss_mask").item<double>(), 0.0);
  EXPECT_TRUE(std::isfinite(vt::find_output(outputs, "loss").item<double>()));
}

TEST(Mask2Former, MissingEmptyWeightIsRebuiltFromTheConfig) {
  auto config = vt::mask2former::Mask2FormerConfig::from_json(fixture_config());
  auto owned = std::make_shared<vt::mask2former::Mask2FormerForUniversalSegmentation>(config);
  auto& model = *owned;
  auto checkpoint = vt::load_safetensors(fixture(kFixture + "model.safetensors"));
  const torch::Tensor expected = checkpoint.at("criterion.empty_weight");
  checkpoint.erase("criterion.empty_weight");
  model.empty_weight.zero_();
  auto report = vt::load_weights(model, checkpoint, "model.safetensors", false);
  EXPECT_EQ(report.initialized, std::vector<std::string>{"criterion.empty_weight"});
  EXPECT_TRUE(torch::allclose(model.empty_weight, expected));
}

TEST(Mask2Former, BaseModelLoadsTheSegmentationCheckpoint) {
  auto config = vt::mask2former::Mask2FormerConfig::from_json(fixture_config());
  auto owned = std::make_shared<vt::mask2former::Mask2FormerModel>(config);
  auto& model = *owned;
  auto report = vt::load_weights(model, vt::load_safetensors(fixture(kFixture + "model.safetensors")), "model.safetensors", false);
  EXPECT_TRUE(report.initialized.empty());
  model.eval();
  torch::NoGradGuard no_grad;
  vt::ModelInputs inputs;
  inputs.pixel_values = torch::randn({1, 3, 64, 64});
  auto outputs = model.forward(inputs);
  EXPECT_EQ(vt::find_output(outputs, "pixel_decoder_last_hidden_state").sizes(), (std::vector<int64_t>{1, 32, 16, 16}));
  EXPECT_EQ(vt::find_output(outputs, "transformer_decoder_last_hidden_state").sizes(), (std::vector<int64_t>{1, 6, 32}));
}

TEST(Mask2Former, RandomInitialisationLooksLikeTransformers) {
  auto config = vt::mask2former::Mask2FormerConfig::from_json(fixture_config());
  auto owned = std::make_shared<vt::mask2former::Mask2FormerForUniversalSegmentation>(config);
  auto& model = *owned;
  model.initialize({}, /*all=*/true);
  auto state = model.named_state();
  EXPECT_EQ(state.at("model.pixel_level_module.decoder.level_embed").abs().max().item<double>(), 0.0);
  EXPECT_EQ(state.at("model.pixel_level_module.decoder.encoder.layers.0.self_attn.sampling_offsets.bias").abs().max().item<double>(), 0.0);
  EXPECT_NEAR(state.at("model.pixel_level_module.decoder.encoder.layers.0.self_attn.sampling_offsets.weight").std().item<double>(), 0.02,
              0.005);
  const double bound = std::sqrt(6.0 / (96 + 32));  // xavier_uniform of in_proj_weight [96, 32]
  EXPECT_LE(state.at("model.transformer_module.decoder.layers.0.cross_attn.in_proj_weight").abs().max().item<double>(), bound);
  EXPECT_GT(state.at("model.transformer_module.decoder.layers.0.cross_attn.in_proj_weight").abs().max().item<double>(), bound * 0.9);
  EXPECT_EQ(state.at("class_predictor.bias").abs().max().item<double>(), 0.0);
  EXPECT_NEAR(state.at("criterion.empty_weight")[-1].item<double>(), 0.1, 1e-7);
}

TEST(Mask2Former, BadConfigFieldsAreReportedByName) {
  auto json = fixture_config();
  json["num_queries"] = "six";
  expect_error([&] { vt::mask2former::Mask2FormerConfig::from_json(json); }, {"config.json", "num_queries"});
  json = fixture_config();
  json["feature_size"] = 48;
  expect_error([&] { vt::mask2former::Mask2FormerConfig::from_json(json); }, {"feature_size"});
  json = fixture_config();
  json["importance_sample_ratio"] = 1.5;
  expect_error([&] { vt::mask2former::Mask2FormerConfig::from_json(json); }, {"importance_sample_ratio"});
  json = fixture_config();
  json["activation_function"] = "nope";
  expect_error([&] { vt::mask2former::Mask2FormerConfig::from_json(json); }, {"activation_function"});
  json = fixture_config();
  json["backbone_config"]["model_type"] = "resnet";
  expect_error([&] { vt::mask2former::Mask2FormerConfig::from_json(json); }, {"backbone_config", "resnet"});
}

TEST(Mask2Former, BadTargetsAreReportedByImageAndField) {
  auto [model, reference] = load_fixture();
  model->train();
  auto inputs = fixture_inputs(reference, true);
  inputs.targets[1].class_labels = torch::tensor({0, 7}, torch::kInt64);
  inputs.targets[1].mask_labels = inputs.targets[1].mask_labels.narrow(0, 0, 2);
  expect_error([&] { model->forward(inputs); }, {"labels[1].class_labels", "out of range"});
  inputs = fixture_inputs(reference, true);
  inputs.targets[0].mask_labels = inputs.targets[0].mask_labels.narrow(0, 0, 1);
  expect_error([&] { model->forward(inputs); }, {"labels[0].mask_labels"});
}

}  // namespace
