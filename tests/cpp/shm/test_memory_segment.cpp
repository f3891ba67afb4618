#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <cstring>
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
    return "shmipc-gtest-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}
bool exists(const std::string &name) {
    return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0;
}
} // namespace

TEST(MemorySegment, anonymous_segment_is_zeroed_sealed_against_resize_and_writable) {
    auto s = MemorySegment::anonymous(1 << 20);
    ASSERT_NE(s.data(), nullptr);
    for (std::size_t i = 0; i < s.size(); i += 4096)
        EXPECT_EQ(s.data()[i], std::byte{0});
    int seals = ::fcntl(s.fd(), F_GET_SEALS);
    EXPECT_TRUE(seals & F_SEAL_SHRINK);
    EXPECT_TRUE(seals & F_SEAL_GROW);
    EXPECT_NE(::ftruncate(s.fd(), 10), 0);
    s.data()[5] = std::byte{42};
}

TEST(MemorySegment, named_create_publishes_exact_mode_and_attach_sees_the_bytes) {
    std::string name = fresh("mode");
    ::umask(077);
    auto s = MemorySegment::create_named(name, 8192, 0644, SegmentKind::SharedValue, 3, false,
                                         [](std::byte *p) { p[100] = std::byte{7}; });
    struct stat st {};
    ASSERT_EQ(::stat(("/dev/shm/" + name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0644u);
    auto a = MemorySegment::attach_named(name, SegmentKind::SharedValue, 3, 64);
    EXPECT_EQ(a.data()[100], std::byte{7});
    EXPECT_EQ(a.size(), 8192u);
    s.reset();
    EXPECT_FALSE(exists(name)) << "the owner's close removes a non-persistent name";
}

TEST(MemorySegment, second_create_of_a_live_name_fails_with_eexist) {
    std::string name = fresh("live");
    auto s = MemorySegment::create_named(name, 4096, 0600, SegmentKind::Heap, 1, false);
    try {
        (void)MemorySegment::create_named(name, 4096, 0600, SegmentKind::Heap, 1, false);
        FAIL() << "expected EEXIST";
    } catch (const OsError &e) {
        EXPECT_EQ(e.code().value(), EEXIST);
    }
}

TEST(MemorySegment, a_dead_owners_name_is_replaced_by_the_next_create) {
    std::string name = fresh("stale");
    pid_t pid = ::fork();
    if (pid == 0) {
        auto s = MemorySegment::create_named(name, 4096, 0600, SegmentKind::Heap, 1, false);
        ::_exit(0); // dies without cleanup: the name stays, its owner lock is gone
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(exists(name));
    auto s = MemorySegment::create_named(name, 4096, 0600, SegmentKind::Heap, 1, false);
    EXPECT_TRUE(s.owner());
    s.reset();
    EXPECT_FALSE(exists(name));
}

TEST(MemorySegment, persistent_objects_outlive_their_owner_and_block_create) {
    std::string name = fresh("persist");
    { auto s = MemorySegment::create_named(name, 4096, 0600, SegmentKind::Heap, 1, true); }
    EXPECT_TRUE(exists(name));
    EXPECT_THROW((void)MemorySegment::create_named(name, 4096, 0600, SegmentKind::Heap, 1, false),
                 OsError);
    EXPECT_TRUE(unlink_named(name));
    EXPECT_FALSE(unlink_named(name));
}

TEST(MemorySegment, attach_rejects_garbage_truncated_and_wrong_kind_files) {
    std::string name = fresh("garbage");
    std::string path = "/dev/shm/" + name;
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_EXCL, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "hello", 5), 5);
    EXPECT_THROW((void)MemorySegment::attach_named(name, SegmentKind::Heap, 1, 64), CorruptSegment);
    char junk[4096];
    std::memset(junk, 0xab, sizeof junk);
    ASSERT_EQ(::pwrite(fd, junk, sizeof junk, 0), static_cast<ssize_t>(sizeof junk));
    EXPECT_THROW((void)MemorySegment::attach_named(name, SegmentKind::Heap, 1, 64), CorruptSegment);
    ::close(fd);
    ::unlink(path.c_str());

    auto s = MemorySegment::create_named(name, 4096, 0600, SegmentKind::Heap, 1, false);
    EXPECT_THROW((void)MemorySegment::attach_named(name, SegmentKind::MessageQueue, 1, 64),
                 CorruptSegment);
    EXPECT_THROW((void)MemorySegment::attach_named(name, SegmentKind::Heap, 2, 64), CorruptSegment);
    // Truncated behind our back: the header's size no longer matches.
    ASSERT_EQ(::truncate(path.c_str(), 2048), 0);
    EXPECT_THROW((void)MemorySegment::attach_named(name, SegmentKind::Heap, 1, 64), CorruptSegment);
}

TEST(MemorySegment, attach_of_a_missing_name_is_enoent) {
    try {
        (void)MemorySegment::attach_named(fresh("missing"), SegmentKind::Heap, 1, 64);
        FAIL();
    } catch (const OsError &e) {
        EXPECT_EQ(e.code().value(), ENOENT);
    }
}
