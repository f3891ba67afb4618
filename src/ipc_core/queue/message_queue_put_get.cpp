// Message queues (message_queue.hpp): putting and getting. The producer's claim, copy and
// commit of a slot (try_put); the consumer's claim and delivery (try_get), including messages
// committed behind a head still being written (taken ahead, per-producer order kept); the waits
// of both sides.
#include "ipc_core/queue/message_queue_impl.hpp"

#include "ipc_core/base/bulk_copy.hpp"
#include "ipc_core/testing/crash_point.hpp"

#include <chrono>
#include <cstring>
#include <string>

namespace shmipc {

using namespace queue_detail; // the slot state word, layout offsets, spin policy

// ---- producer -------------------------------------------------------------------------
bool MessageQueue::Impl::try_put(const void *src, std::size_t n) {
    if (n > max_msg)
        throw InvalidArgument("message of " + std::to_string(n) +
                              " bytes exceeds max_message_size (" + std::to_string(max_msg) +
                              " bytes)");
    ensure_registered();
    seg.check_intact("message queue");
    for (unsigned round = 0; round < kMaxRounds; ++round) {
        // SYNC POINT: acquire of tail (pairs with the acq_rel CAS in help_advance), then of the
        // slot's state (pairs with the consumer's release of EMPTY in deliver and the producers'
        // CASes).
        std::uint64_t pos = ctl->tail.load(std::memory_order_acquire);
        std::uint64_t lap = pos / cap;
        QueueSlot *s = slot(pos % cap);
        std::uint64_t st = s->state.load(std::memory_order_acquire);
        std::int64_t d = lap_diff(lap_of(st), lap);
        if (d > 1) {
            // We may have been preempted between the two loads while the queue went round
            // many times: only a counter that has not moved proves the slot scribbled.
            // SYNC POINT: acquire re-load of tail, pairs with help_advance's CAS: an unmoved
            // counter proves the lap scribbled.
            if (ctl->tail.load(std::memory_order_acquire) != pos)
                continue;
            corrupt_lap(pos, st);
        }
        if (d == 0 && phase_of(st) == kEmpty) {
            // SYNC POINT: acquire pairs with the consumer's release of EMPTY (it finished
            // reading the slot's previous message before we overwrite it).
            if (!s->state.compare_exchange_weak(st, make_state(lap, kWriting, me),
                                                std::memory_order_acquire,
                                                std::memory_order_relaxed))
                continue;
            help_advance(ctl->tail, pos);
            crash_point("queue.put.claimed");
            auto *dst = data(s);
            std::size_t half = n / 2;
            if (half)
                bulk_copy(dst, src, half);
            crash_point("queue.put.half");
            if (n - half)
                bulk_copy(dst + half, static_cast<const std::byte *>(src) + half, n - half);
            s->length = static_cast<std::uint32_t>(n);
            // SYNC POINT: release pairs with the consumer's acquire of FULL (publishes
            // data and length).
            s->state.store(make_state(lap, kFull, 0), std::memory_order_release);
            // SYNC POINT: futex wake of not_empty after the release of FULL: pairs with the wait in
            // wait_get_ready, whose get_ready() reloads the state (acquire).
            wake_if_waiting(ctl->not_empty);
            return true;
        }
        if (d >= 0) { // position already claimed: help the tail past it
            help_advance(ctl->tail, pos);
            continue;
        }
        // The slot still holds the previous lap's message: full, unless our tail was stale.
        // SYNC POINT: acquire re-load of tail (pairs with help_advance): unchanged, the queue is
        // full.
        if (ctl->tail.load(std::memory_order_acquire) == pos)
            return false;
    }
    return false; // too much contention (or scribbled counters): the caller waits and retries
}

bool MessageQueue::Impl::put_ready() const noexcept {
    // SYNC POINT: acquire of tail and the slot's state, as in try_put (no claim: a hint for the
    // wait).
    std::uint64_t pos = ctl->tail.load(std::memory_order_acquire);
    std::uint64_t st = slot(pos % cap)->state.load(std::memory_order_acquire);
    return lap_diff(lap_of(st), pos / cap) >= 0;
}

// ---- consumer -------------------------------------------------------------------------
// Delivers the message of a slot we hold in READING(lap, me).
bool MessageQueue::Impl::deliver(QueueSlot *s, std::uint64_t lap, Sink sink, void *ctx) {
    std::uint32_t n = s->length;
    if (n > max_msg) {
        // SYNC POINT: release of EMPTY, pairs with the producer's acquire CAS of EMPTY in try_put
        // (the corrupt slot is given back).
        s->state.store(make_state(lap + 1, kEmpty, 0), std::memory_order_release);
        // SYNC POINT: futex wake of not_full after the release of EMPTY: pairs with the wait in
        // wait_put_ready.
        wake_if_waiting(ctl->not_full);
        throw CorruptSegment("message queue '" + seg.name() + "': a slot claims " +
                             std::to_string(n) + " bytes, more than max_message_size");
    }
    crash_point("queue.get.claimed");
    bool taken = sink(ctx, data(s), n);
    crash_point("queue.get.copied");
    if (!taken) {
        // Back to the queue: the next scanning consumer takes it over.
        // SYNC POINT: release of READING(no client): continues the producer's FULL so the consumer
        // that takes it over in scan() (acquire CAS) sees the message.
        s->state.store(make_state(lap, kReading, kNoClient), std::memory_order_release);
        orphan_seen.store(true, std::memory_order_relaxed);
        return true;
    }
    // SYNC POINT: release pairs with the producer's acquire of EMPTY in try_put.
    s->state.store(make_state(lap + 1, kEmpty, 0), std::memory_order_release);
    // SYNC POINT: futex wake of not_full after the release of EMPTY: pairs with the wait in
    // wait_put_ready.
    wake_if_waiting(ctl->not_full);
    return true;
}

bool MessageQueue::Impl::try_get(Sink sink, void *ctx) {
    ensure_registered();
    seg.check_intact("message queue");
    for (unsigned round = 0; round < kMaxRounds; ++round) {
        // SYNC POINT: acquire of head (pairs with the acq_rel CAS in help_advance), then of the
        // slot's state (pairs with the producer's release of FULL).
        std::uint64_t pos = ctl->head.load(std::memory_order_acquire);
        std::uint64_t lap = pos / cap;
        QueueSlot *s = slot(pos % cap);
        std::uint64_t st = s->state.load(std::memory_order_acquire);
        std::int64_t d = lap_diff(lap_of(st), lap);
        if (d > 1) {
            // We may have been preempted between the two loads while the queue went round
            // many times: only a counter that has not moved proves the slot scribbled.
            // SYNC POINT: acquire re-load of head, pairs with help_advance's CAS: an unmoved
            // counter proves the lap scribbled.
            if (ctl->head.load(std::memory_order_acquire) != pos)
                continue;
            corrupt_lap(pos, st);
        }
        Phase ph = phase_of(st);
        if (d == 0 && ph == kFull) {
            // SYNC POINT: acquire pairs with the producer's release of FULL.
            if (!s->state.compare_exchange_weak(st, make_state(lap, kReading, me),
                                                std::memory_order_acquire,
                                                std::memory_order_relaxed))
                continue;
            help_advance(ctl->head, pos);
            return deliver(s, lap, sink, ctx);
        }
        if (d > 0 || (d == 0 && ph == kReading)) { // already taken or discarded
            help_advance(ctl->head, pos);
            continue;
        }
        // SYNC POINT: acquire re-load of head (pairs with help_advance): moved, our view was stale.
        if (ctl->head.load(std::memory_order_acquire) != pos)
            continue; // stale head
        if (d == 0 && ph == kWriting) {
            if (!alive(client_of(st))) {
                discard(s, st);
                continue;
            }
            // A live producer is still writing the head message (or is stopped: SIGSTOP):
            // messages committed behind it are not held hostage. Per-producer order holds
            // (a producer finishes one message before it claims the next).
            if (take_ahead(pos, sink, ctx))
                return true;
        }
        // Empty (or the next message is still being written): maybe a dead consumer
        // left one behind.
        if (orphan_seen.load(std::memory_order_relaxed) || scan_due()) {
            Repair r = scan(sink, ctx);
            if (r.delivered)
                return true;
            if (r.discarded)
                continue;
        }
        return false;
    }
    return false; // too much contention (or scribbled counters): the caller waits and retries
}

bool MessageQueue::Impl::get_ready() const noexcept {
    // SYNC POINT: acquire of head and the slot's state, as in try_get (no claim: a hint for the
    // wait).
    std::uint64_t pos = ctl->head.load(std::memory_order_acquire);
    std::uint64_t st = slot(pos % cap)->state.load(std::memory_order_acquire);
    std::int64_t d = lap_diff(lap_of(st), pos / cap);
    if (d > 0 || (d == 0 && (phase_of(st) == kFull || phase_of(st) == kReading)))
        return true;
    return d == 0 && phase_of(st) == kWriting && committed_ahead(pos) != kNone;
}

// The first position after `head` (up to the tail, at most one lap) whose message is
// committed (FULL of its lap), or kNone.
std::uint64_t MessageQueue::Impl::committed_ahead(std::uint64_t head) const noexcept {
    // SYNC POINT: acquire of tail, pairs with help_advance's CAS: the positions below it were
    // claimed.
    std::uint64_t tail = ctl->tail.load(std::memory_order_acquire);
    std::uint64_t n = tail - head;
    if (n > cap)
        n = cap; // a scribbled tail: never look further than one lap
    return first_committed(head + 1, head + n);
}

// The first position in [from, to) whose message is committed (FULL of its lap), or kNone.
std::uint64_t MessageQueue::Impl::first_committed(std::uint64_t from,
                                                  std::uint64_t to) const noexcept {
    for (std::uint64_t pos = from; pos < to; ++pos) {
        // SYNC POINT: acquire, pairs with the producer's release of FULL: a later commit seen makes
        // the earlier ones visible (see lowest_committed_ahead).
        std::uint64_t st = slot(pos % cap)->state.load(std::memory_order_acquire);
        if (phase_of(st) == kFull && lap_diff(lap_of(st), pos / cap) == 0)
            return pos;
    }
    return kNone;
}

// The committed position to take ahead of `head`, lowest first, or kNone (also when the
// head itself got committed meanwhile: the caller takes it the normal way). One pass is not
// enough: a producer may commit message i at p1 after the scan passed p1 and then message
// i+1 at p2 > p1 before the scan reaches p2. Seeing p2 FULL (acquire) makes that earlier
// commit visible, so scanning [head, p2) again finds p1; repeated until nothing lower is
// committed, it keeps every producer's messages in order for each consumer.
std::uint64_t MessageQueue::Impl::lowest_committed_ahead(std::uint64_t head) const noexcept {
    std::uint64_t pos = committed_ahead(head);
    while (pos != kNone) {
        std::uint64_t lower = first_committed(head, pos);
        if (lower == head)
            return kNone;
        if (lower == kNone)
            return pos;
        pos = lower;
    }
    return kNone;
}

// Claims and delivers a committed message behind a head still being written. The head
// counter stays where it is; it skips the taken slot later (EMPTY of the next lap).
bool MessageQueue::Impl::take_ahead(std::uint64_t head, Sink sink, void *ctx) {
    for (int attempt = 0; attempt < 4; ++attempt) {
        std::uint64_t pos = lowest_committed_ahead(head);
        if (pos == kNone)
            return false;
        QueueSlot *s = slot(pos % cap);
        // SYNC POINT: acquire, pairs with the producer's release of FULL (re-checked before the
        // claim).
        std::uint64_t st = s->state.load(std::memory_order_acquire);
        const std::uint64_t lap = pos / cap;
        if (phase_of(st) != kFull || lap_diff(lap_of(st), lap) != 0)
            continue;
        // SYNC POINT: acquire pairs with the producer's release of FULL.
        if (s->state.compare_exchange_strong(st, make_state(lap, kReading, me),
                                             std::memory_order_acquire))
            return deliver(s, lap, sink, ctx);
    }
    return false;
}

// ---- waiting --------------------------------------------------------------------------
MessageQueue::WaitResult MessageQueue::Impl::wait_put_ready(const Deadline &dl) {
    ensure_registered();
    // SYNC POINT: futex wait on not_full (spin first): pairs with the consumers' wakes after their
    // release of EMPTY; put_ready() reloads tail and state (acquire).
    bool ok = spin_then_wait(
        ctl->not_full, [&] { return put_ready(); },
        [&]() -> std::chrono::nanoseconds {
            check_interrupt();
            check_closing();
            return dl.slice();
        },
        spin_policy(dl));
    return ok ? WaitResult::Ready : WaitResult::Timeout;
}

MessageQueue::WaitResult MessageQueue::Impl::wait_get_ready(const Deadline &dl) {
    ensure_registered();
    auto ready = [&] { return orphan_seen.load(std::memory_order_relaxed) || get_ready(); };
    // SYNC POINT: futex wait on not_empty (spin first): pairs with the producers' wakes after their
    // release of FULL; get_ready() reloads head and state (acquire).
    bool ok = spin_then_wait(
        ctl->not_empty, ready,
        [&]() -> std::chrono::nanoseconds {
            check_interrupt();
            check_closing();
            if (scan_due())
                scan(nullptr, nullptr);
            if (orphan_seen.load(std::memory_order_relaxed))
                return std::chrono::nanoseconds{0};
            return dl.slice();
        },
        spin_policy(dl));
    return ok ? WaitResult::Ready : WaitResult::Timeout;
}

} // namespace shmipc
