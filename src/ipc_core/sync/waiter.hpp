// Wait/notify on a 32-bit word in shared memory (a process-shared futex).
//
// Protocol: a waiter announces itself in `waiters` before sleeping and re-checks its condition,
// so a notifier only makes the FUTEX_WAKE syscall when someone may sleep: the fast path is a
// load. Sleeps are sliced (kWaitSlice) so callers can check Ctrl-C and peer liveness.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <type_traits>

namespace shmipc {

struct alignas(8) FutexWord {
    std::atomic<std::uint32_t> seq{0};     // bumped by every notify
    std::atomic<std::uint32_t> waiters{0}; // sleepers announced on seq
};
static_assert(std::is_standard_layout_v<FutexWord>);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

// Sleeps while word.seq == expected, for at most `timeout`. Returns on change, timeout or a
// spurious wake-up; callers loop on their own condition.
void futex_wait(std::atomic<std::uint32_t> &word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept;
// Wakes up to n sleepers on the word (INT32_MAX for all).
void futex_wake(std::atomic<std::uint32_t> &word, int n) noexcept;

// Bumps seq and wakes every sleeper if any announced itself.
void notify_all(FutexWord &w) noexcept;

// Spins a little (cheap when the peer is awake on the other core), then sleeps in slices.
// `ready()` is the condition, `between_slices()` may throw (Ctrl-C, dead peer, timeout).
template <class Ready, class BetweenSlices>
bool wait_until(FutexWord &w, Ready &&ready, BetweenSlices &&between_slices, int spin = 2000) {
    for (int i = 0; i < spin; ++i) {
        if (ready())
            return true;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    for (;;) {
        std::uint32_t seen = w.seq.load(std::memory_order_acquire);
        if (ready())
            return true;
        w.waiters.fetch_add(1, std::memory_order_seq_cst);
        // SYNC POINT: pairs with the seq bump in notify_all; re-check after announcing.
        if (ready()) {
            w.waiters.fetch_sub(1, std::memory_order_relaxed);
            return true;
        }
        std::chrono::nanoseconds slice = between_slices();
        if (slice.count() > 0)
            futex_wait(w.seq, seen, slice);
        w.waiters.fetch_sub(1, std::memory_order_relaxed);
        if (slice.count() <= 0)
            return ready();
    }
}

} // namespace shmipc
