// The facade: construction, clients and fork, the lock, ownership, introspection. The
// allocation paths are in heap/heap_allocate.cpp, named objects in heap/heap_named.cpp.
#include "ipc_core/heap/heap.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/shm_name.hpp"

#include <cerrno>
#include <cstring>
#include <sys/stat.h>
#include <unistd.h>

namespace shmipc {

namespace {

// Closing waits this long for the heap lock to free its blocks; past it the blocks are left to
// the reapers, as if the handle had died (a stopped peer must not hang a close).
constexpr double kCloseLockWait = 5.0;

HeapFormat format_of(const HeapOptions &opt, std::size_t size, bool anonymous) {
    return HeapFormat{std::max<std::uint64_t>(size, opt.max_size),
                      static_cast<std::uint32_t>(opt.mode), opt.persistent, anonymous};
}

std::size_t checked_size(std::size_t size) {
    if (size < kMinHeapSize)
        throw InvalidArgument("heap size must be at least " + std::to_string(kMinHeapSize) +
                              " bytes, not " + std::to_string(size));
    if (size > kSegmentOffsetMask)
        throw InvalidArgument("heap size must be < 1 TiB");
    return round_up(size, page_size());
}

} // namespace

unsigned process_generation() noexcept {
    return static_cast<unsigned>(fork_epoch());
}

// --- construction ------------------------------------------------------------------------------

void Heap::open(bool anonymous, bool thread_cache) {
    what_ = anonymous ? std::string("anonymous heap") : "heap '" + primary_.name() + "'";
    ctl_ = segs_.attach_primary(primary_, anonymous, what_);
    free_ = FreeList(*ctl_, segs_);
    dir_ = Directory(*ctl_, segs_, free_);
    thread_cache_ = thread_cache;
    lock_fd_ = UniqueFd(reopen_description(primary_.fd()));
    // Our client lock must not be kept by a forked child (sync/liveness.hpp); the owner lock on
    // the primary fd is renewed by MemorySegment itself.
    renew_in_fork_children(lock_fd_.get());
    clients_ =
        ClientTable(&ctl_->client_header, sizeof(ctl_->client_header) + sizeof(ctl_->client_slots),
                    kMaxClients, lock_fd_.get(), what_);
    lock_ = RobustMutex(ctl_->lock, clients_, what_);
    lock_.validate(); // a scribbled lock word fails the attach, never a later wait
    // Map the extensions that exist now (before their owner could remove the names).
    (void)segs_.map_all();
    register_client();
}

std::unique_ptr<Heap> Heap::create(std::string_view name, const HeapOptions &opt) {
    const std::size_t size = checked_size(opt.size);
    const std::string norm = normalize_shm_name(name);
    if (opt.max_size > size && norm.size() + 3 > kMaxNameLength + 1)
        throw InvalidArgument("name too long for a growing heap (extensions add '.N')");
    std::unique_ptr<Heap> h(new Heap);
    h->primary_ = MemorySegment::create_named(
        norm, size, opt.mode, SegmentKind::Heap, kHeapLayout, opt.persistent,
        [&](std::byte *data) { format_control(data, size, format_of(opt, size, false)); });
    // We just created the name: any extension named after it belongs to a dead predecessor.
    Segments::remove_leftover_extensions(norm);
    h->open(false, opt.thread_cache);
    return h;
}

std::unique_ptr<Heap> Heap::attach(std::string_view name, bool thread_cache,
                                   const TrustPolicy &trust) {
    std::unique_ptr<Heap> h(new Heap);
    h->primary_ =
        MemorySegment::attach_named(name, SegmentKind::Heap, kHeapLayout, kControlEnd, trust);
    if (!h->primary_.writable())
        throw OsError(EACCES, "heap '" + h->primary_.name() + "' is not writable for us");
    // Extensions: whoever grew the heap was a process of a trusted owner; the primary's owner
    // (whom we just trusted) may grow it as well as we may.
    struct stat st {};
    if (::fstat(h->primary_.fd(), &st) != 0)
        throw OsError(errno, "fstat of heap '" + h->primary_.name() + "'");
    h->segs_.set_trust(trust.any() || st.st_uid == ::geteuid() ? trust : TrustPolicy{st.st_uid});
    h->open(false, thread_cache);
    return h;
}

std::unique_ptr<Heap> Heap::anonymous(const HeapOptions &opt) {
    const std::size_t size = checked_size(opt.size);
    if (opt.max_size > size)
        throw InvalidArgument(
            "anonymous heaps cannot grow (max_size > size): other processes could not map a "
            "memfd added later; use a named heap");
    std::unique_ptr<Heap> h(new Heap);
    h->primary_ = MemorySegment::anonymous(size, "shmipc-heap");
    auto *sh = h->primary_.header();
    *sh = SegmentHeader{};
    sh->kind = static_cast<std::uint32_t>(SegmentKind::Heap);
    sh->layout_version = kHeapLayout;
    sh->total_size = size;
    sh->creator_pid = static_cast<std::int32_t>(::getpid());
    format_control(h->primary_.data(), size, format_of(opt, size, true));
    // SYNC POINT: release fence, pairs with the checks of the magic by from_fd() in processes
    // that receive the fd (through a syscall, which orders it anyway): everything before first.
    std::atomic_thread_fence(std::memory_order_release);
    sh->magic = kSegmentMagic;
    h->open(true, opt.thread_cache);
    return h;
}

std::unique_ptr<Heap> Heap::from_fd(UniqueFd fd, bool thread_cache) {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    const auto fsize = static_cast<std::size_t>(st.st_size);
    if (!S_ISREG(st.st_mode) || fsize < kControlEnd)
        throw CorruptSegment("fd is not a shmipc heap (too small or not a file)");
    SegmentHeader sh{};
    if (::pread(fd.get(), &sh, sizeof sh, 0) != static_cast<ssize_t>(sizeof sh) ||
        sh.magic != kSegmentMagic || sh.kind != static_cast<std::uint32_t>(SegmentKind::Heap) ||
        sh.layout_version != kHeapLayout || sh.total_size != fsize)
        throw CorruptSegment("fd is not a shmipc heap (bad header)");
    std::unique_ptr<Heap> h(new Heap);
    h->primary_ = MemorySegment::map_fd(std::move(fd), fsize, true);
    h->open(true, thread_cache);
    return h;
}

Heap::~Heap() {
    if (ctl_ != nullptr) {
        if (stamp_.inherited()) {
            // A forked child's untouched copy: slot, caches, blocks and names are the parent's.
            caches_.drop_all();
            clients_.forget();
            primary_.disown();
        } else {
            unregister_client();
        }
        if (primary_.owner() && !segs_.persistent())
            segs_.unlink_extensions();
    }
    segs_.reset();
    forget_in_fork_children(lock_fd_.get());
    lock_fd_.reset();
    primary_.reset();
}

// --- clients and fork ----------------------------------------------------------------------

void Heap::register_client() {
    // Lock-free: a free slot only; dead clients' slots are recycled by reapers, which hold the
    // heap lock while they free the blocks.
    try {
        client_ = static_cast<std::uint16_t>(clients_.register_client() + 1);
    } catch (const LimitReached &) {
        std::uint32_t dead = 0;
        clients_.for_each_dead([&](std::uint32_t) { ++dead; });
        if (dead == 0)
            throw;
        throw LimitReached(what_ + ": client table full (" + std::to_string(kMaxClients) +
                           " handles, " + std::to_string(dead) +
                           " of them dead and waiting for a live handle to reap them)");
    }
    // Opportunistic reaping, never waiting: attach must not hang on a stopped lock holder.
    bool any_dead = false;
    clients_.for_each_dead([&](std::uint32_t) { any_dead = true; });
    // SYNC POINT: the heap lock (see locked()); unlock() below is its release.
    if (any_dead && lock_.try_lock(clients_.token(), [this] { recover_locked(); })) {
        try {
            (void)reap_locked();
        } catch (...) {
            lock_.unlock();
            throw;
        }
        lock_.unlock();
    }
}

void Heap::unregister_client() noexcept {
    if (!clients_.registered())
        return;
    bool freed = false;
    try {
        // A closing handle is treated like a dead one: its blocks (its caches included) go back
        // to the heap. Blocks meant to outlive it must be transferred first.
        auto lk = locked(Deadline(kCloseLockWait));
        const std::uint16_t me = client_;
        (void)free_.free_owned_by([me](std::uint16_t o) { return o == me; });
        freed = true;
    } catch (...) {
    }
    caches_.drop_all();
    if (freed) {
        clients_.unregister_client();
    } else {
        // Not cleaned: stay active, and look dead once our fd (and its lock) is closed, so a
        // reaper frees our blocks.
        clients_.forget();
    }
    client_ = kOwnerNone;
}

void Heap::adopt_after_fork() {
    std::lock_guard g(fork_mu_);
    if (!stamp_.inherited())
        return;
    // We are a forked child using our parent's handle: the caches and the client slot are the
    // parent's. Drop the copies (without freeing: the blocks are the parent's) and become a
    // client of our own. lock_fd_ is already a fresh description (renewed by the fork hooks).
    caches_.drop_all();
    clients_.forget();
    client_ = kOwnerNone;
    primary_.disown(); // the name is the parent's to remove
    register_client();
    stamp_.renew();
}

std::uint32_t Heap::lock_token() {
    ensure_process();
    return clients_.token();
}

bool Heap::client_alive(std::uint16_t id) const {
    if (id == kOwnerHeld)
        return true;
    if (id == kOwnerNone || id > kMaxClients)
        return false;
    return clients_.alive(id - 1u);
}

// --- the lock ------------------------------------------------------------------------------------

// SYNC POINT: the heap lock. Its acquire (RobustMutex::lock, try_lock) pairs with the release of
// the previous holder's unlock: every change to the free lists, prev sizes, the segment table and
// directory claims made under it is visible to the next holder.
RobustLock Heap::locked(const Deadline &deadline) {
    check_intact();
    return RobustLock(lock_, clients_.token(), deadline, [this] { recover_locked(); });
}

void Heap::check_file_size() const {
    check_intact();
    if (primary_.fd() >= 0 && primary_.file_size() < primary_.size())
        throw CorruptSegment(what_ + " was truncated by another process to " +
                             std::to_string(primary_.file_size()) +
                             " bytes (mapped: " + std::to_string(primary_.size()) + ")");
}

void Heap::recover_locked() {
    // The previous holder died inside the allocator: the chain is consistent by construction,
    // the free lists may not be. Rebuild them, reclaim the dead, then go on.
    free_.rebuild();
    (void)reap_locked();
}

std::uint64_t Heap::reap_locked() {
    std::vector<std::uint32_t> dead;
    clients_.for_each_dead([&](std::uint32_t slot) { dead.push_back(slot); });
    if (dead.empty())
        return 0;
    std::vector<bool> is_dead(kMaxClients + 1, false);
    for (std::uint32_t slot : dead)
        is_dead[slot + 1] = true;
    const std::uint64_t bytes =
        free_.free_owned_by([&](std::uint16_t o) { return o <= kMaxClients && is_dead[o]; });
    dir_.drop_dead_creators([&](std::uint16_t c) { return is_dead[c]; });
    // Only now: a recycled slot may be taken by a new client, whose id the blocks must not have.
    for (std::uint32_t slot : dead)
        (void)clients_.recycle(slot);
    return bytes;
}

std::uint64_t Heap::reap_dead_clients(const Deadline &deadline) {
    ensure_process();
    check_file_size();
    // Unlocked pre-check: nothing to do in the common case (one fcntl per live client).
    bool any = false;
    clients_.for_each_dead([&](std::uint32_t) { any = true; });
    if (!any)
        return 0;
    std::uint64_t reaped = 0;
    {
        auto lk = locked(deadline);
        reaped = reap_locked();
    }
    if (reaped > 0)
        notify_freed(); // waiters in allocate_waiting of other processes
    return reaped;
}

void Heap::hold_lock_for_tests() {
    ensure_process();
    // SYNC POINT: the heap lock (see locked()), never released: the test kills us.
    lock_.lock(clients_.token(), Deadline::never(), [this] { recover_locked(); });
}

// --- ownership -----------------------------------------------------------------------------------

void Heap::bad_block(std::uint64_t off, const char *why) const {
    throw InvalidArgument("offset " + std::to_string(off) +
                          " is not a live block of this heap: " + why);
}

namespace {
void check_owner(std::uint16_t o) {
    if (o == kOwnerNone || (o > kMaxClients && o != kOwnerHeld))
        throw InvalidArgument("bad owner " + std::to_string(o));
}
} // namespace

void Heap::transfer(std::uint64_t off, std::uint16_t new_owner) {
    check_owner(new_owner);
    for (;;) {
        LiveBlock b = live_block(off);
        // SYNC POINT: acq_rel, pairs with the acquire load of the word by whoever observes the
        // new owner (live_block): the data written before the transfer is visible to it.
        if (b.hdr->word.compare_exchange_strong(
                b.word, make_word(word_units(b.word), new_owner, kUsed), std::memory_order_acq_rel))
            return;
    }
}

bool Heap::try_transfer(std::uint64_t off, std::uint16_t expected, std::uint16_t new_owner) {
    check_owner(new_owner);
    LiveBlock b = live_block(off);
    if (word_owner(b.word) != expected)
        return false;
    // SYNC POINT: acq_rel, as in transfer().
    return b.hdr->word.compare_exchange_strong(
        b.word, make_word(word_units(b.word), new_owner, kUsed), std::memory_order_acq_rel);
}

std::uint16_t Heap::owner_of(std::uint64_t off) const {
    return word_owner(live_block(off).word);
}

// --- introspection -------------------------------------------------------------------------------

HeapStats Heap::stats(const Deadline &deadline) {
    ensure_process();
    (void)reap_dead_clients(deadline);
    auto lk = locked(deadline);
    HeapStats s;
    s.segments = segs_.map_all();
    s.size = segs_.mapped_bytes();
    std::uint64_t largest = 0;
    free_.walk([&](std::uint64_t, std::uint64_t w) {
        const std::uint64_t bytes = word_units(w) * kHeapUnit;
        switch (word_state(w)) {
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
    s.clients = clients_.active_count();
    return s;
}

std::uint64_t Heap::free_bytes(const Deadline &deadline) {
    ensure_process();
    auto lk = locked(deadline);
    std::uint64_t f = 0;
    free_.walk([&](std::uint64_t, std::uint64_t w) {
        if (word_state(w) == kFree)
            f += word_units(w) * kHeapUnit;
    });
    return f;
}

bool Heap::all_freed(const Deadline &deadline) {
    ensure_process();
    auto lk = locked(deadline);
    bool all = true;
    free_.walk([&](std::uint64_t, std::uint64_t w) { all = all && word_state(w) == kFree; });
    return all;
}

void Heap::check_invariants(const Deadline &deadline) {
    ensure_process();
    auto lk = locked(deadline);
    free_.check_invariants();
}

} // namespace shmipc
