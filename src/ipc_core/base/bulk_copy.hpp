// Copying a payload into shared memory.
//
// A large payload copied into a segment is read next by another process, on another core, not
// by the writer: its lines need not stay in the writer's cache. Below kStreamingCopyMin bytes
// bulk_copy is std::memcpy; from there on x86-64 it streams (non-temporal stores that bypass
// the cache, AVX2 when the CPU has it, SSE2 otherwise). On the 2-core AMD EPYC of
// benchmarks/RESULTS.md a 100 MB copy into a memfd mapping runs at about 17 GB/s streaming
// against 9-10 GB/s for glibc's memcpy, which keeps such sizes on its cached path.
//
// SYNC POINT: streaming stores are weakly ordered; the streaming path begins and ends with a
// store fence, so stores before it (a seqlock's odd sequence) stay before every byte of the
// payload, and a release store that publishes it afterwards (a ring index, a topic slot)
// orders after every byte, as with memcpy.
#pragma once

#include <cstddef>

namespace shmipc {

inline constexpr std::size_t kStreamingCopyMin = std::size_t{4} << 20;

// memcpy semantics: the ranges must not overlap.
void bulk_copy(void *dst, const void *src, std::size_t n) noexcept;

// The streaming path regardless of size (for tests and benchmarks); memcpy off x86-64.
void streaming_copy(void *dst, const void *src, std::size_t n) noexcept;

// bulk_copy on up to `threads` threads (the caller's and threads - 1 started for the call),
// page-aligned parts of at least kParallelCopyPart bytes each: a single core does not reach
// the memory bandwidth (about 12-17 GB/s for one core, 20 GB/s for two on the machine above).
// If a thread cannot be started its part is copied by the caller. Returns when all is copied.
inline constexpr std::size_t kParallelCopyPart = std::size_t{16} << 20;
void parallel_copy(void *dst, const void *src, std::size_t n, unsigned threads) noexcept;

} // namespace shmipc
