// The thread that runs model computations. OpenMP keeps a team of threads per calling thread,
// and teams of different callers spin and compete for the same cores; running every short
// computation (load, forward, predict, trainingStep, ...) on this one thread keeps one team,
// which on small machines runs several times faster than a rotating thread pool.
#pragma once

#include <functional>

namespace vt {

class ComputeExecutor {
 public:
  // The process-wide executor; its thread starts on first use and applies the configured
  // compute threads before each task.
  static ComputeExecutor& instance();

  // Queues `task` (run in submission order). Tasks must not throw: they report their own errors.
  void post(std::function<void()> task);

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
