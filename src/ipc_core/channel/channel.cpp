#include "ipc_core/channel/channel.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <pthread.h>
#include <set>
#include <stdexcept>
#include <system_error>
#include <tuple>
#include <unistd.h>

namespace shmipc {

namespace {

// Endpoints held by this process, keyed by (pid, heap handle, channel offset, role). OFD locks
// taken through one open file description never conflict with each other, so a second handle of
// the same process and heap handle is caught here instead. The pid keeps a forked child from
// trusting the entries it inherited from its parent.
using RegistryKey = std::tuple<pid_t, const Heap *, std::uint64_t, int>;
std::mutex g_registry_mu;
std::set<RegistryKey> &registry() {
    static std::set<RegistryKey> r;
    return r;
}
RegistryKey key_of(const Heap &h, std::uint64_t off, ChannelRole r) {
    return {::getpid(), &h, off, static_cast<int>(r)};
}

std::atomic<std::uint32_t> g_token_serial{0};

// The claim token of an endpoint that went away without ending the stream (a real token is
// pid << 32 | serial, never 1).
constexpr std::uint64_t kDepartedToken = 1;

std::uint64_t make_token() {
    // pid for diagnostics, a serial so two claims in one process differ; never 0.
    std::uint32_t serial = g_token_serial.fetch_add(1, std::memory_order_relaxed) + 1;
    return (std::uint64_t(std::uint32_t(::getpid())) << 32) | serial;
}

const char *role_name(ChannelRole r) {
    return r == ChannelRole::Sender ? "sender" : "receiver";
}

std::atomic<std::uint64_t> &token_word(ChannelControl *c, ChannelRole r) {
    return r == ChannelRole::Sender ? c->sender : c->receiver;
}

std::uint64_t lock_index_for(std::uint64_t off);

// The liveness byte of an endpoint, derived from the channel's offset (never from the shared
// lock_index, which a peer could scribble over).
off_t lock_byte(std::uint64_t offset, ChannelRole r) {
    return kUserLockBase + off_t(2 * lock_index_for(offset)) + off_t(static_cast<int>(r));
}

// Spreads (segment, byte offset) over the user lock range. Two channels collide only if their
// offsets agree modulo 32 GiB after mixing in the segment index: not in heaps of realistic size.
std::uint64_t lock_index_for(std::uint64_t off) {
    const std::uint64_t seg = off >> kSegmentShift;
    const std::uint64_t unit = (off & kSegmentOffsetMask) / kHeapUnit;
    return (unit + seg * 0x9E3779B1ULL) % std::uint64_t(kUserLockSpan / 2);
}

std::uint32_t inline_bytes_for(std::uint64_t capacity) {
    return std::bit_ceil(capacity) <= kMaxInlineSlots ? kInlineSlotBytes : 0;
}

// Bytes from the control block to the inline buffers.
std::size_t inline_offset(std::uint64_t capacity) {
    return sizeof(ChannelControl) - sizeof(SpscRingControl) + spsc_ring_bytes(capacity);
}

std::size_t control_bytes(std::uint64_t capacity) {
    return inline_offset(capacity) + std::bit_ceil(capacity) * inline_bytes_for(capacity);
}

ChannelControl *validate_control(void *p, std::size_t avail, std::string_view name) {
    auto *c = static_cast<ChannelControl *>(p);
    if (avail < sizeof(ChannelControl) || c->magic != kChannelMagic ||
        c->layout_version != kChannelLayoutVersion)
        throw CorruptSegment("channel '" + std::string(name) + "' has a corrupt control block");
    spsc_ring_validate(&c->ring, avail - (sizeof(ChannelControl) - sizeof(SpscRingControl)));
    const std::uint64_t cap = c->ring.capacity;
    if (c->inline_bytes != inline_bytes_for(cap) || control_bytes(cap) > avail)
        throw CorruptSegment("channel '" + std::string(name) + "' has a corrupt inline area");
    return c;
}

bool endpoint_alive_at(Heap &heap, std::uint64_t offset, ChannelControl *c, ChannelRole r) {
    if (token_word(c, r).load(std::memory_order_acquire) == 0)
        return false;
    {
        std::lock_guard g(g_registry_mu);
        if (registry().count(key_of(heap, offset, r)))
            return true;
    }
    return byte_is_locked(heap.lock_fd(), lock_byte(offset, r));
}

// A claimed endpoint whose process is gone: token set, lock byte free.
bool endpoint_dead_at(Heap &heap, std::uint64_t offset, ChannelControl *c, ChannelRole r) {
    if (token_word(c, r).load(std::memory_order_acquire) == 0)
        return false;
    return !endpoint_alive_at(heap, offset, c, r);
}

// Pure spinning before a channel wait starts yielding the core between checks.
constexpr std::chrono::microseconds kYieldAfter{1};

// The channel's `spin` setting as a policy; a wait never spins past its deadline.
SpinPolicy spin_policy(std::chrono::nanoseconds spin, const Deadline &d) {
    spin = std::min(spin, d.remaining());
    std::chrono::nanoseconds pure = std::min<std::chrono::nanoseconds>(spin, kYieldAfter);
    return SpinPolicy{pure, spin - pure};
}

} // namespace

std::unique_ptr<Channel> Channel::open(Heap &heap, std::string_view name, std::uint64_t capacity) {
    if (name.empty() || name.size() > kMaxNamedLength)
        throw InvalidArgument("a channel name is 1.." + std::to_string(kMaxNamedLength) +
                              " bytes, got " + std::to_string(name.size()));
    const std::size_t bytes = control_bytes(capacity); // validates capacity
    auto existing = [&]() -> std::optional<NamedInfo> {
        auto info = heap.find_named(name);
        if (info && info->kind != kNamedChannel)
            throw InvalidArgument("'" + std::string(name) +
                                  "' names another kind of object in this heap, not a channel");
        return info;
    };
    std::uint64_t off = 0;
    if (auto info = existing()) {
        off = info->offset;
    } else {
        try {
            off = heap.find_or_create_named(
                          name, bytes,
                          [&](void *p) {
                              std::memset(p, 0, sizeof(ChannelControl) - sizeof(SpscRingControl));
                              auto *c = static_cast<ChannelControl *>(p);
                              c->magic = kChannelMagic;
                              c->layout_version = kChannelLayoutVersion;
                              c->lock_index = lock_index_for(heap.to_offset(p));
                              c->inline_bytes = inline_bytes_for(capacity);
                              spsc_ring_init(&c->ring, capacity);
                          },
                          kNamedChannel)
                      .first;
        } catch (const InvalidArgument &) {
            // Another process created it first with a smaller capacity: use theirs.
            auto theirs = existing();
            if (!theirs)
                throw;
            off = theirs->offset;
        }
    }
    auto *ctl = validate_control(heap.to_ptr(off), heap.block_capacity(off), name);
    return std::unique_ptr<Channel>(new Channel(heap, std::string(name), off, ctl));
}

Channel::Channel(Heap &heap, std::string name, std::uint64_t offset, ChannelControl *ctl)
    : heap_(heap), name_(std::move(name)), offset_(offset), ctl_(ctl),
      geometry_(spsc_ring_geometry(&ctl->ring)),
      inline_(reinterpret_cast<std::byte *>(ctl) + inline_offset(geometry_.capacity)),
      inline_bytes_(inline_bytes_for(geometry_.capacity)) {}

Channel::~Channel() {
    // Dropped without close(): like a process that exits without closing its end of a pipe.
    release(/*departed=*/true);
}

void Channel::check_open() const {
    if (closed_)
        throw Closed("channel '" + name_ + "' is closed");
}

void Channel::claim(ChannelRole role) {
    std::lock_guard g(g_registry_mu);
    const RegistryKey key = key_of(heap_, offset_, role);
    if (registry().count(key))
        throw ChannelBusy("channel '" + name_ + "' already has a live " + role_name(role) +
                          " in this process");
    // A heap handle copied by fork() becomes this process's own (new client, new open file
    // description) before we take a lock byte on its fd; no heap lock (a stopped holder must
    // not block a claim).
    heap_.own_process();
    const int fd = heap_.lock_fd();
    const off_t byte = lock_byte(offset_, role);
    if (!try_lock_byte(fd, byte, /*exclusive=*/true))
        throw ChannelBusy("channel '" + name_ + "' already has a live " + role_name(role) +
                          " in another process");
    // We hold the lock: any token still published belongs to a dead or departed endpoint.
    auto &word = token_word(ctl_, role);
    std::uint64_t old = word.load(std::memory_order_acquire);
    const std::uint64_t token = make_token();
    // SYNC POINT: pairs with the token loads in endpoint_alive_at of the peer.
    if (!word.compare_exchange_strong(old, token, std::memory_order_acq_rel)) {
        unlock_byte(fd, byte);
        throw ChannelBusy("channel '" + name_ + "': the " + role_name(role) +
                          " endpoint was claimed concurrently");
    }
    registry().insert(key);
    role_ = role;
    token_ = token;
    role_stamp_.renew();
    if (role == ChannelRole::Sender)
        producer_ = SpscProducer(&ctl_->ring, geometry_);
    else
        consumer_ = SpscConsumer(&ctl_->ring, geometry_);
}

void Channel::forget_role_after_fork() noexcept {
    // A role claimed before fork() belongs to the parent, never to the copy of the handle in the
    // child (which would otherwise push into the parent's ring too).
    if (role_ != ChannelRole::None && role_stamp_.inherited()) {
        // The parent still holds the role (its lock, its token): forget it here, touch nothing.
        role_ = ChannelRole::None;
        token_ = 0;
    }
}

void Channel::ensure_role(ChannelRole role) {
    check_open();
    heap_.check_intact(); // a shrunk heap file: CorruptSegment, not messages lost in private pages
    forget_role_after_fork();
    if (role_ == role)
        return;
    if (role_ != ChannelRole::None)
        throw InvalidArgument("this handle is the " + std::string(role_name(role_)) +
                              " of channel '" + name_ + "'; open another handle to " +
                              (role == ChannelRole::Sender ? "send" : "receive"));
    claim(role);
}

void Channel::release(bool departed) {
    std::lock_guard g(g_registry_mu);
    forget_role_after_fork();
    if (role_ == ChannelRole::None)
        return;
    // Before unlocking: token 0 says "left cleanly, another endpoint may come" (an explicit
    // hand-over); kDepartedToken says "gone without ending the stream", which the peer treats
    // like a death (channels end like pipes). A peer that sees the lock free with our real token
    // still set would think we died, which is also right for the departed case.
    std::uint64_t mine = token_;
    token_word(ctl_, role_)
        .compare_exchange_strong(mine, departed ? kDepartedToken : 0, std::memory_order_acq_rel);
    unlock_byte(heap_.lock_fd(), lock_byte(offset_, role_));
    registry().erase(key_of(heap_, offset_, role_));
    role_ = ChannelRole::None;
    token_ = 0;
}

void Channel::abandon() noexcept {
    std::lock_guard g(g_registry_mu);
    if (role_ != ChannelRole::None)
        registry().erase(key_of(heap_, offset_, role_));
    role_ = ChannelRole::None;
    closed_ = true;
}

void Channel::close() {
    // Another thread may sleep inside this handle: make it leave (it checks closing_ between
    // slices; the wake-ups cut its current slice short), then take the handle.
    closing_.store(true, std::memory_order_relaxed);
    notify_all(ctl_->ring.not_empty);
    notify_all(ctl_->ring.not_full);
    std::lock_guard g(mu_);
    if (closed_)
        return;
    // The sender's close ends the stream (the receiver drains, then EOF); a receiver's close
    // means nobody reads any more: a sender blocked on a full ring gets PeerDied.
    const bool sender = role_ == ChannelRole::Sender;
    if (sender)
        producer_.close();
    release(/*departed=*/!sender);
    closed_ = true;
}

void Channel::abort() {
    closing_.store(true, std::memory_order_relaxed);
    notify_all(ctl_->ring.not_empty);
    notify_all(ctl_->ring.not_full);
    std::lock_guard g(mu_);
    if (closed_)
        return;
    // No end-of-stream mark: the peer drains what was sent, then gets PeerDied, as if we died.
    release(/*departed=*/true);
    notify_all(ctl_->ring.not_empty);
    notify_all(ctl_->ring.not_full);
    closed_ = true;
}

bool Channel::endpoint_alive(ChannelRole role) const {
    return endpoint_alive_at(heap_, offset_, ctl_, role);
}

bool Channel::peer_dead(ChannelRole role) const {
    return endpoint_dead_at(heap_, offset_, ctl_, role);
}

void Channel::check_peer() {
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g || closed_)
        return;
    if (role_ == ChannelRole::Receiver) {
        if (!consumer_.readable() && !consumer_.closed_and_empty() &&
            endpoint_dead_at(heap_, offset_, ctl_, ChannelRole::Sender))
            peer_died(ChannelRole::Sender);
    } else if (role_ == ChannelRole::Sender) {
        if (!producer_.writable() && endpoint_dead_at(heap_, offset_, ctl_, ChannelRole::Receiver))
            peer_died(ChannelRole::Receiver);
    }
}

void Channel::peer_died(ChannelRole peer) {
    // Free what the dead process held (blocks it had received, its caches); best effort.
    try {
        (void)heap_.reap_dead_clients(Deadline(1.0)); // bounded: the lock may be held
        if (peer == ChannelRole::Sender)
            free_inflight();
    } catch (...) {
    }
    throw PeerDied("the " + std::string(role_name(peer)) + " of channel '" + name_ +
                   "' is gone (it died or left without closing the stream)");
}

void Channel::free_inflight() {
    // Called by the receiver once the ring is drained and the sender is gone: a block the sender
    // handed to the heap but never pushed is still named here, held by nobody. (A pushed one was
    // cleared when we popped it.) Only a block still held by the heap is ours to free.
    for (auto *w : {&ctl_->inflight_block, &ctl_->inflight_meta}) {
        std::uint64_t off = w->exchange(0, std::memory_order_acq_rel);
        if (off && heap_.try_transfer(off, kOwnerHeld, heap_.client_id()))
            heap_.deallocate(off, Deadline(1.0)); // ours now: at worst kept until we exit
    }
}

template <class Ready>
bool Channel::wait_on(FutexWord &w, Ready &&ready, ChannelRole peer, const Deadline &deadline,
                      bool &peer_dead) {
    bool first = true;
    return spin_then_wait(
        w, ready,
        [&] {
            auto s = between_slices(peer, deadline, first);
            first = false;
            if (s.count() < 0) {
                peer_dead = true;
                return std::chrono::nanoseconds{0};
            }
            return s;
        },
        spin_policy(spin(), deadline));
}

std::chrono::nanoseconds Channel::between_slices(ChannelRole peer, const Deadline &deadline,
                                                 bool first) {
    if (deadline.expired())
        return std::chrono::nanoseconds{0};
    // Before the first sleep only the deadline matters: a wake-up usually ends the wait, and the
    // GIL round trip of check_interrupt plus the fcntl of the liveness test would add microseconds
    // to every blocking hand-off. A signal interrupts the futex sleep, so Ctrl-C and a dead peer
    // are still seen within one slice.
    if (first)
        return deadline.slice();
    check_interrupt();
    if (closing_.load(std::memory_order_relaxed))
        throw Closed("channel '" + name_ + "' was closed while waiting");
    if (endpoint_dead_at(heap_, offset_, ctl_, peer))
        return std::chrono::nanoseconds{-1};
    return deadline.slice();
}

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
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    return producer_.writable();
}

void Channel::wait_writable(const Deadline &deadline) {
    std::lock_guard g(mu_);
    ensure_role(ChannelRole::Sender);
    check_stream_open();
    if (!wait_for_room(deadline))
        throw Timeout("channel '" + name_ + "' stayed full until the timeout");
}

bool Channel::ready_to_recv() {
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role(ChannelRole::Receiver);
    return consumer_.readable() || consumer_.closed_and_empty();
}

void Channel::wait_readable(const Deadline &deadline) {
    std::lock_guard g(mu_);
    ensure_role(ChannelRole::Receiver);
    wait_for_record(deadline);
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
    std::lock_guard g(mu_);
    send_block_locked(off, len, kind, meta, deadline);
}

bool Channel::try_send_block(std::uint64_t off, std::uint64_t len, RecordKind kind,
                             std::string_view meta) {
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
            std::memcpy(heap_.to_ptr(off), data, n);
        send_block_locked(off, n, kind, meta, deadline);
    } catch (...) {
        free_unsent(off, deadline);
        throw;
    }
}

bool Channel::try_send_bytes(const void *data, std::size_t n, RecordKind kind,
                             std::string_view meta) {
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
            std::memcpy(heap_.to_ptr(off), data, n);
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
                    std::memcpy(heap_.to_ptr(off), p, n);
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

void Channel::wait_for_record(const Deadline &deadline) {
    if (consumer_.readable())
        return;
    bool peer_dead = false;
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
    const bool ok = wait_on(ctl_->ring.not_empty, ready, ChannelRole::Sender, deadline, peer_dead);
    return ok || peer_dead;
}

std::vector<ChannelInfo> Channel::list(Heap &heap) {
    std::vector<ChannelInfo> out;
    for (const NamedInfo &n : heap.list_named(kNamedChannel)) {
        ChannelControl *c = nullptr;
        try {
            c = validate_control(heap.to_ptr(n.offset), heap.block_capacity(n.offset), n.name);
        } catch (const std::exception &) {
            continue; // not ours to report: a corrupt entry is an error for whoever opens it
        }
        ChannelInfo info;
        info.name = n.name;
        info.capacity = c->ring.capacity;
        info.queued = std::min<std::uint64_t>(c->ring.size_approx(), info.capacity);
        info.sender_alive = endpoint_alive_at(heap, n.offset, c, ChannelRole::Sender);
        info.receiver_alive = endpoint_alive_at(heap, n.offset, c, ChannelRole::Receiver);
        info.closed = c->ring.closed.load(std::memory_order_acquire) != 0;
        out.push_back(std::move(info));
    }
    return out;
}

bool Channel::remove(Heap &heap, std::string_view name, const Deadline &deadline) {
    auto info = heap.find_named(name);
    if (!info)
        return false;
    if (info->kind != kNamedChannel)
        throw InvalidArgument("'" + std::string(name) + "' is not a channel");
    ChannelControl *c =
        validate_control(heap.to_ptr(info->offset), heap.block_capacity(info->offset), name);
    for (ChannelRole r : {ChannelRole::Sender, ChannelRole::Receiver})
        if (endpoint_alive_at(heap, info->offset, c, r))
            throw ChannelBusy("channel '" + std::string(name) + "' still has a live " +
                              role_name(r) + " (close it first)");
    auto free_held = [&](std::uint64_t off) {
        try {
            if (off && heap.try_transfer(off, kOwnerHeld, heap.client_id()))
                heap.deallocate(off);
        } catch (const InvalidArgument &) {
            // not a live block (scribbled record): nothing to free
        }
    };
    const RingGeometry g = spsc_ring_geometry(&c->ring);
    SpscConsumer consumer(&c->ring, g);
    RingRecord rec{};
    for (std::uint64_t n = 0; n < g.capacity && consumer.try_pop(rec); ++n) {
        free_held(rec.offset);
        free_held(rec.aux);
    }
    free_held(c->inflight_block.exchange(0));
    free_held(c->inflight_meta.exchange(0));
    return heap.remove_named(name, deadline);
}

} // namespace shmipc
