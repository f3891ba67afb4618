// Shared dicts (shared_dict.hpp): the SharedDict handle. Creating or attaching the named
// control block, the dict's robust lock (with recovery after a dead holder), entries prepared
// outside the lock, and the operations (get, publish, erase, iteration, clear) with the store
// protocol of shared_dict.hpp; the invariant check of the tests. The table: shared_dict_table.cpp.
#include "ipc_core/containers/shared_dict_table.hpp"

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <new>
#include <string>

namespace shmipc {

using namespace dict_detail; // the slot word, table and entry headers

SharedDict::SharedDict(Heap &heap, std::string_view name, std::optional<double> timeout_s)
    : heap_(&heap) {
    auto [off, created] = heap.find_or_create_named(
        name, sizeof(DictControl),
        [](void *p) {
            auto *c = new (p) DictControl{}; // the lock word starts free (0)
            c->layout_version = kDictLayoutVersion;
            c->magic = kDictMagic; // last: the heap publishes the entry after init returns
        },
        kNamedDict, timeout_s);
    (void)created;
    const std::string what = "shared dict '" + std::string(name) + "'";
    if (heap.block_capacity(off) < sizeof(DictControl))
        throw CorruptSegment(what + " has a control block too small for its layout");
    ctl_off_ = off;
    ctl_ = static_cast<DictControl *>(heap.to_ptr(off));
    if (ctl_->magic != kDictMagic || ctl_->layout_version != kDictLayoutVersion)
        throw CorruptSegment(what + " has a bad header (not a dict of this shmipc version)");
    mu_ = RobustMutex(ctl_->lock, heap.clients(), what);
    mu_.validate(); // a scribbled or poisoned lock word fails the attach at once
}

SharedDict::Guard &SharedDict::Guard::operator=(Guard &&o) noexcept {
    if (this != &o) {
        // SYNC POINT: release (RobustMutex::unlock), pairs with the acquire of the next locker:
        // every store made under the lock is seen by the next holder.
        if (mutex_)
            mutex_->unlock();
        mutex_ = o.mutex_;
        o.mutex_ = nullptr;
    }
    return *this;
}

SharedDict::Guard::~Guard() {
    // SYNC POINT: release (RobustMutex::unlock), pairs with the acquire of the next locker.
    if (mutex_)
        mutex_->unlock();
}

SharedDict::Guard SharedDict::try_lock() {
    DictOps ops{*this, *heap_, ctl_};
    // SYNC POINT: acquire (RobustMutex::try_lock: the CAS, or the take-over CAS from a dead
    // holder), pairs with the release of the last unlock: the table, slots and records it left
    // are seen. After a dead holder, ops.recover() runs with the lock held (a throw poisons it).
    if (!mu_.try_lock(heap_->lock_token(), [&ops] { ops.recover(); }))
        return Guard();
    return Guard(&mu_);
}

SharedDict::Guard SharedDict::lock(std::optional<double> timeout_s) {
    Deadline dl(timeout_s);
    DictOps ops{*this, *heap_, ctl_};
    // SYNC POINT: acquire (RobustMutex::lock), pairs with the release of the last unlock (or,
    // after a dead holder, with its last stores: the take-over CAS, then ops.recover()). Waits
    // in slices: check_interrupt() between them, Timeout at the deadline, also while a stopped
    // holder keeps it.
    mu_.lock(heap_->lock_token(), dl, [&ops] { ops.recover(); });
    return Guard(&mu_);
}

// --- entries ---------------------------------------------------------------------------------

SharedDict::Entry::Entry(Entry &&o) noexcept
    : heap_(o.heap_), off_(o.off_), hash_(o.hash_), value_(o.value_) {
    o.off_ = 0;
}

SharedDict::Entry &SharedDict::Entry::operator=(Entry &&o) noexcept {
    if (this != &o) {
        this->~Entry();
        heap_ = o.heap_;
        off_ = o.off_;
        hash_ = o.hash_;
        value_ = o.value_;
        o.off_ = 0;
    }
    return *this;
}

SharedDict::Entry::~Entry() {
    if (off_) {
        try {
            heap_->deallocate(off_);
        } catch (...) {
        }
    }
}

SharedDict::Entry SharedDict::make_entry(std::string_view key, std::uint8_t tag,
                                         std::size_t value_size) {
    if (key.size() > UINT32_MAX)
        throw InvalidArgument("key too long");
    if (tag == 0)
        throw InvalidArgument("value tag 0 is reserved");
    Entry e;
    e.heap_ = heap_;
    e.hash_ = dict_hash(key);
    std::size_t vo = value_offset(key.size());
    e.off_ = heap_->allocate(vo + std::max<std::size_t>(value_size, 1));
    auto *h = static_cast<EntryHeader *>(heap_->to_ptr(e.off_));
    h->hash = e.hash_;
    h->key_len = static_cast<std::uint32_t>(key.size());
    h->tag = tag;
    h->value_len = value_size;
    std::memcpy(h + 1, key.data(), key.size());
    e.value_ = reinterpret_cast<std::byte *>(h) + vo;
    return e;
}

// --- operations ------------------------------------------------------------------------------

bool SharedDict::get(const Guard &, std::string_view key, ValueFn fn, void *ctx) {
    DictOps ops{*this, *heap_, ctl_};
    auto p = ops.probe(key, dict_hash(key));
    if (p.found < 0)
        return false;
    auto e = ops.entry(slot_off(p.t.slots[p.found].load(std::memory_order_relaxed)));
    fn(ctx, e.tag, e.value, e.value_len);
    return true;
}

bool SharedDict::contains(const Guard &, std::string_view key) {
    DictOps ops{*this, *heap_, ctl_};
    return ops.probe(key, dict_hash(key)).found >= 0;
}

bool SharedDict::publish(const Guard &, Entry &&e, bool only_if_absent, ValueFn fn, void *ctx) {
    if (!e.off_ || e.heap_ != heap_)
        throw InvalidArgument("not an unpublished entry");
    DictOps ops{*this, *heap_, ctl_};
    std::string_view key = ops.entry(e.off_).key;
    auto p = ops.probe(key, e.hash_);
    if (p.found >= 0 && only_if_absent) {
        if (fn) {
            auto old = ops.entry(slot_off(p.t.slots[p.found].load(std::memory_order_relaxed)));
            fn(ctx, old.tag, old.value, old.value_len);
        }
        return false; // `e` frees itself
    }
    if (p.found < 0) {
        // A new key: make room first (this may rebuild the table, so probe again).
        ops.ensure_room();
        p = ops.probe(key, e.hash_);
    }
    if (p.found < 0 && p.free < 0)
        ops.corrupt("no free slot after making room");
    auto *s = p.t.slots;
    std::uint64_t w = make_slot(e.off_, e.hash_);
    if (p.found >= 0) {
        std::uint64_t old = slot_off(s[p.found].load(std::memory_order_relaxed));
        ctl_->retired_entry.store(old, std::memory_order_relaxed); // record before unlinking
        step("entry_retired");
        heap_->transfer(e.off_, kOwnerHeld);
        // SYNC POINT: publish the fully written entry; pairs with the next holder's lock acquire.
        s[p.found].store(w, std::memory_order_release);
        e.off_ = 0;
        step("entry_replaced");
        ctl_->retired_entry.store(0, std::memory_order_relaxed);
        ops.free_block(old);
        return true;
    }
    bool was_tombstone = s[p.free].load(std::memory_order_relaxed) == kSlotTombstone;
    heap_->transfer(e.off_, kOwnerHeld);
    // SYNC POINT: publish the fully written entry; pairs with the next holder's lock acquire.
    s[p.free].store(w, std::memory_order_release);
    e.off_ = 0;
    step("entry_inserted");
    ++ctl_->count;
    if (was_tombstone)
        --ctl_->tombstones;
    return true;
}

bool SharedDict::erase(const Guard &, std::string_view key, ValueFn fn, void *ctx) {
    DictOps ops{*this, *heap_, ctl_};
    auto p = ops.probe(key, dict_hash(key));
    if (p.found < 0)
        return false;
    auto *s = p.t.slots;
    std::uint64_t old = slot_off(s[p.found].load(std::memory_order_relaxed));
    if (fn) {
        auto e = ops.entry(old);
        fn(ctx, e.tag, e.value, e.value_len);
    }
    ctl_->retired_entry.store(old, std::memory_order_relaxed);
    step("erase_retired");
    s[p.found].store(kSlotTombstone, std::memory_order_release);
    step("erase_unlinked");
    --ctl_->count;
    ++ctl_->tombstones;
    ctl_->retired_entry.store(0, std::memory_order_relaxed);
    ops.free_block(old);
    return true;
}

std::size_t SharedDict::size(const Guard &) const {
    return ctl_->count;
}

std::size_t SharedDict::capacity(const Guard &) const {
    std::uint64_t toff = ctl_->table.load(std::memory_order_relaxed);
    DictOps ops{const_cast<SharedDict &>(*this), *heap_, ctl_};
    return toff ? ops.table(toff).capacity : 0;
}

void SharedDict::for_each(const Guard &, ItemFn fn, void *ctx) {
    DictOps ops{*this, *heap_, ctl_};
    std::uint64_t toff = ctl_->table.load(std::memory_order_relaxed);
    if (!toff)
        return;
    auto t = ops.table(toff);
    for (std::uint64_t i = 0; i < t.capacity; ++i) {
        std::uint64_t w = t.slots[i].load(std::memory_order_relaxed);
        if (!is_entry(w))
            continue;
        auto e = ops.entry(slot_off(w));
        fn(ctx, e.key, e.tag, e.value, e.value_len);
    }
}

void SharedDict::clear(const Guard &) {
    DictOps ops{*this, *heap_, ctl_};
    std::uint64_t toff = ctl_->table.load(std::memory_order_relaxed);
    if (!toff)
        return;
    ctl_->cleared_table.store(toff, std::memory_order_relaxed); // record, then unlink
    ctl_->table.store(0, std::memory_order_release);
    step("clear_unlinked");
    ctl_->count = ctl_->tombstones = 0;
    ops.finish_clear();
}

void SharedDict::check_invariants(const Guard &) {
    DictOps ops{*this, *heap_, ctl_};
    auto fail = [](const std::string &why) {
        throw CorruptSegment("shared dict invariant: " + why);
    };
    if (ctl_->retired_entry.load() || ctl_->retired_table.load() || ctl_->cleared_table.load())
        fail("a pending record outside an operation");
    std::uint64_t toff = ctl_->table.load(std::memory_order_relaxed);
    if (!toff) {
        if (ctl_->count || ctl_->tombstones)
            fail("counts without a table");
        return;
    }
    if (heap_->owner_of(toff) != kOwnerHeld)
        fail("table not held by the heap");
    auto t = ops.table(toff); // checks the capacity
    auto *s = t.slots;
    std::uint64_t live = 0, tomb = 0;
    for (std::uint64_t i = 0; i < t.capacity; ++i) {
        std::uint64_t w = s[i].load(std::memory_order_relaxed);
        if (w == kSlotTombstone)
            ++tomb;
        if (!is_entry(w))
            continue;
        ++live;
        std::uint64_t off = slot_off(w);
        if (heap_->owner_of(off) != kOwnerHeld)
            fail("entry not held by the heap");
        auto e = ops.entry(off); // checks the lengths against the block
        if (e.hash != dict_hash(e.key) || make_slot(off, e.hash) != w)
            fail("entry hash does not match its key");
        if (ops.probe(e.key, e.hash).found != static_cast<std::int64_t>(i))
            fail("entry not reachable by probing (or a duplicate key)");
    }
    if (live != ctl_->count || tomb != ctl_->tombstones)
        fail("counts do not match the table");
}

} // namespace shmipc
