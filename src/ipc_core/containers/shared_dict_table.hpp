// Internal to containers/: the shared layout of a SharedDict below its handle (the control
// block, the table block, the entry blocks and the slot word; the picture and the store protocol
// are in shared_dict.hpp) and DictOps, the table and entry walking shared by the operations
// (shared_dict.cpp) and the table's maintenance and crash recovery (shared_dict_table.cpp). Not
// part of any API.
#pragma once

#include "ipc_core/base/errors.hpp"
#include "ipc_core/containers/shared_dict.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/sync/robust_mutex.hpp"
#include "ipc_core/testing/crash_point.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace shmipc {

namespace dict_detail {

inline constexpr std::uint64_t kDictMagic = 0x5443494450494D53; // "SMIPDICT"
inline constexpr std::uint32_t kDictLayoutVersion = 2; // 2: RobustMutexWord, not pthread_mutex_t
inline constexpr std::uint64_t kSlotEmpty = 0;
inline constexpr std::uint64_t kSlotTombstone = 1; // offset 1 is never a block
inline constexpr unsigned kTagShift = 46;          // 6 segment bits + 40 offset bits below
inline constexpr std::uint64_t kOffMask = (std::uint64_t{1} << kTagShift) - 1;
inline constexpr std::size_t kMinCapacity = 16; // slots, power of two
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

inline constexpr std::size_t value_offset(std::size_t key_len) {
    return (sizeof(EntryHeader) + key_len + 15) / 16 * 16; // values 16-byte aligned
}

inline std::uint64_t make_slot(std::uint64_t off, std::uint64_t hash) {
    return (hash >> kTagShift << kTagShift) | off;
}
inline bool is_entry(std::uint64_t w) {
    return w > kSlotTombstone;
}
inline std::uint64_t slot_off(std::uint64_t w) {
    return w & kOffMask;
}

// A crash point at each step of a store (testing/crash_point.hpp: "dict.<step>").
inline void step(const char *name) {
    if (detail::g_crash_armed.load(std::memory_order_relaxed)) [[unlikely]]
        detail::crash_point_slow(("dict." + std::string(name)).c_str());
}

} // namespace dict_detail

// The named block. Layout (version 2):
//   offset  size  field
//   0       8     magic            kDictMagic, written last by the creator
//   8       4     layout_version   kDictLayoutVersion
//   12      52    pad0
//   64      8     lock             RobustMutexWord (sync/robust_mutex.hpp); guards everything below
//   72      56    pad1             (the lock word has its own cache line: waiters poll it)
//   128     8 x 4 table, retired_entry, retired_table, cleared_table (atomic heap offsets)
//   160     8     count
//   168     8     tombstones
//   176     16    (alignment padding: sizeof 192)
struct DictControl {
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t pad0;
    alignas(64) RobustMutexWord lock; // guards everything below
    // Heap offsets. Atomic so that each publication is one indivisible store; all accesses are
    // made with the lock held, which orders them (relaxed/release would do; see SYNC POINTs).
    alignas(64) std::atomic<std::uint64_t> table; // TableHeader payload, 0: none yet
    std::atomic<std::uint64_t> retired_entry;     // entry being replaced/removed
    std::atomic<std::uint64_t> retired_table;     // table being replaced by a bigger one
    std::atomic<std::uint64_t> cleared_table;     // table being emptied by clear()
    std::uint64_t count;                          // live entries (rebuilt on recovery)
    std::uint64_t tombstones;                     // (rebuilt on recovery)
};
static_assert(std::is_standard_layout_v<DictControl>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(offsetof(DictControl, magic) == 0 && offsetof(DictControl, layout_version) == 8);
static_assert(offsetof(DictControl, lock) == 64 && sizeof(RobustMutexWord) == 8);
static_assert(offsetof(DictControl, table) == 128 && offsetof(DictControl, retired_entry) == 136 &&
              offsetof(DictControl, retired_table) == 144 &&
              offsetof(DictControl, cleared_table) == 152);
static_assert(offsetof(DictControl, count) == 160 && offsetof(DictControl, tombstones) == 168);
static_assert(sizeof(DictControl) == 192 && alignof(DictControl) == 64);

// The table and entry walking, shared by the operations and the recovery.
struct DictOps {
    SharedDict &d;
    Heap &h;
    DictControl *c;

    // Shared memory is input: a table's capacity and an entry's lengths are read once, checked
    // against the heap block that holds them, and only the checked copies are used.
    [[noreturn]] void corrupt(const std::string &why) const {
        throw CorruptSegment("shared dict: " + why);
    }
    // The live heap block at `off` (its payload and capacity), or CorruptSegment.
    Heap::Payload block(std::uint64_t off) const;
    struct Table {
        std::atomic<std::uint64_t> *slots = nullptr;
        std::uint64_t capacity = 0; // slots, power of two, fits its block
    };
    Table table(std::uint64_t off) const;
    struct EntryView {
        std::uint64_t hash = 0;
        std::uint8_t tag = 0;
        std::string_view key;
        const std::byte *value = nullptr;
        std::uint64_t value_len = 0;
    };
    EntryView entry(std::uint64_t off) const;

    struct Probe {
        Table t;
        std::int64_t found = -1; // slot holding the key
        std::int64_t free = -1;  // first tombstone or empty slot on the way
    };
    Probe probe(std::string_view key, std::uint64_t hash);

    // Frees a block the dict held; never throws (a block that is somehow not live is left).
    void free_block(std::uint64_t off) noexcept;

    // --- maintenance and recovery (shared_dict_table.cpp) ------------------------------------
    // Makes room for one more entry: a new table (doubled, or rehashed to drop tombstones).
    void ensure_room();
    // Empties the table recorded in cleared_table (clear(), or its recovery).
    void finish_clear() noexcept;
    // Run by the locker that took the lock over from a dead holder (RobustMutex's recover):
    // finish what the dead holder started. If it throws, the lock is poisoned.
    void recover();
    void recount();
};

} // namespace shmipc
