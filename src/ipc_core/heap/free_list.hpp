// The allocator's algorithm: segregated free lists over a chain of blocks (heap/layout.hpp).
//
// The chain (each block's word, in address order) is the truth; the free lists (bins, prev
// sizes) are derived from it and rebuilt after a process died holding the heap lock. Every
// operation here runs with the heap lock held, except that lock-free paths of the facade may
// change a Used or Cached block's word (owner, Used <-> Cached) at any time: nothing here relies
// on those, and a block becomes Free, or stops being Free, only with the lock.
//
// Bins (bin_of in heap/layout.hpp): 1..31 hold blocks of exactly that many units (first fit is
// the head); 32..63 one power of two of units each (first fit in the list).
//
// Untrusted input: every offset read from shared memory (bin heads, links, neighbours found by
// size or prev_units) is checked against the private geometry before use, every list walk is
// bounded, and links are checked both ways before they are changed; a violation is
// CorruptSegment, thrown before the operation changes anything when it can be.
#pragma once

#include "ipc_core/heap/layout.hpp"
#include "ipc_core/heap/segments.hpp"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace shmipc {

class FreeList {
  public:
    FreeList(HeapControl &ctl, Segments &segs) noexcept : ctl_(&ctl), segs_(&segs) {}
    FreeList() = default;

    // A free block that fits `units` with its payload aligned to `align` (>= kHeapUnit), or 0.
    [[nodiscard]] std::uint64_t find_fit(std::uint64_t units, std::uint64_t align);
    // Turns free block `off` (from find_fit) into a Used block of `units` owned by `owner`;
    // front padding and the tail stay free. Returns the payload offset.
    std::uint64_t carve(std::uint64_t off, std::uint64_t units, std::uint64_t align,
                        std::uint16_t owner);
    // Frees the block at header offset `off` whose word the caller read as `w` (Used or Cached,
    // already checked to fit), coalescing with free neighbours. False if the word changed
    // meanwhile (someone else freed or took it).
    bool release(std::uint64_t off, std::uint64_t w);
    // Adds a new free block (a new segment's arena) to its bin.
    void insert(std::uint64_t off, std::uint64_t units) { bin_insert(off, units); }

    // f(header offset, word) for every block of every segment, in address order.
    template <class F> void walk(F &&f);
    // Rebuilds the bins and prev sizes from the chain, merging adjacent free blocks (a process
    // killed in the middle of a free may leave two).
    void rebuild();
    // Frees every Used or Cached block whose owner satisfies `victim(owner)`. Bytes freed.
    template <class Victim> std::uint64_t free_owned_by(Victim &&victim);
    // Chain and bins agree: every header valid, prev sizes right, no two adjacent free blocks,
    // every free block in its bin exactly once, links consistent. CorruptSegment with the first
    // violation.
    void check_invariants();

    // Loads the word at header offset `off` (from shared memory): CorruptSegment unless it is a
    // well formed block that fits its arena.
    [[nodiscard]] std::uint64_t checked_word(std::uint64_t off, BlockHeader **hdr = nullptr);

  private:
    [[nodiscard]] FreeLinks *links(std::uint64_t off) {
        return reinterpret_cast<FreeLinks *>(segs_->header(off) + 1);
    }
    void bin_insert(std::uint64_t off, std::uint64_t units);
    void bin_remove(std::uint64_t off, std::uint64_t units);
    [[noreturn]] void corrupt(const std::string &why, std::uint64_t off) const;

    HeapControl *ctl_ = nullptr;
    Segments *segs_ = nullptr;
};

template <class F> void FreeList::walk(F &&f) {
    const std::uint32_t n = segs_->map_all();
    for (std::uint32_t s = 0; s < n; ++s) {
        const SegmentGeometry &g = segs_->geometry(s);
        std::uint64_t off = make_off(s, g.arena_begin);
        const std::uint64_t end = make_off(s, g.arena_end);
        // Bounded: every step advances by at least one unit.
        while (off < end) {
            const std::uint64_t w = checked_word(off);
            f(off, w);
            off += word_units(w) * kHeapUnit;
        }
    }
}

template <class Victim> std::uint64_t FreeList::free_owned_by(Victim &&victim) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> victims;
    walk([&](std::uint64_t off, std::uint64_t w) {
        const auto st = word_state(w);
        const auto o = word_owner(w);
        if ((st == kUsed || st == kCached) && o != kOwnerHeld && o != kOwnerNone && victim(o))
            victims.emplace_back(off, w);
    });
    std::uint64_t bytes = 0;
    for (auto &[off, w] : victims) {
        // Merges only absorb free blocks, so a victim keeps its header; but a live process may
        // have taken it meanwhile (transfer): then its word differs and it is not ours to free.
        if (release(off, w))
            bytes += word_units(w) * kHeapUnit;
    }
    return bytes;
}

} // namespace shmipc
