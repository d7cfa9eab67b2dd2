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

TEST(CachingAllocator, AFreeBlockUpToAQuarterLargerServesARequest) {
  vt::install_caching_cpu_allocator();
  vt::release_cached_cpu_memory();
  void* block = nullptr;
  { block = torch::empty({1024, 1024}).data_ptr(); }  // 4 MiB, now cached
  {
    auto too_small = torch::empty({768, 1024});  // 3 MiB: the 4 MiB block is a third larger
    EXPECT_NE(too_small.data_ptr(), block);
  }
  vt::release_cached_cpu_memory();
  { block = torch::empty({1024, 1024}).data_ptr(); }
  const auto before = vt::cached_cpu_memory();
  {
    auto slightly_smaller = torch::empty({896, 1024});  // 3.5 MiB fits the 4 MiB block
    EXPECT_EQ(slightly_smaller.data_ptr(), block);
    EXPECT_EQ(vt::cached_cpu_memory().reused, before.reused + 1);
    EXPECT_EQ(vt::cached_cpu_memory().cached_bytes, before.cached_bytes - (size_t{4} << 20));
  }
  // It comes back as the 4 MiB block it is: a full 4 MiB request reuses it.
  EXPECT_EQ(vt::cached_cpu_memory().cached_bytes, before.cached_bytes);
  EXPECT_EQ(torch::empty({1024, 1024}).data_ptr(), block);
  vt::release_cached_cpu_memory();
}

}  // namespace
