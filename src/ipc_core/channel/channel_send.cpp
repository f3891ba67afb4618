// Channels (channel.hpp): the sender's operations. Moving a block (with its metadata block) or a
// copy into the ring, small messages inline in the ring's side buffers, batches (send_many),
// waiting for room; a block stays the caller's on every failure.
#include "ipc_core/channel/channel_detail.hpp"

#include "ipc_core/base/bulk_copy.hpp"
#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace shmipc {

using channel_detail::endpoint_dead_at;

std::uint64_t Channel::stash_meta(std::string_view meta, const Deadline &deadline) {
    if (meta.size() > kMaxRecordMeta)
        throw InvalidArgument("record metadata of " + std::to_string(meta.size()) +
                              " bytes exceeds " + std::to_string(kMaxRecordMeta));
    const std::uint64_t off = heap_.allocate(sizeof(std::uint64_t) + meta.size(), deadline);
    auto *p = static_cast<std::byte *>(heap_.to_ptr(off));
    const std::uint64_t n = meta.size();
    std::memcpy(p, &n, sizeof n);
    std::memcpy(p + sizeof n, meta.data(), meta.size());
    return off;
}

void Channel::free_unsent(std::uint64_t off, const Deadline &deadline) noexcept {
    // Bounded like the send: with the heap lock held by a stopped process the block stays ours
    // (reclaimed with this client) rather than hanging the failed send.
    try {
        heap_.deallocate(off, deadline.expired() ? Deadline(0.05) : deadline);
    } catch (...) {
    }
}

bool Channel::wait_for_room(const Deadline &deadline) {
    if (producer_.writable())
        return true;
    bool peer_dead = false;
    // SYNC POINT: futex wait on not_full (wait_on): pairs with the receiver's wake after its
    // release store of tail; writable() re-reads tail (acquire, refresh_tail_has_room).
    const bool ok = wait_on(
        ctl_->ring.not_full, [&] { return producer_.writable(); }, ChannelRole::Receiver, deadline,
        peer_dead);
    if (!ok && (peer_dead || endpoint_dead_at(heap_, offset_, ctl_, ChannelRole::Receiver)))
        peer_died(ChannelRole::Receiver);
    return ok;
}

void Channel::check_stream_open() const {
    if (stream_ended())
        throw OsError(EPIPE, "channel '" + name_ + "' was closed by its sender");
}

bool Channel::push_record(const RingRecord &rec, const Deadline &deadline) {
    // Wait for room first, then hand the blocks to the heap, then publish: a sender killed
    // while it waits still owns its blocks (reclaimed with it), and nothing else can take the
    // room we saw (we are the only producer).
    if (!wait_for_room(deadline))
        return false;
    // SYNC POINT: release, pairs with the acq_rel exchange in free_inflight: whoever finds the
    // sender dead sees which blocks were on their way (killed between transfer and push).
    ctl_->inflight_block.store(rec.offset, std::memory_order_release);
    // SYNC POINT: release, as for inflight_block above (pairs with the acq_rel exchange in
    // free_inflight).
    ctl_->inflight_meta.store(rec.aux, std::memory_order_release);
    heap_.transfer(rec.offset, kOwnerHeld);
    if (rec.aux)
        heap_.transfer(rec.aux, kOwnerHeld);
    const bool pushed = producer_.try_push(rec);
    (void)pushed; // room was checked above and only this handle pushes
    ctl_->inflight_block.store(0, std::memory_order_relaxed);
    ctl_->inflight_meta.store(0, std::memory_order_relaxed);
    return true;
}

bool Channel::ready_to_send() {
    // SYNC POINT: mu_ (process-local mutex): a try never waits (another thread inside this handle:
    // not now).
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    return producer_.writable();
}

void Channel::wait_writable(const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread inside this handle at a
    // time.
    std::lock_guard g(mu_);
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    if (!wait_for_room(deadline))
        throw Timeout("channel '" + name_ + "' stayed full until the timeout");
}

void Channel::send_block_locked(std::uint64_t off, std::uint64_t len, RecordKind kind,
                                std::string_view meta, const Deadline &deadline) {
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    if (heap_.owner_of(off) != heap_.client_id())
        throw InvalidArgument("the block at offset " + std::to_string(off) +
                              " is not owned by this process (already sent or freed?)");
    if (len > heap_.block_capacity(off))
        throw InvalidArgument("length " + std::to_string(len) + " exceeds the block");
    const std::uint64_t meta_off = meta.empty() ? 0 : stash_meta(meta, deadline);
    try {
        if (!push_record(RingRecord{off, len, static_cast<std::uint64_t>(kind), meta_off},
                         deadline))
            throw Timeout("channel '" + name_ + "' stayed full until the timeout");
    } catch (...) {
        if (meta_off)
            free_unsent(meta_off, deadline);
        throw;
    }
}

void Channel::send_block(std::uint64_t off, std::uint64_t len, RecordKind kind,
                         std::string_view meta, const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread inside this handle at a
    // time.
    std::lock_guard g(mu_);
    send_block_locked(off, len, kind, meta, deadline);
}

bool Channel::try_send_block(std::uint64_t off, std::uint64_t len, RecordKind kind,
                             std::string_view meta) {
    // SYNC POINT: mu_ (process-local mutex): a try never waits (another thread inside this handle:
    // not now).
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false; // another thread is inside this handle
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    if (!producer_.writable())
        return false;
    try {
        send_block_locked(off, len, kind, meta, Deadline(0.0));
    } catch (const Timeout &) {
        // The heap lock (for the metadata) was busy: not a failure of a try, the caller waits.
        // The block is still ours, untouched.
        return false;
    }
    return true;
}

void Channel::push_inline(const void *data, std::size_t n) {
    // Only this handle pushes: head is ours to read relaxed; the release store of the push
    // publishes the bytes with the record.
    const std::uint64_t head = ctl_->ring.head.load(std::memory_order_relaxed);
    if (n)
        std::memcpy(inline_slot(head & geometry_.mask), data, n);
    const bool pushed =
        producer_.try_push(RingRecord{0, n, static_cast<std::uint64_t>(RecordKind::Inline), 0});
    (void)pushed; // room was checked by the caller
}

void Channel::send_bytes(const void *data, std::size_t n, RecordKind kind, std::string_view meta,
                         const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread inside this handle at a
    // time.
    std::lock_guard g(mu_);
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    if (fits_inline(n, meta)) {
        if (!wait_for_room(deadline))
            throw Timeout("channel '" + name_ + "' stayed full until the timeout");
        push_inline(data, n);
        return;
    }
    // The send's deadline bounds the heap lock waits too (a stopped lock holder is Timeout).
    const std::uint64_t off = heap_.allocate(std::max<std::size_t>(n, 1), deadline);
    try {
        if (n)
            bulk_copy(heap_.to_ptr(off), data, n);
        send_block_locked(off, n, kind, meta, deadline);
    } catch (...) {
        free_unsent(off, deadline);
        throw;
    }
}

bool Channel::try_send_bytes(const void *data, std::size_t n, RecordKind kind,
                             std::string_view meta) {
    // SYNC POINT: mu_ (process-local mutex): a try never waits (another thread inside this handle:
    // not now).
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    if (!producer_.writable())
        return false; // checked before the copy, not after
    if (fits_inline(n, meta)) {
        push_inline(data, n);
        return true;
    }
    // A try never waits, but a heap lock held for a moment by another process (a free, a
    // reap) is not a timeout of the caller's send: it is "not now", and the caller then takes
    // the blocking path with its own deadline.
    const Deadline now(0.0);
    std::uint64_t off = 0;
    try {
        off = heap_.allocate(std::max<std::size_t>(n, 1), now);
    } catch (const Timeout &) {
        return false;
    }
    try {
        if (n)
            bulk_copy(heap_.to_ptr(off), data, n);
        send_block_locked(off, n, kind, meta, now);
    } catch (const Timeout &) {
        free_unsent(off, now);
        return false;
    } catch (...) {
        free_unsent(off, now);
        throw;
    }
    return true;
}

std::size_t Channel::send_many(const std::vector<std::pair<const void *, std::size_t>> &msgs,
                               const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread inside this handle at a
    // time.
    std::lock_guard g(mu_);
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    constexpr std::size_t kBatch = 256;
    RingRecord recs[kBatch];
    std::size_t sent = 0;
    while (sent < msgs.size()) {
        std::uint64_t room = producer_.free_slots();
        if (room == 0) {
            if (!wait_for_room(deadline)) {
                if (sent)
                    return sent;
                throw Timeout("channel '" + name_ + "' stayed full until the timeout");
            }
            room = producer_.free_slots();
        }
        const std::size_t k = std::min<std::size_t>({kBatch, msgs.size() - sent, room});
        const std::uint64_t head = ctl_->ring.head.load(std::memory_order_relaxed);
        std::size_t built = 0;
        try {
            for (; built < k; ++built) {
                const auto &[p, n] = msgs[sent + built];
                if (n <= inline_bytes_) {
                    if (n)
                        std::memcpy(inline_slot((head + built) & geometry_.mask), p, n);
                    recs[built] =
                        RingRecord{0, n, static_cast<std::uint64_t>(RecordKind::Inline), 0};
                    continue;
                }
                const std::uint64_t off = heap_.allocate(std::max<std::size_t>(n, 1), deadline);
                if (n)
                    bulk_copy(heap_.to_ptr(off), p, n);
                heap_.transfer(off, kOwnerHeld);
                recs[built] = RingRecord{off, n, static_cast<std::uint64_t>(RecordKind::Block), 0};
            }
        } catch (...) {
            for (std::size_t i = 0; i < built; ++i)
                if (recs[i].offset)
                    free_unsent(recs[i].offset, deadline);
            throw;
        }
        const std::size_t pushed = producer_.try_push_many(recs, k);
        (void)pushed; // == k: room was measured above and only this handle pushes
        sent += k;
    }
    return sent;
}

} // namespace shmipc
