// Manifests of (image path, label) or (image path, mask path) rows: CSV (RFC 4180, header row
// required) and JSONL (one object per line). Only the columns a dataset uses are read; errors name
// the file and line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vt {

struct CsvRecord {
  size_t line = 0;  // 1-based line where the record starts (a quoted field may span lines)
  std::vector<std::string> fields;
};

// RFC 4180: fields separated by commas, records by CRLF or LF; quoted fields may hold commas,
// line breaks and doubled quotes. Blank lines and a UTF-8 byte order mark are skipped.
// `source` names the text in errors.
std::vector<CsvRecord> parse_csv(const std::string& text, const std::string& source);

struct ManifestRow {
  size_t line = 0;
  std::string image;            // as written: relative to the dataset's root, or absolute
  bool label_is_index = false;  // an integer (JSON number, or a CSV field of digits) ...
  int64_t label_index = 0;
  std::string label_name;  // ... or a class name
};

// Reads a "csv" or "jsonl" manifest. A CSV label made only of digits (optionally signed) is an
// index, anything else a class name; in JSONL, numbers are indices and strings names.
std::vector<ManifestRow> read_manifest(const std::string& path, const std::string& format, const std::string& image_column,
                                       const std::string& label_column);

// Rows of a manifest whose columns are all file paths (segmentation: image and mask), values in
// the order of `columns`. CSV fields are taken as written; JSONL values must be strings. Empty
// values are errors naming the file, line and column.
struct ManifestPaths {
  size_t line = 0;
  std::vector<std::string> values;
};
std::vector<ManifestPaths> read_manifest_paths(const std::string& path, const std::string& format, const std::vector<std::string>& columns);

}  // namespace vt
