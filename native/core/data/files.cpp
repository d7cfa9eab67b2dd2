#include "data/files.h"

#include <algorithm>
#include <cctype>
#include <system_error>

#include "common/error.h"

namespace vt {
namespace fs = std::filesystem;

bool is_hidden(const fs::path& p) { return !p.filename().empty() && p.filename().string()[0] == '.'; }

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

void require_directory(const std::string& dir, const char* field) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  VT_CHECK(fs::exists(st), field, " ", dir, " does not exist");
  VT_CHECK(fs::is_directory(st), field, " ", dir, " is not a directory");
}

std::vector<fs::directory_entry> list_directory(const fs::path& dir) {
  std::vector<fs::directory_entry> entries;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) entries.push_back(*it);
  VT_CHECK(!ec, "cannot list ", dir.string(), ": ", ec.message());
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.path().filename().string() < b.path().filename().string(); });
  return entries;
}

}  // namespace vt
