#include "runtime/inference_team.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include <dirent.h>
#include <omp.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include "runtime/threads.h"

namespace vt {

namespace {

std::atomic<int> last_team{0};

double now_seconds() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// A small /proc file into `buffer` (NUL-terminated); false when it cannot be read.
bool read_small_file(const char* path, char* buffer, size_t size) {
  FILE* file = std::fopen(path, "re");
  if (!file) return false;
  size_t n = std::fread(buffer, 1, size - 1, file);
  std::fclose(file);
  buffer[n] = '\0';
  return n > 0;
}

}  // namespace

CpuContention& CpuContention::process() {
  static CpuContention contention;
  return contention;
}

bool CpuContention::active() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return active_;
}

bool CpuContention::waited(const PassTiming& timing) {
  return timing.team > 1 && timing.run_delay_seconds >= 0 && timing.seconds > 0 &&
         timing.run_delay_seconds > kContendedShare * timing.team * timing.seconds;
}

void CpuContention::after_pass(const PassTiming& timing, int full, int other_runnable, int cores) {
  if (full <= 1 || other_runnable < 0) return;
  const bool full_team_fits = cores - other_runnable >= full;
  std::lock_guard<std::mutex> lock(mutex_);
  if (!active_) {
    active_ = waited(timing) && !full_team_fits;
  } else if (full_team_fits) {
    active_ = false;
  }
}

int CpuContention::team(int full, int other_runnable, int cores) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!active_) return full;
  if (other_runnable < 0) return 1;
  return std::clamp(cores - other_runnable, 1, full);
}

int InferenceTeam::choose(const std::vector<int64_t>& shape, int full, CpuContention& contention, int other_runnable, int cores) {
  if (full <= 1 || small(shape)) return 1;
  return contention.team(full, other_runnable, cores);
}

void InferenceTeam::record(const std::vector<int64_t>& shape, int full, const PassTiming& timing) {
  if (full <= 1) return;
  // Passes on a team shrunk by contention count too: one that is small on fewer threads is small.
  ShapeRecord& shape_record = shapes_[shape];
  if (shape_record.small) return;
  // The first pass is not timed; later ones keep the fastest, since other work only adds time.
  if (shape_record.passes++ == 0) return;
  if (shape_record.passes == 2 || timing.seconds < shape_record.fastest_seconds) shape_record.fastest_seconds = timing.seconds;
  if (shape_record.passes == kTimedPasses + 1) shape_record.small = shape_record.fastest_seconds < kSmallPassSeconds;
}

bool InferenceTeam::small(const std::vector<int64_t>& shape) const {
  auto found = shapes_.find(shape);
  return found != shapes_.end() && found->second.small;
}

bool adaptive_threads_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("VISIONTORCH_ADAPTIVE_THREADS");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

int other_runnable_tasks() {
  // "0.52 0.58 0.59 3/645 12345": the fourth field is runnable/total scheduling entities.
  char text[256];
  if (!read_small_file("/proc/loadavg", text, sizeof text)) return -1;
  int runnable = 0;
  if (std::sscanf(text, "%*f %*f %*f %d/", &runnable) != 1 || runnable < 1) return -1;
  // Less this process's own: the JavaScript thread that just queued the pass is often still
  // running, and would hold the team at one thread on an idle machine.
  DIR* tasks = ::opendir("/proc/self/task");
  if (tasks == nullptr) return -1;
  int own = 0;
  while (const dirent* entry = ::readdir(tasks)) {
    if (entry->d_name[0] == '.') continue;
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", entry->d_name);
    // "<tid> (<name>) <state> ...": the name may hold spaces and parentheses, the state follows the last ')'.
    char stat[512];
    if (!read_small_file(path, stat, sizeof stat)) continue;
    const char* close = std::strrchr(stat, ')');
    if (close != nullptr && close[1] == ' ' && close[2] == 'R') ++own;
  }
  ::closedir(tasks);
  return std::max(0, runnable - std::max(own, 1));
}

int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

const std::vector<pid_t>& team_thread_ids(int team) {
  // libgomp keeps a pool of worker threads per calling thread: a team of one size is made of
  // the same threads from call to call.
  thread_local std::map<int, std::vector<pid_t>> by_team;
  auto found = by_team.find(team);
  if (found != by_team.end()) return found->second;
  std::vector<pid_t> ids(team, 0);
  // One index per thread: ATen gives each of the `team` threads one chunk of size 1.
  at::parallel_for(0, team, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) ids[at::get_thread_num()] = static_cast<pid_t>(::syscall(SYS_gettid));
  });
  return by_team.emplace(team, std::move(ids)).first->second;
}

double run_delay_seconds(const std::vector<pid_t>& ids) {
  double total = 0;
  for (pid_t id : ids) {
    if (id == 0) return -1;
    // "<ns on a CPU> <ns waiting on a run queue> <timeslices>"
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", static_cast<int>(id));
    char text[128];
    unsigned long long on_cpu = 0, waiting = 0;
    if (!read_small_file(path, text, sizeof text) || std::sscanf(text, "%llu %llu", &on_cpu, &waiting) != 2) return -1;
    total += static_cast<double>(waiting) * 1e-9;
  }
  return total;
}

int last_inference_team() { return last_team.load(); }

InferencePass::InferencePass(InferenceTeam& record, std::vector<int64_t> shape)
    : record_(record),
      shape_(std::move(shape)),
      full_(compute_threads()),
      team_(full_),
      adaptive_(adaptive_threads_enabled() && full_ > 1) {
  if (adaptive_) {
    // Count the runnable threads only while contention is active: the common path stays cheap.
    CpuContention& contention = CpuContention::process();
    const bool contended = contention.active();
    team_ = record_.choose(shape_, full_, contention, contended ? other_runnable_tasks() : 0, contended ? usable_cpus() : full_);
    // omp_set_num_threads, not at::set_num_threads: that also rebuilds libtorch's pthreadpool.
    if (team_ != full_) omp_set_num_threads(team_);
    if (team_ > 1) run_delay_before_ = run_delay_seconds(team_thread_ids(team_));
  }
  last_team = team_;
  start_ = now_seconds();
}

void InferencePass::finish() {
  if (!adaptive_) return;
  PassTiming timing;
  timing.team = team_;
  timing.seconds = now_seconds() - start_;
  if (team_ > 1 && run_delay_before_ >= 0) {
    const double after = run_delay_seconds(team_thread_ids(team_));
    if (after >= 0) timing.run_delay_seconds = after - run_delay_before_;
  }
  const bool small = record_.small(shape_);
  record_.record(shape_, full_, timing);
  // Small passes leave contention alone: counting runnable threads would cost a fifth of one.
  CpuContention& contention = CpuContention::process();
  if (!small && (contention.active() || CpuContention::waited(timing))) {
    contention.after_pass(timing, full_, other_runnable_tasks(), usable_cpus());
  }
}

InferencePass::~InferencePass() {
  if (team_ != full_) omp_set_num_threads(full_);
}

}  // namespace vt
