// The architectures this build implements, keyed by the class names config.json's
// "architectures" lists, and the AutoModelFor<Task> choice between them.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/module.h"
#include "tasks/task.h"

namespace vt {

struct Architecture {
  std::string name;                      // "ViTForImageClassification"
  std::string model_type;                // config.json's model_type: "vit"
  Task task = nullptr;                   // none for base models (ViTModel)
  std::vector<std::string> checkpoints;  // known hub checkpoints of this class
  std::function<std::shared_ptr<VisionModule>(const nlohmann::json& config, const std::string& source)> build;
};

const std::vector<Architecture>& architectures();
const Architecture* find_architecture(const std::string& name);

// Picks the class to build from config.json for `task`: the checkpoint's own class when it
// serves the task; for a base-model checkpoint, the family's task class when a head is wanted
// (`want_head`: the caller asked for a number of classes), else the base model itself.
const Architecture& select_architecture(const nlohmann::json& config, Task task, bool want_head, const std::string& source);

}  // namespace vt
