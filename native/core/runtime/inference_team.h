// How many OpenMP threads an inference pass runs on. The configured compute threads are the
// ceiling; two things lower it:
// - Small work. Passes over an input shape that took under kSmallPassSeconds run on one thread
//   from then on: waking the team and meeting at its barriers costs about what the second thread
//   saves, and one member descheduled by another process stalls the rest (a tiny ViT's 0.2 ms
//   pass took 40 ms beside a busy process).
// - Contention. When the team's threads spent more than kContendedShare of a pass waiting for a
//   core (Linux's schedstat run delay), other processes hold cores: OpenMP's workers spin at each
//   barrier for a member the scheduler parked behind them. If other processes' runnable threads
//   (/proc/loadavg less this process's) still take cores when the pass ends, passes run on the
//   cores they leave free, counted before each pass, until a pass ends with the full team's cores
//   free. Low-priority processes count too, and
//   rightly: a team member that shares a core with one still waits out its time slices.
// VISIONTORCH_ADAPTIVE_THREADS=0 keeps every pass on the full team.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include <sys/types.h>

namespace vt {

// Seconds of one finished pass, and how long its team's threads waited for a core meanwhile
// (summed over the threads; negative when it could not be read).
struct PassTiming {
  int team = 1;
  double seconds = 0;
  double run_delay_seconds = -1;
};

// Whether other processes hold the cores: process-wide, since every model shares the machine.
// The logic only (no clocks, no /proc), so that tests can drive it.
class CpuContention {
 public:
  static constexpr double kContendedShare = 0.1;

  static CpuContention& process();

  bool active() const;
  // Whether a pass's threads waited on run queues for more than kContendedShare of team x seconds.
  static bool waited(const PassTiming& timing);
  // After a pass that was not small. Contention starts when its team waited and other
  // processes' runnable threads still leave fewer than `full` of `cores` free as it ends: a
  // competitor that stays, not one that spun a moment at its start (another runtime's team).
  // It ends when, at the end of a pass, they leave `full` free. `other_runnable` < 0 (unknown)
  // changes nothing.
  void after_pass(const PassTiming& timing, int full, int other_runnable, int cores);
  // The team for the next pass: `full` when contention is not active; otherwise the cores that
  // `other_runnable` threads of other processes leave free of `cores` (1 to full; 1 when unknown).
  int team(int full, int other_runnable, int cores) const;

 private:
  mutable std::mutex mutex_;
  bool active_ = false;
};

// One model's record of its passes per input shape, for the small-work rule.
class InferenceTeam {
 public:
  static constexpr double kSmallPassSeconds = 1e-3;
  // Passes timed per shape before deciding; the first pass of a shape is not counted
  // (it packs weights and fills the allocator).
  static constexpr int kTimedPasses = 3;

  // The team for a pass over inputs of `shape`, out of `full` threads.
  int choose(const std::vector<int64_t>& shape, int full, CpuContention& contention, int other_runnable, int cores);
  void record(const std::vector<int64_t>& shape, int full, const PassTiming& timing);
  // Whether passes over `shape` were found small (they run on one thread).
  bool small(const std::vector<int64_t>& shape) const;

 private:
  struct ShapeRecord {
    int passes = 0;
    double fastest_seconds = 0;
    bool small = false;
  };
  std::map<std::vector<int64_t>, ShapeRecord> shapes_;
};

// Whether VISIONTORCH_ADAPTIVE_THREADS leaves the adaptive team on (unset, or anything but "0").
bool adaptive_threads_enabled();
// The kernel's count of runnable tasks on the machine (/proc/loadavg) less this process's own
// (/proc/self/task); -1 where it cannot be read.
int other_runnable_tasks();
// Logical CPUs this process may run on.
int usable_cpus();
// The Linux thread ids of the calling thread's OpenMP team of `team` threads (index 0: the
// caller); cached per team size.
const std::vector<pid_t>& team_thread_ids(int team);
// Seconds the threads `ids` have waited on a run queue since they started, summed; -1 where a
// schedstat file cannot be read.
double run_delay_seconds(const std::vector<pid_t>& ids);
// The team size of the most recent inference pass in this process (0 before the first).
int last_inference_team();

// Sizes one inference pass's team on the calling thread and restores the full team when it ends.
// finish() after a pass that completed records its timing.
class InferencePass {
 public:
  InferencePass(InferenceTeam& record, std::vector<int64_t> shape);
  ~InferencePass();
  void finish();
  int team() const { return team_; }

  InferencePass(const InferencePass&) = delete;
  InferencePass& operator=(const InferencePass&) = delete;

 private:
  InferenceTeam& record_;
  std::vector<int64_t> shape_;
  int full_ = 1;
  int team_ = 1;
  bool adaptive_ = false;
  double start_ = 0;
  double run_delay_before_ = -1;
};

}  // namespace vt
