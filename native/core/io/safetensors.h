// safetensors: https://github.com/huggingface/safetensors (format described in the fixtures' README).
// Reading maps the file and validates the whole header before any tensor data is touched;
// tensors returned by SafetensorsFile alias the mapping (zero copy) and keep it alive.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/tensor_map.h"

namespace vt {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as written in the header: "F32", "BF16", ...
  torch::ScalarType scalar_type;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Throws vt::Error naming the file (and the tensor, where one is at fault) for every defect:
  // short file, header length out of bounds, invalid JSON, unknown dtype, negative or
  // non-integer shape, shape x dtype size != byte span, offsets outside the data section,
  // overlapping or out-of-order spans.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  // The same checks on bytes already in memory (a download, an archive member); `source` names
  // them in errors and is what path() returns. The bytes are copied once; tensors view the copy.
  static std::shared_ptr<SafetensorsFile> from_bytes(const uint8_t* data, size_t size, const std::string& source);

  const std::string& path() const;
  const std::vector<SafetensorsEntry>& entries() const;  // in file (offset) order
  const std::map<std::string, std::string>& metadata() const;
  bool contains(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const;  // throws naming file and tensor

  // A CPU tensor viewing the mapped bytes (zero copy; data that is not aligned for its dtype is
  // copied). The mapping is private: an in-place write never reaches the file, but every tensor
  // viewing the same bytes sees it, so clone before writing.
  torch::Tensor tensor(const std::string& name) const;
  // Every tensor, as views.
  TensorMap tensors() const;

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  // Validates the header of the bytes `impl` holds and indexes its tensors.
  static std::shared_ptr<SafetensorsFile> validate(std::unique_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Every tensor of a file (views of the mapping, which stays alive while any tensor does).
TensorMap load_safetensors(const std::string& path);

// Writes tensors (any device, any layout; copied to contiguous CPU) with optional
// __metadata__, to a temporary file beside `path`, fsyncs it, renames it over `path` and
// fsyncs the directory: a crash leaves the old file or the new one, never half of one.
void save_safetensors(const std::string& path, const TensorMap& tensors, const std::map<std::string, std::string>& metadata = {});

// The sharded layout of save_pretrained: model.safetensors.index.json with a weight_map
// {tensor: shard file}. Validates the index (JSON, weight_map, shard names that stay inside
// the directory, every listed tensor present in its shard) and returns every tensor.
TensorMap load_sharded_safetensors(const std::string& index_path);

// Name <-> dtype mapping used by the reader and the writer ("F32" <-> torch::kFloat32, ...).
torch::ScalarType safetensors_dtype(const std::string& name);  // throws for unknown names
std::string safetensors_dtype_name(torch::ScalarType type);    // throws for unsupported types

}  // namespace vt
