// The thread that runs model computations. OpenMP keeps a team of threads per calling thread,
// and teams of different callers spin and compete for the same cores; running every short
// computation (load, forward, predict, trainingStep, ...) on this one thread keeps one team,
// which on small machines runs several times faster than a rotating thread pool.
//
// A long task (a training run) would hold the thread for minutes, so it lends it out: at points
// of its choosing (between optimizer steps) it calls run_waiting_short_tasks(), which runs the
// short tasks queued behind it, on the same thread and team. Scheduling, not more threads.
#pragma once

#include <cstddef>
#include <functional>

namespace vt {

class ComputeExecutor {
 public:
  enum class Kind {
    Short,  // runs in order, or inside a long task's yield
    Long,   // runs in order and may yield; never runs inside another task's yield
  };

  // The process-wide executor; its thread starts on first use and applies the configured
  // compute threads before each task.
  static ComputeExecutor& instance();

  // Queues `task` (run in submission order). Tasks must not throw: they report their own errors.
  // `subject` is what the task computes with (a model), or null. A short task never runs inside
  // the yield of a long task with the same subject, nor ahead of a queued long task with it: it
  // would see the model mid-run (its train mode, weights between steps).
  void post(std::function<void()> task, Kind kind = Kind::Short, const void* subject = nullptr);

  // Called by the running long task, on the compute thread, where no state of its own is active:
  // runs the short tasks that were queued when it was called and may run now (see post), in
  // submission order, and returns how many ran. Anywhere else (another thread, a short task, a
  // task inside a yield) it runs nothing and returns 0.
  size_t run_waiting_short_tasks();

  // Whether no task is running or queued: a snapshot, so a caller that acts on it must be fine
  // with a task posted right after.
  bool idle() const;

  // The process is exiting: drops the queued tasks, refuses new ones and waits (up to a minute)
  // for the running one, so that exit does not destroy what it computes with under it.
  void finish_for_exit();

  ComputeExecutor(const ComputeExecutor&) = delete;
  ComputeExecutor& operator=(const ComputeExecutor&) = delete;
  struct Impl;

 private:
  ComputeExecutor();
  ~ComputeExecutor();
  Impl* impl_;
};

}  // namespace vt
