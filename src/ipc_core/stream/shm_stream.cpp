#include "ipc_core/stream/shm_stream.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/shm/open_name.hpp"
#include "ipc_core/shm/shm_name.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <system_error>
#include <unistd.h>

namespace shmipc {

namespace {

// Value of a user xattr of an fd, "" if absent; `supported` is false if the filesystem has none.
std::string get_xattr(int fd, const char *key, bool *supported = nullptr) {
    char buf[64];
    ssize_t n = ::fgetxattr(fd, key, buf, sizeof buf);
    if (supported)
        *supported = !(n < 0 && (errno == ENOTSUP || errno == EOPNOTSUPP));
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// A non-persistent shmipc stream (the marks say so).
bool replaceable_stream(int fd) {
    return get_xattr(fd, kKindXattr) == kStreamKind && get_xattr(fd, kPersistentXattr) != "1";
}

void set_xattr(int fd, const char *key, std::string_view value) {
    if (::fsetxattr(fd, key, value.data(), value.size(), 0) == 0)
        return;
    // A filesystem without user xattrs still gets working streams; only stale replacement and
    // listing (which need the marks) are unavailable there.
    if (errno == ENOTSUP || errno == EOPNOTSUPP)
        return;
    throw_errno("fsetxattr");
}

} // namespace

UniqueFd create_stream(std::string_view name, mode_t mode, bool persistent, bool append) {
    const std::string norm = normalize_shm_name(name);
    check_mode(mode);
    // Built under a temporary name (holding its owner lock) and published with one rename, so
    // nobody ever opens a stream without its owner lock and marks.
    const std::string tmp = temp_shm_path();
    UniqueFd fd = create_temporary(tmp);
    struct TmpGuard {
        const std::string &p;
        bool armed = true;
        ~TmpGuard() {
            if (armed)
                ::unlink(p.c_str());
        }
    } guard{tmp};
    set_xattr(fd.get(), kKindXattr, kStreamKind);
    if (persistent)
        set_xattr(fd.get(), kPersistentXattr, "1");
    if (::fchmod(fd.get(), mode) != 0)
        throw_errno("fchmod"); // exact, whatever the umask
    if (append && ::fcntl(fd.get(), F_SETFL, O_APPEND) != 0)
        throw_errno("fcntl(O_APPEND)");
    publish_named(tmp, norm, replaceable_stream);
    guard.armed = false;
    // Not registered for renewal in fork children (sync/liveness.hpp): the fd goes to the caller
    // (a Python file object closes it), so no one here could unregister it, and a later fd of the
    // same number would be replaced in every forked child. A forked child keeps the owner lock
    // until it closes its copy or exits: the name is then replaced only once both are gone.
    return fd;
}

GuestStream open_stream(std::string_view name, StreamAccess access, bool truncate, bool append,
                        const TrustPolicy &trust) {
    const std::string norm = normalize_shm_name(name);
    const std::string what = "stream '" + norm + "'";
    OpenAccess how = access == StreamAccess::ReadOnly    ? OpenAccess::ReadOnly
                     : access == StreamAccess::ReadWrite ? OpenAccess::ReadWrite
                                                         : OpenAccess::PreferWrite;
    OpenedName o = open_shm_name(norm, how, what);
    check_owner(o.st, trust, what);
    // Another shmipc kind under this name (a heap, a queue...): never open, let alone truncate,
    // it as a stream.
    SegmentHeader h{};
    if (read_segment_header(o.fd.get(), h))
        throw OsError(EEXIST,
                      "'" + norm + "' holds a shmipc " + kind_name(h.kind) + ", not a stream");
    if (truncate && o.writable && ::ftruncate(o.fd.get(), 0) != 0)
        throw_errno("ftruncate");
    // Back to blocking mode for the user's reads and writes.
    if (::fcntl(o.fd.get(), F_SETFL, append ? O_APPEND : 0) != 0)
        throw_errno("fcntl(F_SETFL)");
    GuestStream g;
    g.fd = std::move(o.fd);
    g.writable = o.writable;
    return g;
}

bool release_stream_name(std::string_view name, int owner_fd) noexcept {
    try {
        const std::string path = shm_path(normalize_shm_name(name));
        struct stat mine {};
        struct stat now {};
        if (::fstat(owner_fd, &mine) != 0 || ::stat(path.c_str(), &now) != 0)
            return false;
        if (mine.st_ino != now.st_ino || mine.st_dev != now.st_dev)
            return false;
        return ::unlink(path.c_str()) == 0;
    } catch (...) {
        return false;
    }
}

StreamInfo stream_info(std::string_view name) {
    const std::string path = shm_path(normalize_shm_name(name));
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    if (!fd)
        throw_errno("open");
    StreamInfo info;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    info.size = static_cast<std::uint64_t>(st.st_size);
    info.is_stream = get_xattr(fd.get(), kKindXattr) == kStreamKind;
    info.persistent = get_xattr(fd.get(), kPersistentXattr) == "1";
    info.owner_alive = S_ISREG(st.st_mode) && byte_is_locked(fd.get(), kOwnerLockByte);
    return info;
}

void chmod_named(std::string_view name, mode_t mode) {
    check_mode(mode);
    const std::string path = shm_path(normalize_shm_name(name));
    if (::fchmodat(AT_FDCWD, path.c_str(), mode, AT_SYMLINK_NOFOLLOW) != 0)
        throw_errno("chmod");
}

void chgrp_named(std::string_view name, gid_t gid) {
    const std::string path = shm_path(normalize_shm_name(name));
    if (::fchownat(AT_FDCWD, path.c_str(), static_cast<uid_t>(-1), gid, AT_SYMLINK_NOFOLLOW) != 0)
        throw_errno("chgrp");
}

} // namespace shmipc
