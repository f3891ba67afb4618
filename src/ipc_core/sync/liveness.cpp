#include "ipc_core/sync/liveness.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/base/fork_epoch.hpp"

#include <array>
#include <atomic>
#include <cerrno>
#include <fcntl.h>
#include <string>
#include <unistd.h>

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

// "/proc/self/fd/<fd>" without snprintf (async-signal-safe).
void proc_path(int fd, char (&out)[40]) noexcept {
    const char prefix[] = "/proc/self/fd/";
    std::size_t i = 0;
    for (; prefix[i]; ++i)
        out[i] = prefix[i];
    char digits[12];
    int n = 0;
    unsigned v = static_cast<unsigned>(fd);
    do {
        digits[n++] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v && n < 11);
    while (n)
        out[i++] = digits[--n];
    out[i] = '\0';
}

int open_again(int fd) noexcept {
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    int acc = fl & O_ACCMODE;
    char path[40];
    proc_path(fd, path);
    // No O_NOFOLLOW: /proc/self/fd/N is a symlink to the file itself.
    return ::open(path, acc | O_CLOEXEC | O_NONBLOCK);
}

// fd + 1 of each registered fd; 0 = empty (constant-initialised: usable before main()).
std::array<std::atomic<int>, kMaxRenewedFds> g_renewed{};

// In a forked child, before anything else runs: swap every registered fd for a fresh
// description. open/dup2/close/fcntl are async-signal-safe.
void renew_all() {
    for (auto &slot : g_renewed) {
        int fd = slot.load(std::memory_order_relaxed) - 1;
        if (fd < 0)
            continue;
        int fresh = open_again(fd);
        if (fresh < 0)
            fresh = ::open("/dev/null", O_RDONLY | O_CLOEXEC); // keep the number taken
        if (fresh >= 0) {
            ::dup3(fresh, fd, O_CLOEXEC);
            ::close(fresh);
        }
    }
}

[[maybe_unused]] const bool g_hooked = [] {
    on_fork_child(&renew_all);
    return true;
}();
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

int reopen_description(int fd) {
    int r = open_again(fd);
    if (r < 0)
        throw_errno(errno, "open(/proc/self/fd/" + std::to_string(fd) + ")");
    return r;
}

void renew_in_fork_children(int fd) noexcept {
    if (fd < 0)
        return;
    for (auto &slot : g_renewed) {
        int expected = 0;
        if (slot.compare_exchange_strong(expected, fd + 1, std::memory_order_relaxed))
            return;
    }
}

void forget_in_fork_children(int fd) noexcept {
    if (fd < 0)
        return;
    for (auto &slot : g_renewed) {
        int expected = fd + 1;
        if (slot.compare_exchange_strong(expected, 0, std::memory_order_relaxed))
            return;
    }
}

} // namespace shmipc
