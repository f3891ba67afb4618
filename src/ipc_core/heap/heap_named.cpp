// Heap: named objects (the directory of heap/directory.hpp, used with the heap lock and the
// allocator).
#include "ipc_core/heap/heap.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <cstring>

namespace shmipc {

namespace {
// Cleaning up after a failed init waits this long for the lock; past it the entry stays until
// we die (then reapers drop it), rather than replacing the init's exception with Timeout.
constexpr double kCleanupLockWait = 10.0;
} // namespace

std::pair<std::uint64_t, bool> Heap::find_or_create_named(std::string_view name, std::size_t nbytes,
                                                          const std::function<void(void *)> &init,
                                                          std::uint32_t kind,
                                                          const Deadline &deadline) {
    Directory::check_name(name);
    if (nbytes == 0)
        throw InvalidArgument("a named block needs nbytes >= 1");
    ensure_process();
    for (;;) {
        // SYNC POINT: acquire, pairs with the seq_cst bump of every directory change: a change
        // after this read ends the wait below.
        const std::uint32_t seen = dir_.changes().seq.load(std::memory_order_acquire);
        NamedEntry *mine = nullptr;
        std::uint64_t off = 0;
        std::size_t room_for = nbytes; // what to make room for when the arena is full
        bool wait = false;
        {
            auto lk = locked(deadline);
            const Directory::Lookup r = dir_.lookup(name);
            // SYNC POINT: acquire, pairs with the release store of Ready by the creator
            // (Directory::publish, made without the lock).
            if (r.found && r.found->state.load(std::memory_order_acquire) == kNamedReady) {
                const NamedInfo info = dir_.info(*r.found);
                if (info.kind != kind)
                    throw InvalidArgument("heap object '" + std::string(name) +
                                          "' exists with another kind");
                if (info.nbytes < nbytes)
                    throw InvalidArgument("heap object '" + std::string(name) + "' exists with " +
                                          std::to_string(info.nbytes) + " bytes, " +
                                          std::to_string(nbytes) + " asked");
                return {info.offset, false};
            }
            if (r.found) {
                wait = true; // being initialised; its creator may die (reaped while we wait)
            } else {
                // Every entry in use: the directory grows by a page (no fixed limit).
                NamedEntry *slot = r.empty ? r.empty : dir_.add_page();
                // Allocate with the lock held (no cache); if the arena is full, allocate through
                // the normal path below (grows or throws a precise OutOfMemory) and retry.
                const std::uint64_t units = units_for(slot ? nbytes : sizeof(DirPage));
                if (slot) {
                    if (const std::uint64_t fit = free_.find_fit(units, kHeapUnit)) {
                        off = free_.carve(fit, units, kHeapUnit, kOwnerHeld);
                        mine = slot;
                        dir_.claim(*mine, name, kind, off, nbytes, client_);
                    }
                }
                if (!mine)
                    room_for = slot ? nbytes : sizeof(DirPage);
            }
        }
        if (wait) {
            // SYNC POINT: the acquire load in ready() pairs with notify_all() of the next
            // directory change (wait_until announces us in `waiters` so it wakes us).
            (void)wait_until(
                dir_.changes(),
                [&] { return dir_.changes().seq.load(std::memory_order_acquire) != seen; },
                [&] {
                    if (deadline.expired())
                        throw Timeout("timed out waiting for heap object '" + std::string(name) +
                                      "' to be initialised by its creator");
                    check_interrupt();
                    (void)reap_dead_clients(deadline);
                    return deadline.slice();
                });
            continue;
        }
        if (!mine) {
            const std::uint64_t tmp = allocate_owned(room_for, kHeapUnit, kOwnerHeld, deadline);
            auto lk = locked(deadline);
            const std::uint64_t ho = tmp - kBlockHeaderSize;
            (void)free_.release(ho, free_.checked_word(ho));
            continue;
        }
        void *p = to_ptr(off);
        std::memset(p, 0, nbytes);
        try {
            if (init)
                init(p);
        } catch (...) {
            try {
                auto lk = locked(Deadline(kCleanupLockWait));
                dir_.abandon(*mine);
            } catch (...) {
            }
            throw;
        }
        dir_.publish(*mine);
        return {off, true};
    }
}

bool Heap::remove_named(std::string_view name, const Deadline &deadline) {
    if (name.empty() || name.size() > kMaxNamedLength)
        return false;
    ensure_process();
    auto lk = locked(deadline);
    return dir_.remove(name);
}

} // namespace shmipc
