#include "distributed/data_parallel.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>

#include "common/error.h"

#ifdef VISIONTORCH_WITH_GLOO
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/logger.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#endif

namespace vt::distributed {

namespace {

// "a.b.c" -> value text, for naming the fields two ranks' jobs differ in.
void flatten(const nlohmann::json& value, const std::string& path, std::map<std::string, std::string>& out) {
  if (value.is_object() && !value.empty()) {
    for (const auto& [key, child] : value.items()) flatten(child, path.empty() ? key : path + "." + key, out);
  } else {
    out[path] = value.dump();
  }
}

// The differences between rank 0's job and the others', one line per field (a few at most).
std::string job_differences(const std::vector<std::string>& jobs) {
  std::map<std::string, std::string> reference;
  flatten(nlohmann::json::parse(jobs[0]), "", reference);
  std::vector<std::string> lines;
  for (size_t r = 1; r < jobs.size(); ++r) {
    if (jobs[r] == jobs[0]) continue;
    std::map<std::string, std::string> other;
    flatten(nlohmann::json::parse(jobs[r]), "", other);
    for (const auto& [key, value] : reference) {
      auto found = other.find(key);
      const std::string theirs = found == other.end() ? "(absent)" : found->second;
      if (theirs != value) lines.push_back(str_cat(key, " is ", value, " on rank 0 but ", theirs, " on rank ", r));
    }
    for (const auto& [key, value] : other) {
      if (!reference.count(key)) lines.push_back(str_cat(key, " is ", value, " on rank ", r, " but absent on rank 0"));
    }
  }
  std::string text;
  for (size_t i = 0; i < lines.size() && i < 8; ++i) text += "\n  " + lines[i];
  if (lines.size() > 8) text += str_cat("\n  ... and ", lines.size() - 8, " more");
  return text;
}

std::string shape_text(const torch::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

bool looks_like_communication_failure(const std::string& message) {
  std::string lower(message);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* marker : {"gloo", "connection", "timed out", "timeout", "socket", "peer"}) {
    if (lower.find(marker) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

#ifdef VISIONTORCH_WITH_GLOO

// The reducer warns when a gradient's strides differ from its bucket view's (the parameter's).
// Here they differ only in size-1 dimensions (1x1 kernels and single-channel stems, whose
// gradients come back channels-last): the same memory layout, copied just as fast. Every other
// warning goes on to the handler in place.
class BucketStrideWarningFilter : public c10::WarningHandler {
 public:
  BucketStrideWarningFilter() : next_(c10::Warning::get_warning_handler()) {}
  void process(const c10::SourceLocation& location, const std::string& message, bool verbatim) override {
    if (message.rfind("Grad strides do not match bucket view strides", 0) == 0) return;
    next_->process(location, message, verbatim);
  }

 private:
  c10::WarningHandler* next_;
};

struct DataParallel::Impl {
  std::shared_ptr<c10d::Reducer> reducer;
  // DDP's own logger: it times forward, backward and the all-reduces of the reducer's buckets.
  std::shared_ptr<c10d::Logger> logger;
  std::vector<torch::Tensor> buffers;
  // DDP's require_forward_param_sync: buffers are broadcast before a forward pass that follows a
  // synchronised one (and before the first).
  bool require_forward_param_sync = true;
};

#else

struct DataParallel::Impl {};

#endif

DataParallel::DataParallel(std::shared_ptr<ProcessGroup> group, DataParallelOptions options)
    : group_(std::move(group)), options_(options), impl_(std::make_unique<Impl>()) {}

DataParallel::~DataParallel() {
#ifdef VISIONTORCH_WITH_GLOO
  // The logger reads the reducer as it goes, so it goes first (as in DDP).
  if (impl_) impl_->logger.reset();
#endif
}

void DataParallel::start(torch::nn::Module& module, const std::vector<std::pair<std::string, torch::Tensor>>& trainable,
                         const nlohmann::json& job) {
  ErrorScope errors(ErrorCode::Distributed);
  // The same job everywhere: the model's configuration, the dataset, the settings.
  const auto jobs = group_->gather_bytes(job.dump());
  if (std::any_of(jobs.begin(), jobs.end(), [&](const std::string& other) { return other != jobs[0]; })) {
    fail("distributed: the ranks were not given the same job; every rank must load the same model and settings:", job_differences(jobs));
  }
  // The same trainable parameters, by name and shape (torch's _verify_params_across_processes,
  // with names).
  std::string shapes;
  for (const auto& [name, parameter] : trainable) shapes += name + " " + shape_text(parameter) + "\n";
  const auto all_shapes = group_->gather_bytes(shapes);
  for (size_t r = 1; r < all_shapes.size(); ++r) {
    if (all_shapes[r] == all_shapes[0]) continue;
    std::istringstream ours(all_shapes[0]), theirs(all_shapes[r]);
    std::string line_ours, line_theirs;
    while (true) {
      const bool has_ours = static_cast<bool>(std::getline(ours, line_ours));
      const bool has_theirs = static_cast<bool>(std::getline(theirs, line_theirs));
      if (!has_ours && !has_theirs) break;
      if (line_ours == line_theirs) continue;
      fail("distributed: the ranks hold different models: parameter ", has_ours ? line_ours : "(none)", " on rank 0 but ",
           has_theirs ? line_theirs : "(none)", " on rank ", r);
    }
  }
#ifdef VISIONTORCH_WITH_GLOO
  auto c10d_group = group_->c10d_group();
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> state;
  for (const auto& parameter : module.parameters()) state.push_back(parameter.detach());
  for (const auto& buffer : module.buffers()) {
    state.push_back(buffer);
    impl_->buffers.push_back(buffer);
  }
  try {
    if (!state.empty()) c10d::broadcast_coalesced(c10d_group, state, static_cast<size_t>(options_.broadcast_bucket_bytes), 0);
  } catch (const std::exception& error) {
    fail(group_->diagnose_failure("broadcasting rank 0's parameters"), " (", std::string(error.what()).substr(0, 200), ")");
  }

  std::vector<torch::Tensor> parameters;
  std::unordered_map<size_t, std::string> names;
  for (const auto& [name, parameter] : trainable) {
    names[parameters.size()] = name;
    parameters.push_back(parameter);
  }
  VT_CHECK(!parameters.empty(), "distributed: the model has no trainable parameters");
  const std::vector<bool> sparse(parameters.size(), false);
  // The first step reduces everything in one bucket, after backward, since the order gradients
  // arrive in is not known yet; the reducer then rebuilds its buckets in that order (as DDP with
  // find_unused_parameters=False).
  auto [buckets, limits] =
      c10d::compute_bucket_assignment_by_size(parameters, {static_cast<size_t>(std::numeric_limits<int64_t>::max())}, sparse);
  std::reverse(buckets.begin(), buckets.end());
  std::reverse(limits.begin(), limits.end());
  impl_->reducer = std::make_shared<c10d::Reducer>(parameters, std::move(buckets), std::move(limits), c10d_group, sparse,
                                                   options_.bucket_cap_bytes, /*find_unused_parameters=*/false,
                                                   /*gradient_as_bucket_view=*/false, names, options_.first_bucket_bytes);
  impl_->logger = std::make_shared<c10d::Logger>(impl_->reducer);
  impl_->reducer->set_logger(impl_->logger);
  impl_->logger->set_construction_data_and_log("VisionModule", {}, -1, /*broadcast_buffers=*/true, options_.sync_batch_norm,
                                               /*static_graph=*/false);
  // Every step timed (DDP samples one in 100 by default; on CPU a timestamp costs nothing).
  impl_->reducer->set_ddp_runtime_logging_sample_rate(1);
#else
  (void)module;
  (void)trainable;
  fail_with(ErrorCode::Unsupported, "distributed: this build has no torch.distributed backend");
#endif
}

void DataParallel::before_forward(bool synchronize) {
#ifdef VISIONTORCH_WITH_GLOO
  ErrorScope errors(ErrorCode::Distributed);
  try {
    if (synchronize) {
      impl_->logger->set_runtime_stats_and_log();
      impl_->reducer->prepare_for_forward();
    }
    // After the first step: the buckets in the order gradients arrived (rank 0's order, broadcast).
    impl_->reducer->rebuild_buckets();
  } catch (const std::exception& error) {
    if (!looks_like_communication_failure(error.what())) throw;
    fail(group_->diagnose_failure("rebuilding the gradient buckets"), " (", std::string(error.what()).substr(0, 200), ")");
  }
  if (impl_->require_forward_param_sync && !impl_->buffers.empty()) broadcast_buffers();
#else
  (void)synchronize;
#endif
}

void DataParallel::after_forward(bool synchronize) {
#ifdef VISIONTORCH_WITH_GLOO
  impl_->require_forward_param_sync = synchronize;
  if (synchronize) impl_->reducer->prepare_for_backward({});
#else
  (void)synchronize;
#endif
}

void DataParallel::backward(const std::function<void()>& body) {
#ifdef VISIONTORCH_WITH_GLOO
  BucketStrideWarningFilter filter;
  c10::Warning::WarningHandlerGuard filtered(&filter);
#endif
  try {
    body();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    if (!looks_like_communication_failure(error.what())) throw;
    std::string cause = error.what();
    cause = cause.substr(0, cause.find('\n'));
    throw Error(str_cat(group_->diagnose_failure("averaging gradients"), " (", cause, ")"), ErrorCode::Distributed);
  }
}

void DataParallel::broadcast_buffers() {
#ifdef VISIONTORCH_WITH_GLOO
  if (impl_->buffers.empty()) return;
  torch::NoGradGuard no_grad;
  try {
    c10d::broadcast_coalesced(group_->c10d_group(), impl_->buffers, static_cast<size_t>(options_.broadcast_bucket_bytes), 0);
  } catch (const std::exception& error) {
    throw Error(str_cat(group_->diagnose_failure("broadcasting rank 0's buffers"), " (", std::string(error.what()).substr(0, 200), ")"),
                ErrorCode::Distributed);
  }
#endif
}

nlohmann::json DataParallel::communication_statistics() {
#ifdef VISIONTORCH_WITH_GLOO
  if (!impl_->logger) return nlohmann::json::object();
  impl_->logger->set_runtime_stats_and_log();  // the last step's times too
  auto data = impl_->logger->get_ddp_logging_data();
  auto seconds = [&](const char* key) { return static_cast<double>(data.ints_map[key]) / 1e9; };
  return {{"forward_seconds", seconds("avg_forward_compute_time")},
          {"backward_seconds", seconds("avg_backward_compute_time")},
          {"allreduce_seconds", seconds("avg_backward_comm_time")},
          {"allreduce_overlapping_backward_seconds", seconds("avg_backward_compute_comm_overlap_time")},
          {"buckets", static_cast<int64_t>(impl_->logger->get_bucket_sizes().size())}};
#else
  return nlohmann::json::object();
#endif
}

std::vector<torch::Tensor> DataParallel::gather_generator_states() {
  auto generator = at::detail::getDefaultCPUGenerator();
  torch::Tensor state;
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    state = generator.get_state();
  }
  return group_->all_gather(state);
}

std::string DataParallel::state_digest(torch::nn::Module& module) {
  // FNV-1a over the names, shapes and bytes of the parameters and buffers, 8 bytes at a time.
  uint64_t hash = 14695981039346656037ull;
  auto mix = [&](uint64_t word) {
    hash ^= word;
    hash *= 1099511628211ull;
  };
  auto mix_bytes = [&](const void* data, size_t size) {
    const auto* bytes = static_cast<const uint8_t*>(data);
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
      uint64_t word;
      std::memcpy(&word, bytes + i, 8);
      mix(word);
    }
    for (; i < size; ++i) mix(bytes[i]);
  };
  auto mix_tensor = [&](const std::string& name, const torch::Tensor& tensor) {
    mix_bytes(name.data(), name.size());
    for (auto size : tensor.sizes()) mix(static_cast<uint64_t>(size));
    auto contiguous = tensor.detach().to(torch::kCPU).contiguous();
    mix_bytes(contiguous.data_ptr(), contiguous.numel() * contiguous.element_size());
  };
  for (const auto& item : module.named_parameters()) mix_tensor(item.key(), item.value());
  for (const auto& item : module.named_buffers()) mix_tensor(item.key(), item.value());
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

}  // namespace vt::distributed
