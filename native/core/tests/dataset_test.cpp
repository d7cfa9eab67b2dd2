// Classification datasets: imagefolder layout and class checks, CSV / JSONL manifests (quoting,
// label kinds, line numbers in errors), IDX files raw and gzipped, the seeded split and limit.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/manifest.h"
#include "io/image.h"
#include "test_util.h"

namespace fs = std::filesystem;
using vt_test::expect_error;
using vt_test::TempDir;
using vt_test::write_bytes;

namespace {

// A small solid-colour PNG; `value` tells images apart.
void write_tiny_png(const std::string& path, int value, int width = 5, int height = 4) {
  fs::create_directories(fs::path(path).parent_path());
  vt::Image image;
  image.width = width;
  image.height = height;
  image.channels = 3;
  image.pixels.assign(static_cast<size_t>(width) * height * 3, static_cast<uint8_t>(value));
  vt::write_png(image, path);
}

vt::DatasetSpec folder_spec(const std::string& root) {
  vt::DatasetSpec spec;
  spec.format = "imagefolder";
  spec.root = root;
  spec.validation_split = 0.0;
  return spec;
}

std::vector<std::string> describe_all(const vt::ImageDataset& data) {
  std::vector<std::string> out;
  for (size_t i = 0; i < data.size(); ++i) out.push_back(data.describe(i));
  return out;
}

std::vector<int64_t> labels_of(const vt::ImageDataset& data) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < data.size(); ++i) out.push_back(data.label(i));
  return out;
}

// ---- IDX files built in the test ----

std::string be32(uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

uint8_t idx_pixel(size_t image, size_t offset) { return static_cast<uint8_t>(image * 31 + offset * 7); }

std::string idx_images(uint32_t count, uint32_t rows, uint32_t cols) {
  std::string out = be32(0x00000803) + be32(count) + be32(rows) + be32(cols);
  for (size_t i = 0; i < count; ++i) {
    for (size_t p = 0; p < size_t{rows} * cols; ++p) out += static_cast<char>(idx_pixel(i, p));
  }
  return out;
}

std::string idx_labels(const std::vector<uint8_t>& labels) {
  std::string out = be32(0x00000801) + be32(static_cast<uint32_t>(labels.size()));
  for (uint8_t l : labels) out += static_cast<char>(l);
  return out;
}

std::string gzip(const std::string& data) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, data.size()) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

std::vector<uint8_t> cycle_labels(size_t n, int classes) {
  std::vector<uint8_t> labels(n);
  for (size_t i = 0; i < n; ++i) labels[i] = static_cast<uint8_t>(i % classes);
  return labels;
}

vt::DatasetSpec idx_spec(const TempDir& dir, size_t n, double split) {
  write_bytes(dir.file("images.idx3"), idx_images(static_cast<uint32_t>(n), 2, 3));
  write_bytes(dir.file("labels.idx1"), idx_labels(cycle_labels(n, 10)));
  vt::DatasetSpec spec;
  spec.format = "idx";
  spec.images = dir.file("images.idx3");
  spec.labels = dir.file("labels.idx1");
  spec.validation_split = split;
  return spec;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// imagefolder

TEST(ImageFolder, ClassesSortedImagesSortedLabelsByClass) {
  TempDir dir;
  const fs::path root = dir.path() / "train";
  write_tiny_png((root / "dog" / "b.png").string(), 1);
  write_tiny_png((root / "dog" / "a.png").string(), 2);
  write_tiny_png((root / "cat" / "c.PNG").string(), 3);  // extensions are case-insensitive
  write_tiny_png((root / "cat" / "a.png").string(), 4);
  write_tiny_png((root / "cat" / "z.png").string(), 5);
  write_tiny_png((root / "bird" / "x.png").string(), 6);
  write_tiny_png((root / "bird" / ".hidden.png").string(), 7);  // skipped
  write_bytes((root / "bird" / "notes.txt").string(), "not an image");
  write_tiny_png((root / ".cache" / "q.png").string(), 8);  // hidden: not a class

  const vt::DatasetSplits splits = vt::open_classification_dataset(folder_spec(root.string()), 1);
  EXPECT_EQ(splits.class_names, (std::vector<std::string>{"bird", "cat", "dog"}));
  EXPECT_EQ(splits.validation, nullptr);
  ASSERT_EQ(splits.train->size(), 6u);
  EXPECT_EQ(labels_of(*splits.train), (std::vector<int64_t>{0, 1, 1, 1, 2, 2}));
  const std::vector<std::string> names = describe_all(*splits.train);
  std::vector<std::string> files;
  for (const std::string& n : names) files.push_back(fs::path(n).parent_path().filename().string() + "/" + fs::path(n).filename().string());
  EXPECT_EQ(files, (std::vector<std::string>{"bird/x.png", "cat/a.png", "cat/c.PNG", "cat/z.png", "dog/a.png", "dog/b.png"}));
  const vt::Image image = splits.train->image(2);  // cat/c.PNG
  EXPECT_EQ(image.width, 5);
  EXPECT_EQ(image.pixels[0], 3);
}

TEST(ImageFolder, ValidationRootNeedsTheSameClasses) {
  TempDir dir;
  write_tiny_png(dir.file("train/cat/a.png"), 1);
  write_tiny_png(dir.file("train/dog/a.png"), 2);
  write_tiny_png(dir.file("val/cat/a.png"), 3);
  write_tiny_png(dir.file("val/dog/a.png"), 3);
  write_tiny_png(dir.file("val/dog/b.png"), 3);
  vt::DatasetSpec spec = folder_spec(dir.file("train"));
  spec.validation_split.reset();  // a validation set makes the default 0
  spec.validation_root = dir.file("val");
  const vt::DatasetSplits splits = vt::open_classification_dataset(spec, 1);
  ASSERT_NE(splits.validation, nullptr);
  EXPECT_EQ(splits.train->size(), 2u);
  EXPECT_EQ(labels_of(*splits.validation), (std::vector<int64_t>{0, 1, 1}));

  write_tiny_png(dir.file("val/fish/a.png"), 3);
  expect_error([&] { vt::open_classification_dataset(spec, 1); }, {"validation_root", dir.file("val"), "\"fish\""});

  spec.validation_split = 0.2;
  expect_error([&] { vt::open_classification_dataset(spec, 1); }, {"validation_split", "validation_root"});
}

TEST(ImageFolder, EmptyRootOrEmptyClassFails) {
  TempDir dir;
  fs::create_directories(dir.path() / "empty");
  expect_error([&] { vt::open_classification_dataset(folder_spec(dir.file("empty")), 1); }, {"no images found under", dir.file("empty")});
  fs::create_directories(dir.path() / "root" / "cat");
  write_bytes(dir.file("root/cat/readme.txt"), "x");
  write_tiny_png(dir.file("root/dog/a.png"), 1);
  expect_error([&] { vt::open_classification_dataset(folder_spec(dir.file("root")), 1); }, {"no images found under", "cat"});
  expect_error([&] { vt::open_classification_dataset(folder_spec(dir.file("missing")), 1); }, {dir.file("missing"), "does not exist"});
}

TEST(ImageFolder, ClassNamesMustEqualTheFolders) {
  TempDir dir;
  write_tiny_png(dir.file("root/cat/a.png"), 1);
  write_tiny_png(dir.file("root/dog/a.png"), 2);
  vt::DatasetSpec spec = folder_spec(dir.file("root"));
  spec.class_names = {"cat", "dog"};
  EXPECT_EQ(vt::open_classification_dataset(spec, 1).class_names, spec.class_names);
  spec.class_names = {"cat", "cow"};
  expect_error([&] { vt::open_classification_dataset(spec, 1); }, {"class_names", "\"cow\"", "\"dog\""});
  spec.class_names = {"dog", "cat"};
  expect_error([&] { vt::open_classification_dataset(spec, 1); }, {"class_names", "different order"});
}

// ---------------------------------------------------------------------------------------------
// CSV / JSONL manifests

TEST(Manifest, CsvParserFollowsRfc4180) {
  const std::string text =
      "\xEF\xBB\xBFimage,label,note\r\n"
      "\"a, b.png\",cat,\"say \"\"hi\"\"\"\r\n"
      "\r\n"
      "c.png,dog,\"two\r\nlines\"\r\n"
      "d.png,,\n"
      "e.png,\"\",last";
  const std::vector<vt::CsvRecord> records = vt::parse_csv(text, "m.csv");
  ASSERT_EQ(records.size(), 5u);
  EXPECT_EQ(records[0].fields, (std::vector<std::string>{"image", "label", "note"}));
  EXPECT_EQ(records[1].fields, (std::vector<std::string>{"a, b.png", "cat", "say \"hi\""}));
  EXPECT_EQ(records[2].fields, (std::vector<std::string>{"c.png", "dog", "two\r\nlines"}));
  EXPECT_EQ(records[2].line, 4u);
  EXPECT_EQ(records[3].fields, (std::vector<std::string>{"d.png", "", ""}));
  EXPECT_EQ(records[3].line, 6u);  // the quoted line break counts
  EXPECT_EQ(records[4].fields, (std::vector<std::string>{"e.png", "", "last"}));

  expect_error([] { vt::parse_csv("image,label\n\"open.png,cat\n", "m.csv"); }, {"m.csv:2", "unterminated"});
  expect_error([] { vt::parse_csv("image,label\n\"a\"b,cat\n", "m.csv"); }, {"m.csv:2", "closing quote"});
}

TEST(Manifest, CsvQuotedPathsCrlfAndNamesToSortedIndices) {
  TempDir dir;
  write_tiny_png(dir.file("data/img/a, b.png"), 1);
  write_tiny_png(dir.file("data/img/c.png"), 2);
  write_tiny_png(dir.file("data/img/d.png"), 3);
  write_bytes(dir.file("data/train.csv"),
              "label,image,note\r\n"
              "zebra,\"img/a, b.png\",\"striped, \"\"fast\"\"\"\r\n"
              "ant,img/c.png,small\r\n"
              "zebra,img/d.png,\r\n");
  vt::DatasetSpec spec;
  spec.format = "csv";
  spec.path = dir.file("data/train.csv");
  spec.validation_split = 0.0;
  const vt::DatasetSplits splits = vt::open_classification_dataset(spec, 1);
  EXPECT_EQ(splits.class_names, (std::vector<std::string>{"ant", "zebra"}));
  EXPECT_EQ(labels_of(*splits.train), (std::vector<int64_t>{1, 0, 1}));
  // Relative paths are relative to the manifest's directory.
  EXPECT_EQ(fs::path(splits.train->describe(0)), fs::path(dir.file("data")) / "img/a, b.png");
  EXPECT_EQ(splits.train->image(0).pixels[0], 1);
  EXPECT_EQ(splits.train->image(2).pixels[0], 3);

  // `root` overrides the base directory.
  write_bytes(dir.file("elsewhere.csv"), "image,label\nc.png,ant\n");
  spec.path = dir.file("elsewhere.csv");
  spec.root = dir.file("data/img");
  EXPECT_EQ(vt::open_classification_dataset(spec, 1).train->image(0).pixels[0], 2);
}

TEST(Manifest, IntegerLabelsUseClassNamesOrTheirIndices) {
  TempDir dir;
  write_tiny_png(dir.file("a.png"), 1);
  write_tiny_png(dir.file("b.png"), 2);
  write_bytes(dir.file("train.csv"), "image,label\na.png,2\nb.png,0\n");
  vt::DatasetSpec spec;
  spec.format = "csv";
  spec.path = dir.file("train.csv");
  spec.validation_split = 0.0;
  vt::DatasetSplits splits = vt::open_classification_dataset(spec, 1);
  EXPECT_EQ(splits.class_names, (std::vector<std::string>{"0", "1", "2"}));
  EXPECT_EQ(labels_of(*splits.train), (std::vector<int64_t>{2, 0}));

  spec.class_names = {"cat", "dog", "eel", "fox"};
  splits = vt::open_classification_dataset(spec, 1);
  EXPECT_EQ(splits.class_names, spec.class_names);
  EXPECT_EQ(labels_of(*splits.train), (std::vector<int64_t>{2, 0}));

  spec.class_names = {"cat", "dog"};
  expect_error([&] { vt::open_classification_dataset(spec, 1); }, {"train.csv:2", "label 2", "out of range"});

  // Names with class_names: must be among them.
  write_bytes(dir.file("named.csv"), "image,label\na.png,dog\nb.png,owl\n");
  spec.path = dir.file("named.csv");
  expect_error([&] { vt::open_classification_dataset(spec, 1); }, {"named.csv:3", "unknown label", "\"owl\""});
}

TEST(Manifest, ErrorsNameTheFileAndLine) {
  TempDir dir;
  write_tiny_png(dir.file("a.png"), 1);
  vt::DatasetSpec spec;
  spec.format = "csv";
  spec.validation_split = 0.0;
  auto open = [&](const std::string& name, const std::string& text) {
    write_bytes(dir.file(name), text);
    spec.path = dir.file(name);
    vt::open_classification_dataset(spec, 1);
  };
  expect_error([&] { open("cols.csv", "image,class\na.png,cat\n"); }, {"cols.csv:1", "no column \"label\""});
  expect_error([&] { open("mixed.csv", "image,label\na.png,cat\na.png,dog\na.png,3\n"); },
               {"mixed.csv:4", "index 3", "line 2", "all class names or all integer indices"});
  expect_error([&] { open("missing.csv", "image,label\na.png,cat\nimg/nope.png,cat\n"); }, {"missing.csv:3", "nope.png", "not found"});
  expect_error([&] { open("short.csv", "image,label\na.png\n"); }, {"short.csv:2", "1 field"});
  expect_error([&] { open("header.csv", "image,label\n"); }, {"no images found in", "header.csv"});
  expect_error([&] { open("empty.csv", ""); }, {"empty.csv", "header"});
  spec.path = dir.file("absent.csv");
  expect_error([&] { vt::open_classification_dataset(spec, 1); }, {"absent.csv"});
}

TEST(Manifest, JsonlObjectsPerLine) {
  TempDir dir;
  write_tiny_png(dir.file("img/a.png"), 1);
  write_tiny_png(dir.file("img/b.png"), 2);
  write_tiny_png(dir.file("img/c.png"), 3);
  write_bytes(dir.file("train.jsonl"),
              "{\"file\": \"img/a.png\", \"y\": \"dog\", \"extra\": [1, 2]}\n"
              "\n"
              "{\"file\": \"img/b.png\", \"y\": \"cat\"}\r\n"
              "{\"file\": \"" +
                  dir.file("img/c.png") + "\", \"y\": \"dog\"}\n");
  vt::DatasetSpec spec;
  spec.format = "jsonl";
  spec.path = dir.file("train.jsonl");
  spec.image_column = "file";
  spec.label_column = "y";
  spec.validation_split = 0.0;
  const vt::DatasetSplits splits = vt::open_classification_dataset(spec, 1);
  EXPECT_EQ(splits.class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(labels_of(*splits.train), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(splits.train->image(2).pixels[0], 3);  // absolute paths are kept

  auto open = [&](const std::string& name, const std::string& text) {
    write_bytes(dir.file(name), text);
    spec.path = dir.file(name);
    vt::open_classification_dataset(spec, 1);
  };
  const std::string ok = "{\"file\": \"img/a.png\", \"y\": \"dog\"}\n";
  expect_error([&] { open("bad.jsonl", ok + ok + "{\"file\": \"img/a.png\", \"y\": }\n"); }, {"bad.jsonl:3", "invalid JSON"});
  expect_error([&] { open("col.jsonl", ok + "{\"file\": \"img/a.png\"}\n"); }, {"col.jsonl:2", "no column \"y\""});
  expect_error([&] { open("mix.jsonl", ok + "{\"file\": \"img/a.png\", \"y\": 1}\n"); }, {"mix.jsonl:2", "index 1"});
  expect_error([&] { open("float.jsonl", "{\"file\": \"img/a.png\", \"y\": 1.5}\n"); }, {"float.jsonl:1", "1.5"});

  // A validation manifest shares the training classes.
  spec.path = dir.file("train.jsonl");
  write_bytes(dir.file("val.jsonl"), "{\"file\": \"img/b.png\", \"y\": \"cat\"}\n{\"file\": \"img/b.png\", \"y\": \"owl\"}\n");
  spec.validation_path = dir.file("val.jsonl");
  spec.validation_split.reset();
  expect_error([&] { vt::open_classification_dataset(spec, 1); }, {"val.jsonl:2", "unknown label", "\"owl\""});
  write_bytes(dir.file("val.jsonl"), "{\"file\": \"img/b.png\", \"y\": \"cat\"}\n");
  const vt::DatasetSplits with_val = vt::open_classification_dataset(spec, 1);
  ASSERT_NE(with_val.validation, nullptr);
  EXPECT_EQ(labels_of(*with_val.validation), (std::vector<int64_t>{0}));
}

// ---------------------------------------------------------------------------------------------
// IDX

TEST(Idx, RawAndGzippedFilesRoundTrip) {
  TempDir dir;
  const std::vector<uint8_t> labels = {3, 1, 4, 1, 5};
  const std::string images = idx_images(5, 3, 4);
  write_bytes(dir.file("raw-images"), images);
  write_bytes(dir.file("raw-labels"), idx_labels(labels));
  write_bytes(dir.file("images.gz"), gzip(images));
  write_bytes(dir.file("labels.gz"), gzip(idx_labels(labels)));
  for (const bool gz : {false, true}) {
    SCOPED_TRACE(gz ? "gzip" : "raw");
    vt::DatasetSpec spec;
    spec.format = "idx";
    spec.images = dir.file(gz ? "images.gz" : "raw-images");
    spec.labels = dir.file(gz ? "labels.gz" : "raw-labels");
    spec.validation_split = 0.0;
    const vt::DatasetSplits splits = vt::open_classification_dataset(spec, 1);
    EXPECT_EQ(splits.class_names, (std::vector<std::string>{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}));
    ASSERT_EQ(splits.train->size(), 5u);
    EXPECT_EQ(labels_of(*splits.train), (std::vector<int64_t>{3, 1, 4, 1, 5}));
    for (size_t i = 0; i < 5; ++i) {
      const vt::Image image = splits.train->image(i);
      ASSERT_EQ(image.channels, 1);
      ASSERT_EQ(image.height, 3);
      ASSERT_EQ(image.width, 4);
      for (size_t p = 0; p < 12; ++p) ASSERT_EQ(image.pixels[p], idx_pixel(i, p)) << i << " " << p;
    }
    EXPECT_EQ(splits.train->describe(2), spec.images + "[2]");
  }
}

TEST(Idx, MalformedFilesNameTheFile) {
  TempDir dir;
  vt::DatasetSpec spec;
  spec.format = "idx";
  spec.images = dir.file("images");
  spec.labels = dir.file("labels");
  spec.validation_split = 0.0;
  auto open = [&] { vt::open_classification_dataset(spec, 1); };
  write_bytes(dir.file("labels"), idx_labels(cycle_labels(4, 10)));

  std::string bad_magic = idx_images(4, 2, 2);
  bad_magic[3] = 0x01;
  write_bytes(dir.file("images"), bad_magic);
  expect_error(open, {dir.file("images"), "magic", "0x00000801", "0x00000803"});

  write_bytes(dir.file("images"), idx_images(5, 2, 2));
  expect_error(open, {dir.file("images"), "5 images", dir.file("labels"), "4 labels"});

  const std::string full = idx_images(4, 2, 2);
  write_bytes(dir.file("images"), full.substr(0, full.size() - 3));
  expect_error(open, {dir.file("images"), "truncated"});
  write_bytes(dir.file("images"), full.substr(0, 10));
  expect_error(open, {dir.file("images"), "truncated"});
  write_bytes(dir.file("images"), full + "xx");
  expect_error(open, {dir.file("images"), "unexpected bytes"});

  const std::string gz = gzip(full);
  write_bytes(dir.file("images"), gz.substr(0, gz.size() / 2));
  expect_error(open, {dir.file("images"), "truncated gzip"});

  write_bytes(dir.file("images"), full);
  write_bytes(dir.file("labels"), idx_labels({0, 1, 12, 3}));
  expect_error(open, {dir.file("labels") + "[2]", "label 12", "out of range"});
  spec.class_names = {"a", "b"};
  write_bytes(dir.file("labels"), idx_labels({0, 1, 1, 3}));
  expect_error(open, {dir.file("labels") + "[3]", "label 3", "class_names"});
}

// ---------------------------------------------------------------------------------------------
// split and limit

TEST(Split, SeededDeterministicDisjointAndSized) {
  TempDir dir;
  const vt::DatasetSpec spec = idx_spec(dir, 40, 0.25);
  const vt::DatasetSplits a = vt::open_classification_dataset(spec, 7);
  const vt::DatasetSplits b = vt::open_classification_dataset(spec, 7);
  ASSERT_NE(a.validation, nullptr);
  EXPECT_EQ(a.train->size(), 30u);
  EXPECT_EQ(a.validation->size(), 10u);
  EXPECT_EQ(describe_all(*a.train), describe_all(*b.train));
  EXPECT_EQ(describe_all(*a.validation), describe_all(*b.validation));

  std::set<std::string> all;
  for (const auto& s : describe_all(*a.train)) all.insert(s);
  for (const auto& s : describe_all(*a.validation)) EXPECT_TRUE(all.insert(s).second) << s << " in both splits";
  EXPECT_EQ(all.size(), 40u);
  // Labels follow their samples.
  for (size_t i = 0; i < a.validation->size(); ++i) {
    const std::string d = a.validation->describe(i);
    const size_t index = std::stoul(d.substr(d.rfind('[') + 1));
    EXPECT_EQ(a.validation->label(i), static_cast<int64_t>(index % 10));
  }

  const vt::DatasetSplits other = vt::open_classification_dataset(spec, 8);
  EXPECT_NE(describe_all(*a.validation), describe_all(*other.validation));
}

TEST(Split, DefaultZeroAndLimit) {
  TempDir dir;
  vt::DatasetSpec spec = idx_spec(dir, 40, 0.0);
  spec.validation_split.reset();
  vt::DatasetSplits splits = vt::open_classification_dataset(spec, 3);
  ASSERT_NE(splits.validation, nullptr);
  EXPECT_EQ(splits.validation->size(), 4u);  // the default 0.1
  EXPECT_EQ(splits.train->size(), 36u);

  spec.validation_split = 0.0;
  splits = vt::open_classification_dataset(spec, 3);
  EXPECT_EQ(splits.validation, nullptr);
  EXPECT_EQ(splits.train->size(), 40u);
  EXPECT_EQ(splits.train->describe(5), spec.images + "[5]");  // no split: file order

  // limit takes the first N of each split, after splitting.
  spec.validation_split = 0.25;
  const vt::DatasetSplits full = vt::open_classification_dataset(spec, 3);
  spec.limit = 6;
  const vt::DatasetSplits limited = vt::open_classification_dataset(spec, 3);
  ASSERT_EQ(limited.train->size(), 6u);
  ASSERT_EQ(limited.validation->size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(limited.train->describe(i), full.train->describe(i));
    EXPECT_EQ(limited.validation->describe(i), full.validation->describe(i));
  }
  spec.limit = 100;
  EXPECT_EQ(vt::open_classification_dataset(spec, 3).train->size(), 30u);

  spec.limit.reset();
  spec.validation_split = 1.0;
  expect_error([&] { vt::open_classification_dataset(spec, 3); }, {"validation_split"});
}
