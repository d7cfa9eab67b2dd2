#include <gtest/gtest.h>

#include <cstdlib>
#include <mutex>
#include <set>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include "kernels/batch_norm_relu.h"
#include "kernels/dnnl_attention.h"
#include "kernels/dnnl_conv.h"
#include "kernels/dnnl_linear.h"
#include "kernels/dnnl_winograd_conv.h"
#include "kernels/int8_linear.h"
#include "kernels/packed_bf16_weights.h"
#include "kernels/threaded.h"
#include "nn/layers.h"
#include "runtime/threads.h"

namespace {

// The split kernels only pay off, and are only taken, with more than one thread.
class Kernels : public ::testing::Test {
 protected:
  void SetUp() override {
    vt::set_compute_threads(2);
    torch::manual_seed(7);
  }
  void TearDown() override { vt::set_compute_threads(0); }
};

void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double tolerance = 1e-5) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  const double scale = std::max(1.0, expected.abs().max().item<double>());
  EXPECT_LE((actual - expected).abs().max().item<double>(), tolerance * scale);
}

torch::Tensor reference_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask,
                                  double scale) {
  auto scores = torch::matmul(q, k.transpose(-1, -2)) * scale;
  if (mask.defined()) scores = scores + mask;
  return torch::matmul(torch::softmax(scores, -1), v);
}

}  // namespace

// at::parallel_for's body is compiled into our own code: without OpenMP it runs on one thread.
TEST_F(Kernels, ParallelForRunsOnEveryThread) {
  std::set<int> threads;
  std::mutex lock;
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> guard(lock);
    threads.insert(at::get_thread_num());
  });
  EXPECT_EQ(threads.size(), 2u);
}

TEST_F(Kernels, LinearSplitsOnlyLargeFloat32ProductsOutsideAutocast) {
  auto input = torch::randn({8, 197, 768});
  auto weight = torch::randn({3072, 768});
  EXPECT_TRUE(vt::kernels::splits_linear(input, weight));
  EXPECT_FALSE(vt::kernels::splits_linear(torch::randn({1, 768}), torch::randn({10, 768})));
  EXPECT_FALSE(vt::kernels::splits_linear(input.to(torch::kBFloat16), weight.to(torch::kBFloat16)));
  {
    at::autocast::set_cpu_enabled(true);
    EXPECT_FALSE(vt::kernels::splits_linear(input, weight));
    at::autocast::set_cpu_enabled(false);
  }
  vt::set_compute_threads(1);
  EXPECT_FALSE(vt::kernels::splits_linear(input, weight));
}

TEST_F(Kernels, LinearMatchesTorchByRowsAndByColumns) {
  // Many rows: blocks of rows. Few rows and many outputs: blocks of columns.
  for (auto [rows, in, out] : {std::tuple{1576, 768, 768}, std::tuple{3, 1024, 4096}}) {
    auto input = torch::randn({rows, in});
    auto weight = torch::randn({out, in});
    auto bias = torch::randn({out});
    ASSERT_TRUE(vt::kernels::splits_linear(input, weight)) << rows << "x" << in << "x" << out;
    expect_close(vt::kernels::linear(input, weight, bias), torch::nn::functional::linear(input, weight, bias));
    expect_close(vt::kernels::linear(input, weight, {}), torch::nn::functional::linear(input, weight));
  }
}

TEST_F(Kernels, LinearKeepsLeadingDimensionsAndRunsInInferenceMode) {
  c10::InferenceMode inference;
  auto input = torch::randn({2, 197, 384});
  auto weight = torch::randn({1536, 384});
  auto bias = torch::randn({1536});
  auto output = vt::kernels::linear(input, weight, bias);
  EXPECT_EQ(output.sizes(), (std::vector<int64_t>{2, 197, 1536}));
  expect_close(output, torch::nn::functional::linear(input, weight, bias));
}

TEST_F(Kernels, LinearGradientsMatchTorch) {
  for (bool with_bias : {true, false}) {
    auto input = torch::randn({4, 150, 256}, torch::requires_grad());
    auto weight = torch::randn({512, 256}, torch::requires_grad());
    auto bias = with_bias ? torch::randn({512}, torch::requires_grad()) : torch::Tensor();
    auto upstream = torch::randn({4, 150, 512});
    ASSERT_TRUE(vt::kernels::splits_linear(input, weight));

    (vt::kernels::linear(input, weight, bias) * upstream).sum().backward();
    auto grad_input = input.grad().clone(), grad_weight = weight.grad().clone();
    auto grad_bias = with_bias ? bias.grad().clone() : torch::Tensor();
    input.mutable_grad().reset();
    weight.mutable_grad().reset();
    if (with_bias) bias.mutable_grad().reset();

    (torch::nn::functional::linear(input, weight, bias) * upstream).sum().backward();
    expect_close(grad_input, input.grad(), 1e-4);
    expect_close(grad_weight, weight.grad(), 1e-4);
    if (with_bias) expect_close(grad_bias, bias.grad(), 1e-4);
  }
}

TEST_F(Kernels, LinearLeavesFrozenWeightsWithoutGradient) {
  auto input = torch::randn({64, 300}, torch::requires_grad());
  auto weight = torch::randn({400, 300});
  auto output = vt::kernels::linear(input, weight, {});
  output.sum().backward();
  expect_close(input.grad(), torch::ones({64, 400}).mm(weight), 1e-4);
  EXPECT_FALSE(weight.grad().defined());
}

TEST_F(Kernels, Float32TrainingLinearMatchesLibtorchBothWays) {
  auto input = torch::randn({4, 50, 96});
  auto weight = torch::randn({160, 96}) * 0.1;
  auto bias = torch::randn({160});
  if (!vt::kernels::float32_linear_applies(input, weight, bias)) GTEST_SKIP() << "no oneDNN float32 kernel in this build";
  const auto grad_output = torch::randn({4, 50, 160});
  enum class Path { OneDnn, Split, Libtorch };
  auto run = [&](Path path) {
    auto x = input.clone().requires_grad_(), w = weight.clone().requires_grad_(), b = bias.clone().requires_grad_();
    torch::Tensor y;
    if (path == Path::Libtorch) {
      y = torch::nn::functional::linear(x, w, b);
    } else if (path == Path::OneDnn) {
      y = vt::kernels::float32_linear(x, w, b);
    } else {
      // The setting keeps kernels::linear on the split BLAS calls.
      setenv("VISIONTORCH_ONEDNN_TRAINING_PRODUCTS", "0", 1);
      y = vt::kernels::linear(x, w, b);
      unsetenv("VISIONTORCH_ONEDNN_TRAINING_PRODUCTS");
    }
    y.backward(grad_output);
    return std::vector<torch::Tensor>{y.detach(), x.grad(), w.grad(), b.grad()};
  };
  const auto reference = run(Path::Libtorch);
  for (const Path path : {Path::OneDnn, Path::Split}) {
    const auto ours = run(path);
    EXPECT_EQ(ours[0].sizes(), reference[0].sizes());
    for (size_t i = 0; i < ours.size(); ++i) expect_close(ours[i], reference[i], 1e-5);
  }
}

TEST_F(Kernels, AttentionMatchesTheUnfusedFormulaOnStridedHeads) {
  const int64_t batch = 3, tokens = 50, heads = 4, head_dim = 16;
  // Heads as views of [B, T, heads * head_dim] projections, as the models pass them.
  auto split = [&](const torch::Tensor& x) { return x.view({batch, tokens, heads, head_dim}).transpose(1, 2); };
  auto q = split(torch::randn({batch, tokens, heads * head_dim}));
  auto k = split(torch::randn({batch, tokens, heads * head_dim}));
  auto v = split(torch::randn({batch, tokens, heads * head_dim}));
  // A padding mask: the last 7 keys of the second sample hidden.
  auto mask = torch::zeros({batch, 1, 1, tokens});
  mask[1].narrow(-1, tokens - 7, 7).fill_(-1e9);
  const double scale = 0.25;
  for (const auto& m : {torch::Tensor(), mask}) {
    ASSERT_TRUE(vt::kernels::fuses_attention(q, k, v, m));
    auto fused = vt::kernels::attention(q, k, v, m, scale);
    EXPECT_EQ(fused.sizes(), q.sizes());
    expect_close(fused, reference_attention(q, k, v, m, scale));
    // Heads merge back without a copy.
    EXPECT_TRUE(fused.transpose(1, 2).is_contiguous());
  }
}

TEST_F(Kernels, AttentionReadsAWindowMaskPerImage) {
  // Swin: 2 images of 4 windows each; window w of every image reads mask entry w, with a value
  // dimension unlike the key's and a mask whose columns are not contiguous.
  const int64_t images = 2, windows = 4, heads = 3, tokens = 9, head_dim = 8, value_dim = 5;
  auto q = torch::randn({images * windows, heads, tokens, head_dim});
  auto k = torch::randn({images * windows, heads, tokens, head_dim});
  auto v = torch::randn({images * windows, heads, tokens, value_dim});
  auto window_mask = torch::randn({windows, heads, tokens, tokens}) * 3;
  const double scale = 0.3;
  ASSERT_TRUE(vt::kernels::fuses_attention(q, k, v, window_mask));
  const auto expected = reference_attention(q, k, v, window_mask.repeat({images, 1, 1, 1}), scale);
  expect_close(vt::kernels::attention(q, k, v, window_mask, scale), expected);
  auto transposed = window_mask.transpose(2, 3).contiguous().transpose(2, 3);
  expect_close(vt::kernels::attention(q, k, v, transposed, scale), expected);
  // A leading size that does not divide the batch, or a mismatched dimension, is not fused.
  EXPECT_FALSE(vt::kernels::fuses_attention(q, k, v, torch::zeros({3, heads, tokens, tokens})));
  EXPECT_FALSE(vt::kernels::fuses_attention(q, k, v, torch::zeros({1, heads, tokens, tokens + 1})));
  EXPECT_THROW(vt::kernels::attention(q, k, v, torch::zeros({3, 1, 1, tokens}), scale), std::exception);
}

TEST_F(Kernels, LayersAttentionTakesAWindowMaskOnEveryPath) {
  // With a gradient wanted the fused kernel does not apply: the window mask is repeated instead.
  const int64_t images = 2, windows = 4, heads = 2, tokens = 9, head_dim = 8;
  auto q = torch::randn({images * windows, heads, tokens, head_dim}, torch::requires_grad());
  auto k = torch::randn({images * windows, heads, tokens, head_dim});
  auto v = torch::randn({images * windows, heads, tokens, head_dim});
  auto window_mask = torch::randn({windows, heads, tokens, tokens});
  const auto expected = reference_attention(q, k, v, window_mask.repeat({images, 1, 1, 1}), 0.5);
  const auto output = vt::layers::scaled_dot_product_attention(q, k, v, window_mask, 0.0, true, 0.5);
  expect_close(output, expected);
  output.sum().backward();
  EXPECT_TRUE(q.grad().defined());
}

TEST_F(Kernels, AttentionIsNotFusedWhereAutogradOrAnotherDtypeNeedsTheUnfusedPath) {
  auto q = torch::randn({1, 2, 5, 8});
  EXPECT_FALSE(vt::kernels::fuses_attention(q.clone().requires_grad_(), q, q, {}));
  EXPECT_FALSE(vt::kernels::fuses_attention(q.to(torch::kBFloat16), q, q, {}));
  EXPECT_TRUE(vt::kernels::fuses_attention(q, q, q, {}));
}

TEST_F(Kernels, Int8LinearStaysCloseToFloat32) {
  if (!vt::kernels::int8_linear_available()) GTEST_SKIP() << "built without oneDNN";
  auto weight = torch::randn({384, 256}) * 0.05;
  auto bias = torch::randn({384});
  const vt::kernels::Int8Linear quantized(weight, bias);
  // Several row counts: each gets its own oneDNN plan, sharing the packed weights.
  for (int64_t rows : {1, 7, 197, 394}) {
    auto input = torch::randn({rows, 256});
    auto expected = torch::nn::functional::linear(input, weight, bias);
    auto actual = quantized.forward(input.view({1, rows, 256}));
    ASSERT_EQ(actual.sizes(), (std::vector<int64_t>{1, rows, 384}));
    const double error = (actual.view({rows, 384}) - expected).abs().max().item<double>();
    // Two roundings of at most half a step each, over 256 products: about 1% of the output range.
    EXPECT_LE(error, 0.01 * expected.abs().max().item<double>()) << rows << " rows";
  }
  // Zero input: exactly the bias.
  EXPECT_TRUE(torch::equal(quantized.forward(torch::zeros({3, 256})), bias.expand({3, 384})));
}

TEST_F(Kernels, Int8LinearNamesAWrongInput) {
  if (!vt::kernels::int8_linear_available()) GTEST_SKIP() << "built without oneDNN";
  const vt::kernels::Int8Linear quantized(torch::randn({8, 4}), {});
  try {
    quantized.forward(torch::randn({2, 5}));
    FAIL() << "expected an error";
  } catch (const std::exception& error) {
    EXPECT_NE(std::string(error.what()).find("expects [..., 4]"), std::string::npos) << error.what();
  }
}

TEST_F(Kernels, OneDnnLinearMatchesTorchWithFusedActivations) {
  auto input = torch::randn({2, 50, 96});
  auto weight = torch::randn({160, 96}) * 0.1;
  auto bias = torch::randn({160});
  if (!vt::kernels::dnnl_linear_applies(input, weight, bias)) GTEST_SKIP() << "no oneDNN kernel in this build or on this CPU";
  using vt::kernels::FusedActivation;
  const auto plain = torch::nn::functional::linear(input, weight, bias);
  expect_close(vt::kernels::dnnl_linear(input, weight, bias), plain);
  expect_close(vt::kernels::dnnl_linear(input, weight, {}), torch::nn::functional::linear(input, weight));
  expect_close(vt::kernels::dnnl_linear(input, weight, bias, FusedActivation::Gelu), torch::gelu(plain));
  expect_close(vt::kernels::dnnl_linear(input, weight, bias, FusedActivation::Relu), torch::relu(plain));
  // bfloat16 against torch's own bfloat16 product: a few units of bf16's last place.
  auto input16 = input.to(torch::kBFloat16), weight16 = weight.to(torch::kBFloat16), bias16 = bias.to(torch::kBFloat16);
  if (vt::kernels::dnnl_linear_applies(input16, weight16, bias16)) {
    auto fast = vt::kernels::dnnl_linear(input16, weight16, bias16, FusedActivation::Gelu);
    EXPECT_EQ(fast.scalar_type(), torch::kBFloat16);
    expect_close(fast.to(torch::kFloat32), torch::gelu(torch::nn::functional::linear(input16, weight16, bias16)).to(torch::kFloat32), 2e-2);
  }
}

TEST_F(Kernels, OneDnnLinearLeavesAutogradToTorch) {
  auto weight = torch::randn({32, 16}, torch::requires_grad());
  EXPECT_FALSE(vt::kernels::dnnl_linear_applies(torch::randn({4, 16}), weight, {}));
  torch::NoGradGuard no_grad;
  EXPECT_EQ(vt::kernels::dnnl_linear_applies(torch::randn({4, 16}), weight, {}), vt::kernels::int8_linear_available());
}

TEST_F(Kernels, FusedConvolutionMatchesConvolutionBatchNormResidualRelu) {
  // Parameters as a model holds them: ordinary tensors, run under inference mode.
  vt::kernels::ConvolutionBatchNorm layer;
  layer.weight = torch::randn({24, 16, 3, 3}) * 0.1;
  layer.stride = 2;
  layer.padding = 1;
  layer.norm_weight = torch::rand({24}) + 0.5;
  layer.norm_bias = torch::randn({24});
  layer.running_mean = torch::randn({24}) * 0.1;
  layer.running_var = torch::rand({24}) + 0.5;
  layer.eps = 1e-5;
  auto reference = [&](const torch::Tensor& x, const torch::Tensor& residual, bool relu) {
    auto y = torch::batch_norm(torch::conv2d(x, layer.weight, {}, 2, 1), layer.norm_weight, layer.norm_bias, layer.running_mean,
                               layer.running_var, false, 0.0, layer.eps, false);
    if (residual.defined()) y = y + residual;
    return relu ? torch::relu(y) : y;
  };
  vt::kernels::FusedConvolution fused;
  auto input = torch::randn({2, 16, 15, 17}).contiguous(torch::MemoryFormat::ChannelsLast);
  auto residual = torch::randn({2, 24, 8, 9});
  auto run = [&](const torch::Tensor& x, const torch::Tensor& r, bool relu) {
    c10::InferenceMode inference;
    return fused.run(x, layer, r, relu);
  };
  auto output = run(input, residual, true);
  if (!output.defined()) GTEST_SKIP() << "no oneDNN convolution in this build or on this CPU";
  EXPECT_TRUE(output.is_contiguous(torch::MemoryFormat::ChannelsLast));
  expect_close(output, reference(input, residual, true), 1e-4);
  expect_close(run(input, {}, false), reference(input, {}, false), 1e-4);
  // A contiguous (NCHW) input is taken too.
  expect_close(run(input.contiguous(), {}, true), reference(input, {}, true), 1e-4);
  // A channels-last residual the caller gives up receives the result in its own memory; the
  // caller's residual is left alone otherwise.
  {
    auto scratch = residual.contiguous(torch::MemoryFormat::ChannelsLast);
    const auto expected = reference(input, scratch, true);
    auto kept = run(input, scratch, true);
    EXPECT_NE(kept.data_ptr(), scratch.data_ptr());
    expect_close(scratch, residual, 0.0);
    c10::InferenceMode inference;
    auto reused = fused.run(input, layer, scratch, true, /*may_overwrite_residual=*/true);
    EXPECT_EQ(reused.data_ptr(), scratch.data_ptr());
    expect_close(reused, expected, 1e-4);
  }
  // Weights or statistics changed in place (an optimizer step, a reload) are folded again.
  {
    torch::NoGradGuard no_grad;
    layer.weight.mul_(2.0);
    layer.running_mean.add_(1.0);
  }
  expect_close(run(input, {}, false), reference(input, {}, false), 1e-4);
}

TEST_F(Kernels, FusedConvolutionThreeByThreeStaysCloseToTorch) {
  // The float32 3x3 stride-1 shapes that take Winograd kernels where the CPU has them; odd sizes
  // leave partial tiles at the edges. The reorders in and out must keep the channels-last result.
  vt::kernels::ConvolutionBatchNorm layer;
  layer.weight = torch::randn({48, 32, 3, 3}) * 0.1;
  layer.padding = 1;
  layer.norm_weight = torch::rand({48}) + 0.5;
  layer.norm_bias = torch::randn({48});
  layer.running_mean = torch::randn({48}) * 0.1;
  layer.running_var = torch::rand({48}) + 0.5;
  vt::kernels::FusedConvolution fused;
  for (const auto& sizes : {std::vector<int64_t>{3, 32, 21, 23}, std::vector<int64_t>{1, 32, 7, 7}, std::vector<int64_t>{2, 32, 56, 56}}) {
    auto input = torch::randn(sizes).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto expected = torch::relu(torch::batch_norm(torch::conv2d(input, layer.weight, {}, 1, 1), layer.norm_weight, layer.norm_bias,
                                                        layer.running_mean, layer.running_var, false, 0.0, layer.eps, false));
    torch::Tensor output;
    {
      c10::InferenceMode inference;
      output = fused.run(input, layer, {}, true);
    }
    if (!output.defined()) GTEST_SKIP() << "no oneDNN convolution in this build or on this CPU";
    EXPECT_TRUE(output.is_contiguous(torch::MemoryFormat::ChannelsLast));
    expect_close(output, expected, 2e-5);
  }
}

TEST_F(Kernels, WinogradTrainingConvolutionMatchesLibtorchBothWays) {
  // Odd image sizes leave partial tiles at the edges; a channels-last weight (as models hold them
  // on CPU) and a contiguous one get their gradients in their own layouts.
  for (const auto memory_format : {torch::MemoryFormat::ChannelsLast, torch::MemoryFormat::Contiguous}) {
    const auto input = torch::randn({3, 32, 15, 17}).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto weight = (torch::randn({48, 32, 3, 3}) * 0.1).contiguous(memory_format);
    const auto grad_output = torch::randn({3, 48, 15, 17});
    auto run = [&](bool winograd) {
      auto x = input.clone().requires_grad_(), w = weight.clone().requires_grad_();
      auto y = winograd ? vt::kernels::winograd_training_convolution(x, w, {1, 1, 1, 1}) : torch::conv2d(x, w, {}, 1, 1);
      if (!y.defined()) return std::vector<torch::Tensor>{};
      y.backward(grad_output);
      return std::vector<torch::Tensor>{y.detach(), x.grad(), w.grad()};
    };
    const auto ours = run(true);
    if (ours.empty()) GTEST_SKIP() << "no oneDNN Winograd kernel in this build or on this CPU";
    const auto reference = run(false);
    EXPECT_TRUE(ours[0].is_contiguous(torch::MemoryFormat::ChannelsLast));
    EXPECT_EQ(ours[2].strides(), weight.strides());
    for (size_t i = 0; i < ours.size(); ++i) expect_close(ours[i], reference[i], 2e-5);
  }
}

TEST_F(Kernels, WinogradTrainingConvolutionLeavesOtherConvolutionsToLibtorch) {
  auto weight = torch::randn({32, 32, 3, 3}, torch::requires_grad());
  auto input = torch::randn({2, 32, 16, 16}).contiguous(torch::MemoryFormat::ChannelsLast);
  EXPECT_FALSE(vt::kernels::winograd_training_convolution(input, weight, {2, 1, 1, 1}).defined());  // stride 2
  EXPECT_FALSE(vt::kernels::winograd_training_convolution(input.narrow(2, 0, 7).narrow(3, 0, 7), weight, {1, 1, 1, 1}).defined());
  EXPECT_FALSE(vt::kernels::winograd_training_convolution(input.narrow(1, 0, 8), weight.narrow(1, 0, 8), {1, 1, 1, 1}).defined());
  {
    torch::NoGradGuard no_grad;  // inference has its own kernels
    EXPECT_FALSE(vt::kernels::winograd_training_convolution(input, weight, {1, 1, 1, 1}).defined());
  }
}

TEST_F(Kernels, BatchNormReluMatchesLibtorchTrainingBothWays) {
  // Channels not a multiple of the vector width, with and without a residual sum.
  for (const bool with_residual : {false, true}) {
    const auto input = (torch::randn({3, 40, 9, 11}) * 2 + 0.5).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto weight = torch::rand({40}) + 0.5, bias = torch::randn({40});
    const auto residual = with_residual ? torch::randn({3, 40, 9, 11}).contiguous(torch::MemoryFormat::ChannelsLast) : torch::Tensor();
    const auto grad_output = torch::randn({3, 40, 9, 11});
    vt::kernels::BatchStatistics statistics;
    auto run = [&](bool fused) {
      auto x = input.clone().requires_grad_(), w = weight.clone().requires_grad_(), b = bias.clone().requires_grad_();
      auto r = with_residual ? residual.clone().requires_grad_() : torch::Tensor();
      torch::Tensor y;
      if (fused) {
        const vt::kernels::BatchNormRelu layer{w, b, 1e-5, r};
        EXPECT_TRUE(vt::kernels::batch_norm_relu_applies(x, layer));
        y = vt::kernels::batch_norm_relu(x, layer, statistics);
      } else {
        y = torch::batch_norm(x, w, b, {}, {}, /*training=*/true, 0.1, 1e-5, false);
        y = torch::relu(with_residual ? y + r : y);
      }
      y.backward(grad_output);
      std::vector<torch::Tensor> results{y.detach(), x.grad(), w.grad(), b.grad()};
      if (with_residual) results.push_back(r.grad());
      return results;
    };
    const auto ours = run(true), reference = run(false);
    EXPECT_TRUE(ours[0].is_contiguous(torch::MemoryFormat::ChannelsLast));
    for (size_t i = 0; i < ours.size(); ++i) expect_close(ours[i], reference[i], 1e-5);
    const auto [variance, mean] = torch::var_mean(input, {0, 2, 3}, /*unbiased=*/false);
    expect_close(statistics.mean, mean, 1e-6);
    expect_close(statistics.variance, variance, 1e-6);
    EXPECT_EQ(statistics.count, 3 * 9 * 11);
  }
}

// Sizes that read the weights plain, and multiples of 64 that read them packed where the CPU
// has AVX-512 BF16.
class AutocastLinearSizes : public Kernels, public ::testing::WithParamInterface<std::pair<int64_t, int64_t>> {};
INSTANTIATE_TEST_SUITE_P(PlainAndPacked, AutocastLinearSizes,
                         ::testing::Values(std::make_pair<int64_t, int64_t>(96, 160), std::make_pair<int64_t, int64_t>(128, 192)));

TEST_P(AutocastLinearSizes, MatchesTorchAutocastForwardAndBackward) {
  const auto [in_features, out_features] = GetParam();
  auto input = torch::randn({4, 50, in_features}, torch::requires_grad());
  auto weight = (torch::randn({out_features, in_features}) * 0.1).requires_grad_();
  auto bias = torch::randn({out_features}, torch::requires_grad());
  auto upstream = torch::randn({4, 50, out_features});
  at::autocast::set_cpu_enabled(true);
  const bool applies = vt::kernels::autocast_linear_applies(input, weight, bias);
  auto fast = applies ? vt::kernels::autocast_linear(input, weight, bias) : torch::Tensor();
  auto reference = torch::nn::functional::linear(input, weight, bias);
  at::autocast::set_cpu_enabled(false);
  at::autocast::clear_cache();
  if (!applies) GTEST_SKIP() << "no oneDNN bfloat16 kernel in this build or on this CPU";
  EXPECT_EQ(fast.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(reference.scalar_type(), torch::kBFloat16);
  expect_close(fast.to(torch::kFloat32), reference.to(torch::kFloat32), 2e-2);

  (fast.to(torch::kFloat32) * upstream).sum().backward();
  auto grads = std::vector<torch::Tensor>{input.grad().clone(), weight.grad().clone(), bias.grad().clone()};
  for (auto* t : {&input, &weight, &bias}) t->mutable_grad().reset();
  (reference.to(torch::kFloat32) * upstream).sum().backward();
  // Gradients keep their parameters' dtypes; bf16 products agree to bf16 precision.
  EXPECT_EQ(grads[1].scalar_type(), torch::kFloat32);
  expect_close(grads[0], input.grad(), 3e-2);
  expect_close(grads[1], weight.grad(), 3e-2);
  expect_close(grads[2], bias.grad(), 3e-2);
}

TEST_P(AutocastLinearSizes, WithResidualMatchesTheSumForwardAndBackward) {
  const int64_t features = GetParam().first;
  auto input = torch::randn({4, 50, features}, torch::requires_grad());
  auto weight = (torch::randn({features, features}) * 0.1).requires_grad_();
  auto bias = torch::randn({features}, torch::requires_grad());
  auto residual = torch::randn({4, 50, features}, torch::requires_grad());
  auto upstream = torch::randn({4, 50, features});
  at::autocast::set_cpu_enabled(true);
  const bool applies = vt::kernels::autocast_linear_applies(input, weight, bias);
  auto fused = applies ? vt::kernels::autocast_linear(input, weight, bias, residual) : torch::Tensor();
  auto reference = torch::nn::functional::linear(input, weight, bias) + residual;
  at::autocast::set_cpu_enabled(false);
  at::autocast::clear_cache();
  if (!applies) GTEST_SKIP() << "no oneDNN bfloat16 kernel in this build or on this CPU";
  // The residual's dtype, as autocast's bf16 + fp32 sum gives.
  EXPECT_EQ(fused.scalar_type(), torch::kFloat32);
  expect_close(fused, reference, 3e-2);

  (fused * upstream).sum().backward();
  std::vector<torch::Tensor> grads;
  for (auto* t : {&input, &weight, &bias, &residual}) {
    grads.push_back(t->grad().clone());
    t->mutable_grad().reset();
  }
  (reference * upstream).sum().backward();
  expect_close(grads[0], input.grad(), 3e-2);
  expect_close(grads[1], weight.grad(), 3e-2);
  expect_close(grads[2], bias.grad(), 3e-2);
  expect_close(grads[3], residual.grad(), 0.0);
}

TEST_F(Kernels, PackedBfloat16WeightsHoldEachWeightWhereTheLayoutSays) {
  const int64_t out_features = 192, in_features = 128;
  if (!vt::kernels::bf16_weight_packing_applies(out_features, in_features)) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  EXPECT_FALSE(vt::kernels::bf16_weight_packing_applies(out_features, 96));
  const auto weight = torch::randn({out_features, in_features});
  const auto expected = weight.to(torch::kBFloat16);
  std::vector<uint16_t> forward(out_features * in_features), gradient(out_features * in_features);
  vt::kernels::pack_bf16_weights(weight.data_ptr<float>(), out_features, in_features, forward.data(), gradient.data());
  const auto* bits = reinterpret_cast<const uint16_t*>(expected.data_ptr<c10::BFloat16>());
  int64_t forward_mismatches = 0, gradient_mismatches = 0;
  for (int64_t o = 0; o < out_features; ++o) {
    for (int64_t i = 0; i < in_features; ++i) {
      const uint16_t want = bits[o * in_features + i];
      // The forward operand is W^T [in, out]; the gradient's is W [out, in].
      forward_mismatches += forward[vt::kernels::packed_bf16_offset(i, o, in_features)] != want;
      gradient_mismatches += gradient[vt::kernels::packed_bf16_offset(o, i, out_features)] != want;
    }
  }
  EXPECT_EQ(forward_mismatches, 0);
  EXPECT_EQ(gradient_mismatches, 0);
  // Without a gradient operand, the forward one alone, the same.
  std::vector<uint16_t> forward_only(out_features * in_features);
  vt::kernels::pack_bf16_weights(weight.data_ptr<float>(), out_features, in_features, forward_only.data(), nullptr);
  EXPECT_EQ(forward_only, forward);
}

TEST_F(Kernels, TrainingAttentionInBfloat16MatchesFloat32AttentionForwardAndBackward) {
  const int64_t batch = 2, tokens = 37, heads = 3, head_dim = 16;
  // Heads as ViT splits them: strided views of one projection output per operand.
  auto projections = torch::randn({3, batch, tokens, heads * head_dim}).to(torch::kBFloat16).requires_grad_();
  auto split_heads = [&](int64_t i) { return projections[i].view({batch, tokens, heads, head_dim}).transpose(1, 2); };
  auto query = split_heads(0), key = split_heads(1), value = split_heads(2);
  const double scale = 0.25;
  at::autocast::set_cpu_enabled(true);
  const bool applies = vt::kernels::training_attention_applies(query, key, value, {});
  auto fast = applies ? vt::kernels::training_attention(query, key, value, scale) : torch::Tensor();
  at::autocast::set_cpu_enabled(false);
  at::autocast::clear_cache();
  if (!applies) GTEST_SKIP() << "no oneDNN bfloat16 kernel in this build or on this CPU";
  auto reference =
      torch::matmul(torch::softmax(torch::matmul(query.to(torch::kFloat32), key.to(torch::kFloat32).transpose(-1, -2)) * scale, -1),
                    value.to(torch::kFloat32));
  EXPECT_EQ(fast.scalar_type(), torch::kBFloat16);
  expect_close(fast.to(torch::kFloat32), reference, 2e-2);
  // Merging the heads back is free: the output lives in [B, T, heads, head_dim] memory.
  EXPECT_TRUE(fast.transpose(1, 2).is_contiguous());

  auto upstream = torch::randn({batch, heads, tokens, head_dim});
  (fast.to(torch::kFloat32) * upstream).sum().backward();
  auto grad = projections.grad().to(torch::kFloat32);
  projections.mutable_grad().reset();
  (reference * upstream).sum().backward();
  expect_close(grad, projections.grad().to(torch::kFloat32), 3e-2);
}

TEST_F(Kernels, TrainingAttentionInFloat32MatchesTorchForwardAndBackward) {
  const int64_t batch = 2, tokens = 29, heads = 4, head_dim = 8;
  auto projections = torch::randn({3, batch, tokens, heads * head_dim}, torch::requires_grad());
  auto split_heads = [&](int64_t i) { return projections[i].view({batch, tokens, heads, head_dim}).transpose(1, 2); };
  auto query = split_heads(0), key = split_heads(1), value = split_heads(2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  if (!vt::kernels::training_attention_applies(query, key, value, {})) GTEST_SKIP() << "no oneDNN kernel in this build or on this CPU";
  {
    torch::NoGradGuard no_grad;  // inference is kernels::attention's
    EXPECT_FALSE(vt::kernels::training_attention_applies(query, key, value, {}));
  }
  auto fast = vt::kernels::training_attention(query, key, value, scale);
  auto reference = torch::matmul(torch::softmax(torch::matmul(query, key.transpose(-1, -2)) * scale, -1), value);
  EXPECT_EQ(fast.scalar_type(), torch::kFloat32);
  expect_close(fast, reference, 1e-5);

  auto upstream = torch::randn({batch, heads, tokens, head_dim});
  (fast * upstream).sum().backward();
  auto grad = projections.grad().clone();
  projections.mutable_grad().reset();
  (reference * upstream).sum().backward();
  expect_close(grad, projections.grad(), 1e-5);
}

TEST_F(Kernels, PackedLinearWeightsFollowTheWeights) {
  auto input = torch::randn({3, 40, 64});
  auto weight = torch::randn({96, 64}) * 0.1;
  auto bias = torch::randn({96});
  if (!vt::kernels::dnnl_linear_applies(input, weight, bias)) GTEST_SKIP() << "no oneDNN kernel in this build or on this CPU";
  vt::kernels::PackedLinearWeights packed;
  auto run = [&] {
    c10::InferenceMode inference;
    return vt::kernels::dnnl_linear(input, weight, bias, vt::kernels::FusedActivation::Gelu, &packed);
  };
  expect_close(run(), torch::gelu(torch::nn::functional::linear(input, weight, bias)));
  {
    torch::NoGradGuard no_grad;
    weight.mul_(-2.0);  // an optimizer step, a reload: the packed copy must follow
  }
  expect_close(run(), torch::gelu(torch::nn::functional::linear(input, weight, bias)));
}
