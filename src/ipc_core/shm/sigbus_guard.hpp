// No SIGBUS, ever, for a user of the API: a peer that can write a named object's file can shrink
// it (ftruncate), and every access to the mapping beyond the new end of the file then raises
// SIGBUS in whoever touches it. We cannot seal /dev/shm files against shrinking (only memfds take
// seals), so named mappings are guarded instead:
//
//  - every MAP_SHARED mapping of a named object is registered here;
//  - a process-wide SIGBUS handler (installed once, chaining to the previous handler for any other
//    address) maps a private zero page over the faulting page of a registered mapping with
//    MAP_FIXED and returns: the access completes (reading zeros, writing to a private page that
//    nobody else sees), and the mapping is marked truncated;
//  - the kinds check truncated() on their slow paths and after reading data, and report
//    CorruptSegmentError ("... was truncated by another process").
//
// Cost: nothing on any fast path (no check before an access); one relaxed load where the kinds
// check the flag. A handler installed after ours (for example faulthandler enabled later) sees the
// fault first; Python's faulthandler, enabled at start-up as pytest does, is chained behind ours.
#pragma once

#include <atomic>
#include <cstddef>

namespace shmipc {

// Registers [addr, addr + len); `truncated` is set when a fault beyond the file's end was
// absorbed. At most kMaxGuardedMappings at once (more are not guarded: the pre-guard behaviour).
inline constexpr int kMaxGuardedMappings = 4096;
void guard_mapping(void *addr, std::size_t len, std::atomic<bool> *truncated) noexcept;
void unguard_mapping(void *addr) noexcept;

// Faults absorbed in this process (tests, diagnostics).
[[nodiscard]] std::size_t absorbed_sigbus_faults() noexcept;

} // namespace shmipc
