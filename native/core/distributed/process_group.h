// torch.distributed's default process group, made as init_process_group makes it: a TCPStore
// rendezvous (hosted by rank 0, or by a launcher such as torchrun for its workers), the
// PrefixStore nesting ("default_pg", then the group's name "0"), the store-based barrier and the
// sequence number rank 0 sets, then Gloo on CPU (NCCL on CUDA builds). A Python process calling
// torch.distributed.init_process_group("gloo", "env://") with the same address joins the same
// group. The c10d types stay inside the .cpp files: what includes this needs no Gloo headers.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/replica_group.h"

namespace c10d {
class ProcessGroup;
}

namespace vt::distributed {

// The default timeout of collectives and of the rendezvous: a dead or hung peer is reported after
// this long (torch's default is 30 minutes; a minute is what an interactive run wants).
constexpr std::chrono::seconds kDefaultTimeout{60};

struct GroupOptions {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string backend = "gloo";  // gloo | nccl
  std::chrono::milliseconds timeout = kDefaultTimeout;
  // A launcher (torchrun's agent, visiontorch's DistributedTrainer) hosts the store: every rank
  // is a client, under the prefix "/worker/attempt_<restart_count>" (torchrun's
  // TORCHELASTIC_USE_AGENT_STORE). Otherwise rank 0 hosts it, as env:// does.
  bool launcher_store = false;
  int64_t restart_count = 0;
  // This process's index on its machine: the CUDA device of NCCL ranks.
  int local_rank = 0;
  int local_world_size = 1;
};

// Checks what GroupOptions can be checked alone (ranks, sizes, port, backend); throws naming it.
void validate(const GroupOptions& options);

// The group a torchrun, Kubeflow PyTorchJob or SLURM launch describes in `environment` (RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK, LOCAL_WORLD_SIZE, TORCHELASTIC_RESTART_COUNT,
// TORCHELASTIC_USE_AGENT_STORE); nullopt when RANK and WORLD_SIZE are not set. A variable that is
// set but unusable is an error naming it.
std::optional<GroupOptions> group_from_environment(const std::map<std::string, std::string>& environment);

class ProcessGroup : public ReplicaGroup {
 public:
  // init_process_group: connects to (or, as rank 0 without a launcher, hosts) the store, waits
  // for every rank within the timeout, then creates the backend. Errors say which address,
  // which ranks arrived, and what to check.
  static std::shared_ptr<ProcessGroup> create(const GroupOptions& options);
  ~ProcessGroup() override;

  int rank() const override;
  int size() const override;
  const GroupOptions& options() const;
  std::string backend_name() const;
  // The device collectives run on: CPU for Gloo, cuda:<local_rank> for NCCL.
  torch::Device device() const;

  void all_reduce_sum(torch::Tensor& tensor) override;
  std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor) override;
  void broadcast(torch::Tensor& tensor, int root) override;
  void barrier();

  // What a failed collective means for the group: which ranks are gone (dead, hung, or
  // unreachable), found through the store within a short grace period. Used to turn a Gloo
  // "connection closed" or timeout into an error that names the rank.
  std::string diagnose_failure(const std::string& what);

  // The c10d group itself, for DDP's Reducer (null in a build without Gloo).
  c10::intrusive_ptr<c10d::ProcessGroup> c10d_group() const;

  struct Impl;

 private:
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The store a launcher hosts for its workers, as torchrun's agent does (a TCPStore server).
// Port 0 picks a free port. A port in use is an error naming it.
class StoreServer {
 public:
  StoreServer(const std::string& host, int port, std::chrono::milliseconds timeout);
  ~StoreServer();
  int port() const;
  // Store operations on the server's own client, for the launcher's bookkeeping.
  void set(const std::string& key, const std::string& value);
  std::optional<std::string> get(const std::string& key);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A free TCP port on `host` now (for tests and launchers that pick one).
int free_port(const std::string& host);

}  // namespace vt::distributed
