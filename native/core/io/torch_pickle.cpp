#include "io/torch_pickle.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caffe2/serialize/file_adapter.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/torch.h>
#include <zlib.h>

#include "common/error.h"

// Storage records hold little-endian bytes, which are copied into tensors as they are.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "torch checkpoint loading assumes a little-endian host");

namespace vt {

namespace {

// ---------------------------------------------------------------------------------------------
// Values of the restricted unpickler

// The only callables and classes a checkpoint may name. Anything else is refused when the
// GLOBAL opcode names it, before it could be called.
enum class Global {
  OrderedDict,
  RebuildTensorV2,
  RebuildParameter,
  RebuildParameterWithState,
  RebuildFromTypeV2,
  TensorClass,
  ParameterClass,
  StorageClass,
};

struct Storage {
  torch::ScalarType dtype;
  std::string key;  // the record data/<key>
  int64_t numel = 0;
};

// A tensor as the pickle describes it; the storage is read (and the view checked) only when
// the tensor turns out to be a value of the state dict, whose key then names it in errors.
struct TensorSpec {
  const Storage* storage = nullptr;
  int64_t offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
};

struct Value {
  enum class Kind { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  int64_t integer = 0;                               // Bool, Int
  double real = 0;                                   // Float
  std::string text;                                  // Str, Bytes; Global: "module.name"
  std::vector<Value*> items;                         // Tuple, List
  std::vector<std::pair<Value*, Value*>> entries;    // Dict, in insertion order
  std::unordered_map<std::string, size_t> str_keys;  // Dict: string key -> index in entries
  Global global = Global::OrderedDict;
  torch::ScalarType storage_dtype = torch::kFloat32;  // Global::StorageClass
  Storage storage;
  TensorSpec tensor;
};

const char* kind_name(const Value* value) {
  switch (value->kind) {
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::Str: return "str";
    case Value::Kind::Bytes: return "bytes";
    case Value::Kind::Tuple: return "tuple";
    case Value::Kind::List: return "list";
    case Value::Kind::Dict: return "dict";
    case Value::Kind::Global: return "class or function";
    case Value::Kind::Storage: return "storage";
    case Value::Kind::Tensor: return "tensor";
  }
  return "value";
}

struct AllowedGlobal {
  const char* module;
  const char* name;
  Global global;
  torch::ScalarType storage_dtype;
};

const std::vector<AllowedGlobal>& allowed_globals() {
  static const std::vector<AllowedGlobal> table = {
      {"collections", "OrderedDict", Global::OrderedDict, torch::kFloat32},
      {"torch._utils", "_rebuild_tensor_v2", Global::RebuildTensorV2, torch::kFloat32},
      {"torch._utils", "_rebuild_parameter", Global::RebuildParameter, torch::kFloat32},
      {"torch._utils", "_rebuild_parameter_with_state", Global::RebuildParameterWithState, torch::kFloat32},
      {"torch._tensor", "_rebuild_from_type_v2", Global::RebuildFromTypeV2, torch::kFloat32},
      {"torch", "Tensor", Global::TensorClass, torch::kFloat32},
      {"torch._tensor", "Tensor", Global::TensorClass, torch::kFloat32},
      {"torch.nn.parameter", "Parameter", Global::ParameterClass, torch::kFloat32},
      {"torch", "DoubleStorage", Global::StorageClass, torch::kFloat64},
      {"torch", "FloatStorage", Global::StorageClass, torch::kFloat32},
      {"torch", "HalfStorage", Global::StorageClass, torch::kFloat16},
      {"torch", "BFloat16Storage", Global::StorageClass, torch::kBFloat16},
      {"torch", "LongStorage", Global::StorageClass, torch::kInt64},
      {"torch", "IntStorage", Global::StorageClass, torch::kInt32},
      {"torch", "ShortStorage", Global::StorageClass, torch::kInt16},
      {"torch", "CharStorage", Global::StorageClass, torch::kInt8},
      {"torch", "ByteStorage", Global::StorageClass, torch::kUInt8},
      {"torch", "BoolStorage", Global::StorageClass, torch::kBool},
  };
  return table;
}

// ---------------------------------------------------------------------------------------------
// The pickle machine

class Unpickler {
 public:
  Unpickler(std::string path, const uint8_t* data, size_t size) : path_(std::move(path)), data_(data), size_(size) {}

  // Runs the pickle to its STOP and returns the object it built.
  Value* run();

  // Fails with the file, the offset of the opcode being executed and the message.
  template <typename... Parts>
  [[noreturn]] void error(Parts&&... parts) const {
    fail(path_, ": data.pkl offset ", opcode_offset_, ": ", std::forward<Parts>(parts)...);
  }

 private:
  Value* make(Value::Kind kind) {
    values_.emplace_back();
    values_.back().kind = kind;
    return &values_.back();
  }
  Value* make_int(int64_t integer) {
    Value* value = make(Value::Kind::Int);
    value->integer = integer;
    return value;
  }

  const uint8_t* take(size_t count) {
    if (count > size_ - position_) error("pickle ends inside an opcode (truncated data.pkl?)");
    const uint8_t* bytes = data_ + position_;
    position_ += count;
    return bytes;
  }
  uint64_t take_le(size_t count) {
    const uint8_t* bytes = take(count);
    uint64_t value = 0;
    for (size_t i = count; i-- > 0;) value = (value << 8) | bytes[i];
    return value;
  }
  std::string take_line() {
    const uint8_t* start = data_ + position_;
    const void* newline = std::memchr(start, '\n', size_ - position_);
    if (newline == nullptr) error("GLOBAL argument is not terminated by a newline");
    size_t length = static_cast<const uint8_t*>(newline) - start;
    position_ += length + 1;
    return std::string(reinterpret_cast<const char*>(start), length);
  }
  std::string take_string(uint64_t length) {
    if (length > size_ - position_) error("pickle ends inside a string (truncated data.pkl?)");
    return std::string(reinterpret_cast<const char*>(take(length)), length);
  }

  Value* pop() {
    if (stack_.size() <= current_mark()) error("stack underflow");
    Value* value = stack_.back();
    stack_.pop_back();
    return value;
  }
  Value* top() {
    if (stack_.size() <= current_mark()) error("stack underflow");
    return stack_.back();
  }
  size_t current_mark() const { return marks_.empty() ? 0 : marks_.back(); }
  // Everything pushed since the last MARK, which is removed.
  std::vector<Value*> pop_to_mark() {
    if (marks_.empty()) error("opcode needs a MARK but none is set");
    size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }

  void memo_put(uint64_t index) { memo_[index] = top(); }
  void memo_get(uint64_t index) {
    auto found = memo_.find(index);
    if (found == memo_.end()) error("memo entry ", index, " was never stored");
    stack_.push_back(found->second);
  }

  Value* global(const std::string& module, const std::string& name);
  Value* call(Value* callable, Value* args);
  Value* rebuild_tensor_v2(const std::vector<Value*>& args);
  Value* persistent_load(Value* pid);
  void set_item(Value* dict, Value* key, Value* value);
  void append(Value* list, Value* item);

  std::vector<int64_t> int_tuple(Value* value, const char* what);

  std::string path_;
  const uint8_t* data_;
  size_t size_;
  size_t position_ = 0;
  size_t opcode_offset_ = 0;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;  // stack heights at each MARK
  std::unordered_map<uint64_t, Value*> memo_;
  // Owns every value; values refer to each other by plain pointers, so cycles built through
  // the memo and deep nesting cost nothing to tear down.
  std::deque<Value> values_;
};

Value* Unpickler::run() {
  while (true) {
    opcode_offset_ = position_;
    if (position_ == size_) error("pickle ends before its STOP opcode (truncated data.pkl?)");
    const uint8_t opcode = *take(1);
    switch (opcode) {
      case 0x80: {  // PROTO
        uint8_t protocol = *take(1);
        if (protocol < 2 || protocol > 5) error("unsupported pickle protocol ", int(protocol));
        break;
      }
      case 0x95:  // FRAME: a length prefix for buffering only
        take(8);
        break;
      case '.':  // STOP
        if (stack_.size() != 1 || !marks_.empty()) {
          error("STOP with ", stack_.size(), " values on the stack, expected 1");
        }
        return stack_.back();
      case '(':  // MARK
        marks_.push_back(stack_.size());
        break;
      case '}':  // EMPTY_DICT
        stack_.push_back(make(Value::Kind::Dict));
        break;
      case ']':  // EMPTY_LIST
        stack_.push_back(make(Value::Kind::List));
        break;
      case ')':  // EMPTY_TUPLE
        stack_.push_back(make(Value::Kind::Tuple));
        break;
      case 't': {  // TUPLE
        Value* tuple = make(Value::Kind::Tuple);
        tuple->items = pop_to_mark();
        stack_.push_back(tuple);
        break;
      }
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        Value* tuple = make(Value::Kind::Tuple);
        tuple->items.resize(opcode - 0x84);
        for (size_t i = tuple->items.size(); i-- > 0;) tuple->items[i] = pop();
        stack_.push_back(tuple);
        break;
      }
      case 'q':  // BINPUT
        memo_put(take_le(1));
        break;
      case 'r':  // LONG_BINPUT
        memo_put(take_le(4));
        break;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size());
        break;
      case 'h':  // BINGET
        memo_get(take_le(1));
        break;
      case 'j':  // LONG_BINGET
        memo_get(take_le(4));
        break;
      case 'J':  // BININT: signed 32-bit
        stack_.push_back(make_int(static_cast<int32_t>(take_le(4))));
        break;
      case 'K':  // BININT1
        stack_.push_back(make_int(take_le(1)));
        break;
      case 'M':  // BININT2
        stack_.push_back(make_int(take_le(2)));
        break;
      case 0x8a:    // LONG1
      case 0x8b: {  // LONG4
        uint64_t length = take_le(opcode == 0x8a ? 1 : 4);
        if (length > 8) error("integer of ", length, " bytes does not fit 64 bits");
        uint64_t bits = take_le(length);
        // Two's complement of `length` bytes: sign-extend from the top byte.
        if (length > 0 && length < 8 && (bits >> (8 * length - 1)) & 1) bits |= ~uint64_t{0} << (8 * length);
        stack_.push_back(make_int(static_cast<int64_t>(bits)));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE double
        const uint8_t* bytes = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | bytes[i];
        Value* value = make(Value::Kind::Float);
        std::memcpy(&value->real, &bits, sizeof bits);
        stack_.push_back(value);
        break;
      }
      case 'N':  // NONE
        stack_.push_back(make(Value::Kind::None));
        break;
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        Value* value = make(Value::Kind::Bool);
        value->integer = opcode == 0x88;
        stack_.push_back(value);
        break;
      }
      case 'X':     // BINUNICODE
      case 0x8c:    // SHORT_BINUNICODE
      case 0x8d: {  // BINUNICODE8
        uint64_t length = take_le(opcode == 0x8c ? 1 : opcode == 'X' ? 4 : 8);
        Value* value = make(Value::Kind::Str);
        value->text = take_string(length);
        stack_.push_back(value);
        break;
      }
      case 'C':     // SHORT_BINBYTES
      case 'B':     // BINBYTES
      case 0x8e: {  // BINBYTES8
        uint64_t length = take_le(opcode == 'C' ? 1 : opcode == 'B' ? 4 : 8);
        Value* value = make(Value::Kind::Bytes);
        value->text = take_string(length);
        stack_.push_back(value);
        break;
      }
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = take_line();
        std::string name = take_line();
        stack_.push_back(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        Value* name = pop();
        Value* module = pop();
        if (module->kind != Value::Kind::Str || name->kind != Value::Kind::Str) {
          error("STACK_GLOBAL needs two strings, got ", kind_name(module), " and ", kind_name(name));
        }
        stack_.push_back(global(module->text, name->text));
        break;
      }
      case 'R': {  // REDUCE: callable(*args)
        Value* args = pop();
        Value* callable = pop();
        stack_.push_back(call(callable, args));
        break;
      }
      case 0x81: {  // NEWOBJ: cls.__new__(cls, *args); only OrderedDict() is meaningful here
        Value* args = pop();
        Value* cls = pop();
        if (cls->kind != Value::Kind::Global || cls->global != Global::OrderedDict) {
          error("NEWOBJ of ", cls->kind == Value::Kind::Global ? cls->text : kind_name(cls), " is not allowed");
        }
        stack_.push_back(call(cls, args));
        break;
      }
      case 'b': {  // BUILD: obj.__setstate__(state)
        // The state is dropped: an OrderedDict state dict carries `_metadata` (module
        // versions), a tensor may carry requires_grad and similar; neither affects the weights.
        pop();
        Value* object = top();
        if (object->kind != Value::Kind::Dict && object->kind != Value::Kind::Tensor) {
          error("BUILD on a ", kind_name(object), " is not allowed");
        }
        break;
      }
      case 's': {  // SETITEM
        Value* value = pop();
        Value* key = pop();
        set_item(top(), key, value);
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<Value*> items = pop_to_mark();
        if (items.size() % 2 != 0) error("SETITEMS with an odd number of values");
        Value* dict = top();
        for (size_t i = 0; i < items.size(); i += 2) set_item(dict, items[i], items[i + 1]);
        break;
      }
      case 'a': {  // APPEND
        Value* item = pop();
        append(top(), item);
        break;
      }
      case 'e': {  // APPENDS
        std::vector<Value*> items = pop_to_mark();
        Value* list = top();
        for (Value* item : items) append(list, item);
        break;
      }
      case 'Q': {  // BINPERSID
        Value* pid = pop();
        stack_.push_back(persistent_load(pid));
        break;
      }
      default: {
        char printable[8] = "";
        if (opcode >= 0x20 && opcode < 0x7f) std::snprintf(printable, sizeof printable, " ('%c')", opcode);
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", opcode);
        error("unsupported pickle opcode ", hex, printable);
      }
    }
  }
}

Value* Unpickler::global(const std::string& module, const std::string& name) {
  for (const AllowedGlobal& allowed : allowed_globals()) {
    if (module == allowed.module && name == allowed.name) {
      Value* value = make(Value::Kind::Global);
      value->global = allowed.global;
      value->storage_dtype = allowed.storage_dtype;
      value->text = module + "." + name;
      return value;
    }
  }
  fail(path_, ": refusing to unpickle global ", module, ".", name, ": only tensors, storages and dicts are allowed");
}

void Unpickler::set_item(Value* dict, Value* key, Value* value) {
  if (dict->kind != Value::Kind::Dict) error("SETITEM on a ", kind_name(dict), ", expected a dict");
  if (key->kind == Value::Kind::Str) {
    auto [found, inserted] = dict->str_keys.emplace(key->text, dict->entries.size());
    if (!inserted) {
      dict->entries[found->second].second = value;  // Python keeps the last value
      return;
    }
  }
  dict->entries.emplace_back(key, value);
}

void Unpickler::append(Value* list, Value* item) {
  if (list->kind != Value::Kind::List) error("APPEND on a ", kind_name(list), ", expected a list");
  list->items.push_back(item);
}

std::vector<int64_t> Unpickler::int_tuple(Value* value, const char* what) {
  if (value->kind != Value::Kind::Tuple) error(what, " is a ", kind_name(value), ", expected a tuple of ints");
  std::vector<int64_t> out;
  for (Value* item : value->items) {
    if (item->kind != Value::Kind::Int) error(what, " holds a ", kind_name(item), ", expected ints");
    out.push_back(item->integer);
  }
  return out;
}

// pid = ('storage', <torch XStorage>, key, location, numel). The location (e.g. 'cuda:0') is
// ignored: everything loads to the CPU.
Value* Unpickler::persistent_load(Value* pid) {
  const auto& items = pid->items;
  if (pid->kind != Value::Kind::Tuple || items.size() != 5 || items[0]->kind != Value::Kind::Str || items[0]->text != "storage") {
    error("persistent id is not ('storage', type, key, location, numel)");
  }
  if (items[1]->kind != Value::Kind::Global || items[1]->global != Global::StorageClass) {
    error("persistent id names ", items[1]->kind == Value::Kind::Global ? items[1]->text : kind_name(items[1]),
          ", expected a typed storage class");
  }
  if (items[2]->kind != Value::Kind::Str) error("persistent id key is a ", kind_name(items[2]), ", expected a str");
  if (items[4]->kind != Value::Kind::Int || items[4]->integer < 0) {
    error("storage \"", items[2]->text, "\": element count is not a non-negative int");
  }
  Value* storage = make(Value::Kind::Storage);
  storage->storage.dtype = items[1]->storage_dtype;
  storage->storage.key = items[2]->text;
  storage->storage.numel = items[4]->integer;
  return storage;
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
Value* Unpickler::rebuild_tensor_v2(const std::vector<Value*>& args) {
  if (args.size() != 6 && args.size() != 7) error("_rebuild_tensor_v2 takes 6 or 7 arguments, got ", args.size());
  if (args[0]->kind != Value::Kind::Storage) error("_rebuild_tensor_v2 storage is a ", kind_name(args[0]));
  if (args[1]->kind != Value::Kind::Int) error("_rebuild_tensor_v2 storage_offset is a ", kind_name(args[1]));
  Value* tensor = make(Value::Kind::Tensor);
  tensor->tensor.storage = &args[0]->storage;
  tensor->tensor.offset = args[1]->integer;
  tensor->tensor.size = int_tuple(args[2], "_rebuild_tensor_v2 size");
  tensor->tensor.stride = int_tuple(args[3], "_rebuild_tensor_v2 stride");
  if (tensor->tensor.size.size() != tensor->tensor.stride.size()) {
    error("_rebuild_tensor_v2 size has ", tensor->tensor.size.size(), " dimensions but stride has ", tensor->tensor.stride.size());
  }
  return tensor;
}

Value* Unpickler::call(Value* callable, Value* args) {
  if (callable->kind != Value::Kind::Global) error("REDUCE calls a ", kind_name(callable), ", which is not callable");
  if (args->kind != Value::Kind::Tuple) error("REDUCE arguments are a ", kind_name(args), ", expected a tuple");
  const std::vector<Value*>& items = args->items;
  switch (callable->global) {
    case Global::OrderedDict:
      if (!items.empty()) error("OrderedDict called with arguments");
      return make(Value::Kind::Dict);
    case Global::RebuildTensorV2: return rebuild_tensor_v2(items);
    case Global::RebuildParameter:           // (data, requires_grad, backward_hooks)
    case Global::RebuildParameterWithState:  // (data, requires_grad, backward_hooks, state)
      if (items.empty() || items[0]->kind != Value::Kind::Tensor) error(callable->text, " needs a tensor");
      return items[0];
    case Global::RebuildFromTypeV2: {  // (func, new_type, args, state): func(*args) as new_type
      if (items.size() != 4) error("_rebuild_from_type_v2 takes 4 arguments, got ", items.size());
      Value* func = items[0];
      Value* type = items[1];
      if (func->kind != Value::Kind::Global || func->global != Global::RebuildTensorV2) {
        error("_rebuild_from_type_v2 of ", func->kind == Value::Kind::Global ? func->text : kind_name(func),
              ", expected torch._utils._rebuild_tensor_v2");
      }
      if (type->kind != Value::Kind::Global || (type->global != Global::TensorClass && type->global != Global::ParameterClass)) {
        error("_rebuild_from_type_v2 to ", type->kind == Value::Kind::Global ? type->text : kind_name(type),
              ", expected torch.Tensor or torch.nn.Parameter");
      }
      return call(func, items[2]);
    }
    case Global::TensorClass:
    case Global::ParameterClass:
    case Global::StorageClass: error(callable->text, " cannot be called");
  }
  error("unreachable");
}

// ---------------------------------------------------------------------------------------------
// The zip archive. torch.save stores every record uncompressed under one top folder
// (archive/data.pkl, archive/data/0, ...), with zip64 fields where sizes or offsets need them.
// The archive is indexed here from its central directory instead of by libtorch's
// PyTorchStreamReader, which (in 1.13) leaks its index whenever a malformed archive makes its
// constructor throw, allocates whatever size a record's header claims before reading it, and is
// built without checking the CRC-32s (a flipped byte would load as a wrong weight).

uint32_t read_le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }
uint64_t read_le64(const uint8_t* p) { return read_le32(p) | (static_cast<uint64_t>(read_le32(p + 4)) << 32); }
uint16_t read_le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// How every structural defect of the archive is reported, before what the defect is.
constexpr const char* kUnreadable = ": not a readable torch.save zip archive (truncated or corrupt?): ";

class ZipArchive {
 public:
  // Reads and checks the central directory; throws vt::Error naming `path` when it is not one
  // a zip writer could have produced.
  ZipArchive(std::shared_ptr<caffe2::serialize::ReadAdapterInterface> bytes, std::string path);

  // Records by name without the top folder ("data.pkl", "data/0"), as torch names them.
  bool has(const std::string& name) const { return records_.count(name) > 0; }
  uint64_t size(const std::string& name) const { return find(name).size; }
  // Reads a record's size(name) bytes into `out` and checks them against the record's CRC-32.
  void read(const std::string& name, void* out) const;
  std::string read_string(const std::string& name) const {
    std::string text(size(name), '\0');
    read(name, text.data());
    return text;
  }

 private:
  struct Record {
    uint64_t header_offset;  // of the record's local header
    uint64_t size;
    uint32_t crc;
  };
  const Record& find(const std::string& name) const {
    auto found = records_.find(name);
    VT_CHECK(found != records_.end(), path_, ": record ", name, " is missing from the archive");
    return found->second;
  }
  // `size` bytes at `offset`, which must lie inside the archive.
  std::vector<uint8_t> read_at(uint64_t offset, uint64_t size, const char* what) const;

  std::shared_ptr<caffe2::serialize::ReadAdapterInterface> bytes_;
  std::string path_;
  uint64_t archive_size_;
  std::unordered_map<std::string, Record> records_;
};

std::vector<uint8_t> ZipArchive::read_at(uint64_t offset, uint64_t size, const char* what) const {
  VT_CHECK(offset <= archive_size_ && size <= archive_size_ - offset, path_, kUnreadable, "its ", what, " lies outside the file");
  std::vector<uint8_t> out(size);
  size_t got = 0;
  try {
    got = size == 0 ? 0 : bytes_->read(offset, out.data(), size, what);
  } catch (const c10::Error& e) {
    fail(path_, ": cannot read the ", what, ": ", e.what_without_backtrace());
  }
  VT_CHECK(got == size, path_, ": cannot read the ", what);
  return out;
}

ZipArchive::ZipArchive(std::shared_ptr<caffe2::serialize::ReadAdapterInterface> bytes, std::string path)
    : bytes_(std::move(bytes)), path_(std::move(path)), archive_size_(bytes_->size()) {
  // The end-of-central-directory record: in the last 64 KiB + 22 bytes (its comment may follow it).
  const uint64_t tail_size = std::min<uint64_t>(archive_size_, 65536 + 22);
  const auto tail = read_at(archive_size_ - tail_size, tail_size, "last bytes");
  int64_t end = -1;
  for (int64_t i = static_cast<int64_t>(tail_size) - 22; i >= 0; --i) {
    if (read_le32(tail.data() + i) == 0x06054b50) {
      end = i;
      break;
    }
  }
  VT_CHECK(end >= 0, path_, kUnreadable, "no zip end-of-central-directory record");
  uint64_t entries = read_le16(tail.data() + end + 10), directory_size = read_le32(tail.data() + end + 12),
           directory_offset = read_le32(tail.data() + end + 16);
  if (directory_offset == 0xffffffffu || entries == 0xffffu) {
    // Zip64: the locator just before points at the zip64 end record.
    VT_CHECK(end >= 20 && read_le32(tail.data() + end - 20) == 0x07064b50, path_, kUnreadable, "zip64 end record without its locator");
    const auto record = read_at(read_le64(tail.data() + end - 20 + 8), 56, "zip64 end record");
    VT_CHECK(read_le32(record.data()) == 0x06064b50, path_, kUnreadable, "zip64 end record not found");
    entries = read_le64(record.data() + 32);
    directory_size = read_le64(record.data() + 40);
    directory_offset = read_le64(record.data() + 48);
  }
  VT_CHECK(directory_size <= (uint64_t{1} << 31), path_, kUnreadable, "a central directory of ", directory_size, " bytes");
  const auto directory = read_at(directory_offset, directory_size, "zip central directory");

  std::string folder;  // the top folder, named by the first record, as PyTorchStreamReader takes it
  uint64_t at = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    VT_CHECK(at + 46 <= directory.size() && read_le32(directory.data() + at) == 0x02014b50, path_, kUnreadable, "central directory entry ",
             i, " is malformed");
    const uint8_t* entry = directory.data() + at;
    const uint64_t name_size = read_le16(entry + 28), extra_size = read_le16(entry + 30), comment_size = read_le16(entry + 32);
    VT_CHECK(at + 46 + name_size + extra_size + comment_size <= directory.size(), path_, kUnreadable, "central directory entry ", i,
             " is malformed");
    const std::string name(reinterpret_cast<const char*>(entry + 46), name_size);
    const uint16_t method = read_le16(entry + 10);
    uint64_t compressed = read_le32(entry + 20), size = read_le32(entry + 24), header_offset = read_le32(entry + 42);
    // Zip64 extra field (id 1): the 64-bit values of the fields that hold 0xffffffff, in this order.
    const uint8_t* extra = entry + 46 + name_size;
    for (uint64_t e = 0; e + 4 <= extra_size;) {
      const uint16_t id = read_le16(extra + e), length = read_le16(extra + e + 2);
      VT_CHECK(e + 4 + length <= extra_size, path_, kUnreadable, "record ", name, " has a malformed extra field");
      if (id == 1) {
        uint64_t used = 0;
        for (uint64_t* field : {&size, &compressed, &header_offset}) {
          if (*field != 0xffffffffu) continue;
          VT_CHECK(used + 8 <= length, path_, kUnreadable, "record ", name, " has a short zip64 field");
          *field = read_le64(extra + e + 4 + used);
          used += 8;
        }
      }
      e += 4 + length;
    }
    at += 46 + name_size + extra_size + comment_size;

    if (i == 0) {
      const auto slash = name.find('/');
      VT_CHECK(slash != std::string::npos, path_, kUnreadable, "its records are not inside a folder");
      folder = name.substr(0, slash + 1);
    }
    if (name.compare(0, folder.size(), folder) != 0) continue;  // outside the archive's folder: not a record
    const std::string record = name.substr(folder.size());
    VT_CHECK(method == 0 && compressed == size, path_, kUnreadable, "record ", record, " is compressed (method ", method,
             "); torch.save stores records uncompressed");
    VT_CHECK(header_offset < archive_size_ && size <= archive_size_, path_, kUnreadable, "record ", record, " lies outside the file");
    VT_CHECK(records_.emplace(record, Record{header_offset, size, read_le32(entry + 16)}).second, path_, kUnreadable, "record ", record,
             " appears twice");
  }
}

void ZipArchive::read(const std::string& name, void* out) const {
  const Record& record = find(name);
  // The record's bytes follow its local header, whose own name and extra field (torch pads the
  // data to 64 bytes there) can differ in length from the central directory's.
  const auto header = read_at(record.header_offset, 30, "local header of a record");
  VT_CHECK(read_le32(header.data()) == 0x04034b50, path_, kUnreadable, "record ", name, " has no local header");
  const uint64_t offset = record.header_offset + 30 + read_le16(header.data() + 26) + read_le16(header.data() + 28);
  VT_CHECK(offset <= archive_size_ && record.size <= archive_size_ - offset, path_, kUnreadable, "record ", name, " lies outside the file");
  size_t got = 0;
  try {
    got = record.size == 0 ? 0 : bytes_->read(offset, out, record.size, "record");
  } catch (const c10::Error& e) {
    fail(path_, ": cannot read record ", name, ": ", e.what_without_backtrace());
  }
  VT_CHECK(got == record.size, path_, ": cannot read record ", name);
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t done = 0; done < record.size;) {
    const auto chunk = static_cast<uInt>(std::min<uint64_t>(record.size - done, 1u << 30));
    crc = crc32(crc, static_cast<const Bytef*>(out) + done, chunk);
    done += chunk;
  }
  VT_CHECK(static_cast<uint32_t>(crc) == record.crc, path_, ": record ", name, " fails its CRC-32 check (corrupt archive)");
}

// ---------------------------------------------------------------------------------------------
// Turning the unpickled state dict into tensors

// Reads each storage record once; tensors that share a storage share its bytes.
class StorageLoader {
 public:
  StorageLoader(std::string path, const ZipArchive& archive) : path_(std::move(path)), archive_(archive) {}

  torch::Tensor load(const Storage& storage, const std::string& tensor_name) {
    const std::string where = str_cat(path_, ": tensor \"", tensor_name, "\": storage \"", storage.key, "\"");
    auto cached = cache_.find(storage.key);
    if (cached != cache_.end()) {
      if (cached->second.scalar_type() != storage.dtype || cached->second.numel() != storage.numel) {
        fail(where, " is used as ", c10::toString(storage.dtype), "[", storage.numel, "] and as ",
             c10::toString(cached->second.scalar_type()), "[", cached->second.numel(), "]");
      }
      return cached->second;
    }
    const std::string record = "data/" + storage.key;
    if (!archive_.has(record)) fail(where, ": record ", record, " is missing from the archive");
    // Sizes agree before anything is allocated: the record's size is bounded by the file's.
    const uint64_t record_size = archive_.size(record);
    const uint64_t expected = static_cast<uint64_t>(storage.numel) * c10::elementSize(storage.dtype);
    if (storage.numel > INT64_MAX / static_cast<int64_t>(c10::elementSize(storage.dtype)) || record_size != expected) {
      fail(where, ": record ", record, " has ", record_size, " bytes but ", storage.numel, " elements of ", c10::toString(storage.dtype),
           " need ", expected);
    }
    torch::Tensor tensor = torch::empty({storage.numel}, torch::TensorOptions().dtype(storage.dtype));
    archive_.read(record, tensor.data_ptr());
    cache_.emplace(storage.key, tensor);
    return tensor;
  }

 private:
  std::string path_;
  const ZipArchive& archive_;
  std::unordered_map<std::string, torch::Tensor> cache_;
};

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? "," : "") + std::to_string(dims[i]);
  return out + "]";
}

// The view (offset, size, stride) must stay inside the storage; as_strided would otherwise
// read out of bounds or fail with a message that names neither the file nor the tensor.
torch::Tensor materialize(const std::string& path, const std::string& name, const TensorSpec& spec, StorageLoader& storages) {
  const std::string where = str_cat(path, ": tensor \"", name, "\"");
  const std::string view = str_cat("size ", dims_text(spec.size), " stride ", dims_text(spec.stride), " offset ", spec.offset);
  VT_CHECK(spec.offset >= 0, where, ": ", view, ": negative storage offset");
  bool empty = false;
  for (size_t i = 0; i < spec.size.size(); ++i) {
    VT_CHECK(spec.size[i] >= 0 && spec.stride[i] >= 0, where, ": ", view, ": negative size or stride");
    empty = empty || spec.size[i] == 0;
  }
  // One past the last element the view reaches, in 128 bits so that no product wraps around.
  __int128 reach = spec.offset;
  if (!empty) {
    reach += 1;
    for (size_t i = 0; i < spec.size.size(); ++i) {
      reach += static_cast<__int128>(spec.size[i] - 1) * spec.stride[i];
      if (reach > INT64_MAX) break;
    }
  }
  VT_CHECK(reach <= spec.storage->numel, where, ": ", view, " reaches beyond storage \"", spec.storage->key, "\" of ", spec.storage->numel,
           " elements");
  torch::Tensor storage = storages.load(*spec.storage, name);
  return storage.as_strided(spec.size, spec.stride, spec.offset);
}

// Legacy (pre-1.6) torch.save files are a pickle of the magic number 0x1950a86a20f9469cfc6c:
// PROTO n, LONG1 of 10 bytes.
bool is_legacy_torch_save(const caffe2::serialize::ReadAdapterInterface& archive) {
  unsigned char head[4] = {};
  try {
    if (archive.size() < 4 || archive.read(0, head, sizeof head) != 4) return false;
  } catch (const c10::Error&) {
    return false;  // unreadable: the zip reader reports it, naming the file
  }
  return head[0] == 0x80 && head[2] == 0x8a && head[3] == 0x0a;
}

// Bytes in memory, read as FileAdapter reads a file: a read past the end returns what there is.
// (libtorch 1.13's MemoryReadAdapter copies whatever is asked, past the end included.)
class MemoryAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  MemoryAdapter(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t position, void* buffer, size_t count, const char* what = "") const override {
    if (position >= size_ || count == 0) return 0;
    count = std::min<uint64_t>(count, size_ - position);
    std::memcpy(buffer, data_ + position, count);
    return count;
  }

 private:
  const uint8_t* data_;
  size_t size_;
};

TensorMap load_archive(std::shared_ptr<caffe2::serialize::ReadAdapterInterface> bytes, const std::string& path) {
  VT_CHECK(!is_legacy_torch_save(*bytes), path,
           ": legacy torch.save format is not supported; re-save with "
           "torch.save(..., _use_new_zipfile_serialization=True) or convert to safetensors");

  const ZipArchive archive(std::move(bytes), path);
  VT_CHECK(archive.has("data.pkl"), path, ": the archive has no data.pkl (not a torch.save file?)");
  // Since torch 2.1 the archive says which byte order its storages use; older ones are
  // little-endian.
  if (archive.has("byteorder")) {
    const std::string byte_order = archive.read_string("byteorder");
    VT_CHECK(byte_order == "little", path, ": storages are stored with byte order \"", byte_order,
             "\"; only little-endian checkpoints are supported");
  }
  std::vector<uint8_t> pickle(archive.size("data.pkl"));
  archive.read("data.pkl", pickle.data());
  Unpickler unpickler(path, pickle.data(), pickle.size());
  const Value* root = unpickler.run();
  VT_CHECK(root->kind == Value::Kind::Dict, path, ": top-level object is a ", kind_name(root), ", expected a state dict");

  StorageLoader storages(path, archive);
  TensorMap out;
  for (const auto& [key, value] : root->entries) {
    VT_CHECK(key->kind == Value::Kind::Str, path, ": state dict key is a ", kind_name(key), ", expected a str");
    VT_CHECK(value->kind == Value::Kind::Tensor, path, ": value of \"", key->text, "\" is a ", kind_name(value), ", expected a tensor");
    out.emplace(key->text, materialize(path, key->text, value->tensor, storages));
  }
  return out;
}

}  // namespace

TensorMap load_torch_checkpoint(const std::string& path) {
  ErrorScope errors(ErrorCode::Checkpoint);
  {
    std::ifstream probe(path, std::ios::binary);
    VT_CHECK(probe, path, ": cannot open: ", std::strerror(errno));
  }
  std::shared_ptr<caffe2::serialize::FileAdapter> file;
  try {
    file = std::make_shared<caffe2::serialize::FileAdapter>(path);
  } catch (const c10::Error& e) {
    fail(path, ": cannot open: ", e.what_without_backtrace());
  }
  return load_archive(std::move(file), path);
}

TensorMap load_torch_checkpoint(const uint8_t* data, size_t size, const std::string& source) {
  ErrorScope errors(ErrorCode::Checkpoint);
  return load_archive(std::make_shared<MemoryAdapter>(data, size), source);
}

}  // namespace vt
