#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/liveness.hpp"
#include "testutil.hpp"

#include <atomic>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <string>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace shmipc;
using shmipc::testing::fork_child;
using shmipc::testing::wait_child;

TEST(Liveness, an_ofd_lock_tells_a_live_holder_from_a_dead_one) {
    auto s = MemorySegment::anonymous(4096);
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    pid_t pid = ::fork();
    if (pid == 0) {
        UniqueFd own =
            UniqueFd(::open(("/proc/self/fd/" + std::to_string(s.fd())).c_str(), O_RDWR));
        bool ok = try_lock_byte(own.get(), kClientLockBase, true);
        char c = ok ? '1' : '0';
        (void)::write(pipefd[1], &c, 1);
        ::pause();
        ::_exit(0);
    }
    char c = 0;
    ASSERT_EQ(::read(pipefd[0], &c, 1), 1);
    EXPECT_EQ(c, '1');
    EXPECT_TRUE(byte_is_locked(s.fd(), kClientLockBase));
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    EXPECT_FALSE(byte_is_locked(s.fd(), kClientLockBase));
    ::close(pipefd[0]);
    ::close(pipefd[1]);
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
