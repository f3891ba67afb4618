// Is a party of a shared object alive? Each live party holds an OFD lock (F_OFD_SETLK) on one
// byte of its own open file description of the object's file; the kernel drops it when the
// process dies, so F_OFD_GETLK tells dead from alive with no pid-reuse race and no polling of
// /proc. This is the only liveness test of the library: no pid is ever checked.
//
// Lock bytes live far past the end of the data (offsets >= kLockBase), which is allowed for locks
// and never touches the file's contents. The map, for every kind of object:
//
//   kOwnerLockByte                     the creator of a named object (or a temporary being built)
//   kClientLockBase + slot             client slots (sync/client_table.hpp): heap, queue, value
//   kUserLockBase + ...                free for a kind's own parties (channel endpoints, topic
//                                      publishers and subscribers), kUserLockSpan bytes
//
// Fork: a child shares its parent's open file descriptions, and with them the parent's locks; if
// it kept them, a dead parent would look alive for as long as the child lives. So every fd that
// carries liveness locks is registered with renew_in_fork_children(): in each forked child it is
// replaced at once (same fd number) by a fresh description of the same file, which holds no
// lock. Objects notice the fork with their ForkStamp (base/fork_epoch.hpp) and re-register.
#pragma once

#include <cstdint>
#include <sys/types.h>

namespace shmipc {

inline constexpr off_t kLockBase = off_t{1} << 40;
inline constexpr off_t kOwnerLockByte = kLockBase;         // creator of a named object
inline constexpr off_t kClientLockBase = kLockBase + 4096; // + client slot
inline constexpr off_t kMaxClientSlots = off_t{1} << 16;   // bytes reserved for client slots
inline constexpr off_t kUserLockBase = kLockBase + (off_t{1} << 20);
inline constexpr off_t kUserLockSpan = off_t{1} << 30;
static_assert(kClientLockBase + kMaxClientSlots <= kUserLockBase);

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

// A new open file description of the file behind `fd` (same access mode), through
// /proc/self/fd: locks taken on it are its own, apart from any other fd's. Throws OsError.
[[nodiscard]] int reopen_description(int fd);

// See "Fork" above. At most kMaxRenewedFds at once; beyond that a child keeps the parent's
// locks (a dead parent is then seen only when the child exits), which is the pre-fork behaviour.
inline constexpr int kMaxRenewedFds = 4096;
void renew_in_fork_children(int fd) noexcept;
void forget_in_fork_children(int fd) noexcept;

} // namespace shmipc
