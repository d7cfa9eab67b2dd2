#include "runtime/op_profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <utility>

#include <ATen/record_function.h>

#include "common/error.h"

namespace vt {

namespace {

using Clock = std::chrono::steady_clock;

struct OpenRecord {
  Clock::time_point start;
  double child_seconds = 0;
  bool is_phase = false;
};

// One profiled thread's state: the callback runs on that thread only, so it takes no lock.
struct ThreadProfile {
  at::CallbackHandle handle = 0;
  Clock::time_point started;
  std::vector<OpenRecord> open;
  std::vector<std::string> phases;
  std::map<std::pair<std::string, std::string>, OpTiming> totals;
};

thread_local std::unique_ptr<ThreadProfile> this_thread_profile;
std::atomic<bool> running{false};

// The start callback returns no context: records on one thread nest, so a stack pairs each end
// with its start.
std::unique_ptr<at::ObserverContext> on_record_start(const at::RecordFunction& record) {
  ThreadProfile* profile = this_thread_profile.get();
  if (profile == nullptr) return nullptr;
  const bool is_phase = record.scope() == at::RecordScope::USER_SCOPE && profile->phases.empty();
  if (is_phase) profile->phases.emplace_back(record.name());
  profile->open.push_back({Clock::now(), 0, is_phase});
  return nullptr;
}

void on_record_end(const at::RecordFunction& record, at::ObserverContext*) {
  ThreadProfile* profile = this_thread_profile.get();
  // A record that started before the profile did ends with an empty stack.
  if (profile == nullptr || profile->open.empty()) return;
  OpenRecord finished = profile->open.back();
  profile->open.pop_back();
  const double total = std::chrono::duration<double>(Clock::now() - finished.start).count();
  if (!profile->open.empty()) profile->open.back().child_seconds += total;
  const std::string phase = profile->phases.empty() ? std::string() : profile->phases.front();
  if (finished.is_phase) profile->phases.pop_back();
  OpTiming& timing = profile->totals[{phase, record.name()}];
  if (timing.calls == 0) timing.phase = phase, timing.name = record.name();
  timing.calls += 1;
  timing.self_seconds += std::max(0.0, total - finished.child_seconds);
  timing.total_seconds += total;
}

}  // namespace

void start_op_profile() {
  VT_CHECK(!running.exchange(true), "an operator profile is already running; stop it before starting another");
  this_thread_profile = std::make_unique<ThreadProfile>();
  ThreadProfile* profile = this_thread_profile.get();
  profile->started = Clock::now();
  profile->handle =
      at::addThreadLocalCallback(at::RecordFunctionCallback(on_record_start, on_record_end)
                                     .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION, at::RecordScope::USER_SCOPE}));
}

OpProfile stop_op_profile() {
  VT_CHECK(this_thread_profile != nullptr, "no operator profile is running on this thread");
  std::unique_ptr<ThreadProfile> profile = std::move(this_thread_profile);
  at::removeCallback(profile->handle);
  running = false;
  OpProfile result;
  result.wall_seconds = std::chrono::duration<double>(Clock::now() - profile->started).count();
  for (auto& [key, timing] : profile->totals) result.ops.push_back(std::move(timing));
  std::sort(result.ops.begin(), result.ops.end(), [](const OpTiming& a, const OpTiming& b) { return a.self_seconds > b.self_seconds; });
  return result;
}

bool op_profile_running() { return running; }

}  // namespace vt
