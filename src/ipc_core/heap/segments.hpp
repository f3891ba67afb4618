// One process's view of a heap's segments: their mappings and their geometry, validated once
// (the primary at attach, an extension when it is first mapped) and from then on kept privately.
// Every offset read from shared memory is checked against this private copy before it is
// dereferenced; the shared SegmentInfo is never re-read for bounds.
//
// Addressing (ptr, header) is lock-free and safe from any thread: a segment's geometry is
// written before its base pointer is published (release), and never changes afterwards.
// Mapping and growth (heap/growth.cpp) serialize on a process-local mutex; growth also needs
// the heap lock, since it changes the shared segment table.
#pragma once

#include "ipc_core/base/errors.hpp"
#include "ipc_core/heap/layout.hpp"
#include "ipc_core/shm/memory_segment.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace shmipc {

struct SegmentGeometry {
    std::uint64_t size = 0;        // bytes mapped
    std::uint64_t arena_begin = 0; // first block header
    std::uint64_t arena_end = 0;   // end of the last block
};

class Segments {
  public:
    Segments() = default;
    Segments(const Segments &) = delete;
    Segments &operator=(const Segments &) = delete;

    // Validates the primary segment's control block (CorruptSegment naming the field) and keeps
    // its geometry. `name`: the primary's name ("" for an anonymous heap), `what`: for messages.
    // Returns the validated control block.
    HeapControl *attach_primary(const MemorySegment &primary, bool anonymous, std::string what);
    // Whose extension segments may be mapped: any process of a trusted owner may have grown the
    // heap, so the attacher's policy plus the primary's owner (our own uid always).
    void set_trust(const TrustPolicy &t) noexcept { trust_ = t; }

    // Pointer for a heap offset: maps a segment grown by another process on first use.
    // InvalidArgument for an offset outside every segment; CorruptSegment if the shared segment
    // table is not sane.
    [[nodiscard]] void *ptr(std::uint64_t off) {
        const std::uint64_t s = seg_of(off);
        std::byte *b = s < kMaxSegments ? base(s) : nullptr;
        if (b == nullptr || local_of(off) >= geom_[s].size) [[unlikely]]
            return ptr_slow(off);
        return b + local_of(off);
    }
    // The header of a block at header offset `off`, which came from shared memory (a link, a
    // bin head, a neighbour): CorruptSegment unless it is a header position inside an arena.
    [[nodiscard]] BlockHeader *header(std::uint64_t off) {
        const std::uint64_t s = seg_of(off), local = local_of(off);
        std::byte *b = s < kMaxSegments ? base(s) : nullptr;
        if (b == nullptr) [[unlikely]]
            b = map_for(off);
        const SegmentGeometry &g = geom_[s];
        if (local < g.arena_begin || local >= g.arena_end || local % kHeapUnit != kHeaderPhase)
            [[unlikely]]
            throw_bad_header(off);
        return reinterpret_cast<BlockHeader *>(b + local);
    }
    // Does a block of `units` at header offset `off` (a valid header position) end inside its
    // arena?
    [[nodiscard]] bool fits(std::uint64_t off, std::uint64_t units) const noexcept {
        const SegmentGeometry &g = geom_[seg_of(off)];
        return units <= (g.arena_end - local_of(off)) / kHeapUnit;
    }
    // Header offset of the block after the one at `off` of `units`, or 0 at its arena's end.
    [[nodiscard]] std::uint64_t next_of(std::uint64_t off, std::uint64_t units) const noexcept {
        const std::uint64_t n = off + units * kHeapUnit;
        return local_of(n) < geom_[seg_of(off)].arena_end ? n : 0;
    }
    // Is `off` (a header position) the first block of its arena?
    [[nodiscard]] bool first_in_arena(std::uint64_t off) const noexcept {
        return local_of(off) == geom_[seg_of(off)].arena_begin;
    }
    // Units between the arena's start and `off`.
    [[nodiscard]] std::uint64_t units_before(std::uint64_t off) const noexcept {
        return (local_of(off) - geom_[seg_of(off)].arena_begin) / kHeapUnit;
    }
    // Offset of a pointer into one of our mappings (InvalidArgument otherwise).
    [[nodiscard]] std::uint64_t offset_of(const void *p) const;

    // The shared segment count, checked: 1..kMaxSegments, never below what we mapped, 1 for an
    // anonymous heap. CorruptSegment otherwise.
    [[nodiscard]] std::uint32_t shared_count() const;
    // Maps (and validates) every segment up to shared_count(); returns that count. Walks over
    // every arena call this first.
    std::uint32_t map_all();
    // Segments whose geometry we hold (mapped).
    [[nodiscard]] std::uint32_t mapped() const noexcept {
        // SYNC POINT: acquire, pairs with the release store of mapped_ in publish(): the
        // geometry and bases of those segments are visible.
        return mapped_.load(std::memory_order_acquire);
    }
    [[nodiscard]] const SegmentGeometry &geometry(std::uint32_t s) const noexcept {
        return geom_[s];
    }
    // Bytes of the segments we mapped.
    [[nodiscard]] std::uint64_t mapped_bytes() const noexcept;
    // An upper bound on the blocks of any list: the units of max_size. A walk longer than this
    // is a cycle (CorruptSegment).
    [[nodiscard]] std::uint64_t max_blocks() const noexcept { return max_size_ / kHeapUnit + 1; }

    // Private copies of the control block's settings (validated at attach).
    [[nodiscard]] std::uint64_t max_size() const noexcept { return max_size_; }
    [[nodiscard]] mode_t mode() const noexcept { return mode_; }
    [[nodiscard]] bool persistent() const noexcept { return persistent_; }
    [[nodiscard]] bool anonymous() const noexcept { return name_.empty(); }
    [[nodiscard]] const std::string &what() const noexcept { return what_; }

    // --- growth (heap/growth.cpp) -------------------------------------------------------------
    // With the heap lock held: creates extension segment shared_count() big enough for a block
    // of `units` aligned to `align`, records it in the shared table and returns the header
    // offset of its one free block (for the caller's free list), or 0 if max_size, kMaxSegments
    // or a name that is no longer ours (`*blocked` = true then) forbids growing.
    std::uint64_t grow(std::uint64_t units, std::uint64_t align, bool *blocked);
    // The owner of a non-persistent named heap removes the extension names with the primary.
    void unlink_extensions() noexcept;
    // After creating a name: extensions named after it belong to a dead predecessor.
    static void remove_leftover_extensions(const std::string &base);
    // Unmaps the extensions (the primary belongs to the caller).
    void reset() noexcept;

    void set_primary_fd(int fd) noexcept { primary_fd_ = fd; }

  private:
    [[nodiscard]] std::byte *base(std::uint64_t s) const noexcept {
        // SYNC POINT: acquire, pairs with the release store of bases_[s] in publish(): the
        // segment's private geometry is written before.
        return bases_[s].load(std::memory_order_acquire);
    }
    void *ptr_slow(std::uint64_t off);
    std::byte *map_for(std::uint64_t off); // maps seg_of(off) or throws CorruptSegment
    std::byte *map_extension(std::uint32_t s);
    void publish(std::uint32_t s, std::byte *b, const SegmentGeometry &g) noexcept;
    void check_extension(std::uint32_t s, const SegmentInfo &info, std::uint64_t mapped) const;
    [[noreturn]] void throw_bad_header(std::uint64_t off) const;
    [[nodiscard]] bool primary_name_is_ours() const;

    HeapControl *ctl_ = nullptr;
    std::string name_;    // primary's normalized name, "" for an anonymous heap
    TrustPolicy trust_{}; // owners whose extension segments we map (set by set_trust)
    std::string what_;    // "heap '/frames'" or "anonymous heap"
    int primary_fd_ = -1;
    std::uint64_t max_size_ = 0;
    mode_t mode_ = 0600;
    bool persistent_ = false;
    std::array<std::atomic<std::byte *>, kMaxSegments> bases_{};
    std::array<SegmentGeometry, kMaxSegments> geom_{};
    std::atomic<std::uint32_t> mapped_{0};  // segments 0..mapped_-1 have geometry and a base
    std::mutex map_mu_;                     // mapping and growth in this process
    std::vector<MemorySegment> extensions_; // index i-1 is segment i

  public:
    // CorruptSegment if another process shrank an extension we mapped (a fault beyond its end
    // was absorbed by the SIGBUS guard). A few relaxed loads.
    void check_intact() const {
        for (const auto &e : extensions_)
            if (e.truncated()) [[unlikely]]
                e.check_intact("heap extension segment");
    }

  private:
};

[[nodiscard]] std::string extension_name(const std::string &base, std::size_t i);

} // namespace shmipc
