// The heap's shared layout: every struct another process reads, its constants and the codec of
// the block word. Nothing here is process-local; changing anything bumps kHeapLayout.
//
//   primary segment (name "frames" or a memfd)
//   +---------------+-------------+----------------------------------------------+
//   | SegmentHeader | HeapControl | arena: [hdr|payload....][hdr|payload]...      |
//   |   64 bytes    | lock, free  | blocks are multiples of 64 bytes, payloads    |
//   |               | lists, seg- | 64-byte aligned, each preceded by a 16-byte   |
//   |               | ments, cli- | BlockHeader                                  |
//   |               | ents, names |                                              |
//   +---------------+-------------+----------------------------------------------+
//   extension segments "frames.1", "frames.2"... (named heaps only): SegmentHeader
//   (kind HeapExtension) + arena.
//
// Offsets: a heap offset is (segment index << kSegmentShift) | byte offset in that segment.
// Offset 0 is never a block (the primary header lives there), so 0 means "none". Offsets are
// the same in every process.
//
// Everything in here is input: a peer may have scribbled over it. Geometry is validated once at
// attach (or when a segment is first mapped) into private memory (heap/segments.hpp); every
// offset and length read later is checked against that private copy before use.
#pragma once

#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/client_table.hpp"
#include "ipc_core/sync/robust_mutex.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace shmipc {

// --- Constants ------------------------------------------------------------------------------

// 1: pthread robust mutex, 64-byte client slots. 2: sync/robust_mutex word, sync/client_table.
inline constexpr std::uint32_t kHeapLayout = 2;
inline constexpr std::uint64_t kHeapControlMagic = 0x324c5254434d5048ULL; // "HPMCTRL2"

inline constexpr unsigned kSegmentShift = 40; // 1 TiB per segment at most
inline constexpr std::uint64_t kSegmentOffsetMask = (std::uint64_t{1} << kSegmentShift) - 1;
inline constexpr std::size_t kMaxSegments = 64;         // primary + 63 extensions
inline constexpr std::size_t kHeapUnit = 64;            // block granularity, bytes
inline constexpr std::size_t kBlockHeaderSize = 16;     // before every payload
inline constexpr std::size_t kMaxClients = 1024;        // live handles at once (client table slots)
inline constexpr std::size_t kMaxNamed = 256;           // directory entries
inline constexpr std::size_t kMaxNamedLength = 63;      // bytes of a directory name
inline constexpr std::size_t kCacheMaxBlock = 4096;     // payload bytes: larger bypass caches
inline constexpr std::size_t kMinHeapSize = 128 * 1024; // bytes (the control block is ~43 KiB)
inline constexpr std::uint64_t kMaxAlign = 4096;        // mappings are only page aligned
inline constexpr std::size_t kBins = 64;                // free lists
// Exact block sizes 1..65 units: every payload up to kCacheMaxBlock bytes.
inline constexpr std::size_t kCacheClasses =
    (kCacheMaxBlock + kBlockHeaderSize + kHeapUnit - 1) / kHeapUnit;

static_assert(std::has_single_bit(kHeapUnit) && kBlockHeaderSize < kHeapUnit);
static_assert(kMaxClients <= kMaxTableClients, "owner ids are client table slot + 1");

// Owners of an allocated block: a client id is its client table slot + 1.
inline constexpr std::uint16_t kOwnerNone = 0;      // free block
inline constexpr std::uint16_t kOwnerHeld = 0xFFFF; // held by a channel / named object
static_assert(kMaxClients < kOwnerHeld);

// Kind tags of named objects (users may add their own values >= 16).
inline constexpr std::uint32_t kNamedBlock = 1;   // heap.shared_block()
inline constexpr std::uint32_t kNamedChannel = 2; // channels (owned by the channel module)
inline constexpr std::uint32_t kNamedTopic = 3;   // topics (owned by the topic module)

// --- Heap offsets -----------------------------------------------------------------------------

[[nodiscard]] constexpr std::uint64_t seg_of(std::uint64_t off) noexcept {
    return off >> kSegmentShift;
}
[[nodiscard]] constexpr std::uint64_t local_of(std::uint64_t off) noexcept {
    return off & kSegmentOffsetMask;
}
[[nodiscard]] constexpr std::uint64_t make_off(std::uint64_t seg, std::uint64_t local) noexcept {
    return (seg << kSegmentShift) | local;
}
// Block headers sit at 48 mod 64 so payloads are 64-byte aligned.
inline constexpr std::uint64_t kHeaderPhase = kHeapUnit - kBlockHeaderSize;
// First header of an arena starting at byte `from` of its segment.
[[nodiscard]] constexpr std::uint64_t first_header_at(std::uint64_t from) noexcept {
    return (from + kBlockHeaderSize + kHeapUnit - 1) / kHeapUnit * kHeapUnit - kBlockHeaderSize;
}
// Units of a block holding n payload bytes.
[[nodiscard]] constexpr std::uint64_t units_for(std::uint64_t n) noexcept {
    return (n + kBlockHeaderSize + kHeapUnit - 1) / kHeapUnit;
}

// The free list a free block of `units` belongs in (HeapControl::bins): 1..31 exact sizes,
// then one bin per power of two. Part of the layout: every process must agree on it.
[[nodiscard]] constexpr std::size_t bin_of(std::uint64_t units) noexcept {
    if (units < 32)
        return static_cast<std::size_t>(units);
    const std::size_t b = 32 + (static_cast<std::size_t>(std::bit_width(units)) - 6);
    return b < kBins ? b : kBins - 1;
}
static_assert(bin_of(31) == 31 && bin_of(32) == 32 && bin_of(63) == 32 && bin_of(64) == 33);
static_assert(bin_of(std::uint64_t{1} << 36) == kBins - 1);

// --- The block word -----------------------------------------------------------------------------
//
// BlockHeader::word, one atomic 64-bit word: every change of the chain (split, merge, allocate,
// free, cache, transfer) is a single store or CAS of it, so a crash never leaves a block torn.
//
//   bits 63..28  units   block size in kHeapUnit units, header included (> 0)
//   bits 27..12  owner   kOwnerNone (free), a client id, or kOwnerHeld
//   bits 11..8   state   BlockState
//   bits  7..0   magic   kWordMagic: a word without it is not a block header

inline constexpr unsigned kWordUnitsBits = 36, kWordOwnerBits = 16, kWordStateBits = 4,
                          kWordMagicBits = 8;
inline constexpr unsigned kWordMagicShift = 0, kWordStateShift = kWordMagicBits,
                          kWordOwnerShift = kWordStateShift + kWordStateBits,
                          kWordUnitsShift = kWordOwnerShift + kWordOwnerBits;
static_assert(kWordUnitsShift + kWordUnitsBits == 64, "the fields fill the word exactly");
static_assert(kWordUnitsShift == 28 && kWordOwnerShift == 12 && kWordStateShift == 8);
static_assert(kWordOwnerBits == 16 && sizeof(kOwnerHeld) * 8 == kWordOwnerBits);
// A whole segment (1 TiB) is one block at most.
static_assert((std::uint64_t{1} << kWordUnitsBits) * kHeapUnit > kSegmentOffsetMask);

inline constexpr std::uint64_t kWordMagic = 0xB7;
enum BlockState : std::uint64_t { kFree = 1, kUsed = 2, kCached = 3 };
static_assert(kCached < (1u << kWordStateBits));

[[nodiscard]] constexpr std::uint64_t make_word(std::uint64_t units, std::uint16_t owner,
                                                BlockState st) noexcept {
    return (units << kWordUnitsShift) | (std::uint64_t{owner} << kWordOwnerShift) |
           (std::uint64_t{st} << kWordStateShift) | kWordMagic;
}
[[nodiscard]] constexpr std::uint64_t word_units(std::uint64_t w) noexcept {
    return w >> kWordUnitsShift;
}
[[nodiscard]] constexpr std::uint16_t word_owner(std::uint64_t w) noexcept {
    return static_cast<std::uint16_t>(w >> kWordOwnerShift);
}
[[nodiscard]] constexpr std::uint64_t word_state(std::uint64_t w) noexcept {
    return (w >> kWordStateShift) & ((1u << kWordStateBits) - 1);
}
// Well formed (magic, size, state); whether it fits its segment is the caller's check.
[[nodiscard]] constexpr bool word_valid(std::uint64_t w) noexcept {
    return (w & ((1u << kWordMagicBits) - 1)) == kWordMagic && word_units(w) > 0 &&
           word_state(w) >= kFree && word_state(w) <= kCached;
}
static_assert(word_units(make_word((std::uint64_t{1} << kWordUnitsBits) - 1, kOwnerHeld,
                                   kCached)) == (std::uint64_t{1} << kWordUnitsBits) - 1);
static_assert(word_owner(make_word(1, kOwnerHeld, kUsed)) == kOwnerHeld);
static_assert(word_state(make_word(1, kOwnerHeld, kCached)) == kCached);
static_assert(word_valid(make_word(1, kOwnerNone, kFree)) && !word_valid(0));

// --- Shared structs
// -------------------------------------------------------------------------------

// Before every payload.
//   offset size field
//   0      8    word        the block word above (atomic)
//   8      8    prev_units  units of the previous block in the chain, 0 for the first; derived
//                           (rebuilt on recovery), only written with the heap lock held
struct BlockHeader {
    std::atomic<std::uint64_t> word;
    std::uint64_t prev_units;
};
static_assert(std::is_standard_layout_v<BlockHeader>);
static_assert(sizeof(BlockHeader) == kBlockHeaderSize && alignof(BlockHeader) == 8);
static_assert(offsetof(BlockHeader, word) == 0 && offsetof(BlockHeader, prev_units) == 8);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// Links of a free block, at the start of its payload (a block has >= 48 payload bytes).
//   offset size field
//   0      8    next  header offset of the next free block of the bin, 0 = end
//   8      8    prev  header offset of the previous one, 0 = this is the bin's head
struct FreeLinks {
    std::uint64_t next;
    std::uint64_t prev;
};
static_assert(std::is_standard_layout_v<FreeLinks>);
static_assert(sizeof(FreeLinks) == 16 && offsetof(FreeLinks, next) == 0 &&
              offsetof(FreeLinks, prev) == 8);
static_assert(sizeof(FreeLinks) <= kHeapUnit - kBlockHeaderSize);

// One segment's geometry, written by whoever adds the segment before it publishes
// segment_count (byte offsets in that segment).
//   offset size field
//   0      8    size         bytes of the file
//   8      8    arena_begin  first block header (== first_header_at(end of the segment's header))
//   16     8    arena_end    end of the last block
struct SegmentInfo {
    std::uint64_t size;
    std::uint64_t arena_begin;
    std::uint64_t arena_end;
};
static_assert(std::is_standard_layout_v<SegmentInfo>);
static_assert(sizeof(SegmentInfo) == 24 && offsetof(SegmentInfo, size) == 0 &&
              offsetof(SegmentInfo, arena_begin) == 8 && offsetof(SegmentInfo, arena_end) == 16);

// A directory entry (heap/directory.hpp). Empty -> Init (claimed with the lock, block carved,
// creator running init) -> Ready (published) -> Empty (removed).
//   offset size field
//   0      64   name     NUL-terminated, 1..kMaxNamedLength bytes
//   64     4    state    NamedState (atomic)
//   68     4    kind     kNamedBlock, kNamedChannel, user kinds
//   72     8    offset   payload offset of the block (kOwnerHeld)
//   80     8    nbytes   as asked at creation (<= the block's capacity)
//   88     2    creator  client id running init (Init only)
//   90     6    reserved
enum NamedState : std::uint32_t { kNamedEmpty = 0, kNamedInit = 1, kNamedReady = 2 };
struct NamedEntry {
    char name[kMaxNamedLength + 1];
    std::atomic<std::uint32_t> state;
    std::uint32_t kind;
    std::uint64_t offset;
    std::uint64_t nbytes;
    std::uint16_t creator;
    std::uint16_t reserved[3];
};
static_assert(std::is_standard_layout_v<NamedEntry>);
static_assert(sizeof(NamedEntry) == 96 && alignof(NamedEntry) == 8);
static_assert(offsetof(NamedEntry, state) == 64 && offsetof(NamedEntry, kind) == 68 &&
              offsetof(NamedEntry, offset) == 72 && offsetof(NamedEntry, nbytes) == 80 &&
              offsetof(NamedEntry, creator) == 88);

// Right after the primary segment's SegmentHeader (byte 64 of the segment).
//   offset  size     field
//   0       8        magic          kHeapControlMagic
//   8       4        layout         kHeapLayout
//   12      4        mode           permission bits of extensions (<= 0777)
//   16      8        max_size       bytes, all segments; == segs[0].size if it cannot grow
//   24      4        persistent     0/1: names survive the owner
//   28      4        anonymous      0/1: memfd heap (never grows)
//   32      8        memory_freed   futex word: bumped (when someone waits) by frees
//   40      8        dir_next       payload offset of the first DirPage, 0: none (atomic)
//   48      16       reserved
//   64      8        lock           sync/robust_mutex word; guards bins, segs, prev_units,
//                                   the directory's claims and growth
//   72      4        segment_count  1..kMaxSegments; only grows (atomic)
//   76      4        reserved
//   80      1536     segs           SegmentInfo[kMaxSegments]
//   1616    512      bins           free list heads: header offsets, 0 = empty
//   2128    8        named_changed  futex word bumped by every directory change
//   2176    16448    clients        sync/client_table: header + kMaxClients slots
//   18624   24576    named          NamedEntry[kMaxNamed]
//   43200            end
struct HeapControl {
    std::uint64_t magic;
    std::uint32_t layout;
    std::uint32_t mode;
    std::uint64_t max_size;
    std::uint32_t persistent;
    std::uint32_t anonymous;
    FutexWord memory_freed;              // bumped (when someone waits) by every free under the lock
    std::atomic<std::uint64_t> dir_next; // payload offset of the first DirPage, 0: none
    std::uint64_t reserved0[2];
    RobustMutexWord lock;
    std::atomic<std::uint32_t> segment_count;
    std::uint32_t reserved1;
    SegmentInfo segs[kMaxSegments];
    std::uint64_t bins[kBins];
    FutexWord named_changed;
    alignas(64) ClientTableHeader client_header;
    ClientSlot client_slots[kMaxClients];
    NamedEntry named[kMaxNamed];
};
static_assert(std::is_standard_layout_v<HeapControl>);
static_assert(alignof(HeapControl) == 64 && sizeof(HeapControl) == 43200);
static_assert(offsetof(HeapControl, layout) == 8 && offsetof(HeapControl, mode) == 12 &&
              offsetof(HeapControl, max_size) == 16 && offsetof(HeapControl, persistent) == 24 &&
              offsetof(HeapControl, anonymous) == 28);
static_assert(offsetof(HeapControl, memory_freed) == 32 && offsetof(HeapControl, dir_next) == 40);

// Overflow pages of the directory: when the kMaxNamed entries of the control block are in use,
// the heap allocates a DirPage (a block held by the heap, kOwnerHeld, never freed) and chains it
// from HeapControl::dir_next / the previous page's `next` (release stores, made with the heap
// lock held after the page is initialised). Readers validate every link (a live block, large
// enough, with the magic) and follow at most kMaxDirPages of them.
//   offset  size   field
//   0       8      magic    kDirPageMagic
//   8       8      next     payload offset of the next page, 0: last (atomic)
//   16      8      reserved
//   24      24480  entries  NamedEntry[kDirPageEntries]
inline constexpr std::uint64_t kDirPageMagic = 0x45474150'52494453ull; // "SDIRPAGE"
inline constexpr std::size_t kDirPageEntries = 255;
inline constexpr std::size_t kMaxDirPages = 4096; // about a million names
struct DirPage {
    std::uint64_t magic;
    std::atomic<std::uint64_t> next;
    std::uint64_t reserved;
    NamedEntry entries[kDirPageEntries];
};
static_assert(std::is_standard_layout_v<DirPage>);
static_assert(offsetof(DirPage, next) == 8 && offsetof(DirPage, entries) == 24 &&
              sizeof(DirPage) == 24 + 96 * kDirPageEntries);
static_assert(offsetof(HeapControl, lock) == 64 && offsetof(HeapControl, segment_count) == 72 &&
              offsetof(HeapControl, segs) == 80 && offsetof(HeapControl, bins) == 1616 &&
              offsetof(HeapControl, named_changed) == 2128 &&
              offsetof(HeapControl, client_header) == 2176 &&
              offsetof(HeapControl, client_slots) == 2176 + sizeof(ClientTableHeader) &&
              offsetof(HeapControl, named) == 18624);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(SegmentHeader) % 64 == 0, "HeapControl starts 64-byte aligned");

// Bytes of the primary segment before its arena.
inline constexpr std::size_t kControlEnd = sizeof(SegmentHeader) + sizeof(HeapControl);
// Tests simulate a death holding the lock with a few blocks around.
static_assert(first_header_at(kControlEnd) + 2 * 4096 <= kMinHeapSize);

// Settings of a new heap, as the control block records them.
struct HeapFormat {
    std::uint64_t max_size = 0; // bytes, all segments (>= the segment's size)
    std::uint32_t mode = 0600;  // permission bits of extensions
    bool persistent = false;
    bool anonymous = false;
};
// Writes a fresh control block (empty client table and directory, one free block spanning the
// arena) into the zero-filled primary segment `segment` of `size` bytes, after its
// SegmentHeader (which the caller writes). segment_count is stored last, with release order.
void format_control(std::byte *segment, std::size_t size, const HeapFormat &format);

} // namespace shmipc
