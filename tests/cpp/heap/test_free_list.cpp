// The allocator's algorithm on its own (no clients, no lock): a formatted arena with a FreeList
// over it. Boost.Interprocess-style exhaust and free in direct / inverse / mixed order with
// check_invariants, then a scribbling peer's damage to links, words and sizes.
#include "ipc_core/base/errors.hpp"
#include "ipc_core/heap/free_list.hpp"
#include "ipc_core/heap/layout.hpp"
#include "ipc_core/heap/segments.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

using namespace shmipc;

namespace {

// A formatted primary segment (memfd) with its private geometry and a free list.
class Arena {
  public:
    explicit Arena(std::size_t size = 1 << 20) : seg_(MemorySegment::anonymous(size)) {
        format_control(seg_.data(), size, HeapFormat{size, 0600, false, true});
        ctl_ = segs_.attach_primary(seg_, true, "test arena");
        fl_ = FreeList(*ctl_, segs_);
    }
    FreeList &fl() { return fl_; }
    HeapControl &ctl() { return *ctl_; }
    // Payload offset of a new block of `units`, owned by client 1; 0 when nothing fits.
    std::uint64_t alloc(std::uint64_t units, std::uint64_t align = kHeapUnit) {
        const std::uint64_t off = fl_.find_fit(units, align);
        return off ? fl_.carve(off, units, align, 1) : 0;
    }
    bool free(std::uint64_t payload) {
        const std::uint64_t ho = payload - kBlockHeaderSize;
        return fl_.release(ho, fl_.checked_word(ho));
    }
    BlockHeader *header(std::uint64_t payload) {
        return reinterpret_cast<BlockHeader *>(seg_.data() + payload - kBlockHeaderSize);
    }
    FreeLinks *links(std::uint64_t header_off) {
        return reinterpret_cast<FreeLinks *>(seg_.data() + header_off + kBlockHeaderSize);
    }
    std::byte *data() { return seg_.data(); }
    std::size_t blocks() {
        std::size_t n = 0;
        fl_.walk([&](std::uint64_t, std::uint64_t) { ++n; });
        return n;
    }
    std::uint64_t free_units() {
        std::uint64_t n = 0;
        fl_.walk([&](std::uint64_t, std::uint64_t w) {
            if (word_state(w) == kFree)
                n += word_units(w);
        });
        return n;
    }

  private:
    MemorySegment seg_;
    Segments segs_;
    HeapControl *ctl_ = nullptr;
    FreeList fl_;
};

std::vector<std::uint64_t> exhaust(Arena &a) {
    std::vector<std::uint64_t> blocks;
    for (std::uint64_t i = 0;; ++i) {
        const std::uint64_t units = 1 + (i * 7) % 70; // exact bins and power-of-two bins
        const std::uint64_t off = a.alloc(units);
        if (!off) {
            if (units == 1)
                break;
            continue; // a smaller one may still fit
        }
        blocks.push_back(off);
    }
    return blocks;
}

// Three free blocks of 64..80 units in bin 33, separated by used blocks; returns their headers
// (head of the bin first).
std::vector<std::uint64_t> three_in_one_bin(Arena &a) {
    std::vector<std::uint64_t> big, sep;
    for (std::uint64_t u : {64, 70, 80}) {
        big.push_back(a.alloc(u));
        sep.push_back(a.alloc(1));
    }
    for (auto b : big)
        EXPECT_TRUE(a.free(b));
    std::vector<std::uint64_t> heads;
    for (std::uint64_t x = a.ctl().bins[33]; x; x = a.links(x)->next)
        heads.push_back(x);
    EXPECT_EQ(heads.size(), 3u);
    return heads;
}

} // namespace

TEST(FreeList, a_fresh_arena_is_one_free_block_in_its_bin) {
    Arena a;
    EXPECT_EQ(a.blocks(), 1u);
    a.fl().check_invariants();
    std::size_t listed = 0;
    for (auto b : a.ctl().bins)
        listed += b != 0;
    EXPECT_EQ(listed, 1u);
}

TEST(FreeList, exhausting_and_freeing_in_direct_order_coalesces_into_one_block) {
    Arena a;
    const auto free0 = a.free_units();
    auto blocks = exhaust(a);
    ASSERT_GT(blocks.size(), 100u);
    EXPECT_EQ(a.fl().find_fit(1, kHeapUnit), 0u);
    a.fl().check_invariants();
    for (auto b : blocks)
        ASSERT_TRUE(a.free(b));
    a.fl().check_invariants();
    EXPECT_EQ(a.blocks(), 1u);
    EXPECT_EQ(a.free_units(), free0);
}

TEST(FreeList, exhausting_and_freeing_in_inverse_order_coalesces_into_one_block) {
    Arena a;
    const auto free0 = a.free_units();
    auto blocks = exhaust(a);
    std::reverse(blocks.begin(), blocks.end());
    for (auto b : blocks)
        ASSERT_TRUE(a.free(b));
    a.fl().check_invariants();
    EXPECT_EQ(a.blocks(), 1u);
    EXPECT_EQ(a.free_units(), free0);
}

TEST(FreeList, exhausting_and_freeing_in_mixed_order_keeps_the_invariants_at_every_step) {
    Arena a;
    const auto free0 = a.free_units();
    auto blocks = exhaust(a);
    std::mt19937 rng(11);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        ASSERT_TRUE(a.free(blocks[i]));
        if (i % 53 == 0)
            a.fl().check_invariants();
    }
    a.fl().check_invariants();
    EXPECT_EQ(a.blocks(), 1u);
    EXPECT_EQ(a.free_units(), free0);
}

TEST(FreeList, refilling_the_holes_of_an_exhausted_arena_reuses_them_exactly) {
    Arena a;
    auto blocks = exhaust(a);
    std::vector<std::uint64_t> holes;
    for (std::size_t i = 0; i < blocks.size(); i += 2) {
        holes.push_back(blocks[i]);
        ASSERT_TRUE(a.free(blocks[i]));
    }
    a.fl().check_invariants();
    // Same sizes again: each fits exactly in a hole (exact bins), nothing is left over.
    std::vector<std::uint64_t> again;
    for (std::size_t i = 0; i < blocks.size(); i += 2) {
        const std::uint64_t units = word_units(a.fl().checked_word(blocks[i] - kBlockHeaderSize));
        again.push_back(a.alloc(units));
        ASSERT_NE(again.back(), 0u);
    }
    std::sort(holes.begin(), holes.end());
    std::sort(again.begin(), again.end());
    EXPECT_EQ(holes, again);
    a.fl().check_invariants();
}

TEST(FreeList, aligned_blocks_keep_their_front_padding_free) {
    Arena a;
    for (std::uint64_t align : {128, 1024, 4096}) {
        const std::uint64_t off = a.alloc(3, align);
        ASSERT_NE(off, 0u);
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data() + off) % align, 0u) << align;
        a.fl().check_invariants();
    }
}

TEST(FreeList, release_refuses_a_block_whose_word_changed_meanwhile) {
    Arena a;
    const std::uint64_t off = a.alloc(2);
    const std::uint64_t ho = off - kBlockHeaderSize;
    const std::uint64_t w = a.fl().checked_word(ho);
    ASSERT_TRUE(a.fl().release(ho, w));
    EXPECT_FALSE(a.fl().release(ho, w)); // a second free with the stale word loses the CAS
    a.fl().check_invariants();
}

TEST(FreeList, rebuild_restores_wiped_bins_and_prev_sizes) {
    Arena a;
    std::vector<std::uint64_t> blocks;
    for (int i = 0; i < 50; ++i)
        blocks.push_back(a.alloc(1 + i % 40));
    for (std::size_t i = 0; i < blocks.size(); i += 3)
        ASSERT_TRUE(a.free(blocks[i]));
    std::fill(std::begin(a.ctl().bins), std::end(a.ctl().bins), 0);
    a.header(blocks[5])->prev_units = 12345;
    EXPECT_THROW(a.fl().check_invariants(), CorruptSegment);
    a.fl().rebuild();
    a.fl().check_invariants();
    EXPECT_NE(a.alloc(1), 0u);
    a.fl().check_invariants();
}

TEST(FreeList, rebuild_merges_two_adjacent_free_blocks_left_by_a_free_cut_short) {
    Arena a;
    const std::uint64_t x = a.alloc(4), y = a.alloc(4), z = a.alloc(4);
    (void)z;
    // A process died after marking both free but before merging them.
    a.header(x)->word.store(make_word(4, kOwnerNone, kFree));
    a.header(y)->word.store(make_word(4, kOwnerNone, kFree));
    EXPECT_THROW(a.fl().check_invariants(), CorruptSegment);
    a.fl().rebuild();
    a.fl().check_invariants();
    EXPECT_EQ(word_units(a.header(x)->word.load()), 8u);
}

TEST(FreeList, a_free_list_linking_a_block_to_itself_is_corrupt_not_an_endless_loop) {
    Arena a;
    auto heads = three_in_one_bin(a);
    a.links(heads[0])->next = heads[0];
    EXPECT_THROW((void)a.fl().find_fit(100, kHeapUnit), CorruptSegment);
    EXPECT_THROW(a.fl().check_invariants(), CorruptSegment);
}

TEST(FreeList, a_cycle_in_a_free_list_is_corrupt_not_an_endless_loop) {
    Arena a;
    auto heads = three_in_one_bin(a);
    a.links(heads[2])->next = heads[0]; // back links still look fine
    EXPECT_THROW((void)a.fl().find_fit(100, kHeapUnit), CorruptSegment);
    EXPECT_THROW(a.fl().check_invariants(), CorruptSegment);
}

TEST(FreeList, links_and_bin_heads_outside_the_arena_are_corrupt) {
    for (std::uint64_t bad :
         {std::uint64_t{3}, std::uint64_t{1} << 39, (std::uint64_t{5} << kSegmentShift) | 48,
          ~std::uint64_t{0}, std::uint64_t{64 + 48}}) {
        Arena a;
        auto heads = three_in_one_bin(a);
        a.links(heads[0])->next = bad;
        EXPECT_THROW((void)a.fl().find_fit(100, kHeapUnit), CorruptSegment) << bad;
        Arena b;
        b.ctl().bins[40] = bad;
        EXPECT_THROW((void)b.fl().find_fit(1 << 12, kHeapUnit), CorruptSegment) << bad;
    }
}

TEST(FreeList, a_link_to_an_allocated_block_is_corrupt) {
    Arena a;
    const std::uint64_t used = a.alloc(1);
    auto heads = three_in_one_bin(a);
    a.links(heads[0])->next = used - kBlockHeaderSize;
    EXPECT_THROW((void)a.fl().find_fit(100, kHeapUnit), CorruptSegment);
}

TEST(FreeList, a_broken_back_link_is_caught_before_an_unlink_writes_through_it) {
    Arena a;
    auto heads = three_in_one_bin(a);
    a.links(heads[1])->prev = heads[2]; // should be heads[0]
    // Taking heads[1] out would write through its links: refused.
    EXPECT_THROW((void)a.alloc(70), CorruptSegment);
}

TEST(FreeList, a_scribbled_block_word_is_corrupt_for_free_and_for_walks) {
    Arena a;
    const std::uint64_t x = a.alloc(2), y = a.alloc(2);
    a.alloc(2);
    a.header(y)->word.store(0x1234);
    EXPECT_THROW((void)a.free(x), CorruptSegment); // its neighbour is garbage
    EXPECT_THROW(a.blocks(), CorruptSegment);
    // A size running past the arena's end.
    a.header(y)->word.store(make_word(std::uint64_t{1} << 30, 1, kUsed));
    EXPECT_THROW(a.blocks(), CorruptSegment);
    EXPECT_THROW(a.fl().rebuild(), CorruptSegment);
}

TEST(FreeList, a_scribbled_prev_size_is_corrupt) {
    Arena a;
    a.alloc(2);
    const std::uint64_t y = a.alloc(2);
    a.alloc(2);
    for (std::uint64_t bad : {std::uint64_t{1}, std::uint64_t{3}, std::uint64_t{1} << 40}) {
        a.header(y)->prev_units = bad;
        EXPECT_THROW((void)a.free(y), CorruptSegment) << bad;
    }
    a.header(y)->prev_units = 0; // "first block" in the middle of the arena
    EXPECT_THROW((void)a.free(y), CorruptSegment);
}

TEST(FreeList, free_owned_by_frees_only_the_victims_blocks) {
    Arena a;
    std::vector<std::uint64_t> mine, theirs;
    for (int i = 0; i < 20; ++i) {
        const std::uint64_t o1 = a.fl().find_fit(2, kHeapUnit);
        mine.push_back(a.fl().carve(o1, 2, kHeapUnit, 1));
        const std::uint64_t o2 = a.fl().find_fit(3, kHeapUnit);
        theirs.push_back(a.fl().carve(o2, 3, kHeapUnit, 7));
    }
    const std::uint64_t bytes = a.fl().free_owned_by([](std::uint16_t o) { return o == 7; });
    EXPECT_EQ(bytes, 20u * 3 * kHeapUnit);
    for (auto m : mine)
        EXPECT_EQ(word_state(a.header(m)->word.load()), kUsed);
    a.fl().check_invariants();
}
