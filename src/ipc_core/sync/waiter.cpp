#include "ipc_core/sync/waiter.hpp"

#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace shmipc {

void futex_wait(std::atomic<std::uint32_t> &word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept {
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
    // Not FUTEX_PRIVATE: the word lives in memory shared between processes.
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t *>(&word), FUTEX_WAIT, expected, &ts,
              nullptr, 0);
}

void futex_wake(std::atomic<std::uint32_t> &word, int n) noexcept {
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t *>(&word), FUTEX_WAKE, n, nullptr, nullptr,
              0);
}

void notify_all(FutexWord &w) noexcept {
    w.seq.fetch_add(1, std::memory_order_seq_cst);
    // SYNC POINT: pairs with the waiters announcement in wait_until.
    if (w.waiters.load(std::memory_order_seq_cst) != 0)
        futex_wake(w.seq, INT_MAX);
}

} // namespace shmipc
