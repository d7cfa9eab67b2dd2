#include "train/optimizer.h"

#include <cmath>

#include "common/error.h"
#include "models/layers.h"

namespace vt {

Optimizer::Optimizer(NamedParameters parameters, std::set<std::string> no_decay, OptimizerConfig config)
    : parameters_(std::move(parameters)), no_decay_(std::move(no_decay)), config_(std::move(config)) {
  VT_CHECK(config_.name == "adamw" || config_.name == "sgd", "optimizer must be adamw or sgd, got \"", config_.name, "\"");
}

void Optimizer::zero_grad() {
  // set_to_none, as the fixtures' opt.zero_grad(set_to_none=True)
  for (auto& [name, parameter] : parameters_) parameter.mutable_grad() = torch::Tensor();
}

void Optimizer::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double step = static_cast<double>(steps_);
  for (auto& [name, parameter] : parameters_) {
    const torch::Tensor& grad = parameter.grad();
    if (!grad.defined()) continue;
    const double decay = no_decay_.count(name) ? 0.0 : config_.weight_decay;
    if (config_.name == "adamw") {
      auto& exp_avg = state_["exp_avg." + name];
      auto& exp_avg_sq = state_["exp_avg_sq." + name];
      if (!exp_avg.defined()) {
        exp_avg = torch::zeros_like(parameter, torch::MemoryFormat::Preserve);
        exp_avg_sq = torch::zeros_like(parameter, torch::MemoryFormat::Preserve);
      }
      // torch.optim.AdamW (_single_tensor_adamw): decoupled decay, then the Adam update.
      if (decay != 0.0) parameter.mul_(1.0 - lr * decay);
      exp_avg.mul_(config_.beta1).add_(grad, 1.0 - config_.beta1);
      exp_avg_sq.mul_(config_.beta2).addcmul_(grad, grad, 1.0 - config_.beta2);
      const double bias_correction1 = 1.0 - std::pow(config_.beta1, step);
      const double bias_correction2 = 1.0 - std::pow(config_.beta2, step);
      auto denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(config_.eps);
      parameter.addcdiv_(exp_avg, denom, -lr / bias_correction1);
    } else {
      // torch.optim.SGD: L2 decay added to the gradient, heavy-ball momentum without dampening.
      torch::Tensor direction = decay != 0.0 ? grad.add(parameter, decay) : grad;
      if (config_.momentum != 0.0) {
        auto& buffer = state_["momentum_buffer." + name];
        if (!buffer.defined()) {
          buffer = direction.clone().detach();
        } else {
          buffer.mul_(config_.momentum).add_(direction);
        }
        direction = buffer;
      }
      parameter.add_(direction, -lr);
    }
  }
}

TensorMap Optimizer::state() const {
  TensorMap state;
  for (const auto& [key, value] : state_) state[key] = value;
  return state;
}

void Optimizer::load_state(const TensorMap& state, int64_t steps) {
  std::map<std::string, torch::Tensor> by_name;
  for (const auto& [name, parameter] : parameters_) by_name[name] = parameter;
  TensorMap restored;
  for (const auto& [key, value] : state) {
    auto dot = key.find('.');
    VT_CHECK(dot != std::string::npos, "optimizer state: unexpected entry \"", key, "\"");
    const std::string kind = key.substr(0, dot), name = key.substr(dot + 1);
    VT_CHECK(kind == "exp_avg" || kind == "exp_avg_sq" || kind == "momentum_buffer", "optimizer state: unexpected entry \"", key, "\"");
    VT_CHECK((kind == "momentum_buffer") == (config_.name == "sgd"), "optimizer state: \"", key,
             "\" belongs to another optimizer than ", config_.name);
    auto parameter = by_name.find(name);
    VT_CHECK(parameter != by_name.end(), "optimizer state: \"", key, "\" names no trainable parameter of this model");
    VT_CHECK(value.sizes() == parameter->second.sizes(), "optimizer state: \"", key, "\" has shape ", value.sizes(),
             " but the parameter has ", parameter->second.sizes());
    restored[key] = value.to(parameter->second.device(), parameter->second.scalar_type()).clone();
  }
  state_ = std::move(restored);
  steps_ = steps;
}

std::set<std::string> no_decay_parameter_names(torch::nn::Module& module) {
  std::set<std::string> names;
  for (const auto& item : module.named_modules()) {
    const bool norm = dynamic_cast<layers::LayerNormImpl*>(item.value().get()) != nullptr ||
                      dynamic_cast<torch::nn::LayerNormImpl*>(item.value().get()) != nullptr ||
                      dynamic_cast<torch::nn::GroupNormImpl*>(item.value().get()) != nullptr;
    for (const auto& parameter : item.value()->named_parameters(/*recurse=*/false)) {
      const std::string name = item.key().empty() ? parameter.key() : item.key() + "." + parameter.key();
      if (norm || name.find("bias") != std::string::npos) names.insert(name);
    }
  }
  return names;
}

double gradient_norm(const NamedParameters& parameters) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& [name, parameter] : parameters) {
    if (parameter.grad().defined()) norms.push_back(parameter.grad().detach().to(torch::kFloat32).norm(2));
  }
  if (norms.empty()) return 0.0;
  return torch::stack(norms).norm(2).item<double>();
}

void clip_gradients(const NamedParameters& parameters, double max_norm, double total_norm) {
  torch::NoGradGuard no_grad;
  const double coefficient = max_norm / (total_norm + 1e-6);
  if (coefficient >= 1.0) return;
  for (const auto& [name, parameter] : parameters) {
    if (parameter.grad().defined()) parameter.grad().mul_(coefficient);
  }
}

}  // namespace vt
