// torch.distributed in the core: the launcher's environment, DistributedSampler's shards, a Gloo
// group's collectives, and DDP's semantics (broadcast from rank 0, averaged gradients,
// synchronised BatchNorm) against one process holding the whole batch. Ranks run as threads of
// this process, each with its own store client and Gloo group, as torch's own c10d tests do.
#include <gtest/gtest.h>

#include <exception>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "common/replica_group.h"
#include "data/sampler.h"
#include "distributed/data_parallel.h"
#include "distributed/process_group.h"
#include "nn/layers.h"
#include "test_util.h"

namespace {

using vt::distributed::DataParallel;
using vt::distributed::GroupOptions;
using vt::distributed::ProcessGroup;

GroupOptions group_options(int rank, int world, int port) {
  GroupOptions options;
  options.rank = rank;
  options.world_size = world;
  options.master_addr = "127.0.0.1";
  options.master_port = port;
  options.timeout = std::chrono::seconds(20);
  return options;
}

// Runs body(rank) on `world` threads; rethrows the first failure on the caller's thread.
void on_ranks(int world, const std::function<void(int rank)>& body) {
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        body(rank);
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

TEST(DistributedEnvironment, ReadsTorchrunsVariables) {
  const auto none = vt::distributed::group_from_environment({{"PATH", "/bin"}});
  EXPECT_FALSE(none.has_value());
  const auto group = vt::distributed::group_from_environment({{"RANK", "3"},
                                                              {"WORLD_SIZE", "4"},
                                                              {"MASTER_ADDR", "10.0.0.1"},
                                                              {"MASTER_PORT", "29501"},
                                                              {"LOCAL_RANK", "1"},
                                                              {"LOCAL_WORLD_SIZE", "2"},
                                                              {"TORCHELASTIC_RESTART_COUNT", "2"},
                                                              {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  ASSERT_TRUE(group.has_value());
  EXPECT_EQ(group->rank, 3);
  EXPECT_EQ(group->world_size, 4);
  EXPECT_EQ(group->master_addr, "10.0.0.1");
  EXPECT_EQ(group->master_port, 29501);
  EXPECT_EQ(group->local_rank, 1);
  EXPECT_EQ(group->local_world_size, 2);
  EXPECT_EQ(group->restart_count, 2);
  EXPECT_TRUE(group->launcher_store);
  // Kubeflow's PyTorchJob sets no agent store: rank 0 hosts it.
  const auto job = vt::distributed::group_from_environment(
      {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "trainer-master-0"}, {"MASTER_PORT", "23456"}});
  ASSERT_TRUE(job.has_value());
  EXPECT_FALSE(job->launcher_store);
  EXPECT_EQ(job->restart_count, 0);
}

TEST(DistributedEnvironment, NamesTheVariableThatIsWrong) {
  using vt_test::expect_error;
  expect_error(
      [] {
        vt::distributed::group_from_environment({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}});
      },
      {"RANK=2", "WORLD_SIZE=2"});
  expect_error(
      [] {
        vt::distributed::group_from_environment({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}});
      },
      {"MASTER_ADDR"});
  expect_error(
      [] {
        vt::distributed::group_from_environment({{"RANK", "x"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}});
      },
      {"RANK=\"x\""});
  expect_error(
      [] {
        vt::distributed::group_from_environment({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "70000"}});
      },
      {"MASTER_PORT=70000"});
  expect_error(
      [] {
        vt::distributed::group_from_environment({{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}});
      },
      {"RANK"});
  GroupOptions bad = group_options(0, 0, 1);
  expect_error([&] { vt::distributed::validate(bad); }, {"world size must be at least 1"});
  bad = group_options(2, 2, 1);
  expect_error([&] { vt::distributed::validate(bad); }, {"rank 2 is outside the world of 2 ranks"});
}

TEST(DistributedSampler, ShardsPaddedPermutationByStride) {
  const auto sampler = vt::Sampler::over(10, /*shuffle=*/true, 7);
  const auto whole = sampler.epoch_order(3);
  std::multiset<size_t> seen;
  for (int rank = 0; rank < 4; ++rank) {
    const auto shard = sampler.shard(rank, 4, /*drop_last=*/false);
    ASSERT_EQ(shard.size(), 3u);
    const auto order = shard.epoch_order(3);
    ASSERT_EQ(order.size(), 3u);
    for (size_t i = 0; i < order.size(); ++i) {
      // Position rank + 4 i of the permutation padded with its own start.
      const size_t position = static_cast<size_t>(rank) + 4 * i;
      EXPECT_EQ(order[i], whole[position % whole.size()]);
      seen.insert(order[i]);
    }
  }
  // Every sample once, and the two padding samples (the permutation's first two) twice.
  EXPECT_EQ(seen.size(), 12u);
  for (size_t index = 0; index < 10; ++index) EXPECT_GE(seen.count(index), 1u);
  EXPECT_EQ(seen.count(whole[0]), 2u);
  EXPECT_EQ(seen.count(whole[1]), 2u);
  // drop_last: the tail that does not fill every rank is left out.
  for (int rank = 0; rank < 4; ++rank) EXPECT_EQ(sampler.shard(rank, 4, true).epoch_order(3).size(), 2u);
}

TEST(DistributedGroup, CollectivesAgreeAcrossRanks) {
  const int port = vt::distributed::free_port("127.0.0.1");
  std::vector<std::vector<double>> sums(3);
  std::vector<std::vector<std::string>> gathered(3);
  on_ranks(3, [&](int rank) {
    auto group = ProcessGroup::create(group_options(rank, 3, port));
    EXPECT_EQ(group->rank(), rank);
    EXPECT_EQ(group->size(), 3);
    auto tensor = torch::full({4}, static_cast<float>(rank + 1));
    group->all_reduce_sum(tensor);
    EXPECT_TRUE(torch::equal(tensor, torch::full({4}, 6.0f)));
    auto root = torch::arange(5, torch::kInt64) * (rank + 10);
    group->broadcast(root, 2);
    EXPECT_TRUE(torch::equal(root, torch::arange(5, torch::kInt64) * 12));
    auto all = group->all_gather(torch::full({2}, static_cast<float>(rank)));
    ASSERT_EQ(all.size(), 3u);
    for (int r = 0; r < 3; ++r) EXPECT_TRUE(torch::equal(all[static_cast<size_t>(r)], torch::full({2}, static_cast<float>(r))));
    sums[static_cast<size_t>(rank)] = {1.5, static_cast<double>(rank)};
    group->sum(sums[static_cast<size_t>(rank)]);
    gathered[static_cast<size_t>(rank)] = group->gather_bytes(std::string(static_cast<size_t>(rank) * 3, 'a' + static_cast<char>(rank)));
    group->barrier();
  });
  for (int rank = 0; rank < 3; ++rank) {
    EXPECT_EQ(sums[static_cast<size_t>(rank)], (std::vector<double>{4.5, 3.0}));
    EXPECT_EQ(gathered[static_cast<size_t>(rank)], (std::vector<std::string>{"", "bbb", "cccccc"}));
  }
}

TEST(DistributedGroup, APortInUseIsNamed) {
  vt::distributed::StoreServer first("127.0.0.1", 0, std::chrono::seconds(5));
  const int port = first.port();
  EXPECT_GT(port, 0);
  vt_test::expect_error([&] { vt::distributed::StoreServer second("127.0.0.1", port, std::chrono::seconds(5)); },
                        {"port " + std::to_string(port), "in use"});
}

TEST(DistributedGroup, ARankThatNeverComesIsNamedAfterTheTimeout) {
  const int port = vt::distributed::free_port("127.0.0.1");
  GroupOptions options = group_options(0, 2, port);
  options.timeout = std::chrono::seconds(2);
  vt_test::expect_error([&] { ProcessGroup::create(options); }, {"rank 0", "127.0.0.1:" + std::to_string(port), "within 2 s"});
}

// A small convolutional model with BatchNorm between two layers, as ResNet's blocks.
struct SmallNet : torch::nn::Module {
  SmallNet() {
    convolution = register_module("convolution", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 6, 3).padding(1)));
    norm = register_module("norm", torch::nn::BatchNorm2d(6));
    head = register_module("head", torch::nn::Linear(6, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto hidden = torch::relu(vt::layers::batch_norm(norm, convolution(x)));
    return head(hidden.mean({2, 3}));
  }
  std::vector<std::pair<std::string, torch::Tensor>> trainable() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& item : named_parameters()) out.emplace_back(item.key(), item.value());
    return out;
  }
  torch::nn::Conv2d convolution{nullptr};
  torch::nn::BatchNorm2d norm{nullptr};
  torch::nn::Linear head{nullptr};
};

// The loss of one process over the whole batch, its gradients and BatchNorm statistics.
struct Reference {
  double loss;
  std::map<std::string, torch::Tensor> gradients, buffers;
};

Reference whole_batch(const torch::Tensor& images, const torch::Tensor& labels) {
  torch::manual_seed(11);
  SmallNet net;
  net.train();
  auto loss = torch::cross_entropy_loss(net.forward(images), labels);
  loss.backward();
  Reference reference{loss.item<double>(), {}, {}};
  for (const auto& item : net.named_parameters()) reference.gradients[item.key()] = item.value().grad().clone();
  for (const auto& item : net.named_buffers()) reference.buffers[item.key()] = item.value().clone();
  return reference;
}

TEST(DataParallel, TwoRanksWithHalfBatchesEqualOneProcessWithTheWhole) {
  torch::manual_seed(5);
  const auto images = torch::randn({8, 3, 5, 5});
  const auto labels = torch::randint(0, 4, {8}, torch::kInt64);
  const Reference reference = whole_batch(images, labels);
  torch::manual_seed(11);
  SmallNet initial;  // the reference's initialisation, which rank 0 starts from
  const int port = vt::distributed::free_port("127.0.0.1");
  std::vector<Reference> ranks(2);
  std::vector<std::string> digests(2);
  on_ranks(2, [&](int rank) {
    vt::distributed::DataParallelOptions options;
    options.sync_batch_norm = true;
    DataParallel parallel(ProcessGroup::create(group_options(rank, 2, port)), options);
    SmallNet net;  // rank 1's random initialisation differs: rank 0's is broadcast
    if (rank == 0) {
      torch::NoGradGuard no_grad;
      for (const auto& item : initial.named_parameters()) net.named_parameters()[item.key()].copy_(item.value());
    }
    net.train();
    parallel.start(net, net.trainable(), {{"job", "same"}});
    parallel.before_forward(true);
    torch::Tensor loss;
    {
      vt::ReplicaScope scope(&parallel.group(), true);
      loss = torch::cross_entropy_loss(net.forward(images.slice(0, rank * 4, rank * 4 + 4)), labels.slice(0, rank * 4, rank * 4 + 4));
    }
    parallel.after_forward(true);
    parallel.backward([&] { loss.backward(); });
    std::vector<double> mean{loss.item<double>()};
    parallel.group().sum(mean);
    Reference& result = ranks[static_cast<size_t>(rank)];
    result.loss = mean[0] / 2;
    for (const auto& item : net.named_parameters()) result.gradients[item.key()] = item.value().grad().clone();
    for (const auto& item : net.named_buffers()) result.buffers[item.key()] = item.value().clone();
    digests[static_cast<size_t>(rank)] = DataParallel::state_digest(net);
  });
  for (const auto& result : ranks) {
    EXPECT_NEAR(result.loss, reference.loss, 1e-6 * std::abs(reference.loss));
    for (const auto& [name, gradient] : reference.gradients) {
      EXPECT_TRUE(torch::allclose(result.gradients.at(name), gradient, 1e-4, 1e-6)) << name;
    }
    // Synchronised BatchNorm: the running statistics of the whole batch.
    for (const auto& [name, buffer] : reference.buffers) {
      EXPECT_TRUE(torch::allclose(result.buffers.at(name).to(torch::kFloat64), buffer.to(torch::kFloat64), 1e-5, 1e-6)) << name;
    }
  }
  EXPECT_EQ(digests[0], digests[1]);
}

TEST(DataParallel, RanksWithDifferentJobsOrModelsAreNamed) {
  const int port = vt::distributed::free_port("127.0.0.1");
  std::vector<std::string> messages(2);
  on_ranks(2, [&](int rank) {
    DataParallel parallel(ProcessGroup::create(group_options(rank, 2, port)), {});
    SmallNet net;
    try {
      parallel.start(net, net.trainable(), {{"training", {{"batch_size", rank == 0 ? 4 : 8}}}});
    } catch (const vt::Error& error) {
      messages[static_cast<size_t>(rank)] = error.what();
      EXPECT_EQ(error.code(), vt::ErrorCode::Distributed);
    }
  });
  for (const auto& message : messages) {
    EXPECT_NE(message.find("training.batch_size is 4 on rank 0 but 8 on rank 1"), std::string::npos) << message;
  }

  const int second_port = vt::distributed::free_port("127.0.0.1");
  on_ranks(2, [&](int rank) {
    DataParallel parallel(ProcessGroup::create(group_options(rank, 2, second_port)), {});
    SmallNet net;
    auto trainable = net.trainable();
    if (rank == 1) trainable[4].second = torch::zeros({5, 6}, torch::requires_grad());  // head.weight
    vt_test::expect_error([&] { parallel.start(net, trainable, {}); }, {"head.weight [4, 6] on rank 0 but head.weight [5, 6] on rank 1"});
  });
}

}  // namespace
