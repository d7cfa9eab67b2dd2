#include "pretrained/pretrained.h"

#include <algorithm>
#include <filesystem>

#include <ATen/CPUGeneratorImpl.h>

#include "common/atomic_file.h"
#include "common/directory_transaction.h"
#include "common/error.h"
#include "common/json_config.h"
#include "data/detection.h"
#include "io/safetensors.h"
#include "models/torchscript.h"
#include "nn/layers.h"
#include "runtime/memory_sizing.h"
#include "runtime/threads.h"

namespace vt {

namespace fs = std::filesystem;

torch::ScalarType model_dtype_from_name(const std::string& name) {
  if (name == "float32") return torch::kFloat32;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  fail("unsupported dtype \"", name, "\" (expected float32, bfloat16 or float16)");
}

std::string dtype_name(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return "float32";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat64: return "float64";
    case torch::kInt64: return "int64";
    case torch::kInt32: return "int32";
    case torch::kUInt8: return "uint8";
    case torch::kBool: return "bool";
    default: fail("tensor dtype ", type, " has no name in this API");
  }
}

torch::Device device_from_name(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) fail_with(ErrorCode::Unsupported, "device \"", name, "\" requested, but CUDA is not available here");
    torch::Device device(name);
    VT_CHECK(device.index() < static_cast<int>(torch::cuda::device_count()), "device \"", name, "\": only ", torch::cuda::device_count(),
             " CUDA device(s) present");
    return device;
  }
  fail("unsupported device \"", name, "\" (expected auto, cpu, cuda or cuda:N)");
}

namespace {

// Module::to(dtype) would also convert integer buffers (BatchNorm's num_batches_tracked);
// like PyTorch's Module.to, only floating-point tensors change dtype.
void move_module(torch::nn::Module& module, torch::Device device, torch::ScalarType dtype, torch::MemoryFormat memory_format) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters()) {
    auto target = parameter.is_floating_point() ? dtype : parameter.scalar_type();
    if (parameter.device() != device || parameter.scalar_type() != target) parameter.set_data(parameter.to(device, target));
    // Convolution weights follow the activations' layout.
    if (parameter.dim() == 4 && !parameter.is_contiguous(memory_format)) parameter.set_data(parameter.contiguous(memory_format));
  }
  for (auto& buffer : module.buffers()) {
    auto target = buffer.is_floating_point() ? dtype : buffer.scalar_type();
    if (buffer.device() != device || buffer.scalar_type() != target) buffer.set_data(buffer.to(device, target));
  }
}

// Each class costs a few hundred bytes as names (id2label, label2id and the map behind them);
// ten million classes would run out of memory before any weight is built.
void check_labels_fit(int64_t num_classes, const std::string& field) {
  constexpr size_t kBytesPerLabel = 512;
  if (num_classes <= 0) return;  // not a count: reading the config names it
  const size_t available = available_memory();
  if (static_cast<size_t>(num_classes) > available / kBytesPerLabel) {
    const double needed = static_cast<double>(num_classes) * kBytesPerLabel;
    fail_with(ErrorCode::OutOfMemory, field, " ", num_classes, ": the class names alone (id2label, label2id) need about ",
              needed < 1e19 ? format_bytes(static_cast<size_t>(needed)) : std::string("more than 8 EiB"), ", more than the ",
              format_bytes(available), " of memory available");
  }
}

// The largest sizes config.json gives (top-level integers, integer lists by their sum, and
// id2label as num_labels), largest first: what to look at when a model does not fit.
std::string largest_sizes(const nlohmann::json& config) {
  std::vector<std::pair<double, std::string>> sizes;
  for (const auto& [key, value] : config.items()) {
    const bool identifier = key.size() > 3 && (key.compare(key.size() - 3, 3, "_id") == 0 || key.compare(key.size() - 4, 4, "_ids") == 0);
    if (identifier) continue;
    if (value.is_number_integer() && value.get<double>() > 1) sizes.emplace_back(value.get<double>(), key + " = " + value.dump());
    if (value.is_array() && !value.empty() &&
        std::all_of(value.begin(), value.end(), [](const auto& v) { return v.is_number_integer(); })) {
      double sum = 0;
      for (const auto& v : value) sum += v.template get<double>();
      sizes.emplace_back(sum, key + " = " + value.dump());
    }
  }
  if (config.contains("id2label") && config["id2label"].is_object()) {
    const auto labels = config["id2label"].size();
    sizes.emplace_back(static_cast<double>(labels), "num_labels = " + std::to_string(labels));
  }
  std::sort(sizes.begin(), sizes.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::string named;
  for (size_t i = 0; i < sizes.size() && i < 3; ++i) named += (i ? ", " : "") + sizes[i].second;
  return named;
}

// Builds `architecture` from `config` under a SizingPass: refused, with the estimate and the
// sizes that make it, when its parameters and buffers would not fit in the memory available.
void check_model_fits(const Architecture& architecture, const nlohmann::json& config, const std::string& source) {
  const size_t available = available_memory();
  // The random draws of the sizing build are given back: seeded initialisation stays as it was.
  auto generator = at::detail::getDefaultCPUGenerator();
  const auto random_state = generator.get_state();
  SizingPass sizing(available);
  try {
    layers::DeferredInitialisation deferred;
    architecture.build(config, source);
  } catch (const std::exception&) {
    // Stopped past the limit; or a constructor that needs real values, which the real build
    // then runs as before.
  }
  generator.set_state(random_state);
  if (!sizing.limit_reached()) return;
  fail_with(ErrorCode::OutOfMemory, architecture.name, " as configured in ", source, " would need ",
            sizing.complete() ? "an estimated " : "more than ", format_bytes(sizing.peak_bytes()),
            " for its parameters and buffers, more than the ", format_bytes(available),
            " of memory available (its largest sizes: ", largest_sizes(config), ")");
}

nlohmann::json id2label_json(const std::map<int64_t, std::string>& id2label) {
  nlohmann::json json = nlohmann::json::object();
  for (const auto& [index, label] : id2label) json[std::to_string(index)] = label;
  return json;
}

// Applies the ModelConfig overrides to config.json's content, as from_pretrained's kwargs do.
void apply_overrides(nlohmann::json& config, const LoadOptions& options, const std::string& source) {
  if (options.num_classes || options.id2label) {
    std::map<int64_t, std::string> id2label;
    if (options.id2label) {
      id2label = *options.id2label;
      VT_CHECK(!options.num_classes || static_cast<int64_t>(id2label.size()) == *options.num_classes, "id2label has ", id2label.size(),
               " entries but num_classes is ", *options.num_classes);
    } else {
      HeadConfig existing = HeadConfig::from_json(config, source);
      if (existing.num_labels() == *options.num_classes) {
        id2label = existing.id2label;
      } else {
        check_labels_fit(*options.num_classes, "num_classes");
        for (int64_t i = 0; i < *options.num_classes; ++i) id2label[i] = "LABEL_" + std::to_string(i);
      }
    }
    config["id2label"] = id2label_json(id2label);
    nlohmann::json label2id = nlohmann::json::object();
    for (const auto& [index, label] : id2label) label2id[label] = index;
    config["label2id"] = label2id;
    config.erase("num_labels");
  }
  if (options.image_size) config["image_size"] = *options.image_size;
  if (options.channels) config["num_channels"] = *options.channels;
}

// The processor of the directory, or transformers' defaults for the model's input size, with
// the size and channel overrides applied.
ImageProcessorConfig processor_config_for(const std::string& directory, const nlohmann::json& config, const LoadOptions& options,
                                          int64_t channels) {
  const fs::path path = fs::path(directory) / "preprocessor_config.json";
  ImageProcessorConfig processor;
  if (fs::is_regular_file(path)) {
    processor = ImageProcessorConfig::from_json(read_json_file(path.string()));
  } else {
    auto [height, width] = JsonConfig(config, "config.json").get_size_pair("image_size", 224);
    processor.processor_type = "ViTImageProcessor";
    processor.size_height = height;
    processor.size_width = width;
  }
  if (options.image_size) {
    auto [height, width] = JsonConfig(config, "config.json").get_size_pair("image_size", *options.image_size);
    if (processor.shortest_edge) {
      processor.shortest_edge = static_cast<int>(std::min(height, width));
    } else {
      processor.size_height = static_cast<int>(height);
      processor.size_width = static_cast<int>(width);
    }
    if (processor.do_center_crop) {
      processor.crop_height = static_cast<int>(height);
      processor.crop_width = static_cast<int>(width);
    }
  }
  // A channel count other than the processor's: a uniform mean/std carries over, others cannot.
  auto fit = [&](std::vector<double>& values, const char* field) {
    if (static_cast<int64_t>(values.size()) == channels || values.size() == 1) return;
    bool uniform = std::all_of(values.begin(), values.end(), [&](double v) { return v == values.front(); });
    VT_CHECK(uniform && !values.empty(), path.string(), ": ", field, " has ", values.size(), " entries but the model takes ", channels,
             " channels");
    values.assign(static_cast<size_t>(channels), values.front());
  };
  fit(processor.image_mean, "image_mean");
  fit(processor.image_std, "image_std");
  return processor;
}

}  // namespace

namespace {

// The TorchScript archive to load, when `options` names one: a .pt file itself, or a directory
// holding model.pt whose config.json says TorchScriptModule, names no architecture or model type
// (only labels, loss settings), or is absent.
std::optional<fs::path> torchscript_file(const LoadOptions& options) {
  const fs::path path(options.directory);
  if (fs::is_regular_file(path)) return path;
  const fs::path config = path / "config.json";
  const fs::path archive = path / torchscript::kModelFile;
  if (!fs::is_regular_file(archive)) return std::nullopt;
  if (!fs::is_regular_file(config)) return archive;
  const auto json = read_json_file(config.string());
  if (!json.is_object()) return std::nullopt;  // loading it as an architecture names the problem
  const bool declares_nothing = !json.contains("architectures") && !json.contains("model_type");
  const bool scripted = declares_nothing || (json.contains("architectures") && json["architectures"].is_array() &&
                                             !json["architectures"].empty() && json["architectures"][0] == torchscript::kArchitecture);
  return scripted ? std::optional<fs::path>(archive) : std::nullopt;
}

}  // namespace

std::shared_ptr<PretrainedModel> PretrainedModel::load(const LoadOptions& options) {
  apply_compute_threads();
  recover_directory(options.directory, saved_files());  // a save into it that was killed midway
  std::shared_ptr<PretrainedModel> model(new PretrainedModel());
  model->task_ = options.task;
  if (auto archive = torchscript_file(options)) {
    model->load_torchscript(options, *archive);
  } else {
    model->load_architecture(options);
  }
  remove_stale_temporaries(model->directory_);  // of writers into this directory that were killed
  const std::string source = (fs::path(model->directory_) / "config.json").string();
  {
    ErrorScope config_errors(ErrorCode::Config);
    const int64_t channels = JsonConfig(model->config_, source).get_positive_int("num_channels", 3);
    model->processor_ = std::make_shared<ImageProcessor>(processor_config_for(model->directory_, model->config_, options, channels),
                                                         static_cast<int>(channels));
  }

  model->device_ = device_from_name(options.device);
  model->dtype_ = model_dtype_from_name(options.dtype);
  VT_CHECK(!(model->dtype_ == torch::kFloat16 && model->device_.is_cpu()), "dtype float16 needs a CUDA device; on CPU use bfloat16");
  VT_CHECK(options.memory_format == "auto" || options.memory_format == "contiguous" || options.memory_format == "channels_last",
           "memory_format must be auto, contiguous or channels_last, got \"", options.memory_format, "\"");
  const bool channels_last = options.memory_format == "channels_last" ||
                             (options.memory_format == "auto" && model->device_.is_cpu() && model->module_->prefers_channels_last());
  model->memory_format_ = channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  move_module(*model->module_, model->device_, model->dtype_, model->memory_format_);
  model->module_->eval();
  model->quantize(options.quantization);
  return model;
}

void PretrainedModel::quantize(const std::string& quantization) {
  VT_CHECK(quantization == "none" || quantization == "int8", "quantization must be none or int8, got \"", quantization, "\"");
  if (quantization == "none") return;
  VT_CHECK(architecture_ != torchscript::kArchitecture,
           "int8 quantization applies to the built-in architectures, not to TorchScript models");
  VT_CHECK(device_.is_cpu() && dtype_ == torch::kFloat32,
           "int8 quantization runs on CPU in float32: load with device cpu and dtype float32 (got ", device_name(), ", ",
           dtype_name(dtype_), ")");
  if (!kernels::int8_linear_available()) {
    fail_with(ErrorCode::Unsupported, "int8 quantization is not available in this build (it needs oneDNN when building)");
  }
  for (const auto& child : module_->modules()) {
    if (auto* linear = child->as<layers::LinearImpl>()) linear->quantize_int8();
  }
  quantization_ = quantization;
}

void PretrainedModel::load_architecture(const LoadOptions& options) {
  ErrorScope config_errors(ErrorCode::Config);  // reading weights sets its own
  const fs::path directory(options.directory);
  VT_CHECK(fs::is_directory(directory), options.directory, ": not a directory");
  const fs::path config_path = directory / "config.json";
  VT_CHECK(fs::is_regular_file(config_path), options.directory, ": no config.json");
  const std::string source = config_path.string();
  directory_ = options.directory;
  config_ = read_json_file(source);
  VT_CHECK(config_.is_object(), source, ": expected a JSON object");
  apply_overrides(config_, options, source);
  // A num_labels without id2label becomes that many generic class names.
  if (config_.contains("num_labels") && config_["num_labels"].is_number_integer() && !config_.contains("id2label")) {
    check_labels_fit(config_["num_labels"].get<int64_t>(), source + ": num_labels");
  }

  const bool want_head = options.num_classes.has_value() || options.id2label.has_value();
  const Architecture& architecture = select_architecture(config_, options.task, want_head, source);
  architecture_ = architecture.name;
  config_["architectures"] = nlohmann::json::array({architecture.name});
  check_model_fits(architecture, config_, source);

  // Memory can still run out (other processes took it since the sizing): named, not a bare
  // allocator message.
  const auto out_of_memory = [&] {
    fail_with(ErrorCode::OutOfMemory, architecture.name, " as configured in ", source, ": memory ran out while building it (",
              format_bytes(available_memory()), " available now; its largest sizes: ", largest_sizes(config_), ")");
  };
  try {
    if (options.seed) torch::manual_seed(*options.seed);
    if (options.pretrained) {
      std::string weights_source;
      TensorMap checkpoint = read_checkpoint_directory(options.directory, &weights_source);
      // Built without the random initialisation the checkpoint overwrites (most of the load time).
      // Where the checkpoint does not cover every weight (a new head), build again with it, from
      // the same random state, so that seeded new weights come out as they always have.
      auto generator = at::detail::getDefaultCPUGenerator();
      const auto random_state = generator.get_state();
      {
        layers::DeferredInitialisation deferred;
        module_ = architecture.build(config_, source);
      }
      report_ = load_weights(*module_, checkpoint, weights_source, options.ignore_mismatched_sizes);
      if (!report_.initialized.empty() || !report_.mismatched.empty()) {
        generator.set_state(random_state);
        module_.reset();  // one copy of the weights at a time
        module_ = architecture.build(config_, source);
        report_ = load_weights(*module_, checkpoint, weights_source, options.ignore_mismatched_sizes);
      }
    } else {
      module_ = architecture.build(config_, source);
      module_->initialize({}, /*all=*/true);
      report_.source = "random initialisation";
    }
  } catch (const c10::Error& error) {
    module_.reset();
    if (std::string(error.what_without_backtrace()).find("can't allocate memory") == std::string::npos) throw;
    out_of_memory();
  } catch (const std::bad_alloc&) {
    module_.reset();
    out_of_memory();
  }
  if (architecture.task) {
    for (const auto& [index, label] : HeadConfig::from_json(config_, source).id2label) labels_.push_back(label);
  }
}

void PretrainedModel::load_torchscript(const LoadOptions& options, const fs::path& archive) {
  ErrorScope config_errors(ErrorCode::Config);
  VT_CHECK(options.pretrained, archive.string(),
           ": a TorchScript model carries its own weights; pretrained: false has nothing to initialise from");
  directory_ = fs::is_regular_file(options.directory) ? archive.parent_path().string() : options.directory;
  const fs::path config_path = fs::path(options.directory) / "config.json";
  config_ = fs::is_directory(options.directory) && fs::is_regular_file(config_path) ? read_json_file(config_path.string())
                                                                                    : nlohmann::json::object();
  const std::string source = fs::is_regular_file(config_path) ? config_path.string() : archive.string();
  VT_CHECK(config_.is_object(), source, ": expected a JSON object");
  apply_overrides(config_, options, source);
  architecture_ = torchscript::kArchitecture;
  config_["architectures"] = nlohmann::json::array({architecture_});

  std::shared_ptr<torchscript::TorchScriptModule> scripted;
  {
    ErrorScope checkpoint_errors(ErrorCode::Checkpoint);
    scripted = std::make_shared<torchscript::TorchScriptModule>(archive.string(), task_->name, config_, source);
  }
  module_ = scripted;
  report_.source = archive.string();
  if (!config_.contains("id2label")) {
    // No labels given: as many as the module has outputs, found with one forward pass.
    JsonConfig fields(config_, source);
    const auto [height, width] = fields.get_size_pair("image_size", 224);
    torch::NoGradGuard no_grad;
    scripted->eval();
    ModelInputs probe;
    probe.pixel_values = torch::zeros({1, fields.get_positive_int("num_channels", 3), height, width});
    auto logits = find_output(scripted->forward(probe), "logits");
    // Classes per task: [batch, num_labels], [batch, queries, num_labels + "no object"], [batch, num_labels, h, w].
    const int64_t class_dim = task_->labels == LabelsFormat::BoxesPerImage ? 2 : 1;
    VT_CHECK(task_->labels != LabelsFormat::ClassIndices || logits.dim() == 2, archive.string(), ": forward returned logits of shape ",
             logits.sizes(), "; a classification model returns [batch, num_labels]");
    config_["num_labels"] = logits.size(class_dim) - (class_dim == 2 ? 1 : 0);
  }
  for (const auto& [index, label] : HeadConfig::from_json(config_, source).id2label) labels_.push_back(label);
}

std::string PretrainedModel::device_name() const { return device_.str(); }

void PretrainedModel::check_label_kind(const ModelInputs& inputs) const {
  if (inputs.targets.empty()) return;
  ErrorScope errors(ErrorCode::InvalidArgument);
  const bool takes_targets = task_->name == "object_detection" || module_->takes_mask_targets();
  VT_CHECK(takes_targets, "labels: ", architecture_, " (", task_->name,
           ") takes a tensor of class indices or label maps, not one {classLabels, boxes} target per image");
}

namespace {

// Whether every value is finite. For contiguous float32 on CPU one pass that adds x * 0 (NaN for
// a NaN or an infinity): a tiny model's pass took 7% longer with libtorch's five operators.
bool all_finite(const torch::Tensor& values) {
  if (!values.device().is_cpu() || values.scalar_type() != torch::kFloat32 || !values.is_contiguous()) {
    return torch::isfinite(values).all().item<bool>();
  }
  const float* data = values.data_ptr<float>();
  const int64_t count = values.numel();
  float probe = 0.0f;
#pragma omp simd reduction(+ : probe)
  for (int64_t i = 0; i < count; ++i) probe += data[i] * 0.0f;
  return probe == 0.0f;
}

}  // namespace

ModelOutputs PretrainedModel::forward(const ModelInputs& raw_inputs) {
  check_label_kind(raw_inputs);
  if (!raw_inputs.allow_non_finite && raw_inputs.pixel_values.defined() && raw_inputs.pixel_values.is_floating_point()) {
    ErrorScope errors(ErrorCode::InvalidArgument);
    if (!all_finite(raw_inputs.pixel_values)) {
      const auto finite = torch::isfinite(raw_inputs.pixel_values);
      const auto count = finite.numel() - finite.sum().item<int64_t>();
      fail("pixelValues: ", count, " value(s) are NaN or infinite (allowNonFinite: true lets them through)");
    }
  }
  VT_CHECK(!raw_inputs.pixel_values.defined() || raw_inputs.pixel_values.dim() == 0 || raw_inputs.pixel_values.size(0) > 0,
           "pixelValues: the batch is empty (shape ", raw_inputs.pixel_values.sizes(), ")");
  std::lock_guard<std::mutex> lock(mutex_);
  apply_compute_threads();
  c10::InferenceMode inference;
  module_->eval();
  ModelInputs inputs = move_inputs(raw_inputs, device_, dtype_, memory_format_);
  std::optional<InferencePass> pass;
  if (device_.is_cpu())
    pass.emplace(inference_team_, inputs.pixel_values.defined() ? inputs.pixel_values.sizes().vec() : std::vector<int64_t>{});
  ModelOutputs outputs = module_->forward(inputs);
  if (pass) pass->finish();
  for (auto& [name, tensor] : outputs) {
    if (name == "loss" || name.rfind("loss_dict.", 0) == 0) tensor = tensor.to(torch::kFloat32);
  }
  return outputs;
}

std::optional<ModelOutputs> PretrainedModel::forward_if_small(const ModelInputs& inputs) {
  if (!device_.is_cpu() || !adaptive_threads_enabled() || !inputs.pixel_values.defined()) return std::nullopt;
  {
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock() || !inference_team_.small(inputs.pixel_values.sizes().vec())) return std::nullopt;
  }
  return forward(inputs);
}

TensorMap PretrainedModel::state_dict() {
  std::lock_guard<std::mutex> lock(mutex_);
  TensorMap state;
  for (const auto& [key, tensor] : module_->named_state()) {
    state[key] = tensor.detach().to(torch::kCPU).contiguous().clone();
  }
  return state;
}

PretrainedModel::Preprocessed PretrainedModel::preprocess(const std::vector<Image>& images) const {
  VT_CHECK(!images.empty(), "preprocess: no images given");
  if (pads_batches()) {
    DetectionBatch batch = preprocess_detection(images, *processor_);
    return {batch.pixel_values, batch.pixel_mask};
  }
  return {processor_->process_batch(images), {}};
}

std::vector<Prediction> PretrainedModel::predict(const std::vector<Image>& images, const PredictOptions& options) {
  VT_CHECK(!labels_.empty(), architecture_, " has no ", task_->name, " head; load it with num_classes to add one");
  task_->check_options(options);
  Preprocessed batch = preprocess(images);
  ModelInputs inputs;
  inputs.pixel_values = batch.pixel_values;
  inputs.pixel_mask = batch.pixel_mask;
  ModelOutputs outputs = forward(inputs);
  PredictContext context{labels_, config_, {}};
  for (const auto& image : images) context.original_sizes.emplace_back(image.height, image.width);
  return task_->post_process(outputs, context, options);
}

const DirectoryContents& PretrainedModel::saved_files() {
  static const DirectoryContents files{{"model.safetensors", torchscript::kModelFile, "preprocessor_config.json", "config.json"}, true};
  return files;
}

void PretrainedModel::save(const std::string& directory) {
  DirectoryTransaction transaction(directory, saved_files());
  remove_stale_temporaries(directory);
  write_files(transaction.staging());
  transaction.commit();
}

void PretrainedModel::write_files(const std::string& directory) {
  nlohmann::json config = config_;
  config["torch_dtype"] = dtype_name(dtype_);
  TensorMap state = state_dict();
  save_safetensors((fs::path(directory) / "model.safetensors").string(), state, {{"format", "pt"}});
  write_json_file((fs::path(directory) / "preprocessor_config.json").string(), processor_->config().to_json());
  if (auto* scripted = dynamic_cast<torchscript::TorchScriptModule*>(module_.get())) {
    std::lock_guard<std::mutex> lock(mutex_);
    scripted->save((fs::path(directory) / torchscript::kModelFile).string());
  }
  // config.json last: a folder with a config.json is a complete model.
  write_json_file((fs::path(directory) / "config.json").string(), config);
}

}  // namespace vt

namespace vt {

void PretrainedModel::set_labels(const std::vector<std::string>& labels) {
  std::lock_guard<std::mutex> lock(mutex_);
  VT_CHECK(labels.size() == labels_.size(), "the model has ", labels_.size(), " labels but ", labels.size(), " class names were given");
  std::map<int64_t, std::string> id2label;
  for (size_t i = 0; i < labels.size(); ++i) id2label[static_cast<int64_t>(i)] = labels[i];
  config_["id2label"] = id2label_json(id2label);
  nlohmann::json label2id = nlohmann::json::object();
  for (size_t i = 0; i < labels.size(); ++i) label2id[labels[i]] = i;
  config_["label2id"] = label2id;
  labels_ = labels;
}

void PretrainedModel::load_state(const TensorMap& state, const std::string& source) {
  std::lock_guard<std::mutex> lock(mutex_);
  LoadReport report = load_weights(*module_, state, source, /*ignore_mismatched_sizes=*/false);
  VT_CHECK(report.initialized.empty() && report.unexpected.empty() && report.adapted.empty(), source,
           ": does not hold exactly this model's weights (",
           report.initialized.empty() ? (report.unexpected.empty() ? report.adapted.front() : report.unexpected.front())
                                      : report.initialized.front(),
           ")");
}

void PretrainedModel::load_saved(const std::string& directory) {
  ErrorScope errors(ErrorCode::Checkpoint);
  const auto config_path = (std::filesystem::path(directory) / "config.json").string();
  const HeadConfig head = HeadConfig::from_json(read_json_file(config_path), config_path);
  std::vector<std::string> labels;
  for (const auto& [index, label] : head.id2label) labels.push_back(label);
  if (labels.size() == labels_.size()) set_labels(labels);
  const auto weights_path = (std::filesystem::path(directory) / "model.safetensors").string();
  load_state(load_safetensors(weights_path), weights_path);
}

}  // namespace vt
