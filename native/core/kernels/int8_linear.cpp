#include "kernels/int8_linear.h"

#include "common/error.h"

#ifdef VISIONTORCH_WITH_DNNL
#include <map>
#include <mutex>
#include <vector>

#include <ATen/Parallel.h>
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace vt::kernels {

#ifdef VISIONTORCH_WITH_DNNL

bool int8_linear_available() { return true; }

namespace {

using dnnl::memory;

// Symmetric int8: [-127, 127] both ways, so no zero point and no correction term. The fastest
// oneDNN kernels (AMX, VNNI) take int8 x int8 -> int32 without scaling attributes; scaling back
// to float32 happens in our own pass.
constexpr float kInt8Max = 127.0f;

// More row counts than this (batch sizes x tokens) start the cache over.
constexpr size_t kMaxPlans = 16;

}  // namespace

struct Int8Linear::Impl {
  struct Plan {
    dnnl::matmul matmul;
    memory weights;  // packed for this plan's kernel
  };

  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  int64_t in_features = 0, out_features = 0;
  torch::Tensor plain_weights;  // int8 [in, out], row-major: what every packing is made from
  torch::Tensor weight_scales;  // float32 [out]
  torch::Tensor bias;           // float32 [out]; zeros for a layer without one

  std::mutex mutex;
  std::map<int64_t, Plan> plans;  // by number of input rows
  std::vector<memory> packings;   // distinct packed layouts, shared between plans

  Plan& plan(int64_t rows) {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto found = plans.find(rows); found != plans.end()) return found->second;
    if (plans.size() >= kMaxPlans) plans.clear();
    const memory::desc source({rows, in_features}, memory::data_type::s8, memory::format_tag::ab);
    const memory::desc any_weights({in_features, out_features}, memory::data_type::s8, memory::format_tag::any);
    const memory::desc destination({rows, out_features}, memory::data_type::s32, memory::format_tag::ab);
    const dnnl::matmul::primitive_desc description(dnnl::matmul::desc(source, any_weights, destination), engine);
    memory packed;
    for (const auto& candidate : packings) {
      if (candidate.get_desc() == description.weights_desc()) packed = candidate;
    }
    if (!packed) {
      packed = memory(description.weights_desc(), engine);
      memory plain({{in_features, out_features}, memory::data_type::s8, memory::format_tag::ab}, engine, plain_weights.data_ptr());
      dnnl::stream stream(engine);
      dnnl::reorder(plain, packed).execute(stream, plain, packed);
      stream.wait();
      packings.push_back(packed);
    }
    return plans.emplace(rows, Plan{dnnl::matmul(description), packed}).first->second;
  }
};

Int8Linear::Int8Linear(const torch::Tensor& weight, const torch::Tensor& bias) : impl_(std::make_unique<Impl>()) {
  VT_CHECK(weight.dim() == 2 && weight.device().is_cpu() && weight.scalar_type() == torch::kFloat32,
           "int8 quantization takes float32 CPU weights [out, in], got ", weight.scalar_type(), " ", weight.sizes(), " on ",
           weight.device());
  torch::NoGradGuard no_grad;
  impl_->out_features = weight.size(0);
  impl_->in_features = weight.size(1);
  auto per_channel_max = std::get<0>(weight.abs().max(1));
  impl_->weight_scales = torch::where(per_channel_max > 0, per_channel_max / kInt8Max, torch::ones_like(per_channel_max)).contiguous();
  impl_->plain_weights =
      torch::round(weight / impl_->weight_scales.unsqueeze(1)).clamp(-kInt8Max, kInt8Max).to(torch::kInt8).t().contiguous();
  impl_->bias = bias.defined() ? bias.detach().to(torch::kFloat32).contiguous() : torch::zeros({impl_->out_features});
}

Int8Linear::~Int8Linear() = default;

torch::Tensor Int8Linear::forward(const torch::Tensor& input) const {
  VT_CHECK(input.device().is_cpu() && input.size(-1) == impl_->in_features, "int8 linear layer expects [..., ", impl_->in_features,
           "] on CPU, got ", input.sizes(), " on ", input.device());
  const auto rows_view = input.reshape({-1, impl_->in_features}).to(torch::kFloat32).contiguous();
  const int64_t rows = rows_view.size(0), out_features = impl_->out_features;
  auto output_sizes = input.sizes().vec();
  output_sizes.back() = out_features;
  if (rows == 0) return torch::empty(output_sizes, input.options().dtype(torch::kFloat32));

  const auto [lowest, highest] = torch::aminmax(rows_view);
  const float largest = std::max(-lowest.item<float>(), highest.item<float>());
  const float input_scale = largest > 0 ? largest / kInt8Max : 1.0f;
  const auto quantized = at::quantize_per_tensor(rows_view, input_scale, 0, torch::kQInt8);

  auto& plan = impl_->plan(rows);
  auto accumulated = torch::empty({rows, out_features}, torch::kInt32);
  memory source({{rows, impl_->in_features}, memory::data_type::s8, memory::format_tag::ab}, impl_->engine, quantized.data_ptr());
  memory destination({{rows, out_features}, memory::data_type::s32, memory::format_tag::ab}, impl_->engine, accumulated.data_ptr());
  dnnl::stream stream(impl_->engine);
  plan.matmul.execute(stream, {{DNNL_ARG_SRC, source}, {DNNL_ARG_WEIGHTS, plan.weights}, {DNNL_ARG_DST, destination}});
  stream.wait();

  // output = accumulated * (input scale * channel scale) + bias, one pass.
  const auto scales = (impl_->weight_scales * input_scale).contiguous();
  auto output = torch::empty({rows, out_features}, torch::kFloat32);
  const float* scale = scales.data_ptr<float>();
  const float* bias = impl_->bias.data_ptr<float>();
  const int32_t* sums = accumulated.data_ptr<int32_t>();
  float* out = output.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const int32_t* sum_row = sums + row * out_features;
      float* out_row = out + row * out_features;
#pragma omp simd
      for (int64_t column = 0; column < out_features; ++column) {
        out_row[column] = static_cast<float>(sum_row[column]) * scale[column] + bias[column];
      }
    }
  });
  return output.view(output_sizes);
}

#else  // without oneDNN

bool int8_linear_available() { return false; }

struct Int8Linear::Impl {};

Int8Linear::Int8Linear(const torch::Tensor&, const torch::Tensor&) {
  fail("int8 quantization is not available in this build (it needs oneDNN, Debian's libdnnl-dev, when building)");
}

Int8Linear::~Int8Linear() = default;

torch::Tensor Int8Linear::forward(const torch::Tensor&) const { fail("int8 quantization is not available in this build"); }

#endif

}  // namespace vt::kernels
