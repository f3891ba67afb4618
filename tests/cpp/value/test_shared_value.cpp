#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/testing/crash_point.hpp"
#include "ipc_core/value/shared_value.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <span>
#include <string>
#include <sys/wait.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace shmipc;

namespace {
std::string fresh(const char *tag) {
    static int n = 0;
    return "shmipc-gtest-value-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}
bool exists(const std::string &name) {
    return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0;
}

std::span<const std::byte> bytes_of(const std::string &s) {
    return {reinterpret_cast<const std::byte *>(s.data()), s.size()};
}
std::span<const std::byte> bytes_of(const std::vector<std::uint64_t> &v) {
    return {reinterpret_cast<const std::byte *>(v.data()), v.size() * sizeof(std::uint64_t)};
}

// Reads into a vector; returns the snapshot.
ValueSnapshot read_into(const SharedValue &v, std::vector<std::byte> &out) {
    return v.read([&](const ValueSnapshot &s) {
        out.resize(static_cast<std::size_t>(s.nbytes));
        return out.data();
    });
}
std::string read_string(const SharedValue &v) {
    std::vector<std::byte> out;
    read_into(v, out);
    return {reinterpret_cast<const char *>(out.data()), out.size()};
}
} // namespace

TEST(SharedValue, a_new_value_is_empty_with_version_zero) {
    auto v = SharedValue::create(fresh("empty"), 100, 0600, false);
    std::vector<std::byte> out;
    auto s = read_into(*v, out);
    EXPECT_EQ(s.type, 0u);
    EXPECT_EQ(s.version, 0u);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(v->version(), 0u);
}

TEST(SharedValue, an_attached_handle_reads_what_the_owner_wrote_with_its_meta) {
    std::string name = fresh("rw");
    auto v = SharedValue::create(name, 100, 0600, false);
    v->write(7, bytes_of(std::string("meta")), bytes_of(std::string("payload")));
    auto r = SharedValue::attach(name);
    std::vector<std::byte> out;
    auto s = read_into(*r, out);
    EXPECT_EQ(s.type, 7u);
    EXPECT_EQ(s.meta, "meta");
    EXPECT_EQ(s.version, 1u);
    EXPECT_EQ(std::string(reinterpret_cast<const char *>(out.data()), out.size()), "payload");
    v.reset();
    EXPECT_FALSE(exists(name));
    EXPECT_EQ(read_string(*r), "payload") << "the mapping outlives the name";
}

TEST(SharedValue, a_value_over_capacity_is_refused_and_changes_nothing) {
    auto v = SharedValue::create(fresh("cap"), 8, 0600, false);
    v->write(1, {}, bytes_of(std::string("12345678")));
    EXPECT_THROW(v->write(1, {}, bytes_of(std::string("123456789"))), InvalidArgument);
    std::string big_meta(kValueMetaCapacity + 1, 'm');
    EXPECT_THROW(v->write(1, bytes_of(big_meta), {}), InvalidArgument);
    EXPECT_THROW(v->write(0, {}, {}), InvalidArgument) << "tag 0 means never written";
    EXPECT_EQ(read_string(*v), "12345678");
    EXPECT_EQ(v->version(), 1u);
}

TEST(SharedValue, the_version_counts_every_write_so_two_writes_never_cancel) {
    auto v = SharedValue::create(fresh("ver"), 16, 0600, false);
    for (int i = 1; i <= 10; ++i) {
        v->write(1, {}, bytes_of(std::string("same")));
        EXPECT_EQ(v->version(), static_cast<std::uint64_t>(i));
    }
}

TEST(SharedValue, zero_size_is_invalid) {
    EXPECT_THROW((void)SharedValue::create(fresh("zero"), 0, 0600, false), InvalidArgument);
}

TEST(SharedValue, attach_of_a_missing_name_is_enoent) {
    try {
        (void)SharedValue::attach(fresh("missing"));
        FAIL();
    } catch (const OsError &e) {
        EXPECT_EQ(e.code().value(), ENOENT);
    }
}

TEST(SharedValue, attach_of_a_truncated_or_garbage_file_is_corrupt_segment) {
    std::string name = fresh("trunc");
    { auto v = SharedValue::create(name, 4096, 0600, true); }
    std::string path = "/dev/shm/" + name;
    ASSERT_EQ(::truncate(path.c_str(), 1000), 0);
    EXPECT_THROW((void)SharedValue::attach(name), CorruptSegment);
    ASSERT_EQ(::truncate(path.c_str(), 100000), 0); // zeros: bad magic
    int fd = ::open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "garbage", 7, 0), 7);
    ::close(fd);
    EXPECT_THROW((void)SharedValue::attach(name), CorruptSegment);
    ::unlink(path.c_str());
}

TEST(SharedValue, wait_times_out_then_returns_once_a_write_happened) {
    auto v = SharedValue::create(fresh("wait"), 16, 0600, false);
    EXPECT_FALSE(v->wait(0, Deadline(0.0)));
    EXPECT_FALSE(v->wait(0, Deadline(0.02)));
    std::thread t([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        v->write(1, {}, bytes_of(std::string("x")));
    });
    EXPECT_TRUE(v->wait(0, Deadline(30.0)));
    t.join();
    EXPECT_TRUE(v->wait(0, Deadline(0.0)));
    EXPECT_FALSE(v->wait(1, Deadline(0.0)));
}

TEST(SharedValue, request_close_ends_a_blocked_wait_with_closed) {
    auto v = SharedValue::create(fresh("close"), 16, 0600, false);
    std::atomic<bool> got_closed{false};
    std::thread t([&] {
        try {
            (void)v->wait(0, Deadline(30.0));
        } catch (const Closed &) {
            got_closed = true;
        }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    v->request_close();
    t.join();
    EXPECT_TRUE(got_closed);
}

TEST(SharedValue, readers_never_see_a_torn_value_while_threads_write) {
    std::string name = fresh("threads");
    constexpr std::size_t kWords = 4096;
    auto v = SharedValue::create(name, kWords * 8, 0600, false);
    v->write(1, {}, bytes_of(std::vector<std::uint64_t>(1, 1)));
    std::atomic<bool> stop{false};
    std::vector<std::thread> writers;
    for (std::uint64_t id = 1; id <= 2; ++id) {
        writers.emplace_back([&, id] {
            auto w = SharedValue::attach(name);
            for (std::uint64_t i = 1; !stop.load(std::memory_order_relaxed); ++i) {
                std::size_t n = 1 + (i * 7919) % kWords;
                std::vector<std::uint64_t> data(n, (id << 32) | n);
                w->write(1, {}, bytes_of(data));
            }
        });
    }
    std::atomic<long> torn{0}, reads{0};
    std::vector<std::thread> readers;
    for (int r = 0; r < 2; ++r) {
        readers.emplace_back([&] {
            auto rv = SharedValue::attach(name);
            std::vector<std::byte> out;
            std::uint64_t last = 0;
            auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(800);
            while (std::chrono::steady_clock::now() < end) {
                auto s = read_into(*rv, out);
                if (s.version < last)
                    ++torn;
                last = s.version;
                std::size_t n = out.size() / 8;
                std::vector<std::uint64_t> words(n);
                std::memcpy(words.data(), out.data(), n * 8);
                if (n == 0 || (words[0] & 0xffffffffu) != n)
                    ++torn;
                for (auto x : words)
                    if (x != words[0]) {
                        ++torn;
                        break;
                    }
                ++reads;
            }
        });
    }
    for (auto &t : readers)
        t.join();
    stop = true;
    for (auto &t : writers)
        t.join();
    EXPECT_GT(reads.load(), 0);
    EXPECT_EQ(torn.load(), 0);
}

TEST(SharedValue, a_writer_killed_mid_write_leaves_the_last_value_and_the_next_writer_proceeds) {
    std::string name = fresh("kill");
    constexpr std::size_t kBytes = 1 << 20;
    auto v = SharedValue::create(name, kBytes, 0600, false);
    v->write(1, {}, bytes_of(std::string("complete")));
    pid_t pid = ::fork();
    if (pid == 0) {
        auto w = SharedValue::attach(name);
        std::vector<std::byte> bad(kBytes, std::byte{0xab});
        arm_crash_point("value.write.half", 1, CrashAction::Stall);
        w->write(1, {}, bad);
    }
    // Wait until the child holds the lock with the non-current slot half written.
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
        auto st = v->debug_state();
        if (st.seq[st.current ^ 1] & 1)
            break;
        ASSERT_LT(std::chrono::steady_clock::now(), until) << "child never started writing";
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_EQ(read_string(*v), "complete");
    EXPECT_EQ(v->version(), 1u);
    v->write(1, {}, bytes_of(std::string("next"))); // no orphaned lock
    EXPECT_EQ(read_string(*v), "next");
    EXPECT_EQ(v->version(), 2u);
    EXPECT_EQ(v->writer_deaths(), 1u);
}

TEST(SharedValue, a_waiter_in_another_process_wakes_on_write) {
    std::string name = fresh("xproc");
    auto v = SharedValue::create(name, 16, 0600, false);
    pid_t pid = ::fork();
    if (pid == 0) {
        auto r = SharedValue::attach(name);
        bool ok = r->wait(0, Deadline(30.0)) && read_string(*r) == "hi";
        ::_exit(ok ? 0 : 1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    v->write(1, {}, bytes_of(std::string("hi")));
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(SharedValue, a_forked_childs_copy_of_the_owner_handle_never_removes_the_name) {
    std::string name = fresh("fork");
    auto v = SharedValue::create(name, 16, 0600, false);
    pid_t pid = ::fork();
    if (pid == 0) {
        v.reset(); // the child's copy of the owner object is destroyed
        ::_exit(0);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(exists(name));
    v.reset();
    EXPECT_FALSE(exists(name));
}
