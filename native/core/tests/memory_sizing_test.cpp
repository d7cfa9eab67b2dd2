// A SizingPass counts what a construction would allocate without the memory, and the memory a
// process may still take honours the limits put on it.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <fstream>
#include <string>

#include "common/error.h"
#include "runtime/memory_sizing.h"
#include "test_util.h"

namespace {

size_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

TEST(SizingPass, CountsTensorsWithoutTheirMemory) {
  const size_t before = resident_bytes();
  constexpr size_t kGiB = size_t{1} << 30, kMiB = size_t{1} << 20;
  vt::SizingPass sizing(2 * kGiB);
  {
    auto weight = torch::empty({1 << 18, 1 << 12});  // 4 GiB, left unwritten as a deferred layer's
    { auto temporary = torch::empty({1 << 10, 1 << 10}); }
    auto bias = torch::zeros({1 << 12});  // written
    EXPECT_EQ(bias.sum().item<float>(), 0.0f);
  }
  EXPECT_EQ(sizing.peak_bytes(), 4 * kGiB + 4 * kMiB);  // the weight and the temporary at once
  EXPECT_TRUE(sizing.limit_reached());
  EXPECT_TRUE(sizing.complete());
  EXPECT_LT(resident_bytes(), before + 256 * kMiB);
}

TEST(SizingPass, StopsPastFourTimesItsLimitAndAllocatesForRealOnceGone) {
  constexpr size_t kMiB = size_t{1} << 20;
  std::vector<torch::Tensor> kept;
  {
    vt::SizingPass sizing(kMiB);
    vt_test::expect_error(
        [&] {
          for (int i = 0; i < 16; ++i) kept.push_back(torch::empty({static_cast<int64_t>(kMiB / 4)}));
        },
        {"sizing stopped"});
    EXPECT_FALSE(sizing.complete());
    EXPECT_TRUE(sizing.limit_reached());
    EXPECT_GT(sizing.peak_bytes(), 4 * kMiB);
    kept.clear();
  }
  auto real = torch::ones({4});
  EXPECT_EQ(real.sum().item<float>(), 4.0f);
}

TEST(AvailableMemory, HonoursTheConfiguredLimitAndNamesABadOne) {
  ::setenv("VISIONTORCH_MEMORY_LIMIT", "512M", 1);
  EXPECT_LE(vt::available_memory(), size_t{512} << 20);
  ::setenv("VISIONTORCH_MEMORY_LIMIT", "1.5G", 1);
  EXPECT_LE(vt::available_memory(), size_t{3} << 29);
  ::setenv("VISIONTORCH_MEMORY_LIMIT", "lots", 1);
  vt_test::expect_error([] { vt::available_memory(); }, {"VISIONTORCH_MEMORY_LIMIT", "\"lots\""});
  ::unsetenv("VISIONTORCH_MEMORY_LIMIT");
  EXPECT_GT(vt::available_memory(), size_t{0});
  EXPECT_EQ(vt::format_bytes(size_t{3} << 29), "1.5 GiB");
}

}  // namespace
