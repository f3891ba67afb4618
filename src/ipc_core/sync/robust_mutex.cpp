#include "ipc_core/sync/robust_mutex.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <climits>
#include <sched.h>

namespace shmipc {

namespace {
constexpr int kSpins = 200; // ~5 us: a holder on another core usually leaves by then
}

void RobustMutex::validate() const {
    // SYNC POINT: acquire, pairs with the release of the last unlock (a settled word is read).
    std::uint32_t v = w_->word.load(std::memory_order_acquire);
    if (v == 0)
        return;
    if (v == kPoisoned)
        throw CorruptSegment(what_ + ": its lock is not recoverable (an earlier recovery failed)");
    if (table_->holder(v & ~kWaitersBit) == HolderState::Invalid)
        throw CorruptSegment(what_ + ": its lock word holds garbage (" + std::to_string(v) + ")");
}

void RobustMutex::unlock() noexcept {
    // SYNC POINT: release, pairs with the acquire CAS of the next locker.
    std::uint32_t old = w_->word.exchange(0, std::memory_order_release);
    if (old & kWaitersBit)
        futex_wake(w_->word, 1);
}

void RobustMutex::run_recover(RecoverFn fn, void *ctx) {
    try {
        fn(ctx);
    } catch (...) {
        // SYNC POINT: release, pairs with the acquire CAS/loads of every later locker: the word
        // stays poisoned (CorruptSegment) after a failed recovery.
        w_->word.store(kPoisoned, std::memory_order_release);
        futex_wake(w_->word, INT_MAX);
        throw;
    }
}

bool RobustMutex::take_over_if_dead(std::uint32_t seen, std::uint32_t token, RecoverFn fn,
                                    void *ctx) {
    if (seen == kPoisoned)
        throw CorruptSegment(what_ + ": its lock is not recoverable (an earlier recovery failed)");
    HolderState h = table_->holder(seen & ~kWaitersBit);
    if (h == HolderState::Invalid)
        throw CorruptSegment(what_ + ": its lock word holds garbage (" + std::to_string(seen) +
                             ")");
    if (h == HolderState::Alive)
        return false;
    // Dead: whoever moves the word from the dead token to theirs recovers.
    // SYNC POINT: acquire, pairs with the dead holder's last releases (what it finished is seen;
    // what it did not is repaired by the recovery).
    if (!w_->word.compare_exchange_strong(seen, token | (seen & kWaitersBit),
                                          std::memory_order_acquire, std::memory_order_relaxed))
        return false;
    run_recover(fn, ctx);
    return true;
}

bool RobustMutex::try_lock_impl(std::uint32_t token, RecoverFn fn, void *ctx) {
    std::uint32_t v = w_->word.load(std::memory_order_relaxed);
    // SYNC POINT: acquire, pairs with the release exchange in unlock().
    if (v == 0 && w_->word.compare_exchange_strong(v, token, std::memory_order_acquire,
                                                   std::memory_order_relaxed))
        return true;
    if (v == 0)
        return false; // lost a race with a live locker
    return take_over_if_dead(v, token, fn, ctx);
}

void RobustMutex::lock_slow(std::uint32_t token, const Deadline &deadline, RecoverFn fn,
                            void *ctx) {
    for (int i = 0; i < kSpins; ++i) {
        cpu_relax();
        std::uint32_t v = w_->word.load(std::memory_order_relaxed);
        // SYNC POINT: acquire, pairs with the release exchange in unlock().
        if (v == 0 && w_->word.compare_exchange_weak(v, token, std::memory_order_acquire,
                                                     std::memory_order_relaxed))
            return;
    }
    // From here on we may sleep: lock with the waiters bit set, since others may sleep too.
    const std::uint32_t mine = token | kWaitersBit;
    bool first = true;
    for (;;) {
        std::uint32_t v = w_->word.load(std::memory_order_relaxed);
        if (v == 0) {
            // SYNC POINT: acquire, pairs with the release exchange in unlock().
            if (w_->word.compare_exchange_strong(v, mine, std::memory_order_acquire,
                                                 std::memory_order_relaxed))
                return;
            continue;
        }
        const bool expired = deadline.expired();
        if (!first || expired) {
            // Between slices (not before the first sleep: a short wait should stay cheap).
            if (!first)
                check_interrupt();
            if (take_over_if_dead(v, mine, fn, ctx))
                return;
            if (expired)
                throw Timeout(what_ + ": timed out waiting for its lock (held by another " +
                              "process or thread, which may be stopped)");
        } else if (v == kPoisoned || table_->holder(v & ~kWaitersBit) == HolderState::Invalid) {
            (void)take_over_if_dead(v, mine, fn, ctx); // throws CorruptSegment
        }
        first = false;
        if (!(v & kWaitersBit) &&
            !w_->word.compare_exchange_strong(v, v | kWaitersBit, std::memory_order_relaxed))
            continue;
        futex_wait(w_->word, v | kWaitersBit, deadline.slice());
    }
}

} // namespace shmipc
