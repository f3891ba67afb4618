// The shared heap, Boost.Interprocess-style: exhaust it, free in direct / inverse / mixed order,
// and interrogate it (check_invariants, free_bytes, all_freed); then threads and processes.
#include "heap/heap_helpers.hpp"
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

using shmipc::testing::header_at;

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
        c->hold_lock_for_tests();
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

// --- the robust lock -------------------------------------------------------------------------

namespace {
using shmipc::testing::control_of;
using shmipc::testing::corrupt_or_fine;
using shmipc::testing::expect_in_child;
using shmipc::testing::fork_child;
using shmipc::testing::links_at;
using shmipc::testing::must_be_corrupt;
using shmipc::testing::Signal;
using shmipc::testing::wait_child;

bool name_exists(const std::string &name) {
    return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0;
}
} // namespace

TEST(Heap, a_stopped_process_holding_the_lock_makes_every_locking_call_time_out_not_hang) {
    auto name = fresh("stopped");
    auto h = Heap::create(name, opts(1 << 20, false));
    auto mine = h->allocate(100);
    Signal locked;
    pid_t pid = fork_child([&] {
        auto c = Heap::attach(name, false);
        c->hold_lock_for_tests();
        locked.post();
        ::raise(SIGSTOP);
        return 0;
    });
    ASSERT_TRUE(locked.wait());
    EXPECT_THROW((void)h->allocate(100, Deadline(0.3)), Timeout);
    EXPECT_THROW(h->deallocate(mine, Deadline(0.1)), Timeout);
    EXPECT_THROW((void)h->stats(Deadline(0.1)), Timeout);
    EXPECT_THROW((void)h->free_bytes(Deadline(0.1)), Timeout);
    EXPECT_THROW((void)h->all_freed(Deadline(0.1)), Timeout);
    EXPECT_THROW(h->check_invariants(Deadline(0.1)), Timeout);
    EXPECT_THROW(h->flush_thread_caches(false, Deadline(0.1)), Timeout);
    EXPECT_THROW((void)h->remove_named("x", Deadline(0.1)), Timeout);
    EXPECT_THROW(h->find_or_create_named("x", 8, {}, kNamedBlock, Deadline(0.1)), Timeout);
    EXPECT_THROW((void)h->allocate_owned(10, 64, kOwnerHeld, Deadline(0.1)), Timeout);
    // Attaching never waits for the lock (its reaping only tries it).
    pid_t dead = fork_child([&] {
        auto c = Heap::attach(name, false);
        ::raise(SIGKILL);
        return 0;
    });
    EXPECT_EQ(wait_child(dead), 128 + SIGKILL);
    auto third = Heap::attach(name, false);
    EXPECT_NE(third->client_id(), h->client_id());
    // Lock-free calls still work.
    EXPECT_EQ(h->owner_of(mine), h->client_id());
    EXPECT_FALSE(h->find_named("x"));
    ::kill(pid, SIGKILL);
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    // Its death frees the lock for the next locker, which recovers.
    auto b = h->allocate(100, Deadline(10.0));
    h->deallocate(b);
    h->deallocate(mine);
    third.reset();
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, a_process_killed_holding_the_lock_and_blocks_is_recovered_by_the_next_allocate) {
    auto name = fresh("killed");
    auto h = Heap::create(name, opts(1 << 20, false));
    pid_t pid = fork_child([&] {
        auto c = Heap::attach(name, true);
        for (int i = 0; i < 10; ++i)
            (void)c->allocate(5000);
        c->deallocate(c->allocate(64)); // one cached block too
        c->hold_lock_for_tests();
        ::raise(SIGKILL);
        return 0;
    });
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    auto b = h->allocate(100, Deadline(10.0));
    h->deallocate(b);
    h->check_invariants();
    EXPECT_TRUE(h->all_freed()); // rebuild + reap freed the dead client's blocks
    EXPECT_EQ(h->stats().clients, 1u);
}

TEST(Heap, a_recovery_that_finds_a_broken_chain_poisons_the_lock_for_everyone) {
    expect_in_child([] {
        auto name = fresh("poison");
        auto h = Heap::create(name, opts(1 << 20, false));
        auto a = h->allocate(100);
        pid_t pid = fork_child([&] {
            auto c = Heap::attach(name, false);
            c->hold_lock_for_tests();
            ::raise(SIGKILL);
            return 0;
        });
        if (wait_child(pid) != 128 + SIGKILL)
            return 10;
        header_at(*h, a)->word.store(0xBAD); // the chain itself is broken: nothing to rebuild
        int bad = 0;
        bad += must_be_corrupt("recovering allocate", [&] { (void)h->allocate(64); });
        bad += must_be_corrupt("next allocate", [&] { (void)h->allocate(64, Deadline(5.0)); });
        bad += must_be_corrupt("attach", [&] { (void)Heap::attach(name); });
        h.reset(); // close cannot free through a poisoned lock, and must not hang
        return bad;
    });
}

// --- scribbles: a peer wrote garbage into the heap --------------------------------------------

TEST(Heap, a_scribbled_lock_word_is_corrupt_at_once_not_a_wait) {
    expect_in_child([] {
        auto h = Heap::anonymous(opts(1 << 20, false));
        // Written by another process, as a peer would.
        const int heap_fd = h->fd();
        pid_t pid = fork_child([&] {
            control_of(*h)->lock.word.store(0x12345);
            (void)heap_fd;
            return 0;
        });
        if (wait_child(pid) != 0)
            return 10;
        int bad = 0;
        bad += must_be_corrupt("allocate", [&] { (void)h->allocate(100); });
        bad += must_be_corrupt("stats", [&] { (void)h->stats(); });
        bad += must_be_corrupt("attach", [&] { (void)Heap::from_fd(UniqueFd(::dup(heap_fd))); });
        control_of(*h)->lock.word.store(0);
        return bad;
    });
}

TEST(Heap, a_self_linked_or_out_of_range_free_list_is_corrupt_for_allocate_not_a_spin) {
    for (std::uint64_t which = 0; which < 3; ++which) {
        expect_in_child([which] {
            auto h = Heap::anonymous(opts(1 << 20, false));
            // Three free blocks of 64..80 units in one bin, kept apart by used blocks.
            std::vector<std::uint64_t> big;
            for (std::size_t n : {4000, 4400, 5000}) {
                big.push_back(h->allocate(n));
                (void)h->allocate(10);
            }
            for (auto b : big)
                h->deallocate(b);
            HeapControl *c = control_of(*h);
            const std::uint64_t head = c->bins[33];
            if (head == 0)
                return 10;
            links_at(*h, head)->next = which == 0   ? head
                                       : which == 1 ? std::uint64_t{1} << 39
                                                    : links_at(*h, head)->next | 8;
            int bad = 0;
            bad += must_be_corrupt("allocate", [&] { (void)h->allocate(6000); });
            bad += must_be_corrupt("check_invariants", [&] { h->check_invariants(); });
            return bad;
        });
    }
}

TEST(Heap, a_scribbled_block_word_fails_safely) {
    expect_in_child([] {
        auto h = Heap::anonymous(opts(1 << 20, false));
        auto a = h->allocate(100);
        auto b = h->allocate(100);
        auto c = h->allocate(100);
        header_at(*h, b)->word.store(0xFFFFFFFFFFFFFFFFull);
        int bad = 0;
        try {
            h->deallocate(b); // not a live block any more
            ++bad;
        } catch (const InvalidArgument &) {
        }
        bad += must_be_corrupt("free next to it", [&] { h->deallocate(a); });
        bad += must_be_corrupt("stats", [&] { (void)h->stats(); });
        bad += corrupt_or_fine("free on its other side", [&] { h->deallocate(c); });
        // A size that would run past the arena.
        header_at(*h, b)->word.store(make_word(std::uint64_t{1} << 34, h->client_id(), kUsed));
        bad += must_be_corrupt("walk", [&] { (void)h->free_bytes(); });
        try {
            h->deallocate(b);
            ++bad;
        } catch (const InvalidArgument &) {
        }
        return bad;
    });
}

// --- clients and fork ------------------------------------------------------------------------

TEST(Heap, lock_token_names_a_live_holder_for_a_mutex_of_our_own_in_the_heap) {
    auto h = Heap::anonymous(opts(1 << 20));
    auto other = Heap::from_fd(UniqueFd(::dup(h->fd())), false);
    const std::uint32_t t = h->lock_token();
    EXPECT_NE(t, 0u);
    EXPECT_NE(other->lock_token(), t);
    EXPECT_EQ(h->clients().holder(t), HolderState::Alive);
    EXPECT_EQ(other->clients().holder(t), HolderState::Alive);
    auto off = h->allocate(sizeof(RobustMutexWord));
    auto *w = new (h->to_ptr(off)) RobustMutexWord{};
    RobustMutex m(*w, other->clients(), "dict lock");
    m.lock(other->lock_token(), Deadline(1.0), [] {});
    EXPECT_EQ(m.holder_token(), other->lock_token());
    m.unlock();
    const std::uint32_t gone = other->lock_token();
    other.reset();
    EXPECT_EQ(h->clients().holder(gone), HolderState::Dead);
    h->deallocate(off);
}

TEST(Heap, the_client_table_holds_kMaxClients_handles_and_refuses_one_more) {
    auto h = Heap::anonymous(opts(1 << 20));
    std::vector<std::unique_ptr<Heap>> handles;
    for (std::size_t i = 1; i < kMaxClients; ++i)
        handles.push_back(Heap::from_fd(UniqueFd(::dup(h->fd())), false));
    EXPECT_EQ(h->stats().clients, kMaxClients);
    EXPECT_THROW(Heap::from_fd(UniqueFd(::dup(h->fd())), false), LimitReached);
    handles.pop_back();
    EXPECT_NO_THROW(handles.push_back(Heap::from_fd(UniqueFd(::dup(h->fd())), false)));
}

TEST(Heap, a_forked_child_becomes_a_client_of_its_own_and_leaves_the_parents_blocks_and_names) {
    auto name = fresh("fork");
    auto h = Heap::create(name, opts(1 << 20, true));
    auto parent_block = h->allocate(100);
    const ForkStamp taken;
    const std::uint16_t parent_id = h->client_id();
    expect_in_child([&] {
        int bad = 0;
        const std::uint16_t id = h->client_id(); // first use: registers
        bad += id == parent_id;
        bad += !h->client_alive(parent_id);
        h->deallocate(parent_block, taken); // the parent's: a no-op here
        bad += h->owner_of(parent_block) != parent_id;
        auto mine = h->allocate(100);
        bad += h->owner_of(mine) != id;
        const ForkStamp now;
        h->deallocate(h->allocate(200), now); // taken here: really freed (cached)
        h.reset();                            // frees our blocks, never the parent's or its names
        return bad;
    });
    EXPECT_TRUE(name_exists(name));
    EXPECT_EQ(h->owner_of(parent_block), parent_id);
    EXPECT_EQ(h->client_id(), parent_id);
    h->deallocate(parent_block, taken);
    h->flush_thread_caches();
    EXPECT_TRUE(h->all_freed());
    EXPECT_EQ(h->stats().clients, 1u);
}

TEST(Heap, a_forked_child_that_closes_an_unused_copy_touches_nothing_of_the_parent) {
    auto name = fresh("fork-unused");
    auto h = Heap::create(name, opts(1 << 20, true));
    auto b = h->allocate(100);
    h->deallocate(h->allocate(64)); // cached
    expect_in_child([&] {
        h.reset();
        return 0;
    });
    EXPECT_TRUE(name_exists(name));
    EXPECT_EQ(h->owner_of(b), h->client_id());
    EXPECT_GT(h->stats().cached, 0u);
    EXPECT_EQ(h->stats().clients, 1u);
}

TEST(Heap, a_dead_parent_is_seen_while_its_forked_child_keeps_copies_of_its_descriptors) {
    auto name = fresh("fork-dead-parent");
    auto h = Heap::create(name, opts(1 << 20, false));
    shmipc::testing::SharedMem shm(sizeof(pid_t));
    Signal ready;
    pid_t parent = fork_child([&] {
        auto c = Heap::attach(name, false);
        (void)c->allocate(5000);
        pid_t kid = ::fork();
        if (kid == 0) {
            // fork() returned here only after the child handlers renewed c's fds (without c's
            // locks): say so, then hold the copies.
            reinterpret_cast<std::atomic<pid_t> *>(shm.as<pid_t>())->store(::getpid());
            ::pause();
            ::_exit(0);
        }
        // Wait for the renewal: until then the kid shares c's open file description, and with
        // it c's lock, so c would not look dead yet.
        auto *seen = reinterpret_cast<std::atomic<pid_t> *>(shm.as<pid_t>());
        for (int i = 0; i < 10000 && seen->load() != kid; ++i)
            ::usleep(1000);
        ready.post();
        ::pause();
        return 0;
    });
    ASSERT_TRUE(ready.wait());
    ::kill(parent, SIGKILL);
    EXPECT_EQ(wait_child(parent), 128 + SIGKILL);
    EXPECT_GT(h->reap_dead_clients(Deadline(10.0)), 0u);
    EXPECT_TRUE(h->all_freed());
    ::kill(*shm.as<pid_t>(), SIGKILL);
}

// Back-pressure (API.md §8): a full heap makes allocate_waiting sleep until another client
// frees, then succeed; with nobody freeing it fails with OutOfMemory once the deadline passed.
TEST(Heap, allocate_waiting_gets_memory_another_thread_frees) {
    auto h = Heap::anonymous(opts(1 << 20));
    const std::uint64_t big = h->allocate(700 << 10);
    EXPECT_THROW((void)h->allocate(600 << 10), OutOfMemory);
    std::thread freer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        h->deallocate(big);
    });
    const std::uint64_t got = h->allocate_waiting(600 << 10, 64, Deadline(30.0));
    freer.join();
    EXPECT_NE(got, 0u);
    h->deallocate(got);
    EXPECT_TRUE(h->all_freed());
}

TEST(Heap, allocate_waiting_fails_after_its_deadline_and_at_once_for_the_impossible) {
    auto h = Heap::anonymous(opts(1 << 20));
    const std::uint64_t big = h->allocate(700 << 10);
    const auto t0 = Clock::now();
    EXPECT_THROW((void)h->allocate_waiting(600 << 10, 64, Deadline(0.2)), OutOfMemory);
    EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(190));
    // More than the heap can ever hold: no point in waiting.
    EXPECT_THROW((void)h->allocate_waiting(4 << 20, 64, Deadline::never()), OutOfMemory);
    h->deallocate(big);
}
