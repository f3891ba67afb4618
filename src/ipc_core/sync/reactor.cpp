// The reactor (reactor.hpp): the process's instance, registrations (arm, disarm, sticky words)
// and the threads that wait for them, in either mode. ReadySignal: ready_signal.cpp; the choice
// of the mode: reactor_mode.cpp.
#include "ipc_core/sync/reactor.hpp"

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/base/fork_epoch.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <linux/futex.h>
#include <new>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <system_error>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif

namespace shmipc {

// --- the process's reactor -----------------------------------------------------------------------

namespace {

// Raw storage: a forked child re-creates the mutex (a parent thread may have held it at fork).
alignas(std::mutex) unsigned char g_instance_mu_storage[sizeof(std::mutex)];
std::mutex *g_instance_mu = new (g_instance_mu_storage) std::mutex;
Reactor *g_instance = nullptr; // leaked on purpose: threads may use it until the process ends

void reset_in_child() {
    // The parent's reactor (and its threads) do not exist here; leave its memory alone.
    g_instance = nullptr;
    g_instance_mu = new (g_instance_mu_storage) std::mutex;
}
[[maybe_unused]] const int g_hook = (on_fork_child(&reset_in_child), 0);

timespec abs_timespec(Clock::time_point t) {
    const auto ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    return ts;
}

// Without a check a registration only waits for its word: sleep long, arm() wakes us.
constexpr std::chrono::seconds kIdleSleep{5};
// A sticky word not armed again within this is dropped.
constexpr std::chrono::seconds kStickyFor{2};

} // namespace

void Reactor::release_owner(const void *owner) noexcept {
    Reactor *r = nullptr;
    {
        std::lock_guard g(*g_instance_mu);
        r = g_instance;
    }
    if (r)
        (void)r->disarm_owner(owner);
}

Reactor &Reactor::instance() {
    std::lock_guard g(*g_instance_mu);
    if (!g_instance)
        g_instance = new Reactor(default_reactor_mode());
    return *g_instance;
}

struct Reactor::Reg {
    std::uint64_t id = 0;
    WatchSpec spec;
    std::shared_ptr<ReadySignal> signal;
    std::uint64_t token = 0;
    std::uint32_t seen = 0;
    bool armed = true;
    Shard *shard = nullptr; // Waitv mode
    std::size_t index = 0;  // in shard->regs
    Clock::time_point next_check;
};

// A word the shard keeps waiting on after its registration fired or was disarmed, with the
// value it last saw, but without an announcement (so nobody issues wakes for it): when the same
// word is armed again with the same value -- an await loop on one channel -- the thread already
// sleeps on exactly that, and arm() need not wake it to rebuild its list. Only the kernel ever
// reads a sticky word (futex_waitv compares it; EFAULT if it was unmapped): the reactor never
// dereferences it, so its mapping may be gone.
//
// The kernel keys a shared futex by the mapping it finds at wait time: if the word's mapping
// went away and another one took its address, a sleeping thread would wait on the old key while
// arm() thinks it sleeps on the new word. So a word is made sticky only while its mapping is
// known to live on (no keep-alive, or not the last reference to it), and disarm_owner (every
// closing object calls it) drops its owner's sticky words and wakes the thread to rebuild.
struct StickyWord {
    FutexWord *word;
    std::uint32_t val;
    const void *owner;
    Clock::time_point since;
};

struct Reactor::Shard {
    std::thread thread;
    std::atomic<std::uint32_t> ctl{0}; // private control word: bumped by arm()
    std::vector<Reg *> regs;           // under mu_
    std::vector<StickyWord> sticky;    // under mu_
    // What the thread sleeps on (or is about to): word -> value, valid while in_wait.
    std::unordered_map<const FutexWord *, std::uint32_t> current;
    bool in_wait = false;
    bool stop = false;

    void add_sticky(const WatchSpec &spec, std::uint32_t val) {
        if (spec.keep && spec.keep.use_count() <= 1)
            return; // the mapping goes with this registration
        for (auto &s : sticky)
            if (s.word == spec.word) {
                s.val = val;
                s.owner = spec.owner;
                s.since = Clock::now();
                return;
            }
        if (sticky.size() < kStickyMax)
            sticky.push_back({spec.word, val, spec.owner, Clock::now()});
    }
    static constexpr std::size_t kStickyMax = 32;
};

Reactor::Reactor(ReactorMode mode) : mode_(mode), check_interval_(kWaitSlice) {}

Reactor::~Reactor() {
    std::vector<std::shared_ptr<void>> later;
    std::vector<std::thread> joins;
    {
        std::unique_lock g(mu_);
        stopping_ = true;
        for (auto &[id, r] : regs_) {
            r->armed = false;
            r->spec.word->waiters.fetch_sub(1, std::memory_order_relaxed);
            if (mode_ == ReactorMode::Threads)
                futex_wake(r->spec.word->seq, INT_MAX);
            later.push_back(std::move(r->spec.keep));
        }
        regs_.clear();
        for (auto &sh : shards_) {
            sh->regs.clear();
            sh->stop = true;
            sh->ctl.fetch_add(1, std::memory_order_seq_cst);
            futex_wake(sh->ctl, 1);
        }
        threads_done_.wait(g, [&] { return single_threads_ == 0; });
        for (auto &sh : shards_)
            joins.push_back(std::move(sh->thread));
    }
    for (auto &t : joins)
        if (t.joinable())
            t.join();
}

void Reactor::set_check_interval(std::chrono::nanoseconds d) noexcept {
    std::lock_guard g(mu_);
    check_interval_ = d;
}

std::size_t Reactor::armed() const {
    std::lock_guard g(mu_);
    return regs_.size();
}

std::size_t Reactor::arm_wakeups() const {
    std::lock_guard g(mu_);
    return arm_wakeups_;
}

std::size_t Reactor::threads() const {
    std::lock_guard g(mu_);
    return shards_.size() + single_threads_;
}

bool Reactor::changed_locked(const Reg &r) const noexcept {
    return r.spec.word->seq.load(std::memory_order_acquire) != r.seen;
}

void Reactor::unlink_locked(Reg &r) noexcept {
    r.armed = false;
    r.spec.word->waiters.fetch_sub(1, std::memory_order_relaxed);
    if (Shard *sh = r.shard) {
        Reg *last = sh->regs.back();
        sh->regs[r.index] = last;
        last->index = r.index;
        sh->regs.pop_back();
        r.shard = nullptr;
    }
}

void Reactor::fire_locked(Reg &r, std::vector<std::shared_ptr<void>> &later) noexcept {
    unlink_locked(r);
    r.signal->fire(r.token);
    try {
        later.push_back(std::move(r.spec.keep));
    } catch (...) {
        r.spec.keep.reset(); // under the lock, but released
    }
    later.push_back(nullptr);
    // regs_ owns r: erase last (r may be destroyed here unless a thread still holds it).
    auto keep_reg = regs_.find(r.id);
    if (keep_reg != regs_.end()) {
        std::shared_ptr<void> hold = keep_reg->second; // destroyed outside the lock
        regs_.erase(keep_reg);
        later.back() = std::move(hold);
    }
}

std::uint64_t Reactor::arm(WatchSpec spec, std::shared_ptr<ReadySignal> signal,
                           std::uint64_t token) {
    if (!spec.word || !signal)
        throw InvalidArgument("reactor: a registration needs a word and a signal");
    auto reg = std::make_shared<Reg>();
    reg->spec = std::move(spec);
    reg->signal = std::move(signal);
    reg->token = token;
    Shard *wake = nullptr;
    {
        std::lock_guard g(mu_);
        if (stopping_)
            throw UsageError("reactor: stopping");
        reg->id = next_id_++;
        reg->next_check = Clock::now() + check_interval_;
        // SYNC POINT: the announcement pairs with the notifier's fence + waiters load
        // (wake_if_waiting); seq is read after it, and the caller re-checks its condition.
        reg->spec.word->waiters.fetch_add(1, std::memory_order_seq_cst);
        reg->seen = reg->spec.word->seq.load(std::memory_order_seq_cst);
        try {
            if (mode_ == ReactorMode::Waitv) {
                Shard *sh = nullptr;
                bool sleeping_on_it = false;
                // The shard already sleeping on this word with this value needs no wake-up.
                for (auto &s : shards_) {
                    if (s->regs.size() >= kWordsPerThread)
                        continue;
                    auto it = s->current.find(reg->spec.word);
                    if (it != s->current.end()) {
                        sh = s.get();
                        sleeping_on_it = s->in_wait && it->second == reg->seen;
                        break;
                    }
                }
                if (!sh)
                    for (auto &s : shards_)
                        if (s->regs.size() < kWordsPerThread) {
                            sh = s.get();
                            break;
                        }
                if (!sh) {
                    shards_.reserve(shards_.size() + 1);
                    auto fresh = std::make_unique<Shard>();
                    sh = fresh.get();
                    sh->regs.reserve(kWordsPerThread);
                    sh->thread = std::thread([this, sh] { run_shard(sh); });
                    shards_.push_back(std::move(fresh));
                }
                regs_.emplace(reg->id, reg);
                reg->shard = sh;
                reg->index = sh->regs.size();
                sh->regs.push_back(reg.get());
                // A thread that is not in its wait rebuilds its list before the next one.
                if (sh->in_wait && !sleeping_on_it) {
                    sh->ctl.fetch_add(1, std::memory_order_seq_cst);
                    wake = sh;
                    ++arm_wakeups_;
                }
            } else {
                regs_.emplace(reg->id, reg);
                try {
                    std::thread([this, r = reg]() mutable { run_single(std::move(r)); }).detach();
                } catch (...) {
                    regs_.erase(reg->id);
                    throw;
                }
                ++single_threads_;
            }
        } catch (const std::system_error &e) {
            reg->spec.word->waiters.fetch_sub(1, std::memory_order_relaxed);
            throw OsError(e.code().value() ? e.code().value() : EAGAIN,
                          "reactor: cannot start a thread");
        } catch (...) {
            reg->spec.word->waiters.fetch_sub(1, std::memory_order_relaxed);
            throw;
        }
    }
    if (wake)
        futex_wake(wake->ctl, 1);
    return reg->id;
}

bool Reactor::disarm(std::uint64_t id) noexcept {
    std::shared_ptr<Reg> r;
    std::shared_ptr<void> keep;
    {
        std::lock_guard g(mu_);
        auto it = regs_.find(id);
        if (it == regs_.end())
            return false;
        r = std::move(it->second);
        regs_.erase(it);
        if (r->shard)
            r->shard->add_sticky(r->spec, r->seen);
        unlink_locked(*r);
        // Its thread sleeps on the word itself: wake it so it leaves now (any other sleeper
        // of the word wakes too and re-checks its condition: harmless).
        if (mode_ == ReactorMode::Threads)
            futex_wake(r->spec.word->seq, INT_MAX);
        keep = std::move(r->spec.keep);
    }
    return true;
}

std::size_t Reactor::disarm_owner(const void *owner) noexcept {
    std::vector<std::shared_ptr<Reg>> gone;
    std::vector<std::shared_ptr<void>> keeps; // released here, not by a lingering thread
    {
        std::lock_guard g(mu_);
        for (auto it = regs_.begin(); it != regs_.end();) {
            if (it->second->spec.owner == owner) {
                Reg &r = *it->second;
                unlink_locked(r);
                if (mode_ == ReactorMode::Threads)
                    futex_wake(r.spec.word->seq, INT_MAX);
                r.signal->fire(r.token);
                try {
                    keeps.push_back(std::move(r.spec.keep));
                    gone.push_back(std::move(it->second));
                } catch (...) {
                }
                it = regs_.erase(it);
            } else {
                ++it;
            }
        }
        for (auto &sh : shards_) {
            const auto n =
                std::erase_if(sh->sticky, [&](const StickyWord &s) { return s.owner == owner; });
            if (n && sh->in_wait) { // it may sleep on that word: make it rebuild its list
                sh->ctl.fetch_add(1, std::memory_order_seq_cst);
                futex_wake(sh->ctl, 1);
            }
        }
    }
    return gone.size();
}

void Reactor::run_shard(Shard *sh) {
    std::vector<futex_waitv> waits;
    std::vector<std::shared_ptr<void>> later;
    std::unique_lock g(mu_);
    for (;;) {
        sh->in_wait = false;
        if (sh->stop)
            return;
        const auto now = Clock::now();
        Clock::time_point wake_at = now + kIdleSleep;
        for (std::size_t i = 0; i < sh->regs.size();) {
            Reg &r = *sh->regs[i];
            const std::uint32_t seq = r.spec.word->seq.load(std::memory_order_acquire);
            bool fire = seq != r.seen;
            if (!fire && r.spec.check) {
                if (now >= r.next_check) {
                    r.next_check = now + check_interval_;
                    try {
                        fire = r.spec.check();
                    } catch (...) {
                        fire = true; // the woken caller's retry reports the failure
                    }
                }
                wake_at = std::min(wake_at, r.next_check);
            }
            if (fire) {
                sh->add_sticky(r.spec, seq);
                fire_locked(r, later); // swaps the last registration into slot i
                continue;
            }
            ++i;
        }
        // The list: armed words (announced), then sticky ones (not armed here, still fresh).
        waits.clear();
        sh->current.clear();
        for (Reg *r : sh->regs) {
            if (!sh->current.emplace(r->spec.word, r->seen).second)
                continue; // the same word armed twice here: one entry (same value, or stale)
            futex_waitv v{};
            v.val = r->seen;
            v.uaddr = reinterpret_cast<std::uintptr_t>(&r->spec.word->seq);
            v.flags = FUTEX_32; // shared: the words live in memory shared between processes
            waits.push_back(v);
        }
        const std::size_t n_armed = waits.size();
        std::erase_if(sh->sticky, [&](const StickyWord &s) {
            return now - s.since > kStickyFor || sh->current.count(s.word) != 0;
        });
        for (const StickyWord &s : sh->sticky) {
            if (waits.size() >= kWordsPerThread)
                break;
            sh->current.emplace(s.word, s.val);
            futex_waitv v{};
            v.val = s.val;
            v.uaddr = reinterpret_cast<std::uintptr_t>(&s.word->seq); // address only
            v.flags = FUTEX_32;
            waits.push_back(v);
        }
        const std::size_t n_words = waits.size();
        futex_waitv c{};
        c.val = sh->ctl.load(std::memory_order_seq_cst);
        c.uaddr = reinterpret_cast<std::uintptr_t>(&sh->ctl);
        c.flags = FUTEX_32;
        waits.push_back(c);
        sh->in_wait = true;
        g.unlock();
        later.clear(); // keeps and registrations released outside the lock
        const timespec ts = abs_timespec(wake_at);
        const long rc = ::syscall(SYS_futex_waitv, waits.data(),
                                  static_cast<unsigned>(waits.size()), 0, &ts, CLOCK_MONOTONIC);
        const int err = rc < 0 ? errno : 0;
        g.lock();
        if (rc >= static_cast<long>(n_armed) && rc < static_cast<long>(n_words)) {
            // A sticky word moved (someone else's waiter was woken): forget it.
            const auto *w = reinterpret_cast<const FutexWord *>(
                static_cast<std::uintptr_t>(waits[static_cast<std::size_t>(rc)].uaddr) -
                offsetof(FutexWord, seq));
            std::erase_if(sh->sticky, [&](const StickyWord &s) { return s.word == w; });
        } else if (err == EAGAIN || err == EFAULT) {
            // A value differed at the start (maybe a sticky one's) or a sticky word is unmapped:
            // drop them all rather than spin on a stale one.
            sh->sticky.clear();
            if (err == EFAULT) {
                g.unlock();
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                g.lock();
            }
        }
    }
}

void Reactor::run_single(std::shared_ptr<Reg> reg) {
    std::vector<std::shared_ptr<void>> later;
    std::unique_lock g(mu_);
    while (reg->armed && !stopping_) {
        const auto now = Clock::now();
        bool fire = changed_locked(*reg);
        if (!fire && reg->spec.check && now >= reg->next_check) {
            reg->next_check = now + check_interval_;
            try {
                fire = reg->spec.check();
            } catch (...) {
                fire = true;
            }
        }
        if (fire) {
            fire_locked(*reg, later);
            break;
        }
        const auto until = reg->spec.check ? reg->next_check : now + kIdleSleep;
        auto &word = reg->spec.word->seq;
        const std::uint32_t seen = reg->seen;
        g.unlock();
        later.clear();
        // The word may be unmapped once we dropped the lock (disarm then wakes us first): the
        // kernel reports EFAULT or compares another value, we never touch it ourselves.
        futex_wait(word, seen, std::max<std::chrono::nanoseconds>(until - now, {}));
        g.lock();
    }
    // Everything this thread holds (the registration, its signal's eventfd, a keep-alive) is
    // released before it reports itself gone: a Reactor being destroyed, or a caller counting
    // its fds, never sees it released later by a thread that is still running.
    std::shared_ptr<Reg> mine = std::move(reg);
    g.unlock();
    later.clear();
    mine.reset();
    g.lock();
    --single_threads_;
    threads_done_.notify_all();
}

} // namespace shmipc
