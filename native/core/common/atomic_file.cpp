#include "common/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "common/error.h"

namespace vt {

namespace {

std::string directory_of(const std::string& path) {
  std::filesystem::path target(path);
  return target.has_parent_path() ? target.parent_path().string() : std::string(".");
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  ErrorScope errors(ErrorCode::Io);
  std::filesystem::path target(path_);
  std::random_device random;
  temp_path_ = (std::filesystem::path(directory_of(path_)) /
                ("." + target.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(random())))
                   .string();
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_, ": cannot create a temporary file beside it (", std::strerror(errno), ")");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  ErrorScope errors(ErrorCode::Io);
  VT_CHECK(fd_ >= 0 && !committed_, path_, ": write after commit");
  const char* bytes = static_cast<const char*>(data);
  size_t written = 0;
  while (written < size) {
    ssize_t n = ::write(fd_, bytes + written, size - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(path_, ": write failed (", std::strerror(n < 0 ? errno : EIO), ")");
    written += static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  ErrorScope errors(ErrorCode::Io);
  VT_CHECK(fd_ >= 0 && !committed_, path_, ": committed twice");
  if (::fsync(fd_) != 0) fail(path_, ": cannot flush to disk (", std::strerror(errno), ")");
  int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0) fail(path_, ": cannot close (", std::strerror(errno), ")");
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    fail(path_, ": cannot rename the temporary file over it (", std::strerror(errno), ")");
  }
  committed_ = true;
  // Makes the rename itself durable. Some filesystems cannot fsync a directory (EINVAL): the
  // file is then as durable as that filesystem allows.
  int dir_fd = ::open(directory_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  VT_CHECK(dir_fd >= 0, path_, ": written, but cannot open its directory to sync it (", std::strerror(errno), ")");
  int result = ::fsync(dir_fd);
  int error = errno;
  ::close(dir_fd);
  VT_CHECK(result == 0 || error == EINVAL, path_, ": written, but syncing its directory failed (", std::strerror(error), ")");
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  ErrorScope errors(ErrorCode::Io);
  AtomicFile file(path);
  file.write(bytes.data(), bytes.size());
  file.commit();
}

bool process_has_exited(long pid) {
  // Alive, or another user's (EPERM): not known to be gone.
  return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

size_t remove_stale_temporaries(const std::string& directory) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::directory_iterator entries(directory, error);
  if (error) return 0;
  size_t removed = 0;
  for (const auto& entry : entries) {
    const std::string name = entry.path().filename().string();
    const auto marker = name.rfind(".tmp-");
    if (name.empty() || name[0] != '.' || marker == std::string::npos) continue;
    const std::string owner = name.substr(marker + 5, name.find('-', marker + 5) - (marker + 5));
    if (owner.empty() || owner.find_first_not_of("0123456789") != std::string::npos || owner.size() > 9) continue;
    if (!process_has_exited(std::stol(owner))) continue;  // its writer may still be at work
    if (fs::remove_all(entry.path(), error) > 0 && !error) ++removed;
  }
  return removed;
}

}  // namespace vt
