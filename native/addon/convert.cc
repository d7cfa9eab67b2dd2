#include "convert.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "runtime/threads.h"

namespace vt::addon {

namespace {

struct DTypeInfo {
  const char* name;
  torch::ScalarType type;
  napi_typedarray_type array;
};

const DTypeInfo kDTypes[] = {
    {"float32", torch::kFloat32, napi_float32_array},  {"float16", torch::kFloat16, napi_uint16_array},
    {"bfloat16", torch::kBFloat16, napi_uint16_array}, {"int64", torch::kInt64, napi_bigint64_array},
    {"int32", torch::kInt32, napi_int32_array},        {"uint8", torch::kUInt8, napi_uint8_array},
    {"bool", torch::kBool, napi_uint8_array},
};

const char* array_name(napi_typedarray_type type) {
  switch (type) {
    case napi_float32_array: return "Float32Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint8_array: return "Uint8Array";
    default: return "another typed array";
  }
}

[[noreturn]] void type_error(Napi::Env env, const std::string& message) { throw Napi::TypeError::New(env, message); }

}  // namespace

torch::Tensor tensor_from_js(const Napi::Value& value, const std::string& what) {
  Napi::Env env = value.Env();
  if (!value.IsObject()) type_error(env, what + ": expected a tensor {dtype, shape, data}");
  Napi::Object object = value.As<Napi::Object>();
  Napi::Value dtype_value = object.Get("dtype");
  if (!dtype_value.IsString()) type_error(env, what + ".dtype: expected a string");
  std::string dtype = dtype_value.As<Napi::String>();
  const DTypeInfo* info = nullptr;
  for (const auto& candidate : kDTypes) {
    if (dtype == candidate.name) info = &candidate;
  }
  if (!info) {
    type_error(env, what + ".dtype: \"" + dtype + "\" is not one of float32, float16, bfloat16, int64, int32, uint8, bool");
  }
  Napi::Value shape_value = object.Get("shape");
  if (!shape_value.IsArray()) type_error(env, what + ".shape: expected an array of non-negative integers");
  Napi::Array shape_array = shape_value.As<Napi::Array>();
  std::vector<int64_t> shape;
  // The product of the non-zero sizes is bounded too: libtorch multiplies them for strides and
  // storage even when another size is 0.
  constexpr uint64_t kMaxElements = uint64_t{1} << 40;
  uint64_t numel = 1, extent = 1;
  for (uint32_t i = 0; i < shape_array.Length(); ++i) {
    Napi::Value dim = shape_array.Get(i);
    double size = dim.IsNumber() ? dim.As<Napi::Number>().DoubleValue() : -1.0;
    if (!(size >= 0) || std::floor(size) != size || size > 9e15) {
      type_error(env, what + ".shape[" + std::to_string(i) + "]: expected a non-negative integer");
    }
    const auto length = static_cast<uint64_t>(size);
    shape.push_back(static_cast<int64_t>(length));
    if (length > 0 && extent > kMaxElements / length) type_error(env, what + ".shape: too many elements");
    if (length > 0) extent *= length;
    numel = length == 0 ? 0 : numel * length;
  }
  Napi::Value data_value = object.Get("data");
  if (!data_value.IsTypedArray()) {
    type_error(env, what + ".data: expected a " + array_name(info->array) + " for dtype " + dtype);
  }
  Napi::TypedArray data = data_value.As<Napi::TypedArray>();
  if (data.TypedArrayType() != info->array) {
    type_error(
        env, what + ".data: expected a " + array_name(info->array) + " for dtype " + dtype + ", got " + array_name(data.TypedArrayType()));
  }
  if (data.ElementLength() != numel) {
    type_error(env, what + ".data: holds " + std::to_string(data.ElementLength()) + " elements but shape needs " + std::to_string(numel));
  }
  auto tensor = torch::empty(shape, torch::TensorOptions().dtype(info->type));
  const auto* bytes = static_cast<const uint8_t*>(data.ArrayBuffer().Data()) + data.ByteOffset();
  if (numel > 0) std::memcpy(tensor.data_ptr(), bytes, data.ByteLength());
  if (info->type == torch::kBool && numel > 0) {
    // A bool tensor must hold 0 or 1 bytes only.
    tensor = tensor.view(torch::kUInt8).ne(0);
  }
  return tensor;
}

torch::Tensor ready_for_js(const torch::Tensor& input) {
  torch::Tensor tensor = input.detach().to(torch::kCPU);
  if (tensor.scalar_type() == torch::kFloat64) tensor = tensor.to(torch::kFloat32);
  return tensor.contiguous();
}

Napi::Object tensor_to_js(Napi::Env env, const torch::Tensor& input) {
  torch::Tensor tensor = input.detach();
  if (!tensor.device().is_cpu() || tensor.scalar_type() == torch::kFloat64 || !tensor.is_contiguous()) {
    vt::SingleThreadScope javascript_thread;
    tensor = ready_for_js(tensor);
  }
  const DTypeInfo* info = nullptr;
  for (const auto& candidate : kDTypes) {
    if (candidate.type == tensor.scalar_type()) info = &candidate;
  }
  if (!info) throw Napi::Error::New(env, vt::str_cat("tensor of dtype ", tensor.scalar_type(), " cannot cross to JavaScript"));
  const size_t bytes = static_cast<size_t>(tensor.numel()) * tensor.element_size();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, bytes);
  if (bytes > 0) std::memcpy(buffer.Data(), tensor.data_ptr(), bytes);
  Napi::Object result = Napi::Object::New(env);
  result.Set("dtype", info->name);
  Napi::Array shape = Napi::Array::New(env, tensor.dim());
  for (int64_t i = 0; i < tensor.dim(); ++i) shape.Set(static_cast<uint32_t>(i), static_cast<double>(tensor.size(i)));
  result.Set("shape", shape);
  const size_t length = static_cast<size_t>(tensor.numel());
  switch (info->array) {
    case napi_float32_array: result.Set("data", Napi::Float32Array::New(env, length, buffer, 0)); break;
    case napi_uint16_array: result.Set("data", Napi::Uint16Array::New(env, length, buffer, 0)); break;
    case napi_bigint64_array: result.Set("data", Napi::BigInt64Array::New(env, length, buffer, 0)); break;
    case napi_int32_array: result.Set("data", Napi::Int32Array::New(env, length, buffer, 0)); break;
    default: result.Set("data", Napi::Uint8Array::New(env, length, buffer, 0)); break;
  }
  return result;
}

Image ImageSource::load() const {
  if (!path.empty()) return read_image_file(path);
  if (width > 0) return image_from_pixels(bytes.data(), bytes.size(), width, height, channels, name);
  return decode_image(bytes.data(), bytes.size(), name);
}

std::vector<Image> load_images(const std::vector<ImageSource>& sources) {
  std::vector<Image> images;
  for (const auto& source : sources) images.push_back(source.load());
  return images;
}

std::vector<ImageSource> images_from_js(const Napi::Value& value, const std::string& what) {
  Napi::Env env = value.Env();
  std::vector<Napi::Value> items;
  if (value.IsArray()) {
    Napi::Array array = value.As<Napi::Array>();
    for (uint32_t i = 0; i < array.Length(); ++i) items.push_back(array.Get(i));
  } else {
    items.push_back(value);
  }
  std::vector<ImageSource> sources;
  for (size_t i = 0; i < items.size(); ++i) {
    const Napi::Value& item = items[i];
    ImageSource source;
    source.name = what + " " + std::to_string(i);
    auto copy_bytes = [&](const Napi::Uint8Array& array) {
      const auto* data = array.Data();
      source.bytes.assign(data, data + array.ByteLength());
    };
    if (item.IsString()) {
      source.path = string_value(item, source.name);
      if (source.path.empty()) type_error(env, source.name + ": empty file path");
      source.name = source.path;
    } else if (item.IsTypedArray() && item.As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array) {
      copy_bytes(item.As<Napi::Uint8Array>());
    } else if (item.IsObject() && !item.IsTypedArray()) {
      Napi::Object object = item.As<Napi::Object>();
      Napi::Value data = object.Get("data");
      if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
        type_error(env, source.name + ": raw pixels need data as a Uint8Array");
      }
      auto read_dim = [&](const char* key) {
        Napi::Value dim = object.Get(key);
        double number = dim.IsNumber() ? dim.As<Napi::Number>().DoubleValue() : -1;
        if (!(number >= 1) || std::floor(number) != number || number > std::numeric_limits<int>::max()) {
          type_error(env, source.name + "." + key + ": expected a positive integer");
        }
        return static_cast<int>(number);
      };
      source.width = read_dim("width");
      source.height = read_dim("height");
      source.channels = read_dim("channels");
      if (source.channels != 1 && source.channels != 3 && source.channels != 4) {
        type_error(env, source.name + ".channels: expected 1, 3 or 4");
      }
      copy_bytes(data.As<Napi::Uint8Array>());
    } else {
      type_error(env, source.name + ": expected a file path, encoded image bytes (Uint8Array) or {data, width, height, channels}");
    }
    sources.push_back(std::move(source));
  }
  if (sources.empty()) type_error(env, what + ": no images given");
  return sources;
}

ModelInputs model_inputs_from_js(const Napi::Value& value) {
  Napi::Env env = value.Env();
  if (!value.IsObject()) type_error(env, "forward: expected {pixelValues, pixelMask?, labels?}");
  Napi::Object object = value.As<Napi::Object>();
  ModelInputs inputs;
  inputs.pixel_values = tensor_from_js(object.Get("pixelValues"), "pixelValues");
  Napi::Value mask = object.Get("pixelMask");
  if (!mask.IsUndefined() && !mask.IsNull()) inputs.pixel_mask = tensor_from_js(mask, "pixelMask");
  inputs.allow_non_finite = optional_bool(object, "allowNonFinite").value_or(false);
  Napi::Value labels = object.Get("labels");
  if (labels.IsArray()) {
    Napi::Array targets = labels.As<Napi::Array>();
    for (uint32_t i = 0; i < targets.Length(); ++i) {
      const std::string name = "labels[" + std::to_string(i) + "]";
      Napi::Value item = targets.Get(i);
      if (!item.IsObject()) type_error(env, name + ": expected {classLabels, boxes} or {classLabels, maskLabels}");
      Napi::Object target_object = item.As<Napi::Object>();
      Target target;
      target.class_labels = tensor_from_js(target_object.Get("classLabels"), name + ".classLabels");
      if (!target_object.Get("boxes").IsUndefined()) target.boxes = tensor_from_js(target_object.Get("boxes"), name + ".boxes");
      if (!target_object.Get("maskLabels").IsUndefined()) {
        target.mask_labels = tensor_from_js(target_object.Get("maskLabels"), name + ".maskLabels");
      }
      inputs.targets.push_back(std::move(target));
    }
  } else if (!labels.IsUndefined() && !labels.IsNull()) {
    inputs.labels = tensor_from_js(labels, "labels");
  }
  return inputs;
}

std::string string_value(const Napi::Value& value, const std::string& what) {
  if (!value.IsString()) type_error(value.Env(), what + ": expected a string");
  std::string text = value.As<Napi::String>();
  if (text.find('\0') != std::string::npos) type_error(value.Env(), what + ": contains a NUL character");
  return text;
}

std::optional<std::string> optional_string(const Napi::Object& object, const char* key) {
  Napi::Value value = object.Get(key);
  if (value.IsUndefined() || value.IsNull()) return std::nullopt;
  return string_value(value, key);
}

std::optional<bool> optional_bool(const Napi::Object& object, const char* key) {
  Napi::Value value = object.Get(key);
  if (value.IsUndefined() || value.IsNull()) return std::nullopt;
  if (!value.IsBoolean()) type_error(object.Env(), std::string(key) + ": expected true or false");
  return value.As<Napi::Boolean>().Value();
}

std::optional<int64_t> optional_int(const Napi::Object& object, const char* key) {
  Napi::Value value = object.Get(key);
  if (value.IsUndefined() || value.IsNull()) return std::nullopt;
  double number = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : std::nan("");
  if (!std::isfinite(number) || std::floor(number) != number || std::fabs(number) > 9e15) {
    type_error(object.Env(), std::string(key) + ": expected an integer");
  }
  return static_cast<int64_t>(number);
}

}  // namespace vt::addon

namespace vt::addon {

std::string camel_case(const std::string& name) {
  std::string out;
  bool upper = false, in_head = true;
  for (char c : name) {
    if (c == '.') in_head = false;
    if (in_head && c == '_') {
      upper = true;
      continue;
    }
    out += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  return out;
}

nlohmann::json camel_case_keys(const nlohmann::json& object) {
  if (!object.is_object()) return object;
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, value] : object.items()) out[camel_case(key)] = value;
  return out;
}

std::optional<double> optional_number(const Napi::Object& object, const char* key) {
  Napi::Value value = object.Get(key);
  if (value.IsUndefined() || value.IsNull()) return std::nullopt;
  if (!value.IsNumber() || !std::isfinite(value.As<Napi::Number>().DoubleValue())) {
    type_error(object.Env(), std::string(key) + ": expected a number");
  }
  return value.As<Napi::Number>().DoubleValue();
}

}  // namespace vt::addon
