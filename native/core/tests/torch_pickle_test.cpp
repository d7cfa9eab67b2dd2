#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include "io/safetensors.h"
#include "io/torch_pickle.h"
#include "test_util.h"

namespace {

using vt_test::expect_error;
using vt_test::fixture;
using vt_test::read_bytes;
using vt_test::TempDir;
using vt_test::write_bytes;

// Writes a torch.save-style zip: <stem>/data.pkl, <stem>/data/<key> records and any others.
void write_archive(const std::string& path, const std::string& pickle, const std::map<std::string, std::string>& storages = {},
                   const std::map<std::string, std::string>& other_records = {}) {
  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [key, bytes] : storages) writer.writeRecord("data/" + key, bytes.data(), bytes.size());
  for (const auto& [name, bytes] : other_records) writer.writeRecord(name, bytes.data(), bytes.size());
  writer.writeEndOfFile();
}

template <typename T>
std::string raw_bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// Assembles pickle opcodes the way Python's pickler (and so torch.save) emits them.
class Pickle {
 public:
  explicit Pickle(int protocol = 2) { op('\x80').byte(protocol); }

  Pickle& op(char opcode) {
    bytes_ += opcode;
    return *this;
  }
  Pickle& byte(int value) {
    bytes_ += static_cast<char>(value);
    return *this;
  }
  Pickle& le32(uint32_t value) {
    for (int i = 0; i < 4; ++i) byte((value >> (8 * i)) & 0xff);
    return *this;
  }
  Pickle& str(const std::string& text) {
    op('X').le32(text.size());
    bytes_ += text;
    return *this;
  }
  Pickle& short_str(const std::string& text) {
    op('\x8c').byte(text.size());
    bytes_ += text;
    return *this;
  }
  Pickle& integer(int value) { return value >= 0 && value < 256 ? op('K').byte(value) : op('J').le32(value); }
  Pickle& global(const std::string& module, const std::string& name) {
    op('c');
    bytes_ += module + "\n" + name + "\n";
    return *this;
  }
  Pickle& put(int index) { return op('q').byte(index); }
  Pickle& get(int index) { return op('h').byte(index); }
  Pickle& mark() { return op('('); }
  Pickle& tuple() { return op('t'); }
  Pickle& empty_tuple() { return op(')'); }
  Pickle& empty_dict() { return op('}'); }
  Pickle& reduce() { return op('R'); }
  Pickle& int_tuple(const std::vector<int>& values) {
    mark();
    for (int value : values) integer(value);
    return tuple();
  }
  // ('storage', torch.<type>, key, 'cpu', numel) BINPERSID
  Pickle& storage(const std::string& type, const std::string& key, int numel) {
    mark().str("storage").global("torch", type).str(key).str("cpu").integer(numel).tuple();
    return op('Q');
  }
  // _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())
  Pickle& tensor(const std::string& type, const std::string& key, int numel, int offset, const std::vector<int>& size,
                 const std::vector<int>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    storage(type, key, numel).integer(offset).int_tuple(size).int_tuple(stride).op('\x89');
    return global("collections", "OrderedDict").empty_tuple().reduce().tuple().reduce();
  }
  Pickle& stop() { return op('.'); }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

// {name: float32 tensor of `size` over storage "0" of `numel` elements}
std::string single_tensor_pickle(const std::string& name, int numel, int offset, const std::vector<int>& size,
                                 const std::vector<int>& stride) {
  Pickle pickle;
  pickle.empty_dict().str(name).tensor("FloatStorage", "0", numel, offset, size, stride).op('s').stop();
  return pickle.bytes();
}

TEST(TorchCheckpoint, FixtureEqualsTheSafetensorsFixture) {
  vt::TensorMap from_pickle = vt::load_torch_checkpoint(fixture("vit-tiny-random-pt/pytorch_model.bin"));
  vt::TensorMap from_safetensors = vt::load_safetensors(fixture("vit-tiny-random/model.safetensors"));
  ASSERT_EQ(from_pickle.size(), from_safetensors.size());
  for (auto a = from_pickle.begin(), b = from_safetensors.begin(); a != from_pickle.end(); ++a, ++b) {
    ASSERT_EQ(a->first, b->first);
    EXPECT_EQ(a->second.scalar_type(), b->second.scalar_type()) << a->first;
    EXPECT_TRUE(torch::equal(a->second, b->second)) << a->first;
  }
}

TEST(TorchCheckpoint, StateDictWithMetadataParametersAndSharedStorages) {
  TempDir dir;
  Pickle pickle;
  // OrderedDict() with its items, then BUILD with {'_metadata': OrderedDict(...)}, as
  // torch.save(module.state_dict()) writes it.
  pickle.global("collections", "OrderedDict").put(0).empty_tuple().reduce().put(1).mark();
  // "row": arange(6)[2:5]; "col": arange(6).view(2,3)[:,1] (stride 3), sharing storage "0".
  pickle.str("row").tensor("FloatStorage", "0", 6, 2, {3}, {1});
  pickle.str("col").tensor("FloatStorage", "0", 6, 1, {2}, {3});
  // A Parameter: _rebuild_parameter(tensor, True, OrderedDict())
  pickle.str("param").global("torch._utils", "_rebuild_parameter");
  pickle.mark().tensor("BFloat16Storage", "1", 2, 0, {2}, {1}).op('\x88').get(0).empty_tuple().reduce().tuple();
  pickle.reduce();
  // Newer torch: _rebuild_from_type_v2(_rebuild_tensor_v2, torch.Tensor, args, {})
  pickle.str("typed").global("torch._tensor", "_rebuild_from_type_v2").mark();
  pickle.global("torch._utils", "_rebuild_tensor_v2").global("torch", "Tensor").mark();
  pickle.storage("LongStorage", "2", 1).integer(0).empty_tuple().empty_tuple().op('\x89').get(0).empty_tuple().reduce();
  pickle.tuple().empty_dict().tuple().reduce();
  pickle.str("flags").tensor("BoolStorage", "3", 3, 0, {3}, {1});
  pickle.str("nothing").tensor("FloatStorage", "4", 0, 0, {0, 4}, {4, 1});
  pickle.op('u');
  pickle.empty_dict().str("_metadata").get(0).empty_tuple().reduce();
  pickle.mark().str("").empty_dict().str("version").integer(1).op('s').op('u').op('s').op('b').stop();

  const std::vector<uint16_t> bf16 = {0x3f80, 0xc000};  // 1.0, -2.0
  const std::string path = dir.file("pytorch_model.bin");
  write_archive(path, pickle.bytes(),
                {{"0", raw_bytes(std::vector<float>{0, 1, 2, 3, 4, 5})},
                 {"1", raw_bytes(bf16)},
                 {"2", raw_bytes(std::vector<int64_t>{-7})},
                 {"3", raw_bytes(std::vector<uint8_t>{1, 0, 1})},
                 {"4", ""}});

  vt::TensorMap loaded = vt::load_torch_checkpoint(path);
  ASSERT_EQ(loaded.size(), 6u);
  EXPECT_TRUE(torch::equal(loaded.at("row"), torch::tensor({2.f, 3.f, 4.f})));
  EXPECT_TRUE(torch::equal(loaded.at("col"), torch::tensor({1.f, 4.f})));
  EXPECT_EQ(loaded.at("row").storage().data(), loaded.at("col").storage().data()) << "one storage, read once";
  EXPECT_EQ(loaded.at("param").scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(loaded.at("param").to(torch::kFloat32), torch::tensor({1.f, -2.f})));
  EXPECT_EQ(loaded.at("typed").dim(), 0);
  EXPECT_EQ(loaded.at("typed").item<int64_t>(), -7);
  EXPECT_TRUE(torch::equal(loaded.at("flags"), torch::tensor({true, false, true})));
  EXPECT_EQ(loaded.at("nothing").sizes(), (std::vector<int64_t>{0, 4}));
}

TEST(TorchCheckpoint, Protocol4OpcodesAreUnderstood) {
  TempDir dir;
  // FRAME, STACK_GLOBAL, SHORT_BINUNICODE, MEMOIZE, as protocol 4 pickles use them.
  Pickle pickle(4);
  pickle.op('\x95');
  for (int i = 0; i < 8; ++i) pickle.byte(0);
  pickle.op('}').op('\x94').short_str("w").op('\x94');
  pickle.short_str("torch._utils").short_str("_rebuild_tensor_v2").op('\x93').op('\x94').mark();
  pickle.storage("FloatStorage", "0", 2).integer(0).int_tuple({2}).int_tuple({1}).op('\x89');
  pickle.short_str("collections").short_str("OrderedDict").op('\x93').op(')').reduce().tuple().reduce();
  pickle.op('s').stop();
  const std::string path = dir.file("p4.bin");
  write_archive(path, pickle.bytes(), {{"0", raw_bytes(std::vector<float>{0.5f, 8.f})}});
  EXPECT_TRUE(torch::equal(vt::load_torch_checkpoint(path).at("w"), torch::tensor({0.5f, 8.f})));
}

TEST(TorchCheckpoint, RefusesOsSystem) {
  TempDir dir;
  const std::string path = dir.file("pytorch_model.bin");
  // os.system("ls"), as a malicious pickle would call it.
  const char evil[] =
      "\x80\x02"
      "cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
  write_archive(path, std::string(evil, sizeof evil - 1));
  expect_error([&] { vt::load_torch_checkpoint(path); },
               {"pytorch_model.bin: refusing to unpickle global os.system: only tensors, storages and dicts are allowed"});
}

TEST(TorchCheckpoint, RefusesGlobalsFromStackGlobal) {
  TempDir dir;
  Pickle pickle(4);
  pickle.short_str("builtins").short_str("eval").op('\x93').short_str("1").op('\x85').reduce().stop();
  const std::string path = dir.file("evil.bin");
  write_archive(path, pickle.bytes());
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"evil.bin", "global builtins.eval"});
}

TEST(TorchCheckpoint, RefusesNewObjOfOtherClasses) {
  TempDir dir;
  Pickle pickle;
  pickle.global("torch", "Tensor").empty_tuple().op('\x81').stop();
  const std::string path = dir.file("newobj.bin");
  write_archive(path, pickle.bytes());
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"newobj.bin", "NEWOBJ of torch.Tensor"});
}

TEST(TorchCheckpoint, TopLevelListIsRefused) {
  TempDir dir;
  const std::string path = dir.file("list.bin");
  write_archive(path, Pickle().op(']').put(0).stop().bytes());
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"list.bin", "top-level object is a list, expected a state dict"});
}

TEST(TorchCheckpoint, NonTensorValueIsNamed) {
  TempDir dir;
  const std::string path = dir.file("nested.bin");
  write_archive(path, Pickle().empty_dict().str("state_dict").empty_dict().op('s').stop().bytes());
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"nested.bin", "value of \"state_dict\" is a dict, expected a tensor"});
}

TEST(TorchCheckpoint, UnknownOpcodeIsNamedWithItsOffset) {
  TempDir dir;
  const std::string path = dir.file("opcode.bin");
  write_archive(path, Pickle().op('I').stop().bytes());  // INT: a protocol-0 opcode
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"opcode.bin", "offset 2", "opcode 0x49 ('I')"});
}

TEST(TorchCheckpoint, TruncatedPickleIsRefused) {
  TempDir dir;
  const std::string path = dir.file("short.bin");
  write_archive(path, Pickle().empty_dict().str("w").bytes().substr(0, 6));
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"short.bin", "offset 3", "truncated"});
  write_archive(path, Pickle().empty_dict().bytes());
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"short.bin", "offset 3", "before its STOP"});
}

TEST(TorchCheckpoint, ViewOutsideItsStorageNamesTheTensor) {
  TempDir dir;
  const std::string path = dir.file("view.bin");
  write_archive(path, single_tensor_pickle("encoder.weight", 4, 2, {2, 2}, {2, 1}), {{"0", raw_bytes(std::vector<float>{0, 1, 2, 3})}});
  expect_error([&] { vt::load_torch_checkpoint(path); },
               {"view.bin", "tensor \"encoder.weight\"", "size [2,2] stride [2,1] offset 2", "beyond storage \"0\" of 4 elements"});
}

TEST(TorchCheckpoint, StorageRecordOfTheWrongSizeNamesTheTensor) {
  TempDir dir;
  const std::string path = dir.file("record.bin");
  write_archive(path, single_tensor_pickle("encoder.bias", 4, 0, {4}, {1}), {{"0", raw_bytes(std::vector<float>{0, 1, 2})}});
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"record.bin", "tensor \"encoder.bias\"", "has 12 bytes but 4 elements"});
}

TEST(TorchCheckpoint, MissingStorageRecordNamesTheTensor) {
  TempDir dir;
  const std::string path = dir.file("record.bin");
  write_archive(path, single_tensor_pickle("encoder.bias", 4, 0, {4}, {1}));
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"record.bin", "tensor \"encoder.bias\"", "data/0"});
}

TEST(TorchCheckpoint, ByteOrderRecordIsHonoured) {
  TempDir dir;
  const std::string pickle = single_tensor_pickle("w", 2, 0, {2}, {1});
  const std::string storage = raw_bytes(std::vector<float>{1.f, 2.f});
  const std::string little = dir.file("little.bin");
  write_archive(little, pickle, {{"0", storage}}, {{"byteorder", "little"}});
  EXPECT_TRUE(torch::equal(vt::load_torch_checkpoint(little).at("w"), torch::tensor({1.f, 2.f})));

  const std::string big = dir.file("big.bin");
  write_archive(big, pickle, {{"0", storage}}, {{"byteorder", "big"}});
  expect_error([&] { vt::load_torch_checkpoint(big); }, {"big.bin", "byte order \"big\""});
}

TEST(TorchCheckpoint, TruncatedArchiveNamesTheFile) {
  TempDir dir;
  const std::string bytes = read_bytes(fixture("vit-tiny-random-pt/pytorch_model.bin"));
  const std::string path = dir.file("pytorch_model.bin");
  write_bytes(path, bytes.substr(0, bytes.size() / 2));
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"pytorch_model.bin", "zip archive"});
}

TEST(TorchCheckpoint, FlippedByteInAStorageFailsItsCrc) {
  TempDir dir;
  std::string bytes = read_bytes(fixture("vit-tiny-random-pt/pytorch_model.bin"));
  size_t offset = 0;
  {
    caffe2::serialize::PyTorchStreamReader reader(fixture("vit-tiny-random-pt/pytorch_model.bin"));
    offset = reader.getRecordOffset("data/0");
  }
  bytes[offset + 1] = static_cast<char>(bytes[offset + 1] ^ 0x40);  // a weight that would load wrong
  const std::string path = dir.file("pytorch_model.bin");
  write_bytes(path, bytes);
  expect_error([&] { vt::load_torch_checkpoint(path); }, {"pytorch_model.bin", "record data/0", "CRC-32"});
}

TEST(TorchCheckpoint, LegacyFormatIsRefusedWithAdvice) {
  TempDir dir;
  const std::string path = dir.file("legacy.bin");
  write_bytes(path, std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15));
  expect_error([&] { vt::load_torch_checkpoint(path); },
               {"legacy.bin", "legacy torch.save format is not supported", "_use_new_zipfile_serialization=True"});
}

TEST(TorchCheckpoint, MissingFileIsNamed) {
  TempDir dir;
  expect_error([&] { vt::load_torch_checkpoint(dir.file("absent.bin")); }, {"absent.bin", "cannot open"});
}

}  // namespace

namespace {

// The fuzzing harness reads checkpoints from memory: the same tensors as from the file.
TEST(TorchCheckpoint, BytesInMemoryLoadAsTheFileDoes) {
  const std::string path = fixture("vit-tiny-random-pt/pytorch_model.bin");
  const std::string bytes = read_bytes(path);
  const vt::TensorMap from_file = vt::load_torch_checkpoint(path);
  const vt::TensorMap from_memory = vt::load_torch_checkpoint(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "in memory");
  ASSERT_EQ(from_memory.size(), from_file.size());
  for (const auto& [name, tensor] : from_file) EXPECT_TRUE(torch::equal(from_memory.at(name), tensor)) << name;
  const std::string half = bytes.substr(0, bytes.size() / 2);
  expect_error([&] { vt::load_torch_checkpoint(reinterpret_cast<const uint8_t*>(half.data()), half.size(), "half in memory"); },
               {"half in memory"});
}

// An archive written with zip64 extra fields (as torch.save writes large ones) reads the same
// as the ordinary one; a fuzzing regression whose record reads past its data is refused.
TEST(TorchCheckpoint, Zip64FieldsAndAFuzzingRegression) {
  const std::string corpus = std::string(VISIONTORCH_SOURCE_DIR) + "/native/core/fuzz/corpus/torch_pickle/";
  EXPECT_FALSE(vt::load_torch_checkpoint(corpus + "zip64_fields.bin").empty());
  for (const char* name : {"regression-empty-record-read.bin", "regression-stream-reader-leak.bin"}) {
    SCOPED_TRACE(name);
    try {
      vt::load_torch_checkpoint(corpus + name);
    } catch (const vt::Error& error) {
      EXPECT_NE(std::string(error.what()).find(name), std::string::npos) << error.what();
    }
  }
}

}  // namespace
