// The first 64 bytes of every named shmipc object: what it is, which layout, how big, whether it
// persists. Written before publication (magic last, release order); read with pread and
// validated on attach before anything of the mapping is trusted.
//
//   offset size field
//   0      8    magic            kSegmentMagic ("SHMIPC1\1" little endian)
//   8      4    kind             SegmentKind
//   12     4    layout_version   per kind: k<Kind>Layout
//   16     8    total_size       bytes: the file size at creation (a shrunk file fails attach)
//   24     4    creator_pid      diagnostics only; liveness is the owner lock byte
//   28     4    flags            kFlagPersistent
//   32     8    created_unix_ns
//   40     24   reserved
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

namespace shmipc {

struct SegmentHeader {
    std::uint64_t magic;
    std::uint32_t kind;
    std::uint32_t layout_version;
    std::uint64_t total_size;
    std::int32_t creator_pid;
    std::uint32_t flags;
    std::uint64_t created_unix_ns;
    std::uint64_t reserved[3];
};
static_assert(std::is_standard_layout_v<SegmentHeader>);
static_assert(sizeof(SegmentHeader) == 64 && alignof(SegmentHeader) == 8);
static_assert(offsetof(SegmentHeader, kind) == 8 && offsetof(SegmentHeader, layout_version) == 12);
static_assert(offsetof(SegmentHeader, total_size) == 16 && offsetof(SegmentHeader, flags) == 28);
static_assert(offsetof(SegmentHeader, created_unix_ns) == 32);

inline constexpr std::uint64_t kSegmentMagic = 0x0131435049484d53ULL; // "SHMIPC1\1" little endian
inline constexpr std::uint32_t kFlagPersistent = 1;

enum class SegmentKind : std::uint32_t {
    Heap = 1,
    HeapExtension = 2,
    SharedValue = 3,
    MessageQueue = 4,
};
[[nodiscard]] const char *kind_name(std::uint32_t kind) noexcept;

// Reads the header of an open file with pread (no mapping). False if the file is shorter or has
// no shmipc magic.
[[nodiscard]] bool read_segment_header(int fd, SegmentHeader &out) noexcept;

} // namespace shmipc
