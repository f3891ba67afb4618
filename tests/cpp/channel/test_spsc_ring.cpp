#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/channel/spsc_ring.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <sys/mman.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace shmipc;
using namespace std::chrono_literals;

namespace {

// Memory for a ring, cache-line aligned, shared with forked children (MAP_SHARED).
struct SharedMem {
    explicit SharedMem(std::size_t n) : size(n) {
        void *p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            std::abort();
        data = p;
    }
    ~SharedMem() { ::munmap(data, size); }
    SharedMem(const SharedMem &) = delete;
    SharedMem &operator=(const SharedMem &) = delete;
    void *data;
    std::size_t size;
};

RingRecord rec(std::uint64_t i) {
    return RingRecord{i, i * 3 + 1, i ^ 0x5a5a, ~i};
}
bool is_rec(const RingRecord &r, std::uint64_t i) {
    return r.offset == i && r.length == i * 3 + 1 && r.tag == (i ^ 0x5a5a) && r.aux == ~i;
}

// Waits until ready or `limit`; returns whether ready (every wait in a test is bounded).
template <class Ready>
bool bounded_wait(FutexWord &w, Ready ready, std::chrono::nanoseconds spin,
                  std::chrono::milliseconds limit = 30s) {
    Deadline d(std::chrono::duration<double>(limit).count());
    return spin_then_wait(
        w, ready, [&] { return d.slice(); },
        SpinPolicy{std::min<std::chrono::nanoseconds>(spin, 1us),
                   spin - std::min<std::chrono::nanoseconds>(spin, 1us)});
}

// Pushes `n` records, blocking (spin then futex) when full, in batches of 1..7.
void produce(SpscRingControl *r, std::uint64_t n, std::chrono::nanoseconds spin) {
    SpscProducer p(r);
    std::uint64_t i = 0;
    unsigned batch = 1;
    RingRecord buf[8];
    while (i < n) {
        batch = batch % 7 + 1;
        if (batch == 1) {
            if (!p.try_push(rec(i))) {
                ASSERT_TRUE(bounded_wait(
                    r->not_full, [&] { return p.writable(); }, spin));
                continue;
            }
            ++i;
            continue;
        }
        std::size_t k = 0;
        for (; k < batch && i + k < n; ++k)
            buf[k] = rec(i + k);
        std::size_t pushed = p.try_push_many(buf, k);
        if (pushed == 0)
            ASSERT_TRUE(bounded_wait(
                r->not_full, [&] { return p.writable(); }, spin));
        i += pushed;
    }
    p.close();
}

// Pops until closed and empty; returns the number of records, all checked to be 0, 1, 2...
std::uint64_t consume(SpscRingControl *r, std::chrono::nanoseconds spin) {
    SpscConsumer c(r);
    std::uint64_t expect = 0;
    RingRecord buf[5];
    unsigned batch = 0;
    for (;;) {
        batch = batch % 5 + 1;
        std::size_t got = 0;
        if (batch == 1) {
            got = c.try_pop(buf[0]) ? 1 : 0;
        } else {
            got = c.try_pop_many(buf, batch);
        }
        for (std::size_t k = 0; k < got; ++k) {
            if (!is_rec(buf[k], expect)) {
                ADD_FAILURE() << "record " << expect << " arrived as offset " << buf[k].offset;
                return expect;
            }
            ++expect;
        }
        if (got)
            continue;
        if (c.closed_and_empty())
            return expect;
        if (!bounded_wait(
                r->not_empty, [&] { return c.readable() || c.closed_and_empty(); }, spin)) {
            ADD_FAILURE() << "consumer waited 30 s for record " << expect;
            return expect;
        }
    }
}

} // namespace

TEST(SpscRing, holds_exactly_its_capacity_even_when_not_a_power_of_two) {
    SharedMem m(spsc_ring_bytes(5));
    auto *r = spsc_ring_init(m.data, 5);
    EXPECT_EQ(r->capacity, 5u);
    EXPECT_EQ(r->mask, 7u);
    SpscProducer p(r);
    for (std::uint64_t i = 0; i < 5; ++i)
        EXPECT_TRUE(p.try_push(rec(i)));
    EXPECT_FALSE(p.try_push(rec(5))) << "a full ring refuses";
    EXPECT_FALSE(p.writable());
    EXPECT_EQ(r->size_approx(), 5u);
    SpscConsumer c(r);
    RingRecord out{};
    ASSERT_TRUE(c.try_pop(out));
    EXPECT_TRUE(is_rec(out, 0));
    EXPECT_TRUE(p.try_push(rec(5))) << "one pop makes room for one push";
    for (std::uint64_t i = 1; i <= 5; ++i) {
        ASSERT_TRUE(c.try_pop(out));
        EXPECT_TRUE(is_rec(out, i));
    }
    EXPECT_FALSE(c.try_pop(out)) << "an empty ring returns nothing";
}

TEST(SpscRing, keeps_fifo_order_across_many_wraparounds) {
    SharedMem m(spsc_ring_bytes(3));
    auto *r = spsc_ring_init(m.data, 3);
    SpscProducer p(r);
    SpscConsumer c(r);
    std::uint64_t next_in = 0, next_out = 0;
    for (int round = 0; round < 10000; ++round) {
        int pushes = round % 4;
        for (int k = 0; k < pushes; ++k)
            if (p.try_push(rec(next_in)))
                ++next_in;
        RingRecord out{};
        int pops = (round + 1) % 3;
        for (int k = 0; k < pops; ++k) {
            if (!c.try_pop(out))
                break;
            ASSERT_TRUE(is_rec(out, next_out)) << "at " << next_out;
            ++next_out;
        }
    }
    EXPECT_GT(next_in, 3u * 8);
    EXPECT_EQ(r->head.load(), next_in);
}

TEST(SpscRing, batch_push_and_pop_move_as_many_as_fit) {
    SharedMem m(spsc_ring_bytes(4));
    auto *r = spsc_ring_init(m.data, 4);
    SpscProducer p(r);
    SpscConsumer c(r);
    RingRecord in[6];
    for (int i = 0; i < 6; ++i)
        in[i] = rec(i);
    EXPECT_EQ(p.try_push_many(in, 6), 4u);
    EXPECT_EQ(p.free_slots(), 0u);
    RingRecord out[6];
    EXPECT_EQ(c.try_pop_many(out, 3), 3u);
    EXPECT_EQ(p.try_push_many(in + 4, 2), 2u);
    EXPECT_EQ(c.try_pop_many(out + 3, 6), 3u);
    for (int i = 0; i < 6; ++i)
        EXPECT_TRUE(is_rec(out[i], i)) << i;
    EXPECT_EQ(c.try_pop_many(out, 6), 0u);
}

TEST(SpscRing, consumer_drains_queued_records_before_it_sees_the_close) {
    SharedMem m(spsc_ring_bytes(8));
    auto *r = spsc_ring_init(m.data, 8);
    SpscProducer p(r);
    SpscConsumer c(r);
    ASSERT_TRUE(p.try_push(rec(0)));
    ASSERT_TRUE(p.try_push(rec(1)));
    p.close();
    RingRecord out{};
    EXPECT_FALSE(c.closed_and_empty());
    ASSERT_TRUE(c.try_pop(out));
    EXPECT_FALSE(c.closed_and_empty());
    ASSERT_TRUE(c.try_pop(out));
    EXPECT_TRUE(c.closed_and_empty());
}

TEST(SpscRing, capacity_outside_the_allowed_range_is_an_invalid_argument) {
    EXPECT_THROW((void)spsc_ring_bytes(0), InvalidArgument);
    EXPECT_THROW((void)spsc_ring_bytes(std::uint64_t{kRingMaxCapacity} + 1), InvalidArgument);
    EXPECT_EQ(spsc_ring_bytes(1), sizeof(SpscRingControl) + sizeof(RingRecord));
}

TEST(SpscRing, validate_accepts_a_good_ring_and_rejects_each_kind_of_garbage) {
    const std::size_t n = spsc_ring_bytes(16);
    SharedMem m(n);
    auto *r = spsc_ring_init(m.data, 16);
    EXPECT_EQ(spsc_ring_validate(m.data, n), r);
    EXPECT_THROW(spsc_ring_validate(m.data, n - 1), CorruptSegment) << "does not fit";
    EXPECT_THROW(spsc_ring_validate(m.data, 10), CorruptSegment) << "truncated";

    auto corrupt = [&](auto mutate) {
        std::vector<std::byte> saved(n);
        std::memcpy(saved.data(), m.data, n);
        mutate();
        bool threw = false;
        try {
            (void)spsc_ring_validate(m.data, n);
        } catch (const CorruptSegment &) {
            threw = true;
        }
        std::memcpy(m.data, saved.data(), n);
        return threw;
    };
    EXPECT_TRUE(corrupt([&] { r->magic ^= 1; })) << "magic";
    EXPECT_TRUE(corrupt([&] { r->layout_version = 99; })) << "version";
    EXPECT_TRUE(corrupt([&] { r->capacity = 0; })) << "zero capacity";
    EXPECT_TRUE(corrupt([&] { r->mask = 6; })) << "mask not a power of two minus one";
    EXPECT_TRUE(corrupt([&] { r->mask = 1023; })) << "mask larger than the capacity needs";
    EXPECT_TRUE(corrupt([&] { r->capacity = kRingMaxCapacity + 1; })) << "huge capacity";
    EXPECT_TRUE(corrupt([&] { r->tail.store(5); })) << "tail ahead of head";
    EXPECT_TRUE(corrupt([&] { r->head.store(17); })) << "more queued than capacity";
}

TEST(SpscRing, a_sleeping_consumer_is_woken_by_a_push_and_a_timeout_is_reported) {
    SharedMem m(spsc_ring_bytes(4));
    auto *r = spsc_ring_init(m.data, 4);
    SpscConsumer c(r);
    // Nothing pushed: a 20 ms deadline expires and the wait says so.
    Deadline d(0.02);
    EXPECT_FALSE(spin_then_wait(
        r->not_empty, [&] { return c.readable(); }, [&] { return d.slice(); }, SpinPolicy{}));

    std::thread producer([&] {
        std::this_thread::sleep_for(30ms); // long enough for the consumer to be asleep
        SpscProducer p(r);
        EXPECT_TRUE(p.try_push(rec(7)));
    });
    EXPECT_TRUE(bounded_wait(
        r->not_empty, [&] { return c.readable(); }, 0ns));
    RingRecord out{};
    ASSERT_TRUE(c.try_pop(out));
    EXPECT_TRUE(is_rec(out, 7));
    producer.join();
}

TEST(SpscRing, fast_path_makes_no_wake_when_nobody_sleeps) {
    SharedMem m(spsc_ring_bytes(4));
    auto *r = spsc_ring_init(m.data, 4);
    SpscProducer p(r);
    SpscConsumer c(r);
    RingRecord out{};
    for (int i = 0; i < 100; ++i) {
        ASSERT_TRUE(p.try_push(rec(i)));
        ASSERT_TRUE(c.try_pop(out));
    }
    // seq is bumped only by notify_all, which runs only when a waiter announced itself.
    EXPECT_EQ(r->not_empty.seq.load(), 0u);
    EXPECT_EQ(r->not_full.seq.load(), 0u);
}

TEST(SpscRing, two_threads_pass_every_item_once_and_in_order_while_spinning) {
    constexpr std::uint64_t kItems = 300'000;
    SharedMem m(spsc_ring_bytes(64));
    auto *r = spsc_ring_init(m.data, 64);
    std::thread t([&] { produce(r, kItems, 200us); });
    EXPECT_EQ(consume(r, 200us), kItems);
    t.join();
}

TEST(SpscRing, two_threads_pass_every_item_once_and_in_order_with_futex_sleeps) {
    // A tiny ring and no spinning: nearly every push and pop goes through the sleep/wake path.
    constexpr std::uint64_t kItems = 20'000;
    SharedMem m(spsc_ring_bytes(3));
    auto *r = spsc_ring_init(m.data, 3);
    std::thread t([&] { produce(r, kItems, 0ns); });
    EXPECT_EQ(consume(r, 0ns), kItems);
    t.join();
}

TEST(SpscRing, two_processes_pass_every_item_once_and_in_order) {
    constexpr std::uint64_t kItems = 300'000;
    SharedMem m(spsc_ring_bytes(100));
    auto *r = spsc_ring_init(m.data, 100);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        produce(r, kItems, 50us);
        ::_exit(::testing::Test::HasFailure() ? 1 : 0);
    }
    EXPECT_EQ(consume(r, 50us), kItems);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
