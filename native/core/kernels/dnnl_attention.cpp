#include "kernels/dnnl_attention.h"

#include "common/error.h"

#ifdef VISIONTORCH_WITH_DNNL
#include <ATen/record_function.h>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <c10/core/impl/LocalDispatchKeySet.h>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include "kernels/dnnl_support.h"
#endif

namespace vt::kernels {

#ifdef VISIONTORCH_WITH_DNNL

namespace {

using dnnl::memory;

// Distinct shapes seen; past this many the caches start over.
constexpr size_t kMaxPlans = 256;

memory::desc strided_desc(const torch::Tensor& t) { return memory::desc(t.sizes().vec(), dnnl_type(t.scalar_type()), t.strides().vec()); }

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> strides(sizes.size(), 1);
  for (int i = static_cast<int>(sizes.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * sizes[i + 1];
  return strides;
}

// out = scale * (a @ b) over the leading (batch) dimensions, each operand with its own strides.
struct ProductKey {
  std::vector<int64_t> a_sizes, a_strides, b_sizes, b_strides, out_sizes, out_strides;
  torch::ScalarType input_dtype, output_dtype;
  float scale;
  auto tied() const { return std::tie(a_sizes, a_strides, b_sizes, b_strides, out_sizes, out_strides, input_dtype, output_dtype, scale); }
  bool operator<(const ProductKey& other) const { return tied() < other.tied(); }
};

// softmax over the last dimension of a contiguous tensor: probabilities from scores, and the
// scores' gradient from the probabilities' gradient, all of one dtype (computed in float32).
struct SoftmaxKey {
  std::vector<int64_t> sizes;
  torch::ScalarType dtype;
  bool operator<(const SoftmaxKey& other) const { return std::tie(sizes, dtype) < std::tie(other.sizes, other.dtype); }
};

struct SoftmaxPlan {
  dnnl::softmax_v2_forward forward;
  std::optional<dnnl::softmax_v2_backward> backward;  // none: no fast kernel, torch computes it
};

// Primitives by shape; none where oneDNN has only its slow reference kernel.
class Plans {
 public:
  static Plans& instance() {
    static Plans plans;
    return plans;
  }

  const dnnl::matmul* product(const ProductKey& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto found = products_.find(key); found != products_.end()) return found->second ? &*found->second : nullptr;
    if (products_.size() >= kMaxPlans) products_.clear();
    auto& slot = products_[key];
    try {
      const memory::desc a(key.a_sizes, dnnl_type(key.input_dtype), key.a_strides);
      const memory::desc b(key.b_sizes, dnnl_type(key.input_dtype), key.b_strides);
      const memory::desc out(key.out_sizes, dnnl_type(key.output_dtype), key.out_strides);
      dnnl::primitive_attr attributes;
      if (key.scale != 1.0f) attributes.set_output_scales(0, {key.scale});
      dnnl::matmul::primitive_desc description(dnnl::matmul::desc(a, b, out), attributes, engine_);
      if (!is_reference_kernel(description)) slot = dnnl::matmul(description);
    } catch (const dnnl::error&) {
      // No implementation for these strides: torch's own product computes it.
    }
    return slot ? &*slot : nullptr;
  }

  const SoftmaxPlan* softmax(const SoftmaxKey& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto found = softmaxes_.find(key); found != softmaxes_.end()) return found->second ? &*found->second : nullptr;
    if (softmaxes_.size() >= kMaxPlans) softmaxes_.clear();
    auto& slot = softmaxes_[key];
    const int axis = static_cast<int>(key.sizes.size()) - 1;
    const memory::desc data(key.sizes, dnnl_type(key.dtype), contiguous_strides(key.sizes));
    try {
      dnnl::softmax_v2_forward::primitive_desc forward(
          dnnl::softmax_v2_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::softmax_accurate, data, data, axis), engine_);
      if (is_reference_kernel(forward)) return nullptr;
      slot = SoftmaxPlan{dnnl::softmax_v2_forward(forward), std::nullopt};
      try {
        dnnl::softmax_v2_backward::primitive_desc backward(
            dnnl::softmax_v2_backward::desc(dnnl::algorithm::softmax_accurate, data, data, data, axis), engine_, forward);
        if (!is_reference_kernel(backward)) slot->backward = dnnl::softmax_v2_backward(backward);
      } catch (const dnnl::error&) {}
    } catch (const dnnl::error&) {
      slot.reset();
    }
    return slot ? &*slot : nullptr;
  }

  const dnnl::engine& engine() const { return engine_; }

 private:
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  std::mutex mutex_;
  std::map<ProductKey, std::optional<dnnl::matmul>> products_;
  std::map<SoftmaxKey, std::optional<SoftmaxPlan>> softmaxes_;
};

ProductKey product_key(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& out, double scale) {
  return {a.sizes().vec(),     a.strides().vec(), b.sizes().vec(),   b.strides().vec(),        out.sizes().vec(),
          out.strides().vec(), a.scalar_type(),   out.scalar_type(), static_cast<float>(scale)};
}

void execute(const dnnl::primitive& primitive, const std::unordered_map<int, memory>& arguments) {
  run_primitive(primitive, Plans::instance().engine(), arguments);
}

// out = scale * (a @ b), written into out's own strides; torch's product where oneDNN has no
// fast kernel for these strides.
void product_into(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& out, double scale) {
  if (const auto* matmul = Plans::instance().product(product_key(a, b, out, scale))) {
    const auto& engine = Plans::instance().engine();
    execute(*matmul, {{DNNL_ARG_SRC, memory(strided_desc(a), engine, a.data_ptr())},
                      {DNNL_ARG_WEIGHTS, memory(strided_desc(b), engine, b.data_ptr())},
                      {DNNL_ARG_DST, memory(strided_desc(out), engine, out.data_ptr())}});
    return;
  }
  auto product = torch::matmul(a.to(torch::kFloat32), b.to(torch::kFloat32));
  out.copy_(scale == 1.0 ? product : product * scale);
}

// An empty [B, T, heads, dim] tensor, returned as its [B, heads, T, dim] view: the layout the
// projections' outputs and gradients have.
torch::Tensor heads_layout(int64_t batch, int64_t heads, int64_t tokens, int64_t dim, const torch::TensorOptions& options) {
  return torch::empty({batch, tokens, heads, dim}, options).transpose(1, 2);
}

class TrainingAttention : public torch::autograd::Function<TrainingAttention> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& query, const torch::Tensor& key,
                               const torch::Tensor& value, double scale) {
    RECORD_FUNCTION("visiontorch::training_attention", std::vector<c10::IValue>());
    const int64_t batch = query.size(0), heads = query.size(1), targets = query.size(2), sources = key.size(2);
    // Scores in the operands' dtype, as torch (and autocast) computes them; oneDNN's softmax
    // computes in float32 either way.
    auto scores = torch::empty({batch, heads, targets, sources}, query.options());
    // The products read a transposed operand several times slower than a [.., k, n] row-major
    // one: transposing the keys (a sliver of the work) first pays.
    product_into(query, key.transpose(-1, -2).contiguous(), scores, scale);
    auto probabilities = torch::empty_like(scores);
    const auto* softmax = Plans::instance().softmax({scores.sizes().vec(), scores.scalar_type()});
    if (softmax != nullptr) {
      const auto& engine = Plans::instance().engine();
      execute(softmax->forward, {{DNNL_ARG_SRC, memory(strided_desc(scores), engine, scores.data_ptr())},
                                 {DNNL_ARG_DST, memory(strided_desc(probabilities), engine, probabilities.data_ptr())}});
    } else {
      probabilities.copy_(torch::softmax(scores.to(torch::kFloat32), -1));
    }
    auto output = heads_layout(batch, heads, targets, value.size(3), query.options());
    product_into(probabilities, value, output, 1.0);
    context->save_for_backward({query, key, value, probabilities});
    context->saved_data["scale"] = scale;
    return output;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* context, torch::autograd::tensor_list grad_outputs) {
    const auto saved = context->get_saved_variables();
    const auto &query = saved[0], &key = saved[1], &value = saved[2], &probabilities = saved[3];
    const double scale = context->saved_data["scale"].toDouble();
    auto grad_output = grad_outputs[0].to(query.scalar_type());
    if (grad_output.stride(3) != 1) grad_output = grad_output.contiguous();
    const int64_t batch = query.size(0), heads = query.size(1), targets = query.size(2), sources = key.size(2);
    const auto options = query.options();

    auto grad_value = heads_layout(batch, heads, sources, value.size(3), options);
    product_into(probabilities.transpose(-1, -2), grad_output, grad_value, 1.0);
    auto grad_probabilities = torch::empty(probabilities.sizes(), options);
    product_into(grad_output, value.transpose(-1, -2).contiguous(), grad_probabilities, 1.0);
    auto grad_scores = torch::empty_like(probabilities);
    const auto* softmax = Plans::instance().softmax({probabilities.sizes().vec(), probabilities.scalar_type()});
    if (softmax != nullptr && softmax->backward) {
      const auto& engine = Plans::instance().engine();
      execute(*softmax->backward, {{DNNL_ARG_DST, memory(strided_desc(probabilities), engine, probabilities.data_ptr())},
                                   {DNNL_ARG_DIFF_DST, memory(strided_desc(grad_probabilities), engine, grad_probabilities.data_ptr())},
                                   {DNNL_ARG_DIFF_SRC, memory(strided_desc(grad_scores), engine, grad_scores.data_ptr())}});
    } else {
      const auto p = probabilities.to(torch::kFloat32), grad_p = grad_probabilities.to(torch::kFloat32);
      grad_scores.copy_(p * (grad_p - (grad_p * p).sum(-1, true)));
    }
    auto grad_query = heads_layout(batch, heads, targets, query.size(3), options);
    product_into(grad_scores, key, grad_query, scale);
    auto grad_key = heads_layout(batch, heads, sources, key.size(3), options);
    product_into(grad_scores.transpose(-1, -2), query, grad_key, scale);
    return {grad_query, grad_key, grad_value, torch::Tensor()};
  }
};

}  // namespace

bool training_attention_applies(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                const torch::Tensor& additive_mask) {
  if (additive_mask.defined() || at::in_parallel_region()) return false;
  // bfloat16 operands inside a bfloat16 autocast region; float32 ones outside of autocast, when
  // a gradient is wanted (inference has kernels::attention).
  const auto dtype = query.scalar_type();
  if (dtype == torch::kBFloat16) {
    if (!at::autocast::is_cpu_enabled() || at::autocast::get_autocast_cpu_dtype() != torch::kBFloat16) return false;
  } else if (dtype == torch::kFloat32) {
    if (at::autocast::is_cpu_enabled() || !torch::GradMode::is_enabled() ||
        !(query.requires_grad() || key.requires_grad() || value.requires_grad())) {
      return false;
    }
  } else {
    return false;
  }
  for (const auto* t : {&query, &key, &value}) {
    if (!t->device().is_cpu() || t->scalar_type() != dtype || t->dim() != 4 || t->stride(3) != 1 || t->numel() == 0) return false;
  }
  const int64_t batch = query.size(0), heads = query.size(1), targets = query.size(2), sources = key.size(2);
  if (key.size(0) != batch || value.size(0) != batch || key.size(1) != heads || value.size(1) != heads || value.size(2) != sources ||
      key.size(3) != query.size(3)) {
    return false;
  }
  // The first product and the softmax decide: the other products share the first's kernels.
  const auto transposed_key = key.transpose(-1, -2);
  const std::vector<int64_t> scores_sizes{batch, heads, targets, sources};
  const ProductKey first{query.sizes().vec(),
                         query.strides().vec(),
                         transposed_key.sizes().vec(),
                         transposed_key.strides().vec(),
                         scores_sizes,
                         contiguous_strides(scores_sizes),
                         dtype,
                         dtype,
                         1.0f};
  return Plans::instance().product(first) != nullptr && Plans::instance().softmax({scores_sizes, dtype}) != nullptr;
}

torch::Tensor training_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value, double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return TrainingAttention::apply(query, key, value, scale);
}

#else  // without oneDNN

bool training_attention_applies(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return false; }

torch::Tensor training_attention(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, double) {
  fail("oneDNN attention is not available in this build");
}

#endif

}  // namespace vt::kernels
