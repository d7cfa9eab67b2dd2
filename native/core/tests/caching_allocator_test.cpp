// The caching CPU allocator: a freed large block serves the next allocation of its size, small
// ones go straight back to the system, and release hands the cache back.
#include <gtest/gtest.h>

#include "runtime/caching_allocator.h"

namespace {

TEST(CachingAllocator, ReusesLargeBlocksAndReleasesThem) {
  vt::install_caching_cpu_allocator();
  vt::release_cached_cpu_memory();
  const auto before = vt::cached_cpu_memory();
  EXPECT_GT(before.cap_bytes, 0u);
  void* first_data = nullptr;
  {
    auto first = torch::ones({1024, 1024});  // 4 MiB
    first_data = first.data_ptr();
  }
  EXPECT_GE(vt::cached_cpu_memory().cached_bytes, size_t{4} << 20);
  auto second = torch::empty({1024, 1024});
  EXPECT_EQ(second.data_ptr(), first_data);
  EXPECT_EQ(vt::cached_cpu_memory().reused, before.reused + 1);
  // Contents are whatever the last owner left: empty() promises nothing, zeros() still zeroes.
  EXPECT_EQ(torch::zeros({1024, 1024}).sum().item<double>(), 0.0);

  { auto small = torch::ones({16, 16}); }
  const auto after_small = vt::cached_cpu_memory();
  EXPECT_EQ(after_small.reused, before.reused + 1);

  vt::release_cached_cpu_memory();
  EXPECT_EQ(vt::cached_cpu_memory().cached_bytes, 0u);
  second = torch::Tensor();
  // The block freed after the release is cached again, then released again.
  EXPECT_GT(vt::cached_cpu_memory().cached_bytes, 0u);
  vt::release_cached_cpu_memory();
  EXPECT_EQ(vt::cached_cpu_memory().cached_bytes, 0u);
}

}  // namespace
