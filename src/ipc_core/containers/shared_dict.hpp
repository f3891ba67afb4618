// SharedDict: a str -> tagged bytes map in a shared Heap, atomic per operation across
// processes, and crash consistent: a process SIGKILLed at any instruction never wedges the others
// and never leaves a torn entry.
//
// Layout (all in the heap, as heap offsets):
//
//   named block (kind kNamedDict)          table block                 entry blocks (immutable)
//   +----------------------------+        +----------+-----------+     +------------------------+
//   | DictControl: lock word,    |  ----> | capacity | slots[]   | --> | hash, key_len, tag,    |
//   | table, retired_*, count    |        |          | 1 word    |     | value_len, key, value  |
//   +----------------------------+        +----------+-----------+     +------------------------+
//
// A slot is ONE 64-bit word: 0 empty, 1 tombstone, else (18 hash bits << 46) | entry offset.
// Open addressing with linear probing; the table doubles (a fresh table is built, then published
// with one store) when live + tombstones pass 3/4 of it.
//
// Why not std::map with shmipc::allocator: a red-black insert or erase is a dozen pointer stores
// (and libstdc++ 12 keeps raw pointers in the nodes, see stl_allocator.hpp). A process killed
// between two of them leaves a tree no one can repair. Here every change becomes visible with a
// single store of a slot or of the table word, and everything it replaces is recorded first:
//
//   set(k, v):  [no lock] allocate the entry (owned by this process: reclaimed by the heap if we
//               die now), write key and value completely;
//               [lock] retired_entry = old; transfer(entry, kOwnerHeld); slot = entry  <- publish
//               retired_entry = 0; free(old); [unlock]
//   erase(k):   [lock] retired_entry = old; slot = tombstone; retired_entry = 0; free(old)
//   grow:       [lock] build the new table (owned by us), retired_table = old,
//               transfer(new, kOwnerHeld); table = new  <- publish;  retired_table = 0; free(old)
//   clear:      [lock] cleared_table = table; table = 0  <- publish; then empty the old table's
//               slots one by one (slot = 0, then free its entry); free the table.
//
// The lock is a RobustMutex (sync/robust_mutex.hpp: a futex word in DictControl, its holder
// named by the heap's lock token of the process). The next process that takes it after a holder
// died (EOWNERDEAD semantics: the holder's client table slot is dead) finishes the dead one's
// work from the record: frees retired_entry unless a slot still holds it, frees retired_table
// unless it is still the table, finishes emptying cleared_table, and recounts. If that repair
// throws, the lock is poisoned and every later locker gets CorruptSegment (never a half-repaired
// dict). A live holder, even a stopped one, only makes the others time out (or be interrupted).
// Readers take the same lock, so they never see an entry being freed.
//
// Leaks (not corruption): a kill between transfer(kOwnerHeld) and the publishing store, or
// between clearing a retired_* word and the free it announces (a few instructions each) leaks
// that one block. Freeing it from the record instead could free a block that the heap already
// reclaimed and handed to someone else; a leak is the safe side.
#pragma once

#include "ipc_core/heap/heap.hpp"
#include "ipc_core/sync/robust_mutex.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace shmipc {

inline constexpr std::uint32_t kNamedDict = 0x44494354; // "DICT": kind of the named block

struct DictControl; // in the named block (shared_dict_table.hpp)

// A handle on one shared dict of a heap. Cheap to copy; the Heap must outlive it, and the handle
// must outlive the Guards it hands out. Thread-safe in the sense that every operation takes the
// dict's lock (given as a Guard).
class SharedDict {
  public:
    // The dict `name` of `heap`, created empty on first use (named object of kind kNamedDict:
    // InvalidArgument if the name is used by another kind of object). Waits up to
    // `timeout_s` for a concurrent creator (Timeout).
    SharedDict(Heap &heap, std::string_view name, std::optional<double> timeout_s = 10.0);

    // The dict's lock, held. Move-only; unlocks on destruction.
    class Guard {
      public:
        Guard() = default;
        Guard(Guard &&o) noexcept : mutex_(o.mutex_) { o.mutex_ = nullptr; }
        Guard &operator=(Guard &&o) noexcept;
        ~Guard();
        explicit operator bool() const noexcept { return mutex_ != nullptr; }

      private:
        friend class SharedDict;
        explicit Guard(RobustMutex *m) : mutex_(m) {}
        RobustMutex *mutex_ = nullptr; // the handle's view of DictControl::lock, held
    };
    // Takes the lock if it is free now (an empty Guard otherwise). Recovers after a dead holder.
    [[nodiscard]] Guard try_lock();
    // Waits for the lock in slices, calling check_interrupt() between them; Timeout after
    // `timeout_s` (nullopt: forever), also when the holder is alive but stopped. Recovers after
    // a dead holder. CorruptSegment if the dict is unrecoverable (poisoned or scribbled lock).
    [[nodiscard]] Guard lock(std::optional<double> timeout_s);

    // An entry being prepared, not yet visible: owned by this process (the heap reclaims it if
    // the process dies). Write the value into value(); publish() makes it visible.
    class Entry {
      public:
        Entry() = default;
        Entry(Entry &&o) noexcept;
        Entry &operator=(Entry &&o) noexcept;
        ~Entry(); // frees an entry never published
        [[nodiscard]] std::byte *value() const noexcept { return value_; }

      private:
        friend class SharedDict;
        Heap *heap_ = nullptr;
        std::uint64_t off_ = 0; // payload offset; 0 once published or moved from
        std::uint64_t hash_ = 0;
        std::byte *value_ = nullptr;
    };
    // Allocates an entry for `key` with a value of `value_size` bytes and type tag `tag`
    // (1..255, the caller's encoding). OutOfMemory if the heap is full. No lock needed.
    [[nodiscard]] Entry make_entry(std::string_view key, std::uint8_t tag, std::size_t value_size);

    // What every reader gets, under the lock: the tag and the value bytes (valid until unlock).
    using ValueFn = void (*)(void *ctx, std::uint8_t tag, const std::byte *data, std::size_t n);
    using ItemFn = void (*)(void *ctx, std::string_view key, std::uint8_t tag,
                            const std::byte *data, std::size_t n);

    // --- operations (each needs the lock held by `g`) ----------------------------------------
    // Calls fn with the value of `key`; false if absent.
    bool get(const Guard &g, std::string_view key, ValueFn fn, void *ctx);
    [[nodiscard]] bool contains(const Guard &g, std::string_view key);
    // Publishes `e` under its key, replacing any value. With only_if_absent, an existing key is
    // left alone (fn gets its value; `e` is freed) and false is returned. OutOfMemory if the
    // table cannot grow (nothing changed then).
    bool publish(const Guard &g, Entry &&e, bool only_if_absent = false, ValueFn fn = nullptr,
                 void *ctx = nullptr);
    // Removes `key` (fn, if given, gets the value first); false if absent.
    bool erase(const Guard &g, std::string_view key, ValueFn fn = nullptr, void *ctx = nullptr);
    [[nodiscard]] std::size_t size(const Guard &g) const;
    // Every entry, in table order.
    void for_each(const Guard &g, ItemFn fn, void *ctx);
    void clear(const Guard &g);

    // --- introspection (tests) -------------------------------------------------------------
    [[nodiscard]] std::uint64_t control_offset() const noexcept { return ctl_off_; }
    [[nodiscard]] std::size_t capacity(const Guard &g) const; // slots of the table
    // Walks the table: every slot is empty, a tombstone or a valid entry of the right hash and
    // count/tombstones match. Throws CorruptSegment otherwise.
    void check_invariants(const Guard &g);
    [[nodiscard]] Heap &heap() const noexcept { return *heap_; }

  private:
    friend struct DictOps;
    Heap *heap_;
    std::uint64_t ctl_off_;
    DictControl *ctl_;
    RobustMutex mu_; // over ctl_->lock and the heap's client table
};

// The hash every process uses for keys (stable across processes and builds).
std::uint64_t dict_hash(std::string_view key) noexcept;

} // namespace shmipc
