// Named objects of a heap: a fixed table of kMaxNamed entries (layout: NamedEntry in
// heap/layout.hpp), each naming one block held by the heap (owner kOwnerHeld).
//
//   Empty --claim (heap lock, block carved)--> Init --publish (creator, after init)--> Ready
//   Init --abandon (init threw) / creator died (reaped)--> Empty;  Ready --remove--> Empty
//
// Finders read Ready entries without the lock. Every change bumps `named_changed` (a futex word
// waiters sleep on), and a removal empties the entry before it frees the block, so a finder that
// sees a half-changed entry also sees the bump and retries, while one that sees garbage with no
// change in between reports CorruptSegment. Every offset and size of an entry is checked against
// the block it names before anyone gets it.
#pragma once

#include "ipc_core/heap/free_list.hpp"
#include "ipc_core/heap/layout.hpp"
#include "ipc_core/heap/segments.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmipc {

struct NamedInfo {
    std::string name;
    std::uint32_t kind = 0;
    std::uint64_t offset = 0; // payload offset
    std::uint64_t nbytes = 0; // as asked at creation
};

class Directory {
  public:
    Directory(HeapControl &ctl, Segments &segs, FreeList &free_list) noexcept
        : ctl_(&ctl), segs_(&segs), free_(&free_list) {}
    Directory() = default;

    // Names are 1..kMaxNamedLength bytes without NUL (InvalidArgument otherwise).
    static void check_name(std::string_view name);

    // --- without the lock ---------------------------------------------------------------------
    [[nodiscard]] std::optional<NamedInfo> find(std::string_view name) const;
    [[nodiscard]] std::vector<NamedInfo> list(std::uint32_t kind) const;
    // The creator, after init: Init -> Ready.
    void publish(NamedEntry &e) noexcept;
    // The change counter waiters sleep on.
    [[nodiscard]] FutexWord &changes() const noexcept { return ctl_->named_changed; }

    // --- with the heap lock held ---------------------------------------------------------------
    struct Lookup {
        NamedEntry *found = nullptr; // Init or Ready entry of that name
        NamedEntry *empty = nullptr; // first Empty entry, for a claim
    };
    [[nodiscard]] Lookup lookup(std::string_view name) const;
    // Checked copy of a found entry.
    [[nodiscard]] NamedInfo info(const NamedEntry &e) const { return checked(e); }
    // Empty -> Init for a block the caller just carved (payload `off`).
    void claim(NamedEntry &e, std::string_view name, std::uint32_t kind, std::uint64_t off,
               std::uint64_t nbytes, std::uint16_t creator) noexcept;
    // Init -> Empty and frees the block (init threw).
    void abandon(NamedEntry &e);
    // Ready -> Empty and frees the block. False if there is no ready entry of that name.
    bool remove(std::string_view name);
    // Drops Init entries whose creator is dead (`dead(creator)`, or not a client id at all):
    // their init will never finish.
    template <class Dead> void drop_dead_creators(Dead &&dead) {
        for (auto &e : ctl_->named) {
            // SYNC POINT: acquire, pairs with the release store of Init in claim().
            if (e.state.load(std::memory_order_acquire) != kNamedInit)
                continue;
            const std::uint16_t c = e.creator;
            if (c == kOwnerNone || c > kMaxClients || dead(c))
                empty_and_free(e);
        }
    }

  private:
    // Validates an entry's name, offset and size against the block it names (CorruptSegment).
    [[nodiscard]] NamedInfo checked(const NamedEntry &e) const;
    void empty_and_free(NamedEntry &e);
    template <class F> auto retrying(F &&f) const -> decltype(f());

    HeapControl *ctl_ = nullptr;
    Segments *segs_ = nullptr;
    FreeList *free_ = nullptr;
};

} // namespace shmipc
