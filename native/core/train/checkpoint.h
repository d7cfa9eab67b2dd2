// Training checkpoints: a directory `checkpoint-<step>` that holds the model in save()'s format
// (config.json, model.safetensors, preprocessor_config.json), the optimizer's moments
// (optimizer.safetensors), the random generator (rng_state.safetensors) and the loop's position
// (trainer_state.json). It is written under a temporary name and renamed into place when whole,
// so a crash mid-save leaves every earlier checkpoint as it was.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/tensor_map.h"
#include "pretrained/pretrained.h"
#include "train/optimizer.h"

namespace vt {

struct CheckpointContents {
  TensorMap model;      // model.safetensors
  TensorMap optimizer;  // optimizer.safetensors
  int64_t optimizer_steps = 0;
  torch::Tensor rng_state;  // the CPU generator's state (rank 0's in data-parallel runs)
  // Data-parallel runs: every rank's generator state, by rank ("cpu", then "cpu.<rank>").
  std::vector<torch::Tensor> rank_rng_states;
  nlohmann::json trainer_state;
};

// `generator_states`: every rank's generator state, by rank, in a data-parallel run (rank 0
// writes); empty: this process's.
void save_checkpoint(const std::string& directory, PretrainedModel& model, const Optimizer& optimizer, const nlohmann::json& trainer_state,
                     const std::vector<torch::Tensor>& generator_states = {});
CheckpointContents load_checkpoint(const std::string& directory);

// `path` itself when it holds a checkpoint, else its newest complete checkpoint-<step>
// subdirectory; nullopt when there is none.
std::optional<std::string> find_checkpoint(const std::string& path);

}  // namespace vt
