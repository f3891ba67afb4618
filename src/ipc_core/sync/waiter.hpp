// Wait/notify on 32-bit words in shared memory (process-shared futexes): the one waiter every
// kind uses.
//
// Protocol (a Dekker pair): a waiter announces itself in `waiters` (seq_cst) and re-checks its
// condition before sleeping; a notifier publishes its change, then (seq_cst fence) looks at
// `waiters` and only makes the FUTEX_WAKE syscall when someone may sleep. So the fast path of
// both sides is a load; nobody sleeps through a change. Sleeps are sliced (kWaitSlice at most) so
// callers can check Ctrl-C, peer liveness and their deadline between slices.
//
// Anyone may announce itself on a word: a thread in wait_until, or a reactor that waits on many
// words at once (futex_waitv) on behalf of event loops.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <sched.h>
#include <type_traits>

namespace shmipc {

// Layout: 8 bytes, 8-aligned; lives inside other shared structs.
struct alignas(8) FutexWord {
    std::atomic<std::uint32_t> seq{0};     // bumped by every notify; the futex word
    std::atomic<std::uint32_t> waiters{0}; // sleepers announced on seq
};
static_assert(std::is_standard_layout_v<FutexWord>);
static_assert(sizeof(FutexWord) == 8 && alignof(FutexWord) == 8);
static_assert(offsetof(FutexWord, seq) == 0 && offsetof(FutexWord, waiters) == 4);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

// Sleeps while word == expected, for at most `timeout`. Returns on change, timeout or a
// spurious wake-up; callers loop on their own condition.
void futex_wait(std::atomic<std::uint32_t> &word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept;
// Wakes up to n sleepers on the word (INT32_MAX for all).
void futex_wake(std::atomic<std::uint32_t> &word, int n) noexcept;

// Bumps seq and wakes every sleeper if any announced itself. The caller's change is ordered
// before by the seq_cst RMW.
void notify_all(FutexWord &w) noexcept;

// Wakes the sleepers of `w` if one announced itself; no write to the shared line otherwise. The
// caller has just published its change with a release store; the seq_cst fence orders that
// store before the load of `waiters`.
inline void wake_if_waiting(FutexWord &w) noexcept {
    // SYNC POINT: pairs with the waiters.fetch_add + re-check of ready() in wait_until.
#if defined(__SANITIZE_THREAD__)
    // TSan does not model fences; a seq_cst RMW orders the same way (slower: it writes the line).
    if (w.waiters.fetch_add(0, std::memory_order_seq_cst) != 0)
        notify_all(w);
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (w.waiters.load(std::memory_order_relaxed) != 0)
        notify_all(w);
#endif
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Sleeps on `w` in slices until ready(). `between_slices()` returns the next sleep (<= 0: give up
// after one last check) and may throw (Ctrl-C, a dead peer, a timeout). True once ready().
template <class Ready, class BetweenSlices>
bool wait_until(FutexWord &w, Ready &&ready, BetweenSlices &&between_slices) {
    for (;;) {
        std::uint32_t seen = w.seq.load(std::memory_order_acquire);
        if (ready())
            return true;
        w.waiters.fetch_add(1, std::memory_order_seq_cst);
        // SYNC POINT: pairs with the fence/RMW of the notifier; re-check after announcing.
        if (ready()) {
            w.waiters.fetch_sub(1, std::memory_order_relaxed);
            return true;
        }
        std::chrono::nanoseconds slice;
        try {
            slice = between_slices();
        } catch (...) {
            w.waiters.fetch_sub(1, std::memory_order_relaxed);
            throw;
        }
        if (slice.count() > 0)
            futex_wait(w.seq, seen, slice);
        w.waiters.fetch_sub(1, std::memory_order_relaxed);
        if (slice.count() <= 0)
            return ready();
    }
}

// How long a waiter busy-waits before it sleeps. Waking a sleeping process costs 20-60 us on
// the machines we measured, a cache line crosses cores in ~85 ns: spinning a little is cheap
// when the peer runs on another core. After `pure` the spinner yields its core between checks,
// since the peer may be waiting for that very core (more processes than cores).
struct SpinPolicy {
    std::chrono::nanoseconds pure{0};     // spin without yielding
    std::chrono::nanoseconds yielding{0}; // then spin with sched_yield between checks
};

// Spins as `policy` says, then sleeps on `w` in slices (see wait_until). True once ready().
template <class Ready, class BetweenSlices>
bool spin_then_wait(FutexWord &w, Ready &&ready, BetweenSlices &&between_slices,
                    SpinPolicy policy) {
    if (policy.pure.count() > 0 || policy.yielding.count() > 0) {
        const auto start = std::chrono::steady_clock::now();
        const auto yield_from = start + policy.pure;
        const auto end = yield_from + policy.yielding;
        for (unsigned i = 1;; ++i) {
            if (ready())
                return true;
            cpu_relax();
            // A clock read is ~20 ns, 16 pauses ~0.3 us: a few % of the spin.
            if ((i & 15) == 0) {
                const auto now = std::chrono::steady_clock::now();
                if (now >= end)
                    break;
                if (now >= yield_from)
                    ::sched_yield();
            }
        }
    }
    return wait_until(w, ready, between_slices);
}

} // namespace shmipc
