#include "tasks/task.h"

#include "common/error.h"

namespace vt {

const std::vector<TaskDefinition>& tasks() {
  static const std::vector<TaskDefinition> table = {classification_task(), object_detection_task(), semantic_segmentation_task()};
  return table;
}

Task find_task(const std::string& name) {
  std::string known;
  for (const auto& task : tasks()) {
    if (task.name == name) return &task;
    known += (known.empty() ? "" : ", ") + task.name;
  }
  fail("unknown model type \"", name, "\" (expected one of ", known, ")");
}

std::vector<std::string> reported_metrics(Task task) {
  std::vector<std::string> metrics{"eval_loss"};
  metrics.insert(metrics.end(), task->metrics.begin(), task->metrics.end());
  return metrics;
}

}  // namespace vt
