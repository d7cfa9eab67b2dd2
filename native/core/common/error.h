// Errors that say what went wrong and where. Everything the core throws is a vt::Error (or a
// c10::Error from libtorch); the addon turns both into rejected promises.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace vt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
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

#define VT_CHECK(condition, ...)     \
  do {                               \
    if (!(condition)) {              \
      ::vt::fail(__VA_ARGS__);       \
    }                                \
  } while (false)

}  // namespace vt
