// How much memory a model would take, found before it takes any. A config.json may ask for
// 100,000 layers or ten million classes; built as asked, the allocations run the process out of
// memory, where libtorch's failure (its backtrace allocates) or a destructor that allocates
// while unwinding ends the process. Instead the model is first built under a SizingPass, which
// counts every CPU allocation of its thread without making it, and is refused with the estimate
// when that exceeds available_memory().
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include <c10/core/Allocator.h>

namespace vt {

// The memory this process may still take, in bytes: the least of the system's MemAvailable, the
// room its cgroup's limit leaves, and the room its address-space limit (ulimit -v) leaves;
// VISIONTORCH_MEMORY_LIMIT (bytes, or with a K, M or G suffix) caps it further. Throws a
// Config error naming that variable when it is not a size.
size_t available_memory();

// "3.2 GiB", "512 MiB".
std::string format_bytes(size_t bytes);

// While one lives on a thread, libtorch's CPU allocations on that thread are counted and not
// made: every tensor points into one scratch mapping that is committed only where written (the
// few values a constructor writes). The C heap's growth (module objects, tensor headers) is
// real, and counted with them. limit_reached() says whether the total ever passed `limit`; past
// four times the limit, or once the heap alone grew by half of it, allocations throw, so that a
// model far too large is not counted to its end (complete() is then false and peak_bytes() a
// lower bound).
class SizingPass {
 public:
  explicit SizingPass(size_t limit);
  ~SizingPass();
  SizingPass(const SizingPass&) = delete;
  SizingPass& operator=(const SizingPass&) = delete;

  size_t peak_bytes() const;  // the most that was live at once
  bool limit_reached() const;
  bool complete() const;  // counted to the end, not stopped

  struct State;

 private:
  std::shared_ptr<State> state_;
  std::shared_ptr<State> outer_;
};

namespace detail {
// The allocation a SizingPass on this thread makes instead of a real one (`sized` false, and an
// empty DataPtr, when none is active). Called by the CPU allocator.
c10::DataPtr sized_allocation(size_t bytes, bool& sized);
}  // namespace detail

}  // namespace vt
