// Directory scanning shared by the datasets that read image folders.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace vt {

// Hidden entries (a name starting with '.') are skipped by every scan.
bool is_hidden(const std::filesystem::path& path);
// .jpg, .jpeg or .png, in any letter case.
bool has_image_extension(const std::filesystem::path& path);
// Throws vt::Error "<field> <dir> does not exist" / "... is not a directory".
void require_directory(const std::string& dir, const char* field);
// Entries of `dir` (symlinks followed), sorted by file name; errors name the directory.
std::vector<std::filesystem::directory_entry> list_directory(const std::filesystem::path& dir);

}  // namespace vt
