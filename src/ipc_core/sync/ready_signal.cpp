// The reactor's target (reactor.hpp): ReadySignal, an eventfd that is readable once something
// fired since the last take(), and the tokens fired.
#include "ipc_core/sync/reactor.hpp"

#include "ipc_core/base/errors.hpp"

#include <cerrno>
#include <cstdint>
#include <mutex>
#include <sys/eventfd.h>
#include <unistd.h>
#include <vector>

namespace shmipc {

ReadySignal::ReadySignal() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (!fd_)
        throw OsError(errno, "eventfd");
}

void ReadySignal::raise() noexcept {
    const std::uint64_t one = 1;
    // EAGAIN only when the counter is near 2^64: it is readable then anyway.
    [[maybe_unused]] ssize_t n = ::write(fd_.get(), &one, sizeof one);
}

void ReadySignal::fire(std::uint64_t token) noexcept {
    {
        std::lock_guard g(mu_);
        try {
            fired_.push_back(token);
        } catch (...) { // out of memory: the eventfd still says "look again"
        }
    }
    raise();
}

std::vector<std::uint64_t> ReadySignal::take() {
    std::uint64_t count = 0;
    [[maybe_unused]] ssize_t n = ::read(fd_.get(), &count, sizeof count); // EAGAIN: nothing
    std::vector<std::uint64_t> out;
    std::lock_guard g(mu_);
    out.swap(fired_);
    return out;
}

} // namespace shmipc
