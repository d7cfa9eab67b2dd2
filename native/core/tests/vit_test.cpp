// ViT against transformers' own outputs (test/fixtures/vit-tiny-random): logits in eval mode,
// loss and every parameter's gradient in training mode.
#include <gtest/gtest.h>

#include "common/json_config.h"
#include "io/safetensors.h"
#include "models/vit.h"
#include "pretrained/weights.h"
#include "test_util.h"

namespace {

using vt_test::fixture;

struct VitFixture {
  std::shared_ptr<vt::vit::ViTForImageClassification> model;
  vt::TensorMap reference;
};

VitFixture load_fixture() {
  auto config = vt::vit::ViTConfig::from_json(vt::read_json_file(fixture("vit-tiny-random/config.json")));
  auto model = std::make_shared<vt::vit::ViTForImageClassification>(config);
  vt::load_weights(*model, vt::load_safetensors(fixture("vit-tiny-random/model.safetensors")), "model.safetensors", false);
  return {model, vt::load_safetensors(fixture("vit-tiny-random/reference.safetensors"))};
}

// |actual - expected| <= atol + rtol |expected| everywhere (the fixtures' comparison).
void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  auto excess = (actual.to(torch::kFloat64) - expected.to(torch::kFloat64)).abs() - rtol * expected.to(torch::kFloat64).abs();
  EXPECT_LE(excess.max().item<double>(), atol) << what;
}

TEST(ViT, EvalLogitsMatchTransformers) {
  auto [model, reference] = load_fixture();
  model->eval();
  torch::NoGradGuard no_grad;
  vt::ModelInputs inputs;
  inputs.pixel_values = reference.at("pixel_values");
  auto logits = vt::find_output(model->forward(inputs), "logits");
  expect_close(logits, reference.at("logits"), 1e-5, 1e-4, "logits");
}

TEST(ViT, TrainingLossAndEveryGradientMatchTransformers) {
  auto [model, reference] = load_fixture();
  model->train();
  vt::ModelInputs inputs;
  inputs.pixel_values = reference.at("pixel_values");
  inputs.labels = reference.at("labels");
  auto loss = vt::find_output(model->forward(inputs), "loss");
  expect_close(loss, reference.at("loss"), 1e-5, 1e-4, "loss");
  loss.backward();
  size_t compared = 0;
  for (const auto& item : model->named_parameters()) {
    const auto& expected = reference.at("grad." + item.key());
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    expect_close(item.value().grad(), expected, 1e-5, 1e-4, "grad." + item.key());
    ++compared;
  }
  size_t references = 0;
  for (const auto& [key, value] : reference) references += key.rfind("grad.", 0) == 0;
  EXPECT_EQ(compared, references);
}

TEST(ViT, ModuleNamesAreTransformersKeys) {
  auto [model, reference] = load_fixture();
  std::set<std::string> expected, actual;
  for (const auto& [key, value] : vt::load_safetensors(fixture("vit-tiny-random/model.safetensors"))) expected.insert(key);
  for (const auto& [key, value] : model->named_state()) actual.insert(key);
  EXPECT_EQ(actual, expected);
}

}  // namespace
