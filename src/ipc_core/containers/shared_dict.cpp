#include "ipc_core/containers/shared_dict.hpp"

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/testing/crash_point.hpp"

#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <pthread.h>
#include <string>
#include <type_traits>

namespace shmipc {

namespace {

constexpr std::uint64_t kDictMagic = 0x5443494450494D53; // "SMIPDICT"
constexpr std::uint32_t kDictLayoutVersion = 1;
constexpr std::uint64_t kSlotEmpty = 0;
constexpr std::uint64_t kSlotTombstone = 1; // offset 1 is never a block
constexpr unsigned kTagShift = 46;          // 6 segment bits + 40 offset bits below
constexpr std::uint64_t kOffMask = (std::uint64_t{1} << kTagShift) - 1;
constexpr std::size_t kMinCapacity = 16; // slots, power of two
static_assert(kMaxSegments <= 64 && kSegmentShift == 40, "heap offsets must fit in 46 bits");

struct TableHeader {
    std::uint64_t capacity; // slots, power of two
    std::uint64_t pad[7];   // slots start on their own cache line
};
static_assert(sizeof(TableHeader) == 64);

struct EntryHeader {
    std::uint64_t hash;
    std::uint32_t key_len; // bytes of UTF-8
    std::uint8_t tag;      // the caller's value encoding
    std::uint8_t pad[3];
    std::uint64_t value_len; // bytes
};
static_assert(sizeof(EntryHeader) == 24 && std::is_standard_layout_v<EntryHeader>);

constexpr std::size_t value_offset(std::size_t key_len) {
    return (sizeof(EntryHeader) + key_len + 15) / 16 * 16; // values 16-byte aligned
}

std::uint64_t make_slot(std::uint64_t off, std::uint64_t hash) {
    return (hash >> kTagShift << kTagShift) | off;
}
bool is_entry(std::uint64_t w) {
    return w > kSlotTombstone;
}
std::uint64_t slot_off(std::uint64_t w) {
    return w & kOffMask;
}

// A crash point at each step of a store (testing/crash_point.hpp: "dict.<step>").
inline void step(const char *name) {
    if (detail::g_crash_armed.load(std::memory_order_relaxed)) [[unlikely]]
        detail::crash_point_slow(("dict." + std::string(name)).c_str());
}

} // namespace

struct DictControl {
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t pad0;
    alignas(64) pthread_mutex_t mutex; // robust, process-shared; guards everything below
    // Heap offsets. Atomic so that each publication is one indivisible store; all accesses are
    // made with the mutex held, which orders them (relaxed/release would do; see SYNC POINTs).
    alignas(64) std::atomic<std::uint64_t> table; // TableHeader payload, 0: none yet
    std::atomic<std::uint64_t> retired_entry;     // entry being replaced/removed
    std::atomic<std::uint64_t> retired_table;     // table being replaced by a bigger one
    std::atomic<std::uint64_t> cleared_table;     // table being emptied by clear()
    std::uint64_t count;                          // live entries (rebuilt on recovery)
    std::uint64_t tombstones;                     // (rebuilt on recovery)
};
static_assert(std::is_standard_layout_v<DictControl>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// The table and entry walking, shared by the operations and the recovery.
struct DictOps {
    SharedDict &d;
    Heap &h;
    DictControl *c;

    TableHeader *table(std::uint64_t off) { return static_cast<TableHeader *>(h.to_ptr(off)); }
    static std::atomic<std::uint64_t> *slots(TableHeader *t) {
        return reinterpret_cast<std::atomic<std::uint64_t> *>(t + 1);
    }
    EntryHeader *entry(std::uint64_t off) { return static_cast<EntryHeader *>(h.to_ptr(off)); }
    static std::string_view key_of(EntryHeader *e) {
        return {reinterpret_cast<const char *>(e + 1), e->key_len};
    }
    static const std::byte *value_of(EntryHeader *e) {
        return reinterpret_cast<const std::byte *>(e) + value_offset(e->key_len);
    }

    struct Probe {
        TableHeader *t = nullptr;
        std::int64_t found = -1; // slot holding the key
        std::int64_t free = -1;  // first tombstone or empty slot on the way
    };
    Probe probe(std::string_view key, std::uint64_t hash) {
        Probe p;
        std::uint64_t toff = c->table.load(std::memory_order_relaxed);
        if (!toff)
            return p;
        p.t = table(toff);
        std::uint64_t mask = p.t->capacity - 1;
        auto *s = slots(p.t);
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
            EntryHeader *e = entry(slot_off(w));
            if (e->hash == hash && key_of(e) == key) {
                p.found = static_cast<std::int64_t>(i);
                return p;
            }
        }
        return p;
    }

    // Frees a block the dict held; never throws (a block that is somehow not live is left).
    void free_block(std::uint64_t off) noexcept {
        try {
            h.deallocate(off);
        } catch (...) {
        }
    }

    // Makes room for one more entry: a new table (doubled, or rehashed to drop tombstones).
    void ensure_room() {
        std::uint64_t toff = c->table.load(std::memory_order_relaxed);
        std::uint64_t cap = toff ? table(toff)->capacity : 0;
        if (toff && (c->count + c->tombstones + 1) * 4 <= cap * 3)
            return;
        std::uint64_t want = kMinCapacity;
        while (want < (c->count + 1) * 2)
            want *= 2; // at most half full after the rebuild
        // Owned by us while we fill it: if we die now the heap reclaims it.
        std::uint64_t noff = h.allocate(sizeof(TableHeader) + want * sizeof(std::uint64_t));
        TableHeader *nt = table(noff);
        nt->capacity = want;
        auto *ns = slots(nt);
        for (std::uint64_t i = 0; i < want; ++i)
            ns[i].store(kSlotEmpty, std::memory_order_relaxed);
        if (toff) {
            TableHeader *ot = table(toff);
            auto *os = slots(ot);
            for (std::uint64_t i = 0; i < ot->capacity; ++i) {
                std::uint64_t w = os[i].load(std::memory_order_relaxed);
                if (!is_entry(w))
                    continue;
                std::uint64_t hash = entry(slot_off(w))->hash;
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
        // SYNC POINT: publish; pairs with the mutex acquire of the next holder (and the relaxed
        // loads in probe(), which run with the mutex held).
        c->table.store(noff, std::memory_order_release);
        step("table_published");
        c->tombstones = 0;
        c->retired_table.store(0, std::memory_order_relaxed);
        if (toff)
            free_block(toff);
    }

    // Empties the table recorded in cleared_table (clear(), or its recovery).
    void finish_clear() noexcept {
        std::uint64_t toff = c->cleared_table.load(std::memory_order_relaxed);
        if (!toff)
            return;
        TableHeader *t = table(toff);
        auto *s = slots(t);
        for (std::uint64_t i = 0; i < t->capacity; ++i) {
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

    // Run by the locker that got EOWNERDEAD: finish what the dead holder started.
    void recover() {
        std::uint64_t toff = c->table.load(std::memory_order_relaxed);
        std::uint64_t re = c->retired_entry.load(std::memory_order_relaxed);
        if (re) {
            bool referenced = false;
            if (toff) {
                TableHeader *t = table(toff);
                auto *s = slots(t);
                for (std::uint64_t i = 0; i < t->capacity && !referenced; ++i)
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

    void recount() {
        c->count = c->tombstones = 0;
        std::uint64_t toff = c->table.load(std::memory_order_relaxed);
        if (!toff)
            return;
        TableHeader *t = table(toff);
        auto *s = slots(t);
        for (std::uint64_t i = 0; i < t->capacity; ++i) {
            std::uint64_t w = s[i].load(std::memory_order_relaxed);
            if (w == kSlotTombstone)
                ++c->tombstones;
            else if (is_entry(w))
                ++c->count;
        }
    }
};

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

// ------------------------------------------------------------------------------------------

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
    EntryHeader *e =
        ops.entry(slot_off(DictOps::slots(p.t)[p.found].load(std::memory_order_relaxed)));
    fn(ctx, e->tag, DictOps::value_of(e), e->value_len);
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
    EntryHeader *eh = ops.entry(e.off_);
    std::string_view key = DictOps::key_of(eh);
    auto p = ops.probe(key, e.hash_);
    if (p.found >= 0 && only_if_absent) {
        if (fn) {
            EntryHeader *old =
                ops.entry(slot_off(DictOps::slots(p.t)[p.found].load(std::memory_order_relaxed)));
            fn(ctx, old->tag, DictOps::value_of(old), old->value_len);
        }
        return false; // `e` frees itself
    }
    if (p.found < 0) {
        // A new key: make room first (this may rebuild the table, so probe again).
        ops.ensure_room();
        p = ops.probe(key, e.hash_);
    }
    auto *s = DictOps::slots(p.t);
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
    auto *s = DictOps::slots(p.t);
    std::uint64_t old = slot_off(s[p.found].load(std::memory_order_relaxed));
    if (fn) {
        EntryHeader *e = ops.entry(old);
        fn(ctx, e->tag, DictOps::value_of(e), e->value_len);
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
    return toff ? static_cast<TableHeader *>(heap_->to_ptr(toff))->capacity : 0;
}

void SharedDict::for_each(const Guard &, ItemFn fn, void *ctx) {
    DictOps ops{*this, *heap_, ctl_};
    std::uint64_t toff = ctl_->table.load(std::memory_order_relaxed);
    if (!toff)
        return;
    TableHeader *t = ops.table(toff);
    auto *s = DictOps::slots(t);
    for (std::uint64_t i = 0; i < t->capacity; ++i) {
        std::uint64_t w = s[i].load(std::memory_order_relaxed);
        if (!is_entry(w))
            continue;
        EntryHeader *e = ops.entry(slot_off(w));
        fn(ctx, DictOps::key_of(e), e->tag, DictOps::value_of(e), e->value_len);
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
    TableHeader *t = ops.table(toff);
    if (!std::has_single_bit(t->capacity))
        fail("capacity not a power of two");
    auto *s = DictOps::slots(t);
    std::uint64_t live = 0, tomb = 0;
    for (std::uint64_t i = 0; i < t->capacity; ++i) {
        std::uint64_t w = s[i].load(std::memory_order_relaxed);
        if (w == kSlotTombstone)
            ++tomb;
        if (!is_entry(w))
            continue;
        ++live;
        std::uint64_t off = slot_off(w);
        if (heap_->owner_of(off) != kOwnerHeld)
            fail("entry not held by the heap");
        EntryHeader *e = ops.entry(off);
        if (value_offset(e->key_len) + e->value_len > heap_->block_capacity(off))
            fail("entry larger than its block");
        if (e->hash != dict_hash(DictOps::key_of(e)) || make_slot(off, e->hash) != w)
            fail("entry hash does not match its key");
        if (ops.probe(DictOps::key_of(e), e->hash).found != static_cast<std::int64_t>(i))
            fail("entry not reachable by probing (or a duplicate key)");
    }
    if (live != ctl_->count || tomb != ctl_->tombstones)
        fail("counts do not match the table");
}

} // namespace shmipc
