#include "ipc_core/sync/client_table.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <unistd.h>

namespace shmipc {

namespace {
constexpr std::uint32_t kActive = 1;
std::uint32_t gen_of(std::uint32_t state) noexcept {
    return state >> 1;
}
off_t byte_of(std::uint32_t slot) noexcept {
    return kClientLockBase + static_cast<off_t>(slot);
}
} // namespace

void ClientTable::init(void *mem, std::uint32_t capacity) {
    if (capacity == 0 || capacity > kMaxTableClients)
        throw InvalidArgument("a client table has 1.." + std::to_string(kMaxTableClients) +
                              " slots, not " + std::to_string(capacity));
    auto *h = static_cast<ClientTableHeader *>(mem);
    h->capacity = capacity;
    h->layout = kClientTableLayout;
    h->hint.store(0, std::memory_order_relaxed);
}

ClientTable::ClientTable(void *mem, std::size_t avail, std::uint32_t capacity, int lock_fd,
                         const std::string &what)
    : hdr_(static_cast<ClientTableHeader *>(mem)),
      slots_(reinterpret_cast<ClientSlot *>(static_cast<std::byte *>(mem) +
                                            sizeof(ClientTableHeader))),
      lock_fd_(lock_fd) {
    if (capacity == 0 || capacity > kMaxTableClients || avail < bytes(capacity))
        throw CorruptSegment(what + ": client table does not fit");
    if (hdr_->capacity != capacity || hdr_->layout != kClientTableLayout)
        throw CorruptSegment(what + ": bad client table (capacity " +
                             std::to_string(hdr_->capacity) + ", layout " +
                             std::to_string(hdr_->layout) + ")");
    cap_ = capacity; // from now on only the private copy bounds any index
}

std::uint32_t ClientTable::register_impl(bool take_dead, void (*on_recycle)(void *, std::uint32_t),
                                         void *ctx) {
    std::uint32_t start = hdr_->hint.fetch_add(1, std::memory_order_relaxed) % cap_;
    for (std::uint32_t k = 0; k < cap_; ++k) {
        std::uint32_t idx = (start + k) % cap_;
        ClientSlot &s = at(idx);
        // SYNC POINT: acquire, pairs with the release store of a slot's state by its registrant,
        // unregister_client and recycle: what they wrote before (pid, the freed blocks) is seen.
        std::uint32_t st = s.state.load(std::memory_order_acquire);
        if ((st & kActive) && !take_dead)
            continue; // alive, or dead and waiting for whoever cleans up
        if (!try_lock_byte(lock_fd_, byte_of(idx), true))
            continue; // a live client holds it
        // We hold the byte: no live client has this slot, and no other registrant can take it.
        // SYNC POINT: acquire, as above (re-read under the byte lock).
        st = s.state.load(std::memory_order_acquire);
        if ((st & kActive) && !take_dead) {
            unlock_byte(lock_fd_, byte_of(idx)); // died just now: leave it to the cleaner
            continue;
        }
        const bool was_dead = (st & kActive) != 0;
        if (was_dead && on_recycle)
            on_recycle(ctx, idx);
        std::uint32_t gen = (gen_of(st) + 1) & ((1u << 31) - 1);
        if ((gen & kTokenGenMask) == 0)
            gen += 1; // a token is never 0, and generation 0 marks "never registered"
        s.pid = static_cast<std::int32_t>(::getpid());
        // SYNC POINT: release, pairs with the acquire loads of holder()/alive() elsewhere.
        s.state.store((gen << 1) | kActive, std::memory_order_release);
        mine_ = idx;
        token_ = ((gen & kTokenGenMask) << kTokenSlotBits) | (idx + 1);
        return idx;
    }
    throw LimitReached("client table full: " + std::to_string(cap_) +
                       " live handles of this object at once");
}

void ClientTable::unregister_client() noexcept {
    if (mine_ == kNoSlot)
        return;
    ClientSlot &s = at(mine_);
    std::uint32_t st = s.state.load(std::memory_order_relaxed);
    // SYNC POINT: release, pairs with the acquire loads of register_impl/alive/dead/holder: the
    // slot is seen free only after everything this client did to the object.
    s.state.store(st & ~kActive, std::memory_order_release);
    unlock_byte(lock_fd_, byte_of(mine_));
    mine_ = kNoSlot;
    token_ = 0;
}

bool ClientTable::alive(std::uint32_t slot) const {
    if (slot >= cap_)
        return false;
    if (slot == mine_)
        return true;
    // SYNC POINT: acquire, pairs with the release stores of the slot's state (register, leave).
    if ((at(slot).state.load(std::memory_order_acquire) & kActive) == 0)
        return false;
    return byte_is_locked(lock_fd_, byte_of(slot));
}

bool ClientTable::dead(std::uint32_t slot) const {
    if (slot >= cap_ || slot == mine_)
        return false;
    // SYNC POINT: acquire, pairs with the release stores of the slot's state (register, leave).
    if ((at(slot).state.load(std::memory_order_acquire) & kActive) == 0)
        return false;
    return !byte_is_locked(lock_fd_, byte_of(slot));
}

HolderState ClientTable::holder(std::uint32_t token) const {
    std::uint32_t slot1 = token & kTokenSlotMask;
    std::uint32_t gen = (token >> kTokenSlotBits) & kTokenGenMask;
    if (slot1 == 0 || slot1 > cap_ || gen == 0 || (token >> 31) != 0)
        return HolderState::Invalid;
    std::uint32_t slot = slot1 - 1;
    if (slot == mine_ && token == token_)
        return HolderState::Alive;
    // SYNC POINT: acquire, pairs with the release store of the registrant: a token's generation
    // is compared with the slot's current one.
    std::uint32_t st = at(slot).state.load(std::memory_order_acquire);
    if ((gen_of(st) & kTokenGenMask) != gen) {
        // A generation the slot never had yet cannot be a real token.
        return gen_of(st) == 0 ? HolderState::Invalid : HolderState::Dead;
    }
    if ((st & kActive) == 0)
        return HolderState::Dead;
    return byte_is_locked(lock_fd_, byte_of(slot)) ? HolderState::Alive : HolderState::Dead;
}

bool ClientTable::recycle(std::uint32_t slot) noexcept {
    if (slot >= cap_ || slot == mine_)
        return false;
    ClientSlot &s = at(slot);
    std::uint32_t st = s.state.load(std::memory_order_acquire);
    if ((st & kActive) == 0)
        return false;
    // SYNC POINT: acq_rel, pairs with the acquire loads of the next registrant of the slot (who
    // must see the dead client's blocks freed, which the reaper did before recycling) and with a
    // concurrent recycle of the same slot (only one wins).
    return s.state.compare_exchange_strong(st, st & ~kActive, std::memory_order_acq_rel);
}

std::uint32_t ClientTable::active_count() const noexcept {
    std::uint32_t n = 0;
    for (std::uint32_t i = 0; i < cap_; ++i)
        n += at(i).state.load(std::memory_order_relaxed) & kActive;
    return n;
}

} // namespace shmipc
