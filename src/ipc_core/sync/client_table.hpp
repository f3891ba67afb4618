// The table of live clients of a shared object (heap, queue, value): the one registry every kind
// uses to know who is alive, to hand out lock tokens, and to find the dead to clean up after.
//
// Layout (in the object's shared memory, 64-byte aligned):
//
//   offset  size         field
//   0       4            capacity      slots; validated at attach, then kept privately
//   4       4            layout        kClientTableLayout
//   8       4            hint          where the next registration starts probing (a hint only)
//   12      52           reserved
//   64      16 * cap     slots: { state u32 = generation << 1 | active, pid i32 (diagnostics
//                                 only), reserved u64 }
//
// A client is alive while it holds an exclusive OFD lock on byte kClientLockBase + slot of its
// own open file description of the object's file (sync/liveness.hpp); the kernel drops it when
// the process dies. `active` says the slot's resources (blocks, claims) may still need cleaning:
// active + unlocked = dead, not yet cleaned. The generation changes with every registration, so a
// lock token of a dead client never matches the slot's next client (no ABA on recycled slots).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

namespace shmipc {

inline constexpr std::uint32_t kClientTableLayout = 1;
inline constexpr std::uint32_t kMaxTableClients = 8190; // slot + 1 fits in a token's 13 bits
inline constexpr std::uint32_t kNoSlot = ~0u;

struct ClientTableHeader {
    std::uint32_t capacity;
    std::uint32_t layout;
    std::atomic<std::uint32_t> hint;
    std::uint32_t reserved[13];
};
static_assert(std::is_standard_layout_v<ClientTableHeader>);
static_assert(sizeof(ClientTableHeader) == 64);
static_assert(offsetof(ClientTableHeader, capacity) == 0);
static_assert(offsetof(ClientTableHeader, layout) == 4);
static_assert(offsetof(ClientTableHeader, hint) == 8);

struct ClientSlot {
    std::atomic<std::uint32_t> state; // generation << 1 | active
    std::int32_t pid;                 // diagnostics only: liveness is the OFD lock
    std::uint64_t reserved;
};
static_assert(std::is_standard_layout_v<ClientSlot>);
static_assert(sizeof(ClientSlot) == 16);
static_assert(offsetof(ClientSlot, state) == 0 && offsetof(ClientSlot, pid) == 4);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

// Lock tokens: | generation (18 bits) | slot + 1 (13 bits) |, bit 31 left for the mutex.
inline constexpr unsigned kTokenSlotBits = 13;
inline constexpr std::uint32_t kTokenSlotMask = (1u << kTokenSlotBits) - 1;
inline constexpr std::uint32_t kTokenGenMask = (1u << 18) - 1;
static_assert(kMaxTableClients + 1 <= kTokenSlotMask);

enum class HolderState { Alive, Dead, Invalid };

// One process's view of a client table. Not thread-safe by itself: the owning object serializes
// register/unregister (they are rare); alive(), holder() and token() may be called from any thread.
class ClientTable {
  public:
    [[nodiscard]] static constexpr std::size_t bytes(std::uint32_t capacity) noexcept {
        return sizeof(ClientTableHeader) + std::size_t{capacity} * sizeof(ClientSlot);
    }
    // Writes an empty table of `capacity` slots (1..kMaxTableClients) into zeroed memory.
    static void init(void *mem, std::uint32_t capacity);

    ClientTable() = default;
    // Validates the table at `mem` (`avail` bytes mapped from there; `capacity` is what the
    // kind expects) and keeps its geometry privately. `lock_fd`: this handle's own open file
    // description of the object's file. CorruptSegment if the table is not sane.
    ClientTable(void *mem, std::size_t avail, std::uint32_t capacity, int lock_fd,
                const std::string &what);

    // Takes a slot: exclusive lock on its byte, state active with a new generation.
    // `take_dead`: a slot whose client died and was not cleaned may be taken; `on_recycle(slot)`
    // then runs first (it must clean what the dead client left). Otherwise only inactive slots
    // are taken, and the dead are left to whoever cleans them (reap). LimitReached when full.
    template <class OnRecycle> std::uint32_t register_client(bool take_dead, OnRecycle &&recycle) {
        using R = std::remove_reference_t<OnRecycle>;
        return register_impl(
            take_dead, [](void *ctx, std::uint32_t slot) { (*static_cast<R *>(ctx))(slot); },
            static_cast<void *>(&recycle));
    }
    std::uint32_t register_client() { return register_impl(false, nullptr, nullptr); }
    // Marks our slot inactive and drops its lock. Only for a slot we hold.
    void unregister_client() noexcept;
    // Forgets our slot without touching shared memory or locks (a forked child's copy: the
    // slot and its lock are the parent's).
    void forget() noexcept { mine_ = kNoSlot; }

    [[nodiscard]] std::uint32_t slot() const noexcept { return mine_; }
    [[nodiscard]] std::uint32_t capacity() const noexcept { return cap_; }
    [[nodiscard]] bool registered() const noexcept { return mine_ != kNoSlot; }
    // Our lock token (registered only): never 0.
    [[nodiscard]] std::uint32_t token() const noexcept { return token_; }

    // Is the client in `slot` alive? Our own slot is; others by their lock byte.
    [[nodiscard]] bool alive(std::uint32_t slot) const;
    // Active but dead: its resources need cleaning.
    [[nodiscard]] bool dead(std::uint32_t slot) const;
    // Who holds a lock token: Alive, Dead (gone, or its slot was recycled), or Invalid (the token
    // cannot have been issued by this table: scribbled memory).
    [[nodiscard]] HolderState holder(std::uint32_t token) const;
    // Calls fn(slot) for every active slot whose client is dead (not ours).
    template <class Fn> void for_each_dead(Fn &&fn) const {
        for (std::uint32_t i = 0; i < cap_; ++i)
            if (i != mine_ && dead(i))
                fn(i);
    }
    // After cleaning a dead client's resources: its slot becomes inactive (false if it changed
    // meanwhile).
    bool recycle(std::uint32_t slot) noexcept;
    // Live (active) slots, for statistics.
    [[nodiscard]] std::uint32_t active_count() const noexcept;

  private:
    [[nodiscard]] ClientSlot &at(std::uint32_t i) const noexcept { return slots_[i]; }
    std::uint32_t register_impl(bool take_dead, void (*recycle)(void *, std::uint32_t), void *ctx);

    ClientTableHeader *hdr_ = nullptr;
    ClientSlot *slots_ = nullptr;
    std::uint32_t cap_ = 0; // private copy, validated
    int lock_fd_ = -1;
    std::uint32_t mine_ = kNoSlot;
    std::uint32_t token_ = 0;
};

} // namespace shmipc
