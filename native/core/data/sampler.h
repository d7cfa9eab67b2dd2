// Which samples an epoch visits, and in which order: the one sampler of every dataset kind. The
// order is a permutation of the split's indices seeded by (seed, epoch) when shuffling, the whole
// epoch's even when resuming mid-epoch, so a run is reproducible and resumable from any batch.
// Data-parallel, each rank visits its shard by torch's DistributedSampler rules: the same
// permutation on every rank, padded (by repeating its start) to a multiple of the world size or
// cut to one (drop_last), rank r taking the positions r, r + world, r + 2 world, ...: a global
// batch of world x B holds what one process with batch world x B would take.
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

  // This sampler as rank `rank` of `world` sees it.
  Sampler shard(int rank, int world, bool drop_last) const {
    Sampler sharded = *this;
    sharded.rank_ = rank;
    sharded.world_ = world;
    sharded.drop_last_ = drop_last;
    return sharded;
  }

  // The samples one epoch visits here (this rank's share).
  size_t size() const {
    const size_t n = indices_.size(), world = static_cast<size_t>(world_);
    return drop_last_ ? n / world : (n + world - 1) / world;
  }
  const std::vector<size_t>& indices() const { return indices_; }

  std::vector<size_t> epoch_order(int64_t epoch) const {
    std::vector<size_t> order = indices_;
    if (shuffle_) {
      std::mt19937_64 rng(mix_seed(seed_, static_cast<uint64_t>(epoch)));
      seeded_shuffle(order, rng);
    }
    if (world_ == 1) return order;
    const size_t total = size() * static_cast<size_t>(world_);
    if (!order.empty()) {
      for (size_t i = order.size(); i < total; ++i) order.push_back(order[i - indices_.size()]);
    }
    order.resize(total);
    std::vector<size_t> mine;
    mine.reserve(size());
    for (size_t i = static_cast<size_t>(rank_); i < total; i += static_cast<size_t>(world_)) mine.push_back(order[i]);
    return mine;
  }

 private:
  std::vector<size_t> indices_;
  bool shuffle_ = false;
  uint64_t seed_ = 0;
  int rank_ = 0, world_ = 1;
  bool drop_last_ = false;
};

}  // namespace vt
