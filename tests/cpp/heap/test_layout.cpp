// The shared layout's codecs (most of the layout is checked by static_asserts in the header).
#include "ipc_core/heap/layout.hpp"

#include <gtest/gtest.h>

#include <random>

using namespace shmipc;

TEST(HeapLayout, the_block_word_round_trips_every_field_at_its_limits) {
    std::mt19937_64 rng(5);
    for (int i = 0; i < 10000; ++i) {
        const std::uint64_t units = 1 + rng() % ((std::uint64_t{1} << kWordUnitsBits) - 1);
        const auto owner = static_cast<std::uint16_t>(rng());
        const auto st = static_cast<BlockState>(kFree + rng() % 3);
        const std::uint64_t w = make_word(units, owner, st);
        ASSERT_EQ(word_units(w), units);
        ASSERT_EQ(word_owner(w), owner);
        ASSERT_EQ(word_state(w), st);
        ASSERT_TRUE(word_valid(w));
    }
}

TEST(HeapLayout, words_without_magic_size_or_state_are_not_blocks) {
    const std::uint64_t good = make_word(3, 1, kUsed);
    EXPECT_FALSE(word_valid(good ^ 1));                                           // magic
    EXPECT_FALSE(word_valid(good & ((std::uint64_t{1} << kWordUnitsShift) - 1))); // 0 units
    EXPECT_FALSE(word_valid((good & ~(std::uint64_t{0xF} << kWordStateShift)) |
                            (std::uint64_t{7} << kWordStateShift))); // state 7
    EXPECT_FALSE(word_valid(0));
    EXPECT_FALSE(word_valid(~std::uint64_t{0}));
}

TEST(HeapLayout, every_size_has_a_bin_and_bins_grow_with_the_size) {
    std::size_t prev = 0;
    for (std::uint64_t u = 1; u < (std::uint64_t{1} << 20); u += 1 + u / 16) {
        const std::size_t b = bin_of(u);
        ASSERT_LT(b, kBins);
        ASSERT_GE(b, prev);
        if (u < 32) {
            ASSERT_EQ(b, u); // exact-size bins
        }
        prev = b;
    }
    EXPECT_LE(bin_of(~std::uint64_t{0} >> kWordUnitsShift), kBins - 1); // the largest block
}

TEST(HeapLayout, payloads_are_64_byte_aligned_and_blocks_hold_what_is_asked) {
    for (std::uint64_t from : {0, 1, 63, 64, 65, 4096, 43264}) {
        const std::uint64_t h = first_header_at(from);
        EXPECT_GE(h, from);
        EXPECT_EQ((h + kBlockHeaderSize) % kHeapUnit, 0u);
        EXPECT_LT(h - from, kHeapUnit);
    }
    for (std::uint64_t n : {1, 47, 48, 49, 4096, 100000})
        EXPECT_GE(units_for(n) * kHeapUnit - kBlockHeaderSize, n);
    EXPECT_EQ(units_for(48), 1u);
    EXPECT_EQ(units_for(49), 2u);
    EXPECT_EQ(units_for(kCacheMaxBlock), kCacheClasses);
}

TEST(HeapLayout, offsets_split_into_segment_and_local_parts) {
    const std::uint64_t off = make_off(5, 12345);
    EXPECT_EQ(seg_of(off), 5u);
    EXPECT_EQ(local_of(off), 12345u);
    EXPECT_EQ(seg_of(make_off(kMaxSegments - 1, kSegmentOffsetMask)), kMaxSegments - 1);
}
