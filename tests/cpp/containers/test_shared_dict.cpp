// SharedDict: semantics, visibility across processes mapped at different addresses, and crash
// consistency (a child SIGKILLs itself at every interesting step of an update).
#include "ipc_core/base/errors.hpp"
#include "ipc_core/containers/shared_dict.hpp"
#include "ipc_core/containers/shared_dict_table.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/testing/crash_point.hpp"
#include "testutil.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <signal.h>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace shmipc;

namespace {

std::string fresh(const char *tag) {
    static int n = 0;
    return "shmipc-test-cppdict-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}

HeapOptions opts(std::size_t size) {
    HeapOptions o;
    o.size = size;
    return o;
}

// Values say which key they belong to, so a torn or misplaced entry is visible:
// "<key>|<version>|" padded with '#' up to a length derived from the version.
std::string value_for(const std::string &key, int version) {
    std::string v = key + "|" + std::to_string(version) + "|";
    v.append(static_cast<std::size_t>(version % 300), '#');
    return v;
}

void set(SharedDict &d, const std::string &key, const std::string &value) {
    auto e = d.make_entry(key, 1, value.size());
    std::memcpy(e.value(), value.data(), value.size());
    auto g = d.lock(10.0);
    d.publish(g, std::move(e));
}

std::optional<std::string> get(SharedDict &d, const std::string &key) {
    std::string out;
    auto g = d.lock(10.0);
    bool found = d.get(
        g, key,
        [](void *ctx, std::uint8_t, const std::byte *p, std::size_t n) {
            static_cast<std::string *>(ctx)->assign(reinterpret_cast<const char *>(p), n);
        },
        &out);
    if (!found)
        return std::nullopt;
    return out;
}

std::map<std::string, std::string> snapshot(SharedDict &d) {
    std::map<std::string, std::string> m;
    auto g = d.lock(10.0);
    d.for_each(
        g,
        [](void *ctx, std::string_view k, std::uint8_t, const std::byte *p, std::size_t n) {
            (*static_cast<std::map<std::string, std::string> *>(ctx))[std::string(k)] =
                std::string(reinterpret_cast<const char *>(p), n);
        },
        &m);
    return m;
}

// Every entry is well formed: its value names its key and has the length its version implies.
void expect_untorn(SharedDict &d) {
    {
        auto g = d.lock(10.0);
        d.check_invariants(g);
    }
    for (auto &[k, v] : snapshot(d)) {
        ASSERT_EQ(v.rfind(k + "|", 0), 0u) << "value of " << k << " is " << v;
        int version = std::stoi(v.substr(k.size() + 1));
        ASSERT_EQ(v, value_for(k, version));
    }
}

} // namespace

TEST(SharedDict, set_get_erase_and_iterate_in_one_process) {
    auto h = Heap::anonymous(opts(8 << 20));
    SharedDict d(*h, "d");
    for (int i = 0; i < 2000; ++i)
        set(d, "k" + std::to_string(i), value_for("k" + std::to_string(i), i));
    for (int i = 0; i < 2000; i += 2)
        set(d, "k" + std::to_string(i), value_for("k" + std::to_string(i), i + 1));
    for (int i = 0; i < 2000; i += 3) {
        auto g = d.lock(1.0);
        EXPECT_TRUE(d.erase(g, "k" + std::to_string(i)));
        EXPECT_FALSE(d.erase(g, "k" + std::to_string(i)));
    }
    EXPECT_EQ(get(d, "k1"), value_for("k1", 1));
    EXPECT_EQ(get(d, "k2"), value_for("k2", 3));
    EXPECT_EQ(get(d, "k3"), std::nullopt);
    EXPECT_EQ(get(d, "nope"), std::nullopt);
    {
        auto g = d.lock(1.0);
        EXPECT_EQ(d.size(g), 2000u - 667u);
        EXPECT_TRUE(d.contains(g, "k4"));
        EXPECT_GE(d.capacity(g), 2 * d.size(g));
    }
    EXPECT_EQ(snapshot(d).size(), 1333u);
    expect_untorn(d);
    // The same name from a second handle is the same dict.
    SharedDict again(*h, "d");
    EXPECT_EQ(get(again, "k5"), value_for("k5", 5));
    {
        auto g = d.lock(1.0);
        d.clear(g);
        EXPECT_EQ(d.size(g), 0u);
    }
    h->flush_thread_caches();
    EXPECT_EQ(h->stats().allocations, 1u); // only the dict's control block
    h->check_invariants();
}

TEST(SharedDict, set_if_absent_keeps_the_first_value) {
    auto h = Heap::anonymous(opts(1 << 20));
    SharedDict d(*h, "d");
    set(d, "a", "first");
    auto e = d.make_entry("a", 1, 6);
    std::memcpy(e.value(), "second", 6);
    std::string seen;
    auto g = d.lock(1.0);
    EXPECT_FALSE(d.publish(
        g, std::move(e), true,
        [](void *ctx, std::uint8_t, const std::byte *p, std::size_t n) {
            static_cast<std::string *>(ctx)->assign(reinterpret_cast<const char *>(p), n);
        },
        &seen));
    EXPECT_EQ(seen, "first");
}

TEST(SharedDict, a_name_of_another_kind_is_refused) {
    auto h = Heap::anonymous(opts(1 << 20));
    (void)h->find_or_create_named("blk", 64, [](void *) {});
    EXPECT_THROW(SharedDict(*h, "blk"), InvalidArgument);
}

TEST(SharedDict, a_child_at_another_address_sees_and_changes_the_same_entries) {
    auto name = fresh("addr");
    auto h = Heap::create(name, opts(4 << 20));
    SharedDict d(*h, "cfg");
    for (int i = 0; i < 300; ++i)
        set(d, "p" + std::to_string(i), value_for("p" + std::to_string(i), i));
    pid_t pid = ::fork();
    if (pid == 0) {
        ::alarm(30);
        // Make the inherited mapping inaccessible, then map the heap again (elsewhere).
        ::mmap(h->base(), h->primary_size(), PROT_NONE,
               MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        auto mine = Heap::attach(name);
        if (mine->base() == h->base())
            ::_exit(2);
        SharedDict cd(*mine, "cfg");
        for (int i = 0; i < 300; ++i)
            if (get(cd, "p" + std::to_string(i)) != value_for("p" + std::to_string(i), i))
                ::_exit(3);
        for (int i = 0; i < 300; ++i)
            set(cd, "c" + std::to_string(i), value_for("c" + std::to_string(i), i));
        {
            auto g = cd.lock(1.0);
            cd.erase(g, "p0");
        }
        mine->flush_thread_caches();
        ::_exit(0);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 0);
    EXPECT_EQ(get(d, "c299"), value_for("c299", 299));
    EXPECT_EQ(get(d, "p0"), std::nullopt);
    EXPECT_EQ(snapshot(d).size(), 599u);
    h->reap_dead_clients();
    expect_untorn(d);
}

TEST(SharedDict, a_process_killed_holding_the_lock_does_not_wedge_the_others) {
    auto name = fresh("wedge");
    auto h = Heap::create(name, opts(1 << 20));
    SharedDict d(*h, "d");
    set(d, "a", value_for("a", 1));
    pid_t pid = ::fork();
    if (pid == 0) {
        auto mine = Heap::attach(name);
        SharedDict cd(*mine, "d");
        auto g = cd.lock(1.0);
        ::raise(SIGKILL);
        ::_exit(1);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(st));
    EXPECT_EQ(get(d, "a"), value_for("a", 1)); // lock() recovers (EOWNERDEAD) and goes on
    expect_untorn(d);
}

TEST(SharedDict, a_process_killed_at_any_step_of_an_update_leaves_no_torn_entry_and_no_leak) {
    const char *steps[] = {"entry_retired",  "entry_replaced", "entry_inserted", "erase_retired",
                           "erase_unlinked", "table_filled",   "table_retired",  "table_published",
                           "clear_unlinked", "clearing"};
    for (const char *step : steps) {
        for (int skip : {0, 3}) {
            if (skip && std::strcmp(step, "clear_unlinked") == 0)
                continue; // happens once
            SCOPED_TRACE(std::string(step) + " after " + std::to_string(skip));
            auto name = fresh("step");
            auto h = Heap::create(name, opts(4 << 20));
            SharedDict d(*h, "d");
            for (int i = 0; i < 20; ++i)
                set(d, "k" + std::to_string(i), value_for("k" + std::to_string(i), 0));
            pid_t pid = ::fork();
            if (pid == 0) {
                ::alarm(30);
                auto mine = Heap::attach(name);
                SharedDict cd(*mine, "d");
                arm_crash_point("dict." + std::string(step), skip + 1);
                // Replace, insert (growing the table), erase, then clear: every step occurs.
                for (int i = 0; i < 20; ++i)
                    set(cd, "k" + std::to_string(i), value_for("k" + std::to_string(i), 1));
                for (int i = 20; i < 200; ++i)
                    set(cd, "k" + std::to_string(i), value_for("k" + std::to_string(i), 1));
                for (int i = 0; i < 10; ++i) {
                    auto g = cd.lock(1.0);
                    cd.erase(g, "k" + std::to_string(i));
                }
                auto g = cd.lock(1.0);
                cd.clear(g);
                ::_exit(0); // the step was not reached: a test bug
            }
            int st = 0;
            ASSERT_EQ(::waitpid(pid, &st, 0), pid);
            ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << "step never reached";
            expect_untorn(d); // lock() repairs after the dead holder
            // Nothing leaked: after a clear only the control block is left.
            {
                auto g = d.lock(1.0);
                d.clear(g);
            }
            h->reap_dead_clients();
            h->flush_thread_caches();
            EXPECT_EQ(h->stats().allocations, 1u);
            h->check_invariants();
        }
    }
}

TEST(SharedDict, processes_killed_at_random_moments_never_tear_an_entry) {
    auto name = fresh("random");
    auto h = Heap::create(name, opts(16 << 20));
    SharedDict d(*h, "d");
    std::mt19937 rng(1234);
    for (int round = 0; round < 12; ++round) {
        std::vector<pid_t> kids;
        for (int k = 0; k < 3; ++k) {
            pid_t pid = ::fork();
            if (pid == 0) {
                ::alarm(30);
                auto mine = Heap::attach(name);
                SharedDict cd(*mine, "d");
                std::mt19937 r(round * 10 + k);
                for (int v = 0;; ++v) {
                    std::string key = "k" + std::to_string(r() % 64);
                    switch (r() % 8) {
                    case 0: {
                        auto g = cd.lock(10.0);
                        cd.erase(g, key);
                        break;
                    }
                    case 1:
                        if (r() % 50 == 0) {
                            auto g = cd.lock(10.0);
                            cd.clear(g);
                        }
                        break;
                    default:
                        set(cd, key, value_for(key, v));
                    }
                }
            }
            kids.push_back(pid);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 60));
        for (pid_t pid : kids)
            ::kill(pid, SIGKILL);
        for (pid_t pid : kids)
            ::waitpid(pid, nullptr, 0);
        expect_untorn(d);
        if (HasFatalFailure())
            return;
        h->reap_dead_clients();
        h->check_invariants();
    }
}

TEST(SharedDict, lock_times_out_while_another_thread_holds_it) {
    auto h = Heap::anonymous(opts(1 << 20));
    SharedDict d(*h, "d");
    auto g = d.lock(1.0);
    std::thread t([&] {
        SharedDict other(*h, "d");
        EXPECT_FALSE(other.try_lock());
        EXPECT_THROW((void)other.lock(0.1), Timeout);
    });
    t.join();
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A forked child that attaches, takes the dict's lock and then `how`: "stop" (SIGSTOPs itself),
// "sleep" (never releases it) or "kill" (SIGKILLs itself). Returns once the lock is held.
pid_t child_holding_the_lock(const std::string &heap_name, const char *how) {
    int fds[2];
    if (::pipe(fds) != 0)
        std::abort();
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(fds[0]);
        ::alarm(60);
        auto mine = Heap::attach(heap_name);
        SharedDict cd(*mine, "d");
        auto g = cd.lock(1.0);
        char c = 1;
        (void)!::write(fds[1], &c, 1);
        if (std::strcmp(how, "stop") == 0)
            ::raise(SIGSTOP);
        else if (std::strcmp(how, "kill") == 0)
            ::raise(SIGKILL);
        for (;;)
            ::pause();
    }
    ::close(fds[1]);
    char c = 0;
    bool ok = ::read(fds[0], &c, 1) == 1;
    ::close(fds[0]);
    EXPECT_TRUE(ok) << "the child never took the lock";
    return pid;
}

} // namespace

class SharedDictLiveHolder : public ::testing::TestWithParam<const char *> {};

TEST_P(SharedDictLiveHolder, makes_every_timed_operation_time_out_promptly_not_hang) {
    auto name = fresh("live");
    auto h = Heap::create(name, opts(1 << 20));
    SharedDict d(*h, "d");
    set(d, "a", value_for("a", 1));
    pid_t pid = child_holding_the_lock(name, GetParam());
    if (std::strcmp(GetParam(), "stop") == 0) {
        // Wait until it is really stopped, so the waits below overlap the stop.
        int st = 0;
        ASSERT_EQ(::waitpid(pid, &st, WUNTRACED), pid);
        ASSERT_TRUE(WIFSTOPPED(st));
    }
    EXPECT_FALSE(d.try_lock()); // the holder is alive: not taken over
    for (double timeout : {0.0, 0.05, 0.3}) {
        SCOPED_TRACE(timeout);
        auto t0 = Clock::now();
        EXPECT_THROW((void)d.lock(timeout), Timeout);
        double took = seconds_since(t0);
        EXPECT_GE(took, timeout * 0.9);
        EXPECT_LT(took, timeout + 1.0) << "the timeout was not honoured promptly";
    }
    // A wait without a deadline is ended by the interrupt hook (Ctrl-C in Python) instead.
    static std::atomic<int> calls{0};
    calls = 0;
    set_interrupt_hook([] {
        if (++calls >= 3)
            throw std::runtime_error("interrupted");
    });
    auto t0 = Clock::now();
    EXPECT_THROW((void)d.lock(std::nullopt), std::runtime_error);
    set_interrupt_hook(nullptr);
    EXPECT_GE(calls.load(), 3);
    EXPECT_LT(seconds_since(t0), 5.0);
    // Once the holder is killed, the next locker takes the lock over and the dict is whole.
    ::kill(pid, SIGKILL);
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    EXPECT_EQ(get(d, "a"), value_for("a", 1));
    set(d, "b", value_for("b", 2));
    EXPECT_EQ(get(d, "b"), value_for("b", 2));
    expect_untorn(d);
}

INSTANTIATE_TEST_SUITE_P(SharedDict, SharedDictLiveHolder, ::testing::Values("stop", "sleep"),
                         [](const auto &p) { return std::string(p.param); });

TEST(SharedDict, a_waiter_takes_the_lock_over_when_the_holder_is_killed_during_its_wait) {
    auto name = fresh("killwait");
    auto h = Heap::create(name, opts(1 << 20));
    SharedDict d(*h, "d");
    set(d, "a", value_for("a", 1));
    pid_t pid = child_holding_the_lock(name, "sleep");
    std::thread killer([pid] {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        ::kill(pid, SIGKILL);
    });
    auto t0 = Clock::now();
    {
        auto g = d.lock(10.0); // sleeps on the word, then sees the holder dead between slices
        double took = seconds_since(t0);
        EXPECT_GE(took, 0.15);
        EXPECT_LT(took, 3.0) << "the dead holder was not noticed promptly";
        d.check_invariants(g);
    }
    killer.join();
    ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
    EXPECT_EQ(get(d, "a"), value_for("a", 1));
    expect_untorn(d);
}

TEST(SharedDict, a_killed_holder_is_recovered_by_try_lock_too) {
    auto name = fresh("killtry");
    auto h = Heap::create(name, opts(1 << 20));
    SharedDict d(*h, "d");
    set(d, "a", value_for("a", 1));
    pid_t pid = child_holding_the_lock(name, "kill");
    ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
    {
        auto g = d.try_lock();
        ASSERT_TRUE(g);
        d.check_invariants(g);
    }
    EXPECT_EQ(get(d, "a"), value_for("a", 1));
}

TEST(SharedDict, a_repair_that_fails_poisons_the_lock_for_everyone) {
    auto name = fresh("poison");
    auto h = Heap::create(name, opts(1 << 20));
    SharedDict d(*h, "d");
    set(d, "a", value_for("a", 1));
    auto *ctl = static_cast<DictControl *>(h->to_ptr(d.control_offset()));
    pid_t pid = child_holding_the_lock(name, "sleep");
    // While it holds the lock, its table word is scribbled; then it dies: the repair fails.
    std::uint64_t table = ctl->table.load();
    ctl->table.store(table + 8);
    ::kill(pid, SIGKILL);
    ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
    EXPECT_THROW((void)d.lock(1.0), CorruptSegment);
    EXPECT_THROW((void)d.lock(1.0), CorruptSegment); // never a half-repaired dict
    EXPECT_THROW((void)d.try_lock(), CorruptSegment);
    EXPECT_THROW(SharedDict(*h, "d"), CorruptSegment); // attach validates the lock word
}

TEST(SharedDict, a_scribbled_lock_word_is_a_corrupt_segment_not_a_hang) {
    auto h = Heap::anonymous(opts(1 << 20));
    SharedDict d(*h, "d");
    auto *ctl = static_cast<DictControl *>(h->to_ptr(d.control_offset()));
    ctl->lock.word.store(0x7654321); // a token the client table never issued
    auto t0 = Clock::now();
    EXPECT_THROW((void)d.lock(std::nullopt), CorruptSegment);
    EXPECT_THROW((void)d.try_lock(), CorruptSegment);
    EXPECT_LT(seconds_since(t0), 2.0);
    ctl->lock.word.store(0);
    set(d, "a", value_for("a", 1));
    EXPECT_EQ(get(d, "a"), value_for("a", 1));
}
