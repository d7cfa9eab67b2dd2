// Errors that say what went wrong and where. Everything the core throws is a vt::Error (or a
// c10::Error from libtorch); the addon turns both into rejected promises with a `code`.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace vt {

// Every error that reaches JavaScript carries one of these as its `code` (ERR_VISIONTORCH_*), a
// stable name to branch on; the message says what and where.
enum class ErrorCode {
  InvalidArgument,  // an option, tensor or value outside what the call takes
  Config,           // config.json, preprocessor_config.json, or training options that cannot be used
  Checkpoint,       // a weights file: unreadable, corrupt, or not this model's
  Image,            // an image that cannot be read or decoded
  Dataset,          // a dataset: its files, annotations, labels or samples
  Disposed,         // a call on a model that was disposed
  Aborted,          // a run stopped on request
  Unsupported,      // a device, dtype, architecture or format this build does not provide
  OutOfMemory,      // an allocation failed
  Io,               // reading or writing a file failed
  Torch,            // libtorch refused an operation
  Distributed,      // a data-parallel group: rendezvous, a rank that died or hung, ranks that disagree
};

// "ERR_VISIONTORCH_CHECKPOINT" and so on.
inline const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::InvalidArgument: return "ERR_VISIONTORCH_INVALID_ARGUMENT";
    case ErrorCode::Config: return "ERR_VISIONTORCH_CONFIG";
    case ErrorCode::Checkpoint: return "ERR_VISIONTORCH_CHECKPOINT";
    case ErrorCode::Image: return "ERR_VISIONTORCH_IMAGE";
    case ErrorCode::Dataset: return "ERR_VISIONTORCH_DATASET";
    case ErrorCode::Disposed: return "ERR_VISIONTORCH_DISPOSED";
    case ErrorCode::Aborted: return "ERR_VISIONTORCH_ABORTED";
    case ErrorCode::Unsupported: return "ERR_VISIONTORCH_UNSUPPORTED";
    case ErrorCode::OutOfMemory: return "ERR_VISIONTORCH_OUT_OF_MEMORY";
    case ErrorCode::Io: return "ERR_VISIONTORCH_IO";
    case ErrorCode::Torch: return "ERR_VISIONTORCH_TORCH";
    case ErrorCode::Distributed: return "ERR_VISIONTORCH_DISTRIBUTED";
  }
  return "ERR_VISIONTORCH_INVALID_ARGUMENT";
}

// While one lives, errors raised on its thread take its code: a phase (reading weights, decoding
// an image, opening a dataset) sets it once, and the checks inside need no code of their own.
class ErrorScope {
 public:
  explicit ErrorScope(ErrorCode code) : previous_(current_) { current_ = code; }
  ~ErrorScope() { current_ = previous_; }
  ErrorScope(const ErrorScope&) = delete;
  ErrorScope& operator=(const ErrorScope&) = delete;
  static ErrorCode current() { return current_; }

 private:
  ErrorCode previous_;
  static inline thread_local ErrorCode current_ = ErrorCode::InvalidArgument;
};

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, ErrorCode code = ErrorScope::current()) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& out, T&& first, Rest&&... rest) {
  out << std::forward<T>(first);
  append(out, std::forward<Rest>(rest)...);
}
}  // namespace detail

// Concatenates its arguments (anything with operator<<) into one message.
template <typename... Parts>
std::string str_cat(Parts&&... parts) {
  std::ostringstream out;
  detail::append(out, std::forward<Parts>(parts)...);
  return out.str();
}

template <typename... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(str_cat(std::forward<Parts>(parts)...));
}

// fail() with a code of its own rather than the scope's.
template <typename... Parts>
[[noreturn]] void fail_with(ErrorCode code, Parts&&... parts) {
  throw Error(str_cat(std::forward<Parts>(parts)...), code);
}

#define VT_CHECK(condition, ...) \
  do {                           \
    if (!(condition)) {          \
      ::vt::fail(__VA_ARGS__);   \
    }                            \
  } while (false)

}  // namespace vt
