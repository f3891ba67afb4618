#include "ipc_core/base/deadline.hpp"
#include "ipc_core/sync/waiter.hpp"
#include "testutil.hpp"

#include <atomic>
#include <gtest/gtest.h>
#include <thread>

using namespace shmipc;
using namespace std::chrono_literals;
using shmipc::testing::fork_child;
using shmipc::testing::SharedMem;
using shmipc::testing::wait_child;

namespace {
struct Shared {
    FutexWord w;
    std::atomic<std::uint32_t> flag;
};
} // namespace

TEST(Waiter, a_notifier_makes_no_syscall_when_nobody_waits) {
    FutexWord w;
    wake_if_waiting(w);
    EXPECT_EQ(w.seq.load(), 0u) << "no waiter: not even the shared line is written";
    notify_all(w);
    EXPECT_EQ(w.seq.load(), 1u);
}

TEST(Waiter, a_sleeper_in_another_process_is_woken) {
    SharedMem m(sizeof(Shared));
    auto *s = new (m.data) Shared{};
    pid_t child = fork_child([&] {
        Deadline d(30.0);
        bool ok = wait_until(
            s->w, [&] { return s->flag.load(std::memory_order_acquire) == 1; },
            [&] { return d.slice(); });
        return ok ? 0 : 1;
    });
    std::this_thread::sleep_for(50ms); // let it sleep
    s->flag.store(1, std::memory_order_release);
    wake_if_waiting(s->w);
    EXPECT_EQ(wait_child(child), 0);
}

TEST(Waiter, between_slices_gives_up_and_may_throw) {
    FutexWord w;
    Deadline d(0.05);
    EXPECT_FALSE(wait_until(
        w, [] { return false; }, [&] { return d.slice(); }));
    int slices = 0;
    EXPECT_THROW(wait_until(
                     w, [] { return false; },
                     [&]() -> std::chrono::nanoseconds {
                         if (++slices == 2)
                             throw std::runtime_error("Ctrl-C");
                         return 1ms;
                     }),
                 std::runtime_error);
    EXPECT_EQ(w.waiters.load(), 0u) << "a throwing wait leaves no announcement behind";
}

TEST(Waiter, spinning_finds_a_change_without_sleeping) {
    FutexWord w;
    std::atomic<bool> go{false};
    std::thread t([&] {
        std::this_thread::sleep_for(1ms);
        go.store(true);
    });
    int slices = 0;
    bool ok = spin_then_wait(
        w, [&] { return go.load(); },
        [&] {
            ++slices;
            return std::chrono::nanoseconds(10ms);
        },
        SpinPolicy{1us, 1s});
    t.join();
    EXPECT_TRUE(ok);
    EXPECT_EQ(slices, 0) << "a change within the spin needs no sleep";
}
