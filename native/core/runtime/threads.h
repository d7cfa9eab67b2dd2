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

}  // namespace vt
