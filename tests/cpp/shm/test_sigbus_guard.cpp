#include "ipc_core/base/errors.hpp"
#include "ipc_core/channel/channel.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/queue/message_queue.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/shm/sigbus_guard.hpp"
#include "ipc_core/value/shared_value.hpp"
#include "testutil.hpp"

#include <cstring>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <span>
#include <string>
#include <unistd.h>
#include <vector>

using namespace shmipc;
using shmipc::testing::fresh_name;

namespace {
// What a hostile peer (or `open_stream(name, "wb")` by accident) does: shrink the file.
void shrink(const std::string &name, off_t to) {
    int fd = ::open(("/dev/shm/" + name).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, to), 0);
    ::close(fd);
}
std::span<const std::byte> bytes_of(const std::vector<std::byte> &v) {
    return {v.data(), v.size()};
}
} // namespace

TEST(SigbusGuard, touching_a_shrunk_named_mapping_reads_zeros_instead_of_dying) {
    auto name = fresh_name("bus");
    auto s = MemorySegment::create_named(name, 1 << 20, 0600, SegmentKind::SharedValue, 99, false);
    std::memset(s.data() + 4096, 0x5a, (1 << 20) - 4096);
    shrink(name, 4096);
    std::size_t before = absorbed_sigbus_faults();
    std::vector<std::byte> copy((1 << 20) - 4096);
    std::memcpy(copy.data(), s.data() + 4096, copy.size()); // would be SIGBUS without the guard
    EXPECT_GT(absorbed_sigbus_faults(), before);
    EXPECT_TRUE(s.truncated());
    EXPECT_THROW(s.check_intact("segment"), CorruptSegment);
    s.data()[1 << 19] = std::byte{1}; // writes land on a private page: no crash either
}

TEST(SigbusGuard, a_truncated_value_is_a_corrupt_segment_for_its_readers_and_writers) {
    auto name = fresh_name("busv");
    auto v = SharedValue::create(name, 1 << 20, 0600, false);
    std::vector<std::byte> data(1 << 20, std::byte{7});
    v->write(1, {}, bytes_of(data));
    auto r = SharedValue::attach(name);
    shrink(name, 4096);
    std::vector<std::byte> out;
    EXPECT_THROW((void)r->read([&](const ValueSnapshot &snap) {
        out.resize(snap.nbytes);
        return out.data();
    }),
                 CorruptSegment);
    EXPECT_THROW(v->write(1, {}, bytes_of(data)), CorruptSegment);
}

TEST(SigbusGuard, a_truncated_queue_is_a_corrupt_segment_not_a_crash) {
    auto name = fresh_name("busq");
    auto q = MessageQueue::create(name, 64, 4096, 0600, false);
    auto other = MessageQueue::attach(name);
    shrink(name, 8192);
    std::string msg(3000, 'x');
    bool failed_cleanly = false;
    for (int i = 0; i < 64 && !failed_cleanly; ++i) {
        try {
            (void)other.try_put(msg.data(), msg.size());
        } catch (const CorruptSegment &) {
            failed_cleanly = true;
        }
    }
    EXPECT_TRUE(failed_cleanly);
}

TEST(SigbusGuard, a_truncated_heap_is_a_corrupt_segment_for_its_users_and_channels) {
    auto name = fresh_name("bush");
    HeapOptions o;
    o.size = 1 << 20;
    o.thread_cache = false;
    auto h = Heap::create(name, o);
    auto g = Heap::attach(name, false);
    auto tx = Channel::open(*g, "c", 8);
    tx->send_bytes("before", 6, RecordKind::Block, {}, Deadline(1.0));
    shrink(name, 4096);
    // The slow paths compare the file with the mapping before touching the lost pages.
    EXPECT_THROW((void)g->reap_dead_clients(Deadline(1.0)), CorruptSegment);
    // Touching them is absorbed (no SIGBUS); from then on every operation says so.
    bool corrupt = false;
    for (int i = 0; i < 4 && !corrupt; ++i) {
        try {
            g->deallocate(g->allocate(100000, Deadline(1.0)));
            tx->send_bytes("after-the-shrink", 16, RecordKind::Block, {}, Deadline(0.1));
        } catch (const CorruptSegment &) {
            corrupt = true;
        } catch (const Error &) {
        }
    }
    EXPECT_TRUE(corrupt);
    tx->abandon();
}

TEST(SigbusGuard, an_unguarded_address_still_gets_the_previous_behaviour) {
    // Guarding one mapping must not swallow faults elsewhere: a private mapping of a shrunk
    // memfd still dies of SIGBUS, in a child.
    // The guarded named mapping is the parent's (the child dies of the fault: it could not
    // remove a name of its own).
    auto name = fresh_name("busx");
    auto s = MemorySegment::create_named(name, 8192, 0600, SegmentKind::SharedValue, 99, false);
    pid_t pid = shmipc::testing::fork_child([] {
        int fd = ::memfd_create("x", MFD_CLOEXEC);
        (void)::ftruncate(fd, 8192);
        auto *p = static_cast<volatile char *>(
            ::mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        (void)::ftruncate(fd, 0);
        return p[4096]; // SIGBUS
    });
    // Under a sanitizer the previous handler is the sanitizer's own: it reports the BUS and
    // exits with its error code (ASan 1, TSan 66) instead of dying of the signal.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    constexpr bool kSanitized = true;
#else
    constexpr bool kSanitized = false;
#endif
#else
    constexpr bool kSanitized = false;
#endif
    const int status = shmipc::testing::wait_child(pid);
    if (kSanitized) {
        EXPECT_NE(status, 0) << "the fault was swallowed";
        EXPECT_NE(status, 128 + SIGSEGV);
    } else {
        EXPECT_EQ(status, 128 + SIGBUS);
    }
}
