#include <gtest/gtest.h>

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
