#include "io/torch_pickle.h"

#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caffe2/serialize/inline_container.h>
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
// The archive's CRC-32s. libtorch's zip reader is built without checking them, so a flipped byte
// in a record would load as a wrong weight; the central directory's values are checked here.

uint32_t read_le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }
uint64_t read_le64(const uint8_t* p) { return read_le32(p) | (static_cast<uint64_t>(read_le32(p + 4)) << 32); }
uint16_t read_le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// Record name (without the archive's top folder, as PyTorchStreamReader names records) -> CRC-32.
std::unordered_map<std::string, uint32_t> zip_crcs(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  VT_CHECK(in, path, ": cannot open: ", std::strerror(errno));
  const auto file_size = static_cast<uint64_t>(in.tellg());
  auto read_at = [&](uint64_t offset, uint64_t size) {
    VT_CHECK(offset + size <= file_size && size <= (uint64_t{1} << 31), path, ": zip central directory outside the file (corrupt archive)");
    std::vector<uint8_t> bytes(size);
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
    VT_CHECK(in, path, ": cannot read the zip central directory");
    return bytes;
  };
  // The end-of-central-directory record: in the last 64 KiB + 22 bytes (its comment may precede).
  const uint64_t tail_size = std::min<uint64_t>(file_size, 65536 + 22);
  const auto tail = read_at(file_size - tail_size, tail_size);
  int64_t end = -1;
  for (int64_t i = static_cast<int64_t>(tail_size) - 22; i >= 0; --i) {
    if (read_le32(tail.data() + i) == 0x06054b50) {
      end = i;
      break;
    }
  }
  VT_CHECK(end >= 0, path, ": no zip end-of-central-directory record (truncated or not a zip archive)");
  uint64_t entries = read_le16(tail.data() + end + 10), directory_size = read_le32(tail.data() + end + 12),
           directory_offset = read_le32(tail.data() + end + 16);
  if (directory_offset == 0xffffffffu || entries == 0xffffu) {
    // Zip64: the locator just before points at the zip64 end record.
    VT_CHECK(end >= 20 && read_le32(tail.data() + end - 20) == 0x07064b50, path, ": zip64 archive without its locator (corrupt archive)");
    const auto record = read_at(read_le64(tail.data() + end - 20 + 8), 56);
    VT_CHECK(read_le32(record.data()) == 0x06064b50, path, ": zip64 end record not found (corrupt archive)");
    entries = read_le64(record.data() + 32);
    directory_size = read_le64(record.data() + 40);
    directory_offset = read_le64(record.data() + 48);
  }
  const auto directory = read_at(directory_offset, directory_size);
  std::unordered_map<std::string, uint32_t> crcs;
  uint64_t at = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    VT_CHECK(at + 46 <= directory.size() && read_le32(directory.data() + at) == 0x02014b50, path, ": zip central directory entry ", i,
             " is malformed (corrupt archive)");
    const uint8_t* entry = directory.data() + at;
    const uint64_t name_size = read_le16(entry + 28), extra_size = read_le16(entry + 30), comment_size = read_le16(entry + 32);
    VT_CHECK(at + 46 + name_size <= directory.size(), path, ": zip central directory entry ", i, " is malformed (corrupt archive)");
    std::string name(reinterpret_cast<const char*>(entry + 46), name_size);
    const auto slash = name.find('/');
    crcs[slash == std::string::npos ? name : name.substr(slash + 1)] = read_le32(entry + 16);
    at += 46 + name_size + extra_size + comment_size;
  }
  return crcs;
}

void check_crc(const std::string& path, const std::unordered_map<std::string, uint32_t>& crcs, const std::string& record, const void* data,
               size_t size) {
  const auto expected = crcs.find(record);
  VT_CHECK(expected != crcs.end(), path, ": record ", record, " is not in the zip central directory (corrupt archive)");
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t done = 0; done < size;) {
    const auto chunk = static_cast<uInt>(std::min<size_t>(size - done, 1u << 30));
    crc = crc32(crc, static_cast<const Bytef*>(data) + done, chunk);
    done += chunk;
  }
  VT_CHECK(static_cast<uint32_t>(crc) == expected->second, path, ": record ", record, " fails its CRC-32 check (corrupt archive)");
}

// ---------------------------------------------------------------------------------------------
// Turning the unpickled state dict into tensors

// Reads each storage record once; tensors that share a storage share its bytes.
class StorageLoader {
 public:
  StorageLoader(std::string path, caffe2::serialize::PyTorchStreamReader& reader, const std::unordered_map<std::string, uint32_t>& crcs)
      : path_(std::move(path)), reader_(reader), crcs_(crcs) {}

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
    at::DataPtr bytes;
    size_t record_size = 0;
    try {
      if (!reader_.hasRecord(record)) fail(where, ": record ", record, " is missing from the archive");
      std::tie(bytes, record_size) = reader_.getRecord(record);
    } catch (const c10::Error& e) {
      fail(where, ": cannot read record ", record, ": ", e.what_without_backtrace());
    }
    const uint64_t expected = static_cast<uint64_t>(storage.numel) * c10::elementSize(storage.dtype);
    if (storage.numel > INT64_MAX / static_cast<int64_t>(c10::elementSize(storage.dtype)) || record_size != expected) {
      fail(where, ": record ", record, " has ", record_size, " bytes but ", storage.numel, " elements of ", c10::toString(storage.dtype),
           " need ", expected);
    }
    check_crc(path_, crcs_, record, bytes.get(), record_size);
    torch::Tensor tensor = torch::empty({storage.numel}, torch::TensorOptions().dtype(storage.dtype));
    if (record_size > 0) std::memcpy(tensor.data_ptr(), bytes.get(), record_size);
    cache_.emplace(storage.key, tensor);
    return tensor;
  }

 private:
  std::string path_;
  caffe2::serialize::PyTorchStreamReader& reader_;
  const std::unordered_map<std::string, uint32_t>& crcs_;
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
bool is_legacy_torch_save(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char head[4] = {};
  in.read(reinterpret_cast<char*>(head), sizeof head);
  return in.gcount() == 4 && head[0] == 0x80 && head[2] == 0x8a && head[3] == 0x0a;
}

}  // namespace

TensorMap load_torch_checkpoint(const std::string& path) {
  ErrorScope errors(ErrorCode::Checkpoint);
  {
    std::ifstream probe(path, std::ios::binary);
    VT_CHECK(probe, path, ": cannot open: ", std::strerror(errno));
  }
  VT_CHECK(!is_legacy_torch_save(path), path,
           ": legacy torch.save format is not supported; re-save with "
           "torch.save(..., _use_new_zipfile_serialization=True) or convert to safetensors");

  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  at::DataPtr pickle;
  size_t pickle_size = 0;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    VT_CHECK(reader->hasRecord("data.pkl"), path, ": the archive has no data.pkl (not a torch.save file?)");
    std::tie(pickle, pickle_size) = reader->getRecord("data.pkl");
    // Since torch 2.1 the archive says which byte order its storages use; older ones are
    // little-endian.
    if (reader->hasRecord("byteorder")) {
      auto [order, order_size] = reader->getRecord("byteorder");
      std::string byte_order(static_cast<const char*>(order.get()), order_size);
      VT_CHECK(byte_order == "little", path, ": storages are stored with byte order \"", byte_order,
               "\"; only little-endian checkpoints are supported");
    }
  } catch (const c10::Error& e) {
    fail(path, ": not a readable torch.save zip archive (truncated or corrupt?): ", e.what_without_backtrace());
  }

  const auto crcs = zip_crcs(path);
  check_crc(path, crcs, "data.pkl", pickle.get(), pickle_size);
  Unpickler unpickler(path, static_cast<const uint8_t*>(pickle.get()), pickle_size);
  const Value* root = unpickler.run();
  VT_CHECK(root->kind == Value::Kind::Dict, path, ": top-level object is a ", kind_name(root), ", expected a state dict");

  StorageLoader storages(path, *reader, crcs);
  TensorMap out;
  for (const auto& [key, value] : root->entries) {
    VT_CHECK(key->kind == Value::Kind::Str, path, ": state dict key is a ", kind_name(key), ", expected a str");
    VT_CHECK(value->kind == Value::Kind::Tensor, path, ": value of \"", key->text, "\" is a ", kind_name(value), ", expected a tensor");
    out.emplace(key->text, materialize(path, key->text, value->tensor, storages));
  }
  return out;
}

}  // namespace vt
