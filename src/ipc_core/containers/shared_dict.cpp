// Shared dicts (shared_dict.hpp): the SharedDict handle. Creating or attaching the named
// control block, the dict's robust lock (with recovery after a dead holder), entries prepared
// outside the lock, and the operations (get, publish, erase, iteration, clear) with the store
// protocol of shared_dict.hpp; the invariant check of the tests. The table: shared_dict_table.cpp.
#include "ipc_core/containers/shared_dict_table.hpp"

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <new>
#include <pthread.h>
#include <string>

namespace shmipc {

using namespace dict_detail; // the slot word, table and entry headers

SharedDict::SharedDict(Heap &heap, std::string_view name, std::optional<double> timeout_s)
    : heap_(&heap) {
    auto [off, created] = heap.find_or_create_named(
        name, sizeof(DictControl),
        [](void *p) {
            auto *c = new (p) DictControl{};
            pthread_mutexattr_t a;
            ::pthread_mutexattr_init(&a);
            ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
            ::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
            int r = ::pthread_mutex_init(&c->mutex, &a);
            ::pthread_mutexattr_destroy(&a);
            if (r != 0)
                throw_errno(r, "pthread_mutex_init");
            c->layout_version = kDictLayoutVersion;
            c->magic = kDictMagic; // last: the heap publishes the entry after init returns
        },
        kNamedDict, timeout_s);
    (void)created;
    ctl_off_ = off;
    ctl_ = static_cast<DictControl *>(heap.to_ptr(off));
    if (ctl_->magic != kDictMagic || ctl_->layout_version != kDictLayoutVersion)
        throw CorruptSegment("shared dict '" + std::string(name) +
                             "' has a bad header (not a dict of this shmipc version)");
}

SharedDict::Guard &SharedDict::Guard::operator=(Guard &&o) noexcept {
    if (this != &o) {
        if (mutex_)
            ::pthread_mutex_unlock(static_cast<pthread_mutex_t *>(mutex_));
        mutex_ = o.mutex_;
        o.mutex_ = nullptr;
    }
    return *this;
}

SharedDict::Guard::~Guard() {
    if (mutex_)
        ::pthread_mutex_unlock(static_cast<pthread_mutex_t *>(mutex_));
}

namespace {
// After EOWNERDEAD: repair, then mark the mutex consistent. If the repair throws, unlocking
// without pthread_mutex_consistent makes the mutex ENOTRECOVERABLE for everyone (reported as
// CorruptSegment) instead of handing out a half-repaired dict.
template <class F> void recover_or_poison(pthread_mutex_t *m, F &&repair) {
    try {
        repair();
    } catch (...) {
        ::pthread_mutex_unlock(m);
        throw;
    }
    ::pthread_mutex_consistent(m);
}
} // namespace

SharedDict::Guard SharedDict::try_lock() {
    int r = ::pthread_mutex_trylock(&ctl_->mutex);
    if (r == 0)
        return Guard(&ctl_->mutex);
    if (r == EBUSY)
        return Guard();
    if (r == EOWNERDEAD) {
        DictOps ops{*this, *heap_, ctl_};
        recover_or_poison(&ctl_->mutex, [&] { ops.recover(); });
        return Guard(&ctl_->mutex);
    }
    if (r == ENOTRECOVERABLE)
        throw CorruptSegment("shared dict is unrecoverable (a repair after a crash failed)");
    throw_errno(r, "pthread_mutex_trylock");
}

SharedDict::Guard SharedDict::lock(std::optional<double> timeout_s) {
    Deadline dl(timeout_s);
    for (;;) {
        if (Guard g = try_lock())
            return g;
        if (dl.expired())
            throw Timeout("timed out waiting for the shared dict's lock (held by another "
                          "process or thread)");
        timespec now{};
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        auto ns = dl.slice().count();
        timespec until{now.tv_sec + static_cast<time_t>(ns / 1000000000),
                       now.tv_nsec + static_cast<long>(ns % 1000000000)};
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec += 1;
            until.tv_nsec -= 1000000000;
        }
        int r = ::pthread_mutex_clocklock(&ctl_->mutex, CLOCK_MONOTONIC, &until);
        if (r == 0)
            return Guard(&ctl_->mutex);
        if (r == EOWNERDEAD) {
            DictOps ops{*this, *heap_, ctl_};
            recover_or_poison(&ctl_->mutex, [&] { ops.recover(); });
            return Guard(&ctl_->mutex);
        }
        if (r == ENOTRECOVERABLE)
            throw CorruptSegment("shared dict is unrecoverable (a repair after a crash failed)");
        if (r != ETIMEDOUT)
            throw_errno(r, "pthread_mutex_clocklock");
        check_interrupt();
    }
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
        // SYNC POINT: publish the fully written entry; pairs with the next holder's mutex acquire.
        s[p.found].store(w, std::memory_order_release);
        e.off_ = 0;
        step("entry_replaced");
        ctl_->retired_entry.store(0, std::memory_order_relaxed);
        ops.free_block(old);
        return true;
    }
    bool was_tombstone = s[p.free].load(std::memory_order_relaxed) == kSlotTombstone;
    heap_->transfer(e.off_, kOwnerHeld);
    // SYNC POINT: publish the fully written entry; pairs with the next holder's mutex acquire.
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
