// The one way the library opens an existing name in /dev/shm, for every kind: never blocks
// (O_NONBLOCK: a FIFO planted under the name does not hang us), never follows a symlink
// (O_NOFOLLOW), never leaks into exec'd children (O_CLOEXEC), and refuses anything that is not a
// regular file (fstat S_ISREG) with CorruptSegment. Also the one place that reads the file's
// owner, for the trust rule of API.md §7.
#pragma once

#include "ipc_core/base/unique_fd.hpp"

#include <string>
#include <string_view>
#include <sys/stat.h>
#include <sys/types.h>

namespace shmipc {

enum class OpenAccess {
    ReadOnly,    // O_RDONLY
    ReadWrite,   // O_RDWR
    PreferWrite, // O_RDWR, falling back to O_RDONLY when the mode allows only reading
};

struct OpenedName {
    UniqueFd fd;
    struct stat st {};
    bool writable = false;
};

// Opens "/dev/shm/<normalized name>". ENOENT (OsError) if absent; CorruptSegment ("... is not a
// regular file") for a FIFO, socket, device, directory or symlink; other errors as OsError.
// `what` names the object for messages ("heap 'frames'").
[[nodiscard]] OpenedName open_shm_name(std::string_view normalized, OpenAccess access,
                                       const std::string &what);

// Who may be trusted as the owner of an object we attach to (API.md §7).
struct TrustPolicy {
    static constexpr uid_t kAnyOwner = static_cast<uid_t>(-2);
    static constexpr uid_t kOwnUser = static_cast<uid_t>(-1);
    // kOwnUser (the default): only objects of our own effective uid; kAnyOwner: anyone's; else
    // that uid's (and ours). Python's trust_owner= maps to it (None, "any", a uid).
    uid_t uid = kOwnUser;
    [[nodiscard]] bool any() const noexcept { return uid == kAnyOwner; }
    [[nodiscard]] static TrustPolicy own_user() noexcept { return TrustPolicy{kOwnUser}; }
};

// The owner of an open object (st_uid), checked against `trust`: PermissionError (OsError EPERM)
// naming the owner and the trust_owner parameter if it is another user's.
void check_owner(const struct stat &st, const TrustPolicy &trust, const std::string &what);

} // namespace shmipc
