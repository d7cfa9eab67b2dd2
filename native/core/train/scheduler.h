// Learning-rate schedules as transformers' get_scheduler builds them (LambdaLR multipliers).
#pragma once

#include <cstdint>
#include <string>

namespace vt {

struct ScheduleConfig {
  std::string kind = "linear";  // linear | cosine | constant | constant_with_warmup
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // needed by linear and cosine
};

// The multiplier of the base rate for the optimizer step that follows `completed_steps`
// scheduler steps (LambdaLR evaluates its lambda at last_epoch = completed_steps).
double learning_rate_multiplier(const ScheduleConfig& schedule, int64_t completed_steps);
void validate_schedule(const ScheduleConfig& schedule);  // throws naming the problem

}  // namespace vt
