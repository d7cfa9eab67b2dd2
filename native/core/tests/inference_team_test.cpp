#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "runtime/inference_team.h"

namespace {

using vt::CpuContention;
using vt::InferenceTeam;
using vt::PassTiming;

PassTiming pass(int team, double seconds, double run_delay_seconds = 0) { return {team, seconds, run_delay_seconds}; }

const std::vector<int64_t> kShape{1, 3, 32, 32};

TEST(InferenceTeam, SmallPassesMoveToOneThreadAfterTheTimedPasses) {
  CpuContention contention;
  InferenceTeam team;
  // The first pass (packing, allocator) is slow and not counted.
  team.record(kShape, 2, pass(2, 0.050));
  for (int i = 0; i < InferenceTeam::kTimedPasses; ++i) {
    EXPECT_EQ(team.choose(kShape, 2, contention, 0, 2), 2) << "decided before every timed pass ran";
    team.record(kShape, 2, pass(2, 0.0004));
  }
  EXPECT_TRUE(team.small(kShape));
  EXPECT_EQ(team.choose(kShape, 2, contention, 0, 2), 1);
  // Another shape of the same model is timed on its own.
  EXPECT_EQ(team.choose({8, 3, 32, 32}, 2, contention, 0, 2), 2);
}

TEST(InferenceTeam, LargePassesKeepTheFullTeam) {
  CpuContention contention;
  InferenceTeam team;
  for (int i = 0; i < InferenceTeam::kTimedPasses + 3; ++i) team.record(kShape, 4, pass(4, 0.120));
  EXPECT_FALSE(team.small(kShape));
  EXPECT_EQ(team.choose(kShape, 4, contention, 0, 4), 4);
}

TEST(InferenceTeam, TheFastestTimedPassDecides) {
  CpuContention contention;
  InferenceTeam team;
  team.record(kShape, 2, pass(2, 0.050));
  team.record(kShape, 2, pass(2, 0.030));  // slowed by other work
  team.record(kShape, 2, pass(2, 0.0005));
  team.record(kShape, 2, pass(2, 0.020));
  EXPECT_TRUE(team.small(kShape));
}

TEST(InferenceTeam, PassesOnATeamShrunkByContentionCount) {
  CpuContention contention;
  InferenceTeam team;
  for (int i = 0; i < InferenceTeam::kTimedPasses + 1; ++i) team.record(kShape, 2, pass(1, 0.0003));
  EXPECT_TRUE(team.small(kShape));
}

TEST(InferenceTeam, OneConfiguredThreadIsAlwaysOne) {
  CpuContention contention;
  InferenceTeam team;
  EXPECT_EQ(team.choose(kShape, 1, contention, 0, 1), 1);
}

TEST(CpuContention, WaitsAboveTheShareWithCoresStillTakenAtTheEndStartContention) {
  CpuContention contention;
  // 2 threads x 100 ms = 200 thread-ms; 10 ms of waiting is 5%, under the share.
  contention.after_pass(pass(2, 0.100, 0.010), 2, 1, 2);
  EXPECT_FALSE(contention.active());
  // 50 ms is 25%, but nothing else runs as the pass ends: a competitor that spun at its start.
  contention.after_pass(pass(2, 0.100, 0.050), 2, 0, 2);
  EXPECT_FALSE(contention.active());
  // 25%, and another process still holds a core.
  contention.after_pass(pass(2, 0.100, 0.050), 2, 1, 2);
  EXPECT_TRUE(contention.active());
}

TEST(CpuContention, SingleThreadPassesAndUnknownCountsStartNothing) {
  CpuContention contention;
  contention.after_pass(pass(1, 0.100, 0.090), 2, 1, 2);
  contention.after_pass(pass(2, 0.100, -1), 2, 1, 2);
  contention.after_pass(pass(2, 0.100, 0.050), 2, -1, 2);
  EXPECT_FALSE(contention.active());
}

TEST(CpuContention, TheTeamFitsTheFreeCoresUntilAPassEndsWithTheFullTeamsCoresFree) {
  CpuContention contention;
  EXPECT_EQ(contention.team(4, 3, 4), 4) << "not contended: the runnable count does not matter";
  contention.after_pass(pass(4, 0.100, 0.200), 4, 3, 4);
  ASSERT_TRUE(contention.active());
  EXPECT_EQ(contention.team(4, 3, 4), 1);
  EXPECT_EQ(contention.team(4, 6, 4), 1) << "never fewer than one thread";
  EXPECT_EQ(contention.team(4, 2, 4), 2);
  EXPECT_EQ(contention.team(4, -1, 4), 1) << "an unknown count keeps one thread";
  EXPECT_EQ(contention.team(4, 0, 4), 4) << "free cores at a pass's start give it the full team";
  EXPECT_TRUE(contention.active());
  contention.after_pass(pass(2, 0.100), 4, 1, 4);
  EXPECT_TRUE(contention.active()) << "a core still taken as the pass ends";
  contention.after_pass(pass(1, 0.100), 4, 0, 4);
  EXPECT_FALSE(contention.active()) << "the full team fits as a pass ends";
}

TEST(InferenceTeam, ContentionLowersTheTeamOfLargePasses) {
  CpuContention contention;
  InferenceTeam team;
  contention.after_pass(pass(2, 0.200, 0.100), 2, 1, 2);
  EXPECT_EQ(team.choose(kShape, 2, contention, 1, 2), 1);
  EXPECT_EQ(team.choose(kShape, 2, contention, 0, 2), 2);
}

TEST(TeamThreads, IdsAreTheTeamsOwnAndTheirRunDelayReads) {
  const int team = 2;
  const int previous = at::get_num_threads();
  at::set_num_threads(team);
  const std::vector<pid_t>& ids = vt::team_thread_ids(team);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], static_cast<pid_t>(::syscall(SYS_gettid))) << "index 0 is the calling thread";
  EXPECT_NE(ids[1], 0);
  EXPECT_NE(ids[1], ids[0]);
  EXPECT_GE(vt::run_delay_seconds(ids), 0);
  EXPECT_EQ(vt::run_delay_seconds({0}), -1);
  EXPECT_GE(vt::other_runnable_tasks(), 0);
  EXPECT_GE(vt::usable_cpus(), 1);
  at::set_num_threads(previous);
}

}  // namespace
