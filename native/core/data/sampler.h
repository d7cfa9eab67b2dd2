// Which samples an epoch visits, and in which order: the one sampler of every dataset kind. The
// order is a permutation of the split's indices seeded by (seed, epoch) when shuffling, the whole
// epoch's even when resuming mid-epoch, so a run is reproducible and resumable from any batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "data/random.h"

namespace vt {

class Sampler {
 public:
  Sampler() = default;
  // Visits `indices` (dataset indices of a split), shuffled per epoch or in the given order.
  Sampler(std::vector<size_t> indices, bool shuffle, uint64_t seed) : indices_(std::move(indices)), shuffle_(shuffle), seed_(seed) {}
  // Visits 0 .. count - 1.
  static Sampler over(size_t count, bool shuffle, uint64_t seed) {
    std::vector<size_t> indices(count);
    std::iota(indices.begin(), indices.end(), size_t{0});
    return Sampler(std::move(indices), shuffle, seed);
  }

  size_t size() const { return indices_.size(); }
  const std::vector<size_t>& indices() const { return indices_; }

  std::vector<size_t> epoch_order(int64_t epoch) const {
    std::vector<size_t> order = indices_;
    if (shuffle_) {
      std::mt19937_64 rng(mix_seed(seed_, static_cast<uint64_t>(epoch)));
      seeded_shuffle(order, rng);
    }
    return order;
  }

 private:
  std::vector<size_t> indices_;
  bool shuffle_ = false;
  uint64_t seed_ = 0;
};

}  // namespace vt
