#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <thread>

#include <ATen/Parallel.h>

#include "runtime/threads.h"

TEST(Threads, DefaultIsAtLeastOneAndIsApplied) {
  EXPECT_GE(vt::default_compute_threads(), 1);
  vt::set_compute_threads(0);
  EXPECT_EQ(vt::compute_threads(), vt::default_compute_threads());
  EXPECT_EQ(at::get_num_threads(), vt::default_compute_threads());
}

TEST(Threads, ConfiguredCountReachesOtherThreads) {
  vt::set_compute_threads(1);
  int seen = 0;
  std::thread worker([&] {
    vt::apply_compute_threads();
    seen = at::get_num_threads();
  });
  worker.join();
  EXPECT_EQ(seen, 1);
  vt::set_compute_threads(0);
}

TEST(Threads, SingleThreadScopeKeepsOperatorsOnTheCallingThread) {
  vt::set_compute_threads(2);
  std::thread other([] {
    vt::apply_compute_threads();
    std::set<std::thread::id> ran_on;
    std::mutex mutex;
    {
      vt::SingleThreadScope scope;
      EXPECT_EQ(at::get_num_threads(), 1);
      at::parallel_for(0, 1 << 20, 1, [&](int64_t, int64_t) {
        std::lock_guard<std::mutex> lock(mutex);
        ran_on.insert(std::this_thread::get_id());
      });
    }
    EXPECT_EQ(ran_on, std::set<std::thread::id>{std::this_thread::get_id()});
    EXPECT_EQ(at::get_num_threads(), 2);  // the thread's own count again
  });
  other.join();
  vt::set_compute_threads(0);
}
