// HuggingFace image processors, following transformers 4.31:
//   image_processing_utils.get_size_dict, image_transforms.get_resize_output_image_size /
//   resize (PIL) / center_crop / rescale / normalize, and the preprocess() of the processor
//   classes (ViT, DeiT, BEiT, SegFormer, ConvNeXt, CLIP, BiT, DETR, MaskFormer family).
//
// Arithmetic that matters for bit parity:
// - resizing happens on uint8 pixels through PIL (here: resize_image, Pillow-exact);
// - rescale multiplies the uint8 value by rescale_factor in float64 (numpy promotes
//   uint8 * Python float to float64) and casts the product to float32;
// - normalize casts mean and std to float32 and computes (x - mean) / std in float32.
#include "data/image_processor.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "common/error.h"

namespace vt {
namespace {

using nlohmann::json;

constexpr const char* kFile = "preprocessor_config.json";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Processor classes (ImageProcessor spelling) whose integer "size" means the shortest edge
// (get_size_dict(..., default_to_square=False) in their __init__).
bool size_int_is_shortest_edge(const std::string& type) {
  static const std::set<std::string> kTypes = {
      "ConvNextImageProcessor",    "CLIPImageProcessor",        "ChineseCLIPImageProcessor",     "BitImageProcessor",
      "MobileNetV1ImageProcessor", "MobileNetV2ImageProcessor", "MobileViTImageProcessor",       "LevitImageProcessor",
      "PoolFormerImageProcessor",  "DetrImageProcessor",        "ConditionalDetrImageProcessor", "DeformableDetrImageProcessor",
      "YolosImageProcessor",       "MaskFormerImageProcessor",  "Mask2FormerImageProcessor",     "OneFormerImageProcessor",
      "ViTHybridImageProcessor"};
  return kTypes.count(type) > 0;
}

// Processor classes with a do_center_crop step (their default is usually true, so to_json must
// write a false value out instead of leaving it to the class default).
bool has_center_crop_step(const std::string& type) {
  static const std::set<std::string> kTypes = {"DeiTImageProcessor",       "BeitImageProcessor",        "Data2VecVisionImageProcessor",
                                               "CLIPImageProcessor",       "ChineseCLIPImageProcessor", "BitImageProcessor",
                                               "ViTHybridImageProcessor",  "MobileNetV1ImageProcessor", "MobileNetV2ImageProcessor",
                                               "MobileViTImageProcessor",  "LevitImageProcessor",       "EfficientFormerImageProcessor",
                                               "PoolFormerImageProcessor", "FlavaImageProcessor"};
  return kTypes.count(type) > 0;
}

// Classes whose preprocess() differs from every rule implemented here (their own resize
// formulas, channel flips): processing with them is refused rather than silently different.
const char* unsupported_reason(const std::string& type) {
  if (type == "LevitImageProcessor") return "its resize rule (shortest_edge * 256 / 224) is not implemented";
  if (type == "PoolFormerImageProcessor") return "its crop_pct resize rule is not implemented";
  if (type == "MobileViTImageProcessor") return "its BGR channel flip is not implemented";
  if (type == "YolosImageProcessor") return "its resize rule is not implemented";
  return nullptr;
}

bool is_convnext(const std::string& type) { return type == "ConvNextImageProcessor"; }

bool is_detr_family(const std::string& type) {
  return type == "DetrImageProcessor" || type == "ConditionalDetrImageProcessor" || type == "DeformableDetrImageProcessor";
}

bool is_maskformer_family(const std::string& type) {
  return type == "MaskFormerImageProcessor" || type == "Mask2FormerImageProcessor" || type == "OneFormerImageProcessor";
}

// Default "resample" of processor classes whose default is not BILINEAR (used only when the
// file omits the field; save_pretrained always writes it).
Resample default_resample(const std::string& type) {
  static const std::set<std::string> kBicubic = {
      "DeiTImageProcessor",       "BeitImageProcessor",      "CLIPImageProcessor",  "ChineseCLIPImageProcessor",
      "BitImageProcessor",        "ViTHybridImageProcessor", "LevitImageProcessor", "EfficientFormerImageProcessor",
      "PoolFormerImageProcessor", "BlipImageProcessor"};
  return kBicubic.count(type) ? Resample::Bicubic : Resample::Bilinear;
}

[[noreturn]] void bad_field(const std::string& field, const std::string& what, const json& value) {
  fail(kFile, ": ", field, " must be ", what, ", got ", value.dump());
}

bool read_bool(const json& j, const std::string& key, bool fallback) {
  if (!j.contains(key)) return fallback;
  const json& v = j.at(key);
  if (v.is_null()) return false;  // transformers keeps None, which preprocess() treats as false
  if (!v.is_boolean()) bad_field(key, "a boolean", v);
  return v.get<bool>();
}

int positive_int(const json& v, const std::string& field) {
  if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > (int64_t{1} << 30)) {
    bad_field(field, "a positive integer", v);
  }
  return static_cast<int>(v.get<int64_t>());
}

double read_number(const json& v, const std::string& field) {
  if (!v.is_number()) bad_field(field, "a number", v);
  const double d = v.get<double>();
  if (!std::isfinite(d)) bad_field(field, "a finite number", v);
  return d;
}

std::vector<double> read_number_list(const json& v, const std::string& field) {
  if (v.is_number()) return {read_number(v, field)};
  if (!v.is_array() || v.empty()) bad_field(field, "a list of numbers", v);
  std::vector<double> out;
  for (const json& item : v) {
    if (!item.is_number()) bad_field(field, "a list of numbers", v);
    out.push_back(read_number(item, field));
  }
  return out;
}

struct SizeDict {
  std::optional<int> height, width, shortest_edge, longest_edge;
};

// A side the processor resizes to: a positive integer no larger than 16384 pixels (one image of
// 16384 x 16384 is already 3 GiB as float pixels; larger would run memory out at preprocess).
int side_length(const json& v, const std::string& field) {
  constexpr int64_t kMaxSide = 16384;
  if (v.is_number_integer() && v.get<int64_t>() > kMaxSide) bad_field(field, "a side of at most 16384 pixels", v);
  return positive_int(v, field);
}

// get_size_dict: a dict is taken as is (and must have a valid key set); an int is
// {height: s, width: s} or {shortest_edge: s} (+ longest_edge from a legacy max_size); a
// 2-list is (height, width).
SizeDict read_size(const json& v, const std::string& field, bool int_is_shortest_edge, std::optional<int> legacy_max_size) {
  SizeDict s;
  if (v.is_number_integer()) {
    const int n = side_length(v, field);
    if (int_is_shortest_edge) {
      s.shortest_edge = n;
      s.longest_edge = legacy_max_size;
    } else {
      s.height = s.width = n;
    }
    return s;
  }
  if (v.is_array()) {
    if (v.size() != 2) bad_field(field, "an integer, a [height, width] list or a dict", v);
    s.height = side_length(v[0], field + "[0]");
    s.width = side_length(v[1], field + "[1]");
    return s;
  }
  if (!v.is_object()) bad_field(field, "an integer, a [height, width] list or a dict", v);
  std::set<std::string> keys;
  for (auto it = v.begin(); it != v.end(); ++it) {
    const std::string& key = it.key();
    if (it.value().is_null()) continue;
    const int n = side_length(it.value(), field + "." + key);
    if (key == "height")
      s.height = n;
    else if (key == "width")
      s.width = n;
    else if (key == "shortest_edge")
      s.shortest_edge = n;
    else if (key == "longest_edge")
      s.longest_edge = n;
    else
      bad_field(field, "a dict with height/width or shortest_edge[/longest_edge]", v);
    keys.insert(key);
  }
  const bool valid = keys == std::set<std::string>{"height", "width"} || keys == std::set<std::string>{"shortest_edge"} ||
                     keys == std::set<std::string>{"shortest_edge", "longest_edge"};
  if (!valid) {
    bad_field(field, "{height, width}, {shortest_edge} or {shortest_edge, longest_edge}", v);
  }
  return s;
}

std::string canonical_type(const std::string& type) {
  // Legacy feature extractors load as the image processor of the same name (as
  // AutoImageProcessor does).
  const std::string fe = "FeatureExtractor";
  if (ends_with(type, fe)) return type.substr(0, type.size() - fe.size()) + "ImageProcessor";
  return type;
}

// Python's floor division for the center crop offsets.
int floor_div2(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

// A resized side, narrowed to int only once bounded: an image of extreme aspect ratio resized by
// its short side would otherwise overflow.
int resized_side(int64_t side, int width, int height) {
  constexpr int64_t kMaxSide = int64_t{1} << 20;
  VT_CHECK(side <= kMaxSide, "image processor: resizing ", width, "x", height, " gives a side of ", side, " pixels, more than ", kMaxSide);
  return static_cast<int>(side);
}

// transformers.image_transforms.get_resize_output_image_size(..., default_to_square=False):
// the short side becomes `size`, the long side int(size * long / short), capped by max_size.
std::pair<int, int> shortest_edge_size(int height, int width, int size, std::optional<int> max_size) {
  const bool width_short = width <= height;
  const int64_t short_side = width_short ? width : height;
  const int64_t long_side = width_short ? height : width;
  int64_t new_short = size;
  int64_t new_long = static_cast<int64_t>(static_cast<double>(size * long_side) / short_side);
  if (max_size) {
    VT_CHECK(*max_size > size, kFile, ": longest_edge = ", *max_size, " must be greater than shortest_edge = ", size);
    if (new_long > *max_size) {
      new_short = static_cast<int64_t>(static_cast<double>(*max_size * new_short) / new_long);
      new_long = *max_size;
    }
  }
  VT_CHECK(new_short > 0 && new_long > 0, "image processor: resizing ", width, "x", height, " to shortest edge ", size,
           " gives an empty image");
  const int resized_long = resized_side(new_long, width, height), resized_short = resized_side(new_short, width, height);
  return width_short ? std::pair<int, int>(resized_long, resized_short) : std::pair<int, int>(resized_short, resized_long);
}

// DETR's get_size_with_aspect_ratio (transformers 4.31).
std::pair<int, int> detr_size(int height, int width, int size, std::optional<int> max_size) {
  int64_t target = size;
  if (max_size) {
    const double min_original = std::min(height, width);
    const double max_original = std::max(height, width);
    if (max_original / min_original * target > *max_size) {
      // Python's round(): half to even, which nearbyint gives in the default rounding mode.
      target = static_cast<int64_t>(std::nearbyint(*max_size * min_original / max_original));
    }
  }
  if ((height <= width && height == target) || (width <= height && width == target)) {
    return {height, width};
  }
  int64_t oh, ow;
  if (width < height) {
    ow = target;
    oh = static_cast<int64_t>(static_cast<double>(target * height) / width);
  } else {
    oh = target;
    ow = static_cast<int64_t>(static_cast<double>(target * width) / height);
  }
  VT_CHECK(oh > 0 && ow > 0, "image processor: resizing ", width, "x", height, " gives an empty image");
  return {resized_side(oh, width, height), resized_side(ow, width, height)};
}

// transformers.image_transforms.center_crop on uint8 pixels: a crop larger than the image pads
// with zeros, offsets use Python's floor division.
Image center_crop(const Image& image, int crop_height, int crop_width) {
  if (crop_height == image.height && crop_width == image.width) return image;
  const int top = floor_div2(image.height - crop_height);
  const int left = floor_div2(image.width - crop_width);
  const int ch = image.channels;
  Image out;
  out.width = crop_width;
  out.height = crop_height;
  out.channels = ch;
  out.pixels.assign(static_cast<size_t>(crop_width) * crop_height * ch, 0);
  const int x0 = std::max(0, -left);
  const int x1 = std::min(crop_width, image.width - left);
  if (x1 <= x0) return out;
  for (int y = 0; y < crop_height; ++y) {
    const int sy = y + top;
    if (sy < 0 || sy >= image.height) continue;
    std::copy(image.row(sy) + static_cast<size_t>(x0 + left) * ch, image.row(sy) + static_cast<size_t>(x1 + left) * ch,
              out.row(y) + static_cast<size_t>(x0) * ch);
  }
  return out;
}

std::string describe(const torch::Tensor& t) { return str_cat(t.size(0), "x", t.size(1), "x", t.size(2)); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Config

ImageProcessorConfig ImageProcessorConfig::from_json(const json& j) {
  VT_CHECK(j.is_object(), kFile, ": expected a JSON object, got ", j.type_name());
  ImageProcessorConfig c;
  std::set<std::string> consumed;
  auto has = [&](const char* key) {
    consumed.insert(key);
    return j.contains(key) && !j.at(key).is_null();
  };

  if (has("image_processor_type")) {
    if (!j.at("image_processor_type").is_string()) {
      bad_field("image_processor_type", "a string", j.at("image_processor_type"));
    }
    c.processor_type = j.at("image_processor_type").get<std::string>();
  } else if (has("feature_extractor_type")) {
    if (!j.at("feature_extractor_type").is_string()) {
      bad_field("feature_extractor_type", "a string", j.at("feature_extractor_type"));
    }
    c.processor_type = j.at("feature_extractor_type").get<std::string>();
  }
  consumed.insert("feature_extractor_type");
  c.processor_type = canonical_type(c.processor_type);

  consumed.insert("do_resize");
  c.do_resize = read_bool(j, "do_resize", true);

  // Legacy DETR / MaskFormer spellings.
  std::optional<int> legacy_max_size;
  if (has("max_size")) {
    legacy_max_size = positive_int(j.at("max_size"), "max_size");
  } else if (is_detr_family(c.processor_type) || is_maskformer_family(c.processor_type)) {
    legacy_max_size = 1333;  // their __init__ default when "size" is a bare integer
  }
  if (has("size")) {
    const SizeDict s = read_size(j.at("size"), "size", size_int_is_shortest_edge(c.processor_type), legacy_max_size);
    c.size_height = s.height;
    c.size_width = s.width;
    c.shortest_edge = s.shortest_edge;
    c.longest_edge = s.longest_edge;
  } else if (c.do_resize) {
    fail(kFile, ": size is missing (do_resize is true)");
  }

  if (has("resample")) {
    const json& v = j.at("resample");
    if (!v.is_number_integer()) bad_field("resample", "an integer PIL resampling code (0-5)", v);
    try {
      c.resample = resample_from_code(v.get<int>());
    } catch (const Error& e) {
      fail(kFile, ": resample: ", e.what());
    }
  } else {
    c.resample = default_resample(c.processor_type);
  }

  consumed.insert("do_center_crop");
  c.do_center_crop = read_bool(j, "do_center_crop", false);
  if (has("crop_size")) {
    const SizeDict s = read_size(j.at("crop_size"), "crop_size", false, std::nullopt);
    if (!s.height || !s.width) bad_field("crop_size", "{height, width} or an integer", j.at("crop_size"));
    c.crop_height = s.height;
    c.crop_width = s.width;
  }
  if (c.do_center_crop && !c.crop_height) fail(kFile, ": crop_size is missing (do_center_crop is true)");

  if (has("crop_pct")) {
    const double pct = read_number(j.at("crop_pct"), "crop_pct");
    if (!(pct > 0.0)) bad_field("crop_pct", "a positive number", j.at("crop_pct"));
    c.crop_pct = pct;
  } else if (is_convnext(c.processor_type)) {
    c.crop_pct = 224.0 / 256.0;  // ConvNextImageProcessor's default
  }

  consumed.insert("do_rescale");
  c.do_rescale = read_bool(j, "do_rescale", true);
  if (has("rescale_factor")) c.rescale_factor = read_number(j.at("rescale_factor"), "rescale_factor");

  consumed.insert("do_normalize");
  c.do_normalize = read_bool(j, "do_normalize", true);
  if (has("image_mean")) c.image_mean = read_number_list(j.at("image_mean"), "image_mean");
  if (has("image_std")) c.image_std = read_number_list(j.at("image_std"), "image_std");
  for (double s : c.image_std) {
    VT_CHECK(s != 0.0, kFile, ": image_std must not contain 0, got ", j.value("image_std", json()).dump());
  }

  const char* divisor_key = has("size_divisor") ? "size_divisor" : (has("size_divisibility") ? "size_divisibility" : nullptr);
  if (divisor_key) {
    const json& v = j.at(divisor_key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 20)) {
      bad_field(divisor_key, "a non-negative integer", v);
    }
    c.size_divisor = v.get<int>();
  }

  if (c.do_resize) {
    const std::string& t = c.processor_type;
    if (is_convnext(t)) {
      VT_CHECK(c.shortest_edge && !c.longest_edge, kFile, ": ", t, " needs size {shortest_edge}, got ", j.at("size").dump());
    }
  }

  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!consumed.count(it.key())) c.extra[it.key()] = it.value();
  }
  return c;
}

json ImageProcessorConfig::to_json() const {
  json j = extra.is_object() ? extra : json::object();
  if (!processor_type.empty()) j["image_processor_type"] = processor_type;
  j["do_resize"] = do_resize;
  json size = json::object();
  if (size_height) size["height"] = *size_height;
  if (size_width) size["width"] = *size_width;
  if (shortest_edge) size["shortest_edge"] = *shortest_edge;
  if (longest_edge) size["longest_edge"] = *longest_edge;
  if (!size.empty()) j["size"] = size;
  j["resample"] = static_cast<int>(resample);
  if (do_center_crop || crop_height || crop_width || has_center_crop_step(processor_type)) {
    j["do_center_crop"] = do_center_crop;
    if (crop_height && crop_width) j["crop_size"] = {{"height", *crop_height}, {"width", *crop_width}};
  }
  if (crop_pct) j["crop_pct"] = *crop_pct;
  j["do_rescale"] = do_rescale;
  j["rescale_factor"] = rescale_factor;
  j["do_normalize"] = do_normalize;
  auto numbers = [](const std::vector<double>& v) {
    return v.size() == 1 ? json(v[0]) : json(v);  // a single value stays a scalar (broadcast)
  };
  j["image_mean"] = numbers(image_mean);
  j["image_std"] = numbers(image_std);
  // MaskFormer-family classes default to 32, so an explicit 0 must be written too.
  if (size_divisor > 0 || is_maskformer_family(processor_type)) j["size_divisor"] = size_divisor;
  return j;
}

// ---------------------------------------------------------------------------------------------
// Processor

ImageProcessor::ImageProcessor(ImageProcessorConfig config, int channels) : config_(std::move(config)), channels_(channels) {
  VT_CHECK(channels_ == 1 || channels_ == 3 || channels_ == 4, "image processor: the model's num_channels must be 1, 3 or 4, got ",
           channels_);
  if (const char* reason = unsupported_reason(config_.processor_type)) {
    fail(kFile, ": ", config_.processor_type, " is not supported: ", reason);
  }
  auto broadcast = [&](std::vector<double>& v, const char* name) {
    if (v.size() == 1) v.assign(channels_, v[0]);
    VT_CHECK(static_cast<int>(v.size()) == channels_, kFile, ": ", name, " has ", v.size(), " entries but the model has ", channels_,
             " channel", channels_ == 1 ? "" : "s");
  };
  if (config_.do_normalize) {
    broadcast(config_.image_mean, "image_mean");
    broadcast(config_.image_std, "image_std");
  }
  if (config_.do_resize) {
    const auto& c = config_;
    VT_CHECK((c.size_height && c.size_width) || c.shortest_edge, kFile, ": size must give {height, width} or shortest_edge");
    if (is_convnext(c.processor_type)) {
      VT_CHECK(c.shortest_edge, kFile, ": ConvNextImageProcessor needs size {shortest_edge}");
    }
  }
  if (config_.do_center_crop) {
    VT_CHECK(config_.crop_height && config_.crop_width, kFile, ": crop_size is missing (do_center_crop is true)");
  }
  const auto& c = config_;
  tables_.resize(channels_);
  for (int b = 0; b < channels_; ++b) {
    const float mean = c.do_normalize ? static_cast<float>(c.image_mean[b]) : 0.0f;
    const float std = c.do_normalize ? static_cast<float>(c.image_std[b]) : 1.0f;
    for (int v = 0; v < 256; ++v) {
      float x = c.do_rescale ? static_cast<float>(v * c.rescale_factor) : static_cast<float>(v);
      if (c.do_normalize) x = (x - mean) / std;
      tables_[b][v] = x;
    }
  }
}

namespace {

// The geometric steps for one input size: an optional resize to (resize_h, resize_w), then an
// optional center crop to (crop_h, crop_w).
struct Plan {
  bool resize = false;
  int resize_h = 0, resize_w = 0;
  bool crop = false;
  int crop_h = 0, crop_w = 0;
};

Plan make_plan(const ImageProcessorConfig& c, int height, int width) {
  VT_CHECK(height > 0 && width > 0, "image processor: invalid image size ", width, "x", height);
  const std::string& t = c.processor_type;
  Plan p;
  if (c.do_resize) {
    p.resize = true;
    if (is_convnext(t)) {
      // ConvNextImageProcessor.resize: below 384, resize the short side to
      // int(shortest_edge / crop_pct) and center crop a shortest_edge square; else warp.
      const int se = *c.shortest_edge;
      if (se < 384) {
        const double pct = c.crop_pct.value_or(224.0 / 256.0);
        const double scaled = se / pct;
        VT_CHECK(scaled >= 1.0 && scaled < 1e9, kFile, ": shortest_edge / crop_pct = ", scaled, " is not a usable size");
        std::tie(p.resize_h, p.resize_w) = shortest_edge_size(height, width, static_cast<int>(scaled), std::nullopt);
        p.crop = true;
        p.crop_h = p.crop_w = se;
      } else {
        p.resize_h = p.resize_w = se;
      }
    } else if (c.size_height && c.size_width) {
      p.resize_h = *c.size_height;
      p.resize_w = *c.size_width;
    } else if (is_detr_family(t)) {
      std::tie(p.resize_h, p.resize_w) = detr_size(height, width, *c.shortest_edge, c.longest_edge);
    } else {
      std::tie(p.resize_h, p.resize_w) = shortest_edge_size(height, width, *c.shortest_edge, c.longest_edge);
    }
    if (is_maskformer_family(t) && c.size_divisor > 0) {
      const double d = c.size_divisor;
      p.resize_h = resized_side(static_cast<int64_t>(std::ceil(p.resize_h / d) * d), width, height);
      p.resize_w = resized_side(static_cast<int64_t>(std::ceil(p.resize_w / d) * d), width, height);
    }
  }
  if (c.do_center_crop) {
    // A processor-level center crop follows the resize (DeiT, BEiT, CLIP, ...). ConvNeXt has
    // none, so the two crops never stack.
    p.crop = true;
    p.crop_h = *c.crop_height;
    p.crop_w = *c.crop_width;
  }
  return p;
}

}  // namespace

bool ImageProcessor::pads_batches() const { return is_detr_family(config_.processor_type) || is_maskformer_family(config_.processor_type); }

std::pair<int, int> ImageProcessor::output_size(int height, int width) const {
  const Plan p = make_plan(config_, height, width);
  if (p.crop) return {p.crop_h, p.crop_w};
  if (p.resize) return {p.resize_h, p.resize_w};
  return {height, width};
}

Image ImageProcessor::prepare(const Image& input) const { return resize_and_crop(convert_channels(input, channels_), config_.resample); }

Image ImageProcessor::resize_and_crop(Image image, Resample filter) const {
  const Plan p = make_plan(config_, image.height, image.width);
  if (p.resize) image = resize_image(image, p.resize_w, p.resize_h, filter);
  if (p.crop) image = center_crop(image, p.crop_h, p.crop_w);
  return image;
}

torch::Tensor ImageProcessor::normalize(const Image& prepared) const {
  torch::Tensor out = torch::empty({prepared.channels, prepared.height, prepared.width}, torch::kFloat32);
  normalize_into(prepared, out.data_ptr<float>());
  return out;
}

void ImageProcessor::normalize_into(const Image& prepared, float* out) const {
  const int ch = prepared.channels;
  VT_CHECK(ch == channels_, "image processor: normalize expects ", channels_, "-channel images, got ", ch);
  VT_CHECK(prepared.pixels.size() == static_cast<size_t>(prepared.width) * prepared.height * ch, "image processor: ", prepared.width, "x",
           prepared.height, "x", ch, " image has ", prepared.pixels.size(), " bytes");
  const int64_t plane = static_cast<int64_t>(prepared.width) * prepared.height;
  for (int b = 0; b < ch; ++b) {
    const float* table = tables_[b].data();
    const uint8_t* src = prepared.pixels.data() + b;
    float* plane_out = out + b * plane;
    for (int64_t i = 0; i < plane; ++i) plane_out[i] = table[src[i * ch]];
  }
}

torch::Tensor ImageProcessor::process(const Image& input) const { return normalize(prepare(input)); }

torch::Tensor ImageProcessor::process_batch(const std::vector<Image>& images) const {
  VT_CHECK(!images.empty(), "image processor: empty batch");
  std::vector<torch::Tensor> tensors;
  tensors.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    try {
      tensors.push_back(process(images[i]));
    } catch (const Error& e) {
      fail("image ", i, ": ", e.what());
    }
    if (i > 0 && !tensors[i].sizes().equals(tensors[0].sizes())) {
      fail("image processor: image ", i, " (", images[i].width, "x", images[i].height, ") comes out as ", describe(tensors[i]),
           " (CxHxW) but image 0 (", images[0].width, "x", images[0].height, ") as ", describe(tensors[0]),
           "; this processor does not produce a fixed size, so such images cannot share a batch");
    }
  }
  return torch::stack(tensors);
}

}  // namespace vt
