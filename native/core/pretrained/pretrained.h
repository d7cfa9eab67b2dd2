// A loaded model as users see it: the module, its config.json and image processor, device and
// dtype, and the operations of the public VisionModel (forward, stateDict, preprocess, predict,
// save). Thread-safe: calls on one model are serialised by its mutex.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/tensor_map.h"
#include "data/image_processor.h"
#include "io/image.h"
#include "nn/module.h"
#include "pretrained/registry.h"
#include "pretrained/weights.h"
#include "runtime/inference_team.h"
#include "tasks/task.h"

namespace vt {

struct DirectoryContents;

struct LoadOptions {
  // Holds config.json, and the weights when pretrained; or a TorchScript archive (a .pt file, or
  // a directory with model.pt whose config.json, if any, says TorchScriptModule).
  std::string directory;
  Task task = find_task("classification");
  bool pretrained = true;
  std::optional<int64_t> num_classes;
  std::optional<std::map<int64_t, std::string>> id2label;
  std::optional<int64_t> image_size;
  std::optional<int64_t> channels;
  bool ignore_mismatched_sizes = false;
  std::string dtype = "float32";       // float32 | bfloat16 | float16
  std::string device = "auto";         // auto | cpu | cuda | cuda:N
  std::optional<uint64_t> seed;        // random initialisation seed (pretrained: false, new heads)
  std::string memory_format = "auto";  // auto (the model's preference on CPU) | contiguous | channels_last
  std::string quantization = "none";   // none | int8 (dynamic int8 linear layers, CPU float32 inference)
};

class PretrainedModel {
 public:
  static std::shared_ptr<PretrainedModel> load(const LoadOptions& options);

  const std::string& architecture() const { return architecture_; }
  Task task() const { return task_; }
  // Batches are padded to their largest image, with a pixel_mask: predictions depend on the batch.
  bool pads_batches() const { return task_->pads_batches || processor_->pads_batches(); }
  // Labels of the kind this model's task takes: per-image targets only for detection and
  // Mask2Former (throws naming labels otherwise, rather than ignoring them).
  void check_label_kind(const ModelInputs& inputs) const;
  const std::vector<std::string>& labels() const { return labels_; }
  std::string device_name() const;
  torch::ScalarType dtype() const { return dtype_; }
  const LoadReport& load_report() const { return report_; }
  const nlohmann::json& config() const { return config_; }
  const ImageProcessor& processor() const { return *processor_; }
  std::shared_ptr<const ImageProcessor> shared_processor() const { return processor_; }
  torch::Device device() const { return device_; }
  torch::MemoryFormat memory_format() const { return memory_format_; }
  const std::string& quantization() const { return quantization_; }
  std::shared_ptr<VisionModule> module() const { return module_; }
  std::mutex& mutex() { return mutex_; }

  // Evaluation-mode forward without autograd; inputs are moved to the model's device and dtype.
  ModelOutputs forward(const ModelInputs& inputs);
  // forward(), when passes over these inputs' shape were found small (see InferenceTeam: one
  // thread, under a millisecond) and no other thread holds the model; nullopt otherwise. The
  // addon runs such passes on the calling thread: handing them to the compute thread and back
  // cost more than their work.
  std::optional<ModelOutputs> forward_if_small(const ModelInputs& inputs);
  // Parameters and buffers under HuggingFace's keys, as contiguous CPU copies.
  TensorMap state_dict();
  // The image processor's output for these images: pixel_values [B, C, H, W] float32, and for
  // detection models (DetrImageProcessor) images padded to the largest with pixel_mask [B, H, W].
  struct Preprocessed {
    torch::Tensor pixel_values;
    torch::Tensor pixel_mask;  // undefined unless padded
  };
  Preprocessed preprocess(const std::vector<Image>& images) const;
  // The task's predictions for these images (its entry's post-processing of one forward pass).
  std::vector<Prediction> predict(const std::vector<Image>& images, const PredictOptions& options);
  // config.json + model.safetensors + preprocessor_config.json (+ model.pt for TorchScript),
  // all or nothing: a kill at any point leaves the old model or the new one in `directory`. Its
  // other entries (a trainer's checkpoints) are kept.
  void save(const std::string& directory);
  // The files save() writes, into an existing folder (a checkpoint being assembled).
  void write_files(const std::string& directory);
  // The names of those files, config.json (which makes a folder a model) last.
  static const DirectoryContents& saved_files();

  // Names the classes (a dataset's): id2label and label2id of config.json follow. The count must
  // equal the head's.
  void set_labels(const std::vector<std::string>& labels);
  // Replaces every parameter and buffer with `state` (a checkpoint of this same model); errors
  // name missing or mis-shaped keys.
  void load_state(const TensorMap& state, const std::string& source);
  // What save() wrote in `directory` from this same model (a data-parallel run's rank 0): its
  // weights and class names, into this model.
  void load_saved(const std::string& directory);

 private:
  PretrainedModel() = default;
  void load_architecture(const LoadOptions& options);
  void load_torchscript(const LoadOptions& options, const std::filesystem::path& archive);
  void quantize(const std::string& quantization);
  std::string directory_;  // where config.json and preprocessor_config.json are looked for
  std::string architecture_;
  Task task_ = nullptr;
  std::vector<std::string> labels_;
  nlohmann::json config_;
  std::shared_ptr<ImageProcessor> processor_;
  std::shared_ptr<VisionModule> module_;
  torch::Device device_{torch::kCPU};
  torch::ScalarType dtype_ = torch::kFloat32;
  torch::MemoryFormat memory_format_ = torch::MemoryFormat::Contiguous;
  std::string quantization_ = "none";
  LoadReport report_;
  InferenceTeam inference_team_;  // per input shape: whether passes are small enough for one thread
  std::mutex mutex_;
};

// "float32" <-> torch::kFloat32 etc. for the dtypes models run in.
torch::ScalarType model_dtype_from_name(const std::string& name);
std::string dtype_name(torch::ScalarType type);  // the contract's names: float32, bfloat16, int64, ...
torch::Device device_from_name(const std::string& name);

}  // namespace vt
