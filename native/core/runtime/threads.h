// Compute threads are set on purpose: libtorch's default intra-op count can come up as 1.
#pragma once

namespace vt {

// Physical cores where they can be told apart from hyper-threads, else logical CPUs.
int default_compute_threads();

// Sets the intra-op thread count every later computation uses (n <= 0: the default), and
// keeps BLAS single-threaded underneath (see threads.cpp).
void set_compute_threads(int n);
int compute_threads();

// Applies the configured count on the calling thread. OpenMP keeps its team size per thread,
// so every native job calls this first on whichever worker thread runs it.
void apply_compute_threads();

// Keeps libtorch's operators on the calling thread alone while it lives: for work on a thread
// other than the compute thread (JavaScript's). A second OpenMP team beside the compute
// thread's makes libgomp count more threads than cores, and from then on it cuts every team's
// spinning at its barriers short: after one SegFormer output was copied on the JavaScript
// thread, Swin-T's batch-1 passes ran 1.5x slower for the rest of the process. Not around
// apply_compute_threads(): finding 1, it would restore the count through at::set_num_threads,
// which rebuilds libtorch's thread pool on every call.
class SingleThreadScope {
 public:
  SingleThreadScope();
  ~SingleThreadScope();
  SingleThreadScope(const SingleThreadScope&) = delete;
  SingleThreadScope& operator=(const SingleThreadScope&) = delete;

 private:
  int previous_;
};

}  // namespace vt
