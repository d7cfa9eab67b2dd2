#include "runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/threads.h"

namespace vt {

struct ComputeExecutor::Impl {
  struct Task {
    std::function<void()> run;
    Kind kind = Kind::Short;
    const void* subject = nullptr;
    uint64_t sequence = 0;
  };

  std::mutex mutex;
  std::condition_variable ready, idle;
  std::deque<Task> tasks;
  std::thread thread;
  std::thread::id thread_id;  // the detached thread's: std::thread forgets it on detach()
  bool running = false;       // a task is executing (a long one counts while it yields)
  bool exiting = false;       // the process exits: queued tasks are dropped
  bool long_running = false;  // the executing task is long: it may yield
  bool yielding = false;      // it is running short tasks now: they may not yield themselves
  const void* long_subject = nullptr;
  uint64_t posted = 0;
  size_t completed = 0;

  void run() {
    for (;;) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(mutex);
        ready.wait(lock, [&] { return !tasks.empty() && !exiting; });
        task = std::move(tasks.front());
        tasks.pop_front();
        running = true;
        long_running = task.kind == Kind::Long;
        long_subject = task.subject;
      }
      execute(task.run);
      {
        std::lock_guard<std::mutex> lock(mutex);
        running = false;
        long_running = false;
        long_subject = nullptr;
      }
      idle.notify_all();
    }
  }

  void execute(std::function<void()>& task) {
    apply_compute_threads();
    try {
      task();
    } catch (...) {
      // Tasks report their own errors; one that throws anyway must not end the thread, nor the
      // training run whose yield ran it.
    }
    task = nullptr;  // what it captured is destroyed here, before exit may proceed
    size_t done = 0;
    {
      std::lock_guard<std::mutex> lock(mutex);
      done = ++completed;
    }
    // exit() destroys static objects in the reverse order of their construction, and a task may
    // be running on them (libtorch's and oneDNN's caches, made when first used). A handler
    // registered after the first tasks runs before the destructors of what those tasks built:
    // it makes exit wait for the running task. Registered again now and then, for caches that
    // later kinds of work build.
    if ((done & (done - 1)) == 0 && done <= (size_t{1} << 20)) std::atexit(wait_at_exit);
  }

  // The first queued short task, posted before `before`, that may run inside the running long
  // task's yield: not on its subject, nor on the subject of a long task queued ahead of it (a
  // predict called after a train() keeps seeing that run's result, as before).
  std::deque<Task>::iterator next_short_task(uint64_t before) {
    std::vector<const void*> held;
    if (long_subject != nullptr) held.push_back(long_subject);
    for (auto it = tasks.begin(); it != tasks.end() && it->sequence < before; ++it) {
      if (it->kind == Kind::Long) {
        if (it->subject != nullptr) held.push_back(it->subject);
      } else if (it->subject == nullptr || std::find(held.begin(), held.end(), it->subject) == held.end()) {
        return it;
      }
    }
    return tasks.end();
  }

  static void wait_at_exit();
};

namespace {
ComputeExecutor::Impl* executor_impl = nullptr;
}  // namespace

void ComputeExecutor::Impl::wait_at_exit() {
  if (executor_impl != nullptr) ComputeExecutor::instance().finish_for_exit();
}

bool ComputeExecutor::idle() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return !impl_->running && impl_->tasks.empty();
}

size_t ComputeExecutor::run_waiting_short_tasks() {
  Impl& impl = *impl_;
  if (std::this_thread::get_id() != impl.thread_id) return 0;
  uint64_t before = 0;
  {
    std::lock_guard<std::mutex> lock(impl.mutex);
    if (!impl.long_running || impl.yielding) return 0;
    impl.yielding = true;
    // Only what waits now: a steady stream of requests must not stall the run.
    before = impl.posted;
  }
  size_t ran = 0;
  for (;;) {
    Impl::Task task;
    {
      std::lock_guard<std::mutex> lock(impl.mutex);
      if (impl.exiting) break;
      auto next = impl.next_short_task(before);
      if (next == impl.tasks.end()) break;
      task = std::move(*next);
      impl.tasks.erase(next);
    }
    impl.execute(task.run);
    ++ran;
  }
  std::lock_guard<std::mutex> lock(impl.mutex);
  impl.yielding = false;
  return ran;
}

void ComputeExecutor::finish_for_exit() {
  if (impl_->thread_id == std::this_thread::get_id()) return;
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
  impl_->thread_id = impl_->thread.get_id();
  impl_->thread.detach();
}

ComputeExecutor::~ComputeExecutor() = default;

void ComputeExecutor::post(std::function<void()> task, Kind kind, const void* subject) {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->exiting) return;  // the process is exiting: nobody will see the result
    impl_->tasks.push_back(Impl::Task{std::move(task), kind, subject, impl_->posted++});
  }
  impl_->ready.notify_one();
}

}  // namespace vt
