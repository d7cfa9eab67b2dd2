// The processes that train one model together, data-parallel, as the code under the trainer sees
// them: a rank among `size()`, and the few collectives that losses, batch statistics and
// evaluation metrics need. native/core/distributed implements it on a torch.distributed process
// group; a single process has none (nullptr), and everything then computes alone.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace vt {

class ReplicaGroup {
 public:
  virtual ~ReplicaGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Element-wise sum over the ranks, in place, on every rank.
  virtual void all_reduce_sum(torch::Tensor& tensor) = 0;
  // Every rank's `tensor` (same shape and dtype on each), by rank.
  virtual std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor) = 0;
  // `tensor` of rank `root`, on every rank, in place.
  virtual void broadcast(torch::Tensor& tensor, int root) = 0;

  // Sums of float64 values over the ranks (counts, loss sums), in place.
  void sum(std::vector<double>& values) {
    if (values.empty()) return;
    auto tensor = torch::tensor(values, torch::kFloat64);
    all_reduce_sum(tensor);
    auto sums = tensor.accessor<double, 1>();
    for (size_t i = 0; i < values.size(); ++i) values[i] = sums[static_cast<int64_t>(i)];
  }

  // Every rank's bytes, by rank (lengths may differ).
  std::vector<std::string> gather_bytes(const std::string& bytes) {
    auto lengths = all_gather(torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kInt64));
    int64_t longest = 0;
    for (const auto& length : lengths) longest = std::max(longest, length.item<int64_t>());
    auto padded = torch::zeros({std::max<int64_t>(longest, 1)}, torch::kUInt8);
    std::memcpy(padded.data_ptr<uint8_t>(), bytes.data(), bytes.size());
    auto gathered = all_gather(padded);
    std::vector<std::string> result;
    for (size_t r = 0; r < gathered.size(); ++r) {
      const auto* data = reinterpret_cast<const char*>(gathered[r].data_ptr<uint8_t>());
      result.emplace_back(data, static_cast<size_t>(lengths[r].item<int64_t>()));
    }
    return result;
  }
};

// The group a training step runs in, for the code deep inside a model's forward pass that needs
// it (losses normalised over the global batch, synchronised batch statistics) and has no other
// way to reach it. The trainer opens one around each data-parallel forward pass, on its thread.
class ReplicaScope {
 public:
  ReplicaScope(ReplicaGroup* group, bool synchronize_batch_norm) : previous_group_(group_), previous_batch_norm_(synchronize_batch_norm_) {
    group_ = group;
    synchronize_batch_norm_ = synchronize_batch_norm;
  }
  ~ReplicaScope() {
    group_ = previous_group_;
    synchronize_batch_norm_ = previous_batch_norm_;
  }
  ReplicaScope(const ReplicaScope&) = delete;
  ReplicaScope& operator=(const ReplicaScope&) = delete;

  // The current step's group; nullptr outside data-parallel training.
  static ReplicaGroup* group() { return group_; }
  // The group whose batch statistics BatchNorm layers in training mode combine (SyncBatchNorm);
  // nullptr for per-process statistics, DDP's default.
  static ReplicaGroup* batch_norm_group() { return synchronize_batch_norm_ ? group_ : nullptr; }

 private:
  ReplicaGroup* previous_group_;
  bool previous_batch_norm_;
  static inline thread_local ReplicaGroup* group_ = nullptr;
  static inline thread_local bool synchronize_batch_norm_ = false;
};

// A count that normalises a loss over the whole batch (DETR's number of boxes), as transformers
// computes it under accelerate: summed over the ranks of the current step's group and divided by
// their number, so that the averaged gradients equal one process's over the global batch.
// Outside data-parallel training, the count itself.
inline double average_over_replicas(double local_count) {
  ReplicaGroup* replicas = ReplicaScope::group();
  if (replicas == nullptr || replicas->size() == 1) return local_count;
  std::vector<double> total{local_count};
  replicas->sum(total);
  return total[0] / static_cast<double>(replicas->size());
}

}  // namespace vt
