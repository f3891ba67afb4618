#include "ipc_core/base/bulk_copy.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace shmipc {

#if defined(__x86_64__)
namespace {

constexpr std::size_t kLine = 64;

// Copies the bytes before the first cache-line-aligned destination address with memcpy, so the
// streaming stores below are aligned (they require it). Returns how many bytes that took.
std::size_t align_head(std::byte *dst, const std::byte *src, std::size_t n) noexcept {
    std::size_t head =
        (kLine - (reinterpret_cast<std::uintptr_t>(dst) & (kLine - 1))) & (kLine - 1);
    if (head > n)
        head = n;
    std::memcpy(dst, src, head);
    return head;
}

__attribute__((target("avx2"))) void stream_avx2(std::byte *dst, const std::byte *src,
                                                 std::size_t n) noexcept {
    std::size_t i = align_head(dst, src, n);
    for (; i + 2 * kLine <= n; i += 2 * kLine) {
        const auto *s = reinterpret_cast<const __m256i *>(src + i);
        auto *d = reinterpret_cast<__m256i *>(dst + i);
        __m256i a = _mm256_loadu_si256(s);
        __m256i b = _mm256_loadu_si256(s + 1);
        __m256i c = _mm256_loadu_si256(s + 2);
        __m256i e = _mm256_loadu_si256(s + 3);
        _mm256_stream_si256(d, a);
        _mm256_stream_si256(d + 1, b);
        _mm256_stream_si256(d + 2, c);
        _mm256_stream_si256(d + 3, e);
    }
    _mm_sfence(); // SYNC POINT: the streamed lines are visible before any later store
    std::memcpy(dst + i, src + i, n - i);
}

void stream_sse2(std::byte *dst, const std::byte *src, std::size_t n) noexcept {
    std::size_t i = align_head(dst, src, n);
    for (; i + kLine <= n; i += kLine) {
        const auto *s = reinterpret_cast<const __m128i *>(src + i);
        auto *d = reinterpret_cast<__m128i *>(dst + i);
        __m128i a = _mm_loadu_si128(s);
        __m128i b = _mm_loadu_si128(s + 1);
        __m128i c = _mm_loadu_si128(s + 2);
        __m128i e = _mm_loadu_si128(s + 3);
        _mm_stream_si128(d, a);
        _mm_stream_si128(d + 1, b);
        _mm_stream_si128(d + 2, c);
        _mm_stream_si128(d + 3, e);
    }
    _mm_sfence(); // SYNC POINT: as above
    std::memcpy(dst + i, src + i, n - i);
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2");

} // namespace

void streaming_copy(void *dst, const void *src, std::size_t n) noexcept {
    auto *d = static_cast<std::byte *>(dst);
    const auto *s = static_cast<const std::byte *>(src);
    // SYNC POINT: streaming stores may pass earlier ordinary stores (a seqlock's odd sequence,
    // a claim): the fence keeps every store before the copy ahead of it.
    _mm_sfence();
    if (kHasAvx2)
        stream_avx2(d, s, n);
    else
        stream_sse2(d, s, n);
}
#else
void streaming_copy(void *dst, const void *src, std::size_t n) noexcept {
    std::memcpy(dst, src, n);
}
#endif

void bulk_copy(void *dst, const void *src, std::size_t n) noexcept {
    if (n < kStreamingCopyMin)
        std::memcpy(dst, src, n);
    else
        streaming_copy(dst, src, n);
}

void parallel_copy(void *dst, const void *src, std::size_t n, unsigned threads) noexcept {
    const std::size_t by_size = n / kParallelCopyPart;
    std::size_t parts = std::min<std::size_t>(threads, by_size);
    if (parts <= 1) {
        bulk_copy(dst, src, n);
        return;
    }
    auto *d = static_cast<std::byte *>(dst);
    const auto *s = static_cast<const std::byte *>(src);
    const std::size_t step = (n / parts) & ~std::size_t{4095};
    std::vector<std::thread> started;
    std::size_t mine = 0; // parts the caller copies itself: the last, and any not started
    for (std::size_t k = 0; k + 1 < parts; ++k) {
        try {
            started.emplace_back(bulk_copy, d + k * step, s + k * step, step);
        } catch (...) {
            mine = parts - 1 - k; // no more threads: the rest here, from part k on
            break;
        }
    }
    const std::size_t from = (parts - 1 - mine) * step;
    bulk_copy(d + from, s + from, n - from);
    for (auto &t : started)
        t.join(); // SYNC POINT: join orders the threads' copies before the caller goes on
}

} // namespace shmipc
