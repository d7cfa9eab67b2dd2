#include "distributed/process_group.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "common/error.h"

#ifdef VISIONTORCH_WITH_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace vt::distributed {

namespace {

std::string address(const GroupOptions& options) { return str_cat(options.master_addr, ":", options.master_port); }

std::string seconds(std::chrono::milliseconds duration) { return str_cat(static_cast<double>(duration.count()) / 1000.0, " s"); }

int parse_int(const std::map<std::string, std::string>& environment, const std::string& name, std::optional<int> fallback, int minimum) {
  auto found = environment.find(name);
  if (found == environment.end() || found->second.empty()) {
    if (fallback) return *fallback;
    fail_with(ErrorCode::Config, name, " is not set: a torch.distributed launcher (torchrun, a PyTorchJob) sets RANK, WORLD_SIZE, ",
              "MASTER_ADDR and MASTER_PORT together");
  }
  const std::string& text = found->second;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < minimum || value > 1 << 30) {
    fail_with(ErrorCode::Config, name, "=\"", text, "\" is not an integer of at least ", minimum);
  }
  return static_cast<int>(value);
}

}  // namespace

void validate(const GroupOptions& options) {
  ErrorScope errors(ErrorCode::Config);
  VT_CHECK(options.world_size >= 1, "distributed: the world size must be at least 1, got ", options.world_size);
  VT_CHECK(options.rank >= 0 && options.rank < options.world_size, "distributed: rank ", options.rank, " is outside the world of ",
           options.world_size, " ranks (0 to ", options.world_size - 1, ")");
  VT_CHECK(options.master_port >= 0 && options.master_port <= 65535, "distributed: master port ", options.master_port,
           " is not a TCP port (0 to 65535)");
  VT_CHECK(options.master_port > 0 || (options.rank == 0 && !options.launcher_store && options.world_size == 1),
           "distributed: the master port must be given (every rank must know where the store is)");
  VT_CHECK(!options.master_addr.empty(), "distributed: the master address is empty");
  VT_CHECK(options.backend == "gloo" || options.backend == "nccl", "distributed: backend must be gloo or nccl, got \"", options.backend,
           "\"");
  VT_CHECK(options.timeout.count() > 0, "distributed: the timeout must be positive");
  VT_CHECK(options.restart_count >= 0, "distributed: the restart count must not be negative");
  VT_CHECK(options.local_world_size >= 1 && options.local_rank >= 0 && options.local_rank < options.local_world_size,
           "distributed: local rank ", options.local_rank, " is outside the ", options.local_world_size, " ranks of this machine");
}

std::optional<GroupOptions> group_from_environment(const std::map<std::string, std::string>& environment) {
  const bool has_rank = environment.count("RANK") && !environment.at("RANK").empty();
  const bool has_world = environment.count("WORLD_SIZE") && !environment.at("WORLD_SIZE").empty();
  if (!has_rank && !has_world) return std::nullopt;
  ErrorScope errors(ErrorCode::Config);
  GroupOptions options;
  options.rank = parse_int(environment, "RANK", std::nullopt, 0);
  options.world_size = parse_int(environment, "WORLD_SIZE", std::nullopt, 1);
  VT_CHECK(options.rank < options.world_size, "RANK=", options.rank, " is not below WORLD_SIZE=", options.world_size);
  auto addr = environment.find("MASTER_ADDR");
  VT_CHECK(addr != environment.end() && !addr->second.empty(),
           "MASTER_ADDR is not set: a torch.distributed launcher sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT together");
  options.master_addr = addr->second;
  options.master_port = parse_int(environment, "MASTER_PORT", std::nullopt, 1);
  VT_CHECK(options.master_port <= 65535, "MASTER_PORT=", options.master_port, " is not a TCP port");
  options.local_rank = parse_int(environment, "LOCAL_RANK", 0, 0);
  options.local_world_size = parse_int(environment, "LOCAL_WORLD_SIZE", std::max(options.local_rank + 1, 1), 1);
  VT_CHECK(options.local_rank < options.local_world_size, "LOCAL_RANK=", options.local_rank,
           " is not below LOCAL_WORLD_SIZE=", options.local_world_size);
  options.restart_count = parse_int(environment, "TORCHELASTIC_RESTART_COUNT", 0, 0);
  auto agent = environment.find("TORCHELASTIC_USE_AGENT_STORE");
  // torchrun's test is exactly str(True).
  options.launcher_store = agent != environment.end() && agent->second == "True";
  return options;
}

#ifdef VISIONTORCH_WITH_GLOO

namespace {

constexpr const char* kHealthPrefix = "visiontorch/health";

std::vector<uint8_t> bytes_of(const std::string& text) { return std::vector<uint8_t>(text.begin(), text.end()); }
std::string text_of(const std::vector<uint8_t>& bytes) { return std::string(bytes.begin(), bytes.end()); }

// A process that has exited: gone, or a zombie its parent has not yet reaped.
bool process_exited(pid_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const auto close = line.rfind(')');  // the command name may hold spaces and parentheses
  return close != std::string::npos && close + 2 < line.size() && (line[close + 2] == 'Z' || line[close + 2] == 'X');
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

// torch.distributed's _store_based_barrier: every rank adds 1 to a key, then waits for the count
// to reach the world size.
void store_based_barrier(c10d::Store& store, const GroupOptions& options) {
  const std::string key = "store_based_barrier_key:1";
  store.add(key, 1);
  const auto started = std::chrono::steady_clock::now();
  int64_t arrived = store.add(key, 0);
  while (arrived != options.world_size) {
    if (std::chrono::steady_clock::now() - started > options.timeout) {
      fail_with(ErrorCode::Distributed, "distributed: rank ", options.rank, " waited ", seconds(options.timeout),
                " for the process group at ", address(options), " to form: ", arrived, " of ", options.world_size,
                " ranks arrived. Start every rank, each with its own RANK, and the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    arrived = store.add(key, 0);
  }
}

std::shared_ptr<gloo::transport::Device> gloo_device() {
  // torch.distributed's choice: the interfaces in GLOO_SOCKET_IFNAME, else the host name's address.
  const char* interfaces = std::getenv("GLOO_SOCKET_IFNAME");
  if (interfaces != nullptr && std::strlen(interfaces) > 1) {
    std::string first(interfaces);
    first = first.substr(0, first.find(','));
    return c10d::ProcessGroupGloo::createDeviceForInterface(first);
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

struct ProcessGroup::Impl {
  GroupOptions options;
  c10::intrusive_ptr<c10d::TCPStore> tcp_store;
  c10::intrusive_ptr<c10d::Store> store;         // the launcher's prefix applied
  c10::intrusive_ptr<c10d::Store> health_store;  // this library's own keys, beside torch's
  c10::intrusive_ptr<c10d::ProcessGroup> group;

  // A collective's outcome; a failure becomes an error naming the ranks that are gone.
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what, ProcessGroup& owner) {
    try {
      work->wait();
    } catch (const std::exception& error) {
      std::string cause = error.what();
      cause = cause.substr(0, cause.find('\n'));
      throw Error(str_cat(owner.diagnose_failure(what), " (", cause, ")"), ErrorCode::Distributed);
    }
  }
};

std::shared_ptr<ProcessGroup> ProcessGroup::create(const GroupOptions& options) {
  validate(options);
  ErrorScope errors(ErrorCode::Distributed);
  VT_CHECK(options.backend == "gloo", "distributed: backend nccl needs a CUDA build of visiontorch; this one has Gloo (CPU) only");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(options.master_port);
  store_options.numWorkers = static_cast<size_t>(options.world_size);
  store_options.waitWorkers = true;
  store_options.timeout = options.timeout;
  store_options.isServer = !options.launcher_store && options.rank == 0;
  store_options.multiTenant = !options.launcher_store;
  try {
    impl->tcp_store = c10::make_intrusive<c10d::TCPStore>(options.master_addr, store_options);
  } catch (const std::exception& error) {
    std::string cause = error.what();
    cause = cause.substr(0, cause.find('\n'));
    if (store_options.isServer) {
      fail("distributed: rank 0 could not host the rendezvous store at ", address(options), " or its ", options.world_size - 1,
           " other ranks did not connect within ", seconds(options.timeout), " (", cause,
           "). Check that the port is free and that every rank uses the same MASTER_ADDR and MASTER_PORT");
    }
    fail("distributed: rank ", options.rank, " could not reach the rendezvous store at ", address(options), " within ",
         seconds(options.timeout), " (", cause, "). Check MASTER_ADDR and MASTER_PORT, and that ",
         options.launcher_store ? "the launcher" : "rank 0", " is running");
  }
  impl->store = impl->tcp_store;
  if (options.launcher_store) {
    impl->store = c10::make_intrusive<c10d::PrefixStore>(str_cat("/worker/attempt_", options.restart_count), impl->store);
  }
  impl->store->setTimeout(options.timeout);
  auto default_store = c10::make_intrusive<c10d::PrefixStore>("default_pg", impl->store);
  impl->health_store = c10::make_intrusive<c10d::PrefixStore>(kHealthPrefix, impl->store);
  try {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
    gloo_options->devices.push_back(gloo_device());
    gloo_options->threads = static_cast<int>(gloo_options->devices.size() * 2);
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("0", default_store), options.rank,
                                                              options.world_size, gloo_options);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    std::string cause = error.what();
    cause = cause.substr(0, cause.find('\n'));
    fail("distributed: rank ", options.rank, " could not connect to the other ranks of the group at ", address(options), " (", cause,
         "). Every rank must start within ", seconds(options.timeout), " of the others; GLOO_SOCKET_IFNAME picks the network interface");
  }
  store_based_barrier(*default_store, options);
  impl->group->setSequenceNumberForGroup();
  // Who this rank is, for naming a rank that is gone (diagnose_failure).
  impl->health_store->set(str_cat("process/", options.rank), bytes_of(str_cat(host_name(), " ", getpid())));
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

void ProcessGroup::all_reduce_sum(torch::Tensor& tensor) {
  std::vector<torch::Tensor> tensors{tensor};
  impl_->wait(impl_->group->allreduce(tensors), "allreduce", *this);
}

std::vector<torch::Tensor> ProcessGroup::all_gather(const torch::Tensor& tensor) {
  std::vector<torch::Tensor> input{tensor.contiguous()};
  std::vector<std::vector<torch::Tensor>> output(1);
  for (int r = 0; r < size(); ++r) output[0].push_back(torch::empty_like(input[0]));
  impl_->wait(impl_->group->allgather(output, input), "allgather", *this);
  return output[0];
}

void ProcessGroup::broadcast(torch::Tensor& tensor, int root) {
  std::vector<torch::Tensor> tensors{tensor};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  impl_->wait(impl_->group->broadcast(tensors, options), "broadcast", *this);
}

void ProcessGroup::barrier() { impl_->wait(impl_->group->barrier(), "barrier", *this); }

c10::intrusive_ptr<c10d::ProcessGroup> ProcessGroup::c10d_group() const { return impl_->group; }

std::string ProcessGroup::diagnose_failure(const std::string& what) {
  const auto& options = impl_->options;
  const std::string prefix = str_cat("distributed: ", what, " failed on rank ", options.rank, " of ", options.world_size);
  std::vector<std::string> gone;
  try {
    auto& store = *impl_->health_store;
    store.set(str_cat("alive/", options.rank), bytes_of("1"));
    // Ranks on this machine are looked up by process id: one that exited is certainly gone. A
    // process killed a moment ago resets its sockets before it becomes a zombie, so local ranks
    // are looked at again until the grace period ends.
    struct Peer {
      int rank;
      pid_t local_pid;  // 0 when the rank runs on another machine or never said
    };
    std::vector<Peer> unknown;
    const std::string here = host_name();
    for (int r = 0; r < options.world_size; ++r) {
      if (r == options.rank) continue;
      pid_t local_pid = 0;
      const std::string key = str_cat("process/", r);
      if (store.check({key})) {
        const std::string process = text_of(store.get(key));
        const auto space = process.rfind(' ');
        const pid_t pid = static_cast<pid_t>(std::atoi(process.substr(space + 1).c_str()));
        if (process.substr(0, space) == here && pid > 0) local_pid = pid;
      }
      unknown.push_back({r, local_pid});
    }
    // The others: ranks that are alive reach this point too and say so; those that do not
    // within a short grace period are dead elsewhere or hung.
    const auto grace = std::min<std::chrono::milliseconds>(options.timeout, std::chrono::seconds(5));
    const auto started = std::chrono::steady_clock::now();
    while (!unknown.empty()) {
      unknown.erase(std::remove_if(unknown.begin(), unknown.end(),
                                   [&](const Peer& peer) {
                                     if (peer.local_pid > 0 && process_exited(peer.local_pid)) {
                                       gone.push_back(str_cat("rank ", peer.rank, " (process ", peer.local_pid, ") exited"));
                                       return true;
                                     }
                                     return store.check({str_cat("alive/", peer.rank)});
                                   }),
                    unknown.end());
      if (unknown.empty() || std::chrono::steady_clock::now() - started >= grace) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (gone.empty()) {
      for (const Peer& peer : unknown) gone.push_back(str_cat("rank ", peer.rank, " stopped responding (exited, hung or unreachable)"));
    }
  } catch (const std::exception&) {
    // The store is gone with its host.
    gone.push_back(options.launcher_store ? str_cat("the launcher hosting the store at ", address(options), " is gone")
                                          : str_cat("rank 0, which hosts the store at ", address(options), ", is gone"));
  }
  if (gone.empty()) return str_cat(prefix, ": every rank is still running; a rank may have failed on its own (see its log)");
  std::string list;
  for (const auto& entry : gone) list += (list.empty() ? "" : "; ") + entry;
  return str_cat(prefix, ": ", list);
}

struct StoreServer::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

StoreServer::StoreServer(const std::string& host, int port, std::chrono::milliseconds timeout) : impl_(std::make_unique<Impl>()) {
  ErrorScope errors(ErrorCode::Distributed);
  VT_CHECK(port >= 0 && port <= 65535, "distributed: master port ", port, " is not a TCP port (0 to 65535)");
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(port);
  options.isServer = true;
  options.waitWorkers = false;
  options.timeout = timeout;
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(host, options);
  } catch (const std::exception& error) {
    std::string cause = error.what();
    cause = cause.substr(0, cause.find('\n'));
    fail("distributed: cannot host the rendezvous store on port ", port, " (", cause,
         "): is the port in use? Give another master port, or 0 for a free one");
  }
}

StoreServer::~StoreServer() = default;
int StoreServer::port() const { return impl_->store->getPort(); }
void StoreServer::set(const std::string& key, const std::string& value) { impl_->store->set(key, bytes_of(value)); }
std::optional<std::string> StoreServer::get(const std::string& key) {
  if (!impl_->store->check({key})) return std::nullopt;
  return text_of(impl_->store->get(key));
}

#else  // no Gloo: the group cannot be made

struct ProcessGroup::Impl {
  GroupOptions options;
};

std::shared_ptr<ProcessGroup> ProcessGroup::create(const GroupOptions& options) {
  validate(options);
  fail_with(ErrorCode::Unsupported, "distributed: this build of visiontorch has no torch.distributed backend (it was built without Gloo)");
}
void ProcessGroup::all_reduce_sum(torch::Tensor&) {}
std::vector<torch::Tensor> ProcessGroup::all_gather(const torch::Tensor& tensor) { return {tensor}; }
void ProcessGroup::broadcast(torch::Tensor&, int) {}
void ProcessGroup::barrier() {}
c10::intrusive_ptr<c10d::ProcessGroup> ProcessGroup::c10d_group() const { return {}; }
std::string ProcessGroup::diagnose_failure(const std::string& what) { return what; }

struct StoreServer::Impl {};
StoreServer::StoreServer(const std::string&, int, std::chrono::milliseconds) {
  fail_with(ErrorCode::Unsupported, "distributed: this build of visiontorch has no torch.distributed backend (it was built without Gloo)");
}
StoreServer::~StoreServer() = default;
int StoreServer::port() const { return 0; }
void StoreServer::set(const std::string&, const std::string&) {}
std::optional<std::string> StoreServer::get(const std::string&) { return std::nullopt; }

#endif

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProcessGroup::~ProcessGroup() = default;
int ProcessGroup::rank() const { return impl_->options.rank; }
int ProcessGroup::size() const { return impl_->options.world_size; }
const GroupOptions& ProcessGroup::options() const { return impl_->options; }
std::string ProcessGroup::backend_name() const { return impl_->options.backend; }
torch::Device ProcessGroup::device() const { return torch::kCPU; }

int free_port(const std::string& host) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  VT_CHECK(fd >= 0, "free_port: cannot open a socket: ", std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = 0;
  if (inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  const bool bound = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                     getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  close(fd);
  VT_CHECK(bound, "free_port: cannot bind a socket on ", host);
  return ntohs(address.sin_port);
}

}  // namespace vt::distributed
