#include "data/manifest.h"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_config.h"

namespace vt {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open manifest ", path, ": ", std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  VT_CHECK(!in.bad(), "cannot read manifest ", path);
  return text;
}

size_t skip_bom(const std::string& text) { return text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0; }

// "-12" / "7" -> index; anything else is a name. Out-of-range digit strings are an error.
bool parse_index(const std::string& text, int64_t& value, const std::string& where) {
  if (text.empty()) return false;
  const size_t digits_from = text[0] == '-' ? 1 : 0;
  if (digits_from == text.size()) return false;
  for (size_t i = digits_from; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
  }
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  VT_CHECK(ec == std::errc() && end == text.data() + text.size(), where, ": label ", text, " is out of range");
  return true;
}

std::string quoted(const std::string& s) { return nlohmann::json(s).dump(); }

// All labels of one manifest must be of one kind, so that "3" never silently means two things.
void check_same_kind(const std::vector<ManifestRow>& rows, const std::string& path) {
  for (const ManifestRow& row : rows) {
    if (row.label_is_index == rows.front().label_is_index) continue;
    const ManifestRow& first = rows.front();
    auto what = [](const ManifestRow& r) {
      return r.label_is_index ? "the index " + std::to_string(r.label_index) : "the class name " + quoted(r.label_name);
    };
    fail(path, ":", row.line, ": label is ", what(row), " but line ", first.line, "'s is ", what(first),
         "; labels must be all class names or all integer indices");
  }
}

// A CSV manifest: its header (the first record) and its rows, columns looked up by name.
struct CsvManifest {
  std::string path;
  std::vector<CsvRecord> records;
  std::map<std::string, size_t> columns;

  const CsvRecord& header() const { return records.front(); }
  size_t column(const std::string& name) const {
    auto found = columns.find(name);
    if (found == columns.end()) {
      std::string names;
      for (const std::string& f : header().fields) names += (names.empty() ? "" : ", ") + quoted(f);
      fail(path, ":", header().line, ": no column ", quoted(name), " (the header has ", names, ")");
    }
    return found->second;
  }
  size_t rows() const { return records.size() - 1; }
  // Row r (0-based, after the header), checked to have the header's field count.
  const CsvRecord& row(size_t r) const {
    const CsvRecord& record = records[r + 1];
    VT_CHECK(record.fields.size() == header().fields.size(), path, ":", record.line, ": ", record.fields.size(), " field",
             record.fields.size() == 1 ? "" : "s", ", but the header has ", header().fields.size());
    return record;
  }
};

CsvManifest read_csv_table(const std::string& path) {
  CsvManifest csv;
  csv.path = path;
  csv.records = parse_csv(read_text(path), path);
  VT_CHECK(!csv.records.empty(), path, ": empty file, expected a header row naming the columns");
  const CsvRecord& header = csv.header();
  for (size_t i = 0; i < header.fields.size(); ++i) {
    VT_CHECK(csv.columns.emplace(header.fields[i], i).second, path, ":", header.line, ": duplicate column ", quoted(header.fields[i]));
  }
  return csv;
}

std::vector<ManifestRow> read_csv_manifest(const std::string& path, const std::string& image_column, const std::string& label_column) {
  const CsvManifest csv = read_csv_table(path);
  const size_t image_at = csv.column(image_column);
  const size_t label_at = csv.column(label_column);

  std::vector<ManifestRow> rows;
  rows.reserve(csv.rows());
  for (size_t r = 0; r < csv.rows(); ++r) {
    const CsvRecord& record = csv.row(r);
    ManifestRow row;
    row.line = record.line;
    row.image = record.fields[image_at];
    const std::string& label = record.fields[label_at];
    VT_CHECK(!row.image.empty(), path, ":", row.line, ": empty ", quoted(image_column));
    VT_CHECK(!label.empty(), path, ":", row.line, ": empty ", quoted(label_column));
    const std::string where = str_cat(path, ":", row.line);
    row.label_is_index = parse_index(label, row.label_index, where);
    if (!row.label_is_index) row.label_name = label;
    rows.push_back(std::move(row));
  }
  return rows;
}

// Calls `row(line, object)` for every non-blank line of a JSONL file; each must be an object.
void for_each_jsonl_object(const std::string& path, const std::function<void(size_t, const nlohmann::json&)>& row) {
  const std::string text = read_text(path);
  size_t pos = skip_bom(text);
  for (size_t line = 1; pos < text.size(); ++line) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string content = text.substr(pos, end - pos);
    pos = end + 1;
    if (content.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(content, [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
        const bool opens = event == nlohmann::json::parse_event_t::object_start || event == nlohmann::json::parse_event_t::array_start;
        VT_CHECK(!opens || depth < kMaxJsonDepth, path, ":", line, ": JSON nested deeper than ", kMaxJsonDepth, " levels");
        return true;
      });
    } catch (const nlohmann::json::parse_error& e) {
      // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 7: ...".
      std::string detail = e.what();
      const size_t at = detail.find("] ");
      if (at != std::string::npos) detail = detail.substr(at + 2);
      fail(path, ":", line, ": invalid JSON (", detail, ")");
    }
    VT_CHECK(object.is_object(), path, ":", line, ": expected a JSON object, got ", object.type_name());
    row(line, object);
  }
}

const nlohmann::json& jsonl_field(const nlohmann::json& object, const std::string& path, size_t line, const std::string& name) {
  auto found = object.find(name);
  VT_CHECK(found != object.end(), path, ":", line, ": no column ", quoted(name));
  return *found;
}

std::vector<ManifestRow> read_jsonl_manifest(const std::string& path, const std::string& image_column, const std::string& label_column) {
  std::vector<ManifestRow> rows;
  for_each_jsonl_object(path, [&](size_t line, const nlohmann::json& object) {
    ManifestRow row;
    row.line = line;
    const nlohmann::json& image = jsonl_field(object, path, line, image_column);
    VT_CHECK(image.is_string() && !image.get<std::string>().empty(), path, ":", line, ": ", quoted(image_column),
             " must be a non-empty string (an image path), got ", image.dump());
    row.image = image.get<std::string>();
    const nlohmann::json& label = jsonl_field(object, path, line, label_column);
    if (label.is_number_integer()) {
      row.label_is_index = true;
      if (label.is_number_unsigned()) {
        VT_CHECK(label.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX), path, ":", line, ": label ", label.dump(), " is out of range");
      }
      row.label_index = label.get<int64_t>();
    } else if (label.is_string() && !label.get<std::string>().empty()) {
      row.label_name = label.get<std::string>();
    } else {
      fail(path, ":", line, ": ", quoted(label_column), " must be a class name (a non-empty string) or an integer class index, got ",
           label.dump());
    }
    rows.push_back(std::move(row));
  });
  return rows;
}

}  // namespace

std::vector<CsvRecord> parse_csv(const std::string& text, const std::string& source) {
  std::vector<CsvRecord> records;
  const size_t n = text.size();
  size_t i = skip_bom(text);
  size_t line = 1;
  // True at the end of a line: LF, or CRLF (a lone CR is an ordinary character).
  auto line_end = [&](size_t at) { return at < n && (text[at] == '\n' || (text[at] == '\r' && at + 1 < n && text[at + 1] == '\n')); };
  auto skip_line_end = [&]() {
    i += text[i] == '\r' ? 2 : 1;
    ++line;
  };
  while (i < n) {
    if (line_end(i)) {  // blank line
      skip_line_end();
      continue;
    }
    CsvRecord record;
    record.line = line;
    while (true) {
      std::string field;
      if (i < n && text[i] == '"') {
        const size_t opened_on = line;
        ++i;
        while (true) {
          VT_CHECK(i < n, source, ":", opened_on, ": unterminated quoted field");
          if (text[i] == '"') {
            if (i + 1 < n && text[i + 1] == '"') {
              field += '"';
              i += 2;
              continue;
            }
            ++i;
            break;
          }
          if (text[i] == '\n') ++line;
          field += text[i++];
        }
        VT_CHECK(i == n || text[i] == ',' || line_end(i), source, ":", line,
                 ": unexpected character after a closing quote (a quote inside a quoted field is written \"\")");
      } else {
        while (i < n && text[i] != ',' && !line_end(i)) field += text[i++];
      }
      record.fields.push_back(std::move(field));
      if (i < n && text[i] == ',') {
        ++i;
        continue;
      }
      if (i < n) skip_line_end();
      break;
    }
    records.push_back(std::move(record));
  }
  return records;
}

std::vector<ManifestRow> read_manifest(const std::string& path, const std::string& format, const std::string& image_column,
                                       const std::string& label_column) {
  std::vector<ManifestRow> rows;
  if (format == "csv") {
    rows = read_csv_manifest(path, image_column, label_column);
  } else if (format == "jsonl") {
    rows = read_jsonl_manifest(path, image_column, label_column);
  } else {
    fail("unknown manifest format ", quoted(format), " (expected \"csv\" or \"jsonl\")");
  }
  if (!rows.empty()) check_same_kind(rows, path);
  return rows;
}

std::vector<ManifestPaths> read_manifest_paths(const std::string& path, const std::string& format,
                                               const std::vector<std::string>& columns) {
  std::vector<ManifestPaths> rows;
  if (format == "csv") {
    const CsvManifest csv = read_csv_table(path);
    std::vector<size_t> at;
    for (const std::string& name : columns) at.push_back(csv.column(name));
    for (size_t r = 0; r < csv.rows(); ++r) {
      const CsvRecord& record = csv.row(r);
      ManifestPaths row;
      row.line = record.line;
      for (size_t c = 0; c < columns.size(); ++c) {
        const std::string& value = record.fields[at[c]];
        VT_CHECK(!value.empty(), path, ":", row.line, ": empty ", quoted(columns[c]));
        row.values.push_back(value);
      }
      rows.push_back(std::move(row));
    }
  } else if (format == "jsonl") {
    for_each_jsonl_object(path, [&](size_t line, const nlohmann::json& object) {
      ManifestPaths row;
      row.line = line;
      for (const std::string& name : columns) {
        const nlohmann::json& value = jsonl_field(object, path, line, name);
        VT_CHECK(value.is_string() && !value.get<std::string>().empty(), path, ":", line, ": ", quoted(name),
                 " must be a non-empty string (a file path), got ", value.dump());
        row.values.push_back(value.get<std::string>());
      }
      rows.push_back(std::move(row));
    });
  } else {
    fail("unknown manifest format ", quoted(format), " (expected \"csv\" or \"jsonl\")");
  }
  return rows;
}

}  // namespace vt
