// Values crossing the N-API boundary: tensors ({dtype, shape, data}), images, options.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <napi.h>
#include <torch/torch.h>

#include "io/image.h"
#include "nn/module.h"

namespace vt::addon {

// Throws Napi::TypeError naming `what` (e.g. "pixelValues") for a malformed tensor object.
torch::Tensor tensor_from_js(const Napi::Value& value, const std::string& what);
// A contiguous CPU copy in a fresh typed array (float64 becomes float32).
Napi::Object tensor_to_js(Napi::Env env, const torch::Tensor& tensor);
// The tensor as tensor_to_js copies it out (CPU, contiguous, float32 for float64): done on the
// compute thread, it leaves tensor_to_js a plain copy on the JavaScript thread.
torch::Tensor ready_for_js(const torch::Tensor& tensor);

// An image as given to preprocess/predict, copied off the JS heap so a worker can decode it.
struct ImageSource {
  std::string path;            // file path, or
  std::vector<uint8_t> bytes;  // encoded bytes, or raw pixels when width > 0
  int width = 0, height = 0, channels = 0;
  std::string name;    // for error messages
  Image load() const;  // decodes on the calling (worker) thread
};
std::vector<ImageSource> images_from_js(const Napi::Value& value, const std::string& what);
// Decodes every source (on the calling worker thread).
std::vector<Image> load_images(const std::vector<ImageSource>& sources);

ModelInputs model_inputs_from_js(const Napi::Value& value);

// A JavaScript string as C++ text; one holding a NUL character is refused, naming `what` (a path
// with a NUL would otherwise be cut at it and name another file).
std::string string_value(const Napi::Value& value, const std::string& what);

// Option readers: absent or undefined gives nullopt; a wrong type throws naming the option.
std::optional<std::string> optional_string(const Napi::Object& object, const char* key);
std::optional<bool> optional_bool(const Napi::Object& object, const char* key);
std::optional<int64_t> optional_int(const Napi::Object& object, const char* key);

}  // namespace vt::addon

#include <nlohmann/json.hpp>

namespace vt::addon {

// The contract's camelCase for a core name: "pred_boxes" -> "predBoxes"; only the part before a dot
// ("loss_dict.loss_ce" -> "lossDict.loss_ce": the loss names stay transformers').
std::string camel_case(const std::string& name);
// A JSON object's own keys in camelCase (values untouched), for the trainer's events and results.
nlohmann::json camel_case_keys(const nlohmann::json& object);

// JSON values (events, results, metrics, predictions) as JS values; objects keep their keys' order.
template <typename Json>
Napi::Value json_to_js(Napi::Env env, const Json& value) {
  switch (value.type()) {
    case Json::value_t::null: return env.Null();
    case Json::value_t::boolean: return Napi::Boolean::New(env, value.template get<bool>());
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: return Napi::Number::New(env, value.template get<double>());
    case Json::value_t::string: return Napi::String::New(env, value.template get<std::string>());
    case Json::value_t::array: {
      Napi::Array array = Napi::Array::New(env, value.size());
      for (size_t i = 0; i < value.size(); ++i) array.Set(static_cast<uint32_t>(i), json_to_js(env, value[i]));
      return array;
    }
    case Json::value_t::object: {
      Napi::Object object = Napi::Object::New(env);
      for (const auto& [key, item] : value.items()) object.Set(key, json_to_js(env, item));
      return object;
    }
    default: return env.Undefined();
  }
}

std::optional<double> optional_number(const Napi::Object& object, const char* key);

// A field the caller must give (the TypeScript layer applies every default): absent throws a
// TypeError naming it.
template <typename T>
T required(const Napi::Object& object, const char* key, std::optional<T> (*read)(const Napi::Object&, const char*)) {
  std::optional<T> value = read(object, key);
  if (!value) throw Napi::TypeError::New(object.Env(), std::string(key) + ": required (defaults are applied by the TypeScript schema)");
  return *value;
}

}  // namespace vt::addon
