#include "ipc_core/heap/heap.hpp"

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/shm_name.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <thread>
#include <type_traits>
#include <unistd.h>

namespace shmipc {

// ------------------------------------------------------------------------------------------
// Shared layout
// ------------------------------------------------------------------------------------------

namespace {

constexpr std::uint64_t kControlMagic = 0x314c5254434d5048ULL; // "HPMCTRL1"
constexpr std::size_t kBins = 64;
// Exact block sizes 1..65 units: every payload up to kCacheMaxBlock bytes.
constexpr std::size_t kCacheClasses =
    (kCacheMaxBlock + kBlockHeaderSize + kHeapUnit - 1) / kHeapUnit;
constexpr std::uint64_t kMaxAlign = 4096; // mappings are only page aligned

// BlockHeader::word: | size in units (36) | owner (16) | state (4) | magic (8) |
constexpr std::uint64_t kWordMagic = 0xB7;
enum State : std::uint64_t { kFree = 1, kUsed = 2, kCached = 3 };

constexpr std::uint64_t make_word(std::uint64_t units, std::uint16_t owner, State st) {
    return (units << 28) | (std::uint64_t{owner} << 12) | (std::uint64_t{st} << 8) | kWordMagic;
}
constexpr std::uint64_t w_units(std::uint64_t w) {
    return w >> 28;
}
constexpr std::uint16_t w_owner(std::uint64_t w) {
    return static_cast<std::uint16_t>(w >> 12);
}
constexpr std::uint64_t w_state(std::uint64_t w) {
    return (w >> 8) & 0xF;
}
constexpr bool w_valid(std::uint64_t w) {
    return (w & 0xFF) == kWordMagic && w_units(w) > 0 && w_state(w) >= kFree &&
           w_state(w) <= kCached;
}

struct BlockHeader {
    std::atomic<std::uint64_t> word; // the truth: every chain change is one store of this word
    std::uint64_t prev_units;        // size of the previous block (derived, rebuilt on recovery)
};
static_assert(sizeof(BlockHeader) == kBlockHeaderSize);
static_assert(std::is_standard_layout_v<BlockHeader>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// Links of a free block, in its payload.
struct FreeLinks {
    std::uint64_t next; // header offset, 0 = end
    std::uint64_t prev;
};

struct SegmentInfo {
    std::uint64_t size;        // bytes of the file
    std::uint64_t arena_begin; // first block header (byte offset in the segment)
    std::uint64_t arena_end;   // end of the last block
};

struct ClientSlot {
    std::atomic<std::uint32_t> state; // 0 free, 1 active
    std::int32_t pid;                 // diagnostics only; liveness is the OFD lock
    std::uint64_t pad[7];
};
static_assert(sizeof(ClientSlot) == 64);

enum NamedState : std::uint32_t { kNamedEmpty = 0, kNamedInit = 1, kNamedReady = 2 };

struct NamedEntry {
    char name[kMaxNamedLength + 1];
    std::atomic<std::uint32_t> state;
    std::uint32_t kind;
    std::uint64_t offset;  // payload
    std::uint64_t nbytes;  // as asked
    std::uint16_t creator; // client running init
    std::uint16_t pad16[3];
};

} // namespace

struct HeapControl {
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t mode;     // permission bits of extensions
    std::uint64_t max_size; // bytes, all segments; == segs[0].size when the heap cannot grow
    std::uint32_t persistent;
    std::uint32_t anonymous;
    alignas(64) pthread_mutex_t mutex; // robust, process-shared; guards everything below
    alignas(64) std::atomic<std::uint32_t> segment_count; // SYNC POINT: release after segs[i]
    std::uint32_t pad0;
    SegmentInfo segs[kMaxSegments];
    std::uint64_t bins[kBins]; // free lists: header offsets
    FutexWord named_changed;   // bumped when a named entry becomes ready or vanishes
    alignas(64) ClientSlot clients[kMaxClients];
    NamedEntry named[kMaxNamed];
};
static_assert(std::is_standard_layout_v<HeapControl>);
static_assert(offsetof(HeapControl, mutex) == 64);
static_assert(sizeof(SegmentHeader) + sizeof(HeapControl) + 2 * 4096 <=
              kMinHeapSize); // tests simulate a death holding it
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

namespace {

std::size_t bin_of(std::uint64_t units) {
    if (units < 32)
        return static_cast<std::size_t>(units);
    // 32.. : one bin per power of two
    return std::min<std::size_t>(kBins - 1, 32 + (std::bit_width(units) - 6));
}

std::uint64_t seg_of(std::uint64_t off) {
    return off >> kSegmentShift;
}
std::uint64_t local_of(std::uint64_t off) {
    return off & kSegmentOffsetMask;
}
std::uint64_t make_off(std::uint64_t seg, std::uint64_t local) {
    return (seg << kSegmentShift) | local;
}

// First header of an arena starting at `from`: headers sit at 48 mod 64 so payloads are
// 64-byte aligned.
std::uint64_t first_header_at(std::uint64_t from) {
    return round_up(from + kBlockHeaderSize, kHeapUnit) - kBlockHeaderSize;
}

std::atomic<std::uint64_t> g_heap_serial{1};
std::atomic<unsigned> g_fork_generation{0};
std::once_flag g_atfork_once;

std::string extension_name(const std::string &base, std::size_t i) {
    return base + "." + std::to_string(i);
}

std::string human(std::uint64_t b) {
    return std::to_string(b) + " bytes";
}

} // namespace

// ------------------------------------------------------------------------------------------
// Process-local state
// ------------------------------------------------------------------------------------------

class ThreadCache {
  public:
    explicit ThreadCache(std::uint64_t s) : serial(s) {}
    std::uint64_t serial;            // heap handle it belongs to (never reused)
    std::atomic<bool> orphan{false}; // its thread exited: another thread may adopt it
    std::atomic<bool> dead{false};   // its heap handle closed
    std::array<std::vector<std::uint64_t>, kCacheClasses> lists; // header offsets
    static std::size_t capacity(std::size_t units) {
        return std::clamp<std::size_t>(32768 / (units * kHeapUnit), 4, 64);
    }
};

namespace {
struct TlsCaches {
    std::uint64_t last_serial = 0;
    ThreadCache *last = nullptr;
    std::vector<std::shared_ptr<ThreadCache>> all;
    ~TlsCaches() {
        for (auto &c : all)
            c->orphan.store(true, std::memory_order_release);
    }
};
thread_local TlsCaches tls_caches;
} // namespace

struct Heap::Impl {
    std::uint64_t serial = 0;
    unsigned fork_generation = 0;
    bool thread_cache = true;
    bool inherited = false;                         // a fork child's copy of its parent's handle
    std::atomic<std::uint64_t> slow_allocations{0}; // locked allocations (periodic reaping)
    UniqueFd lock_fd;                               // our own open file description (client lock)
    std::uint64_t client_slot_locked = ~0ULL;
    std::array<std::atomic<std::byte *>, kMaxSegments> bases{};
    std::array<std::uint64_t, kMaxSegments> sizes{};
    std::mutex map_mu;
    std::vector<MemorySegment> extensions; // index i-1 is segment i
    std::mutex caches_mu;
    std::vector<std::shared_ptr<ThreadCache>> caches;

    ThreadCache *cache() {
        if (tls_caches.last_serial == serial)
            return tls_caches.last;
        for (auto &c : tls_caches.all)
            if (c->serial == serial) {
                tls_caches.last_serial = serial;
                tls_caches.last = c.get();
                return c.get();
            }
        std::erase_if(tls_caches.all,
                      [](const auto &c) { return c->dead.load(std::memory_order_acquire); });
        std::shared_ptr<ThreadCache> c;
        {
            std::lock_guard g(caches_mu);
            for (auto &x : caches)
                if (x->orphan.exchange(false, std::memory_order_acq_rel)) {
                    c = x;
                    break;
                }
            if (!c) {
                c = std::make_shared<ThreadCache>(serial);
                caches.push_back(c);
            }
        }
        tls_caches.all.push_back(c);
        tls_caches.last_serial = serial;
        tls_caches.last = c.get();
        return c.get();
    }
};

// ------------------------------------------------------------------------------------------
// The lock and the chain operations (all called with the lock held)
// ------------------------------------------------------------------------------------------

namespace {

class Locked {
  public:
    template <class Recover> Locked(HeapControl *ctl, Recover &&recover) : ctl_(ctl) {
        int r = ::pthread_mutex_lock(&ctl_->mutex);
        if (r == EOWNERDEAD) {
            // A process died inside the allocator: the chain is consistent by construction,
            // the free lists may not be. Rebuild them, reclaim the dead, then go on.
            try {
                recover();
            } catch (...) {
                ::pthread_mutex_unlock(&ctl_->mutex); // -> ENOTRECOVERABLE for everyone
                throw;
            }
            ::pthread_mutex_consistent(&ctl_->mutex);
        } else if (r == ENOTRECOVERABLE) {
            throw CorruptSegment("heap lock is not recoverable (an earlier recovery failed)");
        } else if (r != 0) {
            throw_errno(r, "pthread_mutex_lock");
        }
    }
    ~Locked() { ::pthread_mutex_unlock(&ctl_->mutex); }
    Locked(const Locked &) = delete;
    Locked &operator=(const Locked &) = delete;

  private:
    HeapControl *ctl_;
};

} // namespace

// Everything that touches the chain lives in this helper so the Heap class stays readable.
struct HeapOps {
    Heap &h;
    HeapControl *ctl;
    Heap::Impl &im;

    BlockHeader *hdr(std::uint64_t off) { return static_cast<BlockHeader *>(h.to_ptr(off)); }
    FreeLinks *links(std::uint64_t off) {
        return static_cast<FreeLinks *>(h.to_ptr(off + kBlockHeaderSize));
    }

    void bin_insert(std::uint64_t off, std::uint64_t units) {
        auto b = bin_of(units);
        FreeLinks *l = links(off);
        l->prev = 0;
        l->next = ctl->bins[b];
        if (l->next)
            links(l->next)->prev = off;
        ctl->bins[b] = off;
    }
    void bin_remove(std::uint64_t off, std::uint64_t units) {
        FreeLinks *l = links(off);
        if (l->prev)
            links(l->prev)->next = l->next;
        else
            ctl->bins[bin_of(units)] = l->next;
        if (l->next)
            links(l->next)->prev = l->prev;
    }

    // Header offset of the block after `off` of `units`, or 0 at the end of its arena.
    std::uint64_t next_of(std::uint64_t off, std::uint64_t units) {
        std::uint64_t n = off + units * kHeapUnit;
        return local_of(n) < ctl->segs[seg_of(off)].arena_end ? n : 0;
    }

    // Units of padding in front of a free block at `off` so its payload is `align`-aligned.
    static std::uint64_t gap_units(std::uint64_t off, std::uint64_t align) {
        std::uint64_t p = local_of(off) + kBlockHeaderSize;
        if (p % align == 0)
            return 0;
        // the gap becomes a free block of its own: at least one unit
        return (round_up(p + kHeapUnit, align) - p) / kHeapUnit;
    }

    // A free block that fits, or 0.
    std::uint64_t find_fit(std::uint64_t units, std::uint64_t align) {
        for (std::size_t b = bin_of(units); b < kBins; ++b) {
            for (std::uint64_t off = ctl->bins[b]; off; off = links(off)->next) {
                std::uint64_t have = w_units(hdr(off)->word.load(std::memory_order_relaxed));
                std::uint64_t gap = align > kHeapUnit ? gap_units(off, align) : 0;
                if (have >= units + gap)
                    return off;
                if (b < 32 && align <= kHeapUnit)
                    break; // exact-size bin: all or nothing
            }
        }
        return 0;
    }

    // Turns free block `off` into a used block of `units` owned by `owner`; returns payload.
    std::uint64_t carve(std::uint64_t off, std::uint64_t units, std::uint64_t align,
                        std::uint16_t owner) {
        BlockHeader *b = hdr(off);
        std::uint64_t have = w_units(b->word.load(std::memory_order_relaxed));
        bin_remove(off, have);
        std::uint64_t gap = align > kHeapUnit ? gap_units(off, align) : 0;
        if (gap) {
            // Front padding stays free. Write the new header first, inside the free block
            // (invisible to a chain walk), then shrink the free block with one store.
            std::uint64_t rest = off + gap * kHeapUnit;
            BlockHeader *r = hdr(rest);
            r->prev_units = gap;
            r->word.store(make_word(have - gap, kOwnerNone, kFree), std::memory_order_relaxed);
            if (auto n = next_of(off, have))
                hdr(n)->prev_units = have - gap;
            b->word.store(make_word(gap, kOwnerNone, kFree), std::memory_order_release);
            bin_insert(off, gap);
            off = rest;
            b = r;
            have -= gap;
        }
        if (have > units) {
            std::uint64_t tail = off + units * kHeapUnit;
            BlockHeader *t = hdr(tail);
            t->prev_units = units;
            t->word.store(make_word(have - units, kOwnerNone, kFree), std::memory_order_relaxed);
            if (auto n = next_of(off, have))
                hdr(n)->prev_units = have - units;
            // One store publishes both the split and the allocation.
            b->word.store(make_word(units, owner, kUsed), std::memory_order_release);
            bin_insert(tail, have - units);
        } else {
            b->word.store(make_word(have, owner, kUsed), std::memory_order_release);
        }
        return off + kBlockHeaderSize;
    }

    // Frees a block whose word was `w` (used or cached); coalesces with free neighbours.
    // Returns false if the word changed meanwhile (someone else freed or moved it).
    bool release(std::uint64_t off, std::uint64_t w) {
        BlockHeader *b = hdr(off);
        std::uint64_t units = w_units(w);
        std::uint64_t merged = units;
        std::uint64_t n = next_of(off, units);
        std::uint64_t nw = n ? hdr(n)->word.load(std::memory_order_acquire) : 0;
        bool merge_next = n && w_state(nw) == kFree;
        if (merge_next)
            merged += w_units(nw);
        if (!b->word.compare_exchange_strong(w, make_word(merged, kOwnerNone, kFree),
                                             std::memory_order_acq_rel))
            return false;
        if (merge_next)
            bin_remove(n, w_units(nw));
        std::uint64_t start = off;
        if (b->prev_units) {
            std::uint64_t p = off - b->prev_units * kHeapUnit;
            BlockHeader *pb = hdr(p);
            std::uint64_t pw = pb->word.load(std::memory_order_acquire);
            if (w_state(pw) == kFree) {
                bin_remove(p, w_units(pw));
                merged += w_units(pw);
                pb->word.store(make_word(merged, kOwnerNone, kFree), std::memory_order_release);
                start = p;
            }
        }
        if (auto nn = next_of(start, merged))
            hdr(nn)->prev_units = merged;
        bin_insert(start, merged);
        return true;
    }

    template <class F> void walk(F &&f) {
        std::uint32_t count = ctl->segment_count.load(std::memory_order_acquire);
        for (std::uint32_t s = 0; s < count; ++s) {
            const SegmentInfo &si = ctl->segs[s];
            std::uint64_t off = make_off(s, si.arena_begin);
            std::uint64_t end = make_off(s, si.arena_end);
            while (off < end) {
                std::uint64_t w = hdr(off)->word.load(std::memory_order_acquire);
                if (!w_valid(w) || off + w_units(w) * kHeapUnit > end)
                    throw CorruptSegment("heap block chain broken at offset " +
                                         std::to_string(off));
                f(off, w);
                off += w_units(w) * kHeapUnit;
            }
        }
    }

    // Rebuilds free lists and prev sizes from the chain, coalescing adjacent free blocks (a
    // process killed between two steps of a free may leave them).
    void rebuild() {
        std::fill(std::begin(ctl->bins), std::end(ctl->bins), 0);
        std::uint32_t count = ctl->segment_count.load(std::memory_order_acquire);
        for (std::uint32_t s = 0; s < count; ++s) {
            const SegmentInfo &si = ctl->segs[s];
            std::uint64_t off = make_off(s, si.arena_begin);
            std::uint64_t end = make_off(s, si.arena_end);
            std::uint64_t prev_units = 0, free_start = 0, free_units = 0;
            auto flush = [&] {
                if (free_units)
                    bin_insert(free_start, free_units);
                free_units = 0;
            };
            while (off < end) {
                BlockHeader *b = hdr(off);
                std::uint64_t w = b->word.load(std::memory_order_acquire);
                if (!w_valid(w) || off + w_units(w) * kHeapUnit > end)
                    throw CorruptSegment("heap block chain broken at offset " +
                                         std::to_string(off));
                std::uint64_t u = w_units(w);
                off += u * kHeapUnit;
                if (w_state(w) == kFree && free_units) {
                    // Adjacent free blocks (a free was cut short): one store merges them.
                    free_units += u;
                    hdr(free_start)
                        ->word.store(make_word(free_units, kOwnerNone, kFree),
                                     std::memory_order_release);
                    prev_units = free_units;
                    continue;
                }
                b->prev_units = prev_units;
                flush();
                if (w_state(w) == kFree) {
                    free_start = off - u * kHeapUnit;
                    free_units = u;
                }
                prev_units = u;
            }
            flush();
        }
    }

    // With the lock held: frees the blocks of clients whose liveness lock is gone, recycles
    // their slots, and drops named objects a dead creator was still initialising.
    std::uint64_t reap_dead_locked() {
        std::vector<bool> dead(kMaxClients + 1, false);
        bool any = false;
        for (std::size_t i = 0; i < kMaxClients; ++i) {
            auto id = static_cast<std::uint16_t>(i + 1);
            if (id == h.client_)
                continue;
            if (ctl->clients[i].state.load(std::memory_order_acquire) == 0)
                continue;
            if (!byte_is_locked(im.lock_fd.get(), kClientLockBase + static_cast<off_t>(i))) {
                dead[id] = true;
                any = true;
            }
        }
        if (!any)
            return 0;
        std::uint64_t bytes = free_owned_by(dead);
        for (std::size_t id = 1; id <= kMaxClients; ++id)
            if (dead[id])
                ctl->clients[id - 1].state.store(0, std::memory_order_release);
        for (auto &e : ctl->named) {
            if (e.state.load(std::memory_order_acquire) == kNamedInit && e.creator <= kMaxClients &&
                dead[e.creator]) {
                std::uint64_t ho = e.offset - kBlockHeaderSize;
                std::uint64_t w = hdr(ho)->word.load(std::memory_order_acquire);
                if (w_valid(w) && w_state(w) == kUsed)
                    release(ho, w);
                e.state.store(kNamedEmpty, std::memory_order_release);
                notify_all(ctl->named_changed);
            }
        }
        return bytes;
    }

    // Run by the locker that got EOWNERDEAD.
    void recover() {
        rebuild();
        reap_dead_locked();
    }

    // Frees every block whose owner is in `dead` (a bitmap over client ids). Bytes freed.
    std::uint64_t free_owned_by(const std::vector<bool> &dead) {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> victims;
        walk([&](std::uint64_t off, std::uint64_t w) {
            auto st = w_state(w);
            auto o = w_owner(w);
            if ((st == kUsed || st == kCached) && o != kOwnerHeld && o < dead.size() && dead[o])
                victims.emplace_back(off, w);
        });
        std::uint64_t bytes = 0;
        for (auto &[off, w] : victims) {
            // Re-read: an earlier release may have merged this block into a neighbour (it
            // cannot: merges only absorb free blocks), or a live process took it meanwhile.
            std::uint64_t cur = hdr(off)->word.load(std::memory_order_acquire);
            if (cur != w)
                continue;
            if (release(off, w))
                bytes += w_units(w) * kHeapUnit;
        }
        return bytes;
    }
};

// ------------------------------------------------------------------------------------------
// Construction
// ------------------------------------------------------------------------------------------

namespace {

std::size_t control_end() {
    return sizeof(SegmentHeader) + sizeof(HeapControl);
}

void init_control(std::byte *data, std::size_t size, const HeapOptions &opt, bool anonymous) {
    auto *ctl = new (data + sizeof(SegmentHeader)) HeapControl;
    std::memset(static_cast<void *>(ctl), 0, sizeof(HeapControl));
    ctl->magic = kControlMagic;
    ctl->layout_version = kHeapLayoutVersion;
    ctl->mode = static_cast<std::uint32_t>(opt.mode);
    ctl->max_size = std::max<std::uint64_t>(size, opt.max_size);
    ctl->persistent = opt.persistent ? 1 : 0;
    ctl->anonymous = anonymous ? 1 : 0;
    pthread_mutexattr_t a;
    ::pthread_mutexattr_init(&a);
    ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    ::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int r = ::pthread_mutex_init(&ctl->mutex, &a);
    ::pthread_mutexattr_destroy(&a);
    if (r != 0)
        throw_errno(r, "pthread_mutex_init");
    std::uint64_t begin = first_header_at(control_end());
    std::uint64_t end = begin + (size - begin) / kHeapUnit * kHeapUnit;
    ctl->segs[0] = SegmentInfo{size, begin, end};
    auto *b = reinterpret_cast<BlockHeader *>(data + begin);
    b->prev_units = 0;
    b->word.store(make_word((end - begin) / kHeapUnit, kOwnerNone, kFree),
                  std::memory_order_relaxed);
    auto *l = reinterpret_cast<FreeLinks *>(data + begin + kBlockHeaderSize);
    l->next = l->prev = 0;
    ctl->bins[bin_of((end - begin) / kHeapUnit)] = begin; // segment 0: offset == local
    ctl->segment_count.store(1, std::memory_order_release);
}

std::size_t checked_size(std::size_t size) {
    if (size < kMinHeapSize)
        throw InvalidArgument("heap size must be at least " + std::to_string(kMinHeapSize) +
                              " bytes");
    if (size > kSegmentOffsetMask)
        throw InvalidArgument("heap size must be < 1 TiB");
    return round_up(size, page_size());
}

// Validates the control block of a mapped primary segment before anything else uses it.
HeapControl *validated_control(const MemorySegment &seg) {
    if (seg.size() < first_header_at(control_end()) + kHeapUnit)
        throw CorruptSegment("heap segment too small (" + std::to_string(seg.size()) + " bytes)");
    auto *ctl = reinterpret_cast<HeapControl *>(seg.data() + sizeof(SegmentHeader));
    auto fail = [](const char *why) {
        throw CorruptSegment(std::string("not a shmipc heap: ") + why);
    };
    if (ctl->magic != kControlMagic)
        fail("bad control magic");
    if (ctl->layout_version != kHeapLayoutVersion)
        fail("layout version mismatch");
    std::uint32_t n = ctl->segment_count.load(std::memory_order_acquire);
    if (n < 1 || n > kMaxSegments)
        fail("bad segment count");
    const SegmentInfo &s0 = ctl->segs[0];
    if (s0.size != seg.size() || s0.arena_begin != first_header_at(control_end()) ||
        s0.arena_end > s0.size || s0.arena_end <= s0.arena_begin ||
        (s0.arena_end - s0.arena_begin) % kHeapUnit)
        fail("bad arena bounds");
    if (ctl->max_size < s0.size)
        fail("bad max_size");
    for (std::uint32_t i = 1; i < n; ++i) {
        const SegmentInfo &s = ctl->segs[i];
        if (s.size > kSegmentOffsetMask || s.arena_end > s.size || s.arena_end <= s.arena_begin ||
            (s.arena_end - s.arena_begin) % kHeapUnit)
            fail("bad extension bounds");
    }
    return ctl;
}

void remove_leftover_extensions(const std::string &base) {
    for (std::size_t i = 1; i < kMaxSegments; ++i) {
        std::string n = extension_name(base, i);
        if (n.size() > kMaxNameLength + 1)
            break;
        std::string path = shm_path(n);
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
        if (!fd)
            continue;
        SegmentHeader h{};
        if (::pread(fd.get(), &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
            h.magic == kSegmentMagic &&
            h.kind == static_cast<std::uint32_t>(SegmentKind::HeapExtension))
            ::unlink(path.c_str());
    }
}

UniqueFd reopen_own_description(int fd) {
    std::string p = "/proc/self/fd/" + std::to_string(fd);
    UniqueFd r(::open(p.c_str(), O_RDWR | O_CLOEXEC));
    if (!r)
        throw_errno("open(/proc/self/fd)");
    return r;
}

} // namespace

unsigned process_generation() noexcept {
    return g_fork_generation.load(std::memory_order_relaxed);
}

static void setup_process_hooks() {
    std::call_once(g_atfork_once, [] {
        ::pthread_atfork(nullptr, nullptr,
                         [] { g_fork_generation.fetch_add(1, std::memory_order_relaxed); });
    });
}

std::unique_ptr<Heap> Heap::create(std::string_view name, const HeapOptions &opt) {
    setup_process_hooks();
    std::size_t size = checked_size(opt.size);
    std::string norm = normalize_shm_name(name);
    if (opt.max_size > size && norm.size() + 3 > kMaxNameLength + 1)
        throw InvalidArgument("name too long for a growing heap (extensions add '.N')");
    std::unique_ptr<Heap> h(new Heap);
    h->impl_ = std::make_unique<Impl>();
    h->primary_ = MemorySegment::create_named(
        norm, size, opt.mode, SegmentKind::Heap, kHeapLayoutVersion, opt.persistent,
        [&](std::byte *data) { init_control(data, size, opt, false); });
    // We just created the name: any extension named after it belongs to a dead predecessor.
    remove_leftover_extensions(norm);
    h->ctl_ = validated_control(h->primary_);
    h->impl_->thread_cache = opt.thread_cache;
    h->register_client();
    return h;
}

std::unique_ptr<Heap> Heap::attach(std::string_view name, bool thread_cache) {
    setup_process_hooks();
    std::unique_ptr<Heap> h(new Heap);
    h->impl_ = std::make_unique<Impl>();
    h->primary_ = MemorySegment::attach_named(name, SegmentKind::Heap, kHeapLayoutVersion,
                                              sizeof(SegmentHeader) + sizeof(HeapControl));
    if (!h->primary_.writable())
        throw OsError(EACCES, "heap '" + h->primary_.name() + "' is not writable for us");
    h->ctl_ = validated_control(h->primary_);
    h->impl_->thread_cache = thread_cache;
    h->register_client();
    return h;
}

std::unique_ptr<Heap> Heap::anonymous(const HeapOptions &opt) {
    setup_process_hooks();
    std::size_t size = checked_size(opt.size);
    if (opt.max_size > size)
        throw InvalidArgument(
            "anonymous heaps cannot grow (max_size > size): other processes could not map a "
            "memfd added later; use a named heap");
    std::unique_ptr<Heap> h(new Heap);
    h->impl_ = std::make_unique<Impl>();
    h->primary_ = MemorySegment::anonymous(size, "shmipc-heap");
    auto *sh = h->primary_.header();
    *sh = SegmentHeader{};
    sh->kind = static_cast<std::uint32_t>(SegmentKind::Heap);
    sh->layout_version = kHeapLayoutVersion;
    sh->total_size = size;
    sh->creator_pid = static_cast<std::int32_t>(::getpid());
    init_control(h->primary_.data(), size, opt, true);
    std::atomic_thread_fence(std::memory_order_release);
    sh->magic = kSegmentMagic;
    h->ctl_ = validated_control(h->primary_);
    h->impl_->thread_cache = opt.thread_cache;
    h->register_client();
    return h;
}

std::unique_ptr<Heap> Heap::from_fd(UniqueFd fd, bool thread_cache) {
    setup_process_hooks();
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    auto fsize = static_cast<std::size_t>(st.st_size);
    if (!S_ISREG(st.st_mode) || fsize < sizeof(SegmentHeader) + sizeof(HeapControl))
        throw CorruptSegment("fd is not a shmipc heap (too small or not a file)");
    SegmentHeader sh{};
    if (::pread(fd.get(), &sh, sizeof sh, 0) != static_cast<ssize_t>(sizeof sh) ||
        sh.magic != kSegmentMagic || sh.kind != static_cast<std::uint32_t>(SegmentKind::Heap) ||
        sh.layout_version != kHeapLayoutVersion || sh.total_size != fsize)
        throw CorruptSegment("fd is not a shmipc heap (bad header)");
    std::unique_ptr<Heap> h(new Heap);
    h->impl_ = std::make_unique<Impl>();
    h->primary_ = MemorySegment::map_fd(std::move(fd), fsize, true);
    h->ctl_ = validated_control(h->primary_);
    h->impl_->thread_cache = thread_cache;
    h->register_client();
    return h;
}

Heap::~Heap() {
    if (!impl_)
        return;
    // A fork child closing its parent's handle must not remove the parent's names.
    if (impl_->fork_generation != g_fork_generation.load(std::memory_order_relaxed))
        primary_.disown();
    else if (impl_->inherited)
        primary_.disown();
    unregister_client();
    if (primary_.owner() && ctl_ && !ctl_->persistent) {
        // The owner removes the derived names with the primary one.
        std::uint32_t n = ctl_->segment_count.load(std::memory_order_acquire);
        for (std::uint32_t i = 1; i < n; ++i) {
            try {
                unlink_named(extension_name(primary_.name(), i));
            } catch (...) {
            }
        }
    }
    impl_->extensions.clear();
    primary_.reset();
}

bool Heap::primary_name_is_ours() const {
    // Growth adds names derived from the primary one; once the owner removed (or someone
    // replaced) that name, nobody would remove them, so we do not grow any more.
    struct stat mine {
    }, named{};
    if (::fstat(primary_.fd(), &mine) != 0)
        return false;
    if (::stat(shm_path(primary_.name()).c_str(), &named) != 0)
        return false;
    return mine.st_ino == named.st_ino && mine.st_dev == named.st_dev;
}

int Heap::lock_fd() const noexcept {
    return impl_->lock_fd.get();
}
std::size_t Heap::max_size() const noexcept {
    return ctl_->max_size;
}

// ------------------------------------------------------------------------------------------
// Clients
// ------------------------------------------------------------------------------------------

void Heap::register_client() {
    impl_->serial = g_heap_serial.fetch_add(1, std::memory_order_relaxed);
    impl_->fork_generation = g_fork_generation.load(std::memory_order_relaxed);
    impl_->lock_fd = reopen_own_description(primary_.fd());
    impl_->bases[0].store(primary_.data(), std::memory_order_release);
    impl_->sizes[0] = primary_.size();
    // Map the extensions that exist now (before their owner could remove the names).
    std::uint32_t n = ctl_->segment_count.load(std::memory_order_acquire);
    for (std::uint32_t i = 1; i < n; ++i)
        (void)to_ptr(make_off(i, ctl_->segs[i].arena_begin));
    reap_dead_clients();
    HeapOps ops{*this, ctl_, *impl_};
    Locked lk(ctl_, [&] { ops.recover(); });
    for (std::size_t i = 0; i < kMaxClients; ++i) {
        ClientSlot &c = ctl_->clients[i];
        if (c.state.load(std::memory_order_acquire) != 0)
            continue;
        if (!try_lock_byte(impl_->lock_fd.get(), kClientLockBase + static_cast<off_t>(i), true))
            continue;
        c.pid = static_cast<std::int32_t>(::getpid());
        c.state.store(1, std::memory_order_release);
        client_ = static_cast<std::uint16_t>(i + 1);
        return;
    }
    throw LimitReached("heap has no free client slot (" + std::to_string(kMaxClients) +
                       " live handles)");
}

void Heap::unregister_client() noexcept {
    if (client_ == kOwnerNone)
        return;
    try {
        ensure_process();
        // A closing handle is treated like a dead one: its blocks (including its caches) go
        // back to the heap. Blocks meant to outlive it must be transferred first.
        HeapOps ops{*this, ctl_, *impl_};
        {
            Locked lk(ctl_, [&] { ops.recover(); });
            std::vector<bool> dead(kMaxClients + 1, false);
            dead[client_] = true;
            ops.free_owned_by(dead);
            ctl_->clients[client_ - 1].state.store(0, std::memory_order_release);
        }
        unlock_byte(impl_->lock_fd.get(), kClientLockBase + client_ - 1);
    } catch (...) {
    }
    std::lock_guard g(impl_->caches_mu);
    for (auto &c : impl_->caches) {
        for (auto &l : c->lists)
            l.clear();
        c->dead.store(true, std::memory_order_release);
    }
    impl_->caches.clear();
    client_ = kOwnerNone;
}

void Heap::ensure_process() {
    if (impl_->fork_generation == g_fork_generation.load(std::memory_order_relaxed))
        return;
    // We are a fork child using our parent's handle: the caches and the client slot are the
    // parent's. Drop the copies (without freeing: the blocks are the parent's) and become a
    // client of our own.
    {
        std::lock_guard g(impl_->caches_mu);
        for (auto &c : impl_->caches) {
            for (auto &l : c->lists)
                l.clear();
            c->dead.store(true, std::memory_order_release);
        }
        impl_->caches.clear();
    }
    tls_caches.last_serial = 0;
    client_ = kOwnerNone;
    impl_->inherited = true;
    primary_.disown(); // the name is the parent's to remove
    register_client();
}

bool Heap::client_alive(std::uint16_t id) const {
    if (id == kOwnerHeld)
        return true;
    if (id == kOwnerNone || id > kMaxClients)
        return false;
    if (id == client_)
        return true;
    const ClientSlot &c = ctl_->clients[id - 1];
    if (c.state.load(std::memory_order_acquire) == 0)
        return false;
    return byte_is_locked(impl_->lock_fd.get(), kClientLockBase + id - 1);
}

std::uint64_t Heap::reap_dead_clients() {
    // Unlocked pre-check: nothing to do in the common case (one fcntl per live client).
    bool any = false;
    for (std::size_t i = 0; i < kMaxClients && !any; ++i) {
        if (i + 1 == client_)
            continue;
        if (ctl_->clients[i].state.load(std::memory_order_acquire) == 0)
            continue;
        any = !byte_is_locked(impl_->lock_fd.get(), kClientLockBase + static_cast<off_t>(i));
    }
    if (!any)
        return 0;
    HeapOps ops{*this, ctl_, *impl_};
    Locked lk(ctl_, [&] { ops.recover(); });
    return ops.reap_dead_locked();
}

// ------------------------------------------------------------------------------------------
// Addressing
// ------------------------------------------------------------------------------------------

void *Heap::to_ptr(std::uint64_t off) {
    std::uint64_t s = seg_of(off);
    if (s >= kMaxSegments)
        throw InvalidArgument("heap offset out of range");
    std::byte *b = impl_->bases[s].load(std::memory_order_acquire);
    if (!b) {
        std::lock_guard g(impl_->map_mu);
        b = impl_->bases[s].load(std::memory_order_acquire);
        if (!b) {
            if (s >= ctl_->segment_count.load(std::memory_order_acquire) || anonymous())
                throw InvalidArgument("heap offset out of range (no such segment)");
            std::uint64_t size = ctl_->segs[s].size;
            MemorySegment seg =
                MemorySegment::attach_named(extension_name(primary_.name(), s),
                                            SegmentKind::HeapExtension, kHeapLayoutVersion, size);
            if (seg.size() != size)
                throw CorruptSegment("heap extension has the wrong size");
            b = seg.data();
            impl_->sizes[s] = size;
            impl_->extensions.resize(std::max<std::size_t>(impl_->extensions.size(), s));
            impl_->extensions[s - 1] = std::move(seg);
            // SYNC POINT: pairs with the acquire load above in other threads.
            impl_->bases[s].store(b, std::memory_order_release);
        }
    }
    std::uint64_t local = local_of(off);
    if (local >= impl_->sizes[s])
        throw InvalidArgument("heap offset out of range");
    return b + local;
}

void Heap::map_all_segments() {
    std::uint32_t n = ctl_->segment_count.load(std::memory_order_acquire);
    for (std::uint32_t i = 1; i < n && i < kMaxSegments; ++i)
        (void)to_ptr(make_off(i, first_header_at(sizeof(SegmentHeader))));
}

std::uint64_t Heap::to_offset(const void *p) const {
    auto *c = static_cast<const std::byte *>(p);
    for (std::size_t s = 0; s < kMaxSegments; ++s) {
        std::byte *b = impl_->bases[s].load(std::memory_order_acquire);
        if (b && c >= b && c < b + impl_->sizes[s])
            return make_off(s, static_cast<std::uint64_t>(c - b));
    }
    throw InvalidArgument("pointer is not inside this heap");
}

// ------------------------------------------------------------------------------------------
// Allocation
// ------------------------------------------------------------------------------------------

std::uint64_t Heap::allocate(std::size_t n, std::size_t align) {
    return allocate_owned(n, align, client_);
}

std::uint64_t Heap::allocate_owned(std::size_t n, std::size_t align, std::uint16_t owner) {
    if (n == 0)
        throw InvalidArgument("cannot allocate 0 bytes");
    if (align == 0 || !std::has_single_bit(align) || align > kMaxAlign)
        throw InvalidArgument("align must be a power of two <= " + std::to_string(kMaxAlign));
    ensure_process();
    if (owner == kOwnerNone)
        owner = client_;
    if (n > kSegmentOffsetMask / 2)
        throw OutOfMemory("cannot allocate " + human(n) + " from a shared heap (limit 512 GiB)");
    std::uint64_t units = (n + kBlockHeaderSize + kHeapUnit - 1) / kHeapUnit;

    // Fast path: an exact-size block from this thread's cache, no lock.
    if (impl_->thread_cache && align <= kHeapUnit && units <= kCacheClasses && owner == client_) {
        ThreadCache *c = impl_->cache();
        auto &l = c->lists[units - 1];
        if (!l.empty()) {
            std::uint64_t off = l.back();
            l.pop_back();
            auto *b = static_cast<BlockHeader *>(to_ptr(off));
            // Still ours (cached, owned by us): nobody else writes it. One store hands it out.
            b->word.store(make_word(units, owner, kUsed), std::memory_order_release);
            return off + kBlockHeaderSize;
        }
    }

    // Now and then (every 1024 locked allocations of this handle) look for dead clients, so
    // their blocks come back even if nobody calls stats() or runs out of memory.
    if ((impl_->slow_allocations++ & 1023) == 1023)
        reap_dead_clients();
    HeapOps ops{*this, ctl_, *impl_};
    std::uint64_t a = std::max<std::uint64_t>(align, kHeapUnit);
    bool growth_blocked = false; // max_size allows it, but the heap's name is gone
    for (bool reclaimed = false;;) {
        {
            Locked lk(ctl_, [&] { ops.recover(); });
            std::uint64_t off = ops.find_fit(units, a);
            if (off)
                return ops.carve(off, units, a, owner);
            // Grow (named heaps, within max_size).
            std::uint32_t count = ctl_->segment_count.load(std::memory_order_acquire);
            std::uint64_t total = 0;
            for (std::uint32_t i = 0; i < count; ++i)
                total += ctl_->segs[i].size;
            std::uint64_t header = first_header_at(sizeof(SegmentHeader));
            std::uint64_t need =
                round_up(header + (units + a / kHeapUnit) * kHeapUnit + kHeapUnit, page_size());
            bool may_grow = !anonymous() && count < kMaxSegments && total + need <= ctl_->max_size;
            if (may_grow && !primary_name_is_ours()) {
                may_grow = false;
                growth_blocked = true;
            }
            if (may_grow) {
                std::uint64_t want = std::max<std::uint64_t>(need, ctl_->segs[0].size);
                want = std::min<std::uint64_t>(want, ctl_->max_size - total);
                want = std::min<std::uint64_t>(want, kSegmentOffsetMask);
                want = want / page_size() * page_size();
                std::uint64_t end = header + (want - header) / kHeapUnit * kHeapUnit;
                std::string ext = extension_name(primary_.name(), count);
                MemorySegment seg = MemorySegment::create_named(
                    ext, want, ctl_->mode, SegmentKind::HeapExtension, kHeapLayoutVersion,
                    ctl_->persistent != 0, [&](std::byte *data) {
                        auto *b = reinterpret_cast<BlockHeader *>(data + header);
                        b->prev_units = 0;
                        b->word.store(make_word((end - header) / kHeapUnit, kOwnerNone, kFree),
                                      std::memory_order_relaxed);
                    });
                seg.disown(); // the heap's owner removes extension names, not the grower
                {
                    std::lock_guard g(impl_->map_mu);
                    impl_->sizes[count] = want;
                    impl_->extensions.resize(
                        std::max<std::size_t>(impl_->extensions.size(), count));
                    impl_->bases[count].store(seg.data(), std::memory_order_release);
                    impl_->extensions[count - 1] = std::move(seg);
                }
                ctl_->segs[count] = SegmentInfo{want, header, end};
                // SYNC POINT: pairs with the acquire loads of segment_count in to_ptr/walk.
                ctl_->segment_count.store(count + 1, std::memory_order_release);
                ops.bin_insert(make_off(count, header), (end - header) / kHeapUnit);
                continue;
            }
        }
        // Before failing: reclaim what dead processes and our own caches hold, once.
        if (!reclaimed) {
            reclaimed = true;
            flush_thread_caches();
            reap_dead_clients();
            continue;
        }
        HeapStats s = stats();
        throw OutOfMemory("cannot allocate " + human(n) +
                          (align > kHeapUnit ? " (align " + std::to_string(align) + ")" : "") +
                          " from shared heap" + (anonymous() ? "" : " '" + name() + "'") + ": " +
                          human(s.free) + " free, largest free block " + human(s.largest_free) +
                          ", heap size " + human(s.size) + " of max_size " + human(ctl_->max_size) +
                          (s.cached ? ", " + human(s.cached) + " in per-thread caches" : "") +
                          (growth_blocked ? " (cannot grow: the heap's name was removed)" : ""));
    }
}

namespace {
// Validates a payload offset and returns its header offset and current word.
std::pair<std::uint64_t, std::uint64_t> live_block(Heap &h, HeapControl *ctl, std::uint64_t off) {
    auto bad = [&](const char *why) {
        throw InvalidArgument("offset " + std::to_string(off) +
                              " is not a live block of this heap: " + why);
    };
    std::uint64_t s = seg_of(off);
    if (s >= ctl->segment_count.load(std::memory_order_acquire))
        bad("no such segment");
    const SegmentInfo &si = ctl->segs[s];
    std::uint64_t local = local_of(off);
    if (local < si.arena_begin + kBlockHeaderSize || local >= si.arena_end ||
        (local - kBlockHeaderSize - si.arena_begin) % kHeapUnit != 0)
        bad("not a block start");
    std::uint64_t ho = off - kBlockHeaderSize;
    std::uint64_t w =
        static_cast<BlockHeader *>(h.to_ptr(ho))->word.load(std::memory_order_acquire);
    if (!w_valid(w) || local - kBlockHeaderSize + w_units(w) * kHeapUnit > si.arena_end)
        bad("no block header");
    if (w_state(w) != kUsed)
        bad(w_state(w) == kFree ? "already free" : "already freed (cached)");
    return {ho, w};
}
} // namespace

void Heap::deallocate(std::uint64_t off) {
    ensure_process();
    for (;;) {
        auto [ho, w] = live_block(*this, ctl_, off);
        std::uint64_t units = w_units(w);
        if (impl_->thread_cache && units <= kCacheClasses) {
            ThreadCache *c = impl_->cache();
            auto &l = c->lists[units - 1];
            if (l.size() < ThreadCache::capacity(units)) {
                auto *b = static_cast<BlockHeader *>(to_ptr(ho));
                // CAS: a concurrent double free (or a reaper) must not also get it.
                if (!b->word.compare_exchange_strong(w, make_word(units, client_, kCached),
                                                     std::memory_order_acq_rel))
                    continue;
                l.push_back(ho);
                return;
            }
        }
        HeapOps ops{*this, ctl_, *impl_};
        Locked lk(ctl_, [&] { ops.recover(); });
        if (ops.release(ho, w))
            return;
    }
}

std::size_t Heap::block_capacity(std::uint64_t off) const {
    auto [ho, w] = live_block(const_cast<Heap &>(*this), ctl_, off);
    (void)ho;
    return w_units(w) * kHeapUnit - kBlockHeaderSize;
}

void Heap::flush_thread_caches(bool all_threads) {
    ensure_process();
    // Only caches nobody can be using: the calling thread's and those of exited threads (an
    // orphan is adopted under caches_mu, which we hold). Live threads' caches stay theirs.
    ThreadCache *mine = nullptr;
    for (auto &c : tls_caches.all)
        if (c->serial == impl_->serial)
            mine = c.get();
    HeapOps ops{*this, ctl_, *impl_};
    std::lock_guard g(impl_->caches_mu);
    Locked lk(ctl_, [&] { ops.recover(); });
    for (auto &c : impl_->caches) {
        if (!all_threads && c.get() != mine && !c->orphan.load(std::memory_order_acquire))
            continue;
        for (auto &l : c->lists) {
            for (std::uint64_t ho : l) {
                std::uint64_t w = ops.hdr(ho)->word.load(std::memory_order_acquire);
                if (w_state(w) == kCached && w_owner(w) == client_)
                    ops.release(ho, w);
            }
            l.clear();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Ownership
// ------------------------------------------------------------------------------------------

void Heap::transfer(std::uint64_t off, std::uint16_t new_owner) {
    if (new_owner == kOwnerNone || (new_owner > kMaxClients && new_owner != kOwnerHeld))
        throw InvalidArgument("bad owner " + std::to_string(new_owner));
    for (;;) {
        auto [ho, w] = live_block(*this, ctl_, off);
        std::uint64_t nw = make_word(w_units(w), new_owner, kUsed);
        // SYNC POINT: acq_rel so the data written before a transfer is visible to whoever
        // observes the new owner.
        if (static_cast<BlockHeader *>(to_ptr(ho))
                ->word.compare_exchange_strong(w, nw, std::memory_order_acq_rel))
            return;
    }
}

bool Heap::try_transfer(std::uint64_t off, std::uint16_t expected, std::uint16_t new_owner) {
    if (new_owner == kOwnerNone || (new_owner > kMaxClients && new_owner != kOwnerHeld))
        throw InvalidArgument("bad owner " + std::to_string(new_owner));
    auto [ho, w] = live_block(*this, ctl_, off);
    if (w_owner(w) != expected)
        return false;
    return static_cast<BlockHeader *>(to_ptr(ho))
        ->word.compare_exchange_strong(w, make_word(w_units(w), new_owner, kUsed),
                                       std::memory_order_acq_rel);
}

std::uint16_t Heap::owner_of(std::uint64_t off) const {
    return w_owner(live_block(const_cast<Heap &>(*this), ctl_, off).second);
}

// ------------------------------------------------------------------------------------------
// Named objects
// ------------------------------------------------------------------------------------------

namespace {
bool name_is(const NamedEntry &e, std::string_view n) {
    return std::strncmp(e.name, n.data(), n.size()) == 0 && e.name[n.size()] == '\0';
}
NamedInfo info_of(const NamedEntry &e) {
    return NamedInfo{std::string(e.name), e.kind, e.offset, e.nbytes};
}
} // namespace

std::pair<std::uint64_t, bool> Heap::find_or_create_named(std::string_view name, std::size_t nbytes,
                                                          const std::function<void(void *)> &init,
                                                          std::uint32_t kind,
                                                          std::optional<double> timeout_s) {
    if (name.empty() || name.size() > kMaxNamedLength || name.find('\0') != name.npos)
        throw InvalidArgument("a heap object name is 1.." + std::to_string(kMaxNamedLength) +
                              " bytes without NUL");
    if (nbytes == 0)
        throw InvalidArgument("a named block needs nbytes >= 1");
    ensure_process();
    Deadline deadline(timeout_s);
    HeapOps ops{*this, ctl_, *impl_};
    for (;;) {
        std::uint32_t seen = ctl_->named_changed.seq.load(std::memory_order_acquire);
        NamedEntry *mine = nullptr;
        std::uint64_t off = 0;
        bool wait = false;
        {
            Locked lk(ctl_, [&] { ops.recover(); });
            NamedEntry *found = nullptr;
            NamedEntry *empty = nullptr;
            for (auto &e : ctl_->named) {
                auto st = e.state.load(std::memory_order_acquire);
                if (st == kNamedEmpty) {
                    if (!empty)
                        empty = &e;
                } else if (name_is(e, name)) {
                    found = &e;
                }
            }
            if (found && found->state.load(std::memory_order_acquire) == kNamedReady) {
                if (found->kind != kind)
                    throw InvalidArgument("heap object '" + std::string(name) +
                                          "' exists with another kind");
                if (found->nbytes < nbytes)
                    throw InvalidArgument("heap object '" + std::string(name) + "' exists with " +
                                          std::to_string(found->nbytes) + " bytes, " +
                                          std::to_string(nbytes) + " asked");
                return {found->offset, false};
            }
            if (found) {
                wait = true; // being initialised; its creator may die (reaped below)
            } else {
                if (!empty)
                    throw OutOfMemory("heap directory full (" + std::to_string(kMaxNamed) +
                                      " named objects)");
                // Allocate with the lock held (no cache); grow handled by allocate_owned, so
                // release and retry through it if the arena is full.
                std::uint64_t units = (nbytes + kBlockHeaderSize + kHeapUnit - 1) / kHeapUnit;
                std::uint64_t fit = ops.find_fit(units, kHeapUnit);
                if (fit) {
                    off = ops.carve(fit, units, kHeapUnit, kOwnerHeld);
                    mine = empty;
                    std::memset(mine->name, 0, sizeof mine->name);
                    std::memcpy(mine->name, name.data(), name.size());
                    mine->kind = kind;
                    mine->offset = off;
                    mine->nbytes = nbytes;
                    mine->creator = client_;
                    mine->state.store(kNamedInit, std::memory_order_release);
                }
            }
        }
        if (wait) {
            if (deadline.expired())
                throw Timeout("timed out waiting for heap object '" + std::string(name) +
                              "' to be initialised by its creator");
            check_interrupt();
            reap_dead_clients();
            futex_wait(ctl_->named_changed.seq, seen, std::chrono::milliseconds(10));
            continue;
        }
        if (!mine) {
            // No room without growing: allocate through the normal path (grows or throws a
            // precise MemoryError), then retry with that space free.
            std::uint64_t tmp = allocate_owned(nbytes, kHeapUnit, kOwnerHeld);
            {
                Locked lk(ctl_, [&] { ops.recover(); });
                std::uint64_t ho = tmp - kBlockHeaderSize;
                ops.release(ho, ops.hdr(ho)->word.load(std::memory_order_acquire));
            }
            continue;
        }
        void *p = to_ptr(off);
        std::memset(p, 0, nbytes);
        try {
            if (init)
                init(p);
        } catch (...) {
            Locked lk(ctl_, [&] { ops.recover(); });
            std::uint64_t ho = off - kBlockHeaderSize;
            ops.release(ho, ops.hdr(ho)->word.load(std::memory_order_acquire));
            mine->state.store(kNamedEmpty, std::memory_order_release);
            notify_all(ctl_->named_changed);
            throw;
        }
        // SYNC POINT: pairs with the acquire load of state by finders: init's writes first.
        mine->state.store(kNamedReady, std::memory_order_release);
        notify_all(ctl_->named_changed);
        return {off, true};
    }
}

std::optional<NamedInfo> Heap::find_named(std::string_view name) const {
    for (auto &e : ctl_->named)
        if (e.state.load(std::memory_order_acquire) == kNamedReady && name_is(e, name))
            return info_of(e);
    return std::nullopt;
}

std::vector<NamedInfo> Heap::list_named(std::uint32_t kind) const {
    std::vector<NamedInfo> out;
    for (auto &e : ctl_->named)
        if (e.state.load(std::memory_order_acquire) == kNamedReady && (kind == 0 || e.kind == kind))
            out.push_back(info_of(e));
    return out;
}

bool Heap::remove_named(std::string_view name) {
    ensure_process();
    HeapOps ops{*this, ctl_, *impl_};
    Locked lk(ctl_, [&] { ops.recover(); });
    for (auto &e : ctl_->named) {
        if (e.state.load(std::memory_order_acquire) == kNamedReady && name_is(e, name)) {
            std::uint64_t ho = e.offset - kBlockHeaderSize;
            std::uint64_t w = ops.hdr(ho)->word.load(std::memory_order_acquire);
            if (w_valid(w) && w_state(w) == kUsed)
                ops.release(ho, w);
            e.state.store(kNamedEmpty, std::memory_order_release);
            notify_all(ctl_->named_changed);
            return true;
        }
    }
    return false;
}

// ------------------------------------------------------------------------------------------
// Introspection
// ------------------------------------------------------------------------------------------

HeapStats Heap::stats() {
    ensure_process();
    reap_dead_clients();
    HeapOps ops{*this, ctl_, *impl_};
    Locked lk(ctl_, [&] { ops.recover(); });
    HeapStats s;
    std::uint32_t count = ctl_->segment_count.load(std::memory_order_acquire);
    s.segments = count;
    for (std::uint32_t i = 0; i < count; ++i)
        s.size += ctl_->segs[i].size;
    std::uint64_t largest = 0;
    ops.walk([&](std::uint64_t, std::uint64_t w) {
        std::uint64_t bytes = w_units(w) * kHeapUnit;
        switch (w_state(w)) {
        case kFree:
            s.free += bytes;
            largest = std::max(largest, bytes);
            break;
        case kCached:
            s.free += bytes;
            s.cached += bytes;
            break;
        default:
            s.used += bytes;
            ++s.allocations;
        }
    });
    s.largest_free = largest ? largest - kBlockHeaderSize : 0;
    for (auto &c : ctl_->clients)
        s.clients += c.state.load(std::memory_order_relaxed) ? 1 : 0;
    return s;
}

std::uint64_t Heap::free_bytes() {
    HeapOps ops{*this, ctl_, *impl_};
    Locked lk(ctl_, [&] { ops.recover(); });
    std::uint64_t f = 0;
    ops.walk([&](std::uint64_t, std::uint64_t w) {
        if (w_state(w) == kFree)
            f += w_units(w) * kHeapUnit;
    });
    return f;
}

bool Heap::all_freed() {
    HeapOps ops{*this, ctl_, *impl_};
    Locked lk(ctl_, [&] { ops.recover(); });
    bool all = true;
    ops.walk([&](std::uint64_t, std::uint64_t w) { all = all && w_state(w) == kFree; });
    return all;
}

void Heap::check_invariants() {
    HeapOps ops{*this, ctl_, *impl_};
    Locked lk(ctl_, [&] { ops.recover(); });
    auto fail = [](const std::string &why) { throw CorruptSegment("heap invariant: " + why); };
    std::uint64_t free_blocks = 0;
    std::uint32_t count = ctl_->segment_count.load(std::memory_order_acquire);
    for (std::uint32_t s = 0; s < count; ++s) {
        const SegmentInfo &si = ctl_->segs[s];
        std::uint64_t off = make_off(s, si.arena_begin), end = make_off(s, si.arena_end);
        std::uint64_t prev = 0;
        bool prev_free = false;
        while (off < end) {
            BlockHeader *b = ops.hdr(off);
            std::uint64_t w = b->word.load(std::memory_order_acquire);
            if (!w_valid(w))
                fail("bad header at " + std::to_string(off));
            if (b->prev_units != prev)
                fail("prev size wrong at " + std::to_string(off));
            bool is_free = w_state(w) == kFree;
            if (is_free && prev_free)
                fail("two adjacent free blocks at " + std::to_string(off));
            if (is_free) {
                ++free_blocks;
                bool listed = false;
                for (std::uint64_t x = ctl_->bins[bin_of(w_units(w))]; x; x = ops.links(x)->next)
                    if (x == off) {
                        listed = true;
                        break;
                    }
                if (!listed)
                    fail("free block not in its bin at " + std::to_string(off));
            }
            prev_free = is_free;
            prev = w_units(w);
            off += w_units(w) * kHeapUnit;
        }
        if (off != end)
            fail("chain overruns segment " + std::to_string(s));
    }
    std::uint64_t listed = 0;
    for (std::size_t b = 0; b < kBins; ++b) {
        std::uint64_t prev = 0;
        for (std::uint64_t x = ctl_->bins[b]; x; x = ops.links(x)->next) {
            if (ops.links(x)->prev != prev)
                fail("bin back link wrong");
            std::uint64_t w = ops.hdr(x)->word.load(std::memory_order_acquire);
            if (w_state(w) != kFree || bin_of(w_units(w)) != b)
                fail("wrong block in bin");
            prev = x;
            if (++listed > free_blocks)
                fail("bin lists longer than the free blocks");
        }
    }
    if (listed != free_blocks)
        fail("free blocks missing from bins");
}

} // namespace shmipc
