#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <regex>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_config.h"
#include "io/safetensors.h"

namespace vt {

namespace fs = std::filesystem;

namespace {

const char* kStateFile = "trainer_state.json";

void sync_directory(const fs::path& directory) {
  int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

void save_checkpoint(const std::string& directory, PretrainedModel& model, const Optimizer& optimizer, const nlohmann::json& trainer_state,
                     const std::vector<torch::Tensor>& generator_states) {
  ErrorScope errors(ErrorCode::Io);
  const fs::path target = fs::absolute(directory);
  const fs::path parent = target.parent_path();
  fs::create_directories(parent);
  remove_stale_temporaries(parent.string());  // folders of checkpoints whose writer was killed
  const fs::path temp = parent / ("." + target.filename().string() + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(temp);
  fs::create_directories(temp);
  try {
    model.save(temp.string());
    save_safetensors((temp / "optimizer.safetensors").string(), optimizer.state(), {{"steps", std::to_string(optimizer.steps())}});
    TensorMap generators;
    if (generator_states.empty()) {
      auto generator = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(generator.mutex());
      generators["cpu"] = generator.get_state();
    } else {
      generators["cpu"] = generator_states[0];
      for (size_t rank = 1; rank < generator_states.size(); ++rank) generators["cpu." + std::to_string(rank)] = generator_states[rank];
    }
    save_safetensors((temp / "rng_state.safetensors").string(), generators);
    // The state file last: a directory without it is not a checkpoint.
    write_json_file((temp / kStateFile).string(), trainer_state);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(temp, ignored);
    throw;
  }
  // Swap into place; an older checkpoint of the same step is replaced only once the new one is whole.
  const fs::path old = parent / ("." + target.filename().string() + ".old-" + std::to_string(::getpid()));
  if (fs::exists(target)) fs::rename(target, old);
  fs::rename(temp, target);
  sync_directory(parent);
  std::error_code ignored;
  fs::remove_all(old, ignored);
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
