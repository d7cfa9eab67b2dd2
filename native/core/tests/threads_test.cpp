#include <gtest/gtest.h>

#include "runtime/threads.h"

TEST(Threads, DefaultIsAtLeastOneAndIsApplied) {
  EXPECT_GE(vt::default_compute_threads(), 1);
  vt::set_compute_threads(0);
  EXPECT_EQ(vt::compute_threads(), vt::default_compute_threads());
  vt::set_compute_threads(1);
  EXPECT_EQ(vt::compute_threads(), 1);
}
