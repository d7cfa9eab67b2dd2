#include "runtime/memory_sizing.h"

#include <malloc.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

#include "common/error.h"
#include "runtime/caching_allocator.h"

namespace vt {

namespace {

constexpr size_t kUnlimited = std::numeric_limits<size_t>::max();

// "MemAvailable:   123456 kB" and the like, in bytes; kUnlimited when absent.
size_t proc_field_bytes(const char* file, const std::string& field) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size(), field) != 0) continue;
    std::istringstream values(line.substr(field.size()));
    unsigned long long kilobytes = 0;
    if (values >> kilobytes) return static_cast<size_t>(kilobytes) * 1024;
  }
  return kUnlimited;
}

// A number of bytes in a file ("max" or unreadable: kUnlimited).
size_t file_bytes(const char* path) {
  std::ifstream in(path);
  unsigned long long value = 0;
  if (!(in >> value)) return kUnlimited;
  return static_cast<size_t>(value);
}

size_t room(size_t limit, size_t used) {
  if (limit == kUnlimited) return kUnlimited;
  return used == kUnlimited || used >= limit ? 0 : limit - used;
}

size_t configured_limit() {
  const char* setting = std::getenv("VISIONTORCH_MEMORY_LIMIT");
  if (setting == nullptr || *setting == '\0') return kUnlimited;
  const std::string text(setting);
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  std::string suffix(end);
  double scale = 1;
  if (suffix == "K" || suffix == "k" || suffix == "KiB") scale = 1024.0;
  if (suffix == "M" || suffix == "MiB") scale = 1024.0 * 1024;
  if (suffix == "G" || suffix == "GiB") scale = 1024.0 * 1024 * 1024;
  const bool known_suffix = suffix.empty() || scale != 1;
  if (end == text.c_str() || !known_suffix || !std::isfinite(value) || value <= 0 || value * scale >= 1e19) {
    fail_with(ErrorCode::Config, "VISIONTORCH_MEMORY_LIMIT: expected a size in bytes, or with a K, M or G suffix, got \"", text, "\"");
  }
  return static_cast<size_t>(value * scale);
}

}  // namespace

size_t available_memory() {
  size_t available = proc_field_bytes("/proc/meminfo", "MemAvailable:");
  available = std::min(available, room(file_bytes("/sys/fs/cgroup/memory.max"), file_bytes("/sys/fs/cgroup/memory.current")));
  available = std::min(available, room(file_bytes("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                                       file_bytes("/sys/fs/cgroup/memory/memory.usage_in_bytes")));
  struct rlimit address_space {};
  if (::getrlimit(RLIMIT_AS, &address_space) == 0 && address_space.rlim_cur != RLIM_INFINITY) {
    available = std::min(available, room(static_cast<size_t>(address_space.rlim_cur), proc_field_bytes("/proc/self/status", "VmSize:")));
  }
  return std::min(available, configured_limit());
}

std::string format_bytes(size_t bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 5) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return text;
}

// Bytes the C heap holds in use, over all arenas: the module objects a construction makes
// (names, containers, tensor headers) are real memory even when their tensors are counted.
size_t heap_in_use() {
  const struct mallinfo2 info = ::mallinfo2();
  return info.uordblks + info.hblkhd;
}

struct SizingPass::State {
  size_t limit = 0;
  size_t live = 0;           // counted tensor bytes alive now
  size_t peak = 0;           // the most of live + heap growth at once
  size_t heap_at_start = 0;  // heap_in_use() when the pass began
  size_t heap_growth = 0;    // last sampled
  size_t allocations = 0;
  bool stopped = false;
  // Scratch mappings, the largest last; unmapped once the last counted tensor is gone.
  std::vector<std::pair<void*, size_t>> mappings;
  ~State() {
    for (const auto& [data, size] : mappings) ::munmap(data, size);
  }
};

namespace {

thread_local std::shared_ptr<SizingPass::State> active_sizing;

// What a counted tensor's deleter gets: its size, and the pass's state kept alive.
struct SizedAllocation {
  std::shared_ptr<SizingPass::State> state;
  size_t bytes;
};

void release_sized(void* context) {
  auto* allocation = static_cast<SizedAllocation*>(context);
  allocation->state->live -= allocation->bytes;
  delete allocation;
}

}  // namespace

SizingPass::SizingPass(size_t limit) : state_(std::make_shared<State>()), outer_(active_sizing) {
  install_caching_cpu_allocator();  // where allocations are counted
  state_->limit = limit;
  state_->heap_at_start = heap_in_use();
  active_sizing = state_;
}

SizingPass::~SizingPass() { active_sizing = outer_; }

size_t SizingPass::peak_bytes() const { return state_->peak; }
bool SizingPass::limit_reached() const { return state_->peak > state_->limit; }
bool SizingPass::complete() const { return !state_->stopped; }

namespace detail {

c10::DataPtr sized_allocation(size_t bytes, bool& sized) {
  SizingPass::State* state = active_sizing.get();
  sized = state != nullptr && bytes > 0;
  if (!sized) return {};
  state->live += bytes;
  if (++state->allocations % 64 == 0) {
    const size_t heap = heap_in_use();
    state->heap_growth = heap > state->heap_at_start ? heap - state->heap_at_start : 0;
  }
  state->peak = std::max(state->peak, state->live + state->heap_growth);
  // Counting costs no memory, so it goes on to four times the limit for a truer estimate; the
  // heap it grows is real, so it never goes on past half the limit of that.
  if (state->peak / 4 > state->limit || state->heap_growth > state->limit / 2) {
    state->stopped = true;
    state->peak = std::max(state->peak, state->limit + 1);
    state->live -= bytes;
    fail_with(ErrorCode::OutOfMemory, "sizing stopped past ", format_bytes(state->peak));
  }
  if (state->mappings.empty() || state->mappings.back().second < bytes) {
    // Reserved, not committed: only the pages a constructor writes take memory.
    const size_t size = std::max(bytes, state->mappings.empty() ? size_t{1} << 20 : state->mappings.back().second * 2);
    void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (data == MAP_FAILED) {
      state->stopped = true;  // not even the address space for it
      state->peak = std::max(state->peak, state->limit + 1);
      state->live -= bytes;
      fail_with(ErrorCode::OutOfMemory, "sizing stopped: no address space for ", format_bytes(bytes));
    }
    state->mappings.emplace_back(data, size);
  }
  auto* allocation = new SizedAllocation{active_sizing, bytes};
  return {state->mappings.back().first, allocation, &release_sized, c10::Device(c10::DeviceType::CPU)};
}

}  // namespace detail

}  // namespace vt
