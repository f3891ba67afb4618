// Named objects of a heap: kMaxNamed entries in the control block, then as many overflow pages
// of kDirPageEntries as needed (layout: NamedEntry, DirPage in heap/layout.hpp), each entry
// naming one block held by the heap (owner kOwnerHeld). No fixed limit (kMaxDirPages bounds a
// walk over scribbled links).
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
    // A new overflow page, chained last, for a claim when lookup() found no Empty entry: its
    // first entry, or nullptr if the arena has no room for a page now (the caller allocates
    // through the normal path, which may grow the heap, and retries). OutOfMemory once
    // kMaxDirPages pages exist.
    [[nodiscard]] NamedEntry *add_page();
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
        for_each([&](NamedEntry &e) {
            // SYNC POINT: acquire, pairs with the release store of Init in claim().
            if (e.state.load(std::memory_order_acquire) != kNamedInit)
                return false;
            const std::uint16_t c = e.creator;
            if (c == kOwnerNone || c > kMaxClients || dead(c))
                empty_and_free(e);
            return false;
        });
    }

  private:
    // Calls f(entry) for the control block's entries, then every page's, until f returns true
    // (then true). Page links are validated (CorruptSegment).
    template <class F> bool for_each(F &&f) const {
        for (auto &e : ctl_->named)
            if (f(e))
                return true;
        // SYNC POINT: acquire, pairs with the release store that linked the page (add_page):
        // its initialisation is visible.
        std::uint64_t off = ctl_->dir_next.load(std::memory_order_acquire);
        for (std::size_t n = 0; off != 0; ++n) {
            DirPage *p = page_at(off, n);
            for (auto &e : p->entries)
                if (f(e))
                    return true;
            // SYNC POINT: acquire, as above for the next link.
            off = p->next.load(std::memory_order_acquire);
        }
        return false;
    }
    [[nodiscard]] DirPage *page_at(std::uint64_t off, std::size_t index) const;
    [[nodiscard]] std::string where(const NamedEntry &e) const;
    // Validates an entry's name, offset and size against the block it names (CorruptSegment).
    [[nodiscard]] NamedInfo checked(const NamedEntry &e) const;
    void empty_and_free(NamedEntry &e);
    template <class F> auto retrying(F &&f) const -> decltype(f());

    HeapControl *ctl_ = nullptr;
    Segments *segs_ = nullptr;
    FreeList *free_ = nullptr;
};

} // namespace shmipc
