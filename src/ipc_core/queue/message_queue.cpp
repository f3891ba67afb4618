// Message queues (message_queue.hpp): creating a queue (its layout written) and attaching to
// one (its sizes validated once, kept privately), and the MessageQueue API over
// MessageQueue::Impl (message_queue_impl.hpp).
#include "ipc_core/queue/message_queue_impl.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <algorithm>
#include <cerrno>
#include <memory>
#include <new>
#include <string>
#include <utility>

namespace shmipc {

using namespace queue_detail; // the slot state word, layout offsets, spin policy

// ---- public API -------------------------------------------------------------------------------

namespace {
void check_sizes(std::size_t capacity, std::size_t max_message_size) {
    if (capacity < 1 || capacity > kQueueMaxCapacity)
        throw InvalidArgument("maxsize must be between 1 and " + std::to_string(kQueueMaxCapacity) +
                              ", got " + std::to_string(capacity));
    if (max_message_size < 1 || max_message_size > kQueueMaxMessageSize)
        throw InvalidArgument("max_message_size must be between 1 and " +
                              std::to_string(kQueueMaxMessageSize) + " bytes, got " +
                              std::to_string(max_message_size));
}

// Geometry comes from the caller (validated, private), never re-read from shared memory.
std::unique_ptr<MessageQueue::Impl> finish(MemorySegment seg, std::uint64_t cap,
                                           std::uint64_t max_msg) {
    auto impl = std::make_unique<MessageQueue::Impl>();
    auto *base = seg.data();
    impl->ctl = reinterpret_cast<QueueControl *>(base + kControlOffset);
    impl->slots = base + kSlotsOffset;
    impl->cap = cap;
    impl->max_msg = max_msg;
    impl->stride = stride_for(max_msg);
    impl->lock_fd = UniqueFd(reopen_description(seg.fd()));
    renew_in_fork_children(impl->lock_fd.get());
    impl->clients =
        ClientTable(base + kClientsOffset, seg.size() - kClientsOffset, kQueueMaxClients,
                    impl->lock_fd.get(), "message queue '" + seg.name() + "'");
    impl->seg = std::move(seg);
    impl->ensure_registered();
    return impl;
}
} // namespace

MessageQueue MessageQueue::create(std::string_view name, std::size_t capacity,
                                  std::size_t max_message_size, mode_t mode, bool persistent) {
    check_sizes(capacity, max_message_size);
    std::size_t stride = stride_for(max_message_size);
    std::size_t total = kSlotsOffset + capacity * stride;
    auto seg =
        MemorySegment::create_named(name, total, mode, SegmentKind::MessageQueue,
                                    kMessageQueueLayoutVersion, persistent, [&](std::byte *base) {
                                        // The file is zero-filled, which is already "every slot
                                        // EMPTY for lap 0" and head == tail == 0: only the sizes
                                        // need writing (no page of the slots is touched).
                                        auto *ctl = new (base + kControlOffset) QueueControl{};
                                        ctl->capacity = capacity;
                                        ctl->max_message_size = max_message_size;
                                        ctl->slot_stride = stride;
                                        ctl->slots_offset = kSlotsOffset;
                                        ctl->max_clients = kQueueMaxClients;
                                        ClientTable::init(base + kClientsOffset, kQueueMaxClients);
                                    });
    MessageQueue q;
    q.impl_ = finish(std::move(seg), capacity, max_message_size);
    return q;
}

MessageQueue MessageQueue::attach(std::string_view name, const TrustPolicy &trust) {
    auto seg = MemorySegment::attach_named(name, SegmentKind::MessageQueue,
                                           kMessageQueueLayoutVersion, kSlotsOffset, trust);
    if (!seg.writable())
        throw OsError(EACCES, "message queue '" + seg.name() + "' is not writable by us");
    const auto *ctl = reinterpret_cast<const QueueControl *>(seg.data() + kControlOffset);
    const std::string what = "'" + seg.name() + "' is not a valid message queue: ";
    std::uint64_t cap = ctl->capacity, max = ctl->max_message_size;
    if (cap < 1 || cap > kQueueMaxCapacity)
        throw CorruptSegment(what + "bad capacity");
    if (max < 1 || max > kQueueMaxMessageSize)
        throw CorruptSegment(what + "bad max_message_size");
    if (ctl->slot_stride != stride_for(max) || ctl->slots_offset != kSlotsOffset)
        throw CorruptSegment(what + "bad slot layout");
    if (ctl->max_clients != kQueueMaxClients)
        throw CorruptSegment(what + "bad client table");
    if (seg.size() != kSlotsOffset + cap * ctl->slot_stride)
        throw CorruptSegment(what + "size does not match its slots");
    MessageQueue q;
    q.impl_ = finish(std::move(seg), cap, max);
    return q;
}

MessageQueue::MessageQueue() = default;
MessageQueue::MessageQueue(MessageQueue &&) noexcept = default;
MessageQueue &MessageQueue::operator=(MessageQueue &&) noexcept = default;
MessageQueue::~MessageQueue() = default;

namespace {
MessageQueue::Impl &open_impl(const std::unique_ptr<MessageQueue::Impl> &p) {
    if (!p)
        throw Closed("MessageQueue is closed");
    return *p;
}
} // namespace

bool MessageQueue::try_put(const void *data, std::size_t n) {
    return open_impl(impl_).try_put(data, n);
}
bool MessageQueue::try_get(Sink sink, void *ctx) {
    return open_impl(impl_).try_get(sink, ctx);
}

MessageQueue::WaitResult MessageQueue::wait_put_ready(const Deadline &deadline) {
    return open_impl(impl_).wait_put_ready(deadline);
}
MessageQueue::WaitResult MessageQueue::wait_get_ready(const Deadline &deadline) {
    return open_impl(impl_).wait_get_ready(deadline);
}

FutexWord &MessageQueue::get_word() {
    return open_impl(impl_).ctl->not_empty;
}
FutexWord &MessageQueue::put_word() {
    return open_impl(impl_).ctl->not_full;
}

bool MessageQueue::put(const void *data, std::size_t n, const Deadline &deadline) {
    auto &q = open_impl(impl_);
    for (;;) {
        if (q.try_put(data, n))
            return true;
        if (q.wait_put_ready(deadline) == WaitResult::Timeout)
            return q.try_put(data, n);
    }
}

bool MessageQueue::get(Sink sink, void *ctx, const Deadline &deadline) {
    auto &q = open_impl(impl_);
    for (;;) {
        if (q.try_get(sink, ctx))
            return true;
        if (q.wait_get_ready(deadline) == WaitResult::Timeout) {
            q.scan(sink, ctx); // a last look for a dead consumer's message before giving up
            return q.try_get(sink, ctx);
        }
    }
}

std::size_t MessageQueue::size() const noexcept {
    if (!impl_)
        return 0;
    // head first: a tail read after it is never older, so tail - head is not inflated by a
    // race (it can be negative after discards: then 0).
    // SYNC POINT: acquire of head, then of tail: each pairs with the acq_rel CAS that advanced it
    // (help_advance); the two acquires keep the tail load from being reordered before the head
    // load.
    std::uint64_t head = impl_->ctl->head.load(std::memory_order_acquire);
    std::uint64_t tail = impl_->ctl->tail.load(std::memory_order_acquire);
    auto d = static_cast<std::int64_t>(tail - head);
    if (d <= 0)
        return 0;
    return std::min<std::size_t>(static_cast<std::size_t>(d), impl_->cap);
}

std::size_t MessageQueue::capacity() const noexcept {
    return impl_ ? impl_->cap : 0;
}
std::size_t MessageQueue::max_message_size() const noexcept {
    return impl_ ? impl_->max_msg : 0;
}
const std::string &MessageQueue::name() const noexcept {
    static const std::string empty;
    return impl_ ? impl_->seg.name() : empty;
}
bool MessageQueue::owner() const noexcept {
    return impl_ && impl_->seg.owner();
}
std::uint32_t MessageQueue::client_index() const noexcept {
    return impl_ ? impl_->me : kNoClient;
}

std::size_t MessageQueue::recover(Sink sink, void *ctx) {
    auto &q = open_impl(impl_);
    q.ensure_registered();
    auto r = q.scan(sink, ctx);
    return r.discarded + (r.delivered ? 1 : 0);
}

void MessageQueue::close() noexcept {
    impl_.reset();
}

void MessageQueue::request_close() noexcept {
    if (!impl_)
        return;
    impl_->closing.store(true, std::memory_order_relaxed);
    // Wakes every sleeper on the queue's words (in other processes too: they re-check and sleep
    // again), so this handle's waiters see the flag now rather than at their next slice.
    // SYNC POINT: futex wakes of both words after closing is set: pair with the waits in
    // wait_put_ready/wait_get_ready (spin_then_wait), which check closing between slices.
    notify_all(impl_->ctl->not_empty);
    notify_all(impl_->ctl->not_full);
}

} // namespace shmipc
