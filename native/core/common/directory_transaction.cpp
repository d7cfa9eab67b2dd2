#include "common/directory_transaction.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>

#include "common/atomic_file.h"
#include "common/error.h"

namespace vt {

namespace fs = std::filesystem;

namespace {

const char* kStagingMarker = ".saving-";
const char* kReplacedMarker = ".replaced-";

std::mutex observer_mutex;
std::function<void(const std::string&)> observer;

void observe(const std::string& step) {
  std::function<void(const std::string&)> current;
  {
    std::lock_guard<std::mutex> lock(observer_mutex);
    current = observer;
  }
  if (current) current(step);
}

// The directory's own path: absolute, without a trailing separator, through a symlink to the
// folder it names (the link itself stays).
fs::path resolve_target(const std::string& directory) {
  VT_CHECK(!directory.empty(), "no directory given");
  fs::path target = fs::absolute(directory).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();
  std::error_code error;
  if (fs::is_symlink(target, error)) target = fs::canonical(target);
  VT_CHECK(target.has_parent_path() && target != target.root_path(), directory, ": cannot replace a filesystem root");
  return target;
}

void sync_directory(const fs::path& directory) {
  int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);  // some filesystems cannot sync a directory (EINVAL): as durable as they allow
  ::close(fd);
}

// Transactions on the folders of one parent take turns: a recovery must not move entries back
// while a live transaction carries entries over.
class ParentLock {
 public:
  explicit ParentLock(const fs::path& parent) : fd_(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
    if (fd_ < 0) return;
    while (::flock(fd_, LOCK_EX) != 0 && errno == EINTR) {}
  }
  ~ParentLock() {
    if (fd_ >= 0) ::close(fd_);  // closing releases the lock
  }
  ParentLock(const ParentLock&) = delete;
  ParentLock& operator=(const ParentLock&) = delete;

 private:
  int fd_;
};

struct Leftover {
  fs::path path;
  bool replaced;  // the old folder, moved aside by the two-rename fallback
};

// Siblings ".<name>.saving-<pid>-..." and ".<name>.replaced-<pid>-..." whose process has ended.
std::vector<Leftover> find_leftovers(const fs::path& target) {
  std::vector<Leftover> found;
  std::error_code error;
  fs::directory_iterator entries(target.parent_path(), error);
  if (error) return found;
  const std::string prefix = "." + target.filename().string();
  for (const auto& entry : entries) {
    const std::string name = entry.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string rest = name.substr(prefix.size());
    for (const char* marker : {kStagingMarker, kReplacedMarker}) {
      const size_t length = std::strlen(marker);
      if (rest.compare(0, length, marker) != 0) continue;
      const std::string owner = rest.substr(length, rest.find('-', length) - length);
      if (owner.empty() || owner.size() > 9 || owner.find_first_not_of("0123456789") != std::string::npos) continue;
      if (process_has_exited(std::stol(owner))) found.push_back({entry.path(), marker == kReplacedMarker});
    }
  }
  return found;
}

// An owned name, or a writer's temporary of one (".model.safetensors.tmp-<pid>-..."): part of
// the new contents, never an entry carried over from the old.
bool is_owned(const DirectoryContents& contents, const std::string& name) {
  for (const auto& owned : contents.owned_names) {
    if (name == owned || name.rfind("." + owned + ".tmp-", 0) == 0) return true;
  }
  return false;
}

// What a swap leaves behind of the old folder: its owned files, and temporaries of them whose
// writer has ended. A live writer's temporary is carried over like any other entry.
bool is_dropped_by_swap(const DirectoryContents& contents, const std::string& name) {
  if (!is_owned(contents, name)) return false;
  const size_t marker = name.rfind(".tmp-");
  if (name[0] != '.' || marker == std::string::npos) return true;
  const std::string owner = name.substr(marker + 5, name.find('-', marker + 5) - (marker + 5));
  const bool numeric = !owner.empty() && owner.size() <= 9 && owner.find_first_not_of("0123456789") == std::string::npos;
  return !numeric || process_has_exited(std::stol(owner));
}

// Moves the entries of `from` that `into` lacks and the contents do not own back into `into`.
void move_back_carried(const fs::path& from, const fs::path& into, const DirectoryContents& contents) {
  std::error_code error;
  if (!contents.keep_other_entries || !fs::is_directory(into, error) || !fs::is_directory(from, error)) return;
  for (const auto& entry : fs::directory_iterator(from, error)) {
    const std::string name = entry.path().filename().string();
    if (is_owned(contents, name) || fs::exists(fs::symlink_status(into / name, error))) continue;
    ::rename(entry.path().c_str(), (into / name).c_str());
  }
}

size_t recover_locked(const fs::path& target, const DirectoryContents& contents) {
  std::vector<Leftover> leftovers = find_leftovers(target);
  if (leftovers.empty()) return 0;
  std::error_code error;
  // Killed between the fallback's two renames: the old folder goes back under its name.
  if (!fs::exists(target, error)) {
    for (const auto& leftover : leftovers) {
      if (leftover.replaced && !::rename(leftover.path.c_str(), target.c_str())) break;
    }
  }
  size_t cleared = 0;
  for (const auto& leftover : leftovers) {
    if (!fs::exists(leftover.path, error)) continue;
    // Entries carried into a staging folder that was never swapped in go back; everything else
    // there is a version of the contents that lost.
    move_back_carried(leftover.path, target, contents);
    if (fs::remove_all(leftover.path, error) > 0 && !error) ++cleared;
  }
  sync_directory(target.parent_path());
  return cleared;
}

// Whether this process's working directory is `target` or inside it: exchanging the folder
// would leave the process in the old, deleted one.
bool holds_working_directory(const fs::path& target) {
  std::error_code error;
  const fs::path cwd = fs::current_path(error);
  if (error) return false;
  const fs::path real = fs::weakly_canonical(target, error);
  if (error) return false;
  auto [end, unused] = std::mismatch(real.begin(), real.end(), cwd.begin(), cwd.end());
  return end == real.end();
}

bool same_device(const fs::path& a, const fs::path& b) {
  struct stat first {};
  struct stat second {};
  return ::stat(a.c_str(), &first) == 0 && ::stat(b.c_str(), &second) == 0 && first.st_dev == second.st_dev;
}

}  // namespace

void set_directory_transaction_observer(std::function<void(const std::string& step)> next) {
  std::lock_guard<std::mutex> lock(observer_mutex);
  observer = std::move(next);
}

size_t recover_directory(const std::string& directory, const DirectoryContents& contents) {
  try {
    const fs::path target = resolve_target(directory);
    if (find_leftovers(target).empty()) return 0;
    ParentLock lock(target.parent_path());
    return recover_locked(target, contents);
  } catch (const std::exception&) {
    return 0;  // leftovers it cannot clear wait for a later call; they never block a load
  }
}

DirectoryTransaction::DirectoryTransaction(const std::string& directory, DirectoryContents contents) : contents_(std::move(contents)) {
  ErrorScope errors(ErrorCode::Io);
  const fs::path target = resolve_target(directory);
  target_ = target.string();
  std::error_code error;
  VT_CHECK(!fs::exists(target, error) || fs::is_directory(target, error), directory, ": exists and is not a directory");
  fs::create_directories(target.parent_path(), error);
  VT_CHECK(!error, target.parent_path().string(), ": cannot create the folder (", error.message(), ")");
  recover_directory(target_, contents_);
  std::random_device random;
  suffix_ = std::to_string(::getpid()) + "-" + std::to_string(random());
  staging_ = (target.parent_path() / ("." + target.filename().string() + kStagingMarker + suffix_)).string();
  if (::mkdir(staging_.c_str(), 0755) != 0) {
    const int failure = errno;
    // A folder the user may write into but not beside (a volume mounted at it): stage inside it,
    // named as a temporary the next save or load removes if this process is killed.
    const bool parent_not_writable = failure == EACCES || failure == EPERM || failure == EROFS;
    staging_ = (target / (".staging.tmp-" + suffix_)).string();
    if (!parent_not_writable || !fs::is_directory(target, error) || ::mkdir(staging_.c_str(), 0755) != 0) {
      fail(directory, ": cannot create a folder to write into beside it (", std::strerror(failure), ")");
    }
    staged_inside_ = true;
  }
  struct stat old {};
  if (::stat(target_.c_str(), &old) == 0) ::chmod(staging_.c_str(), old.st_mode & 07777);
}

DirectoryTransaction::~DirectoryTransaction() {
  if (committed_) return;
  // Entries moved over for the swap go back before the staging folder is removed.
  move_back_carried(staging_, target_, contents_);
  std::error_code error;
  fs::remove_all(staging_, error);
}

void DirectoryTransaction::carry_kept_entries() {
  const fs::path target(target_);
  const fs::path staging(staging_);
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(target)) {
    const std::string name = entry.path().filename().string();
    if (is_dropped_by_swap(contents_, name) || fs::exists(fs::symlink_status(staging / name, error))) continue;
    const fs::path source = entry.path();
    const fs::path destination = staging / name;
    // Files are linked, so the old folder keeps them until the swap; folders, links and the rest
    // move (a killed transaction's recovery moves them back).
    const bool linked = entry.is_regular_file(error) && !entry.is_symlink(error) && ::link(source.c_str(), destination.c_str()) == 0;
    if (!linked && ::rename(source.c_str(), destination.c_str()) != 0) {
      fail(target_, ": cannot carry ", name, " over to the new contents (", std::strerror(errno), ")");
    }
    observe("carried " + name);
  }
}

void DirectoryTransaction::replace_file_by_file() {
  // A mount point, or the working directory: the folder cannot be exchanged, so its entries are
  // replaced one by one, in the order owned_names gives (the file that marks the contents whole,
  // last).
  const fs::path target(target_);
  const fs::path staging(staging_);
  std::error_code error;
  if (!contents_.keep_other_entries) {
    for (const auto& entry : fs::directory_iterator(target)) {
      if (!fs::exists(fs::symlink_status(staging / entry.path().filename(), error))) fs::remove_all(entry.path());
    }
  }
  std::vector<std::string> names = contents_.owned_names;
  for (const auto& entry : fs::directory_iterator(staging)) {
    const std::string name = entry.path().filename().string();
    if (!is_owned(contents_, name)) names.insert(names.begin(), name);
  }
  for (const auto& name : names) {
    const fs::path fresh = staging / name;
    if (fs::exists(fs::symlink_status(fresh, error))) {
      if (fs::is_directory(target / name, error) && !fs::is_symlink(target / name, error)) fs::remove_all(target / name);
      if (::rename(fresh.c_str(), (target / name).c_str()) != 0) {
        fail(target_, ": cannot move ", name, " into place (", std::strerror(errno), ")");
      }
    } else {
      fs::remove_all(target / name, error);  // owned, and absent from the new contents
    }
  }
  sync_directory(target);
}

void DirectoryTransaction::commit() {
  ErrorScope errors(ErrorCode::Io);
  VT_CHECK(!committed_, target_, ": committed twice");
  const fs::path target(target_);
  const fs::path parent = target.parent_path();
  ParentLock lock(parent);
  std::error_code error;
  const bool replacing = fs::exists(target, error);
  if (staged_inside_ || (replacing && (!same_device(target, parent) || holds_working_directory(target)))) {
    replace_file_by_file();
    committed_ = true;
    fs::remove_all(staging_, error);
    return;
  }
  if (replacing && contents_.keep_other_entries) carry_kept_entries();
  sync_directory(staging_);
  observe("synced");
  if (!replacing) {
    if (::rename(staging_.c_str(), target_.c_str()) != 0)
      fail(target_, ": cannot move the new contents into place (", std::strerror(errno), ")");
  } else if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) != 0) {
    // Filesystems without the exchange: the old folder goes aside, then the new one in. A kill
    // between the two leaves no folder under the name; recovery puts the old one back.
    VT_CHECK(errno == EINVAL || errno == ENOSYS, target_, ": cannot swap the new contents in (", std::strerror(errno), ")");
    const std::string aside = (parent / ("." + target.filename().string() + kReplacedMarker + suffix_)).string();
    if (::rename(target_.c_str(), aside.c_str()) != 0) fail(target_, ": cannot move the old contents aside (", std::strerror(errno), ")");
    if (::rename(staging_.c_str(), target_.c_str()) != 0) {
      const int failure = errno;
      ::rename(aside.c_str(), target_.c_str());
      fail(target_, ": cannot move the new contents into place (", std::strerror(failure), ")");
    }
    staging_ = aside;
  }
  committed_ = true;
  sync_directory(parent);
  observe("exchanged");
  // The staging name now holds the old contents.
  fs::remove_all(staging_, error);
  sync_directory(parent);
  observe("cleaned");
}

}  // namespace vt
