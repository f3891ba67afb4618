// Shared-memory streams: plain /dev/shm files that users read and write raw through an fd (no
// SegmentHeader: the bytes are the user's). What makes them shmipc objects lives outside the
// data:
//   - the owner holds an OFD lock on kOwnerLockByte of its fd for as long as it is open, so a
//     create() that meets the name can tell a live owner from a dead one;
//   - user extended attributes on tmpfs: user.shmipc.kind = "stream" (so only our streams are
//     ever replaced as stale, and `python -m shmipc ls` can list them) and
//     user.shmipc.persistent = "1" for streams that outlive their owner.
#pragma once

#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/shm/open_name.hpp"

#include <cstdint>
#include <string_view>
#include <sys/types.h>

namespace shmipc {

inline constexpr const char *kKindXattr = "user.shmipc.kind";
inline constexpr const char *kPersistentXattr = "user.shmipc.persistent";
inline constexpr std::string_view kStreamKind = "stream";

// Creates an empty stream exclusively and returns its O_RDWR fd, owner lock held, with exactly
// `mode` permission bits. A live stream (or any other file) of that name: OsError
// EEXIST. A non-persistent stream whose owner died is replaced. `append` sets O_APPEND.
[[nodiscard]] UniqueFd create_stream(std::string_view name, mode_t mode, bool persistent,
                                     bool append);

enum class StreamAccess : int {
    ReadOnly = 0,
    ReadWrite = 1,
    ReadWriteOrReadOnly = 2, // read-write if the permission bits allow, else read-only
};

struct GuestStream {
    UniqueFd fd;
    bool writable = false;
};

// Opens an existing name as a guest (no lock, never removes the name). ENOENT if missing;
// CorruptSegment if it is not a regular file; FileExistsError (OsError EEXIST) naming the kind
// if it holds another shmipc object (checked before any truncation); PermissionError if another
// user owns it and `trust` does not allow that user (API.md §7).
[[nodiscard]] GuestStream open_stream(std::string_view name, StreamAccess access, bool truncate,
                                      bool append, const TrustPolicy &trust = {});

// Owner's close: removes the name if it still refers to the file open as `owner_fd` (never a
// newer object of the same name). Call before closing the fd. Returns true if removed.
bool release_stream_name(std::string_view name, int owner_fd) noexcept;

struct StreamInfo {
    bool is_stream = false; // carries user.shmipc.kind=stream
    bool persistent = false;
    bool owner_alive = false; // someone holds the owner lock
    std::uint64_t size = 0;
};
// Describes a name (ENOENT if missing).
[[nodiscard]] StreamInfo stream_info(std::string_view name);

// chmod / chgrp of a shared-memory name, never following a symlink.
void chmod_named(std::string_view name, mode_t mode);
void chgrp_named(std::string_view name, gid_t gid);

} // namespace shmipc
