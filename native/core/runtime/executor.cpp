#include "runtime/executor.h"

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>

#include "runtime/threads.h"

namespace vt {

struct ComputeExecutor::Impl {
  std::mutex mutex;
  std::condition_variable ready, idle;
  std::deque<std::function<void()>> tasks;
  std::thread thread;
  bool running = false;  // a task is executing
  bool exiting = false;  // the process exits: queued tasks are dropped
  size_t completed = 0;

  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex);
        ready.wait(lock, [&] { return !tasks.empty() && !exiting; });
        task = std::move(tasks.front());
        tasks.pop_front();
        running = true;
      }
      apply_compute_threads();
      task();
      task = nullptr;
      size_t done = 0;
      {
        std::lock_guard<std::mutex> lock(mutex);
        running = false;
        done = ++completed;
      }
      idle.notify_all();
      // exit() destroys static objects in the reverse order of their construction, and a task may
      // be running on them (libtorch's and oneDNN's caches, made when first used). A handler
      // registered after the first tasks runs before the destructors of what those tasks built:
      // it makes exit wait for the running task. Registered again now and then, for caches that
      // later kinds of work build.
      if ((done & (done - 1)) == 0 && done <= (size_t{1} << 20)) std::atexit(wait_at_exit);
    }
  }

  static void wait_at_exit();
};

namespace {
ComputeExecutor::Impl* executor_impl = nullptr;
}  // namespace

void ComputeExecutor::Impl::wait_at_exit() {
  if (executor_impl != nullptr) ComputeExecutor::instance().finish_for_exit();
}

void ComputeExecutor::finish_for_exit() {
  if (impl_->thread.get_id() == std::this_thread::get_id()) return;
  std::unique_lock<std::mutex> lock(impl_->mutex);
  impl_->exiting = true;
  impl_->tasks.clear();
  // A forward pass finishes in seconds; a bound keeps a stuck task from holding exit forever.
  impl_->idle.wait_for(lock, std::chrono::seconds(60), [&] { return !impl_->running; });
}

ComputeExecutor& ComputeExecutor::instance() {
  // Never destroyed: the thread lives as long as the process, and exit waits only for its running task.
  static ComputeExecutor* executor = new ComputeExecutor();
  return *executor;
}

ComputeExecutor::ComputeExecutor() : impl_(new Impl()) {
  executor_impl = impl_;
  impl_->thread = std::thread([impl = impl_] { impl->run(); });
  impl_->thread.detach();
}

ComputeExecutor::~ComputeExecutor() = default;

void ComputeExecutor::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->exiting) return;  // the process is exiting: nobody will see the result
    impl_->tasks.push_back(std::move(task));
  }
  impl_->ready.notify_one();
}

}  // namespace vt
