// Message queues (message_queue.hpp): the clients of a queue. Registration in its client table
// (and re-registration in a forked child), the repair of a recycled index's claims, and the
// repair of dead clients' claims: half-written messages discarded, a dead consumer's message
// taken over and delivered.
#include "ipc_core/queue/message_queue_impl.hpp"

#include "ipc_core/sync/liveness.hpp"

#include <chrono>
#include <mutex>

namespace shmipc {

using namespace queue_detail; // the slot state word, layout offsets, spin policy

MessageQueue::Impl::~Impl() {
    if (registered.load(std::memory_order_relaxed) && !stamp.inherited())
        clients.unregister_client();
    forget_in_fork_children(lock_fd.get());
    lock_fd.reset(); // drops the client lock
    seg.reset();
}

void MessageQueue::Impl::register_slow() {
    // ensure_registered() found us unregistered (or registered in our parent): check again
    // with the lock held.
    // SYNC POINT: register_mu (process-local mutex): one thread registers; pairs with the release
    // store of registered below.
    std::lock_guard lk(register_mu);
    if (registered.load(std::memory_order_relaxed) && !stamp.inherited())
        return;
    if (stamp.inherited()) {
        // A forked child's copy: the slot and its lock are the parent's (our lock_fd was
        // renewed at fork and holds nothing); the name is the parent's to remove.
        clients.forget();
        me = kNoClient;
        stamp.renew();
    }
    register_client();
    // SYNC POINT: release, pairs with the acquire load of registered in ensure_registered(): me and
    // the client slot are seen set.
    registered.store(true, std::memory_order_release);
}

void MessageQueue::Impl::register_client() {
    // A dead client's slot may be taken over: its claims are repaired first, so a recycled
    // index never makes a dead claim look alive.
    me = clients.register_client(true, [&](std::uint32_t slot) {
        me = slot;
        repair_recycled_index();
    });
}

void MessageQueue::Impl::repair_recycled_index() noexcept {
    for (std::uint64_t i = 0; i < cap; ++i) {
        auto &state = slot(i)->state;
        // SYNC POINT: acquire of the slot's state, pairs with the release stores / acq_rel CASes of
        // the state by producers and consumers (try_put, deliver): the claim we repair is current.
        std::uint64_t st = state.load(std::memory_order_acquire);
        if (client_of(st) != me)
            continue;
        if (phase_of(st) == kWriting) {
            // SYNC POINT: acq_rel CAS to EMPTY: releases the slot to the producer's acquire CAS of
            // EMPTY in try_put (the dead write is discarded).
            if (state.compare_exchange_strong(st, make_state(lap_of(st) + 1, kEmpty, 0),
                                              std::memory_order_acq_rel))
                wake_all();
        } else if (phase_of(st) == kReading) {
            // Hand the message to whichever consumer scans next.
            // SYNC POINT: acq_rel CAS to READING(no client): continues the release sequence of the
            // producer's FULL, so the consumer that takes it over in scan() (acquire CAS) sees the
            // message.
            state.compare_exchange_strong(st, make_state(lap_of(st), kReading, kNoClient),
                                          std::memory_order_acq_rel);
        }
    }
}

// Discards a half-written message of a dead producer. true if we did.
bool MessageQueue::Impl::discard(QueueSlot *s, std::uint64_t st) noexcept {
    // SYNC POINT: acq_rel CAS to EMPTY of the next lap: pairs with the producer's acquire CAS of
    // EMPTY in try_put; only one discarder wins.
    if (!s->state.compare_exchange_strong(st, make_state(lap_of(st) + 1, kEmpty, 0),
                                          std::memory_order_acq_rel))
        return false;
    wake_all(); // the slot is free and the head may move on
    return true;
}

bool MessageQueue::Impl::scan_due() {
    std::int64_t now =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
            .count();
    std::int64_t due = next_scan_ns.load(std::memory_order_relaxed);
    if (now < due)
        return false;
    return next_scan_ns.compare_exchange_strong(
        due, now + std::chrono::nanoseconds(kScanInterval).count(), std::memory_order_relaxed);
}

// Discards every half-written message of a dead producer; with a sink, takes over (at
// most) one message whose consumer died and delivers it. Without one, notes that there is.
MessageQueue::Impl::Repair MessageQueue::Impl::scan(Sink sink, void *ctx) {
    Repair r;
    orphan_seen.store(false, std::memory_order_relaxed);
    for (std::uint64_t i = 0; i < cap; ++i) {
        QueueSlot *s = slot(i);
        // SYNC POINT: acquire, pairs with the release stores of the state (FULL in try_put,
        // READING/EMPTY in deliver) and the CASes that claim a slot.
        std::uint64_t st = s->state.load(std::memory_order_acquire);
        Phase ph = phase_of(st);
        if (ph != kWriting && ph != kReading)
            continue;
        if (alive(client_of(st)))
            continue;
        if (ph == kWriting) {
            if (discard(s, st))
                ++r.discarded;
            continue;
        }
        if (!sink) {
            orphan_seen.store(true, std::memory_order_relaxed);
            continue;
        }
        // SYNC POINT: acquire pairs with the producer's release of FULL (the dead consumer's
        // CAS continued its release sequence).
        if (s->state.compare_exchange_strong(st, make_state(lap_of(st), kReading, me),
                                             std::memory_order_acquire)) {
            deliver(s, lap_of(st), sink, ctx);
            r.delivered = true;
            orphan_seen.store(
                true,
                std::memory_order_relaxed); // there may be more: look again on the next call
            return r;
        }
    }
    return r;
}

} // namespace shmipc
