// Extension segments: created on demand up to max_size and kMaxSegments, mapped lazily by other
// handles, removed with the primary name; and a peer's garbage in the segment table.
#include "heap/heap_helpers.hpp"
#include "ipc_core/shm/shm_name.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace shmipc;
using shmipc::testing::control_of;
using shmipc::testing::corrupt_or_fine;
using shmipc::testing::expect_in_child;
using shmipc::testing::fresh_name;
using shmipc::testing::heap_opts;
using shmipc::testing::must_be_corrupt;

namespace {
HeapOptions growing(std::size_t size, std::size_t max_size) {
    HeapOptions o = heap_opts(size);
    o.max_size = max_size;
    return o;
}
bool exists(const std::string &name) {
    return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0;
}
} // namespace

TEST(Growth, a_heap_grows_segment_by_segment_up_to_kMaxSegments) {
    auto name = fresh_name("grow-max");
    auto h = Heap::create(name, growing(kMinHeapSize, 64 << 20));
    std::vector<std::uint64_t> blocks;
    for (;;) {
        try {
            blocks.push_back(h->allocate(100 << 10));
        } catch (const OutOfMemory &e) {
            break;
        }
    }
    EXPECT_EQ(h->stats().segments, kMaxSegments);
    EXPECT_TRUE(exists(name + ".63"));
    h->check_invariants();
    for (auto b : blocks)
        h->deallocate(b);
    EXPECT_TRUE(h->all_freed());
    h.reset();
    for (std::size_t i = 1; i < kMaxSegments; ++i)
        EXPECT_FALSE(exists(name + "." + std::to_string(i))) << i;
}

TEST(Growth, a_handle_maps_a_segment_another_process_added_when_it_meets_its_blocks) {
    auto name = fresh_name("grow-lazy");
    auto h = Heap::create(name, growing(1 << 20, 8 << 20));
    auto other = Heap::attach(name, false);
    auto big = h->allocate(900 << 10);
    auto grown = h->allocate(900 << 10); // in segment 1
    ASSERT_EQ(grown >> kSegmentShift, 1u);
    std::memset(h->to_ptr(grown), 0x5C, 100);
    // `other` never mapped segment 1: freeing it there maps it on the way.
    other->deallocate(grown);
    EXPECT_EQ(other->allocate(900 << 10) >> kSegmentShift, 1u);
    other->check_invariants();
    h->deallocate(big);
}

TEST(Growth, growth_stops_once_the_primary_name_is_removed) {
    auto name = fresh_name("grow-unlinked");
    auto h = Heap::create(name, growing(1 << 20, 8 << 20));
    ASSERT_TRUE(unlink_named(name));
    try {
        (void)h->allocate(2 << 20);
        FAIL() << "expected OutOfMemory";
    } catch (const OutOfMemory &e) {
        EXPECT_NE(std::string(e.what()).find("cannot grow"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(exists(name + ".1"));
}

TEST(Growth, leftover_extensions_of_a_dead_heap_are_removed_when_the_name_is_created_again) {
    auto name = fresh_name("grow-leftover");
    {
        MemorySegment stale = MemorySegment::create_named(
            name + ".1", 1 << 16, 0600, SegmentKind::HeapExtension, kHeapLayout, true);
        stale.disown();
    }
    ASSERT_TRUE(exists(name + ".1"));
    auto h = Heap::create(name, growing(1 << 20, 4 << 20));
    EXPECT_FALSE(exists(name + ".1"));
}

TEST(Growth, a_growing_heap_refuses_a_name_that_leaves_no_room_for_extensions) {
    EXPECT_THROW(Heap::create(std::string(199, 'g'), growing(1 << 20, 2 << 20)), InvalidArgument);
}

// --- scribbles: a peer wrote garbage into the segment table
// ---------------------------------------

TEST(Growth, a_garbage_segment_count_is_corrupt_for_every_operation_and_close_stays_bounded) {
    expect_in_child([] {
        auto name = fresh_name("grow-count");
        auto h = Heap::create(name, growing(1 << 20, 4 << 20));
        auto keep = h->allocate(100);
        control_of(*h)->segment_count.store(0xFFFFFFFF);
        int bad = 0;
        bad += must_be_corrupt("stats", [&] { (void)h->stats(); });
        bad += must_be_corrupt("free_bytes", [&] { (void)h->free_bytes(); });
        bad += must_be_corrupt("check_invariants", [&] { h->check_invariants(); });
        bad += must_be_corrupt("allocate (grows)", [&] { (void)h->allocate(2 << 20); });
        bad += must_be_corrupt("attach", [&] { (void)Heap::attach(name); });
        bad += corrupt_or_fine("deallocate", [&] { h->deallocate(keep); });
        h.reset(); // the owner's close: at most kMaxSegments names, never 2^32
        return bad + (exists(name) ? 1 : 0);
    });
}

TEST(Growth, a_count_below_what_we_mapped_is_corrupt) {
    auto name = fresh_name("grow-shrink");
    auto h = Heap::create(name, growing(1 << 20, 4 << 20));
    auto a = h->allocate(900 << 10);
    auto b = h->allocate(900 << 10);
    ASSERT_EQ(h->stats().segments, 2u);
    control_of(*h)->segment_count.store(1);
    EXPECT_THROW((void)h->stats(), CorruptSegment);
    control_of(*h)->segment_count.store(2);
    h->deallocate(a);
    h->deallocate(b);
}

TEST(Growth, garbage_geometry_of_an_extension_is_corrupt_when_it_is_first_mapped) {
    for (int which = 0; which < 5; ++which) {
        auto name = fresh_name("grow-info");
        auto h = Heap::create(name, growing(1 << 20, 8 << 20));
        auto a = h->allocate(900 << 10);
        auto b = h->allocate(900 << 10); // segment 1
        SegmentInfo &info = control_of(*h)->segs[1];
        const SegmentInfo saved = info;
        switch (which) {
        case 0:
            info.size = std::uint64_t{1} << 41;
            break;
        case 1:
            info.size += 4096; // not the file's size
            break;
        case 2:
            info.arena_begin = 0;
            break;
        case 3:
            info.arena_end = info.size + 4096;
            break;
        default:
            info.size = 64 << 20; // past max_size
            break;
        }
        // A new handle maps every segment at attach; one that meets the block later, on use.
        EXPECT_THROW(Heap::attach(name), CorruptSegment) << which;
        info = saved;
        auto late = Heap::attach(name, false);
        late.reset();
        h->deallocate(a);
        h->deallocate(b);
    }
}

TEST(Growth, a_count_naming_a_segment_that_was_never_created_fails_without_a_crash) {
    expect_in_child([] {
        auto name = fresh_name("grow-ghost");
        auto h = Heap::create(name, growing(1 << 20, 8 << 20));
        auto other = Heap::attach(name, false);
        HeapControl *c = control_of(*h);
        c->segs[1] = SegmentInfo{1 << 20, first_header_at(sizeof(SegmentHeader)), 1 << 20};
        c->segment_count.store(2);
        int bad = 0;
        // No file NAME.1: CorruptSegment or ENOENT, never a crash.
        auto expect_error = [&](const char *what, auto &&op) {
            try {
                op();
                std::fprintf(stderr, "%s: no error\n", what);
                ++bad;
            } catch (const CorruptSegment &) {
            } catch (const OsError &e) {
                if (e.err() != ENOENT) {
                    std::fprintf(stderr, "%s: %s\n", what, e.what());
                    ++bad;
                }
            }
        };
        for (auto *hp : {h.get(), other.get()}) {
            expect_error("stats", [&] { (void)hp->stats(); });
            expect_error("to_ptr", [&] { (void)hp->to_ptr(std::uint64_t{1} << kSegmentShift); });
        }
        c->segment_count.store(1);
        return bad;
    });
}
