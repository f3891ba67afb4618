#include "ipc_core/base/errors.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/testing/crash_point.hpp"
#include "ipc_core/topic/topic.hpp"
#include "testutil.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <gtest/gtest.h>
#include <random>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace shmipc;
using namespace shmipc::testing;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<Heap> make_heap(const std::string &name, std::size_t size = 16 << 20) {
    HeapOptions o;
    o.size = size;
    return Heap::create(name, o);
}

std::string payload(std::uint64_t i) {
    // Lengths 1..300, content derived from i: catches loss, reordering and torn copies.
    std::string s(1 + i % 300, '\0');
    for (std::size_t k = 0; k < s.size(); ++k)
        s[k] = static_cast<char>((i * 131 + k * 7) & 0xff);
    return s;
}

std::string read(TopicSubscriber &sub, const TopicSample &s) {
    return std::string(static_cast<const char *>(sub.sample_ptr(s)), s.length);
}

std::uint64_t used(Heap &h) {
    h.flush_thread_caches(true);
    return h.stats().used;
}

TopicOptions opts(std::uint32_t cap, std::uint32_t hist = 0, Overflow o = Overflow::Block,
                  std::uint32_t max_subs = 64) {
    TopicOptions t;
    t.capacity = cap;
    t.history = hist;
    t.overflow = o;
    t.max_subscribers = max_subs;
    return t;
}

void publish(TopicPublisher &p, const std::string &s, double timeout = 5.0) {
    p.publish_bytes(s.data(), s.size(), {}, Deadline(timeout));
}

} // namespace

TEST(TopicLayout, control_block_is_five_lines_and_slots_are_sized) {
    static_assert(sizeof(TopicControl) == 320);
    static_assert(offsetof(TopicControl, head) % 64 == 0, "head has a line of its own");
    static_assert(sizeof(SubscriberSlot) == 64);
    static_assert(sizeof(SampleHeader) == 64);
    static_assert(sizeof(TopicSlot) == 16);
    SUCCEED();
}

TEST(Topic, every_subscriber_gets_every_sample_in_order_and_the_same_block) {
    auto heap = make_heap(fresh_name("topic-basic"));
    const auto base = used(*heap);
    {
        auto pub = TopicPublisher::open(*heap, "t", opts(16));
        auto a = TopicSubscriber::open(*heap, "t");
        auto b = TopicSubscriber::open(*heap, "t");
        EXPECT_EQ(pub->subscribers(), 2u);
        for (std::uint64_t i = 0; i < 10; ++i)
            publish(*pub, payload(i));
        EXPECT_EQ(a->pending(), 10u);
        for (std::uint64_t i = 0; i < 10; ++i) {
            TopicSample sa = a->recv(Deadline(1.0));
            TopicSample sb = b->recv(Deadline(1.0));
            EXPECT_EQ(sa.data, sb.data) << "zero copy: one block for every subscriber";
            EXPECT_EQ(sa.seq, i);
            EXPECT_EQ(read(*a, sa), payload(i));
            EXPECT_EQ(read(*b, sb), payload(i));
            a->release(sa);
            b->release(sb);
        }
        EXPECT_FALSE(a->try_recv().has_value());
        EXPECT_THROW((void)a->recv(Deadline(0.05)), Timeout);
        pub->close();
        EXPECT_THROW((void)a->recv(Deadline(1.0)), EndOfStream);
    }
    EXPECT_TRUE(remove_topic(*heap, "t"));
    EXPECT_FALSE(remove_topic(*heap, "t"));
    EXPECT_EQ(used(*heap), base) << "every sample and the control block were freed";
}

TEST(Topic, a_block_is_published_zero_copy_and_freed_by_the_last_holder) {
    auto heap = make_heap(fresh_name("topic-zc"));
    const auto base = used(*heap);
    {
        auto pub = TopicPublisher::open(*heap, "t", opts(4));
        auto a = TopicSubscriber::open(*heap, "t");
        auto b = TopicSubscriber::open(*heap, "t");
        const std::uint64_t off = heap->allocate(1 << 20);
        std::memset(heap->to_ptr(off), 7, 1 << 20);
        pub->publish_block(off, 1 << 20, "meta", Deadline(1.0));
        EXPECT_EQ(heap->owner_of(off), kOwnerHeld);
        TopicSample sa = a->recv(Deadline(1.0));
        TopicSample sb = b->recv(Deadline(1.0));
        EXPECT_EQ(sa.data, off);
        EXPECT_EQ(sa.meta, "meta");
        EXPECT_EQ(static_cast<const unsigned char *>(a->sample_ptr(sa))[12345], 7);
        pub->close();
        pub.reset();
        // The ring still holds it (history); both subscribers hold it.
        a->release(sa);
        EXPECT_EQ(heap->owner_of(off), kOwnerHeld);
        b->release(sb);
        a.reset();
        b.reset();
        const auto mid = used(*heap);
        EXPECT_GE(mid, base + (1 << 20)) << "the ring keeps the last sample";
    }
    EXPECT_TRUE(remove_topic(*heap, "t"));
    EXPECT_EQ(used(*heap), base);
}

TEST(Topic, a_late_joiner_gets_up_to_history_earlier_samples) {
    auto heap = make_heap(fresh_name("topic-hist"));
    auto pub = TopicPublisher::open(*heap, "t", opts(4, 3));
    for (std::uint64_t i = 0; i < 10; ++i)
        publish(*pub, payload(i));
    auto late = TopicSubscriber::open(*heap, "t");
    EXPECT_EQ(late->pending(), 3u);
    for (std::uint64_t i = 7; i < 10; ++i) {
        TopicSample s = late->recv(Deadline(1.0));
        EXPECT_EQ(s.seq, i);
        EXPECT_EQ(read(*late, s), payload(i));
        late->release(s);
    }
    auto none = TopicPublisher::open(*heap, "u", opts(4, 0));
    publish(*none, "x");
    auto late2 = TopicSubscriber::open(*heap, "u");
    EXPECT_EQ(late2->pending(), 0u) << "history=0: only what comes next";
}

TEST(Topic, overflow_block_waits_for_the_slowest_live_subscriber) {
    auto heap = make_heap(fresh_name("topic-block"));
    auto pub = TopicPublisher::open(*heap, "t", opts(2));
    auto sub = TopicSubscriber::open(*heap, "t");
    publish(*pub, "a");
    publish(*pub, "b");
    EXPECT_FALSE(pub->ready());
    EXPECT_FALSE(pub->try_publish_bytes("c", 1, {}));
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_THROW(publish(*pub, "c", 0.1), Timeout);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 90ms);
    TopicSample s = sub->recv(Deadline(1.0));
    sub->release(s);
    EXPECT_TRUE(pub->ready());
    publish(*pub, "c", 0.0);
    // A subscriber that closes stops counting.
    sub->close();
    for (int i = 0; i < 10; ++i)
        publish(*pub, "d", 0.0);
}

TEST(Topic, drop_oldest_never_waits_and_counts_what_a_slow_subscriber_missed) {
    auto heap = make_heap(fresh_name("topic-drop"));
    auto pub = TopicPublisher::open(*heap, "t", opts(3, 0, Overflow::DropOldest));
    auto sub = TopicSubscriber::open(*heap, "t");
    for (std::uint64_t i = 0; i < 10; ++i)
        publish(*pub, payload(i), 0.0);
    EXPECT_EQ(sub->pending(), 3u);
    EXPECT_EQ(sub->missed(), 7u);
    for (std::uint64_t i = 7; i < 10; ++i) {
        TopicSample s = sub->recv(Deadline(1.0));
        EXPECT_EQ(read(*sub, s), payload(i));
        sub->release(s);
    }
}

TEST(Topic, held_samples_survive_the_ring_and_max_held_is_a_clear_error) {
    auto heap = make_heap(fresh_name("topic-held"));
    TopicOptions o = opts(2, 0, Overflow::DropOldest);
    o.max_held = 3;
    auto pub = TopicPublisher::open(*heap, "t", o);
    auto sub = TopicSubscriber::open(*heap, "t");
    std::vector<TopicSample> held;
    for (std::uint64_t i = 0; i < 3; ++i) {
        publish(*pub, payload(i));
        held.push_back(sub->recv(Deadline(1.0)));
    }
    for (std::uint64_t i = 3; i < 8; ++i)
        publish(*pub, payload(i)); // the ring moved far past the held ones
    for (std::uint64_t i = 0; i < 3; ++i)
        EXPECT_EQ(read(*sub, held[i]), payload(i));
    EXPECT_THROW((void)sub->recv(Deadline(1.0)), LimitReached);
    sub->release(held[0]);
    sub->release(held[0]); // twice: a no-op
    TopicSample s = sub->recv(Deadline(1.0));
    sub->release(s);
    sub->release(held[1]);
    sub->release(held[2]);
}

TEST(Topic, one_live_publisher_max_subscribers_and_a_closed_topic) {
    auto heap = make_heap(fresh_name("topic-limits"));
    auto pub = TopicPublisher::open(*heap, "t", opts(2, 0, Overflow::Block, 2));
    EXPECT_THROW((void)TopicPublisher::open(*heap, "t", opts(2)), ChannelBusy);
    auto a = TopicSubscriber::open(*heap, "t");
    auto b = TopicSubscriber::open(*heap, "t");
    try {
        (void)TopicSubscriber::open(*heap, "t");
        ADD_FAILURE() << "a third subscriber was accepted";
    } catch (const LimitReached &e) {
        EXPECT_NE(std::string(e.what()).find("max_subscribers=2"), std::string::npos) << e.what();
    }
    b.reset();
    auto c = TopicSubscriber::open(*heap, "t"); // the slot came back
    EXPECT_THROW((void)TopicSubscriber::open(*heap, "nope"), OsError);
    pub->close();
    try {
        (void)TopicPublisher::open(*heap, "t", opts(2));
        ADD_FAILURE() << "a closed topic got a new publisher";
    } catch (const OsError &e) {
        EXPECT_EQ(e.err(), EPIPE);
    }
    EXPECT_THROW((void)remove_topic(*heap, "t"), ChannelBusy) << "subscribers are open";
    a.reset();
    c.reset();
    EXPECT_TRUE(remove_topic(*heap, "t"));
    auto again = TopicPublisher::open(*heap, "t", opts(2)); // a fresh topic of that name
}

TEST(Topic, a_publisher_dropped_without_close_is_peer_died_after_the_drain) {
    auto heap = make_heap(fresh_name("topic-depart"));
    auto pub = TopicPublisher::open(*heap, "t", opts(4));
    auto sub = TopicSubscriber::open(*heap, "t");
    publish(*pub, "last");
    pub.reset();
    TopicSample s = sub->recv(Deadline(1.0));
    EXPECT_EQ(read(*sub, s), "last");
    sub->release(s);
    EXPECT_THROW((void)sub->recv(Deadline(1.0)), PeerDied);
    auto again = TopicPublisher::open(*heap, "t", opts(4)); // takes over the departed one
    publish(*again, "more");
    TopicSample s2 = sub->recv(Deadline(1.0));
    EXPECT_EQ(read(*sub, s2), "more");
    sub->release(s2);
}

TEST(Topic, a_killed_publisher_ends_waits_with_peer_died_after_the_drain) {
    const std::string name = fresh_name("topic-killpub");
    auto heap = make_heap(name);
    SharedMem flag(64);
    auto *ready = flag.as<std::atomic<int>>();
    pid_t pid = fork_child([&] {
        auto h = Heap::attach(name);
        auto pub = TopicPublisher::open(*h, "t", opts(8));
        ready->store(1);
        while (ready->load() != 2)
            std::this_thread::sleep_for(1ms);
        for (std::uint64_t i = 0; i < 5; ++i)
            publish(*pub, payload(i));
        ready->store(3);
        for (;;)
            ::pause();
        return 0;
    });
    while (ready->load() != 1)
        std::this_thread::sleep_for(1ms);
    auto sub = TopicSubscriber::open(*heap, "t");
    ready->store(2);
    while (ready->load() != 3)
        std::this_thread::sleep_for(1ms);
    ::kill(pid, SIGKILL);
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    for (std::uint64_t i = 0; i < 5; ++i) {
        TopicSample s = sub->recv(Deadline(2.0));
        EXPECT_EQ(read(*sub, s), payload(i));
        sub->release(s);
    }
    EXPECT_THROW((void)sub->recv(Deadline(10.0)), PeerDied); // not Timeout
}

TEST(Topic, a_killed_subscriber_is_reaped_and_stops_blocking_the_publisher) {
    const std::string name = fresh_name("topic-killsub");
    auto heap = make_heap(name);
    const auto base = used(*heap);
    {
        auto pub = TopicPublisher::open(*heap, "t", opts(2));
        SharedMem flag(64);
        auto *st = flag.as<std::atomic<int>>();
        pid_t pid = fork_child([&] {
            auto h = Heap::attach(name);
            auto sub = TopicSubscriber::open(*h, "t");
            st->store(1);
            std::vector<TopicSample> keep;
            keep.push_back(sub->recv(Deadline(5.0))); // holds one sample, then dies
            st->store(2);
            for (;;)
                ::pause();
            return 0;
        });
        while (st->load() != 1)
            std::this_thread::sleep_for(1ms);
        publish(*pub, std::string(100000, 'x'));
        while (st->load() != 2)
            std::this_thread::sleep_for(1ms);
        publish(*pub, "b");
        publish(*pub, "c"); // the child's queue is full now
        ::kill(pid, SIGKILL);
        EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
        publish(*pub, "d", 10.0); // the dead subscriber is reaped while we wait (no Timeout)
        EXPECT_EQ(pub->subscribers(), 0u);
        pub->close();
    }
    EXPECT_TRUE(remove_topic(*heap, "t"));
    EXPECT_EQ(used(*heap), base) << "the dead subscriber's reference was released";
}

TEST(Topic, scribbled_shared_memory_is_corrupt_segment) {
    auto heap = make_heap(fresh_name("topic-corrupt"));
    auto pub = TopicPublisher::open(*heap, "t", opts(4));
    auto sub = TopicSubscriber::open(*heap, "t");
    publish(*pub, "a");
    auto info = heap->find_named("t");
    ASSERT_TRUE(info);
    auto *ctl = static_cast<TopicControl *>(heap->to_ptr(info->offset));
    // A ring slot that does not hold its sample.
    auto *ring = reinterpret_cast<TopicSlot *>(ctl + 1);
    const std::uint64_t saved = ring[0].seq.load();
    ring[0].seq.store(12345);
    EXPECT_THROW((void)sub->recv(Deadline(1.0)), CorruptSegment);
    ring[0].seq.store(saved);
    // A sample header offset pointing into the middle of nowhere.
    const std::uint64_t hs = ring[0].sample.load();
    ring[0].sample.store(hs + 8);
    EXPECT_THROW((void)sub->recv(Deadline(1.0)), CorruptSegment);
    ring[0].sample.store(hs);
    // A cursor far outside the ring.
    auto *subs = reinterpret_cast<SubscriberSlot *>(reinterpret_cast<std::byte *>(ctl) +
                                                    sub->geometry().subs_offset);
    const std::uint64_t cur = subs[0].cursor.load();
    subs[0].cursor.store(cur + 1000000);
    EXPECT_THROW(publish(*pub, "b"), CorruptSegment);
    subs[0].cursor.store(cur);
    TopicSample s = sub->recv(Deadline(1.0));
    sub->release(s);
    // Geometry: a new handle refuses the topic.
    const std::uint32_t slots = ctl->slots;
    ctl->slots = 1u << 30;
    EXPECT_THROW((void)TopicSubscriber::open(*heap, "t"), CorruptSegment);
    ctl->slots = slots;
    ctl->magic ^= 1;
    EXPECT_THROW((void)TopicSubscriber::open(*heap, "t"), CorruptSegment);
    ctl->magic ^= 1;
}

TEST(Topic, threads_publish_and_receive_concurrently) {
    auto heap = make_heap(fresh_name("topic-threads"));
    const auto base = used(*heap);
    constexpr std::uint64_t kN = 3000;
    {
        auto pub = TopicPublisher::open(*heap, "t", opts(8, 2));
        std::vector<std::unique_ptr<TopicSubscriber>> subs;
        for (int i = 0; i < 3; ++i)
            subs.push_back(TopicSubscriber::open(*heap, "t"));
        std::atomic<int> errors{0};
        std::vector<std::thread> threads;
        for (auto &sp : subs) {
            threads.emplace_back([&, s = sp.get()] {
                std::vector<TopicSample> keep;
                try {
                    for (std::uint64_t i = 0;; ++i) {
                        TopicSample x = s->recv(Deadline(20.0));
                        if (x.seq != i || read(*s, x) != payload(i))
                            errors.fetch_add(1);
                        keep.push_back(x);
                        if (keep.size() > 3) {
                            s->release(keep.front());
                            keep.erase(keep.begin());
                        }
                    }
                } catch (const EndOfStream &) {
                }
                for (auto &k : keep)
                    s->release(k);
            });
        }
        for (std::uint64_t i = 0; i < kN; ++i)
            publish(*pub, payload(i), 20.0);
        pub->close();
        for (auto &t : threads)
            t.join();
        EXPECT_EQ(errors.load(), 0);
    }
    EXPECT_TRUE(remove_topic(*heap, "t"));
    EXPECT_EQ(used(*heap), base);
}

// 1 publisher, 4 subscriber processes; random sizes, random holding, random late joins, both
// overflow policies. Every subscriber checks that what it gets is in order, unduplicated and
// intact (drop_oldest: gaps only where missed says so). Then, with SIGKILLs at random moments
// of some subscribers and of the publisher, nothing leaks.
namespace {

int subscriber_body(const std::string &heap_name, std::uint64_t seed, bool drop, int kill_after) {
    auto h = Heap::attach(heap_name);
    auto sub = TopicSubscriber::open(*h, "fuzz");
    std::mt19937_64 rng(seed);
    std::vector<TopicSample> keep;
    std::uint64_t expect = kNoSeq;
    int got = 0;
    try {
        for (;;) {
            TopicSample s = sub->recv(Deadline(30.0));
            if (expect != kNoSeq) {
                if (!drop && s.seq != expect)
                    return 10;
                if (drop && s.seq < expect)
                    return 11;
            }
            if (read(*sub, s) != payload(s.seq))
                return 12;
            expect = s.seq + 1;
            keep.push_back(s);
            const std::size_t hold = rng() % 6;
            while (keep.size() > hold) {
                const std::size_t k = rng() % keep.size();
                sub->release(keep[k]);
                keep.erase(keep.begin() + static_cast<std::ptrdiff_t>(k));
            }
            if (rng() % 64 == 0)
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
            if (kill_after >= 0 && ++got == kill_after)
                ::raise(SIGKILL); // dies holding what it holds
        }
    } catch (const EndOfStream &) {
    }
    for (auto &k : keep)
        sub->release(k);
    if (drop && sub->missed() + 0 > 1000000)
        return 13;
    return 0;
}

void fuzz_round(bool drop, bool kills, std::uint64_t seed) {
    const std::string name = fresh_name(drop ? "topic-fuzz-drop" : "topic-fuzz-block");
    auto heap = make_heap(name, 32 << 20);
    const auto base = used(*heap);
    std::mt19937_64 rng(seed);
    {
        auto pub = TopicPublisher::open(
            *heap, "fuzz",
            opts(4 + rng() % 8, rng() % 4, drop ? Overflow::DropOldest : Overflow::Block));
        constexpr std::uint64_t kN = 4000;
        std::vector<pid_t> kids;
        std::vector<int> expect_code;
        for (int i = 0; i < 4; ++i) {
            const int kill_after = kills && i % 2 == 0 ? 1 + static_cast<int>(rng() % 500) : -1;
            const std::uint64_t s = rng();
            kids.push_back(fork_child([&] { return subscriber_body(name, s, drop, kill_after); }));
            expect_code.push_back(kill_after >= 0 ? 128 + SIGKILL : 0);
        }
        // Let them subscribe (a late one may miss the first samples: that is fine).
        const auto t0 = std::chrono::steady_clock::now();
        while (pub->subscribers() < 4 && std::chrono::steady_clock::now() - t0 < 10s)
            std::this_thread::sleep_for(1ms);
        for (std::uint64_t i = 0; i < kN; ++i) {
            const std::string p = payload(i);
            if (rng() % 2 == 0) {
                publish(*pub, p, 30.0);
            } else {
                const std::uint64_t off = heap->allocate(p.size());
                std::memcpy(heap->to_ptr(off), p.data(), p.size());
                pub->publish_block(off, p.size(), {}, Deadline(30.0));
            }
        }
        pub->close();
        for (std::size_t i = 0; i < kids.size(); ++i) {
            const int code = wait_child(kids[i]);
            if (expect_code[i] == 0)
                EXPECT_EQ(code, 0) << "subscriber " << i;
            else
                EXPECT_TRUE(code == 0 || code == 128 + SIGKILL)
                    << "subscriber " << i << ": " << code;
        }
    }
    EXPECT_TRUE(remove_topic(*heap, "fuzz"));
    EXPECT_EQ(used(*heap), base) << "no block leaked";
    heap->check_invariants();
}

} // namespace

TEST(TopicFuzz, one_publisher_four_subscriber_processes_block) {
    fuzz_round(false, false, 1);
}

TEST(TopicFuzz, one_publisher_four_subscriber_processes_drop_oldest) {
    fuzz_round(true, false, 2);
}

TEST(TopicFuzz, subscribers_killed_at_random_moments_leak_nothing) {
    fuzz_round(false, true, 3);
    fuzz_round(true, true, 4);
}

TEST(TopicFuzz, a_publisher_killed_at_random_moments_leaks_nothing) {
    const std::string name = fresh_name("topic-fuzz-killpub");
    auto heap = make_heap(name, 32 << 20);
    const auto base = used(*heap);
    std::mt19937_64 rng(5);
    for (int round = 0; round < 6; ++round) {
        {
            // The topic exists before the subscribers come.
            auto p = TopicPublisher::open(*heap, "fuzz", opts(4, 2));
        }
        SharedMem flag(64);
        auto *go = flag.as<std::atomic<int>>();
        const std::uint64_t kill_us = rng() % 20000;
        pid_t pub = fork_child([&] {
            auto h = Heap::attach(name);
            auto p = TopicPublisher::open(*h, "fuzz", opts(4, 2));
            while (go->load() == 0)
                std::this_thread::sleep_for(100us);
            for (std::uint64_t i = 0;; ++i) {
                const std::string s = payload(i);
                const std::uint64_t off = h->allocate(s.size());
                std::memcpy(h->to_ptr(off), s.data(), s.size());
                p->publish_block(off, s.size(), {}, Deadline(30.0));
            }
            return 0;
        });
        std::vector<pid_t> subs;
        for (int i = 0; i < 2; ++i) {
            subs.push_back(fork_child([&] {
                auto h = Heap::attach(name);
                auto s = TopicSubscriber::open(*h, "fuzz");
                go->fetch_add(1);
                try {
                    for (;;) {
                        TopicSample x = s->recv(Deadline(30.0));
                        if (read(*s, x) != payload(x.seq))
                            return 12;
                        s->release(x);
                    }
                } catch (const PeerDied &) {
                    return 0;
                }
                return 14;
            }));
        }
        while (go->load() < 2)
            std::this_thread::sleep_for(100us);
        std::this_thread::sleep_for(std::chrono::microseconds(kill_us));
        ::kill(pub, SIGKILL);
        EXPECT_EQ(wait_child(pub), 128 + SIGKILL);
        for (pid_t s : subs)
            EXPECT_EQ(wait_child(s), 0);
        heap->reap_dead_clients();
        EXPECT_TRUE(remove_topic(*heap, "fuzz"));
        EXPECT_EQ(used(*heap), base) << "round " << round;
    }
    heap->check_invariants();
}

TEST(Topic, a_publisher_killed_between_moving_the_header_and_the_data_leaks_nothing) {
    // publish_locked moves a sample's two blocks to the heap one after the other; killed between
    // the two, one is reclaimed by the topic's recovery (the header, announced in inflight) and
    // the other by the heap's reaping of the dead client (the data): both, each exactly once.
    const std::string name = fresh_name("topic-killmove");
    auto heap = make_heap(name);
    const auto base = used(*heap);
    {
        auto p = TopicPublisher::open(*heap, "t", opts(8)); // the topic exists first
    }
    {
        auto sub = TopicSubscriber::open(*heap, "t");
        pid_t pid = fork_child([&] {
            auto h = Heap::attach(name);
            auto p = TopicPublisher::open(*h, "t", opts(8));
            arm_crash_point("topic.publish.header_held", 3); // the third publish dies there
            for (std::uint64_t i = 0; i < 3; ++i) {
                const std::string s = payload(i);
                const std::uint64_t off = h->allocate(s.size());
                std::memcpy(h->to_ptr(off), s.data(), s.size());
                p->publish_block(off, s.size(), {}, Deadline(5.0));
            }
            return 20; // the crash point was not reached
        });
        EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
        heap->reap_dead_clients();
        for (std::uint64_t i = 0; i < 2; ++i) {
            TopicSample s = sub->recv(Deadline(5.0)); // takes the topic lock over: recovery
            EXPECT_EQ(read(*sub, s), payload(i));
            sub->release(s);
        }
        EXPECT_THROW((void)sub->recv(Deadline(10.0)), PeerDied); // the half-published one is gone
    }
    EXPECT_TRUE(remove_topic(*heap, "t"));
    EXPECT_EQ(used(*heap), base) << "the half-published sample's blocks were both freed";
    heap->check_invariants();
}

TEST(Topic, a_publish_while_another_process_holds_the_heap_lock_is_bounded) {
    // A stopped holder of the heap lock: a try publish is "not now" (false, never a Timeout and
    // never a hang with the GIL held); a blocking publish is Timeout at its deadline; once the
    // holder is gone its lock is recovered and publishing goes on.
    const std::string name = fresh_name("topic-heaplock");
    auto heap = make_heap(name);
    auto pub = TopicPublisher::open(*heap, "t", opts(8));
    auto sub = TopicSubscriber::open(*heap, "t");
    const std::uint64_t blk = heap->allocate(5000); // before the lock is taken
    SharedMem flag(64);
    auto *st = flag.as<std::atomic<int>>();
    pid_t pid = fork_child([&] {
        auto h = Heap::attach(name);
        h->hold_lock_for_tests();
        st->store(1);
        for (;;)
            ::pause();
        return 0;
    });
    while (st->load() != 1)
        std::this_thread::sleep_for(1ms);
    const std::string big(20000, 'y'); // larger than any per-thread cache class
    bool ok = true;
    EXPECT_NO_THROW(ok = pub->try_publish_bytes(big.data(), big.size(), {}));
    EXPECT_FALSE(ok);
    EXPECT_THROW(publish(*pub, big, 0.2), Timeout);
    ::kill(pid, SIGKILL);
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    EXPECT_TRUE(pub->try_publish_bytes(big.data(), big.size(), {}));
    EXPECT_TRUE(pub->try_publish_block(blk, 5000, {}));
    TopicSample a = sub->recv(Deadline(5.0));
    EXPECT_EQ(read(*sub, a), big);
    sub->release(a);
    TopicSample b = sub->recv(Deadline(5.0));
    EXPECT_EQ(b.length, 5000u);
    sub->release(b);
    pub->close();
}
