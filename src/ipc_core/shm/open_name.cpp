#include "ipc_core/shm/open_name.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/shm_name.hpp"

#include <cerrno>
#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

namespace shmipc {

namespace {
constexpr int kOpenFlags = O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;

[[noreturn]] void not_regular(const std::string &what) {
    throw CorruptSegment(what + " is not a regular file (a FIFO, socket, directory or symlink "
                                "is at its name)");
}

std::string user_name(uid_t uid) {
    struct passwd pw {};
    struct passwd *res = nullptr;
    char buf[1024];
    if (::getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res)
        return std::string(res->pw_name) + " (uid " + std::to_string(uid) + ")";
    return "uid " + std::to_string(uid);
}
} // namespace

OpenedName open_shm_name(std::string_view normalized, OpenAccess access, const std::string &what) {
    const std::string path = shm_path(normalized);
    OpenedName r;
    int mode = access == OpenAccess::ReadOnly ? O_RDONLY : O_RDWR;
    r.fd.reset(::open(path.c_str(), mode | kOpenFlags));
    r.writable = mode == O_RDWR;
    if (!r.fd && access == OpenAccess::PreferWrite && (errno == EACCES || errno == EROFS)) {
        r.fd.reset(::open(path.c_str(), O_RDONLY | kOpenFlags));
        r.writable = false;
    }
    if (!r.fd) {
        int err = errno;
        if (err == ENOENT)
            throw OsError(ENOENT,
                          "no shared-memory object named '" + std::string(normalized) + "'");
        if (err == ELOOP || err == EISDIR || err == ENXIO || err == ENODEV)
            not_regular(what);
        throw_errno(err, "open " + path);
    }
    if (::fstat(r.fd.get(), &r.st) != 0)
        throw_errno("fstat");
    if (!S_ISREG(r.st.st_mode))
        not_regular(what);
    return r;
}

void check_owner(const struct stat &st, const TrustPolicy &trust, const std::string &what) {
    if (trust.any())
        return;
    const uid_t me = ::geteuid();
    const uid_t want = trust.uid == TrustPolicy::kOwnUser ? me : trust.uid;
    if (st.st_uid == want || st.st_uid == me)
        return;
    throw OsError(EPERM, what + " is owned by " + user_name(st.st_uid) + ", not by " +
                             user_name(want) + "; pass trust_owner=" + std::to_string(st.st_uid) +
                             " (or trust_owner=\"any\") to attach to it anyway");
}

} // namespace shmipc
