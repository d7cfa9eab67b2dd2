#include "pretrained/registry.h"

#include "common/error.h"
#include "models/convnext.h"
#include "models/detr.h"
#include "models/mask2former.h"
#include "models/resnet.h"
#include "models/segformer.h"
#include "models/swin.h"
#include "models/vit.h"

namespace vt {

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> table = {
      {"ViTForImageClassification",
       "vit",
       find_task("classification"),
       {"google/vit-base-patch16-224", "google/vit-base-patch32-384", "google/vit-large-patch16-224"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<vit::ViTForImageClassification>(vit::ViTConfig::from_json(config, source));
       }},
      {"ViTModel",
       "vit",
       nullptr,
       {"google/vit-base-patch16-224-in21k", "google/vit-large-patch16-224-in21k"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<vit::ViTModel>(vit::ViTConfig::from_json(config, source));
       }},
      {"ResNetForImageClassification",
       "resnet",
       find_task("classification"),
       {"microsoft/resnet-50", "microsoft/resnet-18", "microsoft/resnet-34", "microsoft/resnet-101", "microsoft/resnet-152"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<resnet::ResNetForImageClassification>(resnet::ResNetConfig::from_json(config, source));
       }},
      {"ResNetModel",
       "resnet",
       nullptr,
       {"microsoft/resnet-50"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<resnet::ResNetModel>(resnet::ResNetConfig::from_json(config, source));
       }},
      {"ConvNextForImageClassification",
       "convnext",
       find_task("classification"),
       {"facebook/convnext-tiny-224", "facebook/convnext-small-224", "facebook/convnext-base-224", "facebook/convnext-large-224"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<convnext::ConvNextForImageClassification>(convnext::ConvNextConfig::from_json(config, source));
       }},
      {"ConvNextModel",
       "convnext",
       nullptr,
       {"facebook/convnext-tiny-224"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<convnext::ConvNextModel>(convnext::ConvNextConfig::from_json(config, source));
       }},
      {"SwinForImageClassification",
       "swin",
       find_task("classification"),
       {"microsoft/swin-tiny-patch4-window7-224", "microsoft/swin-small-patch4-window7-224", "microsoft/swin-base-patch4-window7-224",
        "microsoft/swin-large-patch4-window7-224"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<swin::SwinForImageClassification>(swin::SwinConfig::from_json(config, source));
       }},
      {"SwinModel",
       "swin",
       nullptr,
       {"microsoft/swin-tiny-patch4-window7-224"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<swin::SwinModel>(swin::SwinConfig::from_json(config, source));
       }},
      {"DetrForObjectDetection",
       "detr",
       find_task("object_detection"),
       {"facebook/detr-resnet-50", "facebook/detr-resnet-101", "facebook/detr-resnet-50-dc5"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<detr::DetrForObjectDetection>(detr::DetrConfig::from_json(config, source));
       }},
      {"DetrModel",
       "detr",
       nullptr,
       {"facebook/detr-resnet-50"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<detr::DetrForObjectDetection>(detr::DetrConfig::from_json(config, source), false);
       }},
      {"TableTransformerModel",
       "table-transformer",
       nullptr,
       {"microsoft/table-transformer-detection"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<detr::DetrForObjectDetection>(detr::DetrConfig::from_json(config, source), false);
       }},
      {"TableTransformerForObjectDetection",
       "table-transformer",
       find_task("object_detection"),
       {"microsoft/table-transformer-detection", "microsoft/table-transformer-structure-recognition"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<detr::DetrForObjectDetection>(detr::DetrConfig::from_json(config, source));
       }},
      {"SegformerForSemanticSegmentation",
       "segformer",
       find_task("segmentation"),
       {"nvidia/segformer-b0-finetuned-ade-512-512", "nvidia/segformer-b2-finetuned-ade-512-512",
        "nvidia/segformer-b0-finetuned-cityscapes-1024-1024"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<segformer::SegformerForSemanticSegmentation>(segformer::SegformerConfig::from_json(config, source));
       }},
      {"Mask2FormerForUniversalSegmentation",
       "mask2former",
       find_task("segmentation"),
       {"facebook/mask2former-swin-tiny-coco-instance", "facebook/mask2former-swin-tiny-coco-panoptic",
        "facebook/mask2former-swin-tiny-ade-semantic", "facebook/mask2former-swin-small-coco-instance",
        "facebook/mask2former-swin-base-coco-panoptic", "facebook/mask2former-swin-large-cityscapes-semantic"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<mask2former::Mask2FormerForUniversalSegmentation>(
             mask2former::Mask2FormerConfig::from_json(config, source));
       }},
      {"Mask2FormerModel",
       "mask2former",
       nullptr,
       {"facebook/mask2former-swin-tiny-coco-instance"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<mask2former::Mask2FormerModel>(mask2former::Mask2FormerConfig::from_json(config, source));
       }},
      {"SegformerModel",
       "segformer",
       nullptr,
       {"nvidia/mit-b0", "nvidia/mit-b2"},
       [](const nlohmann::json& config, const std::string& source) -> std::shared_ptr<VisionModule> {
         return std::make_shared<segformer::SegformerModel>(segformer::SegformerConfig::from_json(config, source));
       }},
  };
  return table;
}

const Architecture* find_architecture(const std::string& name) {
  for (const auto& architecture : architectures()) {
    if (architecture.name == name) return &architecture;
  }
  return nullptr;
}

namespace {

std::string supported_names() {
  std::string names;
  for (const auto& architecture : architectures()) names += (names.empty() ? "" : ", ") + architecture.name;
  return names;
}

const Architecture* task_class_of_family(const std::string& model_type, Task task) {
  for (const auto& architecture : architectures()) {
    if (architecture.model_type == model_type && architecture.task == task) return &architecture;
  }
  return nullptr;
}

}  // namespace

const Architecture& select_architecture(const nlohmann::json& config, Task task, bool want_head, const std::string& source) {
  std::string declared;
  if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty() &&
      config["architectures"][0].is_string()) {
    declared = config["architectures"][0].get<std::string>();
  }
  std::string model_type;
  if (config.contains("model_type") && config["model_type"].is_string()) {
    model_type = config["model_type"].get<std::string>();
  }
  const Architecture* architecture = declared.empty() ? nullptr : find_architecture(declared);
  if (!architecture && !declared.empty() && model_type.empty()) {
    fail(source, ": architecture ", declared, " is not supported (supported: ", supported_names(), ")");
  }
  // A class of another family than model_type says would build a model the file does not describe.
  VT_CHECK(!architecture || model_type.empty() || architecture->model_type == model_type, source, ": architectures names ", declared,
           " (model_type \"", architecture ? architecture->model_type : std::string(), "\") but model_type is \"", model_type,
           "\"; the two must agree");
  if (architecture) model_type = architecture->model_type;
  if (model_type.empty()) fail(source, ": neither \"architectures\" nor \"model_type\" says what model this is");

  if (architecture && architecture->task == task) return *architecture;
  if (architecture && !architecture->task && !want_head) return *architecture;
  if (const Architecture* task_class = task_class_of_family(model_type, task)) return *task_class;
  fail(source, ": no ", task->name, " model for model_type \"", model_type, "\"",
       declared.empty() ? std::string() : " (checkpoint class " + declared + ")", "; supported architectures: ", supported_names());
}

}  // namespace vt
