// Per-thread caches: the private part (ThreadCache, ThreadCaches) on its own, then through a heap.
#include "heap/heap_helpers.hpp"
#include "ipc_core/heap/thread_cache.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

using namespace shmipc;
using shmipc::testing::heap_opts;

TEST(ThreadCache, pop_returns_the_blocks_pushed_last_first_and_only_of_their_size) {
    ThreadCache c(1);
    std::uint64_t off = 0;
    EXPECT_FALSE(c.pop(3, off));
    c.push(3, 100);
    c.push(3, 200);
    c.push(4, 300);
    ASSERT_TRUE(c.pop(3, off));
    EXPECT_EQ(off, 200u);
    ASSERT_TRUE(c.pop(3, off));
    EXPECT_EQ(off, 100u);
    EXPECT_FALSE(c.pop(3, off));
    ASSERT_TRUE(c.pop(4, off));
    EXPECT_EQ(off, 300u);
}

TEST(ThreadCache, capacity_is_about_32_KiB_per_size_within_4_to_64_blocks) {
    for (std::uint64_t u = 1; u <= kCacheClasses; ++u) {
        const std::size_t cap = ThreadCache::capacity(u);
        EXPECT_GE(cap, 4u);
        EXPECT_LE(cap, 64u);
        if (cap > 4 && cap < 64) {
            EXPECT_LE(cap * u * kHeapUnit, 32768u);
        }
    }
    ThreadCache c(1);
    for (std::size_t i = 0; i < ThreadCache::capacity(kCacheClasses); ++i) {
        ASSERT_TRUE(c.has_room(kCacheClasses));
        c.push(kCacheClasses, i);
    }
    EXPECT_FALSE(c.has_room(kCacheClasses));
}

TEST(ThreadCache, drain_hands_out_every_block_and_empties_the_cache) {
    ThreadCache c(1);
    c.push(1, 10);
    c.push(65, 20);
    std::vector<std::uint64_t> got;
    c.drain([&](std::uint64_t off) { got.push_back(off); });
    EXPECT_EQ(got, (std::vector<std::uint64_t>{10, 20}));
    std::uint64_t off;
    EXPECT_FALSE(c.pop(1, off));
}

TEST(ThreadCaches, each_thread_gets_its_own_cache_and_keeps_it) {
    ThreadCaches caches;
    ThreadCache *mine = caches.local();
    EXPECT_EQ(caches.local(), mine);
    ThreadCache *other = nullptr;
    std::thread([&] { other = caches.local(); }).join();
    EXPECT_NE(other, mine);
}

TEST(ThreadCaches, two_handles_on_one_thread_have_separate_caches) {
    ThreadCaches a, b;
    ThreadCache *ca = a.local();
    ThreadCache *cb = b.local();
    EXPECT_NE(ca, cb);
    EXPECT_EQ(a.local(), ca); // switching back finds the first again
}

TEST(ThreadCaches, an_exited_threads_cache_is_adopted_with_its_blocks_by_the_next_new_thread) {
    ThreadCaches caches;
    ThreadCache *first = nullptr;
    std::thread([&] {
        first = caches.local();
        first->push(2, 777);
    }).join();
    std::uint64_t off = 0;
    ThreadCache *second = nullptr;
    std::thread([&] {
        second = caches.local();
        EXPECT_TRUE(second->pop(2, off));
    }).join();
    EXPECT_EQ(second, first);
    EXPECT_EQ(off, 777u);
}

TEST(ThreadCaches, flushing_visits_our_cache_and_orphans_but_not_live_threads_caches) {
    ThreadCaches caches;
    caches.local()->push(1, 1);
    std::atomic<bool> release{false};
    std::atomic<bool> ready{false};
    std::thread live([&] {
        caches.local()->push(1, 3);
        ready = true;
        while (!release)
            std::this_thread::yield();
    });
    while (!ready)
        std::this_thread::yield();
    // Started after the live thread took its cache, so nobody adopts this orphan.
    std::thread([&] { caches.local()->push(1, 2); }).join();
    std::vector<std::uint64_t> seen;
    caches.for_flushable(
        false, [&](ThreadCache &c) { c.drain([&](std::uint64_t off) { seen.push_back(off); }); });
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, (std::vector<std::uint64_t>{1, 2}));
    release = true;
    live.join();
    seen.clear();
    caches.for_flushable(
        true, [&](ThreadCache &c) { c.drain([&](std::uint64_t off) { seen.push_back(off); }); });
    EXPECT_EQ(seen, (std::vector<std::uint64_t>{3}));
}

TEST(ThreadCaches, drop_all_forgets_every_block_and_later_use_starts_empty) {
    ThreadCaches caches;
    caches.local()->push(5, 50);
    caches.drop_all();
    std::uint64_t off;
    EXPECT_FALSE(caches.local()->pop(5, off));
}

TEST(ThreadCache, a_heap_serves_a_freed_small_block_again_from_the_cache) {
    auto h = Heap::anonymous(heap_opts(1 << 20, true));
    auto a = h->allocate(100);
    h->deallocate(a);
    EXPECT_EQ(h->stats().cached, 2 * kHeapUnit);
    auto b = h->allocate(100);
    EXPECT_EQ(a, b);
    EXPECT_EQ(h->stats().cached, 0u);
    h->deallocate(b);
    // Larger blocks, other alignments and other owners bypass the cache.
    auto big = h->allocate(kCacheMaxBlock + 1);
    h->deallocate(big);
    auto al = h->allocate(10, 256);
    h->deallocate(al);
    auto held = h->allocate_owned(10, 64, kOwnerHeld);
    EXPECT_EQ(h->owner_of(held), kOwnerHeld);
    h->deallocate(held);
    h->flush_thread_caches();
    EXPECT_TRUE(h->all_freed());
    h->check_invariants();
}

TEST(ThreadCache, a_full_cache_frees_through_the_heap) {
    auto h = Heap::anonymous(heap_opts(4 << 20, true));
    const std::size_t cap = ThreadCache::capacity(1);
    std::vector<std::uint64_t> blocks;
    for (std::size_t i = 0; i < cap + 10; ++i)
        blocks.push_back(h->allocate(40));
    for (auto b : blocks)
        h->deallocate(b);
    EXPECT_EQ(h->stats().cached, cap * kHeapUnit);
    h->flush_thread_caches();
    EXPECT_TRUE(h->all_freed());
}

TEST(ThreadCache, closing_a_handle_returns_its_cached_blocks_to_the_heap) {
    auto name = shmipc::testing::fresh_name("tcache-close");
    auto h = Heap::create(name, heap_opts(1 << 20, false));
    {
        auto c = Heap::attach(name, true);
        for (int i = 0; i < 20; ++i)
            c->deallocate(c->allocate(64));
        EXPECT_GT(h->stats().cached, 0u);
    }
    EXPECT_EQ(h->stats().cached, 0u);
    EXPECT_TRUE(h->all_freed());
}
