#include "train/checkpoint.h"

#include <filesystem>
#include <regex>

#include "common/atomic_file.h"
#include "common/directory_transaction.h"
#include "common/error.h"
#include "common/json_config.h"
#include "io/safetensors.h"

namespace vt {

namespace fs = std::filesystem;

namespace {

const char* kStateFile = "trainer_state.json";
// A checkpoint folder is replaced as a whole: nothing of an older one is carried over.
const DirectoryContents kCheckpointContents{{}, false};

}  // namespace

void save_checkpoint(const std::string& directory, PretrainedModel& model, const Optimizer& optimizer, const nlohmann::json& trainer_state,
                     const std::vector<torch::Tensor>& generator_states) {
  ErrorScope errors(ErrorCode::Io);
  const fs::path target = fs::absolute(directory);
  // Folders of checkpoints whose writer an earlier version of this code saw killed.
  remove_stale_temporaries(target.parent_path().string());
  // A checkpoint of the same step is replaced as a whole, and only once the new one is.
  DirectoryTransaction transaction(target.string(), kCheckpointContents);
  const fs::path staging(transaction.staging());
  model.write_files(staging.string());
  save_safetensors((staging / "optimizer.safetensors").string(), optimizer.state(), {{"steps", std::to_string(optimizer.steps())}});
  TensorMap generators;
  if (generator_states.empty()) {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generators["cpu"] = generator.get_state();
  } else {
    generators["cpu"] = generator_states[0];
    for (size_t rank = 1; rank < generator_states.size(); ++rank) generators["cpu." + std::to_string(rank)] = generator_states[rank];
  }
  save_safetensors((staging / "rng_state.safetensors").string(), generators);
  // The state file last: a folder without it is not a checkpoint.
  write_json_file((staging / kStateFile).string(), trainer_state);
  transaction.commit();
}

CheckpointContents load_checkpoint(const std::string& directory) {
  ErrorScope errors(ErrorCode::Checkpoint);
  const fs::path dir(directory);
  for (const char* file : {"config.json", "model.safetensors", "optimizer.safetensors", "rng_state.safetensors", kStateFile}) {
    VT_CHECK(fs::is_regular_file(dir / file), directory, ": not a complete checkpoint (no ", file, ")");
  }
  CheckpointContents contents;
  contents.trainer_state = read_json_file((dir / kStateFile).string());
  VT_CHECK(contents.trainer_state.is_object(), (dir / kStateFile).string(), ": expected a JSON object");
  contents.model = load_safetensors((dir / "model.safetensors").string());
  auto optimizer_file = SafetensorsFile::open((dir / "optimizer.safetensors").string());
  contents.optimizer = optimizer_file->tensors();
  const auto& metadata = optimizer_file->metadata();
  auto steps = metadata.find("steps");
  VT_CHECK(steps != metadata.end(), directory, "/optimizer.safetensors: no \"steps\" in its metadata");
  try {
    contents.optimizer_steps = std::stoll(steps->second);
  } catch (const std::exception&) {
    fail(directory, "/optimizer.safetensors: \"steps\" is not a number");
  }
  auto rng = load_safetensors((dir / "rng_state.safetensors").string());
  VT_CHECK(rng.count("cpu"), directory, "/rng_state.safetensors: no \"cpu\" generator state");
  contents.rng_state = rng.at("cpu").clone();
  contents.rank_rng_states.push_back(contents.rng_state);
  for (size_t rank = 1; rng.count("cpu." + std::to_string(rank)); ++rank) {
    contents.rank_rng_states.push_back(rng.at("cpu." + std::to_string(rank)).clone());
  }
  return contents;
}

std::optional<std::string> find_checkpoint(const std::string& path) {
  ErrorScope errors(ErrorCode::Checkpoint);
  const fs::path dir(path);
  if (fs::is_regular_file(dir / kStateFile)) return dir.string();
  if (!fs::is_directory(dir)) return std::nullopt;
  // Saves of checkpoints that were killed: their folders back as they were before.
  static const std::regex leftover("\\.(checkpoint-\\d+)\\.(saving|replaced)-.*");
  std::vector<std::string> interrupted;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch match;
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, match, leftover)) interrupted.push_back((dir / match[1].str()).string());
  }
  for (const auto& checkpoint : interrupted) recover_directory(checkpoint, kCheckpointContents);
  static const std::regex pattern("checkpoint-(\\d+)");
  std::optional<std::pair<int64_t, std::string>> newest;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch match;
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !std::regex_match(name, match, pattern)) continue;
    if (!fs::is_regular_file(entry.path() / kStateFile)) continue;
    int64_t step = std::stoll(match[1].str());
    if (!newest || step > newest->first) newest = {step, entry.path().string()};
  }
  if (!newest) return std::nullopt;
  return newest->second;
}

}  // namespace vt
