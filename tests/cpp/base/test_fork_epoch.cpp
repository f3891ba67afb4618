#include "ipc_core/base/fork_epoch.hpp"
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
