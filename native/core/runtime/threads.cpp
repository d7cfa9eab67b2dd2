#include "runtime/threads.h"

#include <atomic>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include <dlfcn.h>
#include <omp.h>

#include <ATen/Parallel.h>

namespace vt {

namespace {

// Counts distinct (physical id, core id) pairs in /proc/cpuinfo; 0 when they are not listed.
int physical_cores_from_cpuinfo() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  if (!cpuinfo) return 0;
  std::set<std::pair<int, int>> cores;
  int physical_id = 0;
  std::string line;
  while (std::getline(cpuinfo, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos || colon == 0) continue;
    std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    std::string value = line.substr(colon + 1);
    try {
      if (key == "physical id") physical_id = std::stoi(value);
      if (key == "core id") cores.emplace(physical_id, std::stoi(value));
    } catch (const std::exception&) {
      return 0;
    }
  }
  return static_cast<int>(cores.size());
}

std::atomic<int> configured_threads{0};

}  // namespace

int default_compute_threads() {
  static const int cores = [] {
    int logical = static_cast<int>(std::thread::hardware_concurrency());
    int physical = physical_cores_from_cpuinfo();
    // In VMs every vCPU often reports core id 0: trust the physical count only when plausible.
    if (physical > 1 && physical <= logical) return physical;
    return logical > 0 ? logical : 1;
  }();
  return cores;
}

// libtorch parallelises over OpenMP and calls BLAS from inside its parallel regions (batched
// matmuls run one matrix per thread); a BLAS with threads of its own then runs threads x threads
// on the cores, several times slower. Parallelism comes from OpenMP alone: BLAS runs on one
// thread. Looked up at run time because the BLAS behind libtorch may not be OpenBLAS.
void make_blas_single_threaded() {
  using SetThreads = void (*)(int);
  static const auto set_openblas_threads = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set_openblas_threads) set_openblas_threads(1);
}

void set_compute_threads(int n) {
  configured_threads = n > 0 ? n : default_compute_threads();
  make_blas_single_threaded();
  apply_compute_threads();
}

int compute_threads() {
  int n = configured_threads.load();
  return n > 0 ? n : default_compute_threads();
}

void apply_compute_threads() {
  int threads = compute_threads();
  if (at::get_num_threads() != threads) at::set_num_threads(threads);
}

// at::get_num_threads() first: libtorch sets each thread's OpenMP count on its first parallel
// operator, which would undo the 1 set here. omp_set_num_threads, not at::set_num_threads: it
// changes this thread's count alone.
SingleThreadScope::SingleThreadScope() : previous_(at::get_num_threads()) { omp_set_num_threads(1); }
SingleThreadScope::~SingleThreadScope() { omp_set_num_threads(previous_); }

}  // namespace vt
