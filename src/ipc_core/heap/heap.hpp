// A shared heap: any attached process (and thread) allocates from it and frees into it.
// Layout: heap/layout.hpp. The parts: heap/segments (private, validated geometry and
// addressing; growth.cpp adds extension segments), heap/free_list (the algorithm),
// heap/thread_cache, heap/directory (named objects). This class ties them to the clients and
// the lock.
//
// Concurrency and crashes:
//  - One robust lock (sync/robust_mutex) guards the free lists. A process killed while holding
//    it is noticed by the next locker (its client token is dead): it rebuilds the free lists
//    from the block chain (the chain is always consistent: every change is one store of a
//    block's word), reclaims the dead clients' blocks and continues. A holder that is alive but
//    stopped makes lockers time out (their Deadline), never hang; a scribbled lock word is
//    CorruptSegment at once.
//  - Per-thread caches of small blocks make the common allocate/free take no lock; a cached
//    block stays allocated in the chain, owned by the caching client.
//  - Each Heap handle is a client of the heap's client table (sync/client_table): a slot whose
//    OFD lock (on this handle's own open file description) the kernel drops when the process
//    dies. reap_dead_clients() frees every block a dead client owned (allocated or cached) and
//    recycles its slot. Registration takes a free slot without the heap lock.
//
// Ownership and transfer (for channels): every allocated block has an owner:
//   - a client id (1..kMaxClients, its slot + 1): reclaimed when that client dies;
//   - kOwnerHeld: held by the heap itself (a channel slot, a named object): never reclaimed
//     automatically; someone must transfer() it back to a client or deallocate() it.
// A channel sender does `transfer(off, kOwnerHeld)` BEFORE publishing the offset in its ring
// (so the block survives the sender's death); the receiver does
// `transfer(off, heap.client_id())` when it takes the block out (so it is reclaimed if the
// receiver dies holding it).
//
// Fork: a child's copy of a handle is the parent's (slot, caches, names, blocks); it becomes a
// client of its own on first use (a new slot; its lock fd was renewed by the fork hooks), never
// removes the parent's names and never frees the parent's blocks through deallocate(off, stamp).
//
// Shared memory is input: geometry is validated at attach into private memory, every offset
// and length read from shared memory is checked before use and every walk over shared lists is
// bounded; a peer that scribbled over the heap gets CorruptSegment, never a crash or a hang.
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/heap/directory.hpp"
#include "ipc_core/heap/free_list.hpp"
#include "ipc_core/heap/layout.hpp"
#include "ipc_core/heap/segments.hpp"
#include "ipc_core/heap/thread_cache.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/client_table.hpp"
#include "ipc_core/sync/liveness.hpp"
#include "ipc_core/sync/robust_mutex.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmipc {

struct HeapOptions {
    std::size_t size = 64 << 20; // bytes of the primary segment (rounded up to pages)
    std::size_t max_size = 0;    // bytes in total; 0 or <= size: no growth
    mode_t mode = 0600;          // exact permission bits of every segment
    bool persistent = false;     // name survives the owner (until unlink)
    bool thread_cache = true;    // per-thread caches of small blocks
};

struct HeapStats {
    std::uint64_t size = 0;         // bytes of all segments
    std::uint64_t used = 0;         // bytes of blocks held by users (headers included)
    std::uint64_t free = 0;         // bytes in free blocks + per-thread caches
    std::uint64_t largest_free = 0; // largest payload one allocate() could get without growing
    std::uint64_t segments = 0;
    std::uint64_t allocations = 0; // live blocks held by users (cached ones excluded)
    std::uint64_t cached = 0;      // bytes in per-thread caches (all clients)
    std::uint64_t clients = 0;     // live client slots
};

// The fork epoch, for the Python binding until it stamps blocks with a ForkStamp.
[[nodiscard]] unsigned process_generation() noexcept;

// One process's handle on a heap (a "client"). Not copyable; thread-safe (allocate,
// deallocate, to_ptr, transfer from any thread). Destroying it is treated like the death of the
// client: every block it still owns (its caches included) goes back to the heap and its slot is
// recycled; transfer() blocks that must outlive it (to kOwnerHeld or another client) first.
// The owner of a non-persistent named heap also removes the names (primary and extensions).
// No other thread of the process may use the handle while it is destroyed.
//
// Every operation that takes the heap lock accepts a Deadline (default: wait forever) and
// throws Timeout when it passes; Ctrl-C is checked between waits (base/deadline.hpp).
class Heap {
  public:
    // Named heaps grow (up to max_size) by extension segments NAME.1, NAME.2, ... created by
    // whichever process needs the room; others map them on first use. Growth stops once the
    // primary name is gone (its owner closed it): nobody would remove the derived names then.
    //
    // Creates a named heap (OsError EEXIST if a live one exists; a stale one whose owner died
    // is replaced). Leftover extension segments of a dead previous heap of that name are
    // removed.
    static std::unique_ptr<Heap> create(std::string_view name, const HeapOptions &opt);
    // Attaches to a named heap: ENOENT if absent, CorruptSegment if it is not a valid heap,
    // PermissionError (OsError EPERM) if another user owns it and `trust` does not allow them.
    static std::unique_ptr<Heap> attach(std::string_view name, bool thread_cache = true,
                                        const TrustPolicy &trust = {});
    // A memfd-backed heap. Anonymous heaps cannot grow (max_size must be 0 or <= size):
    // another process could not map a memfd added later.
    static std::unique_ptr<Heap> anonymous(const HeapOptions &opt);
    // Attaches to an anonymous heap from a (duplicated) fd of its primary memfd; takes
    // ownership of `fd`.
    static std::unique_ptr<Heap> from_fd(UniqueFd fd, bool thread_cache = true);

    ~Heap();
    Heap(const Heap &) = delete;
    Heap &operator=(const Heap &) = delete;

    // --- allocation ---------------------------------------------------------------------
    // A block of at least n bytes (n >= 1), payload aligned to `align` (a power of two;
    // <= 64 is free, larger costs padding, at most kMaxAlign), owned by `owner` (kOwnerNone:
    // this client). Grows the heap (named heaps, up to max_size) when needed. Throws
    // OutOfMemory whose message says what was asked, what is free and the largest free block;
    // the heap stays usable. InvalidArgument for n == 0 or a bad alignment.
    [[nodiscard]] std::uint64_t allocate(std::size_t n, std::size_t align = 64) {
        return allocate_impl(n, align, kOwnerNone, nullptr);
    }
    [[nodiscard]] std::uint64_t allocate(std::size_t n, const Deadline &deadline) {
        return allocate_impl(n, 64, kOwnerNone, &deadline);
    }
    [[nodiscard]] std::uint64_t allocate(std::size_t n, std::size_t align,
                                         const Deadline &deadline) {
        return allocate_impl(n, align, kOwnerNone, &deadline);
    }
    // Back-pressure: like allocate(n, align, deadline), but when the heap is full it waits
    // (until `deadline`, Ctrl-C through the interrupt hook) for another client to free memory,
    // reaping dead clients between slices, before OutOfMemory.
    [[nodiscard]] std::uint64_t allocate_waiting(std::size_t n, std::size_t align,
                                                 const Deadline &deadline);
    [[nodiscard]] std::uint64_t allocate_owned(std::size_t n, std::size_t align,
                                               std::uint16_t owner) {
        return allocate_impl(n, align, owner, nullptr);
    }
    [[nodiscard]] std::uint64_t allocate_owned(std::size_t n, std::size_t align,
                                               std::uint16_t owner, const Deadline &deadline) {
        return allocate_impl(n, align, owner, &deadline);
    }
    // Frees a block (any owner, any process). InvalidArgument if `off` is not the start
    // of a live block of this heap (double free, garbage): checked, never corrupting.
    void deallocate(std::uint64_t off) { deallocate_impl(off, nullptr); }
    void deallocate(std::uint64_t off, const Deadline &deadline) {
        deallocate_impl(off, &deadline);
    }
    // Same, for a block taken when `taken_in` was stamped: a no-op in a forked child for a block
    // its parent took (it is the parent's to free).
    void deallocate(std::uint64_t off, const ForkStamp &taken_in) {
        if (!taken_in.inherited())
            deallocate_impl(off, nullptr);
    }
    void deallocate(std::uint64_t off, const ForkStamp &taken_in, const Deadline &deadline) {
        if (!taken_in.inherited())
            deallocate_impl(off, &deadline);
    }
    // Payload bytes usable at `off` (>= what was asked). InvalidArgument if `off` is not a live
    // block.
    [[nodiscard]] std::size_t block_capacity(std::uint64_t off) const {
        return word_units(live_block(off).word) * kHeapUnit - kBlockHeaderSize;
    }
    // A live block's payload and its capacity, checked once (InvalidArgument as
    // block_capacity): for readers of offsets taken from shared memory.
    struct Payload {
        std::byte *data;
        std::size_t capacity;
    };
    [[nodiscard]] Payload checked_payload(std::uint64_t off) const {
        const LiveBlock b = live_block(off);
        return {reinterpret_cast<std::byte *>(b.hdr) + kBlockHeaderSize,
                word_units(b.word) * kHeapUnit - kBlockHeaderSize};
    }

    // --- ownership ------------------------------------------------------------------------
    // This client's id (after the fork check: a forked child's copy registers first).
    [[nodiscard]] std::uint16_t client_id() {
        ensure_process();
        return client_;
    }
    // Sets the owner of a live block (kOwnerHeld or a client id). InvalidArgument if `off`
    // is not a live block. Never waits: one CAS of the block's word.
    void transfer(std::uint64_t off, std::uint16_t new_owner);
    // Same, but only if the current owner is `expected` (compare-and-swap); false otherwise.
    [[nodiscard]] bool try_transfer(std::uint64_t off, std::uint16_t expected,
                                    std::uint16_t new_owner);
    [[nodiscard]] std::uint16_t owner_of(std::uint64_t off) const;
    // Is client `id` alive (its OFD lock held)? kOwnerHeld counts as alive.
    [[nodiscard]] bool client_alive(std::uint16_t id) const;
    // Frees the blocks of every dead client and recycles their slots. Returns bytes freed.
    std::uint64_t reap_dead_clients(const Deadline &deadline = Deadline::never());
    // For objects that keep a RobustMutex of their own in this heap (the dict): this client's
    // lock token (after the fork check) and the table that tells a token's holder alive or dead.
    [[nodiscard]] std::uint32_t lock_token();
    [[nodiscard]] const ClientTable &clients() const noexcept { return clients_; }

    // --- addressing ---------------------------------------------------------------------
    // Pointer in this process for a heap offset (maps a segment grown by another process on
    // first use). Throws InvalidArgument for an offset outside every segment.
    [[nodiscard]] void *to_ptr(std::uint64_t off) { return segs_.ptr(off); }
    // Maps every segment the heap has now (an extension another process added needs an fd:
    // OsError EMFILE at the fd limit). Callers that must not fail half-way (a channel receive
    // that has popped its record) call this first.
    void map_all_segments() { (void)segs_.map_all(); }
    // Offset of a pointer into one of this process's mappings (InvalidArgument otherwise).
    [[nodiscard]] std::uint64_t to_offset(const void *p) const { return segs_.offset_of(p); }
    [[nodiscard]] std::byte *base() const noexcept { return primary_.data(); }
    // The primary segment's fd (memfd of an anonymous heap: what travels to children).
    [[nodiscard]] int fd() const noexcept { return primary_.fd(); }
    // This handle's own open file description of the primary segment, for OFD liveness locks
    // (client locks live at kClientLockBase+slot; users may lock bytes in
    // [kUserLockBase, kUserLockBase + kUserLockSpan)). Different for every handle; in a forked
    // child it is a fresh description (renewed by the fork hooks) holding none of the parent's
    // locks.
    [[nodiscard]] int lock_fd() const noexcept { return lock_fd_.get(); }
    [[nodiscard]] const std::string &name() const noexcept { return primary_.name(); }
    [[nodiscard]] bool anonymous() const noexcept { return primary_.name().empty(); }
    [[nodiscard]] bool owner() const noexcept { return primary_.owner(); }
    [[nodiscard]] std::size_t primary_size() const noexcept { return primary_.size(); }
    [[nodiscard]] std::size_t max_size() const noexcept { return segs_.max_size(); }

    // --- named objects --------------------------------------------------------------------
    // The block named `name` (1..kMaxNamedLength bytes); creates it (nbytes, owner kOwnerHeld)
    // if absent and runs `init(ptr)` exactly once, in the creator, before anyone else gets it
    // (others wait, until the deadline: Timeout then). If the creator dies or `init` throws,
    // the entry is removed and the next caller creates it anew. Returns {offset, created}.
    // A name that exists with another kind or a smaller size: InvalidArgument.
    std::pair<std::uint64_t, bool> find_or_create_named(std::string_view name, std::size_t nbytes,
                                                        const std::function<void(void *)> &init,
                                                        std::uint32_t kind,
                                                        const Deadline &deadline);
    std::pair<std::uint64_t, bool> find_or_create_named(std::string_view name, std::size_t nbytes,
                                                        const std::function<void(void *)> &init,
                                                        std::uint32_t kind = kNamedBlock,
                                                        std::optional<double> timeout_s = 10.0) {
        return find_or_create_named(name, nbytes, init, kind, Deadline(timeout_s));
    }
    // A ready named object, if any (any kind). Lock-free.
    [[nodiscard]] std::optional<NamedInfo> find_named(std::string_view name) const {
        return dir_.find(name);
    }
    // Every ready named object, optionally only of one kind (0: all). Lock-free.
    [[nodiscard]] std::vector<NamedInfo> list_named(std::uint32_t kind = 0) const {
        return dir_.list(kind);
    }
    // Removes a directory entry and frees its block. False if absent.
    bool remove_named(std::string_view name, const Deadline &deadline = Deadline::never());

    // --- introspection (tests, stats) ----------------------------------------------------------
    [[nodiscard]] HeapStats stats(const Deadline &deadline = Deadline::never());
    // Bytes in free blocks (caches not counted), and whether every block is free (cached blocks
    // count as allocated: call flush_thread_caches() first).
    [[nodiscard]] std::uint64_t free_bytes(const Deadline &deadline = Deadline::never());
    [[nodiscard]] bool all_freed(const Deadline &deadline = Deadline::never());
    // Walks every segment's chain and the free lists; throws CorruptSegment with the first
    // inconsistency found.
    void check_invariants(const Deadline &deadline = Deadline::never());
    // Returns to the shared heap the cached blocks of the calling thread and of exited threads
    // of this handle (the caches of other live threads are theirs to use). Safe from any
    // thread. allocate() does this once before giving up with OutOfMemory.
    // `all_threads`: every cache of this handle; only when no other thread of it can be inside
    // allocate()/deallocate() (tests; the Python binding, whose callers hold the GIL).
    void flush_thread_caches(bool all_threads = false,
                             const Deadline &deadline = Deadline::never());
    // Test hook: takes the heap lock and never gives it back, so a test can kill or stop this
    // process "inside the allocator".
    void hold_lock_for_tests();

  private:
    Heap() = default;
    struct LiveBlock {
        std::uint64_t header; // header offset
        std::uint64_t word;   // as read
        BlockHeader *hdr;
    };

    void open(bool anonymous, bool thread_cache);
    void ensure_process() {
        if (stamp_.inherited()) [[unlikely]]
            adopt_after_fork();
    }

  public:
    // Makes a handle copied by fork() this process's own client now (new client slot, new open
    // file description), as every allocation-side call does first. Takes no heap lock.
    void own_process() { ensure_process(); }
    // CorruptSegment if another process shrank one of the heap's files under our mappings
    // (shm/sigbus_guard.hpp absorbed the fault): writes since then went to private pages.
    // Cheap (flags); every locked operation and every channel operation calls it.
    void check_intact() const {
        primary_.check_intact("heap");
        segs_.check_intact();
    }
    // Same, and compares the primary file's size with our mapping (one fstat): catches a shrink
    // before anyone touched the lost pages. On slow paths (reaping, out of memory).
    void check_file_size() const;

  private:
    void adopt_after_fork();
    void register_client();
    void unregister_client() noexcept;
    // The heap lock, recovering (rebuild + reap) if its holder died.
    [[nodiscard]] RobustLock locked(const Deadline &deadline);
    void recover_locked();
    std::uint64_t reap_locked();
    // The block whose payload starts at `off`, checked (InvalidArgument otherwise): inline, as
    // the dict validates every table and entry offset it reads from shared memory with it.
    [[nodiscard]] LiveBlock live_block(std::uint64_t off) const;
    [[noreturn]] void bad_block(std::uint64_t off, const char *why) const;
    void notify_freed() noexcept;
    std::uint64_t allocate_impl(std::size_t n, std::size_t align, std::uint16_t owner,
                                const Deadline *deadline);
    std::uint64_t allocate_locked(std::size_t n, std::uint64_t units, std::size_t align,
                                  std::uint16_t owner, const Deadline &deadline);
    void deallocate_impl(std::uint64_t off, const Deadline *deadline);

    MemorySegment primary_;
    HeapControl *ctl_ = nullptr;
    mutable Segments segs_; // mapping a segment on first use is not a change of the heap
    FreeList free_;
    Directory dir_;
    UniqueFd lock_fd_; // our own open file description (client lock, users' locks)
    ClientTable clients_;
    RobustMutex lock_;
    ThreadCaches caches_;
    ForkStamp stamp_;
    std::mutex fork_mu_; // the first use after fork() re-registers once
    std::string what_;   // "heap '/name'" or "anonymous heap", for messages
    std::atomic<std::uint64_t> slow_allocations_{0}; // locked allocations (periodic reaping)
    std::uint16_t client_ = kOwnerNone;
    bool thread_cache_ = true;
};

inline Heap::LiveBlock Heap::live_block(std::uint64_t off) const {
    const std::uint64_t s = seg_of(off);
    if (s >= segs_.mapped()) [[unlikely]]
        (void)segs_.ptr(off); // maps it, or InvalidArgument for no such segment
    const SegmentGeometry &g = segs_.geometry(static_cast<std::uint32_t>(s));
    const std::uint64_t local = local_of(off);
    if (local < g.arena_begin + kBlockHeaderSize || local >= g.arena_end || local % kHeapUnit != 0)
        [[unlikely]]
        bad_block(off, "not a block start");
    const std::uint64_t ho = off - kBlockHeaderSize;
    auto *hdr = static_cast<BlockHeader *>(segs_.ptr(ho));
    // SYNC POINT: acquire, pairs with the release stores/CAS that handed the block out (carve,
    // the cache fast path, transfer): its contents and owner are visible.
    const std::uint64_t w = hdr->word.load(std::memory_order_acquire);
    if (!word_valid(w) || !segs_.fits(ho, word_units(w))) [[unlikely]]
        bad_block(off, "no block header");
    if (word_state(w) != kUsed) [[unlikely]]
        bad_block(off, word_state(w) == kFree ? "already free" : "already freed (cached)");
    return {ho, w, hdr};
}

} // namespace shmipc
