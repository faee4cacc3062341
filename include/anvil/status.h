// Status: the error type of every public entry. A failed call never writes its outputs
// and its message names the argument and the rule it broke.
#pragma once

#include <string>
#include <utility>

namespace anvil {

enum class StatusCode {
  ok = 0,
  invalid_argument,  // the caller broke a rule of the op (shape, dtype, stride, ...)
  unsupported,       // valid call, but no (forced) kernel can run it
  not_found,         // unknown kernel / backend name
  out_of_memory,
  runtime_error,     // a device or driver call failed
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  bool ok() const { return code_ == StatusCode::ok; }
  explicit operator bool() const { return ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prefixes context ("gemm: ") so nested failures read outside-in.
  Status with_context(const std::string& context) const {
    if (ok()) return *this;
    return {code_, context + message_};
  }

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

inline Status invalid_argument(std::string message) {
  return {StatusCode::invalid_argument, std::move(message)};
}
inline Status unsupported(std::string message) {
  return {StatusCode::unsupported, std::move(message)};
}

const char* status_code_name(StatusCode code);

}  // namespace anvil

#define ANVIL_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ::anvil::Status anvil_status_ = (expr);    \
    if (!anvil_status_.ok()) return anvil_status_; \
  } while (0)
