// Version, namespace and the timeout type of shmipc's public C++ API (include/shmipc/).
//
// Every kind lives in namespace shmipc (an inline namespace v1 carries the ABI version, so a
// program never sees it). Blocking calls take a WaitFor: std::nullopt waits forever (the
// default), a zero duration does not wait, anything else bounds the wait; a wait that runs out
// throws shmipc::Timeout.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#define SHMIPC_VERSION_MAJOR 0
#define SHMIPC_VERSION_MINOR 1
#define SHMIPC_VERSION_PATCH 0
#define SHMIPC_VERSION_STRING "0.1.0"

namespace shmipc {
inline namespace v1 {

// How long a blocking call may wait: nullopt = forever, 0 = not at all. Any std::chrono
// duration with an integral count converts: ch.recv(std::chrono::milliseconds(100)).
using WaitFor = std::optional<std::chrono::nanoseconds>;

// A POSIX shm name as every kind uses it ("frames" and "/frames" are /dev/shm/frames); throws
// InvalidArgument for a name that is not one.
[[nodiscard]] std::string normalize_name(std::string_view name);

// Force-destroys a named object (recovery of a stale name, or of a persistent object). False
// if no object has that name.
bool unlink(std::string_view name);

} // namespace v1
} // namespace shmipc
