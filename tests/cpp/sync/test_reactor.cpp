#include "ipc_core/sync/reactor.hpp"
#include "ipc_core/sync/waiter.hpp"
#include "testutil.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <gtest/gtest.h>
#include <poll.h>
#include <thread>
#include <vector>

using namespace shmipc;
using namespace std::chrono_literals;
using shmipc::testing::fork_child;
using shmipc::testing::SharedMem;
using shmipc::testing::wait_child;

namespace {

// Waits until the signal's eventfd is readable (true) or `limit` passes (false).
bool readable(const ReadySignal &s, std::chrono::milliseconds limit) {
    pollfd p{s.fd(), POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(limit.count())) == 1 && (p.revents & POLLIN);
}

// Polls `cond` until true or `limit` passes.
template <class Cond> bool eventually(Cond &&cond, std::chrono::milliseconds limit = 10s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (cond())
            return true;
        std::this_thread::sleep_for(1ms);
    }
    return cond();
}

struct Shared {
    FutexWord w;
    std::atomic<std::uint32_t> flag;
};

class ReactorModes : public ::testing::TestWithParam<ReactorMode> {
  protected:
    void SetUp() override {
        if (GetParam() == ReactorMode::Waitv && !futex_waitv_available())
            GTEST_SKIP() << "futex_waitv is not available on this kernel (the Threads "
                            "instantiation covers the fallback)";
    }
};

} // namespace

TEST(Reactor, futex_waitv_is_probed_and_the_env_var_forces_threads) {
    ::setenv("SHMIPC_REACTOR", "threads", 1);
    EXPECT_EQ(default_reactor_mode(), ReactorMode::Threads);
    ::unsetenv("SHMIPC_REACTOR");
    EXPECT_EQ(default_reactor_mode(),
              futex_waitv_available() ? ReactorMode::Waitv : ReactorMode::Threads);
    EXPECT_STREQ(reactor_mode_name(ReactorMode::Waitv), "futex_waitv");
}

TEST(ReadySignal, take_drains_the_eventfd_and_returns_the_tokens) {
    ReadySignal s;
    EXPECT_FALSE(readable(s, 0ms));
    s.fire(7);
    s.fire(9);
    EXPECT_TRUE(readable(s, 0ms));
    EXPECT_EQ(s.take(), (std::vector<std::uint64_t>{7, 9}));
    EXPECT_FALSE(readable(s, 0ms));
    s.raise();
    EXPECT_TRUE(readable(s, 0ms));
    EXPECT_TRUE(s.take().empty());
}

TEST_P(ReactorModes, a_notify_from_another_process_fires_once_and_withdraws_the_announcement) {
    Reactor r(GetParam());
    SharedMem m(sizeof(Shared));
    auto *s = new (m.data) Shared{};
    auto sig = std::make_shared<ReadySignal>();
    const auto id = r.arm(WatchSpec{&s->w, nullptr, nullptr, {}}, sig, 42);
    EXPECT_NE(id, 0u);
    EXPECT_EQ(s->w.waiters.load(), 1u) << "the reactor announced itself on the word";
    EXPECT_EQ(r.armed(), 1u);
    pid_t child = fork_child([&] {
        std::this_thread::sleep_for(50ms); // let the reactor sleep
        s->flag.store(1, std::memory_order_release);
        wake_if_waiting(s->w); // issues the wake only because of the announcement
        return 0;
    });
    EXPECT_TRUE(readable(*sig, 10s));
    EXPECT_EQ(wait_child(child), 0);
    EXPECT_EQ(sig->take(), (std::vector<std::uint64_t>{42}));
    EXPECT_TRUE(eventually([&] { return s->w.waiters.load() == 0; }));
    EXPECT_EQ(r.armed(), 0u);
    EXPECT_FALSE(r.disarm(id)) << "it fired already";
    notify_all(s->w);
    EXPECT_FALSE(readable(*sig, 100ms)) << "one-shot";
}

TEST_P(ReactorModes, a_change_between_reading_seq_and_sleeping_is_not_lost) {
    Reactor r(GetParam());
    FutexWord w;
    auto sig = std::make_shared<ReadySignal>();
    for (int i = 0; i < 200; ++i) {
        (void)r.arm(WatchSpec{&w, nullptr, nullptr, {}}, sig, static_cast<std::uint64_t>(i));
        wake_if_waiting(w); // at once: the reactor may not sleep yet
        ASSERT_TRUE(readable(*sig, 10s)) << "iteration " << i;
        ASSERT_EQ(sig->take(), (std::vector<std::uint64_t>{static_cast<std::uint64_t>(i)}));
    }
    EXPECT_TRUE(eventually([&] { return w.waiters.load() == 0; }));
}

TEST(Reactor, re_arming_the_word_it_sleeps_on_needs_no_wake_up_and_still_fires) {
    if (!futex_waitv_available())
        GTEST_SKIP() << "futex_waitv is not available on this kernel";
    Reactor r(ReactorMode::Waitv);
    SharedMem m(sizeof(Shared));
    auto *s = new (m.data) Shared{};
    auto sig = std::make_shared<ReadySignal>();
    (void)r.arm(WatchSpec{&s->w, nullptr, nullptr, {}}, sig, 1); // starts the thread
    notify_all(s->w);
    ASSERT_TRUE(readable(*sig, 10s));
    (void)sig->take();
    std::this_thread::sleep_for(20ms); // back in futex_waitv, the word kept (sticky)
    const auto before = r.arm_wakeups();
    for (std::uint64_t i = 2; i < 50; ++i) {
        const auto id = r.arm(WatchSpec{&s->w, nullptr, nullptr, {}}, sig, i);
        if (i % 3 == 0) { // disarmed before anything happened: the word stays sticky
            EXPECT_TRUE(r.disarm(id));
            continue;
        }
        pid_t child = fork_child([&] {
            wake_if_waiting(s->w);
            return 0;
        });
        ASSERT_TRUE(readable(*sig, 10s)) << "iteration " << i;
        EXPECT_EQ(sig->take(), (std::vector<std::uint64_t>{i}));
        EXPECT_EQ(wait_child(child), 0);
        std::this_thread::sleep_for(2ms);
    }
    EXPECT_LT(r.arm_wakeups() - before, 10u) << "re-arms found the thread sleeping on the word";
    // A different word still gets a wake-up (and fires).
    FutexWord other;
    (void)r.arm(WatchSpec{&other, nullptr, nullptr, {}}, sig, 99);
    notify_all(other);
    EXPECT_TRUE(readable(*sig, 10s));
}

TEST(Reactor, a_closing_owner_takes_its_sticky_words_with_it) {
    if (!futex_waitv_available())
        GTEST_SKIP() << "futex_waitv is not available on this kernel";
    Reactor r(ReactorMode::Waitv);
    FutexWord w;
    int owner = 0;
    auto sig = std::make_shared<ReadySignal>();
    (void)r.arm(WatchSpec{&w, &owner, nullptr, {}}, sig, 1);
    notify_all(w);
    ASSERT_TRUE(readable(*sig, 10s));
    (void)sig->take();
    std::this_thread::sleep_for(20ms); // asleep, the word sticky
    auto before = r.arm_wakeups();
    EXPECT_TRUE(r.disarm(r.arm(WatchSpec{&w, &owner, nullptr, {}}, sig, 2)));
    EXPECT_EQ(r.arm_wakeups(), before) << "sticky: no wake-up";
    EXPECT_EQ(r.disarm_owner(&owner), 0u); // nothing armed, but its sticky word goes
    std::this_thread::sleep_for(20ms);
    before = r.arm_wakeups();
    (void)r.arm(WatchSpec{&w, &owner, nullptr, {}}, sig, 3);
    EXPECT_EQ(r.arm_wakeups(), before + 1) << "the word is no longer in the thread's list";
    notify_all(w);
    EXPECT_TRUE(readable(*sig, 10s));
}

TEST_P(ReactorModes, a_disarmed_registration_never_fires) {
    Reactor r(GetParam());
    FutexWord w;
    auto sig = std::make_shared<ReadySignal>();
    const auto id = r.arm(WatchSpec{&w, nullptr, nullptr, {}}, sig, 1);
    EXPECT_TRUE(r.disarm(id));
    EXPECT_FALSE(r.disarm(id));
    EXPECT_EQ(w.waiters.load(), 0u);
    notify_all(w);
    EXPECT_FALSE(readable(*sig, 100ms));
    EXPECT_EQ(r.armed(), 0u);
}

TEST_P(ReactorModes, disarm_owner_fires_and_forgets_every_registration_of_an_owner) {
    Reactor r(GetParam());
    FutexWord a, b;
    int owner1 = 0, owner2 = 0;
    auto sig = std::make_shared<ReadySignal>();
    (void)r.arm(WatchSpec{&a, &owner1, nullptr, {}}, sig, 1);
    (void)r.arm(WatchSpec{&a, &owner1, nullptr, {}}, sig, 2);
    (void)r.arm(WatchSpec{&b, &owner2, nullptr, {}}, sig, 3);
    EXPECT_EQ(r.disarm_owner(&owner1), 2u);
    EXPECT_EQ(a.waiters.load(), 0u);
    auto first = sig->take();
    std::sort(first.begin(), first.end());
    EXPECT_EQ(first, (std::vector<std::uint64_t>{1, 2}))
        << "their waiters retry (and find it closed)";
    notify_all(a);
    EXPECT_FALSE(readable(*sig, 50ms)) << "forgotten";
    notify_all(b);
    EXPECT_TRUE(readable(*sig, 10s));
    EXPECT_EQ(sig->take(), (std::vector<std::uint64_t>{3}));
}

TEST_P(ReactorModes, a_check_on_slices_fires_without_a_notify) {
    Reactor r(GetParam());
    r.set_check_interval(5ms);
    FutexWord w;
    std::atomic<bool> dead{false};
    std::atomic<int> checks{0};
    auto sig = std::make_shared<ReadySignal>();
    (void)r.arm(WatchSpec{&w, nullptr, nullptr,
                          [&] {
                              checks.fetch_add(1);
                              return dead.load();
                          }},
                sig, 5);
    EXPECT_FALSE(readable(*sig, 50ms));
    EXPECT_GE(checks.load(), 1) << "checked on slices while nothing happens";
    dead = true;
    EXPECT_TRUE(readable(*sig, 10s));
    EXPECT_EQ(sig->take(), (std::vector<std::uint64_t>{5}));
    EXPECT_EQ(w.waiters.load(), 0u);
}

TEST_P(ReactorModes, a_throwing_check_fires_so_the_caller_retries) {
    Reactor r(GetParam());
    r.set_check_interval(1ms);
    FutexWord w;
    auto sig = std::make_shared<ReadySignal>();
    (void)r.arm(WatchSpec{&w, nullptr, nullptr, []() -> bool { throw std::runtime_error("x"); }},
                sig, 6);
    EXPECT_TRUE(readable(*sig, 10s));
}

TEST_P(ReactorModes, the_keep_alive_is_released_once_fired) {
    Reactor r(GetParam());
    auto mem = std::make_shared<FutexWord>();
    std::weak_ptr<FutexWord> weak = mem;
    auto sig = std::make_shared<ReadySignal>();
    (void)r.arm(WatchSpec{mem.get(), nullptr, mem, {}}, sig, 1);
    FutexWord *w = mem.get();
    mem.reset();
    EXPECT_FALSE(weak.expired()) << "the registration keeps the word's memory";
    notify_all(*w);
    EXPECT_TRUE(readable(*sig, 10s));
    EXPECT_TRUE(eventually([&] { return weak.expired(); }));

    // disarm and disarm_owner release it before they return (an owner closing its object
    // relies on that: the mapping and the name go with the last reference).
    int owner = 0;
    for (int how = 0; how < 2; ++how) {
        auto mem2 = std::make_shared<FutexWord>();
        std::weak_ptr<FutexWord> weak2 = mem2;
        const auto id = r.arm(WatchSpec{mem2.get(), &owner, mem2, {}}, sig, 2);
        mem2.reset();
        if (how == 0)
            EXPECT_TRUE(r.disarm(id));
        else
            EXPECT_EQ(r.disarm_owner(&owner), 1u);
        EXPECT_TRUE(weak2.expired()) << (how == 0 ? "disarm" : "disarm_owner");
    }
}

TEST_P(ReactorModes, a_thousand_words_all_fire) {
    Reactor r(GetParam());
    constexpr std::size_t n = 1000;
    SharedMem m(sizeof(FutexWord) * n);
    auto *words = new (m.data) FutexWord[n];
    auto sig = std::make_shared<ReadySignal>();
    for (std::size_t i = 0; i < n; ++i)
        (void)r.arm(WatchSpec{&words[i], nullptr, nullptr, {}}, sig, i);
    if (GetParam() == ReactorMode::Waitv) {
        EXPECT_EQ(r.threads(), (n + Reactor::kWordsPerThread - 1) / Reactor::kWordsPerThread);
    }
    pid_t child = fork_child([&] {
        for (std::size_t i = n; i-- > 0;)
            wake_if_waiting(words[i]);
        return 0;
    });
    EXPECT_EQ(wait_child(child), 0);
    std::vector<bool> seen(n, false);
    std::size_t got = 0;
    EXPECT_TRUE(eventually([&] {
        for (auto t : sig->take()) {
            EXPECT_FALSE(seen[t]) << "token " << t << " fired twice";
            seen[t] = true;
            ++got;
        }
        return got == n;
    }));
    EXPECT_EQ(got, n);
    EXPECT_EQ(r.armed(), 0u);
}

TEST_P(ReactorModes, concurrent_arm_disarm_and_notify_fire_each_registration_at_most_once) {
    Reactor r(GetParam());
    FutexWord w;
    std::atomic<bool> stop{false};
    std::thread notifier([&] {
        while (!stop.load())
            wake_if_waiting(w);
    });
    auto sig = std::make_shared<ReadySignal>();
    std::atomic<std::uint64_t> next{1};
    std::atomic<int> disarmed{0};
    std::vector<std::thread> armers;
    for (int t = 0; t < 3; ++t)
        armers.emplace_back([&] {
            for (int i = 0; i < 150; ++i) {
                const auto id = r.arm(WatchSpec{&w, nullptr, nullptr, {}}, sig, next.fetch_add(1));
                if (i % 2 && r.disarm(id))
                    disarmed.fetch_add(1);
            }
        });
    for (auto &t : armers)
        t.join();
    std::size_t fired = 0;
    std::vector<bool> seen(next.load(), false);
    EXPECT_TRUE(eventually([&] {
        for (auto t : sig->take()) {
            EXPECT_FALSE(seen[t]) << "token " << t << " fired twice";
            seen[t] = true;
            ++fired;
        }
        return fired + static_cast<std::size_t>(disarmed.load()) == 450;
    }));
    stop = true;
    notifier.join();
    EXPECT_EQ(fired + static_cast<std::size_t>(disarmed.load()), 450u);
    EXPECT_TRUE(eventually([&] { return w.waiters.load() == 0; }));
}

TEST(Reactor, the_process_reactor_of_a_forked_child_is_its_own) {
    Reactor &parent = Reactor::instance();
    (void)parent.mode();
    SharedMem m(sizeof(Shared));
    auto *s = new (m.data) Shared{};
    pid_t child = fork_child([&] {
        Reactor &mine = Reactor::instance();
        if (&mine == &parent)
            return 2;
        auto sig = std::make_shared<ReadySignal>();
        (void)mine.arm(WatchSpec{&s->w, nullptr, nullptr, {}}, sig, 1);
        s->flag.store(1);
        return readable(*sig, 10s) ? 0 : 1;
    });
    ASSERT_TRUE(eventually([&] { return s->flag.load() == 1; }));
    std::this_thread::sleep_for(20ms);
    notify_all(s->w);
    EXPECT_EQ(wait_child(child), 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, ReactorModes,
                         ::testing::Values(ReactorMode::Waitv, ReactorMode::Threads),
                         [](const ::testing::TestParamInfo<ReactorMode> &p) {
                             return std::string(p.param == ReactorMode::Waitv ? "Waitv"
                                                                              : "Threads");
                         });
