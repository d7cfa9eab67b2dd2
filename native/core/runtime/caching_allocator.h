// A caching allocator for libtorch's CPU tensors. A training step or a batch of inference frees
// and allocates the same large buffers (activations, gradients) over and over; through malloc
// each comes back as fresh pages from the kernel, and touching them costs a page fault (and a
// page of zeroes) every 4 KiB: 5-10% of a ViT or ResNet step. Freed blocks of 256 KiB and more
// are kept for the next allocation of the same rounded size, or up to a quarter smaller,
// instead, up to a cap.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vt {

// Makes the caching allocator libtorch's CPU allocator (once; later calls do nothing); with
// VISIONTORCH_CACHE_CPU_MEMORY=0 in the environment it caches nothing. It is also where a
// SizingPass counts allocations instead of making them. Tensors allocated before keep their own
// deleters.
void install_caching_cpu_allocator();

// Returns every cached (free) block to the system.
void release_cached_cpu_memory();

struct CachedCpuMemory {
  size_t cached_bytes = 0;  // free blocks held for reuse
  size_t cap_bytes = 0;     // most it holds
  uint64_t reused = 0;      // allocations served from the cache
  uint64_t fresh = 0;       // cacheable allocations that went to the system
};
CachedCpuMemory cached_cpu_memory();

}  // namespace vt
