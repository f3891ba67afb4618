#include "ipc_core/heap/free_list.hpp"

#include <string>

namespace shmipc {

namespace {
// Units of padding in front of a free block at `off` so its payload is `align`-aligned; the gap
// becomes a free block of its own, so it is at least one unit.
std::uint64_t gap_units(std::uint64_t off, std::uint64_t align) {
    const std::uint64_t p = local_of(off) + kBlockHeaderSize;
    if (p % align == 0)
        return 0;
    return (round_up(p + kHeapUnit, align) - p) / kHeapUnit;
}
} // namespace

void FreeList::corrupt(const std::string &why, std::uint64_t off) const {
    throw CorruptSegment(segs_->what() + ": " + why + " at offset " + std::to_string(off));
}

std::uint64_t FreeList::checked_word(std::uint64_t off, BlockHeader **hdr) {
    BlockHeader *h = segs_->header(off);
    // Relaxed: the lock orders what this file relies on (Free or not, sizes); callers that act
    // on an owner or a Used/Cached state re-check it with a CAS.
    const std::uint64_t w = h->word.load(std::memory_order_relaxed);
    if (!word_valid(w) || !segs_->fits(off, word_units(w))) [[unlikely]]
        corrupt("broken block chain (header word " + std::to_string(w) + ")", off);
    if (hdr)
        *hdr = h;
    return w;
}

void FreeList::bin_insert(std::uint64_t off, std::uint64_t units) {
    const std::size_t b = bin_of(units);
    const std::uint64_t head = ctl_->bins[b];
    FreeLinks *l = links(off);
    if (head != 0) {
        FreeLinks *hl = links(head);
        if (hl->prev != 0 || head == off) [[unlikely]]
            corrupt("free list head with a back link", head);
        hl->prev = off;
    }
    l->prev = 0;
    l->next = head;
    ctl_->bins[b] = off;
}

void FreeList::bin_remove(std::uint64_t off, std::uint64_t units) {
    const std::size_t b = bin_of(units);
    FreeLinks *l = links(off);
    const std::uint64_t next = l->next, prev = l->prev;
    // Both neighbours must point back at us before anything is changed (a scribbled link is
    // reported here instead of spreading).
    FreeLinks *pl = nullptr, *nl = nullptr;
    if (prev != 0) {
        pl = links(prev);
        if (pl->next != off || prev == off) [[unlikely]]
            corrupt("free list forward link does not match", prev);
    } else if (ctl_->bins[b] != off) [[unlikely]] {
        corrupt("free block missing from the head of its list", off);
    }
    if (next != 0) {
        nl = links(next);
        if (nl->prev != off || next == off) [[unlikely]]
            corrupt("free list back link does not match", next);
    }
    if (pl)
        pl->next = next;
    else
        ctl_->bins[b] = next;
    if (nl)
        nl->prev = prev;
}

std::uint64_t FreeList::find_fit(std::uint64_t units, std::uint64_t align) {
    const std::uint64_t limit = segs_->max_blocks();
    std::uint64_t steps = 0;
    for (std::size_t b = bin_of(units); b < kBins; ++b) {
        for (std::uint64_t off = ctl_->bins[b]; off != 0;) {
            if (++steps > limit) [[unlikely]]
                corrupt("free list longer than the heap has blocks (a cycle)", off);
            const std::uint64_t w = checked_word(off);
            const std::uint64_t have = word_units(w);
            if (word_state(w) != kFree || bin_of(have) != b) [[unlikely]]
                corrupt("block in a free list is not a free block of that list", off);
            const std::uint64_t gap = align > kHeapUnit ? gap_units(off, align) : 0;
            if (have >= units + gap)
                return off;
            if (b < 32 && align <= kHeapUnit)
                break; // exact-size bin: all or nothing
            const std::uint64_t next = links(off)->next;
            if (next == off) [[unlikely]]
                corrupt("free list links a block to itself", off);
            off = next;
        }
    }
    return 0;
}

std::uint64_t FreeList::carve(std::uint64_t off, std::uint64_t units, std::uint64_t align,
                              std::uint16_t owner) {
    BlockHeader *b = nullptr;
    std::uint64_t w = checked_word(off, &b);
    std::uint64_t have = word_units(w);
    const std::uint64_t gap = align > kHeapUnit ? gap_units(off, align) : 0;
    if (word_state(w) != kFree || have < units + gap) [[unlikely]]
        corrupt("carving a block that is not free or too small", off);
    bin_remove(off, have);
    if (gap) {
        // Front padding stays free. Write the new header first, inside the free block
        // (invisible to a chain walk), then shrink the free block with one store.
        const std::uint64_t rest = off + gap * kHeapUnit;
        auto *r =
            reinterpret_cast<BlockHeader *>(reinterpret_cast<std::byte *>(b) + gap * kHeapUnit);
        r->prev_units = gap;
        r->word.store(make_word(have - gap, kOwnerNone, kFree), std::memory_order_relaxed);
        if (auto n = segs_->next_of(off, have))
            segs_->header(n)->prev_units = have - gap;
        // SYNC POINT: release, pairs with the acquire loads of block words by lock-free readers
        // (live-block checks in deallocate/transfer): the new header is written before.
        b->word.store(make_word(gap, kOwnerNone, kFree), std::memory_order_release);
        bin_insert(off, gap);
        off = rest;
        b = r;
        have -= gap;
    }
    if (have > units) {
        const std::uint64_t tail = off + units * kHeapUnit;
        auto *t =
            reinterpret_cast<BlockHeader *>(reinterpret_cast<std::byte *>(b) + units * kHeapUnit);
        t->prev_units = units;
        t->word.store(make_word(have - units, kOwnerNone, kFree), std::memory_order_relaxed);
        if (auto n = segs_->next_of(off, have))
            segs_->header(n)->prev_units = have - units;
        // SYNC POINT: release, pairs with the acquire loads of block words by lock-free readers:
        // one store publishes both the split (tail header written before) and the allocation.
        b->word.store(make_word(units, owner, kUsed), std::memory_order_release);
        bin_insert(tail, have - units);
    } else {
        // SYNC POINT: release, pairs with the acquire loads of block words by lock-free readers.
        b->word.store(make_word(have, owner, kUsed), std::memory_order_release);
    }
    return off + kBlockHeaderSize;
}

bool FreeList::release(std::uint64_t off, std::uint64_t w) {
    BlockHeader *b = segs_->header(off);
    const std::uint64_t units = word_units(w);
    // Check both neighbours before the commit point (the CAS below).
    const std::uint64_t n = segs_->next_of(off, units);
    std::uint64_t nw = 0;
    if (n != 0) {
        BlockHeader *nh = nullptr;
        nw = checked_word(n, &nh);
        if (nh->prev_units != units) [[unlikely]]
            corrupt("block's prev size does not match its neighbour", n);
    }
    const std::uint64_t pu = b->prev_units;
    std::uint64_t p = 0, pw = 0;
    if (pu != 0) {
        if (pu > segs_->units_before(off)) [[unlikely]]
            corrupt("prev size points before the arena", off);
        p = off - pu * kHeapUnit;
        pw = checked_word(p);
        if (word_units(pw) != pu) [[unlikely]]
            corrupt("prev size does not match the previous block", off);
    } else if (!segs_->first_in_arena(off)) [[unlikely]] {
        corrupt("block without a prev size inside the arena", off);
    }
    const bool merge_next = n != 0 && word_state(nw) == kFree;
    const bool merge_prev = p != 0 && word_state(pw) == kFree;
    std::uint64_t merged = units + (merge_next ? word_units(nw) : 0);
    // SYNC POINT: acq_rel, pairs with the CAS of a concurrent double free / reaper of the same
    // block (only one wins) and with the release stores that handed the block out.
    if (!b->word.compare_exchange_strong(w, make_word(merged, kOwnerNone, kFree),
                                         std::memory_order_acq_rel))
        return false;
    if (merge_next)
        bin_remove(n, word_units(nw));
    std::uint64_t start = off;
    if (merge_prev) {
        bin_remove(p, pu);
        merged += pu;
        // SYNC POINT: release, pairs with the acquire loads of block words by lock-free readers.
        segs_->header(p)->word.store(make_word(merged, kOwnerNone, kFree),
                                     std::memory_order_release);
        start = p;
    }
    if (auto nn = segs_->next_of(start, merged))
        segs_->header(nn)->prev_units = merged;
    bin_insert(start, merged);
    return true;
}

void FreeList::rebuild() {
    const std::uint32_t count = segs_->map_all();
    std::fill(std::begin(ctl_->bins), std::end(ctl_->bins), 0);
    for (std::uint32_t s = 0; s < count; ++s) {
        const SegmentGeometry &g = segs_->geometry(s);
        std::uint64_t off = make_off(s, g.arena_begin);
        const std::uint64_t end = make_off(s, g.arena_end);
        std::uint64_t prev_units = 0, free_start = 0, free_units = 0;
        auto flush = [&] {
            if (free_units)
                bin_insert(free_start, free_units);
            free_units = 0;
        };
        while (off < end) {
            BlockHeader *b = nullptr;
            const std::uint64_t w = checked_word(off, &b);
            const std::uint64_t u = word_units(w);
            off += u * kHeapUnit;
            if (word_state(w) == kFree && free_units) {
                // Adjacent free blocks (a free was cut short): one store merges them.
                free_units += u;
                // SYNC POINT: release, pairs with the acquire loads of block words by lock-free
                // readers.
                segs_->header(free_start)
                    ->word.store(make_word(free_units, kOwnerNone, kFree),
                                 std::memory_order_release);
                prev_units = free_units;
                continue;
            }
            b->prev_units = prev_units;
            flush();
            if (word_state(w) == kFree) {
                free_start = off - u * kHeapUnit;
                free_units = u;
            }
            prev_units = u;
        }
        flush();
    }
}

void FreeList::check_invariants() {
    auto fail = [&](const std::string &why, std::uint64_t off) {
        throw CorruptSegment(segs_->what() + ": heap invariant: " + why + " at offset " +
                             std::to_string(off));
    };
    const std::uint32_t count = segs_->map_all();
    std::vector<std::uint64_t> free_blocks; // address order: sorted
    for (std::uint32_t s = 0; s < count; ++s) {
        const SegmentGeometry &g = segs_->geometry(s);
        std::uint64_t off = make_off(s, g.arena_begin);
        const std::uint64_t end = make_off(s, g.arena_end);
        std::uint64_t prev = 0;
        bool prev_free = false;
        while (off < end) {
            BlockHeader *b = nullptr;
            const std::uint64_t w = checked_word(off, &b);
            if (b->prev_units != prev)
                fail("prev size wrong", off);
            const bool is_free = word_state(w) == kFree;
            if (is_free && prev_free)
                fail("two adjacent free blocks", off);
            if (is_free && word_owner(w) != kOwnerNone)
                fail("free block with an owner", off);
            if (!is_free && word_owner(w) == kOwnerNone)
                fail("allocated block without an owner", off);
            if (is_free)
                free_blocks.push_back(off);
            prev_free = is_free;
            prev = word_units(w);
            off += word_units(w) * kHeapUnit;
        }
        if (off != end)
            fail("chain overruns segment " + std::to_string(s), off);
    }
    std::vector<bool> seen(free_blocks.size(), false);
    std::uint64_t listed = 0;
    for (std::size_t b = 0; b < kBins; ++b) {
        std::uint64_t prev = 0;
        for (std::uint64_t x = ctl_->bins[b]; x != 0; x = links(x)->next) {
            auto it = std::lower_bound(free_blocks.begin(), free_blocks.end(), x);
            if (it == free_blocks.end() || *it != x)
                fail("bin " + std::to_string(b) + " lists a block that is not free", x);
            auto i = static_cast<std::size_t>(it - free_blocks.begin());
            if (seen[i])
                fail("free block listed twice (a cycle?)", x);
            seen[i] = true;
            if (links(x)->prev != prev)
                fail("bin back link wrong", x);
            if (bin_of(word_units(checked_word(x))) != b)
                fail("free block in the wrong bin", x);
            prev = x;
            ++listed;
        }
    }
    if (listed != free_blocks.size())
        fail("free blocks missing from the bins (" + std::to_string(free_blocks.size() - listed) +
                 ")",
             0);
}

} // namespace shmipc
