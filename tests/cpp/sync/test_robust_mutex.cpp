#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/client_table.hpp"
#include "ipc_core/sync/liveness.hpp"
#include "ipc_core/sync/robust_mutex.hpp"
#include "testutil.hpp"

#include <atomic>
#include <gtest/gtest.h>
#include <stdexcept>
#include <sys/mman.h>
#include <thread>
#include <vector>

using namespace shmipc;
using namespace std::chrono_literals;
using shmipc::testing::fork_child;
using shmipc::testing::wait_child;

namespace {

// A mutex word, a client table and a counter in one memfd mapping (liveness locks need a file).
struct Shared {
    RobustMutexWord mutex;
    std::uint64_t counter;
    std::uint64_t recoveries;
    std::atomic<std::uint32_t> ready;
    alignas(64) std::byte table[1];
};

struct Fixture {
    static constexpr std::uint32_t kCap = 16;
    Fixture() {
        fd = ::memfd_create("robust-mutex-test", MFD_CLOEXEC);
        bytes = offsetof(Shared, table) + ClientTable::bytes(kCap);
        if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0)
            std::abort();
        mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ClientTable::init(sh()->table, kCap);
    }
    ~Fixture() {
        ::munmap(mem, bytes);
        ::close(fd);
    }
    Shared *sh() const { return static_cast<Shared *>(mem); }
    int fd = -1;
    std::size_t bytes = 0;
    void *mem = nullptr;
};

// One party: its own description, its own client slot, its view of the mutex.
struct Party {
    explicit Party(const Fixture &f)
        : own(reopen_description(f.fd)),
          table(f.sh()->table, f.bytes - offsetof(Shared, table), Fixture::kCap, own, "t"),
          m(f.sh()->mutex, table, "test mutex") {
        (void)table.register_client();
    }
    ~Party() { ::close(own); }
    template <class R = void (*)()>
    void lock(
        const Deadline &d, R r = [] {}) {
        m.lock(table.token(), d, r);
    }
    int own;
    ClientTable table;
    RobustMutex m;
};

} // namespace

TEST(RobustMutex, excludes_threads_and_processes) {
    Fixture f;
    constexpr int kIters = 20000;
    auto work = [&] {
        Party p(f);
        for (int i = 0; i < kIters; ++i) {
            p.lock(Deadline::never());
            std::uint64_t c = f.sh()->counter; // a plain read-modify-write: only safe if excluded
            f.sh()->counter = c + 1;
            p.m.unlock();
        }
        return 0;
    };
    pid_t child = fork_child(work);
    std::thread t([&] { work(); });
    work();
    t.join();
    EXPECT_EQ(wait_child(child), 0);
    EXPECT_EQ(f.sh()->counter, 3u * kIters);
}

TEST(RobustMutex, a_holder_killed_inside_is_recovered_by_the_next_locker) {
    Fixture f;
    pid_t child = fork_child([&] {
        Party p(f);
        p.lock(Deadline::never());
        f.sh()->ready.store(1);
        ::pause(); // SIGKILLed holding the lock
        return 0;
    });
    while (f.sh()->ready.load() == 0)
        std::this_thread::sleep_for(1ms);
    Party me(f);
    EXPECT_THROW(me.lock(Deadline(0.0)), Timeout) << "the holder is alive: a zero wait times out";
    ::kill(child, SIGKILL);
    EXPECT_EQ(wait_child(child), 128 + SIGKILL);
    int recovered = 0;
    me.lock(Deadline(10.0), [&] { ++recovered; });
    EXPECT_EQ(recovered, 1) << "the new holder repairs what the dead one left";
    me.m.unlock();
    me.lock(Deadline(1.0), [&] { ++recovered; });
    EXPECT_EQ(recovered, 1) << "no recovery after a clean unlock";
    me.m.unlock();
}

TEST(RobustMutex, a_sleeping_waiter_takes_over_when_the_holder_dies) {
    Fixture f;
    pid_t child = fork_child([&] {
        Party p(f);
        p.lock(Deadline::never());
        f.sh()->ready.store(1);
        ::usleep(200'000);
        ::raise(SIGKILL);
        return 0;
    });
    while (f.sh()->ready.load() == 0)
        std::this_thread::sleep_for(1ms);
    Party me(f);
    int recovered = 0;
    me.lock(Deadline(10.0), [&] { ++recovered; });
    EXPECT_EQ(recovered, 1);
    me.m.unlock();
    EXPECT_EQ(wait_child(child), 128 + SIGKILL);
}

TEST(RobustMutex, a_stopped_holder_makes_a_bounded_wait_time_out) {
    Fixture f;
    pid_t child = fork_child([&] {
        Party p(f);
        p.lock(Deadline::never());
        f.sh()->ready.store(1);
        ::raise(SIGSTOP);
        p.m.unlock();
        return 0;
    });
    while (f.sh()->ready.load() == 0)
        std::this_thread::sleep_for(1ms);
    Party me(f);
    EXPECT_THROW(me.lock(Deadline(0.3)), Timeout);
    ::kill(child, SIGCONT);
    me.lock(Deadline(10.0));
    me.m.unlock();
    EXPECT_EQ(wait_child(child), 0);
}

TEST(RobustMutex, the_interrupt_hook_ends_a_wait) {
    Fixture f;
    Party holder(f);
    holder.lock(Deadline::never());
    static std::atomic<int> calls{0};
    set_interrupt_hook([] {
        if (++calls >= 3)
            throw std::runtime_error("interrupted");
    });
    std::thread t([&] {
        Party me(f);
        EXPECT_THROW(me.lock(Deadline::never()), std::runtime_error);
    });
    t.join();
    set_interrupt_hook(nullptr);
    EXPECT_GE(calls.load(), 3);
    holder.m.unlock();
}

TEST(RobustMutex, a_scribbled_word_is_a_corrupt_segment_at_once) {
    Fixture f;
    Party me(f);
    f.sh()->mutex.word.store(0x1234567);
    EXPECT_THROW(me.m.validate(), CorruptSegment);
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_THROW(me.lock(Deadline::never()), CorruptSegment) << "no wait on a garbage holder";
    (void)t0;
    f.sh()->mutex.word.store(0);
    EXPECT_NO_THROW(me.m.validate());
}

TEST(RobustMutex, a_failed_recovery_poisons_the_lock) {
    Fixture f;
    pid_t child = fork_child([&] {
        Party p(f);
        p.lock(Deadline::never());
        ::raise(SIGKILL);
        return 0;
    });
    EXPECT_EQ(wait_child(child), 128 + SIGKILL);
    Party me(f);
    EXPECT_THROW(me.lock(Deadline(5.0), [] { throw CorruptSegment("cannot repair"); }),
                 CorruptSegment);
    EXPECT_THROW(me.lock(Deadline(5.0)), CorruptSegment) << "poisoned for everyone";
    EXPECT_THROW(me.m.validate(), CorruptSegment);
}
