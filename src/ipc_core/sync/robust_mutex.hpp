// A process-shared mutex that survives its holder: the one lock of the heap, the value's writers
// and the dict. Built on one futex word and the client table, not on pthread_mutex_t: a robust
// pthread mutex in shared memory keeps the holder's robust-list pointers in the shared word, so a
// peer that scribbles over it can make the holder's own unlock write through wild pointers; and a
// garbage owner makes pthread waiters sleep forever.
//
// Word (4 bytes, in shared memory):  0 = free; kPoisoned = a recovery failed;
//                                     else holder token (client_table.hpp) | kWaitersBit
//
//  - lock: CAS 0 -> token (no syscall). Contended: spin briefly, then set kWaitersBit and sleep
//    on the word in slices (kWaitSlice). Between slices: check_interrupt() (Ctrl-C), the
//    deadline (Timeout), and the holder: alive (keep waiting: a stopped holder makes us time
//    out, never hang), dead (take the word over by CAS and run `recover` before returning:
//    EOWNERDEAD semantics), invalid (the word was scribbled: CorruptSegment at once).
//  - unlock: exchange 0; FUTEX_WAKE one sleeper only if kWaitersBit was set.
// Not recursive. Threads of one process that share a client token exclude each other like any
// mutex; the token only identifies the process for liveness.
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/sync/client_table.hpp"

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>

namespace shmipc {

inline constexpr std::uint32_t kWaitersBit = 1u << 31;
inline constexpr std::uint32_t kPoisoned = ~0u;

struct alignas(8) RobustMutexWord {
    std::atomic<std::uint32_t> word{0};
    std::uint32_t reserved{0};
};
static_assert(std::is_standard_layout_v<RobustMutexWord>);
static_assert(sizeof(RobustMutexWord) == 8 && alignof(RobustMutexWord) == 8);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

class RobustMutex {
  public:
    // `what` names the object in error messages ("heap 'frames'").
    RobustMutex(RobustMutexWord &w, const ClientTable &table, std::string what)
        : w_(&w), table_(&table), what_(std::move(what)) {}
    RobustMutex() = default;

    // Checks the word of a segment we are attaching: CorruptSegment if it holds a token this
    // table cannot have issued (or the poison), so a scribbled lock fails the attach at once.
    void validate() const;

    // Locks with `token` (the caller's ClientTable::token()). `recover()` runs with the lock held
    // when the previous holder died holding it; if it throws, the lock is poisoned (everyone then
    // gets CorruptSegment) and the exception propagates. Throws Timeout when the deadline
    // passes, CorruptSegment for a scribbled or poisoned word, and whatever check_interrupt()
    // throws.
    template <class Recover>
    void lock(std::uint32_t token, const Deadline &deadline, Recover &&recover) {
        std::uint32_t expected = 0;
        // SYNC POINT: acquire, pairs with the release exchange in unlock().
        if (w_->word.compare_exchange_strong(expected, token, std::memory_order_acquire,
                                             std::memory_order_relaxed)) [[likely]]
            return;
        using R = std::remove_reference_t<Recover>;
        lock_slow(
            token, deadline, [](void *ctx) { (*static_cast<R *>(ctx))(); },
            static_cast<void *>(&recover));
    }
    // Never waits: false if someone (alive) holds it. Runs `recover` like lock().
    template <class Recover> [[nodiscard]] bool try_lock(std::uint32_t token, Recover &&recover) {
        using R = std::remove_reference_t<Recover>;
        return try_lock_impl(
            token, [](void *ctx) { (*static_cast<R *>(ctx))(); }, static_cast<void *>(&recover));
    }
    void unlock() noexcept;
    // Current holder token (0 if free), for diagnostics and tests.
    [[nodiscard]] std::uint32_t holder_token() const noexcept {
        return w_->word.load(std::memory_order_relaxed) & ~kWaitersBit;
    }

  private:
    using RecoverFn = void (*)(void *);
    void lock_slow(std::uint32_t token, const Deadline &deadline, RecoverFn fn, void *ctx);
    bool try_lock_impl(std::uint32_t token, RecoverFn fn, void *ctx);
    // The word is `seen` (held); is its holder dead? Takes it over (true) and recovers if so.
    bool take_over_if_dead(std::uint32_t seen, std::uint32_t token, RecoverFn fn, void *ctx);
    void run_recover(RecoverFn fn, void *ctx);

    RobustMutexWord *w_ = nullptr;
    const ClientTable *table_ = nullptr;
    std::string what_;
};

// Scoped lock.
class RobustLock {
  public:
    template <class Recover>
    RobustLock(RobustMutex &m, std::uint32_t token, const Deadline &d, Recover &&recover) : m_(&m) {
        m.lock(token, d, std::forward<Recover>(recover));
    }
    ~RobustLock() {
        if (m_)
            m_->unlock();
    }
    RobustLock(const RobustLock &) = delete;
    RobustLock &operator=(const RobustLock &) = delete;

  private:
    RobustMutex *m_;
};

} // namespace shmipc
