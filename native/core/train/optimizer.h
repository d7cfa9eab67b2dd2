// AdamW and SGD with the update rules of torch.optim (single-tensor implementations), parameter
// groups as transformers' Trainer builds them, and state that saves by parameter name.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/tensor_map.h"

namespace vt {

struct OptimizerConfig {
  std::string name = "adamw";  // adamw | sgd
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adamw
  double momentum = 0.9;                          // sgd
};

using NamedParameters = std::vector<std::pair<std::string, torch::Tensor>>;

class Optimizer {
 public:
  // `no_decay` names the parameters exempt from weight decay (biases and LayerNorm weights,
  // unless the caller wants decay everywhere).
  Optimizer(NamedParameters parameters, std::set<std::string> no_decay, OptimizerConfig config);

  // One update of every parameter that has a gradient, at learning rate `lr`, each gradient
  // taken times `gradient_scale` (clipping's coefficient, applied within the update's pass).
  void step(double lr, double gradient_scale = 1.0);
  void zero_grad();
  int64_t steps() const { return steps_; }
  const NamedParameters& parameters() const { return parameters_; }

  // Moments by parameter name ("exp_avg.<name>", "exp_avg_sq.<name>", "momentum_buffer.<name>").
  TensorMap state() const;
  // Restores state() and the step count; errors name missing or mis-shaped entries.
  void load_state(const TensorMap& state, int64_t steps);

 private:
  NamedParameters parameters_;
  std::set<std::string> no_decay_;
  OptimizerConfig config_;
  int64_t steps_ = 0;
  TensorMap state_;
};

// transformers' Trainer: no weight decay on biases and on LayerNorm weights.
std::set<std::string> no_decay_parameter_names(torch::nn::Module& module);

// The total L2 norm of the gradients, clip_grad_norm_'s quantity (summed more exactly than its
// float32 norms: float runs added in double).
double gradient_norm(const NamedParameters& parameters);
// The factor clip_grad_norm_ would scale the gradients by so that their total norm is at most
// max_norm (1: no clipping; max_norm 0 disables it).
double clipping_scale(double max_norm, double total_norm);

}  // namespace vt
