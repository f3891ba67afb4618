// Is a party of a shared object alive? Each live party holds an OFD lock (F_OFD_SETLK) on one
// byte of the object's fd; the kernel drops it when the process dies, so F_OFD_GETLK tells dead
// from alive with no pid-reuse race and no polling of /proc.
//
// Byte ranges: lock bytes live far past the end of the data (offsets >= kLockBase), which is
// allowed for locks and never touches the file's contents.
#pragma once

#include <cstdint>
#include <sys/types.h>

namespace shmipc {

inline constexpr off_t kLockBase = off_t{1} << 40;
inline constexpr off_t kOwnerLockByte = kLockBase;       // creator of a named object
inline constexpr off_t kSlotLockBase = kLockBase + 4096; // per-endpoint / per-slot locks

// Takes a shared (read) or exclusive (write) lock on one byte without waiting.
// Returns false if another open file description holds a conflicting lock.
[[nodiscard]] bool try_lock_byte(int fd, off_t byte, bool exclusive);
// Blocks until the lock is had.
void lock_byte_wait(int fd, off_t byte, bool exclusive);
void unlock_byte(int fd, off_t byte);
// True if some other open file description holds a lock on the byte. Locks held through
// `fd` itself do not count (F_OFD_GETLK ignores our own description).
[[nodiscard]] bool byte_is_locked(int fd, off_t byte);
// pid of a process holding a lock on the byte, or 0 (for diagnostics only: OFD locks report -1).
[[nodiscard]] pid_t byte_lock_owner(int fd, off_t byte);

} // namespace shmipc
