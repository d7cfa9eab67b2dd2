#include <gtest/gtest.h>

#include <cstdlib>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "runtime/executor.h"

namespace {

using vt::ComputeExecutor;

// What the tasks did, in order, from the compute thread.
struct Journal {
  std::mutex mutex;
  std::vector<std::string> entries;
  void add(const std::string& entry) {
    std::lock_guard<std::mutex> lock(mutex);
    entries.push_back(entry);
  }
  std::vector<std::string> get() {
    std::lock_guard<std::mutex> lock(mutex);
    return entries;
  }
};

// Blocks the compute thread until released, so that the test queues tasks behind it first.
struct Gate {
  std::promise<void> opened;
  std::shared_future<void> future{opened.get_future().share()};
  void wait() const { future.wait(); }
  void open() { opened.set_value(); }
};

// Returns when every task posted before has ended: a long task, so that no yield runs it early.
void wait_for(ComputeExecutor& executor) {
  std::promise<void> done;
  executor.post([&] { done.set_value(); }, ComputeExecutor::Kind::Long);
  done.get_future().wait();
}

}  // namespace

TEST(Executor, ShortTasksRunInsideALongTasksYieldInOrder) {
  auto& executor = ComputeExecutor::instance();
  Journal journal;
  Gate posted;
  std::promise<void> long_done;
  executor.post(
      [&] {
        journal.add("long start");
        posted.wait();
        journal.add("yield ran " + std::to_string(executor.run_waiting_short_tasks()));
        journal.add("long end");
        long_done.set_value();
      },
      ComputeExecutor::Kind::Long);
  for (int i = 0; i < 3; ++i) executor.post([&journal, i] { journal.add("short " + std::to_string(i)); });
  posted.open();
  long_done.get_future().wait();
  EXPECT_EQ(journal.get(), (std::vector<std::string>{"long start", "short 0", "short 1", "short 2", "yield ran 3", "long end"}));
}

TEST(Executor, ALongTaskQueuedBehindWaitsForTheFirstToEnd) {
  auto& executor = ComputeExecutor::instance();
  Journal journal;
  Gate posted;
  executor.post(
      [&] {
        posted.wait();
        journal.add("first yields " + std::to_string(executor.run_waiting_short_tasks()));
        journal.add("first end");
      },
      ComputeExecutor::Kind::Long);
  executor.post([&] { journal.add("second"); }, ComputeExecutor::Kind::Long);
  executor.post([&] { journal.add("short"); });
  posted.open();
  wait_for(executor);
  EXPECT_EQ(journal.get(), (std::vector<std::string>{"short", "first yields 1", "first end", "second"}));
}

TEST(Executor, TasksOnTheLongTasksSubjectWaitForItsEnd) {
  auto& executor = ComputeExecutor::instance();
  Journal journal;
  Gate posted;
  const int trained = 0, other = 0, next = 0;
  executor.post(
      [&] {
        posted.wait();
        journal.add("yield ran " + std::to_string(executor.run_waiting_short_tasks()));
      },
      ComputeExecutor::Kind::Long, &trained);
  executor.post([&] { journal.add("same model"); }, ComputeExecutor::Kind::Short, &trained);
  executor.post([&] { journal.add("other model"); }, ComputeExecutor::Kind::Short, &other);
  // A call made after a train() of its model sees that run's result, as without yields.
  executor.post([&] { journal.add("next run"); }, ComputeExecutor::Kind::Long, &next);
  executor.post([&] { journal.add("after next run"); }, ComputeExecutor::Kind::Short, &next);
  executor.post([&] { journal.add("no model"); });
  posted.open();
  wait_for(executor);
  EXPECT_EQ(journal.get(),
            (std::vector<std::string>{"other model", "no model", "yield ran 2", "same model", "next run", "after next run"}));
}

TEST(Executor, AShortTaskPostedWithNothingYieldingRunsAfter) {
  auto& executor = ComputeExecutor::instance();
  Journal journal;
  Gate posted;
  executor.post(
      [&] {
        posted.wait();
        journal.add("long end");
      },
      ComputeExecutor::Kind::Long);
  executor.post([&] {
    // A short task never yields: nothing runs inside it.
    journal.add("short yields " + std::to_string(executor.run_waiting_short_tasks()));
  });
  executor.post([&] { journal.add("last"); });
  posted.open();
  wait_for(executor);
  EXPECT_EQ(journal.get(), (std::vector<std::string>{"long end", "short yields 0", "last"}));
}

TEST(Executor, TasksPostedDuringAYieldWaitForTheNextOne) {
  auto& executor = ComputeExecutor::instance();
  Journal journal;
  Gate posted;
  executor.post(
      [&] {
        posted.wait();
        journal.add("first yield " + std::to_string(executor.run_waiting_short_tasks()));
        journal.add("second yield " + std::to_string(executor.run_waiting_short_tasks()));
      },
      ComputeExecutor::Kind::Long);
  executor.post([&] {
    journal.add("short");
    executor.post([&] { journal.add("posted inside"); });
  });
  posted.open();
  wait_for(executor);
  EXPECT_EQ(journal.get(), (std::vector<std::string>{"short", "first yield 1", "posted inside", "second yield 1"}));
}

TEST(Executor, AThrowingShortTaskDoesNotReachTheLongTask) {
  auto& executor = ComputeExecutor::instance();
  Journal journal;
  Gate posted;
  executor.post(
      [&] {
        posted.wait();
        journal.add("yield ran " + std::to_string(executor.run_waiting_short_tasks()));
      },
      ComputeExecutor::Kind::Long);
  executor.post([] { throw std::runtime_error("reported by nobody"); });
  posted.open();
  wait_for(executor);
  EXPECT_EQ(journal.get(), (std::vector<std::string>{"yield ran 1"}));
}

TEST(Executor, RunWaitingShortTasksOffTheComputeThreadRunsNothing) {
  auto& executor = ComputeExecutor::instance();
  Journal journal;
  Gate posted;
  executor.post([&] { posted.wait(); }, ComputeExecutor::Kind::Long);
  executor.post([&] { journal.add("short"); });
  EXPECT_EQ(executor.run_waiting_short_tasks(), 0u);
  posted.open();
  wait_for(executor);
  EXPECT_EQ(journal.get(), (std::vector<std::string>{"short"}));
}

// Exits the process with 0 when finish_for_exit, called while a long task runs, dropped the queued
// tasks, ran none in the long task's next yield, waited for the long task and refuses new ones.
[[noreturn]] void finish_for_exit_while_yielding() {
  auto& executor = ComputeExecutor::instance();
  Journal journal;
  Gate started, finishing;
  executor.post(
      [&] {
        started.open();
        finishing.wait();
        journal.add("yield ran " + std::to_string(executor.run_waiting_short_tasks()));
      },
      ComputeExecutor::Kind::Long);
  executor.post([&] { journal.add("dropped"); });
  started.wait();
  std::thread exiting([&] { executor.finish_for_exit(); });
  // finish_for_exit has begun once a probe is gone: refused, or dropped with the queue.
  for (;;) {
    auto token = std::make_shared<int>(0);
    std::weak_ptr<int> probe = token;
    executor.post([&journal, token] { journal.add("probe"); });
    token.reset();
    if (probe.expired()) break;
    std::this_thread::yield();
  }
  finishing.open();
  exiting.join();  // returns once the long task has ended
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> refused = token;
  executor.post([token] {});
  token.reset();
  const bool ok = refused.expired() && journal.get() == std::vector<std::string>{"yield ran 0"};
  std::_Exit(ok ? 0 : 1);
}

// finish_for_exit leaves the executor refusing work for good: run in a process of its own.
TEST(ExecutorDeathTest, FinishForExitWhileALongTaskYieldsDropsQueuedTasks) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(finish_for_exit_while_yielding(), ::testing::ExitedWithCode(0), "");
}
