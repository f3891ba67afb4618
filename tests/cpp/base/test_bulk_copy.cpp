#include "ipc_core/base/bulk_copy.hpp"

#include <cstdint>
#include <gtest/gtest.h>
#include <numeric>
#include <vector>

using namespace shmipc;

namespace {
std::vector<std::uint8_t> pattern(std::size_t n) {
    std::vector<std::uint8_t> v(n);
    for (std::size_t i = 0; i < n; ++i)
        v[i] = static_cast<std::uint8_t>(i * 131 + (i >> 8) * 7 + 1);
    return v;
}
} // namespace

TEST(BulkCopy, streaming_copy_is_exact_for_every_alignment_and_length) {
    // Destination and source offsets inside a cache line, lengths around the unrolled step, so
    // the aligned head, the streamed body and the tail are each empty and not empty.
    auto src = pattern(4096 + 64);
    for (std::size_t doff : {0u, 1u, 7u, 31u, 32u, 63u})
        for (std::size_t soff : {0u, 3u, 32u})
            for (std::size_t n : {0u, 1u, 63u, 64u, 65u, 127u, 128u, 129u, 200u, 1000u, 4000u}) {
                std::vector<std::uint8_t> dst(4096 + 256, 0xEE);
                streaming_copy(dst.data() + doff, src.data() + soff, n);
                for (std::size_t i = 0; i < doff; ++i)
                    ASSERT_EQ(dst[i], 0xEE) << "wrote before the range " << doff << " " << n;
                ASSERT_TRUE(
                    std::equal(src.begin() + soff, src.begin() + soff + n, dst.begin() + doff))
                    << "doff " << doff << " soff " << soff << " n " << n;
                for (std::size_t i = doff + n; i < dst.size(); ++i)
                    ASSERT_EQ(dst[i], 0xEE) << "wrote past the range " << doff << " " << n;
            }
}

TEST(BulkCopy, large_copies_take_the_streaming_path_and_are_exact) {
    const std::size_t n = kStreamingCopyMin + 4096 + 17;
    auto src = pattern(n + 5);
    std::vector<std::uint8_t> dst(n + 64, 0);
    bulk_copy(dst.data() + 5, src.data() + 5, n);
    EXPECT_TRUE(std::equal(src.begin() + 5, src.begin() + 5 + n, dst.begin() + 5));
    EXPECT_EQ(dst[n + 5], 0);
    EXPECT_EQ(dst[4], 0);
}

TEST(BulkCopy, small_copies_are_memcpy) {
    auto src = pattern(100);
    std::vector<std::uint8_t> dst(100, 0);
    bulk_copy(dst.data(), src.data(), 100);
    EXPECT_EQ(dst, src);
}

TEST(BulkCopy, parallel_copy_splits_at_pages_and_is_exact) {
    for (std::size_t n :
         {kParallelCopyPart - 1, 2 * kParallelCopyPart + 12345, 3 * kParallelCopyPart + 7}) {
        auto src = pattern(n + 3);
        for (unsigned threads : {1u, 2u, 3u, 8u}) {
            std::vector<std::uint8_t> dst(n + 64, 0);
            parallel_copy(dst.data() + 3, src.data() + 3, n, threads);
            ASSERT_TRUE(std::equal(src.begin() + 3, src.begin() + 3 + n, dst.begin() + 3))
                << threads << " threads, " << n << " bytes";
            ASSERT_EQ(dst[2], 0);
            ASSERT_EQ(dst[n + 3], 0);
        }
    }
}
