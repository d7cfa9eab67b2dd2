// DistributedDataParallel's semantics for the trainer, on c10d's own pieces: rank 0's parameters
// and buffers broadcast at the start (broadcast_coalesced), parameter shapes checked across the
// ranks, gradients averaged by c10d::Reducer in buckets (one bucket in the first step, then
// rebuilt in the order gradients arrived: 1 MB first, 25 MB after) while backward still runs, no
// synchronisation on gradient-accumulation micro-steps but the last, and buffers (BatchNorm's
// running statistics) broadcast from rank 0 before each synchronised forward pass.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "distributed/process_group.h"

namespace vt::distributed {

struct DataParallelOptions {
  // BatchNorm statistics over all ranks (torch.nn.SyncBatchNorm) instead of per rank.
  bool sync_batch_norm = false;
  int64_t bucket_cap_bytes = 25 * 1024 * 1024;         // DDP's bucket_cap_mb
  int64_t first_bucket_bytes = 1024 * 1024;            // dist._DEFAULT_FIRST_BUCKET_BYTES
  int64_t broadcast_bucket_bytes = 250 * 1024 * 1024;  // DDP's broadcast_bucket_size
};

class DataParallel {
 public:
  DataParallel(std::shared_ptr<ProcessGroup> group, DataParallelOptions options);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  ProcessGroup& group() { return *group_; }
  const DataParallelOptions& options() const { return options_; }
  bool is_writer() const { return group_->rank() == 0; }

  // Every rank's `job` (what must agree: the model's configuration, the data, the settings) is
  // compared with rank 0's, then rank 0's parameters and buffers are copied to every rank and
  // the reducer is built over `trainable` (frozen parameters left out). Errors name the fields,
  // parameters and ranks that differ.
  void start(torch::nn::Module& module, const std::vector<std::pair<std::string, torch::Tensor>>& trainable, const nlohmann::json& job);

  // Around each micro-batch: `synchronize` is false on the accumulation micro-steps before the
  // last of an optimizer step (DDP's no_sync), whose gradients stay local.
  void before_forward(bool synchronize);
  void after_forward(bool synchronize);
  // Runs the backward pass `body`; a collective that fails inside it becomes an error naming
  // the ranks that are gone.
  void backward(const std::function<void()>& body);

  // Rank 0's buffers on every rank (before evaluation and at the end of a run).
  void broadcast_buffers();
  // DDP's own timing of a step (its logger's averages over the steps so far, in seconds): the
  // forward and backward passes, the bucket all-reduces, and how much of those ran while
  // backward still computed.
  nlohmann::json communication_statistics();
  // Every rank's generator state, by rank (checkpoints keep them all).
  std::vector<torch::Tensor> gather_generator_states();
  // A digest of the parameters and buffers, equal on every rank of a consistent group.
  static std::string state_digest(torch::nn::Module& module);

 private:
  struct Impl;
  std::shared_ptr<ProcessGroup> group_;
  DataParallelOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vt::distributed
