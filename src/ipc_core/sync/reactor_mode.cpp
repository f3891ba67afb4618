// The reactor's mode (reactor.hpp): whether this kernel (and seccomp profile) has futex_waitv,
// and the mode a process uses: Waitv where it works, Threads otherwise or with
// SHMIPC_REACTOR=threads.
#include "ipc_core/sync/reactor.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif

namespace shmipc {

bool futex_waitv_available() noexcept {
    static const bool ok = [] {
        std::uint32_t word = 0;
        futex_waitv v{};
        v.val = 1; // != word: a working futex_waitv returns EAGAIN at once
        v.uaddr = reinterpret_cast<std::uintptr_t>(&word);
        v.flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
        const long r = ::syscall(SYS_futex_waitv, &v, 1, 0, nullptr, 0);
        return r < 0 && errno == EAGAIN;
    }();
    return ok;
}

ReactorMode default_reactor_mode() noexcept {
    const char *env = std::getenv("SHMIPC_REACTOR");
    if (env && std::strcmp(env, "threads") == 0)
        return ReactorMode::Threads;
    return futex_waitv_available() ? ReactorMode::Waitv : ReactorMode::Threads;
}

const char *reactor_mode_name(ReactorMode m) noexcept {
    return m == ReactorMode::Waitv ? "futex_waitv" : "threads";
}

} // namespace shmipc
