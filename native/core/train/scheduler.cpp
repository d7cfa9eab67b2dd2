#include "train/scheduler.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace vt {

void validate_schedule(const ScheduleConfig& schedule) {
  const auto& kind = schedule.kind;
  VT_CHECK(kind == "linear" || kind == "cosine" || kind == "constant" || kind == "constant_with_warmup",
           "lr_scheduler must be linear, cosine, constant or constant_with_warmup, got \"", kind, "\"");
  VT_CHECK(schedule.warmup_steps >= 0, "warmup_steps must not be negative");
  VT_CHECK(!(kind == "linear" || kind == "cosine") || schedule.total_steps > 0, "lr_scheduler ", kind,
           " decays over the whole run and needs its length: give max_steps (or train() a dataset)");
}

double learning_rate_multiplier(const ScheduleConfig& schedule, int64_t step) {
  const double warmup = static_cast<double>(schedule.warmup_steps);
  const double current = static_cast<double>(step);
  if (schedule.kind == "constant") return 1.0;
  if (current < warmup) return current / std::max(1.0, warmup);
  if (schedule.kind == "constant_with_warmup") return 1.0;
  const double total = static_cast<double>(schedule.total_steps);
  if (schedule.kind == "linear") return std::max(0.0, (total - current) / std::max(1.0, total - warmup));
  // cosine with transformers' default num_cycles = 0.5: from 1 down to 0 over the decay steps
  const double progress = (current - warmup) / std::max(1.0, total - warmup);
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 2.0 * 0.5 * progress)));
}

}  // namespace vt
