// A heap's private geometry: what attach validates (every field of the control block a peer
// could have scribbled over) and how offsets from callers and from shared memory are checked.
#include "heap/heap_helpers.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <vector>

using namespace shmipc;
using shmipc::testing::control_of;
using shmipc::testing::fresh_name;
using shmipc::testing::heap_opts;

namespace {

struct Scribble {
    const char *what;
    std::function<void(HeapControl &, std::size_t size)> apply;
};

const std::vector<Scribble> &scribbles() {
    static const std::vector<Scribble> s = {
        {"magic", [](HeapControl &c, std::size_t) { c.magic ^= 1; }},
        {"layout", [](HeapControl &c, std::size_t) { c.layout = 1; }},
        {"segment size", [](HeapControl &c, std::size_t) { c.segs[0].size += 4096; }},
        {"arena begin", [](HeapControl &c, std::size_t) { c.segs[0].arena_begin = 0; }},
        {"arena end past the segment",
         [](HeapControl &c, std::size_t size) { c.segs[0].arena_end = size + kHeapUnit; }},
        {"empty arena",
         [](HeapControl &c, std::size_t) { c.segs[0].arena_end = c.segs[0].arena_begin; }},
        {"ragged arena", [](HeapControl &c, std::size_t) { c.segs[0].arena_end -= 8; }},
        {"max_size below size", [](HeapControl &c, std::size_t size) { c.max_size = size - 1; }},
        {"huge max_size", [](HeapControl &c, std::size_t) { c.max_size = std::uint64_t{1} << 62; }},
        {"mode", [](HeapControl &c, std::size_t) { c.mode = 0100000; }},
        {"persistent flag", [](HeapControl &c, std::size_t) { c.persistent = 7; }},
        {"segment count 0", [](HeapControl &c, std::size_t) { c.segment_count.store(0); }},
        {"segment count 65", [](HeapControl &c, std::size_t) { c.segment_count.store(65); }},
        {"segment count all ones",
         [](HeapControl &c, std::size_t) { c.segment_count.store(0xFFFFFFFF); }},
        {"lock word garbage", [](HeapControl &c, std::size_t) { c.lock.word.store(0x12345); }},
        {"lock word poisoned", [](HeapControl &c, std::size_t) { c.lock.word.store(kPoisoned); }},
        {"client table capacity",
         [](HeapControl &c, std::size_t) { c.client_header.capacity = 5; }},
        {"client table layout", [](HeapControl &c, std::size_t) { c.client_header.layout = 9; }},
    };
    return s;
}

} // namespace

TEST(Segments, attaching_an_anonymous_heap_with_any_scribbled_field_is_corrupt_segment) {
    for (const Scribble &s : scribbles()) {
        auto h = Heap::anonymous(heap_opts(1 << 20));
        HeapControl saved;
        std::memcpy(static_cast<void *>(&saved), control_of(*h), sizeof saved);
        s.apply(*control_of(*h), h->primary_size());
        EXPECT_THROW(Heap::from_fd(UniqueFd(::dup(h->fd()))), CorruptSegment) << s.what;
        std::memcpy(static_cast<void *>(control_of(*h)), &saved, sizeof saved);
    }
}

TEST(Segments, an_anonymous_heap_that_claims_extensions_or_growth_is_corrupt) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    control_of(*h)->segment_count.store(2);
    EXPECT_THROW(Heap::from_fd(UniqueFd(::dup(h->fd()))), CorruptSegment);
    control_of(*h)->segment_count.store(1);
    control_of(*h)->max_size *= 2;
    EXPECT_THROW(Heap::from_fd(UniqueFd(::dup(h->fd()))), CorruptSegment);
    control_of(*h)->max_size /= 2;
    control_of(*h)->anonymous = 0; // a named heap's control block in a memfd
    EXPECT_THROW(Heap::from_fd(UniqueFd(::dup(h->fd()))), CorruptSegment);
    control_of(*h)->anonymous = 1;
    EXPECT_NO_THROW(Heap::from_fd(UniqueFd(::dup(h->fd()))));
}

TEST(Segments, attaching_a_named_heap_with_a_scribbled_control_block_is_corrupt_segment) {
    auto name = fresh_name("seg-named");
    auto h = Heap::create(name, heap_opts(1 << 20));
    const std::uint64_t saved = control_of(*h)->segs[0].arena_end;
    control_of(*h)->segs[0].arena_end = h->primary_size() * 2;
    EXPECT_THROW(Heap::attach(name), CorruptSegment);
    control_of(*h)->segs[0].arena_end = saved;
    control_of(*h)->anonymous = 1;
    EXPECT_THROW(Heap::attach(name), CorruptSegment);
    control_of(*h)->anonymous = 0;
    EXPECT_NO_THROW(Heap::attach(name));
}

TEST(Segments, a_dead_lock_holder_is_not_garbage_at_attach) {
    // A token of a slot that had a client (generation > 0) is a dead holder, recovered later.
    auto h = Heap::anonymous(heap_opts(1 << 20));
    const std::uint32_t token = h->lock_token();
    control_of(*h)->lock.word.store(token ^ (1u << 20)); // same slot, another generation
    EXPECT_NO_THROW(Heap::from_fd(UniqueFd(::dup(h->fd()))));
}

TEST(Segments, to_ptr_accepts_the_segment_and_refuses_everything_else) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    EXPECT_EQ(h->to_ptr(0), static_cast<void *>(h->base()));
    EXPECT_EQ(h->to_ptr(h->primary_size() - 1),
              static_cast<void *>(h->base() + h->primary_size() - 1));
    EXPECT_THROW((void)h->to_ptr(h->primary_size()), InvalidArgument);
    EXPECT_THROW((void)h->to_ptr(std::uint64_t{1} << kSegmentShift), InvalidArgument);
    EXPECT_THROW((void)h->to_ptr(~std::uint64_t{0}), InvalidArgument);
    auto off = h->allocate(10);
    EXPECT_EQ(h->to_offset(h->to_ptr(off)), off);
    int local = 0;
    EXPECT_THROW((void)h->to_offset(&local), InvalidArgument);
}

TEST(Segments, garbage_offsets_from_callers_are_invalid_arguments_never_crashes) {
    auto h = Heap::anonymous(heap_opts(1 << 20));
    auto live = h->allocate(100);
    std::mt19937_64 rng(3);
    for (int i = 0; i < 20000; ++i) {
        std::uint64_t off = rng();
        switch (i % 4) {
        case 0:
            off &= kSegmentOffsetMask; // segment 0
            break;
        case 1:
            off %= h->primary_size(); // inside the mapping
            break;
        case 2:
            off = (off % h->primary_size()) / kHeapUnit * kHeapUnit; // payload aligned
            break;
        default:
            break;
        }
        if (off == live)
            continue;
        EXPECT_THROW(h->deallocate(off), InvalidArgument) << off;
        EXPECT_THROW((void)h->owner_of(off), InvalidArgument) << off;
        EXPECT_THROW(h->transfer(off, kOwnerHeld), InvalidArgument) << off;
    }
    h->deallocate(live);
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}
