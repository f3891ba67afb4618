#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/sync/liveness.hpp"
#include "testutil.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>

using namespace shmipc;
using shmipc::testing::fork_child;
using shmipc::testing::wait_child;

namespace {
std::atomic<int> g_hook_runs{0};
void count_hook() {
    g_hook_runs.fetch_add(1);
}
} // namespace

TEST(ForkEpoch, a_forked_child_is_in_a_new_epoch_and_sees_inherited_stamps) {
    ForkStamp stamp;
    EXPECT_FALSE(stamp.inherited());
    std::uint64_t parent = fork_epoch();
    pid_t pid = fork_child([&] {
        if (fork_epoch() != parent + 1)
            return 1;
        if (!stamp.inherited())
            return 2;
        ForkStamp copy = stamp;
        copy.renew();
        return copy.inherited() ? 3 : 0;
    });
    EXPECT_EQ(wait_child(pid), 0);
    EXPECT_EQ(fork_epoch(), parent) << "the parent stays in its epoch";
}

TEST(ForkEpoch, child_hooks_run_in_the_child_only) {
    on_fork_child(&count_hook);
    int before = g_hook_runs.load();
    pid_t pid = fork_child([&] { return g_hook_runs.load() == before + 1 ? 0 : 1; });
    EXPECT_EQ(wait_child(pid), 0);
    EXPECT_EQ(g_hook_runs.load(), before);
}

TEST(Liveness, a_forked_child_does_not_keep_its_parents_locks) {
    int fd = ::memfd_create("liveness-fork", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    int mine = reopen_description(fd);
    ASSERT_TRUE(try_lock_byte(mine, kOwnerLockByte, true));
    renew_in_fork_children(mine);
    int other = reopen_description(fd);
    // The child sleeps while the parent checks: the lock must be seen as the parent's alone, so
    // it is free once the parent drops it although the child still has `mine` open.
    auto *flag = static_cast<std::atomic<int> *>(
        ::mmap(nullptr, 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    pid_t pid = fork_child([&] {
        flag->store(1);
        while (flag->load() != 2)
            ::usleep(1000);
        return try_lock_byte(mine, kOwnerLockByte, true) ? 0 : 1; // free: the parent let go
    });
    while (flag->load() != 1)
        ::usleep(1000);
    EXPECT_TRUE(byte_is_locked(other, kOwnerLockByte));
    forget_in_fork_children(mine);
    ::close(mine); // the parent's only copy: its lock goes, although the child lives
    EXPECT_FALSE(byte_is_locked(other, kOwnerLockByte));
    flag->store(2);
    EXPECT_EQ(wait_child(pid), 0);
    ::munmap(flag, 64);
    ::close(other);
    ::close(fd);
}
