// Files are replaced, never rewritten in place: data goes to a temporary file beside the
// target, is flushed to disk, then renamed over the target (and the directory is synced).
// A failure at any point leaves the old file as it was and removes the temporary one.
#pragma once

#include <cstddef>
#include <string>

namespace vt {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // creates the temporary file; throws naming `path`
  ~AtomicFile();                          // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void commit();  // fsync, rename over the target, fsync the directory

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

void write_file_atomically(const std::string& path, const std::string& bytes);

// Removes from `directory` the temporaries that writers killed midway left behind
// (".<name>.tmp-<pid>..." files and folders whose process is gone). Returns how many it removed;
// a directory that does not exist or cannot be listed has none.
size_t remove_stale_temporaries(const std::string& directory);

// Whether process `pid` is known to have ended: what makes a writer's leftovers stale.
bool process_has_exited(long pid);

}  // namespace vt
