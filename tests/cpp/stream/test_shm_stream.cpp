#include "ipc_core/base/errors.hpp"
#include "ipc_core/stream/shm_stream.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <cerrno>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <system_error>
#include <unistd.h>

using namespace shmipc;

namespace {
std::string fresh(const char *tag) {
    static int n = 0;
    return "shmipc-gtest-stream-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}
bool exists(const std::string &name) {
    return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0;
}
int errno_of(auto &&f) {
    try {
        f();
    } catch (const OsError &e) {
        return e.code().value();
    }
    return 0;
}
} // namespace

TEST(ShmStream, create_publishes_an_empty_file_with_exact_mode_and_owner_lock) {
    std::string name = fresh("create");
    ::umask(077);
    UniqueFd fd = create_stream(name, 0644, false, false);
    struct stat st {};
    ASSERT_EQ(::stat(("/dev/shm/" + name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0644u);
    EXPECT_EQ(st.st_size, 0);
    StreamInfo info = stream_info(name);
    EXPECT_TRUE(info.is_stream);
    EXPECT_TRUE(info.owner_alive);
    EXPECT_FALSE(info.persistent);
    EXPECT_TRUE(release_stream_name(name, fd.get()));
    EXPECT_FALSE(exists(name));
}

TEST(ShmStream, a_live_name_makes_create_fail_with_eexist) {
    std::string name = fresh("live");
    UniqueFd fd = create_stream(name, 0600, false, false);
    EXPECT_EQ(errno_of([&] { (void)create_stream(name, 0600, false, false); }), EEXIST);
    (void)release_stream_name(name, fd.get());
}

TEST(ShmStream, the_stream_of_a_dead_owner_is_replaced) {
    std::string name = fresh("stale");
    pid_t pid = ::fork();
    if (pid == 0) {
        UniqueFd fd = create_stream(name, 0600, false, false);
        (void)::write(fd.get(), "old", 3);
        ::_exit(0); // no cleanup: the name stays, the owner lock dies with us
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(exists(name));
    EXPECT_FALSE(stream_info(name).owner_alive);
    UniqueFd fd = create_stream(name, 0600, false, false);
    struct stat st {};
    ASSERT_EQ(::fstat(fd.get(), &st), 0);
    EXPECT_EQ(st.st_size, 0) << "a fresh stream, not the stale one";
    (void)release_stream_name(name, fd.get());
}

TEST(ShmStream, persistent_streams_and_foreign_files_are_never_replaced) {
    std::string name = fresh("persist");
    { UniqueFd fd = create_stream(name, 0600, true, false); }
    EXPECT_TRUE(stream_info(name).persistent);
    EXPECT_EQ(errno_of([&] { (void)create_stream(name, 0600, false, false); }), EEXIST);
    ::unlink(("/dev/shm/" + name).c_str());
    int plain = ::open(("/dev/shm/" + name).c_str(), O_CREAT | O_RDWR, 0600);
    ASSERT_GE(plain, 0);
    ::close(plain);
    EXPECT_EQ(errno_of([&] { (void)create_stream(name, 0600, false, false); }), EEXIST);
    ::unlink(("/dev/shm/" + name).c_str());
}

TEST(ShmStream, guests_open_existing_names_only_and_never_remove_them) {
    std::string name = fresh("guest");
    EXPECT_EQ(errno_of([&] { (void)open_stream(name, StreamAccess::ReadOnly, false, false); }),
              ENOENT);
    UniqueFd owner = create_stream(name, 0600, false, false);
    ASSERT_EQ(::write(owner.get(), "abc", 3), 3);
    GuestStream g = open_stream(name, StreamAccess::ReadWrite, false, false);
    EXPECT_TRUE(g.writable);
    char buf[8] = {};
    EXPECT_EQ(::read(g.fd.get(), buf, sizeof buf), 3);
    EXPECT_FALSE(release_stream_name(name, -1));
    GuestStream t = open_stream(name, StreamAccess::ReadWrite, true, false);
    struct stat st {};
    ASSERT_EQ(::fstat(owner.get(), &st), 0);
    EXPECT_EQ(st.st_size, 0) << "truncate on open";
    EXPECT_FALSE(byte_is_locked(owner.get(), kOwnerLockByte)) << "guests take no owner lock";
    (void)release_stream_name(name, owner.get());
}

TEST(ShmStream, release_never_removes_a_newer_object_of_the_same_name) {
    std::string name = fresh("newer");
    UniqueFd first = create_stream(name, 0600, false, false);
    ::unlink(("/dev/shm/" + name).c_str()); // force-destroyed by someone
    UniqueFd second = create_stream(name, 0600, false, false);
    EXPECT_FALSE(release_stream_name(name, first.get()));
    EXPECT_TRUE(exists(name));
    EXPECT_TRUE(release_stream_name(name, second.get()));
}

TEST(ShmStream, invalid_names_are_invalid_argument) {
    for (const char *bad : {"", "/", "a/b", "//a"}) {
        EXPECT_THROW((void)create_stream(bad, 0600, false, false), InvalidArgument) << bad;
        EXPECT_THROW((void)open_stream(bad, StreamAccess::ReadOnly, false, false), InvalidArgument);
    }
    EXPECT_THROW((void)create_stream(fresh("mode"), 0170000, false, false), InvalidArgument);
}
