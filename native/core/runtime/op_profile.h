// Where a thread's time goes, operator by operator, as torch.profiler's key_averages() counts
// it: every libtorch operator, autograd node and visiontorch kernel (each marked with
// RECORD_FUNCTION) that runs on the profiled thread, with its self time (time not spent in the
// records nested inside it). Records are grouped by the phase they ran in: the outermost user
// scope (RECORD_USER_SCOPE), which the trainer opens for each phase of a step. The compute
// thread runs every model computation, so profiling it profiles the library.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vt {

struct OpTiming {
  std::string phase;  // the outermost user scope open when it ran; empty outside any
  std::string name;   // operator ("aten::addmm"), autograd node, kernel or phase
  int64_t calls = 0;
  double self_seconds = 0;
  double total_seconds = 0;
};

struct OpProfile {
  double wall_seconds = 0;  // from start to stop, recorded or not
  std::vector<OpTiming> ops;
};

// Starts timing records on the calling thread; throws if a profile is already running.
void start_op_profile();
// Stops the profile started on this thread and returns what it recorded, largest self time
// first; throws if none was started here.
OpProfile stop_op_profile();
bool op_profile_running();

}  // namespace vt
