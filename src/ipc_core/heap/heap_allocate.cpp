// Heap: the allocation paths. The fast paths (an exact-size block from or to this thread's
// cache) take no lock and write only the block's own word; everything else takes the heap lock
// and goes through the free list.
#include "ipc_core/heap/heap.hpp"

#include "ipc_core/base/errors.hpp"

namespace shmipc {

namespace {
std::string human(std::uint64_t b) {
    return std::to_string(b) + " bytes";
}
const Deadline &forever() {
    static const Deadline d = Deadline::never();
    return d;
}
} // namespace

std::uint64_t Heap::allocate_impl(std::size_t n, std::size_t align, std::uint16_t owner,
                                  const Deadline *deadline) {
    if (n == 0) [[unlikely]]
        throw InvalidArgument("cannot allocate 0 bytes");
    // Not std::has_single_bit: without -mpopcnt it is a libgcc call on the hot path.
    if (align == 0 || (align & (align - 1)) != 0 || align > kMaxAlign) [[unlikely]]
        throw InvalidArgument("align must be a power of two <= " + std::to_string(kMaxAlign) +
                              ", not " + std::to_string(align));
    ensure_process();
    if (owner == kOwnerNone)
        owner = client_;
    if (n > kSegmentOffsetMask / 2) [[unlikely]]
        throw OutOfMemory("cannot allocate " + human(n) + " from a shared heap (limit 512 GiB)");
    const std::uint64_t units = units_for(n);

    // Fast path: an exact-size block from this thread's cache, no lock.
    if (thread_cache_ && align <= kHeapUnit && units <= kCacheClasses && owner == client_) {
        std::uint64_t off;
        if (caches_.local()->pop(units, off)) {
            auto *b = static_cast<BlockHeader *>(segs_.ptr(off));
            // Still ours (Cached, owned by us): nobody else writes it. One store hands it out.
            // SYNC POINT: release, pairs with the acquire load of the word in live_block() by
            // whoever frees or transfers the block next.
            b->word.store(make_word(units, owner, kUsed), std::memory_order_release);
            return off + kBlockHeaderSize;
        }
    }
    return allocate_locked(n, units, align, owner, deadline ? *deadline : forever());
}

std::uint64_t Heap::allocate_locked(std::size_t n, std::uint64_t units, std::size_t align,
                                    std::uint16_t owner, const Deadline &deadline) {
    // Now and then (every 1024 locked allocations of this handle) look for dead clients, so
    // their blocks come back even if nobody calls stats() or runs out of memory.
    if ((slow_allocations_.fetch_add(1, std::memory_order_relaxed) & 1023) == 1023)
        (void)reap_dead_clients(deadline);
    const std::uint64_t a = std::max<std::uint64_t>(align, kHeapUnit);
    bool growth_blocked = false; // max_size allows it, but the heap's name is gone
    for (bool reclaimed = false;;) {
        {
            auto lk = locked(deadline);
            if (const std::uint64_t off = free_.find_fit(units, a))
                return free_.carve(off, units, a, owner);
            if (const std::uint64_t fresh = segs_.grow(units, a, &growth_blocked)) {
                free_.insert(fresh, word_units(free_.checked_word(fresh)));
                continue;
            }
        }
        // Before failing: reclaim what dead processes and our own caches hold, once.
        if (!reclaimed) {
            reclaimed = true;
            flush_thread_caches(false, deadline);
            (void)reap_dead_clients(deadline);
            continue;
        }
        const HeapStats s = stats(deadline);
        throw OutOfMemory("cannot allocate " + human(n) +
                          (align > kHeapUnit ? " (align " + std::to_string(align) + ")" : "") +
                          " from " + what_ + ": " + human(s.free) + " free, largest free block " +
                          human(s.largest_free) + ", heap size " + human(s.size) + " of max_size " +
                          human(segs_.max_size()) +
                          (s.cached ? ", " + human(s.cached) + " in per-thread caches" : "") +
                          (growth_blocked ? " (cannot grow: the heap's name was removed)" : ""));
    }
}

void Heap::notify_freed() noexcept {
    wake_if_waiting(ctl_->memory_freed);
}

std::uint64_t Heap::allocate_waiting(std::size_t n, std::size_t align, const Deadline &deadline) {
    for (;;) {
        // The sequence before trying: a free after this point ends the sleep below.
        const std::uint32_t seen = ctl_->memory_freed.seq.load(std::memory_order_acquire);
        try {
            return allocate_impl(n, align, kOwnerNone, &deadline);
        } catch (const OutOfMemory &) {
            if (deadline.expired())
                throw;
            // Also a request larger than the heap can ever hold fails at once.
            if (units_for(n) * kHeapUnit > segs_.max_size())
                throw;
            // Sleep until someone frees (or a dead client's blocks come back, or time is up);
            // then the loop tries again, and fails for good once the deadline has passed.
            (void)wait_until(
                ctl_->memory_freed,
                [&] { return ctl_->memory_freed.seq.load(std::memory_order_acquire) != seen; },
                [&]() -> std::chrono::nanoseconds {
                    check_interrupt();
                    if (deadline.expired())
                        return std::chrono::nanoseconds{0};
                    if (reap_dead_clients(deadline) > 0)
                        return std::chrono::nanoseconds{0};
                    return deadline.slice();
                });
        }
    }
}

void Heap::deallocate_impl(std::uint64_t off, const Deadline *deadline) {
    ensure_process();
    for (;;) {
        LiveBlock b = live_block(off);
        const std::uint64_t units = word_units(b.word);
        if (thread_cache_ && units <= kCacheClasses) {
            ThreadCache *c = caches_.local();
            if (c->has_room(units)) {
                // CAS: a concurrent double free (or a reaper) must not also get it.
                // SYNC POINT: acq_rel, pairs with the CAS of a concurrent free of the same block
                // (only one wins) and with the release store that handed it out.
                if (!b.hdr->word.compare_exchange_strong(b.word, make_word(units, client_, kCached),
                                                         std::memory_order_acq_rel))
                    continue;
                c->push(units, b.header);
                return;
            }
        }
        {
            auto lk = locked(deadline ? *deadline : forever());
            if (!free_.release(b.header, b.word))
                continue;
        }
        notify_freed();
        return;
    }
}

void Heap::flush_thread_caches(bool all_threads, const Deadline &deadline) {
    ensure_process();
    bool flushed = false;
    {
        auto lk = locked(deadline);
        caches_.for_flushable(all_threads, [&](ThreadCache &c) {
            c.drain([&](std::uint64_t ho) {
                // Only what is still our cached block: a reaper may have freed it if we were
                // considered dead, and the header offset is ours (private), but the word is
                // shared.
                const std::uint64_t w = free_.checked_word(ho);
                if (word_state(w) == kCached && word_owner(w) == client_)
                    flushed = free_.release(ho, w) || flushed;
            });
        });
    }
    if (flushed)
        notify_freed();
}

} // namespace shmipc
