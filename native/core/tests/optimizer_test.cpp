// The optimizer's own arithmetic: the gradient norm clipping uses, and clipping's scale applied
// inside the AdamW pass as torch's grad.mul_ followed by AdamW would.
#include <gtest/gtest.h>

#include "train/optimizer.h"

namespace {

TEST(Optimizer, GradientNormMatchesTheExactNormOverEveryKindOfGradient) {
  torch::manual_seed(3);
  vt::NamedParameters parameters;
  auto add = [&](const std::string& name, torch::Tensor grad) {
    auto parameter = torch::zeros(grad.sizes(), grad.options()).requires_grad_();
    parameter.mutable_grad() = grad;
    parameters.emplace_back(name, parameter);
  };
  add("large", torch::randn({300, 1000}) * 3);                             // the parallel float32 pass
  add("strided", torch::randn({64, 80}).t());                              // not contiguous
  add("bf16", torch::randn({128}).to(torch::kBFloat16));                   // another dtype
  parameters.emplace_back("no_grad", torch::zeros({5}).requires_grad_());  // skipped
  double exact = 0.0;
  for (const auto& [name, parameter] : parameters) {
    if (parameter.grad().defined()) exact += parameter.grad().to(torch::kFloat64).pow(2).sum().item<double>();
  }
  EXPECT_NEAR(vt::gradient_norm(parameters), std::sqrt(exact), 1e-6 * std::sqrt(exact));
  EXPECT_EQ(vt::gradient_norm({}), 0.0);
}

TEST(Optimizer, ClippingScaleInsideAdamWEqualsScalingTheGradientsFirst) {
  torch::manual_seed(4);
  auto make = [] {
    vt::NamedParameters parameters{{"weight", torch::randn({70, 90}).requires_grad_()}, {"bias", torch::randn({70}).requires_grad_()}};
    return parameters;
  };
  auto fused = make(), reference = make();
  for (size_t i = 0; i < fused.size(); ++i) {
    torch::NoGradGuard no_grad;
    reference[i].second.copy_(fused[i].second);
  }
  vt::OptimizerConfig config;
  config.name = "adamw";
  config.weight_decay = 0.01;
  vt::Optimizer fused_optimizer(fused, {"bias"}, config), reference_optimizer(reference, {"bias"}, config);
  EXPECT_DOUBLE_EQ(vt::clipping_scale(1.0, 4.0), 1.0 / (4.0 + 1e-6));
  EXPECT_EQ(vt::clipping_scale(1.0, 0.5), 1.0);
  EXPECT_EQ(vt::clipping_scale(0.0, 100.0), 1.0);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < fused.size(); ++i) {
      auto grad = torch::randn(fused[i].second.sizes());
      fused[i].second.mutable_grad() = grad.clone();
      reference[i].second.mutable_grad() = grad.clone();
    }
    const double scale = vt::clipping_scale(1.0, 3.0);
    fused_optimizer.step(1e-3, scale);
    for (auto& [name, parameter] : reference) parameter.mutable_grad().mul_(scale);
    reference_optimizer.step(1e-3);
    for (size_t i = 0; i < fused.size(); ++i) EXPECT_TRUE(torch::equal(fused[i].second, reference[i].second)) << fused[i].first;
  }
}

}  // namespace
