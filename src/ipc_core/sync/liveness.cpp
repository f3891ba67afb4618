#include "ipc_core/sync/liveness.hpp"

#include "ipc_core/base/errors.hpp"

#include <cerrno>
#include <fcntl.h>

namespace shmipc {

namespace {
struct flock make_lock(short type, off_t byte) {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    fl.l_pid = 0; // required for OFD locks
    return fl;
}
} // namespace

bool try_lock_byte(int fd, off_t byte, bool exclusive) {
    auto fl = make_lock(exclusive ? F_WRLCK : F_RDLCK, byte);
    if (::fcntl(fd, F_OFD_SETLK, &fl) == 0)
        return true;
    if (errno == EAGAIN || errno == EACCES)
        return false;
    throw_errno("fcntl(F_OFD_SETLK)");
}

void lock_byte_wait(int fd, off_t byte, bool exclusive) {
    auto fl = make_lock(exclusive ? F_WRLCK : F_RDLCK, byte);
    while (::fcntl(fd, F_OFD_SETLKW, &fl) != 0) {
        if (errno != EINTR)
            throw_errno("fcntl(F_OFD_SETLKW)");
    }
}

void unlock_byte(int fd, off_t byte) {
    auto fl = make_lock(F_UNLCK, byte);
    ::fcntl(fd, F_OFD_SETLK, &fl);
}

bool byte_is_locked(int fd, off_t byte) {
    auto fl = make_lock(F_WRLCK, byte);
    if (::fcntl(fd, F_OFD_GETLK, &fl) != 0)
        throw_errno("fcntl(F_OFD_GETLK)");
    return fl.l_type != F_UNLCK;
}

pid_t byte_lock_owner(int fd, off_t byte) {
    auto fl = make_lock(F_WRLCK, byte);
    if (::fcntl(fd, F_OFD_GETLK, &fl) != 0)
        return 0;
    return fl.l_type == F_UNLCK ? 0 : fl.l_pid;
}

} // namespace shmipc
