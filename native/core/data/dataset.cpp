// Opening classification datasets. Decisions worth knowing:
// - imagefolder follows torchvision's ImageFolder: classes are the sorted subdirectory names,
//   images are found recursively below each class directory (directories in sorted(os.walk)
//   order, files sorted), and a class without images is an error. Hidden entries are skipped.
// - manifests: every image file is checked to exist when the dataset is opened (a stat per row),
//   so a typo fails before training starts, naming the manifest line.
// - the held-out split follows datasets' train_test_split: ceil(fraction * n) samples go to
//   validation, taken from the front of a seeded permutation; both splits keep that shuffled
//   order, so `limit` takes a random subset rather than, say, the first class of a folder.
#include "data/dataset.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <system_error>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "data/files.h"
#include "data/idx.h"
#include "data/manifest.h"
#include "data/random.h"

namespace vt {
namespace fs = std::filesystem;

namespace {

std::string quoted(const std::string& s) { return nlohmann::json(s).dump(); }

std::string quoted_list(const std::vector<std::string>& names, size_t max_items = 10) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < max_items; ++i) out += (i ? ", " : "") + quoted(names[i]);
  if (names.size() > max_items) out += str_cat(", ... (", names.size(), " in all)");
  return out;
}

// ---------------------------------------------------------------------------------------------
// Datasets

// Images read from files (imagefolder, manifests).
class FileDataset : public ImageDataset {
 public:
  FileDataset(std::vector<std::string> paths, std::vector<int64_t> labels) : paths_(std::move(paths)), labels_(std::move(labels)) {}
  size_t size() const override { return paths_.size(); }
  Image image(size_t index) const override { return read_image_file(paths_.at(index)); }
  int64_t label(size_t index) const override { return labels_.at(index); }
  std::string describe(size_t index) const override { return paths_.at(index); }

 private:
  std::vector<std::string> paths_;
  std::vector<int64_t> labels_;
};

// Images held in memory, from IDX files.
class IdxDataset : public ImageDataset {
 public:
  IdxDataset(std::string source, IdxImages images, std::vector<uint8_t> labels)
      : source_(std::move(source)), images_(std::move(images)), labels_(std::move(labels)) {}
  size_t size() const override { return labels_.size(); }
  Image image(size_t index) const override {
    VT_CHECK(index < size(), describe(index), ": index out of range");
    const size_t bytes = static_cast<size_t>(images_.rows) * images_.cols;
    return image_from_pixels(images_.pixels.data() + index * bytes, bytes, images_.cols, images_.rows, 1, describe(index));
  }
  int64_t label(size_t index) const override { return labels_.at(index); }
  std::string describe(size_t index) const override { return str_cat(source_, "[", index, "]"); }

 private:
  std::string source_;
  IdxImages images_;
  std::vector<uint8_t> labels_;
};

// A selection of another dataset's samples (a split, a limit).
class SubsetDataset : public ImageDataset {
 public:
  SubsetDataset(std::shared_ptr<ImageDataset> base, std::vector<size_t> indices) : base_(std::move(base)), indices_(std::move(indices)) {}
  size_t size() const override { return indices_.size(); }
  Image image(size_t index) const override { return base_->image(indices_.at(index)); }
  int64_t label(size_t index) const override { return base_->label(indices_.at(index)); }
  std::string describe(size_t index) const override { return base_->describe(indices_.at(index)); }

 private:
  std::shared_ptr<ImageDataset> base_;
  std::vector<size_t> indices_;
};

// One side of a dataset (train or validation) before splitting, with what names it in errors.
struct Opened {
  std::shared_ptr<ImageDataset> data;
  std::string source;
};

// ---------------------------------------------------------------------------------------------
// imagefolder

// The images below one class directory in torchvision's order: directories sorted by their
// path (sorted(os.walk(...))), the files of each sorted by name.
std::vector<std::string> images_below(const fs::path& class_dir) {
  std::vector<std::pair<std::string, std::vector<std::string>>> dirs;  // (dir path, its images)
  std::function<void(const fs::path&, int)> walk = [&](const fs::path& dir, int depth) {
    VT_CHECK(depth < 64, "imagefolder: directories nested too deeply (a symlink loop?) at ", dir.string());
    std::vector<std::string> files;
    for (const fs::directory_entry& entry : list_directory(dir)) {
      if (is_hidden(entry.path())) continue;
      std::error_code ec;
      if (entry.is_directory(ec)) {
        walk(entry.path(), depth + 1);
      } else if (entry.is_regular_file(ec) && has_image_extension(entry.path())) {
        files.push_back(entry.path().string());
      }
    }
    dirs.emplace_back(dir.string(), std::move(files));
  };
  walk(class_dir, 0);
  std::sort(dirs.begin(), dirs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> images;
  for (auto& d : dirs) images.insert(images.end(), d.second.begin(), d.second.end());
  return images;
}

std::vector<std::string> class_folders(const std::string& root) {
  std::vector<std::string> classes;
  for (const fs::directory_entry& entry : list_directory(root)) {
    std::error_code ec;
    if (!is_hidden(entry.path()) && entry.is_directory(ec)) classes.push_back(entry.path().filename().string());
  }
  return classes;
}

// "only in A: ...; only in B: ..." or, for the same names, where the order differs.
std::string difference(const std::string& a_name, const std::vector<std::string>& a, const std::string& b_name,
                       const std::vector<std::string>& b) {
  const std::set<std::string> as(a.begin(), a.end()), bs(b.begin(), b.end());
  std::vector<std::string> only_a, only_b;
  for (const std::string& s : a)
    if (!bs.count(s)) only_a.push_back(s);
  for (const std::string& s : b)
    if (!as.count(s)) only_b.push_back(s);
  std::string out;
  if (!only_a.empty()) out += "only in " + a_name + ": " + quoted_list(only_a);
  if (!only_b.empty()) out += (out.empty() ? "" : "; ") + ("only in " + b_name + ": " + quoted_list(only_b));
  if (out.empty()) {
    out = "the same names in a different order: " + a_name + " has " + quoted_list(a) + ", " + b_name + " has " + quoted_list(b);
  }
  return out;
}

Opened open_image_folder(const std::string& root, const char* field, std::vector<std::string>& classes) {
  require_directory(root, field);
  const std::vector<std::string> found = class_folders(root);
  VT_CHECK(!found.empty(), "no images found under ", root, ": expected one subdirectory per class holding its images (", field,
           "/<class>/<image>)");
  if (classes.empty()) {
    classes = found;
  } else if (found != classes) {
    fail("the class folders of ", field, " ", root,
         " differ from the training classes: ", difference(field, found, "the training classes", classes));
  }
  std::vector<std::string> paths;
  std::vector<int64_t> labels;
  for (size_t k = 0; k < classes.size(); ++k) {
    const std::vector<std::string> images = images_below(fs::path(root) / classes[k]);
    VT_CHECK(!images.empty(), "no images found under ", (fs::path(root) / classes[k]).string(), ": the class ", quoted(classes[k]),
             " has no .jpg, .jpeg or .png files");
    paths.insert(paths.end(), images.begin(), images.end());
    labels.insert(labels.end(), images.size(), static_cast<int64_t>(k));
  }
  return {std::make_shared<FileDataset>(std::move(paths), std::move(labels)), root};
}

// ---------------------------------------------------------------------------------------------
// csv / jsonl

fs::path manifest_base(const DatasetSpec& spec, const std::string& manifest) {
  if (!spec.root.empty()) return spec.root;
  const fs::path dir = fs::path(manifest).parent_path();
  return dir.empty() ? fs::path(".") : dir;
}

// Maps every row's label to a class index; `names` are the training manifest's classes.
std::vector<int64_t> label_indices(const std::vector<ManifestRow>& rows, const std::string& path, const std::vector<std::string>& names,
                                   bool names_from_config) {
  std::map<std::string, int64_t> by_name;
  for (size_t i = 0; i < names.size(); ++i) by_name.emplace(names[i], static_cast<int64_t>(i));
  std::vector<int64_t> labels;
  labels.reserve(rows.size());
  for (const ManifestRow& row : rows) {
    if (row.label_is_index) {
      VT_CHECK(row.label_index >= 0 && row.label_index < static_cast<int64_t>(names.size()), path, ":", row.line, ": label ",
               row.label_index, " is out of range: there are ", names.size(), " classes", names_from_config ? " in class_names" : "");
      labels.push_back(row.label_index);
    } else {
      auto found = by_name.find(row.label_name);
      if (found == by_name.end()) {
        fail(path, ":", row.line, ": unknown label ", quoted(row.label_name), " (",
             names_from_config ? "not in class_names: " : "not a class of the training manifest: ", quoted_list(names), ")");
      }
      labels.push_back(found->second);
    }
  }
  return labels;
}

Opened manifest_dataset(const DatasetSpec& spec, const std::string& path, const std::vector<ManifestRow>& rows,
                        std::vector<int64_t> labels) {
  VT_CHECK(!rows.empty(), "no images found in ", path, ": the manifest lists none");
  const fs::path base = manifest_base(spec, path);
  std::vector<std::string> paths;
  paths.reserve(rows.size());
  for (const ManifestRow& row : rows) {
    const fs::path image(row.image);
    const std::string resolved = (image.is_absolute() ? image : base / image).string();
    std::error_code ec;
    VT_CHECK(fs::is_regular_file(resolved, ec), path, ":", row.line, ": image file ", resolved,
             fs::exists(resolved, ec) ? " is not a regular file" : " not found");
    paths.push_back(resolved);
  }
  return {std::make_shared<FileDataset>(std::move(paths), std::move(labels)), path};
}

void open_manifests(const DatasetSpec& spec, std::vector<std::string>& classes, Opened& train, Opened& validation) {
  VT_CHECK(!spec.path.empty(), spec.format, " dataset: path (the manifest file) is required");
  const std::vector<ManifestRow> rows = read_manifest(spec.path, spec.format, spec.image_column, spec.label_column);
  std::vector<ManifestRow> val_rows;
  if (!spec.validation_path.empty()) {
    val_rows = read_manifest(spec.validation_path, spec.format, spec.image_column, spec.label_column);
  }
  VT_CHECK(!rows.empty(), "no images found in ", spec.path, ": the manifest lists none");
  const bool indices = rows.front().label_is_index;
  if (!val_rows.empty() && val_rows.front().label_is_index != indices) {
    fail(spec.validation_path, ":", val_rows.front().line, ": labels are ", indices ? "class names" : "integer indices", " but ", spec.path,
         "'s are ", indices ? "integer indices" : "class names", "; both manifests must label the same way");
  }
  const bool from_config = !classes.empty();
  if (!from_config) {
    if (indices) {
      int64_t max_label = -1;
      auto scan = [&](const std::vector<ManifestRow>& set, const std::string& path) {
        for (const ManifestRow& row : set) {
          VT_CHECK(row.label_index >= 0, path, ":", row.line, ": label ", row.label_index, " is negative");
          max_label = std::max(max_label, row.label_index);
        }
      };
      scan(rows, spec.path);
      scan(val_rows, spec.validation_path);
      for (int64_t i = 0; i <= max_label; ++i) classes.push_back(std::to_string(i));
    } else {
      std::set<std::string> distinct;
      for (const ManifestRow& row : rows) distinct.insert(row.label_name);
      classes.assign(distinct.begin(), distinct.end());
    }
  }
  train = manifest_dataset(spec, spec.path, rows, label_indices(rows, spec.path, classes, from_config));
  if (!spec.validation_path.empty()) {
    validation =
        manifest_dataset(spec, spec.validation_path, val_rows, label_indices(val_rows, spec.validation_path, classes, from_config));
  }
}

// ---------------------------------------------------------------------------------------------
// idx

Opened open_idx(const std::string& images_path, const std::string& labels_path, size_t num_classes, bool names_from_config) {
  IdxImages images = read_idx_images(images_path);
  std::vector<uint8_t> labels = read_idx_labels(labels_path);
  VT_CHECK(static_cast<uint64_t>(images.count) == labels.size(), images_path, " holds ", images.count, " images but ", labels_path,
           " holds ", labels.size(), " labels");
  VT_CHECK(images.count > 0, "no images found in ", images_path);
  for (size_t i = 0; i < labels.size(); ++i) {
    VT_CHECK(labels[i] < num_classes, labels_path, "[", i, "] (the label of ", images_path, "[", i, "]): label ",
             static_cast<int>(labels[i]), " is out of range: there are ", num_classes, " classes",
             names_from_config ? " in class_names" : " (give class_names for more than 10)");
  }
  return {std::make_shared<IdxDataset>(images_path, std::move(images), std::move(labels)), images_path};
}

// ---------------------------------------------------------------------------------------------
// split and limit

std::shared_ptr<ImageDataset> subset(const std::shared_ptr<ImageDataset>& data, std::vector<size_t> indices) {
  return std::make_shared<SubsetDataset>(data, std::move(indices));
}

std::shared_ptr<ImageDataset> apply_limit(std::shared_ptr<ImageDataset> data, std::optional<int64_t> limit) {
  if (!limit || static_cast<uint64_t>(*limit) >= data->size()) return data;
  std::vector<size_t> first(static_cast<size_t>(*limit));
  for (size_t i = 0; i < first.size(); ++i) first[i] = i;
  return subset(data, std::move(first));
}

}  // namespace

DatasetSplits open_classification_dataset(const DatasetSpec& spec, uint64_t seed) {
  const std::string& format = spec.format;
  // Only the validation field of the dataset's own format counts.
  const bool has_validation_set = [&] {
    if (format == "imagefolder") return !spec.validation_root.empty();
    if (format == "idx") return !spec.validation_images.empty() || !spec.validation_labels.empty();
    return !spec.validation_path.empty();
  }();
  const char* validation_field = format == "imagefolder" ? "validation_root" : format == "idx" ? "validation_images" : "validation_path";
  const double split = spec.validation_split.value_or(has_validation_set ? 0.0 : 0.1);
  VT_CHECK(split >= 0.0 && split < 1.0, "dataset: validation_split must be in [0, 1), got ", split);
  VT_CHECK(!(has_validation_set && split > 0.0), "dataset: validation_split (", split, ") cannot be combined with ", validation_field,
           ": give one or the other");
  VT_CHECK(!spec.limit || *spec.limit > 0, "dataset: limit must be a positive integer, got ", spec.limit.value_or(0));
  {
    std::set<std::string> seen;
    for (const std::string& name : spec.class_names) {
      VT_CHECK(!name.empty(), "dataset: class_names must not contain an empty name");
      VT_CHECK(seen.insert(name).second, "dataset: class_names lists ", quoted(name), " twice");
    }
  }

  DatasetSplits out;
  std::vector<std::string> classes = spec.class_names;
  Opened train, validation;
  if (format == "imagefolder") {
    VT_CHECK(!spec.root.empty(), "imagefolder dataset: root is required");
    std::vector<std::string> folders;
    train = open_image_folder(spec.root, "root", folders);
    if (!classes.empty() && classes != folders) {
      fail("class_names differ from the class folders of ", spec.root,
           " (sorted by name): ", difference("class_names", classes, "the folders", folders));
    }
    classes = folders;
    if (has_validation_set) validation = open_image_folder(spec.validation_root, "validation_root", folders);
  } else if (format == "csv" || format == "jsonl") {
    open_manifests(spec, classes, train, validation);
  } else if (format == "idx") {
    VT_CHECK(!spec.images.empty() && !spec.labels.empty(), "idx dataset: images and labels are both required");
    VT_CHECK(spec.validation_images.empty() == spec.validation_labels.empty(),
             "idx dataset: validation_images and validation_labels must be given together");
    const bool from_config = !classes.empty();
    if (!from_config) {
      for (int i = 0; i < 10; ++i) classes.push_back(std::to_string(i));
    }
    train = open_idx(spec.images, spec.labels, classes.size(), from_config);
    if (has_validation_set) {
      validation = open_idx(spec.validation_images, spec.validation_labels, classes.size(), from_config);
    }
  } else {
    fail("dataset: unknown format ", quoted(format), " (expected imagefolder, csv, jsonl or idx)");
  }

  if (!has_validation_set && split > 0.0) {
    const size_t n = train.data->size();
    SplitIndices parts = seeded_split(n, split, seed);
    VT_CHECK(!parts.train.empty(), "dataset: validation_split ", split, " of the ", n, " samples of ", train.source,
             " leaves none for training");
    validation = {subset(train.data, std::move(parts.validation)), train.source};
    train.data = subset(train.data, std::move(parts.train));
  }

  out.train = apply_limit(train.data, spec.limit);
  if (validation.data) out.validation = apply_limit(validation.data, spec.limit);
  out.class_names = std::move(classes);
  return out;
}

}  // namespace vt
