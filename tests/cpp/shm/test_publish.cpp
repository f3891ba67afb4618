#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/shm/publish.hpp"
#include "ipc_core/sync/liveness.hpp"
#include "testutil.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

using namespace shmipc;
using shmipc::testing::fork_child;
using shmipc::testing::fresh_name;
using shmipc::testing::wait_child;

namespace {
std::string path_of(const std::string &name) {
    return "/dev/shm/" + name;
}
NamedSegment value_like(const std::string &name) {
    return std::move(NamedSegment(name).kind(SegmentKind::SharedValue, 77).size(4096));
}
int temporaries_of_this_process() {
    int n = 0;
    std::string mine = ".shmipc-tmp-" + std::to_string(::getpid()) + "-";
    if (DIR *d = ::opendir("/dev/shm")) {
        while (auto *e = ::readdir(d))
            n += std::string(e->d_name).rfind(mine, 0) == 0;
        ::closedir(d);
    }
    return n;
}
} // namespace

TEST(Publish, the_builder_creates_with_exact_mode_and_runs_the_initializer_before_publication) {
    auto name = fresh_name("pub");
    bool saw_name_during_init = true;
    {
        auto s = value_like(name)
                     .mode(0640)
                     .initializer([&](std::byte *p) {
                         saw_name_during_init = ::access(path_of(name).c_str(), F_OK) == 0;
                         p[100] = std::byte{42};
                     })
                     .create();
        EXPECT_FALSE(saw_name_during_init) << "nobody can open a half-built object";
        struct stat st {};
        ASSERT_EQ(::stat(path_of(name).c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 07777, 0640u);
        auto a = NamedSegment(name).kind(SegmentKind::SharedValue, 77).attach();
        EXPECT_EQ(a.data()[100], std::byte{42});
        EXPECT_TRUE(s.owner());
        EXPECT_FALSE(a.owner());
    }
    EXPECT_NE(::access(path_of(name).c_str(), F_OK), 0) << "the owner's close removes the name";
}

TEST(Publish, modes_beyond_permission_bits_are_refused) {
    auto name = fresh_name("pub");
    EXPECT_THROW((void)value_like(name).mode(04600).create(), InvalidArgument) << "setuid";
    EXPECT_THROW((void)value_like(name).mode(01777).create(), InvalidArgument) << "sticky";
    EXPECT_EQ(temporaries_of_this_process(), 0);
}

TEST(Publish, a_failed_initializer_leaves_no_temporary_and_no_name) {
    auto name = fresh_name("pub");
    EXPECT_THROW((void)value_like(name)
                     .initializer([](std::byte *) { throw InvalidArgument("init failed"); })
                     .create(),
                 InvalidArgument);
    EXPECT_EQ(temporaries_of_this_process(), 0);
    EXPECT_NE(::access(path_of(name).c_str(), F_OK), 0);
}

TEST(Publish, a_foreign_file_under_the_name_is_never_replaced) {
    auto name = fresh_name("pub");
    int fd = ::open(path_of(name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "not shmipc", 10), 10);
    ::close(fd);
    try {
        (void)value_like(name).create();
        FAIL() << "replaced a file that is not ours";
    } catch (const OsError &e) {
        EXPECT_EQ(e.err(), EEXIST);
    }
    ::unlink(path_of(name).c_str());
}

TEST(Publish, a_stale_object_of_a_dead_owner_is_replaced_and_a_live_one_is_not) {
    auto name = fresh_name("pub");
    pid_t child = fork_child([&] {
        auto s = value_like(name).create();
        ::raise(SIGKILL); // dies owning it
        return 0;
    });
    EXPECT_EQ(wait_child(child), 128 + SIGKILL);
    ASSERT_EQ(::access(path_of(name).c_str(), F_OK), 0) << "a SIGKILLed owner leaves the name";
    auto s = value_like(name).create(); // replaces the stale one
    EXPECT_TRUE(s.owner());
    EXPECT_THROW((void)value_like(name).create(), OsError) << "the live one stays";
}

TEST(OpenName, a_fifo_a_symlink_or_a_directory_at_the_name_fails_at_once) {
    auto fifo = fresh_name("fifo"), link = fresh_name("link"), dir = fresh_name("dir");
    ASSERT_EQ(::mkfifo(path_of(fifo).c_str(), 0600), 0);
    ASSERT_EQ(::symlink("/etc/passwd", path_of(link).c_str()), 0);
    ASSERT_EQ(::mkdir(path_of(dir).c_str(), 0700), 0);
    for (const auto &n : {fifo, link, dir}) {
        EXPECT_THROW((void)NamedSegment(n).kind(SegmentKind::SharedValue, 77).attach(),
                     CorruptSegment)
            << n;
        EXPECT_THROW((void)open_shm_name("/" + n, OpenAccess::ReadOnly, n), CorruptSegment) << n;
    }
    ::unlink(path_of(fifo).c_str());
    ::unlink(path_of(link).c_str());
    ::rmdir(path_of(dir).c_str());
}

TEST(OpenName, another_users_object_is_refused_unless_trusted) {
    struct stat st {};
    st.st_uid = ::geteuid() + 12345;
    EXPECT_THROW(check_owner(st, TrustPolicy::own_user(), "value 'x'"), OsError);
    try {
        check_owner(st, TrustPolicy::own_user(), "value 'x'");
    } catch (const OsError &e) {
        EXPECT_EQ(e.err(), EPERM);
        EXPECT_NE(std::string(e.what()).find("trust_owner"), std::string::npos) << e.what();
    }
    EXPECT_NO_THROW(check_owner(st, TrustPolicy{st.st_uid}, "value 'x'"));
    EXPECT_NO_THROW(check_owner(st, TrustPolicy{TrustPolicy::kAnyOwner}, "value 'x'"));
    st.st_uid = ::geteuid();
    EXPECT_NO_THROW(check_owner(st, TrustPolicy::own_user(), "value 'x'"));
}

TEST(Reserve, more_than_is_available_is_an_out_of_memory_error_naming_the_sizes) {
    int fd = ::memfd_create("reserve-test", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::uint64_t avail = memory_available_for(fd);
    ASSERT_GT(avail, 0u);
    const std::uint64_t too_much = std::uint64_t{1} << 50;
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(too_much)), 0);
    try {
        reserve_space(fd, too_much);
        FAIL() << "reserved a petabyte";
    } catch (const OutOfMemory &e) {
        EXPECT_NE(std::string(e.what()).find(std::to_string(too_much)), std::string::npos);
    }
    EXPECT_NO_THROW(reserve_space(fd, 1 << 20));
    ::close(fd);
}

TEST(Reserve, small_reservations_checked_on_a_cached_headroom_never_let_a_large_one_through) {
    // Small reservations are checked against the headroom as last read (reserve.hpp); anything
    // over the unchecked budget, or beyond what is available, is still read and refused.
    int small = ::memfd_create("reserve-small", MFD_CLOEXEC);
    int big = ::memfd_create("reserve-big", MFD_CLOEXEC);
    ASSERT_GE(small, 0);
    ASSERT_GE(big, 0);
    ASSERT_EQ(::ftruncate(small, 4096), 0);
    const std::uint64_t twice = 2 * memory_available_for(big);
    ASSERT_EQ(::ftruncate(big, static_cast<off_t>(twice)), 0);
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 1000; ++i)
            ASSERT_NO_THROW(reserve_space(small, 4096));
        EXPECT_THROW(reserve_space(big, twice), OutOfMemory) << "round " << round;
    }
    ::close(small);
    ::close(big);
}
