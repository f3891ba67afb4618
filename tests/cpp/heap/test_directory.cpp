// Named objects of a heap: created once (concurrently, across processes, with dying and stopped
// creators), found lock-free, and every entry checked before anyone gets it.
#include "heap/heap_helpers.hpp"

// GCC 12 at -O2 reports -Wstringop-overflow inside std::atomic<uint32_t>::store when the test
// scribbles an entry it reached through a reinterpret_cast of mapped memory (a known false
// positive of the inlined __atomic_store_4, GCC bug 106199); the region is a real mapping.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#endif

#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <thread>
#include <vector>

using namespace shmipc;
using namespace std::chrono_literals;
using shmipc::testing::control_of;
using shmipc::testing::expect_in_child;
using shmipc::testing::fork_child;
using shmipc::testing::fresh_name;
using shmipc::testing::heap_opts;
using shmipc::testing::must_be_corrupt;
using shmipc::testing::Signal;
using shmipc::testing::wait_child;

namespace {
NamedEntry *entry_named(Heap &h, const char *name) {
    for (auto &e : control_of(h)->named)
        if (std::strcmp(e.name, name) == 0)
            return &e;
    return nullptr;
}
} // namespace

TEST(Directory, names_must_be_1_to_63_bytes_without_nul) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    EXPECT_THROW(h->find_or_create_named("", 8, {}), InvalidArgument);
    EXPECT_THROW(h->find_or_create_named(std::string(64, 'x'), 8, {}), InvalidArgument);
    EXPECT_THROW(h->find_or_create_named(std::string("a\0b", 3), 8, {}), InvalidArgument);
    EXPECT_THROW(h->find_or_create_named("ok", 0, {}), InvalidArgument);
    auto [off, created] = h->find_or_create_named(std::string(63, 'y'), 8, {});
    EXPECT_TRUE(created);
    EXPECT_EQ(h->find_named(std::string(63, 'y'))->offset, off);
    EXPECT_FALSE(h->find_named(std::string(64, 'y')));
    EXPECT_FALSE(h->remove_named(""));
}

TEST(Directory, a_found_object_reports_its_kind_size_and_zeroed_block) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    auto [off, created] = h->find_or_create_named("cfg", 200, {}, 77);
    ASSERT_TRUE(created);
    auto info = h->find_named("cfg");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->name, "cfg");
    EXPECT_EQ(info->kind, 77u);
    EXPECT_EQ(info->offset, off);
    EXPECT_EQ(info->nbytes, 200u);
    EXPECT_GE(h->block_capacity(off), 200u);
    auto *p = static_cast<unsigned char *>(h->to_ptr(off));
    for (int i = 0; i < 200; ++i)
        ASSERT_EQ(p[i], 0);
    // A smaller request finds the same object.
    EXPECT_EQ(h->find_or_create_named("cfg", 100, {}, 77).first, off);
}

TEST(Directory, removing_an_object_frees_its_block) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    (void)h->find_or_create_named("a", 5000, {});
    EXPECT_FALSE(h->all_freed());
    EXPECT_TRUE(h->remove_named("a"));
    EXPECT_FALSE(h->remove_named("a"));
    EXPECT_TRUE(h->all_freed());
    EXPECT_TRUE(h->list_named().empty());
}

TEST(Directory, grows_past_the_control_block_by_pages_with_no_fixed_limit) {
    auto h = Heap::anonymous(heap_opts(8 << 20));
    const std::size_t n = kMaxNamed + 2 * kDirPageEntries + 10; // three overflow pages
    for (std::size_t i = 0; i < n; ++i)
        EXPECT_TRUE(h->find_or_create_named("n" + std::to_string(i), 8, {}).second);
    EXPECT_EQ(h->list_named().size(), n);
    for (std::size_t i = 0; i < n; i += 97) // found again, wherever their entry is
        EXPECT_FALSE(h->find_or_create_named("n" + std::to_string(i), 8, {}).second);
    EXPECT_TRUE(h->remove_named("n7"));
    EXPECT_TRUE(h->remove_named("n" + std::to_string(n - 1)));
    EXPECT_EQ(h->list_named().size(), n - 2);
    EXPECT_TRUE(h->find_or_create_named("one-more", 8, {}).second); // reuses a freed entry
    h->check_invariants();
    // Another handle (a process attaching later) sees the same pages.
    auto fd = UniqueFd(::dup(h->fd()));
    auto g = Heap::from_fd(std::move(fd), false);
    EXPECT_EQ(g->list_named().size(), n - 1);
}

TEST(Directory, a_scribbled_page_link_is_a_corrupt_segment_not_a_crash_or_a_loop) {
    auto h = Heap::anonymous(heap_opts(4 << 20));
    for (std::size_t i = 0; i < kMaxNamed + 1; ++i)
        (void)h->find_or_create_named("n" + std::to_string(i), 8, {});
    auto *ctl = control_of(*h);
    const std::uint64_t page = ctl->dir_next.load();
    ASSERT_NE(page, 0u);
    auto *p = static_cast<DirPage *>(h->to_ptr(page));
    p->next.store(page); // a cycle
    EXPECT_THROW((void)h->find_named("absent"), CorruptSegment);
    p->next.store(0);
    ctl->dir_next.store(12345); // not a block
    EXPECT_THROW((void)h->list_named(), CorruptSegment);
    ctl->dir_next.store(page);
    EXPECT_EQ(h->list_named().size(), kMaxNamed + 1);
}

TEST(Directory, concurrent_creators_run_init_once_and_all_get_the_same_block) {
    auto h = Heap::anonymous(heap_opts(1 << 20, true));
    std::atomic<int> inits{0};
    std::vector<std::uint64_t> offs(8);
    std::vector<std::thread> ts;
    std::atomic<int> ready{0};
    for (int t = 0; t < 8; ++t)
        ts.emplace_back([&, t] {
            ready.fetch_add(1);
            while (ready.load() < 8)
                std::this_thread::yield();
            offs[t] = h->find_or_create_named("shared", 64, [&](void *p) {
                           inits.fetch_add(1);
                           std::this_thread::sleep_for(20ms);
                           *static_cast<int *>(p) = 42;
                       }).first;
        });
    for (auto &t : ts)
        t.join();
    EXPECT_EQ(inits.load(), 1);
    for (auto o : offs)
        EXPECT_EQ(o, offs[0]);
    EXPECT_EQ(*static_cast<int *>(h->to_ptr(offs[0])), 42);
}

TEST(Directory, an_object_whose_creator_dies_during_init_is_created_again) {
    auto name = fresh_name("dir-die");
    auto h = Heap::create(name, heap_opts(1 << 20));
    Signal in_init;
    pid_t pid = fork_child([&] {
        auto c = Heap::attach(name, false);
        (void)c->find_or_create_named("obj", 64, [&](void *) {
            in_init.post();
            ::pause();
        });
        return 3;
    });
    ASSERT_TRUE(in_init.wait());
    // Waiting for the stopped creator times out...
    EXPECT_THROW(h->find_or_create_named("obj", 64, {}, kNamedBlock, 0.3), Timeout);
    ::kill(pid, SIGKILL);
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    // ...its death drops the entry (and the block), and we create it.
    int inits = 0;
    auto [off, created] = h->find_or_create_named("obj", 64, [&](void *) { ++inits; });
    EXPECT_TRUE(created);
    EXPECT_EQ(inits, 1);
    EXPECT_TRUE(h->remove_named("obj"));
    EXPECT_TRUE(h->all_freed());
    (void)off;
}

TEST(Directory, a_waiter_wakes_as_soon_as_the_creator_publishes) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    std::atomic<bool> in_init{false};
    std::thread creator([&] {
        (void)h->find_or_create_named("slow", 8, [&](void *p) {
            in_init = true;
            std::this_thread::sleep_for(100ms);
            *static_cast<char *>(p) = 'x';
        });
    });
    while (!in_init)
        std::this_thread::yield();
    auto [off, created] = h->find_or_create_named("slow", 8, {}, kNamedBlock, 30.0);
    EXPECT_FALSE(created);
    EXPECT_EQ(*static_cast<char *>(h->to_ptr(off)), 'x');
    creator.join();
}

// --- scribbles: a peer wrote garbage into an entry
// ------------------------------------------------

TEST(Directory, an_entry_naming_a_garbage_offset_is_corrupt_for_finders) {
    expect_in_child([] {
        auto h = Heap::anonymous(heap_opts(1 << 20));
        (void)h->find_or_create_named("x", 64, {});
        NamedEntry *e = entry_named(*h, "x");
        int bad = 0;
        for (std::uint64_t off :
             {std::uint64_t{0}, std::uint64_t{8}, std::uint64_t{1} << 39, ~std::uint64_t{0},
              e->offset + 64, std::uint64_t{5} << kSegmentShift}) {
            e->offset = off;
            bad += must_be_corrupt("find_named", [&] { (void)h->find_named("x"); });
            bad += must_be_corrupt("list_named", [&] { (void)h->list_named(); });
            bad += must_be_corrupt("find_or_create_named",
                                   [&] { (void)h->find_or_create_named("x", 64, {}); });
        }
        return bad;
    });
}

TEST(Directory, an_entry_claiming_more_bytes_than_its_block_is_corrupt) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    auto [off, created] = h->find_or_create_named("x", 64, {});
    entry_named(*h, "x")->nbytes = 1 << 30;
    EXPECT_THROW((void)h->find_named("x"), CorruptSegment);
    entry_named(*h, "x")->nbytes = h->block_capacity(off);
    EXPECT_TRUE(h->find_named("x")); // exactly the capacity is fine
}

TEST(Directory, an_entry_naming_a_freed_block_is_corrupt) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    auto [off, created] = h->find_or_create_named("x", 64, {});
    auto tmp = h->allocate(64);
    entry_named(*h, "x")->offset = tmp;
    h->deallocate(tmp);
    EXPECT_THROW((void)h->find_named("x"), CorruptSegment);
    (void)off;
}

TEST(Directory, an_entry_without_a_terminated_name_or_with_a_garbage_state_is_corrupt) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    (void)h->find_or_create_named("x", 64, {});
    NamedEntry *e = entry_named(*h, "x");
    std::memset(e->name, 'x', sizeof e->name); // no NUL: list must not read past it
    EXPECT_THROW((void)h->list_named(), CorruptSegment);
    e->name[1] = '\0';
    EXPECT_EQ(h->list_named().size(), 1u);
    e->state.store(12345);
    EXPECT_FALSE(h->find_named("x")); // not Ready: finders skip it
    EXPECT_THROW((void)h->find_or_create_named("y", 8, {}), CorruptSegment);
    EXPECT_THROW((void)h->remove_named("y"), CorruptSegment);
}

TEST(Directory, an_init_entry_with_a_garbage_creator_is_dropped_by_the_reaper) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    (void)h->find_or_create_named("x", 64, {});
    NamedEntry *e = entry_named(*h, "x");
    e->state.store(kNamedInit);
    e->creator = 60000; // no such client: its init never finishes
    // The waiter reaps between slices; reaping needs a dead client to look at the directory.
    pid_t pid = fork_child([&] {
        auto c = Heap::from_fd(UniqueFd(::dup(h->fd())), false);
        (void)c->allocate(64);
        ::raise(SIGKILL);
        return 0;
    });
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    EXPECT_TRUE(h->find_or_create_named("x", 64, {}, kNamedBlock, 5.0).second);
}
