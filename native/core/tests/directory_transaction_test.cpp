// All-or-nothing replacement of a folder's files: a child process is killed at every point of a
// transaction (between the files it writes, while entries are carried over, around the swap),
// and the folder must then hold the old contents or the new ones, never a mix, with the entries
// that are not the contents' kept, and nothing left behind once recovered.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/directory_transaction.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using vt_test::read_bytes;
using vt_test::TempDir;
using vt_test::write_bytes;

// The contents a model save owns, config.json last as the save writes it.
const vt::DirectoryContents kModelFiles{{"model.safetensors", "model.pt", "preprocessor_config.json", "config.json"}, true};

std::map<std::string, std::string> version(const std::string& tag) {
  return {{"model.safetensors", "weights " + tag}, {"preprocessor_config.json", "processor " + tag}, {"config.json", "config " + tag}};
}

void write_version(const fs::path& folder, const std::map<std::string, std::string>& files) {
  // The writer's order: weights, processor, config.
  for (const char* name : {"model.safetensors", "preprocessor_config.json", "config.json"}) {
    if (files.count(name)) vt::write_file_atomically((folder / name).string(), files.at(name));
  }
}

// The old model, with a TorchScript archive the new one lacks, and entries that are not the
// model's: a file, a checkpoint folder, a symlink.
void write_old_folder(const fs::path& folder) {
  fs::create_directories(folder / "checkpoint-2");
  write_version(folder, version("old"));
  write_bytes((folder / "model.pt").string(), "archive old");
  write_bytes((folder / "README.md").string(), "notes");
  write_bytes((folder / "checkpoint-2" / "trainer_state.json").string(), "{\"step\": 2}");
  fs::create_symlink("README.md", folder / "latest");
}

// Which version the owned files are, or "mixed".
std::string version_held(const fs::path& folder) {
  std::string held;
  for (const auto& [name, bytes] : version("old")) {
    const std::string found = fs::exists(folder / name) ? read_bytes((folder / name).string()) : "";
    const std::string tag = found == bytes ? "old" : found == version("new").at(name) ? "new" : "mixed";
    if (held.empty()) held = tag;
    if (held != tag) return "mixed";
  }
  if (held == "old" && !fs::exists(folder / "model.pt")) return "mixed";
  if (held == "new" && fs::exists(folder / "model.pt")) return "mixed";
  return held;
}

void expect_kept_entries(const fs::path& folder) {
  EXPECT_EQ(read_bytes((folder / "README.md").string()), "notes");
  EXPECT_EQ(read_bytes((folder / "checkpoint-2" / "trainer_state.json").string()), "{\"step\": 2}");
  EXPECT_TRUE(fs::is_symlink(folder / "latest"));
  EXPECT_EQ(fs::read_symlink(folder / "latest"), "README.md");
}

// Every name in `parent` that starts with a dot: what a transaction may leave behind.
std::vector<std::string> hidden_entries(const fs::path& parent) {
  std::vector<std::string> names;
  for (const auto& entry : fs::recursive_directory_iterator(parent)) {
    if (entry.path().filename().string()[0] == '.') names.push_back(entry.path().string());
  }
  return names;
}

// Runs a transaction replacing `folder` with version "new" in a child process, killed when it
// reaches `kill_at` (a step the observer reports, or "wrote <file>").
int run_killed_transaction(const fs::path& folder, const std::string& kill_at) {
  pid_t child = ::fork();
  if (child == 0) {
    vt::set_directory_transaction_observer([&](const std::string& step) {
      if (step == kill_at) ::raise(SIGKILL);
    });
    vt::DirectoryTransaction transaction(folder.string(), kModelFiles);
    const fs::path staging(transaction.staging());
    for (const char* name : {"model.safetensors", "preprocessor_config.json", "config.json"}) {
      vt::write_file_atomically((staging / name).string(), version("new").at(name));
      if (kill_at == std::string("wrote ") + name) ::raise(SIGKILL);
    }
    transaction.commit();
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  return status;
}

TEST(DirectoryTransaction, WritesANewFolderAndReplacesAnOldOneKeepingWhatIsNotTheContents) {
  TempDir dir;
  const fs::path fresh = dir.path() / "fresh";
  {
    vt::DirectoryTransaction transaction(fresh.string(), kModelFiles);
    write_version(transaction.staging(), version("new"));
    transaction.commit();
  }
  EXPECT_EQ(version_held(fresh), "new");

  const fs::path folder = dir.path() / "model";
  write_old_folder(folder);
  {
    vt::DirectoryTransaction transaction(folder.string(), kModelFiles);
    write_version(transaction.staging(), version("new"));
    transaction.commit();
  }
  EXPECT_EQ(version_held(folder), "new");  // model.pt of the old version dropped
  expect_kept_entries(folder);
  EXPECT_TRUE(hidden_entries(dir.path()).empty());
}

TEST(DirectoryTransaction, AWriterThatFailsLeavesTheOldFolderWhole) {
  TempDir dir;
  const fs::path folder = dir.path() / "model";
  write_old_folder(folder);
  try {
    vt::DirectoryTransaction transaction(folder.string(), kModelFiles);
    vt::write_file_atomically((fs::path(transaction.staging()) / "model.safetensors").string(), "weights new");
    throw std::runtime_error("disk full");
  } catch (const std::runtime_error&) {}
  EXPECT_EQ(version_held(folder), "old");
  expect_kept_entries(folder);
  EXPECT_TRUE(hidden_entries(dir.path()).empty());
}

TEST(DirectoryTransaction, AKillAtAnyPointLeavesTheOldContentsOrTheNewAndRecoveryClearsWhatItLeft) {
  TempDir dir;
  // Before the swap the folder must still be the old one; from the swap on, the new one.
  const std::vector<std::pair<std::string, std::string>> kill_points = {
      {"wrote model.safetensors", "old"},
      {"wrote preprocessor_config.json", "old"},
      {"wrote config.json", "old"},
      {"carried README.md", "old"},
      {"carried checkpoint-2", "old"},
      {"carried latest", "old"},
      {"synced", "old"},
      {"exchanged", "new"},
      {"cleaned", "new"},
  };
  int kills = 0;
  for (int round = 0; round < 4; ++round) {
    for (const auto& [step, expected] : kill_points) {
      SCOPED_TRACE("killed at \"" + step + "\", round " + std::to_string(round));
      const fs::path folder = dir.path() / "model";
      fs::remove_all(folder);
      write_old_folder(folder);
      const int status = run_killed_transaction(folder, step);
      ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child was not killed at that step";
      ++kills;
      // What any reader sees straight after the kill, before any recovery.
      EXPECT_EQ(version_held(folder), expected);
      vt::recover_directory(folder.string(), kModelFiles);
      EXPECT_EQ(version_held(folder), expected);
      expect_kept_entries(folder);
      EXPECT_TRUE(hidden_entries(dir.path()).empty());
      // And the next transaction completes.
      ASSERT_EQ(run_killed_transaction(folder, "never"), 0);
      EXPECT_EQ(version_held(folder), "new");
      expect_kept_entries(folder);
      EXPECT_TRUE(hidden_entries(dir.path()).empty());
    }
  }
  EXPECT_EQ(kills, 36);
}

TEST(DirectoryTransaction, AFolderMovedAsideByTheTwoRenameFallbackIsPutBack) {
  TempDir dir;
  const fs::path folder = dir.path() / "model";
  write_old_folder(folder);
  // A process that has ended: its pid names the leftovers.
  pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ::waitpid(gone, nullptr, 0);
  const std::string suffix = std::to_string(gone) + "-1";
  fs::rename(folder, dir.path() / (".model.replaced-" + suffix));
  fs::create_directories(dir.path() / (".model.saving-" + suffix));
  write_version(dir.path() / (".model.saving-" + suffix), version("new"));
  EXPECT_EQ(vt::recover_directory(folder.string(), kModelFiles), 1u);
  EXPECT_EQ(version_held(folder), "old");
  expect_kept_entries(folder);
  EXPECT_TRUE(hidden_entries(dir.path()).empty());
}

TEST(DirectoryTransaction, ReplacingAsAWholeCarriesNothingOver) {
  TempDir dir;
  const fs::path folder = dir.path() / "checkpoint-4";
  write_old_folder(folder);
  {
    vt::DirectoryTransaction transaction(folder.string(), {{}, false});
    write_version(transaction.staging(), version("new"));
    transaction.commit();
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"config.json", "model.safetensors", "preprocessor_config.json"}));
}

TEST(DirectoryTransaction, TheWorkingDirectoryIsReplacedFileByFileNotPulledAway) {
  TempDir dir;
  const fs::path folder = dir.path() / "model";
  write_old_folder(folder);
  const fs::path previous = fs::current_path();
  fs::current_path(folder);
  {
    vt::DirectoryTransaction transaction(".", kModelFiles);
    write_version(transaction.staging(), version("new"));
    transaction.commit();
  }
  EXPECT_TRUE(fs::equivalent(fs::current_path(), folder));
  fs::current_path(previous);
  EXPECT_EQ(version_held(folder), "new");
  expect_kept_entries(folder);
  EXPECT_TRUE(hidden_entries(dir.path()).empty());
}

TEST(DirectoryTransaction, AFileInTheWayIsNamed) {
  TempDir dir;
  write_bytes(dir.file("model"), "not a folder");
  vt_test::expect_error([&] { vt::DirectoryTransaction transaction(dir.file("model"), kModelFiles); },
                        {dir.file("model"), "not a directory"});
  EXPECT_EQ(read_bytes(dir.file("model")), "not a folder");
}

}  // namespace
