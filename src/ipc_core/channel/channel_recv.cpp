// Channels (channel.hpp): the receiver's operations. Waiting for a record, taking a block record
// (ownership moved to this client, its metadata read and freed), copying inline records out,
// batches (recv_many), poll; what can fail for lack of resources happens before the pop.
#include "ipc_core/channel/channel_detail.hpp"

#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>

namespace shmipc {

using channel_detail::endpoint_dead_at;

bool Channel::ready_to_recv() {
    // SYNC POINT: mu_ (process-local mutex): a try never waits (another thread inside this handle:
    // not now).
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role(ChannelRole::Receiver);
    return consumer_.readable() || consumer_.closed_and_empty();
}

void Channel::wait_readable(const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread inside this handle at a
    // time.
    std::lock_guard g(mu_);
    ensure_role(ChannelRole::Receiver);
    wait_for_record(deadline);
}

void Channel::wait_for_record(const Deadline &deadline) {
    if (consumer_.readable())
        return;
    bool peer_dead = false;
    // SYNC POINT: futex wait on not_empty (wait_on): pairs with the sender's wake after its release
    // store of head (or of closed in close()); the predicate re-reads them (acquire).
    const bool ok = wait_on(
        ctl_->ring.not_empty, [&] { return consumer_.readable() || consumer_.closed_and_empty(); },
        ChannelRole::Sender, deadline, peer_dead);
    if (ok && consumer_.readable())
        return;
    if (consumer_.closed_and_empty())
        throw EndOfStream("channel '" + name_ + "' was closed by its sender");
    // A zero (or already expired) deadline never reached a liveness slice: a dead sender is
    // still reported as such, not as a timeout (wait()/ready_fd() call the channel ready then).
    if (peer_dead || endpoint_dead_at(heap_, offset_, ctl_, ChannelRole::Sender))
        peer_died(ChannelRole::Sender);
    throw Timeout("nothing arrived on channel '" + name_ + "' before the timeout");
}

ChannelMessage Channel::take(const RingRecord &rec) {
    // The record left the ring already (a receiver killed right here leaks only this block, as
    // kOwnerHeld; taking it before the pop would let a reaper free a block still in the ring).
    ChannelMessage m;
    m.offset = rec.offset;
    m.length = rec.length;
    m.kind = static_cast<RecordKind>(rec.tag);
    // A sender killed right after its push never cleared these: the block is delivered, not
    // in flight.
    std::uint64_t x = rec.offset;
    // SYNC POINT: acq_rel CASes, pair with the release stores in push_record and the acq_rel
    // exchanges in free_inflight: a delivered block is never also freed as in flight.
    ctl_->inflight_block.compare_exchange_strong(x, 0, std::memory_order_acq_rel);
    x = rec.aux;
    if (x)
        ctl_->inflight_meta.compare_exchange_strong(x, 0, std::memory_order_acq_rel);
    try {
        if (!heap_.try_transfer(rec.offset, kOwnerHeld, heap_.client_id()))
            throw CorruptSegment("channel '" + name_ + "' delivered a block it did not hold");
        if (rec.length > heap_.block_capacity(rec.offset))
            throw CorruptSegment("channel '" + name_ +
                                 "' delivered a record longer than its block");
        if (rec.aux) {
            if (!heap_.try_transfer(rec.aux, kOwnerHeld, heap_.client_id()))
                throw CorruptSegment("channel '" + name_ + "' has a bad metadata block");
            auto *p = static_cast<const std::byte *>(heap_.to_ptr(rec.aux));
            std::uint64_t n = 0;
            std::memcpy(&n, p, sizeof n);
            const std::size_t cap = heap_.block_capacity(rec.aux);
            if (n > kMaxRecordMeta || n + sizeof n > cap) {
                heap_.deallocate(rec.aux);
                throw CorruptSegment("channel '" + name_ + "' has a bad metadata block");
            }
            m.meta.assign(reinterpret_cast<const char *>(p + sizeof n), n);
            heap_.deallocate(rec.aux);
        }
    } catch (const InvalidArgument &e) {
        throw CorruptSegment("channel '" + name_ + "' delivered a bad record: " + e.what());
    }
    return m;
}

ChannelMessage Channel::recv(const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread inside this handle at a
    // time.
    std::lock_guard g(mu_);
    ensure_role(ChannelRole::Receiver);
    wait_for_record(deadline);
    // What can fail for lack of resources (mapping a segment the sender's side grew: EMFILE)
    // happens before the pop, so a failed receive leaves the record queued.
    heap_.map_all_segments();
    const RingRecord *f = consumer_.front(); // non-null: wait_for_record saw it, only we pop
    if (f->tag == static_cast<std::uint64_t>(RecordKind::Inline))
        return take_inline();
    const RingRecord rec = *f;
    consumer_.pop();
    return take(rec);
}

ChannelMessage Channel::take_inline() {
    const std::uint64_t n = consumer_.peek(0).length;
    if (n > inline_bytes_) {
        consumer_.pop();
        throw CorruptSegment("channel '" + name_ + "' has an inline record longer than its slot");
    }
    // Allocate before the pop: out of memory leaves the record queued.
    const std::uint64_t off = heap_.allocate(std::max<std::uint64_t>(n, 1));
    if (n)
        std::memcpy(heap_.to_ptr(off), inline_slot(consumer_.peek_slot(0)), n);
    consumer_.pop();
    ChannelMessage m;
    m.offset = off;
    m.length = n;
    m.kind = RecordKind::Block;
    return m;
}

std::optional<ChannelMessage> Channel::try_recv() {
    // SYNC POINT: mu_ (process-local mutex): a try never waits (another thread inside this handle:
    // not now).
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return std::nullopt; // another thread is inside this handle
    ensure_role(ChannelRole::Receiver);
    heap_.map_all_segments(); // before the pop (see recv)
    // One look at the front: a record that arrives after it is left for the next call (looking
    // twice could see an inline record the first look missed and take it as a block record).
    const RingRecord *f = consumer_.front();
    if (f == nullptr) {
        if (consumer_.closed_and_empty())
            throw EndOfStream("channel '" + name_ + "' was closed by its sender");
        return std::nullopt;
    }
    if (f->tag == static_cast<std::uint64_t>(RecordKind::Inline))
        return take_inline();
    const RingRecord rec = *f;
    consumer_.pop();
    return take(rec);
}

std::size_t Channel::recv_many_impl(std::size_t max, const Deadline *deadline, SinkFn fn,
                                    void *ctx) {
    // SYNC POINT: mu_ (process-local mutex): locked (with a deadline) or tried (without) just
    // below.
    std::unique_lock g(mu_, std::defer_lock);
    if (deadline) {
        g.lock();
    } else if (!g.try_lock()) {
        return 0; // another thread is inside this handle
    }
    ensure_role(ChannelRole::Receiver);
    if (max == 0)
        return 0;
    if (deadline) {
        wait_for_record(*deadline);
    } else if (!consumer_.readable()) {
        if (consumer_.closed_and_empty())
            throw EndOfStream("channel '" + name_ + "' was closed by its sender");
        return 0;
    }
    heap_.map_all_segments(); // before any pop (see recv)
    constexpr std::size_t kBatch = 256;
    std::size_t done = 0;
    while (done < max) {
        // Inline records are read in place (straight from the ring) and popped together after
        // them: the producer reuses none of their slots before we are done. A block record is
        // popped first and taken after, as recv() does.
        const std::size_t k = consumer_.peek_count(std::min(kBatch, max - done));
        if (k == 0)
            break;
        std::size_t i = 0;
        RingRecord rec{};
        try {
            for (; i < k; ++i) {
                rec = consumer_.peek(i);
                if (rec.tag != static_cast<std::uint64_t>(RecordKind::Inline))
                    break;
                if (rec.length > inline_bytes_)
                    throw CorruptSegment("channel '" + name_ +
                                         "' has an inline record longer than its slot");
                fn(ctx, inline_slot(consumer_.peek_slot(i)), static_cast<std::size_t>(rec.length));
            }
        } catch (...) {
            consumer_.pop_n(i + 1); // the failed record is consumed; the rest stay queued
            throw;
        }
        if (i == k) {
            consumer_.pop_n(k);
            done += k;
            continue;
        }
        consumer_.pop_n(i + 1); // the inline ones before it, and the block record itself
        done += i + 1;
        ChannelMessage m = take(rec);
        try {
            fn(ctx, heap_.to_ptr(m.offset), m.length);
        } catch (...) {
            heap_.deallocate(m.offset);
            throw;
        }
        heap_.deallocate(m.offset);
    }
    return done;
}

bool Channel::poll(const Deadline &deadline) {
    check_open();
    auto ready = [&] { return ctl_->ring.size_approx() > 0 || stream_ended(); };
    if (ready())
        return true;
    bool peer_dead = false;
    // SYNC POINT: futex wait on not_empty (wait_on): pairs with the sender's wakes after its
    // release stores of head and closed; ready() re-reads them (acquire, size_approx/stream_ended).
    const bool ok = wait_on(ctl_->ring.not_empty, ready, ChannelRole::Sender, deadline, peer_dead);
    return ok || peer_dead;
}

} // namespace shmipc
