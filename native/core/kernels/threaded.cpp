#include "kernels/threaded.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>

#include "common/error.h"
#include "kernels/dnnl_linear.h"

#ifdef VISIONTORCH_WITH_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

namespace vt::kernels {

namespace {

// Below this many multiply-adds a product is done before the threads would have started.
constexpr int64_t kMinSplitMultiplyAdds = int64_t{1} << 21;
// A block of fewer rows than this keeps the BLAS kernel from reaching its speed; columns then.
constexpr int64_t kMinRowsPerBlock = 64;

// out = a @ b (+ bias over each row), each thread computing its own block of `out`. Worker
// threads take the caller's thread-local state (inference mode above all, since `out` may be an
// inference tensor) and never record autograd: the callers handle gradients themselves.
void split_matmul_into(torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& bias) {
  const int64_t rows = out.size(0), cols = out.size(1);
  const int64_t threads = at::get_num_threads();
  const bool by_rows = rows >= cols || rows >= kMinRowsPerBlock * threads;
  const int64_t extent = by_rows ? rows : cols;
  const int64_t blocks = std::max<int64_t>(1, std::min(threads, extent));
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    at::ThreadLocalStateGuard state(caller_state);
    torch::NoGradGuard no_grad;
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = extent * block / blocks, length = extent * (block + 1) / blocks - begin;
      if (length == 0) continue;
      auto out_block = by_rows ? out.narrow(0, begin, length) : out.narrow(1, begin, length);
      auto a_block = by_rows ? a.narrow(0, begin, length) : a;
      auto b_block = by_rows ? b : b.narrow(1, begin, length);
      if (bias.defined()) {
        at::addmm_out(out_block, by_rows ? bias : bias.narrow(0, begin, length), a_block, b_block);
      } else {
        at::mm_out(out_block, a_block, b_block);
      }
    }
  });
}

torch::Tensor split_matmul(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& bias = {}) {
  auto out = torch::empty({a.size(0), b.size(1)}, a.options());
  split_matmul_into(out, a, b, bias);
  return out;
}

torch::Tensor rows_of(const torch::Tensor& x) { return x.reshape({-1, x.size(-1)}); }

torch::Tensor linear_without_autograd(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  RECORD_FUNCTION("visiontorch::split_linear", std::vector<c10::IValue>());
  auto sizes = input.sizes().vec();
  sizes.back() = weight.size(0);
  return split_matmul(rows_of(input), weight.t(), bias).view(sizes);
}

// Autograd for the split product: the backward's two products are split the same way.
// Without a bias the function takes two inputs: autograd has no use for an undefined one.
template <bool WithBias>
class SplitLinear : public torch::autograd::Function<SplitLinear<WithBias>> {
 public:
  template <typename... Bias>
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& input, const torch::Tensor& weight,
                               const Bias&... bias) {
    static_assert(sizeof...(Bias) == (WithBias ? 1 : 0));
    context->save_for_backward({input, weight});
    if constexpr (WithBias) {
      return linear_without_autograd(input, weight, bias...);
    } else {
      return linear_without_autograd(input, weight, torch::Tensor());
    }
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* context, torch::autograd::tensor_list grad_outputs) {
    const auto saved = context->get_saved_variables();
    const auto& input = saved[0];
    const auto& weight = saved[1];
    const auto grad_rows = rows_of(grad_outputs[0].contiguous());
    torch::autograd::tensor_list grads(WithBias ? 3 : 2);
    if (context->needs_input_grad(0)) grads[0] = split_matmul(grad_rows, weight).view(input.sizes());
    if (context->needs_input_grad(1)) grads[1] = split_matmul(grad_rows.t(), rows_of(input));
    if (WithBias && context->needs_input_grad(2)) grads[2] = grad_rows.sum(0);
    return grads;
  }
};

// VISIONTORCH_ONEDNN_TRAINING_PRODUCTS=0 keeps float32 training products on OpenBLAS, one call
// per thread's block of rows. Read on each call, so that a benchmark can compare the two.
bool onednn_training_products() {
  const char* setting = std::getenv("VISIONTORCH_ONEDNN_TRAINING_PRODUCTS");
  return setting == nullptr || std::string(setting) != "0";
}

bool cpu_float(const torch::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == torch::kFloat32; }

bool needs_grad(const torch::Tensor& t) { return t.defined() && t.requires_grad() && torch::GradMode::is_enabled(); }

}  // namespace

bool splits_linear(const torch::Tensor& input, const torch::Tensor& weight) {
  if (!cpu_float(input) || !cpu_float(weight) || input.dim() < 1) return false;
  if (at::autocast::is_cpu_enabled() || at::get_num_threads() < 2 || at::in_parallel_region()) return false;
  const int64_t rows = input.numel() / std::max<int64_t>(1, input.size(-1));
  return rows * weight.size(0) * weight.size(1) >= kMinSplitMultiplyAdds;
}

torch::Tensor linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!splits_linear(input, weight)) return torch::nn::functional::linear(input, weight, bias);
  if (needs_grad(input) || needs_grad(weight) || needs_grad(bias)) {
    if (onednn_training_products() && float32_linear_applies(input, weight, bias)) return float32_linear(input, weight, bias);
    return bias.defined() ? SplitLinear<true>::apply(input, weight, bias) : SplitLinear<false>::apply(input, weight);
  }
  return linear_without_autograd(input, weight, bias);
}

namespace {

// The mask as [M, heads, targets, sources] (broadcast dimensions with stride 0), M dividing the
// batch; undefined where it has another shape.
torch::Tensor attention_mask_view(const torch::Tensor& mask, int64_t batch, int64_t heads, int64_t targets, int64_t sources) {
  if (mask.dim() > 4) return {};
  auto view = mask;
  while (view.dim() < 4) view = view.unsqueeze(0);
  const int64_t period = view.size(0);
  if (period < 1 || batch % period != 0) return {};
  const int64_t wanted[3] = {heads, targets, sources};
  for (int d = 1; d < 4; ++d) {
    if (view.size(d) != 1 && view.size(d) != wanted[d - 1]) return {};
  }
  return view.expand({period, heads, targets, sources});
}

// scores[targets, sources] = alpha * a[targets, k] b[sources, k]^T + beta * scores (transpose_b),
// or alpha * a[targets, k] b[k, n] + beta * out; row-major with the given row strides.
void small_product(bool transpose_b, int64_t rows, int64_t columns, int64_t inner, float alpha, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float beta, float* out, int64_t ldc) {
#ifdef VISIONTORCH_WITH_DNNL
  // oneDNN's sgemm on raw pointers: a (sample, head) pair of a small window costs a BLAS call, not
  // a dozen tensor views and dispatcher calls.
  if (dnnl_sgemm('N', transpose_b ? 'T' : 'N', rows, columns, inner, alpha, a, lda, b, ldb, beta, out, ldc) == dnnl_success) return;
#endif
  const auto options = torch::dtype(torch::kFloat32);
  auto a_view = torch::from_blob(const_cast<float*>(a), {rows, inner}, {lda, 1}, options);
  auto b_view = transpose_b ? torch::from_blob(const_cast<float*>(b), {columns, inner}, {ldb, 1}, options).t()
                            : torch::from_blob(const_cast<float*>(b), {inner, columns}, {ldb, 1}, options);
  auto out_view = torch::from_blob(out, {rows, columns}, {ldc, 1}, options);
  at::addmm_out(out_view, out_view, a_view, b_view, beta, alpha);
}

}  // namespace

bool fuses_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value, const torch::Tensor& additive_mask) {
  for (const auto* t : {&query, &key, &value}) {
    if (!cpu_float(*t) || t->dim() != 4 || t->stride(3) != 1 || needs_grad(*t)) return false;
  }
  if (additive_mask.defined()) {
    if (!cpu_float(additive_mask) || needs_grad(additive_mask)) return false;
    if (!attention_mask_view(additive_mask, query.size(0), query.size(1), query.size(2), key.size(2)).defined()) return false;
  }
  return !at::autocast::is_cpu_enabled() && !at::in_parallel_region();
}

torch::Tensor attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                        const torch::Tensor& additive_mask, double scale) {
  RECORD_FUNCTION("visiontorch::attention", std::vector<c10::IValue>());
  const int64_t batch = query.size(0), heads = query.size(1), targets = query.size(2), sources = key.size(2);
  const int64_t head_dim = query.size(3), value_dim = value.size(3);
  auto out = torch::empty({batch, targets, heads, value_dim}, query.options());
  torch::Tensor mask;
  if (additive_mask.defined()) {
    mask = attention_mask_view(additive_mask, batch, heads, targets, sources);
    VT_CHECK(mask.defined(), "attention: a mask of shape ", additive_mask.sizes(), " does not fit scores of shape [", batch, ", ", heads,
             ", ", targets, ", ", sources, "]");
  }
  const float* q = query.data_ptr<float>();
  const float* k = key.data_ptr<float>();
  const float* v = value.data_ptr<float>();
  const float* m = mask.defined() ? mask.data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, batch * heads, 1, [&](int64_t first, int64_t last) {
    at::ThreadLocalStateGuard state(caller_state);
    torch::NoGradGuard no_grad;
    auto scores = torch::empty({targets, sources}, query.options());
    float* s = scores.data_ptr<float>();
    for (int64_t pair = first; pair < last; ++pair) {
      const int64_t b = pair / heads, h = pair % heads;
      // (q k^T) * scale (+ mask) in one product: alpha scales it, beta adds the mask.
      if (m != nullptr) {
        const float* mask_rows = m + (b % mask.size(0)) * mask.stride(0) + h * mask.stride(1);
        for (int64_t t = 0; t < targets; ++t) {
          const float* row = mask_rows + t * mask.stride(2);
          float* scores_row = s + t * sources;
          if (mask.stride(3) == 1) {
            std::memcpy(scores_row, row, sizeof(float) * sources);
          } else {
            for (int64_t j = 0; j < sources; ++j) scores_row[j] = row[j * mask.stride(3)];
          }
        }
      }
      small_product(true, targets, sources, head_dim, static_cast<float>(scale), q + b * query.stride(0) + h * query.stride(1),
                    query.stride(2), k + b * key.stride(0) + h * key.stride(1), key.stride(2), m != nullptr ? 1.0f : 0.0f, s, sources);
      at::_softmax_out(scores, scores, -1, false);
      small_product(false, targets, value_dim, sources, 1.0f, s, sources, v + b * value.stride(0) + h * value.stride(1), value.stride(2),
                    0.0f, o + b * out.stride(0) + h * out.stride(2), out.stride(1));
    }
  });
  return out.transpose(1, 2);
}

}  // namespace vt::kernels
