// POSIX shared-memory names: one optional leading '/', then 1..200 chars, no '/', no NUL.
#pragma once

#include <string>
#include <string_view>

namespace shmipc {

inline constexpr std::size_t kMaxNameLength = 200;

// Returns the name with exactly one leading '/'; throws InvalidArgument otherwise.
[[nodiscard]] std::string normalize_shm_name(std::string_view name);

// "/name" -> "/dev/shm/name"
[[nodiscard]] std::string shm_path(std::string_view normalized);

} // namespace shmipc
