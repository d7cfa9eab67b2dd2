#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_config.h"

// Tensor bytes are little-endian in the file and are handed to torch as they are.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace vt {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The Rust reference implementation refuses headers above 100 MB; so do we, before allocating.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;
constexpr const char* kMetadataKey = "__metadata__";

std::string errno_text(int error) { return std::strerror(error); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

// A read-only view of a whole file. MAP_PRIVATE with PROT_WRITE makes an accidental in-place
// write to a returned tensor land in a private copy-on-write page instead of crashing the
// process (a SIGSEGV would take the whole Node process down); the file is never modified.
class Mapping {
 public:
  explicit Mapping(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    VT_CHECK(fd >= 0, path, ": cannot open: ", errno_text(errno));
    struct stat info {};
    if (::fstat(fd, &info) != 0) {
      int error = errno;
      ::close(fd);
      fail(path, ": cannot stat: ", errno_text(error));
    }
    if (!S_ISREG(info.st_mode)) {
      ::close(fd);
      fail(path, ": not a regular file");
    }
    size_ = static_cast<uint64_t>(info.st_size);
    if (size_ > 0) {
      void* address = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      int error = errno;
      ::close(fd);
      VT_CHECK(address != MAP_FAILED, path, ": cannot map ", size_, " bytes: ", errno_text(error));
      data_ = static_cast<uint8_t*>(address);
    } else {
      ::close(fd);
    }
  }
  ~Mapping() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

uint64_t read_u64_le(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

void write_u64_le(uint64_t value, char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

const std::vector<std::pair<const char*, torch::ScalarType>>& dtype_table() {
  static const std::vector<std::pair<const char*, torch::ScalarType>> table = {
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16}, {"I64", torch::kInt64},
      {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},     {"U8", torch::kUInt8},      {"BOOL", torch::kBool},
  };
  return table;
}

bool find_dtype(const std::string& name, torch::ScalarType* out) {
  for (const auto& [dtype_name, type] : dtype_table()) {
    if (name == dtype_name) {
      *out = type;
      return true;
    }
  }
  return false;
}

// Reads one header entry, checking types and that shape x dtype size equals the byte span.
SafetensorsEntry parse_entry(const std::string& path, const std::string& name, const json& value, uint64_t data_size) {
  const std::string where = str_cat(path, ": tensor \"", name, "\"");
  VT_CHECK(value.is_object(), where, ": header entry is a ", value.type_name(), ", expected an object");

  SafetensorsEntry entry;
  entry.name = name;

  auto dtype = value.find("dtype");
  VT_CHECK(dtype != value.end(), where, ": missing \"dtype\"");
  VT_CHECK(dtype->is_string(), where, ": \"dtype\" is a ", dtype->type_name(), ", expected a string");
  entry.dtype = dtype->get<std::string>();
  VT_CHECK(find_dtype(entry.dtype, &entry.scalar_type), where, ": unknown dtype \"", entry.dtype,
           "\" (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");

  auto shape = value.find("shape");
  VT_CHECK(shape != value.end(), where, ": missing \"shape\"");
  VT_CHECK(shape->is_array(), where, ": \"shape\" is a ", shape->type_name(), ", expected an array");
  // Byte count computed in 128 bits so that no product of dimensions can wrap around.
  unsigned __int128 bytes = c10::elementSize(entry.scalar_type);
  for (size_t i = 0; i < shape->size(); ++i) {
    const json& dim = (*shape)[i];
    VT_CHECK(dim.is_number_integer(), where, ": shape[", i, "] is ", dim.dump(), ", expected a non-negative integer");
    VT_CHECK(dim.is_number_unsigned() || dim.get<int64_t>() >= 0, where, ": shape[", i, "] is ", dim.dump(),
             ", expected a non-negative integer");
    uint64_t extent = dim.get<uint64_t>();
    VT_CHECK(extent <= static_cast<uint64_t>(INT64_MAX), where, ": shape[", i, "] is too large");
    entry.shape.push_back(static_cast<int64_t>(extent));
    bytes *= extent;
    if (bytes > static_cast<unsigned __int128>(UINT64_MAX)) bytes = static_cast<unsigned __int128>(UINT64_MAX) + 1;
  }

  auto offsets = value.find("data_offsets");
  VT_CHECK(offsets != value.end(), where, ": missing \"data_offsets\"");
  VT_CHECK(offsets->is_array() && offsets->size() == 2, where, ": \"data_offsets\" is ", offsets->dump(), ", expected [begin, end]");
  for (const json& offset : *offsets) {
    VT_CHECK(offset.is_number_unsigned(), where, ": \"data_offsets\" is ", offsets->dump(), ", expected two non-negative integers");
  }
  entry.begin = (*offsets)[0].get<uint64_t>();
  entry.end = (*offsets)[1].get<uint64_t>();
  VT_CHECK(entry.begin <= entry.end, where, ": data_offsets [", entry.begin, ", ", entry.end, "] begin after end");
  uint64_t span = entry.end - entry.begin;
  VT_CHECK(bytes == span, where, ": data_offsets [", entry.begin, ", ", entry.end, "] span ", span, " bytes but shape ",
           shape_text(entry.shape), " of ", entry.dtype, " needs ",
           bytes > UINT64_MAX ? std::string("more than 2^64") : std::to_string(static_cast<uint64_t>(bytes)));
  VT_CHECK(entry.end <= data_size, where, ": data_offsets [", entry.begin, ", ", entry.end, "] end beyond the data section (", data_size,
           " bytes)");
  return entry;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& value) {
  VT_CHECK(value.is_object(), path, ": __metadata__ is a ", value.type_name(), ", expected an object of strings");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    VT_CHECK(item.is_string(), path, ": __metadata__ \"", key, "\" is a ", item.type_name(), ", expected a string");
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

}  // namespace

struct SafetensorsFile::Impl {
  std::string path;
  std::shared_ptr<void> owner;  // the mapping or the buffer holding the bytes, kept alive by every tensor
  uint8_t* bytes = nullptr;     // the whole file
  uint64_t size = 0;
  const uint8_t* data = nullptr;  // start of the data section
  std::vector<SafetensorsEntry> entries;
  std::unordered_map<std::string, size_t> index;
  std::map<std::string, std::string> metadata;
};

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::~SafetensorsFile() = default;

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  ErrorScope errors(ErrorCode::Checkpoint);
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  auto mapping = std::make_shared<Mapping>(path);
  impl->bytes = mapping->data();
  impl->size = mapping->size();
  impl->owner = std::move(mapping);
  return validate(std::move(impl));
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::from_bytes(const uint8_t* data, size_t size, const std::string& source) {
  ErrorScope errors(ErrorCode::Checkpoint);
  auto impl = std::make_unique<Impl>();
  impl->path = source;
  auto buffer = std::make_shared<std::vector<uint8_t>>(data, data + size);
  impl->bytes = buffer->data();
  impl->size = buffer->size();
  impl->owner = std::move(buffer);
  return validate(std::move(impl));
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::validate(std::unique_ptr<Impl> impl) {
  const std::string& path = impl->path;
  const uint64_t file_size = impl->size;
  const uint8_t* bytes = impl->bytes;

  VT_CHECK(file_size >= 8, path, ": file is ", file_size, " bytes, too short for the 8-byte safetensors header length");
  const uint64_t header_size = read_u64_le(bytes);
  VT_CHECK(header_size > 0, path, ": header length is 0");
  VT_CHECK(header_size <= kMaxHeaderBytes, path, ": header length ", header_size, " exceeds the 100 MB limit (not a safetensors file?)");
  VT_CHECK(header_size <= file_size - 8, path, ": header length ", header_size, " exceeds the ", file_size - 8,
           " bytes after the length field (truncated file?)");

  // As the reference reader: the header is one JSON object, each name once.
  VT_CHECK(bytes[8] == '{', path, ": the header does not start with '{' (not a safetensors file?)");
  const json header =
      parse_json(std::string(reinterpret_cast<const char*>(bytes + 8), header_size), path + ": header", /*unique_keys=*/true);
  VT_CHECK(header.is_object(), path, ": header is a JSON ", header.type_name(), ", expected an object");

  const uint64_t data_size = file_size - 8 - header_size;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      impl->metadata = parse_metadata(path, value);
      continue;
    }
    impl->entries.push_back(parse_entry(path, name, value, data_size));
  }

  // As the reference reader: in offset order the tensors cover the data section exactly, each
  // starting where the previous one ended (no overlap, no gap) and the last ending at the file's
  // end. A header length off by a byte would otherwise read every tensor shifted. Ties sort by
  // end so that a zero-length span at another span's start comes first.
  std::sort(impl->entries.begin(), impl->entries.end(),
            [](const auto& a, const auto& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& current : impl->entries) {
    if (current.begin < covered) {
      fail(path, ": tensor \"", current.name, "\": data_offsets [", current.begin, ", ", current.end, "] overlap tensor \"", previous->name,
           "\" [", previous->begin, ", ", previous->end, "]");
    }
    VT_CHECK(current.begin == covered, path, ": tensor \"", current.name, "\": data_offsets [", current.begin, ", ", current.end,
             "] leave bytes ", covered, " to ", current.begin, " of the data section unused (a gap)");
    covered = current.end;
    previous = &current;
  }
  VT_CHECK(covered == data_size, path, ": the data section has ", data_size - covered, " byte(s) after the last tensor (", data_size,
           " bytes, tensors cover ", covered, "): a wrong header length or trailing bytes");
  for (size_t i = 0; i < impl->entries.size(); ++i) impl->index.emplace(impl->entries[i].name, i);

  impl->data = bytes + 8 + header_size;
  return std::shared_ptr<SafetensorsFile>(new SafetensorsFile(std::move(impl)));
}

const std::string& SafetensorsFile::path() const { return impl_->path; }
const std::vector<SafetensorsEntry>& SafetensorsFile::entries() const { return impl_->entries; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }
bool SafetensorsFile::contains(const std::string& name) const { return impl_->index.count(name) > 0; }

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto found = impl_->index.find(name);
  VT_CHECK(found != impl_->index.end(), impl_->path, ": no tensor \"", name, "\"");
  return impl_->entries[found->second];
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& info = entry(name);
  auto options = torch::TensorOptions().dtype(info.scalar_type).device(torch::kCPU);
  const uint64_t bytes = info.end - info.begin;
  if (bytes == 0) return torch::empty(info.shape, options);

  uint8_t* source = const_cast<uint8_t*>(impl_->data + info.begin);
  const size_t element_size = c10::elementSize(info.scalar_type);
  if (reinterpret_cast<uintptr_t>(source) % element_size != 0) {
    // Writers align the data section, but a file is not obliged to; torch kernels assume
    // naturally aligned elements, so misaligned data is copied.
    torch::Tensor copy = torch::empty(info.shape, options);
    std::memcpy(copy.data_ptr(), source, bytes);
    return copy;
  }
  std::shared_ptr<void> keep_alive = impl_->owner;
  return torch::from_blob(
      source, info.shape, [keep_alive](void*) mutable { keep_alive.reset(); }, options);
}

TensorMap SafetensorsFile::tensors() const {
  TensorMap out;
  for (const SafetensorsEntry& info : impl_->entries) out.emplace(info.name, tensor(info.name));
  return out;
}

TensorMap load_safetensors(const std::string& path) { return SafetensorsFile::open(path)->tensors(); }

torch::ScalarType safetensors_dtype(const std::string& name) {
  torch::ScalarType type;
  VT_CHECK(find_dtype(name, &type), "unknown safetensors dtype \"", name, "\"");
  return type;
}

std::string safetensors_dtype_name(torch::ScalarType type) {
  for (const auto& [name, candidate] : dtype_table()) {
    if (candidate == type) return name;
  }
  fail("dtype ", c10::toString(type), " is not supported by safetensors");
}

// ---------------------------------------------------------------------------------------------
// Writing

void save_safetensors(const std::string& path, const TensorMap& tensors, const std::map<std::string, std::string>& metadata) {
  ErrorScope errors(ErrorCode::Io);
  struct Planned {
    const std::string* name;
    torch::Tensor data;  // contiguous CPU
    std::string dtype;
    uint64_t bytes;
    uint64_t begin = 0;  // in the data section
  };
  // Validate and convert everything before the first byte is written.
  std::vector<Planned> planned;
  planned.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    VT_CHECK(name != kMetadataKey, path, ": a tensor cannot be named \"", kMetadataKey, "\"");
    VT_CHECK(tensor.defined(), path, ": tensor \"", name, "\" is undefined");
    std::string dtype;
    try {
      dtype = safetensors_dtype_name(tensor.scalar_type());
    } catch (const Error& e) {
      fail(path, ": tensor \"", name, "\": ", e.what());
    }
    VT_CHECK(tensor.layout() == torch::kStrided, path, ": tensor \"", name, "\": only dense tensors can be saved");
    torch::Tensor data = tensor.detach().to(torch::kCPU).contiguous();
    planned.push_back({&name, data, dtype, static_cast<uint64_t>(data.nbytes())});
  }
  // The header lists tensors by name; the data is laid out by decreasing element size (then
  // name), as the reference writer does, so that every tensor starts naturally aligned and
  // can be mapped without a copy.
  std::vector<Planned*> layout;
  for (Planned& item : planned) layout.push_back(&item);
  std::stable_sort(layout.begin(), layout.end(),
                   [](const Planned* a, const Planned* b) { return a->data.element_size() > b->data.element_size(); });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t cursor = 0;
  for (Planned* item : layout) {
    item->begin = cursor;
    cursor += item->bytes;
  }
  for (const Planned& item : planned) {
    header[*item.name] = {
        {"dtype", item.dtype}, {"shape", item.data.sizes().vec()}, {"data_offsets", {item.begin, item.begin + item.bytes}}};
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": cannot encode the header (tensor names and metadata must be UTF-8): ", e.what());
  }
  // Padding to 8 keeps the data section 8-byte aligned in the file (and so in the mapping).
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  AtomicFile file(path);
  char length[8];
  write_u64_le(header_text.size(), length);
  file.write(length, sizeof length);
  file.write(header_text.data(), header_text.size());
  for (const Planned* item : layout) file.write(item->data.data_ptr(), item->bytes);
  file.commit();
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints

namespace {

// A shard name from the index must name a file inside the index's directory.
void check_shard_name(const std::string& index_path, const std::string& tensor, const std::string& shard) {
  const std::string where = str_cat(index_path, ": tensor \"", tensor, "\": shard \"", shard, "\"");
  VT_CHECK(!shard.empty(), where, " is empty");
  VT_CHECK(shard.find('\0') == std::string::npos, where, " contains a NUL character");
  VT_CHECK(shard.find('\\') == std::string::npos, where, " contains a backslash");
  fs::path shard_path(shard);
  VT_CHECK(!shard_path.is_absolute() && !shard_path.has_root_path(), where,
           " is an absolute path; shards must be inside the index's directory");
  for (const fs::path& part : shard_path) {
    VT_CHECK(part != "..", where, " leaves the index's directory");
  }
}

}  // namespace

TensorMap load_sharded_safetensors(const std::string& index_path) {
  ErrorScope errors(ErrorCode::Checkpoint);
  std::ifstream in(index_path, std::ios::binary);
  VT_CHECK(in, index_path, ": cannot open: ", errno_text(errno));
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json index = parse_json(text.str(), index_path, /*unique_keys=*/true);
  VT_CHECK(index.is_object(), index_path, ": is a JSON ", index.type_name(), ", expected an object");
  auto weight_map = index.find("weight_map");
  VT_CHECK(weight_map != index.end(), index_path, ": missing \"weight_map\"");
  VT_CHECK(weight_map->is_object(), index_path, ": \"weight_map\" is a ", weight_map->type_name(), ", expected an object");

  // shard -> tensors listed for it, so each shard is opened once.
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [tensor, shard] : weight_map->items()) {
    VT_CHECK(shard.is_string(), index_path, ": tensor \"", tensor, "\": shard is a ", shard.type_name(), ", expected a file name");
    const std::string shard_name = shard.get<std::string>();
    check_shard_name(index_path, tensor, shard_name);
    by_shard[shard_name].push_back(tensor);
  }

  const fs::path directory = fs::path(index_path).parent_path();
  TensorMap out;
  for (const auto& [shard_name, names] : by_shard) {
    const fs::path shard_path = directory / shard_name;
    std::error_code error;
    VT_CHECK(fs::exists(shard_path, error), index_path, ": shard \"", shard_name, "\" (listed for tensor \"", names.front(), "\"",
             names.size() > 1 ? str_cat(" and ", names.size() - 1, " others") : "", ") does not exist");
    auto file = SafetensorsFile::open(shard_path.string());
    for (const std::string& name : names) {
      VT_CHECK(file->contains(name), index_path, ": tensor \"", name, "\" is listed in shard \"", shard_name,
               "\" but that shard has no such tensor");
      out.emplace(name, file->tensor(name));
    }
  }
  return out;
}

}  // namespace vt
