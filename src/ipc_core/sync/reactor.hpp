// The reactor: waits on many futex words of shared memory at once on behalf of event loops, and
// turns their changes into eventfd readiness. It never runs Python code and never takes the GIL.
//
// A registration (arm) is one-shot: it announces itself on the word's `waiters` count (so the
// notifier of the word issues the FUTEX_WAKE, see waiter.hpp), remembers `seq` as seen *after*
// the announcement, and fires once -- appends its token to a ReadySignal and makes the signal's
// eventfd readable -- when seq moves past that value, or when its `check` (run on slices of
// kWaitSlice from the reactor thread: peer liveness, orphan scans) says so. Then it is gone (the
// announcement withdrawn). The caller re-checks its own condition after arm() returns (the
// Dekker pair of waiter.hpp): a change published before the announcement is seen by that
// re-check, one published after it bumps seq and wakes the reactor.
//
// Two ways to wait, chosen once per process (default_reactor_mode):
//  - Waitv: one thread per kWordsPerThread registrations (one for up to 127 awaited words; more
//    threads only beyond that) blocking in futex_waitv (Linux >= 5.16) on the awaited words plus
//    a private control word that arm() bumps so the thread rebuilds its list. A word that fired
//    stays in the list for a while, unannounced ("sticky", see reactor.cpp): re-arming it with
//    the value the thread sleeps on needs no wake-up, so an await loop costs one wake per
//    message (the peer's), not two.
//  - Threads: a thread per registration blocking in futex_wait, for kernels without futex_waitv
//    or a seccomp profile that refuses it (ENOSYS/EPERM), or SHMIPC_REACTOR=threads.
//
// Memory safety: the reactor touches an armed word (and runs `check`) only under its mutex, and
// an armed registration keeps the word's mapping alive (`keep`) or is disarmed by its owner
// before the mapping goes (disarm_owner). The kernel side of a futex wait never touches user
// memory after the initial compare, so a mapping may vanish while a thread sleeps on it.
#pragma once

#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace shmipc {

// The target a reactor fires: an eventfd that is readable once something fired since the last
// take(), and the tokens that fired. Thread-safe.
class ReadySignal {
  public:
    ReadySignal(); // OsError (EMFILE...) if no eventfd can be made
    ReadySignal(const ReadySignal &) = delete;
    ReadySignal &operator=(const ReadySignal &) = delete;
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    // Appends `token` and makes the eventfd readable. Never blocks.
    void fire(std::uint64_t token) noexcept;
    // Makes the eventfd readable without a token (a level the owner sets itself).
    void raise() noexcept;
    // Drains the eventfd and returns (and forgets) the tokens fired since the last take().
    std::vector<std::uint64_t> take();

  private:
    UniqueFd fd_;
    std::mutex mu_;
    std::vector<std::uint64_t> fired_;
};

// What to wait for.
struct WatchSpec {
    FutexWord *word = nullptr;   // the awaited word, in shared memory
    const void *owner = nullptr; // disarm_owner(owner) forgets the registration
    std::shared_ptr<void> keep;  // keeps the word's mapping alive while armed (may be null)
    std::function<bool()> check; // on slices, from a reactor thread: true = fire now (may be empty)
};

enum class ReactorMode { Waitv, Threads };

// True if futex_waitv works here (not ENOSYS, not refused by seccomp).
[[nodiscard]] bool futex_waitv_available() noexcept;
// SHMIPC_REACTOR=threads forces Threads, =waitv asks for Waitv (Threads if unavailable);
// otherwise Waitv when available.
[[nodiscard]] ReactorMode default_reactor_mode() noexcept;
[[nodiscard]] const char *reactor_mode_name(ReactorMode m) noexcept;

class Reactor {
  public:
    // futex_waitv takes at most 128 words; one is the thread's control word.
    static constexpr std::size_t kWordsPerThread = 127;

    // The process's reactor (a forked child gets a fresh one; the parent's is left untouched).
    static Reactor &instance();

    explicit Reactor(ReactorMode mode);
    // Disarms everything and joins its threads (the process's reactor is never destroyed).
    ~Reactor();
    Reactor(const Reactor &) = delete;
    Reactor &operator=(const Reactor &) = delete;

    [[nodiscard]] ReactorMode mode() const noexcept { return mode_; }

    // Arms a one-shot registration (see the top of the file); returns its id (never 0).
    // OsError (EAGAIN...) if a thread cannot be started; nothing is armed then.
    std::uint64_t arm(WatchSpec spec, std::shared_ptr<ReadySignal> signal, std::uint64_t token);
    // Forgets the registration. True if it was still armed (it never fires then), false if it
    // had fired or never existed.
    bool disarm(std::uint64_t id) noexcept;
    // Fires and forgets every registration of `owner` (which is about to close: its waiters
    // retry and find it closed); returns how many.
    std::size_t disarm_owner(const void *owner) noexcept;
    // disarm_owner on the process's reactor, if one was ever made (no reactor is created).
    static void release_owner(const void *owner) noexcept;

    [[nodiscard]] std::size_t armed() const;
    [[nodiscard]] std::size_t threads() const; // threads running now
    // How many times arm() had to wake a sleeping thread to rebuild its list (Waitv mode; an
    // await loop on one word re-arms without any, see StickyWord in reactor.cpp).
    [[nodiscard]] std::size_t arm_wakeups() const;
    // Liveness checks run at most this often per registration (default kWaitSlice).
    void set_check_interval(std::chrono::nanoseconds d) noexcept;

  private:
    struct Reg;
    struct Shard;
    void run_shard(Shard *sh);
    void run_single(std::shared_ptr<Reg> reg);
    // Under mu_: fire and forget; what must be released outside the lock goes to `later`.
    void fire_locked(Reg &r, std::vector<std::shared_ptr<void>> &later) noexcept;
    void unlink_locked(Reg &r) noexcept;
    [[nodiscard]] bool changed_locked(const Reg &r) const noexcept;

    const ReactorMode mode_;
    mutable std::mutex mu_;
    std::condition_variable threads_done_;
    std::uint64_t next_id_ = 1;
    std::unordered_map<std::uint64_t, std::shared_ptr<Reg>> regs_;
    std::vector<std::unique_ptr<Shard>> shards_;
    std::size_t single_threads_ = 0; // Threads mode: running per-registration threads
    std::size_t arm_wakeups_ = 0;
    std::chrono::nanoseconds check_interval_;
    bool stopping_ = false;
};

} // namespace shmipc
