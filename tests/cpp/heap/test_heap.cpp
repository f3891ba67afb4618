// The shared heap, Boost.Interprocess-style: exhaust it, free in direct / inverse / mixed order,
// and interrogate it (check_invariants, free_bytes, all_freed); then threads and processes.
#include "ipc_core/base/errors.hpp"
#include "ipc_core/heap/heap.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <random>
#include <signal.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace shmipc;

namespace {

std::string fresh(const char *tag) {
    static int n = 0;
    return "shmipc-test-cppheap-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}

HeapOptions opts(std::size_t size, bool cache = false) {
    HeapOptions o;
    o.size = size;
    o.thread_cache = cache;
    return o;
}

// Allocates blocks of varying sizes until the heap is exhausted.
std::vector<std::uint64_t> exhaust(Heap &h) {
    std::vector<std::uint64_t> blocks;
    for (std::size_t i = 0;; ++i) {
        try {
            blocks.push_back(h.allocate(1 + (i * 37) % 3000));
        } catch (const OutOfMemory &) {
            break;
        }
    }
    return blocks;
}

void fill(Heap &h, std::uint64_t off, std::size_t n, unsigned char v) {
    std::memset(h.to_ptr(off), v, n);
}

} // namespace

TEST(Heap, exhausting_and_freeing_in_direct_order_restores_everything) {
    auto h = Heap::anonymous(opts(1 << 20));
    const auto free0 = h->free_bytes();
    auto blocks = exhaust(*h);
    ASSERT_GT(blocks.size(), 100u);
    h->check_invariants();
    for (auto b : blocks)
        h->deallocate(b);
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
    EXPECT_EQ(h->free_bytes(), free0);
}

TEST(Heap, exhausting_and_freeing_in_inverse_order_restores_everything) {
    auto h = Heap::anonymous(opts(1 << 20));
    const auto free0 = h->free_bytes();
    auto blocks = exhaust(*h);
    std::reverse(blocks.begin(), blocks.end());
    for (auto b : blocks)
        h->deallocate(b);
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
    EXPECT_EQ(h->free_bytes(), free0);
}

TEST(Heap, exhausting_and_freeing_in_mixed_order_restores_everything) {
    auto h = Heap::anonymous(opts(1 << 20));
    const auto free0 = h->free_bytes();
    auto blocks = exhaust(*h);
    std::mt19937 rng(7);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        h->deallocate(blocks[i]);
        if (i % 97 == 0)
            h->check_invariants();
    }
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
    EXPECT_EQ(h->free_bytes(), free0);
}

TEST(Heap, exhausting_then_refilling_the_holes_works_many_times) {
    auto h = Heap::anonymous(opts(1 << 20, true));
    for (int round = 0; round < 3; ++round) {
        auto blocks = exhaust(*h);
        for (std::size_t i = 0; i < blocks.size(); i += 2)
            h->deallocate(blocks[i]);
        h->check_invariants();
        for (std::size_t i = 1; i < blocks.size(); i += 2)
            h->deallocate(blocks[i]);
        h->flush_thread_caches();
        h->check_invariants();
        EXPECT_TRUE(h->all_freed());
    }
}

TEST(Heap, blocks_do_not_overlap_and_keep_their_contents) {
    auto h = Heap::anonymous(opts(4 << 20));
    std::vector<std::pair<std::uint64_t, std::size_t>> blocks;
    for (std::size_t i = 0; i < 500; ++i) {
        std::size_t n = 1 + (i * 131) % 5000;
        auto off = h->allocate(n);
        EXPECT_GE(h->block_capacity(off), n);
        fill(*h, off, n, static_cast<unsigned char>(i));
        blocks.emplace_back(off, n);
    }
    h->check_invariants(); // a write past a block would have broken a header
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        auto *p = static_cast<unsigned char *>(h->to_ptr(blocks[i].first));
        for (std::size_t k = 0; k < blocks[i].second; ++k)
            ASSERT_EQ(p[k], static_cast<unsigned char>(i));
    }
}

TEST(Heap, alignment_is_honoured_up_to_a_page) {
    auto h = Heap::anonymous(opts(4 << 20));
    for (std::size_t align : {1, 8, 64, 128, 256, 1024, 4096}) {
        for (int i = 0; i < 20; ++i) {
            auto off = h->allocate(1 + i * 100, align);
            EXPECT_EQ(reinterpret_cast<std::uintptr_t>(h->to_ptr(off)) % align, 0u) << align;
        }
    }
    h->check_invariants();
    EXPECT_THROW((void)h->allocate(8, 3), InvalidArgument);
    EXPECT_THROW((void)h->allocate(8, 8192), InvalidArgument);
}

TEST(Heap, zero_bytes_and_bad_frees_are_refused_without_damage) {
    auto h = Heap::anonymous(opts(1 << 20));
    EXPECT_THROW((void)h->allocate(0), InvalidArgument);
    auto off = h->allocate(100);
    EXPECT_THROW(h->deallocate(off + 64), InvalidArgument);
    EXPECT_THROW(h->deallocate(3), InvalidArgument);
    EXPECT_THROW(h->deallocate(std::uint64_t{5} << kSegmentShift), InvalidArgument);
    h->deallocate(off);
    EXPECT_THROW(h->deallocate(off), InvalidArgument); // double free
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, out_of_memory_message_is_precise_and_the_heap_stays_usable) {
    auto h = Heap::anonymous(opts(1 << 20));
    auto big = h->allocate(600 << 10);
    try {
        (void)h->allocate(600 << 10);
        FAIL() << "expected OutOfMemory";
    } catch (const OutOfMemory &e) {
        std::string m = e.what();
        EXPECT_NE(m.find("cannot allocate 614400 bytes"), std::string::npos) << m;
        EXPECT_NE(m.find("free"), std::string::npos) << m;
        EXPECT_NE(m.find("largest free block"), std::string::npos) << m;
    }
    h->deallocate(big);
    auto again = h->allocate(600 << 10);
    h->deallocate(again);
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, stats_count_used_free_and_allocations) {
    auto h = Heap::anonymous(opts(1 << 20));
    auto s0 = h->stats();
    EXPECT_EQ(s0.allocations, 0u);
    EXPECT_EQ(s0.segments, 1u);
    auto a = h->allocate(1000);
    auto b = h->allocate(10);
    auto s1 = h->stats();
    EXPECT_EQ(s1.allocations, 2u);
    EXPECT_EQ(s1.used, 1024u + 64u);
    EXPECT_EQ(s1.used + s1.free, s0.free);
    h->deallocate(a);
    h->deallocate(b);
    EXPECT_EQ(h->stats().free, s0.free);
}

TEST(Heap, thread_cache_reuses_blocks_without_losing_them) {
    auto h = Heap::anonymous(opts(1 << 20, true));
    auto a = h->allocate(64);
    h->deallocate(a);
    auto b = h->allocate(64);
    EXPECT_EQ(a, b); // served from the cache
    h->deallocate(b);
    EXPECT_FALSE(h->all_freed()); // still cached
    EXPECT_GT(h->stats().cached, 0u);
    h->flush_thread_caches();
    EXPECT_TRUE(h->all_freed());
    h->check_invariants();
}

TEST(Heap, named_heap_grows_by_extension_segments_up_to_max_size) {
    HeapOptions o = opts(1 << 20);
    o.max_size = 4 << 20;
    auto name = fresh("grow");
    auto h = Heap::create(name, o);
    auto other = Heap::attach(name, false);
    std::vector<std::uint64_t> blocks;
    for (int i = 0; i < 6; ++i)
        blocks.push_back(h->allocate(500 << 10));
    EXPECT_GT(h->stats().segments, 1u);
    // The other handle maps the new segments lazily and sees the same bytes.
    for (auto b : blocks)
        fill(*h, b, 100, 0xAB);
    for (auto b : blocks)
        EXPECT_EQ(*static_cast<unsigned char *>(other->to_ptr(b)), 0xAB);
    // Frees from the other handle work across segments.
    for (auto b : blocks)
        other->deallocate(b);
    EXPECT_THROW((void)h->allocate(5 << 20), OutOfMemory);
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
    other.reset();
    h.reset();
    EXPECT_NE(::access(("/dev/shm/" + name + ".1").c_str(), F_OK), 0);
}

TEST(Heap, anonymous_heap_refuses_growth) {
    HeapOptions o = opts(1 << 20);
    o.max_size = 2 << 20;
    EXPECT_THROW(Heap::anonymous(o), InvalidArgument);
}

TEST(Heap, named_objects_are_created_once_and_listed_by_kind) {
    auto h = Heap::anonymous(opts(1 << 20));
    int runs = 0;
    auto [off, created] = h->find_or_create_named("state", 100, [&](void *p) {
        ++runs;
        std::memset(p, 7, 100);
    });
    EXPECT_TRUE(created);
    auto [off2, created2] = h->find_or_create_named("state", 100, [&](void *) { ++runs; });
    EXPECT_FALSE(created2);
    EXPECT_EQ(off, off2);
    EXPECT_EQ(runs, 1);
    (void)h->find_or_create_named("ch0", 64, {}, kNamedChannel);
    EXPECT_EQ(h->list_named(kNamedChannel).size(), 1u);
    EXPECT_EQ(h->list_named().size(), 2u);
    EXPECT_EQ(h->owner_of(off), kOwnerHeld);
    EXPECT_THROW(h->find_or_create_named("state", 100, {}, kNamedChannel), InvalidArgument);
    EXPECT_THROW(h->find_or_create_named("state", 1000, {}), InvalidArgument);
    EXPECT_TRUE(h->remove_named("state"));
    EXPECT_FALSE(h->find_named("state"));
}

TEST(Heap, named_object_whose_init_throws_is_removed) {
    auto h = Heap::anonymous(opts(1 << 20));
    EXPECT_THROW(h->find_or_create_named("x", 10, [](void *) { throw std::runtime_error("no"); }),
                 std::runtime_error);
    EXPECT_FALSE(h->find_named("x"));
    auto [off, created] = h->find_or_create_named("x", 10, {});
    EXPECT_TRUE(created);
    (void)off;
}

TEST(Heap, transfer_changes_the_owner_and_held_blocks_survive_their_allocator) {
    HeapOptions o = opts(1 << 20);
    auto name = fresh("xfer");
    auto h = Heap::create(name, o);
    auto a = Heap::attach(name, false);
    auto held = a->allocate(100);
    auto mine = a->allocate(100);
    a->transfer(held, kOwnerHeld);
    EXPECT_EQ(h->owner_of(held), kOwnerHeld);
    EXPECT_FALSE(h->try_transfer(held, a->client_id(), h->client_id()));
    a.reset(); // like a death: its own blocks go back, the held one stays
    EXPECT_THROW(h->deallocate(mine), InvalidArgument);
    EXPECT_TRUE(h->try_transfer(held, kOwnerHeld, h->client_id()));
    h->deallocate(held);
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, threads_allocate_and_free_concurrently_without_corruption) {
    auto h = Heap::anonymous(opts(8 << 20, true));
    constexpr int kThreads = 4;
    std::atomic<int> ready{0};
    std::vector<std::thread> ts;
    std::atomic<bool> bad{false};
    for (int t = 0; t < kThreads; ++t) {
        ts.emplace_back([&, t] {
            std::mt19937 rng(t);
            std::vector<std::pair<std::uint64_t, unsigned char>> live;
            ready.fetch_add(1);
            while (ready.load() < kThreads) {
            }
            for (int i = 0; i < 20000; ++i) {
                if (live.size() < 50 && (rng() % 3 != 0 || live.empty())) {
                    std::size_t n = 1 + rng() % (rng() % 8 == 0 ? 20000 : 500);
                    try {
                        auto off = h->allocate(n);
                        auto v = static_cast<unsigned char>(rng());
                        *static_cast<unsigned char *>(h->to_ptr(off)) = v;
                        live.emplace_back(off, v);
                    } catch (const OutOfMemory &) {
                    }
                } else {
                    std::size_t k = rng() % live.size();
                    if (*static_cast<unsigned char *>(h->to_ptr(live[k].first)) != live[k].second)
                        bad = true;
                    h->deallocate(live[k].first);
                    live[k] = live.back();
                    live.pop_back();
                }
            }
            for (auto &[off, v] : live)
                h->deallocate(off);
        });
    }
    for (auto &t : ts)
        t.join();
    EXPECT_FALSE(bad);
    h->flush_thread_caches();
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, blocks_freed_in_another_thread_than_their_allocator_are_not_lost) {
    auto h = Heap::anonymous(opts(1 << 20, true));
    std::vector<std::uint64_t> blocks;
    for (int i = 0; i < 200; ++i)
        blocks.push_back(h->allocate(64));
    std::thread([&] {
        for (auto b : blocks)
            h->deallocate(b);
    }).join();
    // The exited thread's cache is adopted or flushed: nothing leaks.
    h->flush_thread_caches();
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, processes_allocate_and_free_concurrently_and_a_killed_one_is_reclaimed) {
    HeapOptions o = opts(8 << 20, true);
    auto name = fresh("mp");
    auto h = Heap::create(name, o);
    std::vector<pid_t> kids;
    for (int k = 0; k < 3; ++k) {
        pid_t pid = ::fork();
        if (pid == 0) {
            int rc = 0;
            try {
                auto c = Heap::attach(name);
                std::mt19937 rng(k);
                std::vector<std::uint64_t> live;
                for (int i = 0; i < 20000; ++i) {
                    if (live.size() < 40 && rng() % 2) {
                        live.push_back(c->allocate(1 + rng() % 3000));
                        std::memset(c->to_ptr(live.back()), k, 1);
                    } else if (!live.empty()) {
                        c->deallocate(live.back());
                        live.pop_back();
                    }
                }
                if (k == 2) { // hold blocks and wait to be killed
                    for (int i = 0; i < 10; ++i)
                        live.push_back(c->allocate(10000));
                    std::fprintf(stderr, "");
                    ::pause();
                }
                for (auto b : live)
                    c->deallocate(b);
            } catch (const std::exception &e) {
                std::fprintf(stderr, "child: %s\n", e.what());
                rc = 1;
            }
            ::_exit(rc);
        }
        kids.push_back(pid);
    }
    for (int k = 0; k < 2; ++k) {
        int st = 0;
        ASSERT_EQ(::waitpid(kids[k], &st, 0), kids[k]);
        EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    // Wait (bounded) until the third holds its blocks, then kill it.
    for (int i = 0; i < 500 && h->stats().allocations < 10; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ::kill(kids[2], SIGKILL);
    ::waitpid(kids[2], nullptr, 0);
    h->reap_dead_clients();
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, a_process_killed_inside_the_allocator_does_not_block_the_others) {
    HeapOptions o = opts(1 << 20, false);
    auto name = fresh("robust");
    auto h = Heap::create(name, o);
    auto held = h->allocate(100);
    pid_t pid = ::fork();
    if (pid == 0) {
        auto c = Heap::attach(name, false);
        (void)c->allocate(5000);
        // Simulate dying in the middle: take the heap lock and never give it back.
        auto *ctl = reinterpret_cast<pthread_mutex_t *>(c->base() + sizeof(SegmentHeader) +
                                                        64); // HeapControl::mutex is at offset 64
        ::pthread_mutex_lock(ctl);
        ::raise(SIGKILL);
        ::_exit(3);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    ASSERT_TRUE(WIFSIGNALED(st));
    // The next allocation recovers the lock, and the dead client's block is reclaimed.
    auto b = h->allocate(100);
    h->deallocate(b);
    h->deallocate(held);
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, attach_refuses_garbage_with_corrupt_segment) {
    auto name = fresh("garbage");
    std::string path = "/dev/shm/" + name;
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_EXCL, 0600);
    ASSERT_GE(fd, 0);
    std::vector<char> junk(1 << 16, 'x');
    ASSERT_EQ(::write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
    ::close(fd);
    EXPECT_THROW(Heap::attach(name), CorruptSegment);
    ::unlink(path.c_str());
}

TEST(Heap, blocks_allocated_in_one_thread_and_freed_concurrently_in_another_are_not_lost) {
    auto h = Heap::anonymous(opts(4 << 20, true));
    std::mutex mu;
    std::vector<std::uint64_t> handoff;
    std::atomic<bool> done{false};
    std::thread consumer([&] {
        for (;;) {
            const bool finished = done.load(); // read before taking the batch: nothing is missed
            std::vector<std::uint64_t> batch;
            {
                std::lock_guard g(mu);
                batch.swap(handoff);
            }
            for (auto off : batch) {
                EXPECT_EQ(*static_cast<unsigned char *>(h->to_ptr(off)), 0x5A);
                h->deallocate(off);
            }
            if (batch.empty() && finished)
                break;
        }
    });
    std::mt19937 rng(3);
    for (int i = 0; i < 20000; ++i) {
        std::uint64_t off = 0;
        try {
            off = h->allocate(1 + rng() % 6000);
        } catch (const OutOfMemory &) {
            std::this_thread::yield();
            continue;
        }
        *static_cast<unsigned char *>(h->to_ptr(off)) = 0x5A;
        std::lock_guard g(mu);
        handoff.push_back(off);
    }
    done = true;
    consumer.join();
    h->flush_thread_caches();
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}
