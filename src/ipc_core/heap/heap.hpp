// A shared heap: any attached process (and thread) allocates from it and frees into it.
//
// Layout (all state lives in the segments, as offsets, never pointers):
//
//   primary segment (name "frames" or a memfd)
//   +---------------+-------------+----------------------------------------------+
//   | SegmentHeader | HeapControl | arena: [hdr|payload....][hdr|payload]...      |
//   |   64 bytes    | robust lock,| blocks are multiples of 64 bytes, payloads    |
//   |               | free lists, | 64-byte aligned, each preceded by a 16-byte   |
//   |               | clients,    | BlockHeader (size, state, owner in ONE atomic |
//   |               | directory   | word, so every change of the chain is a single|
//   +---------------+-------------+ store and a crash never leaves it torn)        |
//   extension segments "frames.1", "frames.2"... (named heaps only): SegmentHeader
//   (kind HeapExtension) + arena.
//
// Offsets: a heap offset is (segment index << kSegmentShift) | byte offset in that segment.
// Offset 0 is never a block (the primary header lives there), so 0 means "none". Offsets are
// the same in every process; to_ptr() turns one into a pointer of this process (mapping a
// segment another process added, lazily).
//
// Concurrency and crashes:
//  - One robust, process-shared pthread mutex guards the free lists. A process killed while
//    holding it makes the next locker see EOWNERDEAD: it rebuilds the free lists from the
//    block chain (the chain is always consistent, see above), reclaims the dead client's
//    blocks, marks the mutex consistent and continues.
//  - Per-thread caches of small blocks (exact block sizes up to kCacheMaxBlock) make the common
//    allocate/free take no lock: a cached block stays "allocated" in the chain, owned by the
//    caching client, so a killed process's caches are reclaimed like its other blocks.
//  - Each Heap handle is a "client": it holds a slot in the client table and an OFD lock on
//    byte kClientLockBase + slot of its own open file description of the primary segment.
//    The kernel drops that lock when the process dies; reap_dead_clients() then frees every
//    block the dead client owned (allocated or cached) and recycles its slot.
//
// Ownership and transfer (for channels): every allocated block has an owner:
//   - a client id (1..kMaxClients): reclaimed when that client dies;
//   - kOwnerHeld: held by the heap itself (a channel slot, a named object): never reclaimed
//     automatically; someone must transfer() it back to a client or deallocate() it.
// A channel sender does `transfer(off, kOwnerHeld)` BEFORE publishing the offset in its ring
// (so the block survives the sender's death); the receiver does
// `transfer(off, heap.client_id())` when it takes the block out (so it is reclaimed if the
// receiver dies holding it). A receiver that dies between the two leaks nothing it did not
// take: the block is still kOwnerHeld and whoever cleans the ring frees it.
#pragma once

#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/liveness.hpp"

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

// --- Constants of the layout (shared by every process; changing one bumps kHeapLayoutVersion)

inline constexpr std::uint32_t kHeapLayoutVersion = 1;
inline constexpr unsigned kSegmentShift = 40; // 1 TiB per segment at most
inline constexpr std::uint64_t kSegmentOffsetMask = (std::uint64_t{1} << kSegmentShift) - 1;
inline constexpr std::size_t kMaxSegments = 64;         // primary + 63 extensions
inline constexpr std::size_t kHeapUnit = 64;            // block granularity, bytes
inline constexpr std::size_t kBlockHeaderSize = 16;     // before every payload
inline constexpr std::size_t kMaxClients = 1024;        // live handles at once
inline constexpr std::size_t kMaxNamed = 256;           // directory entries
inline constexpr std::size_t kMaxNamedLength = 63;      // bytes of a directory name
inline constexpr std::size_t kCacheMaxBlock = 4096;     // payload bytes: larger bypass caches
inline constexpr std::size_t kMinHeapSize = 128 * 1024; // bytes (the control block is ~93 KiB)

// Owners of an allocated block.
inline constexpr std::uint16_t kOwnerNone = 0;      // free block
inline constexpr std::uint16_t kOwnerHeld = 0xFFFF; // held by a channel / named object

// OFD lock bytes on the primary segment's fds: client slots at kClientLockBase + slot, users of
// the heap (channel endpoints) in [kUserLockBase, kUserLockBase + kUserLockSpan) (liveness.hpp).

// Kind tags of named objects (users may add their own values >= 16).
inline constexpr std::uint32_t kNamedBlock = 1;   // heap.shared_block()
inline constexpr std::uint32_t kNamedChannel = 2; // channels (owned by the channel module)

struct HeapOptions {
    std::size_t size = 64 << 20; // bytes of the primary segment (rounded up to pages)
    std::size_t max_size = 0;    // bytes in total; 0 or <= size: no growth
    mode_t mode = 0600;          // exact permission bits of every segment
    bool persistent = false;     // name survives the owner (until unlink)
    bool thread_cache = true;    // per-thread caches of small blocks
};

struct HeapStats {
    std::uint64_t size = 0;         // bytes of all segments (mapped or not yet in this process)
    std::uint64_t used = 0;         // bytes of blocks held by users (headers included)
    std::uint64_t free = 0;         // bytes in free blocks + per-thread caches
    std::uint64_t largest_free = 0; // largest payload one allocate() could get without growing
    std::uint64_t segments = 0;
    std::uint64_t allocations = 0; // live blocks held by users (cached ones excluded)
    std::uint64_t cached = 0;      // bytes in per-thread caches (all clients)
    std::uint64_t clients = 0;     // live client slots
};

struct NamedInfo {
    std::string name;
    std::uint32_t kind = 0;
    std::uint64_t offset = 0; // payload offset
    std::uint64_t nbytes = 0; // as asked at creation
};

// Bumped in a child after fork(): lets callers (the Python binding) tell objects inherited from
// the parent (whose blocks are the parent's to free) from their own.
[[nodiscard]] unsigned process_generation() noexcept;

struct HeapControl; // in the primary segment (heap.cpp)
class ThreadCache;  // per thread and handle (heap.cpp)
struct HeapOps;     // chain operations (heap.cpp)

// One process's handle on a heap (a "client"). Not copyable; thread-safe (allocate,
// deallocate, to_ptr, transfer from any thread). Destroying it is treated like the death of the
// client: every block it still owns (its caches included) goes back to the heap and its slot is
// recycled; transfer() blocks that must outlive it (to kOwnerHeld or another client) first.
// The owner of a non-persistent named heap also removes the names (primary and extensions).
// No other thread of the process may use the handle while it is destroyed.
class Heap {
  public:
    // Named heaps grow (up to max_size) by extension segments NAME.1, NAME.2, ... created by
    // whichever process needs the room; others map them on first use. Growth stops once the
    // primary name is gone (its owner closed it): nobody would remove the derived names then.
    //
    // Creates a named heap (FileExistsError / OsError EEXIST if a live one exists; a
    // stale one whose owner died is replaced). Leftover extension segments of a dead previous
    // heap of that name are removed.
    static std::unique_ptr<Heap> create(std::string_view name, const HeapOptions &opt);
    // Attaches to a named heap: ENOENT if absent, CorruptSegment if it is not a valid heap.
    static std::unique_ptr<Heap> attach(std::string_view name, bool thread_cache = true);
    // A memfd-backed heap. Anonymous heaps cannot grow (max_size must be 0 or <= size):
    // another process could not map a memfd added later.
    static std::unique_ptr<Heap> anonymous(const HeapOptions &opt);
    // Attaches to an anonymous heap from a (duplicated) fd of its primary memfd; takes
    // ownership of `fd`. The fd is reopened through /proc/self/fd so this handle has its own
    // open file description (its own liveness lock).
    static std::unique_ptr<Heap> from_fd(UniqueFd fd, bool thread_cache = true);

    ~Heap();
    Heap(const Heap &) = delete;
    Heap &operator=(const Heap &) = delete;

    // --- allocation ---------------------------------------------------------------------
    // A block of at least n bytes (n >= 1), payload aligned to `align` (a power of two;
    // <= 64 is free, larger costs padding), owned by `owner` (default: this client).
    // Grows the heap (named heaps, up to max_size) when needed. Throws OutOfMemory whose message
    // says what was asked, what is free and the largest free block; the heap stays usable.
    // InvalidArgument for n == 0 or a bad alignment.
    [[nodiscard]] std::uint64_t allocate(std::size_t n, std::size_t align = 64);
    [[nodiscard]] std::uint64_t allocate_owned(std::size_t n, std::size_t align,
                                               std::uint16_t owner);
    // Frees a block (any owner, any process). InvalidArgument if `off` is not the start
    // of a live block of this heap (double free, garbage): checked, never corrupting.
    void deallocate(std::uint64_t off);
    // Payload bytes usable at `off` (>= what was asked).
    [[nodiscard]] std::size_t block_capacity(std::uint64_t off) const;

    // --- ownership ------------------------------------------------------------------------
    [[nodiscard]] std::uint16_t client_id() const noexcept { return client_; }
    // Sets the owner of a live block (kOwnerHeld or a client id). InvalidArgument if `off`
    // is not a live block.
    void transfer(std::uint64_t off, std::uint16_t new_owner);
    // Same, but only if the current owner is `expected` (compare-and-swap); false otherwise.
    [[nodiscard]] bool try_transfer(std::uint64_t off, std::uint16_t expected,
                                    std::uint16_t new_owner);
    [[nodiscard]] std::uint16_t owner_of(std::uint64_t off) const;
    // Is client `id` alive (its OFD lock held)? kOwnerHeld counts as alive.
    [[nodiscard]] bool client_alive(std::uint16_t id) const;
    // Frees the blocks of every dead client and recycles their slots. Returns bytes freed.
    std::uint64_t reap_dead_clients();

    // --- addressing ---------------------------------------------------------------------
    // Pointer in this process for a heap offset (maps a segment grown by another process on
    // first use). Throws InvalidArgument for an offset outside every segment.
    [[nodiscard]] void *to_ptr(std::uint64_t off);
    // Maps every segment the heap has now (an extension another process added needs an fd:
    // OsError EMFILE at the fd limit). Callers that must not fail half-way (a channel receive
    // that has popped its record) call this first.
    void map_all_segments();
    // Offset of a pointer into one of this process's mappings (InvalidArgument otherwise).
    [[nodiscard]] std::uint64_t to_offset(const void *p) const;
    [[nodiscard]] std::byte *base() const noexcept { return primary_.data(); }
    // The primary segment's fd (memfd of an anonymous heap: what travels to children).
    [[nodiscard]] int fd() const noexcept { return primary_.fd(); }
    // This handle's own open file description of the primary segment, for OFD liveness locks
    // (client locks live at kClientLockBase+slot; users may lock bytes in
    // [kUserLockBase, kUserLockBase + kUserLockSpan)). Different for every handle, also after
    // fork() (the child re-registers as a new client on first use, with a new description).
    [[nodiscard]] int lock_fd() const noexcept;
    [[nodiscard]] const std::string &name() const noexcept { return primary_.name(); }
    [[nodiscard]] bool anonymous() const noexcept { return primary_.name().empty(); }
    [[nodiscard]] bool owner() const noexcept { return primary_.owner(); }
    [[nodiscard]] std::size_t primary_size() const noexcept { return primary_.size(); }
    [[nodiscard]] std::size_t max_size() const noexcept;

    // --- named objects --------------------------------------------------------------------
    // The block named `name` (1..kMaxNamedLength bytes); creates it (nbytes, owner kOwnerHeld)
    // if absent and runs `init(ptr)` exactly once, in the creator, before anyone else gets it
    // (others wait, up to `timeout_s`; Timeout then). If the creator dies or `init` throws, the
    // entry is removed and the next caller creates it anew. Returns {offset, created}.
    // A name that exists with another kind or a smaller size: InvalidArgument.
    std::pair<std::uint64_t, bool> find_or_create_named(std::string_view name, std::size_t nbytes,
                                                        const std::function<void(void *)> &init,
                                                        std::uint32_t kind = kNamedBlock,
                                                        std::optional<double> timeout_s = 10.0);
    // Offset of a ready named object, if any (any kind).
    [[nodiscard]] std::optional<NamedInfo> find_named(std::string_view name) const;
    // Every ready named object, optionally only of one kind (0: all).
    [[nodiscard]] std::vector<NamedInfo> list_named(std::uint32_t kind = 0) const;
    // Removes a directory entry and frees its block. False if absent.
    bool remove_named(std::string_view name);

    // --- introspection (tests, stats) ----------------------------------------------------------
    [[nodiscard]] HeapStats stats();
    // Bytes in free blocks (caches not counted), and whether every block is free (cached blocks
    // count as allocated: call flush_thread_caches() first).
    [[nodiscard]] std::uint64_t free_bytes();
    [[nodiscard]] bool all_freed();
    // Walks every segment's chain and the free lists; throws CorruptSegment with the first
    // inconsistency found.
    void check_invariants();
    // Returns to the shared heap the cached blocks of the calling thread and of exited threads
    // of this handle (the caches of other live threads are theirs to use). Safe from any
    // thread. allocate() does this once before giving up with OutOfMemory.
    // `all_threads`: every cache of this handle; only when no other thread of it can be inside
    // allocate()/deallocate() (tests; the Python binding, whose callers hold the GIL).
    void flush_thread_caches(bool all_threads = false);

  private:
    Heap() = default;
    friend class ThreadCache;
    friend struct HeapOps;
    struct Impl;
    void register_client();
    void unregister_client() noexcept;
    void ensure_process();
    [[nodiscard]] bool primary_name_is_ours() const;

    MemorySegment primary_;
    HeapControl *ctl_ = nullptr;
    std::uint16_t client_ = kOwnerNone;
    std::unique_ptr<Impl> impl_;
};

} // namespace shmipc
