// Channels (channel.hpp): the endpoints of a channel. Claiming a role (OFD lock byte, the
// process-local registry, the claim token), forgetting it in a fork child, releasing it, close
// and abort; the liveness test of an endpoint, the checks a wait makes between its slices, and
// what a side does when it finds its peer dead.
#include "ipc_core/channel/channel_detail.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <mutex>
#include <set>
#include <string>
#include <sys/types.h>
#include <tuple>
#include <unistd.h>

namespace shmipc {

using channel_detail::endpoint_alive_at;
using channel_detail::endpoint_dead_at;
using channel_detail::lock_index_for;
using channel_detail::role_name;

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

std::atomic<std::uint64_t> &token_word(ChannelControl *c, ChannelRole r) {
    return r == ChannelRole::Sender ? c->sender : c->receiver;
}

// The liveness byte of an endpoint, derived from the channel's offset (never from the shared
// lock_index, which a peer could scribble over).
off_t lock_byte(std::uint64_t offset, ChannelRole r) {
    return kUserLockBase + off_t(2 * lock_index_for(offset)) + off_t(static_cast<int>(r));
}

} // namespace

namespace channel_detail {

// Spreads (segment, byte offset) over the user lock range. Two channels collide only if their
// offsets agree modulo 32 GiB after mixing in the segment index: not in heaps of realistic size.
std::uint64_t lock_index_for(std::uint64_t off) {
    const std::uint64_t seg = off >> kSegmentShift;
    const std::uint64_t unit = (off & kSegmentOffsetMask) / kHeapUnit;
    return (unit + seg * 0x9E3779B1ULL) % std::uint64_t(kUserLockSpan / 2);
}

bool endpoint_alive_at(Heap &heap, std::uint64_t offset, ChannelControl *c, ChannelRole r) {
    // SYNC POINT: acquire, pairs with the acq_rel CASes of the token in claim() and release(): a
    // set token was published before the endpoint's lock byte is tested.
    if (token_word(c, r).load(std::memory_order_acquire) == 0)
        return false;
    {
        // SYNC POINT: g_registry_mu (process-local mutex): the registry of endpoints this process
        // holds.
        std::lock_guard g(g_registry_mu);
        if (registry().count(key_of(heap, offset, r)))
            return true;
    }
    return byte_is_locked(heap.lock_fd(), lock_byte(offset, r));
}

// A claimed endpoint whose process is gone: token set, lock byte free.
bool endpoint_dead_at(Heap &heap, std::uint64_t offset, ChannelControl *c, ChannelRole r) {
    // SYNC POINT: acquire, as in endpoint_alive_at (pairs with the CASes in claim() and release()).
    if (token_word(c, r).load(std::memory_order_acquire) == 0)
        return false;
    return !endpoint_alive_at(heap, offset, c, r);
}

} // namespace channel_detail

void Channel::claim(ChannelRole role) {
    // SYNC POINT: g_registry_mu (process-local mutex): claim, registry insert and role change are
    // one step for this process.
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
    // SYNC POINT: acquire, pairs with the acq_rel CAS of the previous endpoint's release(): the
    // expected value of our CAS below.
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
    // SYNC POINT: g_registry_mu (process-local mutex): the token, the lock byte and the registry
    // change together.
    std::lock_guard g(g_registry_mu);
    forget_role_after_fork();
    if (role_ == ChannelRole::None)
        return;
    // Before unlocking: token 0 says "left cleanly, another endpoint may come" (an explicit
    // hand-over); kDepartedToken says "gone without ending the stream", which the peer treats
    // like a death (channels end like pipes). A peer that sees the lock free with our real token
    // still set would think we died, which is also right for the departed case.
    std::uint64_t mine = token_;
    // SYNC POINT: acq_rel CAS of our token, before the lock byte is unlocked: pairs with the
    // acquire loads in endpoint_alive_at/endpoint_dead_at of the peer (0 or kDepartedToken is seen,
    // never a dead-looking real token) and with the next claim().
    token_word(ctl_, role_)
        .compare_exchange_strong(mine, departed ? kDepartedToken : 0, std::memory_order_acq_rel);
    unlock_byte(heap_.lock_fd(), lock_byte(offset_, role_));
    registry().erase(key_of(heap_, offset_, role_));
    role_ = ChannelRole::None;
    token_ = 0;
}

void Channel::abandon() noexcept {
    // SYNC POINT: g_registry_mu (process-local mutex): the registry entry goes with the role.
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
    // SYNC POINT: futex wakes of both words after closing_ is set: pair with the waits in wait_on
    // (spin_then_wait), whose between_slices checks closing_.
    notify_all(ctl_->ring.not_empty);
    notify_all(ctl_->ring.not_full);
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread inside this handle at a
    // time. Taken after the wakes: the waiting thread leaves first.
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
    // SYNC POINT: futex wakes of both words after closing_ is set, as in close().
    notify_all(ctl_->ring.not_empty);
    notify_all(ctl_->ring.not_full);
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread inside this handle at a
    // time. Taken after the wakes: the waiting thread leaves first.
    std::lock_guard g(mu_);
    if (closed_)
        return;
    // No end-of-stream mark: the peer drains what was sent, then gets PeerDied, as if we died.
    release(/*departed=*/true);
    // SYNC POINT: futex wakes after release() changed our token to kDepartedToken: pair with the
    // peer's wait in wait_on, which checks endpoint_dead_at (acquire of the token) between slices.
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
    // SYNC POINT: mu_ (process-local mutex): a try never waits (another thread inside this handle:
    // not now).
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
        // SYNC POINT: acq_rel exchange, pairs with the release stores of
        // inflight_block/inflight_meta in push_record (the offsets are seen) and with the acq_rel
        // CASes in take(): only one of us clears each.
        std::uint64_t off = w->exchange(0, std::memory_order_acq_rel);
        if (off && heap_.try_transfer(off, kOwnerHeld, heap_.client_id()))
            heap_.deallocate(off, Deadline(1.0)); // ours now: at worst kept until we exit
    }
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

} // namespace shmipc
