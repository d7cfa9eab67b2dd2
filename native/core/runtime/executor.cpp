#include "runtime/executor.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "runtime/threads.h"

namespace vt {

struct ComputeExecutor::Impl {
  std::mutex mutex;
  std::condition_variable ready;
  std::deque<std::function<void()>> tasks;
  std::thread thread;

  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex);
        ready.wait(lock, [&] { return !tasks.empty(); });
        task = std::move(tasks.front());
        tasks.pop_front();
      }
      apply_compute_threads();
      task();
    }
  }
};

ComputeExecutor& ComputeExecutor::instance() {
  // Never destroyed: the thread lives as long as the process, and exit does not wait for it.
  static ComputeExecutor* executor = new ComputeExecutor();
  return *executor;
}

ComputeExecutor::ComputeExecutor() : impl_(new Impl()) {
  impl_->thread = std::thread([impl = impl_] { impl->run(); });
  impl_->thread.detach();
}

ComputeExecutor::~ComputeExecutor() = default;

void ComputeExecutor::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->tasks.push_back(std::move(task));
  }
  impl_->ready.notify_one();
}

}  // namespace vt
