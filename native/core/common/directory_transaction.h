// A directory's contents replaced all at once. The new files are written into a staging folder
// beside the directory and flushed to disk; the entries the new contents do not replace (a
// trainer's checkpoint folders beside its final model, a README) are linked or moved into it;
// then one rename exchanges the two folders (renameat2 RENAME_EXCHANGE). A process killed at any
// point leaves the old contents or the new ones under the directory's name, never a mix, and the
// next transaction on that directory, or recover_directory, puts back what was moved and removes
// what the killed writer left.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace vt {

struct DirectoryContents {
  // Entries the new contents own: an old entry of one of these names is dropped even when the new
  // contents lack it (the model.pt of an older TorchScript model).
  std::vector<std::string> owned_names;
  // Carries every other old entry into the new folder; false replaces the directory as a whole.
  bool keep_other_entries = true;
};

class DirectoryTransaction {
 public:
  // Recovers `directory` from killed transactions, then creates the staging folder.
  DirectoryTransaction(const std::string& directory, DirectoryContents contents);
  ~DirectoryTransaction();  // removes the staging folder unless committed
  DirectoryTransaction(const DirectoryTransaction&) = delete;
  DirectoryTransaction& operator=(const DirectoryTransaction&) = delete;

  // Where the new contents are written (every file flushed, as AtomicFile does).
  const std::string& staging() const { return staging_; }
  // Carries the kept entries over, syncs, and swaps the staging folder in.
  void commit();

 private:
  void carry_kept_entries();
  void replace_file_by_file();

  std::string target_;
  std::string staging_;
  std::string suffix_;  // "<pid>-<random>": names this transaction's folders
  DirectoryContents contents_;
  bool staged_inside_ = false;  // the parent is not writable: staged inside, replaced file by file
  bool committed_ = false;
};

// Undoes or completes what transactions on `directory` left when their process was killed.
// Returns how many leftovers it cleared; does nothing (and never throws) when there are none or
// the parent folder cannot be written.
size_t recover_directory(const std::string& directory, const DirectoryContents& contents);

// Tests only: called at each step of commit() ("carried <name>", "synced", "exchanged",
// "cleaned"), so that a test can kill the process there.
void set_directory_transaction_observer(std::function<void(const std::string& step)> observer);

}  // namespace vt
