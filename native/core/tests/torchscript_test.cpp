// Custom models without Python: a TorchScript module defined and saved here, then loaded as a
// classifier and trained.
#include <gtest/gtest.h>

#include <torch/script.h>

#include "models/torchscript.h"
#include "pretrained/pretrained.h"
#include "test_util.h"
#include "train/trainer.h"

namespace {

// A linear classifier over mean-pooled channels, written in TorchScript.
void write_scripted_classifier(const std::string& path) {
  torch::jit::Module module("LinearProbe");
  torch::manual_seed(0);
  module.register_parameter("weight", (torch::randn({4, 3}) * 0.1).requires_grad_(), false);
  module.register_parameter("bias", torch::zeros({4}).requires_grad_(), false);
  module.define(R"(
    def forward(self, pixel_values):
        pooled = pixel_values.mean(dim=[2, 3])
        return torch.matmul(pooled, self.weight.t()) + self.bias
  )");
  module.save(path);
}

TEST(TorchScript, DefinedInCppLoadsPredictsAndTrains) {
  vt_test::TempDir dir;
  write_scripted_classifier(dir.file("probe.pt"));
  vt::LoadOptions options;
  options.directory = dir.file("probe.pt");
  options.device = "cpu";
  auto model = vt::PretrainedModel::load(options);
  EXPECT_EQ(model->architecture(), "TorchScriptModule");
  ASSERT_EQ(model->labels().size(), 4u);  // found by running the module once

  vt::ModelInputs batch;
  batch.pixel_values = torch::randn({8, 3, 16, 16});
  batch.labels = torch::arange(8) % 4;
  vt::TrainingOptions training;
  training.learning_rate = 0.1;
  training.lr_scheduler = "constant";
  vt::Trainer trainer(model, training);
  const double first = trainer.training_step(batch, false).loss;
  double last = first;
  for (int i = 0; i < 20; ++i) last = trainer.training_step(batch, false).loss;
  EXPECT_LT(last, first);

  model->save(dir.file("saved"));
  vt::LoadOptions reload;
  reload.directory = dir.file("saved");
  reload.device = "cpu";
  auto again = vt::PretrainedModel::load(reload);
  vt::ModelInputs probe;
  probe.pixel_values = batch.pixel_values;
  EXPECT_TRUE(torch::equal(vt::find_output(again->forward(probe), "logits"), vt::find_output(model->forward(probe), "logits")));
}

TEST(TorchScript, ForwardMustReturnLogits) {
  vt_test::TempDir dir;
  torch::jit::Module module("Nothing");
  module.define(R"(
    def forward(self, pixel_values):
        return 3
  )");
  module.save(dir.file("nothing.pt"));
  vt::LoadOptions options;
  options.directory = dir.file("nothing.pt");
  options.device = "cpu";
  vt_test::expect_error([&] { vt::PretrainedModel::load(options); }, {"nothing.pt", "forward must return the logits"});
}

}  // namespace
