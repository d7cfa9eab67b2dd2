// Compute threads are set on purpose: libtorch's default intra-op count can come up as 1.
#pragma once

namespace vt {

// Physical cores where they can be told apart from hyper-threads, else logical CPUs.
int default_compute_threads();

// Sets libtorch's intra-op threads (n <= 0: default_compute_threads()). Safe to call repeatedly.
void set_compute_threads(int n);
int compute_threads();

// Called once before the first computation; idempotent.
void ensure_runtime_initialized();

}  // namespace vt
