#include "kernels/threaded.h"

#include <algorithm>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/autocast_mode.h>

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
    return bias.defined() ? SplitLinear<true>::apply(input, weight, bias) : SplitLinear<false>::apply(input, weight);
  }
  return linear_without_autograd(input, weight, bias);
}

bool fuses_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value, const torch::Tensor& additive_mask) {
  for (const auto* t : {&query, &key, &value}) {
    if (!cpu_float(*t) || t->dim() != 4 || t->stride(3) != 1 || needs_grad(*t)) return false;
  }
  if (additive_mask.defined() && (!cpu_float(additive_mask) || additive_mask.dim() > 4 || needs_grad(additive_mask))) return false;
  return !at::autocast::is_cpu_enabled() && !at::in_parallel_region();
}

torch::Tensor attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                        const torch::Tensor& additive_mask, double scale) {
  const int64_t batch = query.size(0), heads = query.size(1), targets = query.size(2), sources = key.size(2);
  auto out = torch::empty({batch, targets, heads, value.size(3)}, query.options());
  torch::Tensor mask;
  if (additive_mask.defined()) mask = additive_mask.expand({batch, heads, targets, sources});
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, batch * heads, 1, [&](int64_t first, int64_t last) {
    at::ThreadLocalStateGuard state(caller_state);
    torch::NoGradGuard no_grad;
    auto scores = torch::empty({targets, sources}, query.options());
    for (int64_t pair = first; pair < last; ++pair) {
      const int64_t b = pair / heads, h = pair % heads;
      // (q k^T) * scale (+ mask) in one BLAS call: alpha scales the product, beta adds the mask.
      if (mask.defined()) scores.copy_(mask[b][h]);
      at::addmm_out(scores, scores, query[b][h], key[b][h].t(), mask.defined() ? 1.0 : 0.0, scale);
      at::_softmax_out(scores, scores, -1, false);
      auto out_rows = out.select(0, b).select(1, h);
      at::mm_out(out_rows, scores, value[b][h]);
    }
  });
  return out.transpose(1, 2);
}

}  // namespace vt::kernels
