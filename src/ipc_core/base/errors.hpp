// The engine's error types: one per condition, all rooted at shmipc::Error, so a C++ caller can
// catch everything shmipc throws with one handler. The binding layer maps each to one Python
// exception (src/bindings/bind_errors.cpp); the comment after each type names it.
//
// Set-up paths throw; hot paths return (try_* functions return [[nodiscard]] bool).
// Messages name the object and the sizes involved ("channel 'cam0': record metadata of ...").
#pragma once

// The types themselves are part of the public C++ API: include/shmipc/errors.hpp.
#include "shmipc/errors.hpp"

#include <string>

namespace shmipc {

[[noreturn]] void throw_errno(const char *call);
[[noreturn]] void throw_errno(int err, const std::string &call);

} // namespace shmipc
