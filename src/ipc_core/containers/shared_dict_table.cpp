// Shared dicts (shared_dict.hpp): the table. Reading it and its entries from shared memory (every
// capacity and length checked against its block), probing, growth (a rebuilt table published
// with one store), clearing, the recovery after a dead lock holder, and the key hash every
// process uses. Layout: shared_dict_table.hpp.
#include "ipc_core/containers/shared_dict_table.hpp"

#include "ipc_core/base/errors.hpp"

#include <bit>
#include <cstring>
#include <string>

namespace shmipc {

using namespace dict_detail; // the slot word, table and entry headers

Heap::Payload DictOps::block(std::uint64_t off) const {
    try {
        return h.checked_payload(off);
    } catch (const InvalidArgument &e) {
        corrupt(std::string("an offset that is not a live block (") + e.what() + ")");
    }
}

DictOps::Table DictOps::table(std::uint64_t off) const {
    const Heap::Payload b = block(off);
    const std::size_t bytes = b.capacity;
    auto *t = reinterpret_cast<TableHeader *>(b.data);
    std::uint64_t cap = t->capacity;
    if (cap < kMinCapacity || !std::has_single_bit(cap) ||
        cap > (bytes - sizeof(TableHeader)) / sizeof(std::uint64_t))
        corrupt("a table capacity of " + std::to_string(cap) + " slots in a block of " +
                std::to_string(bytes) + " bytes");
    return Table{reinterpret_cast<std::atomic<std::uint64_t> *>(t + 1), cap};
}

DictOps::EntryView DictOps::entry(std::uint64_t off) const {
    const Heap::Payload b = block(off);
    const std::size_t bytes = b.capacity;
    auto *e = reinterpret_cast<EntryHeader *>(b.data);
    EntryView v;
    v.hash = e->hash;
    v.tag = e->tag;
    std::uint64_t key_len = e->key_len, value_len = e->value_len;
    if (key_len > bytes || value_len > bytes || value_offset(key_len) + value_len > bytes)
        corrupt("an entry of " + std::to_string(key_len) + " + " + std::to_string(value_len) +
                " bytes in a block of " + std::to_string(bytes));
    v.key = {reinterpret_cast<const char *>(e + 1), static_cast<std::size_t>(key_len)};
    v.value = reinterpret_cast<const std::byte *>(e) + value_offset(key_len);
    v.value_len = value_len;
    return v;
}

DictOps::Probe DictOps::probe(std::string_view key, std::uint64_t hash) {
    Probe p;
    std::uint64_t toff = c->table.load(std::memory_order_relaxed);
    if (!toff)
        return p;
    p.t = table(toff);
    std::uint64_t mask = p.t.capacity - 1;
    auto *s = p.t.slots;
    for (std::uint64_t i = hash & mask, n = 0; n <= mask; ++n, i = (i + 1) & mask) {
        std::uint64_t w = s[i].load(std::memory_order_relaxed);
        if (w == kSlotEmpty) {
            if (p.free < 0)
                p.free = static_cast<std::int64_t>(i);
            return p;
        }
        if (w == kSlotTombstone) {
            if (p.free < 0)
                p.free = static_cast<std::int64_t>(i);
            continue;
        }
        if ((w >> kTagShift) != (hash >> kTagShift))
            continue;
        EntryView e = entry(slot_off(w));
        if (e.hash == hash && e.key == key) {
            p.found = static_cast<std::int64_t>(i);
            return p;
        }
    }
    return p;
}

// Frees a block the dict held; never throws (a block that is somehow not live is left).
void DictOps::free_block(std::uint64_t off) noexcept {
    try {
        h.deallocate(off);
    } catch (...) {
    }
}

// Makes room for one more entry: a new table (doubled, or rehashed to drop tombstones).
void DictOps::ensure_room() {
    std::uint64_t toff = c->table.load(std::memory_order_relaxed);
    std::uint64_t cap = toff ? table(toff).capacity : 0;
    if (toff && (c->count + c->tombstones + 1) * 4 <= cap * 3)
        return;
    std::uint64_t want = kMinCapacity;
    while (want < (c->count + 1) * 2)
        want *= 2; // at most half full after the rebuild
    // Owned by us while we fill it: if we die now the heap reclaims it.
    std::uint64_t noff = h.allocate(sizeof(TableHeader) + want * sizeof(std::uint64_t));
    static_cast<TableHeader *>(h.to_ptr(noff))->capacity = want;
    Table nt = table(noff);
    auto *ns = nt.slots;
    for (std::uint64_t i = 0; i < want; ++i)
        ns[i].store(kSlotEmpty, std::memory_order_relaxed);
    if (toff) {
        Table ot = table(toff);
        std::uint64_t moved = 0;
        for (std::uint64_t i = 0; i < ot.capacity; ++i) {
            std::uint64_t w = ot.slots[i].load(std::memory_order_relaxed);
            if (!is_entry(w))
                continue;
            // The shared count may lie: never more entries than the new table can take.
            if (++moved >= want) {
                free_block(noff);
                corrupt("more entries than its count says");
            }
            std::uint64_t hash = entry(slot_off(w)).hash;
            std::uint64_t j = hash & (want - 1);
            while (ns[j].load(std::memory_order_relaxed) != kSlotEmpty)
                j = (j + 1) & (want - 1);
            ns[j].store(w, std::memory_order_relaxed);
        }
    }
    step("table_filled");
    c->retired_table.store(toff, std::memory_order_relaxed);
    step("table_retired");
    try {
        h.transfer(noff, kOwnerHeld);
    } catch (...) {
        c->retired_table.store(0, std::memory_order_relaxed);
        free_block(noff);
        throw;
    }
    // SYNC POINT: publish; pairs with the lock acquire of the next holder (and the relaxed
    // loads in probe(), which run with the lock held).
    c->table.store(noff, std::memory_order_release);
    step("table_published");
    c->tombstones = 0;
    c->retired_table.store(0, std::memory_order_relaxed);
    if (toff)
        free_block(toff);
}

// Empties the table recorded in cleared_table (clear(), or its recovery).
void DictOps::finish_clear() noexcept {
    std::uint64_t toff = c->cleared_table.load(std::memory_order_relaxed);
    if (!toff)
        return;
    Table t;
    try {
        t = table(toff);
    } catch (const CorruptSegment &) {
        c->cleared_table.store(0, std::memory_order_relaxed);
        return; // nothing we can trust to free
    }
    auto *s = t.slots;
    for (std::uint64_t i = 0; i < t.capacity; ++i) {
        std::uint64_t w = s[i].load(std::memory_order_relaxed);
        if (!is_entry(w))
            continue;
        s[i].store(kSlotEmpty, std::memory_order_relaxed); // forget first, then free
        free_block(slot_off(w));
        step("clearing");
    }
    c->cleared_table.store(0, std::memory_order_relaxed);
    free_block(toff);
}

// Run by the locker that took the lock over from a dead holder (the recover callback of
// RobustMutex::lock/try_lock, lock held): finish what the dead holder started.
void DictOps::recover() {
    std::uint64_t toff = c->table.load(std::memory_order_relaxed);
    std::uint64_t re = c->retired_entry.load(std::memory_order_relaxed);
    if (re) {
        bool referenced = false;
        if (toff) {
            Table t = table(toff);
            auto *s = t.slots;
            for (std::uint64_t i = 0; i < t.capacity && !referenced; ++i)
                referenced = is_entry(s[i].load(std::memory_order_relaxed)) &&
                             slot_off(s[i].load(std::memory_order_relaxed)) == re;
        }
        c->retired_entry.store(0, std::memory_order_relaxed);
        if (!referenced)
            free_block(re);
    }
    std::uint64_t rt = c->retired_table.load(std::memory_order_relaxed);
    if (rt) {
        c->retired_table.store(0, std::memory_order_relaxed);
        if (rt != toff)
            free_block(rt);
    }
    finish_clear();
    recount();
}

void DictOps::recount() {
    c->count = c->tombstones = 0;
    std::uint64_t toff = c->table.load(std::memory_order_relaxed);
    if (!toff)
        return;
    Table t = table(toff);
    auto *s = t.slots;
    for (std::uint64_t i = 0; i < t.capacity; ++i) {
        std::uint64_t w = s[i].load(std::memory_order_relaxed);
        if (w == kSlotTombstone)
            ++c->tombstones;
        else if (is_entry(w))
            ++c->count;
    }
}

std::uint64_t dict_hash(std::string_view key) noexcept {
    // 8 bytes at a time, multiply-xorshift, murmur3's finalizer: fast for short keys and the
    // same in every process (std::hash is not promised to be).
    std::uint64_t h = 0x9E3779B97F4A7C15ull ^ (key.size() * 0xC2B2AE3D27D4EB4Full);
    const char *p = key.data();
    std::size_t n = key.size();
    for (; n >= 8; p += 8, n -= 8) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        h = (h ^ (v * 0x87C37B91114253D5ull)) * 0x4CF5AD432745937Full;
        h ^= h >> 31;
    }
    if (n) {
        std::uint64_t v = 0;
        std::memcpy(&v, p, n);
        h = (h ^ (v * 0x87C37B91114253D5ull)) * 0x4CF5AD432745937Full;
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return h;
}

} // namespace shmipc
