// Named single-producer/single-consumer channels inside a shared heap: records move blocks of
// the heap by offset, so a payload is never copied on its way to the other process.
//
// A channel is a named object of the heap (kind kNamedChannel) holding
//
//   +------------------+  64 B: magic, layout, sender/receiver claim tokens, lock index
//   | ChannelControl   |
//   |   SpscRingControl|  320 B: see spsc_ring.hpp
//   +------------------+
//   | RingRecord[]     |  32 B each: {block offset, length, kind, metadata block offset}
//   +------------------+
//   | inline[slots]    |  kInlineSlotBytes each (rings of at most kMaxInlineSlots slots): the
//   +------------------+  payload of an Inline record (small bytes, no metadata)
//
// Small messages (send of bytes up to kInlineSlotBytes, no metadata) travel inline, in the slot's
// side buffer: no heap allocation on the sender's side, no free on the receiver's (an allocation
// in one process freed in another defeats both thread caches and makes every message take the
// heap lock). recv() of an Inline record copies it into a new block of the receiver;
// recv_bytes/recv_many copy it straight out of the ring.
//
// Endpoints. The role (sender or receiver) of a handle is claimed on its first send/recv:
//  1. an exclusive OFD lock on the role's byte (kUserLockBase + 2 * lock_index + role) of the
//     handle's own open file description: held while the endpoint lives, dropped by the kernel
//     when the process dies. A conflicting lock means a live endpoint elsewhere: ChannelBusy.
//  2. a process-local registry catches a second handle of the same process and heap handle
//     (OFD locks of one description never conflict with each other): ChannelBusy.
//  3. a CAS publishes the claim token (pid << 32 | serial) in the control block, so the peer
//     can tell "never had a peer / peer left cleanly" (token 0) from "peer died" (token set,
//     lock byte free) with one load and, only while it sleeps, one fcntl.
//
// Ownership of blocks: a block in a ring is owned by the heap (kOwnerHeld), so neither side's
// death loses or frees it; the sender transfers it before the push, the receiver takes it
// (transfer to its client id) after the pop. Blocks a dead receiver had taken are its own and
// are reclaimed by Heap::reap_dead_clients(), which a side that detects a dead peer runs.
//
// Waits spin for `spin` (a Channel setting), then sleep on the ring's futex words in slices of
// kWaitSlice; between slices they run check_interrupt() (Ctrl-C), test the peer's liveness and
// the deadline. The fast path (the ring not full/empty) makes no syscall.
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/channel/spsc_ring.hpp"
#include "ipc_core/heap/heap.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmipc {

inline constexpr std::uint64_t kChannelMagic = 0x314c4e4e41484353ULL; // "SCHANNL1" little endian
inline constexpr std::uint32_t kChannelLayoutVersion = 3;  // 2: in-flight blocks; 3: inline
inline constexpr std::uint32_t kInlineSlotBytes = 128;     // payload bytes of an inline slot
inline constexpr std::uint64_t kMaxInlineSlots = 1u << 16; // larger rings have no inline area

// What a record carries (RingRecord::tag).
enum class RecordKind : std::uint32_t {
    Block = 1,  // a block the sender moved (or copied bytes into): offset, length
    Array = 2,  // same, plus a metadata block (aux) describing dtype/shape for recv_array
    Inline = 3, // no block: `length` bytes in the slot's inline buffer (offset 0)
};

struct alignas(kCacheLine) ChannelControl {
    std::uint64_t magic;          // kChannelMagic
    std::uint32_t layout_version; // kChannelLayoutVersion
    std::uint32_t inline_bytes;   // per-slot inline buffer: kInlineSlotBytes, or 0 (large ring)
    std::atomic<std::uint64_t> sender;   // claim token of the live sender; 0 = none
    std::atomic<std::uint64_t> receiver; // claim token of the live receiver; 0 = none
    std::uint64_t lock_index; // diagnostics: the liveness bytes are derived from the offset
    std::atomic<std::uint64_t> inflight_block; // sender: handed to the heap, not yet pushed
    std::atomic<std::uint64_t> inflight_meta;  // its metadata block
    std::uint64_t reserved1;
    SpscRingControl ring; // followed by its slots
};
static_assert(std::is_standard_layout_v<ChannelControl>);
static_assert(sizeof(ChannelControl) == kCacheLine + sizeof(SpscRingControl));
static_assert(offsetof(ChannelControl, ring) == kCacheLine);
static_assert(offsetof(ChannelControl, sender) == 16 && offsetof(ChannelControl, receiver) == 24);
static_assert(offsetof(ChannelControl, lock_index) == 32);
static_assert(offsetof(ChannelControl, inflight_block) == 40);
static_assert(offsetof(ChannelControl, inflight_meta) == 48);

enum class ChannelRole : int { None = -1, Sender = 0, Receiver = 1 };

// A received record: the block (now owned by the receiving client) and its metadata, if any.
struct ChannelMessage {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    RecordKind kind = RecordKind::Block;
    std::string meta; // empty unless kind == Array
};

struct ChannelInfo {
    std::string name;
    std::uint64_t capacity = 0;
    std::uint64_t queued = 0;
    bool sender_alive = false;
    bool receiver_alive = false;
    bool closed = false; // the sender ended the stream
};

// Largest metadata a record may carry (dtype descriptions and shapes are far smaller).
inline constexpr std::size_t kMaxRecordMeta = 64 * 1024;

// One process's handle on a channel. Thread-safe: calls of one role are serialized by a mutex
// (the ring itself is single-producer/single-consumer). Destroying the handle releases its role
// without ending the stream; close() by the sender ends it.
class Channel {
  public:
    // Opens the channel `name` of `heap`, creating it with `capacity` records if it does not
    // exist (an existing channel keeps the capacity it was created with). The heap must outlive
    // the channel. InvalidArgument: bad name or capacity, or the name belongs to a
    // non-channel object; CorruptSegment: the object is not a valid channel.
    static std::unique_ptr<Channel> open(Heap &heap, std::string_view name, std::uint64_t capacity);
    ~Channel();
    Channel(const Channel &) = delete;
    Channel &operator=(const Channel &) = delete;

    // --- sender --------------------------------------------------------------------------------
    // Moves the block at `off` (owned by this heap client, `len` bytes meaningful) into the
    // channel; `meta` (<= kMaxRecordMeta bytes, for Array records) travels with it. Blocks while
    // full. On any failure (Timeout, PeerDied, Ctrl-C...) the block stays the caller's.
    // ChannelBusy if another live sender exists; EndOfStream-like BrokenPipe (OsError
    // EPIPE) if the stream was ended; Closed after close().
    void send_block(std::uint64_t off, std::uint64_t len, RecordKind kind, std::string_view meta,
                    const Deadline &deadline);
    // Same, but never waits: false if the ring is full, another thread is inside this handle or
    // the heap lock is busy for a moment (the block stays the caller's). Never blocks on the
    // handle's mutex, so it can be called with the GIL held.
    [[nodiscard]] bool try_send_block(std::uint64_t off, std::uint64_t len, RecordKind kind,
                                      std::string_view meta);
    // Copies `n` bytes into a new block and sends it (one copy).
    void send_bytes(const void *data, std::size_t n, RecordKind kind, std::string_view meta,
                    const Deadline &deadline);
    // Never waits (false: full, another thread is inside this handle, or the heap lock is busy
    // for a moment: the caller then waits with its own deadline); the copy is made only when
    // there is room.
    [[nodiscard]] bool try_send_bytes(const void *data, std::size_t n, RecordKind kind,
                                      std::string_view meta);
    // Copies and sends each message in order with one wake-up per ring-full of records;
    // blocks while full. Returns how many were sent (all, unless the deadline passed after at
    // least one was sent: then the rest are not sent and the count says where it stopped).
    std::size_t send_many(const std::vector<std::pair<const void *, std::size_t>> &msgs,
                          const Deadline &deadline);
    // Claims the sender role and says whether one record can be sent without waiting.
    [[nodiscard]] bool ready_to_send();
    // Claims the sender role and waits until one record can be sent (then a send with a zero
    // deadline succeeds: only this handle sends). Timeout, PeerDied, EPIPE as send_block.
    void wait_writable(const Deadline &deadline);
    // End of stream (sender only; a no-op otherwise): the receiver drains, then EndOfStream.
    // Also releases the role. Idempotent.
    void close();

    // --- receiver ------------------------------------------------------------------------------
    // The next record; the block is now owned by this heap client (free it with
    // Heap::deallocate). Blocks while empty: Timeout, EndOfStream (sender closed and all was
    // received), PeerDied (the sender died and all it sent was received).
    [[nodiscard]] ChannelMessage recv(const Deadline &deadline);
    // Never waits: nullopt if empty or another thread is inside this handle; EndOfStream at the
    // end of the stream.
    [[nodiscard]] std::optional<ChannelMessage> try_recv();
    // Up to `max` records (at least one, waiting like recv for the first), each copied into
    // `out` as bytes and its block freed. Returns how many.
    // `sink(data, n)` is called for each message while its block is mapped; it may not call
    // back into this channel.
    template <class Sink>
    std::size_t recv_many(std::size_t max, const Deadline &deadline, Sink &&sink) {
        return recv_many_with(max, &deadline, std::forward<Sink>(sink));
    }
    // Never waits: 0 if empty or another thread is inside this handle; EndOfStream at the end.
    template <class Sink> std::size_t try_recv_many(std::size_t max, Sink &&sink) {
        return recv_many_with(max, nullptr, std::forward<Sink>(sink));
    }
    std::size_t recv_many(std::vector<std::string> &out, std::size_t max,
                          const Deadline &deadline) {
        return recv_many(max, deadline, [&](const void *p, std::size_t n) {
            out.emplace_back(static_cast<const char *>(p), n);
        });
    }
    // Claims the receiver role and says whether recv would return at once (a record, or the end
    // of the stream).
    [[nodiscard]] bool ready_to_recv();
    // Claims the receiver role and waits until a record is there (then recv with a zero deadline
    // returns it). Timeout, EndOfStream, PeerDied as recv.
    void wait_readable(const Deadline &deadline);
    // Waits until a record can be received (true) or the deadline passes (false). At end of
    // stream or with a dead sender it returns true (recv will then raise).
    [[nodiscard]] bool poll(const Deadline &deadline);

    // --- both ----------------------------------------------------------------------------------
    [[nodiscard]] std::uint64_t queued() const noexcept {
        return std::min(ctl_->ring.size_approx(), geometry_.capacity);
    }
    [[nodiscard]] std::uint64_t capacity() const noexcept { return geometry_.capacity; }
    [[nodiscard]] bool stream_ended() const noexcept {
        // SYNC POINT: acquire, pairs with the release store of closed in SpscProducer::close():
        // every record pushed before the close is visible.
        return ctl_->ring.closed.load(std::memory_order_acquire) != 0;
    }
    [[nodiscard]] ChannelRole role() const noexcept { return role_; }
    [[nodiscard]] const std::string &name() const noexcept { return name_; }
    [[nodiscard]] bool closed() const noexcept { return closed_; }
    // Releases the role without ending the stream (the handle may claim a role again).
    // departed=false: a hand-over (another endpoint may come; the peer keeps waiting);
    // departed=true: gone for good (the peer, once it drained, gets PeerDied: the destructor,
    // a receiver's close(), abort()).
    void release(bool departed = false);
    // Ends this endpoint as a failure, not as the end of the stream: the peer drains what was
    // sent, then gets PeerDied (an exception inside a `with` block). The handle is closed.
    void abort();
    // Forgets the role without touching the heap, for when the heap handle was closed first
    // (its lock fd, and so the liveness lock, is gone already). The handle is closed.
    void abandon() noexcept;
    // Busy-wait before sleeping, per wait (0: sleep at once).
    void set_spin(std::chrono::nanoseconds spin) noexcept { spin_ns_.store(spin.count()); }
    [[nodiscard]] std::chrono::nanoseconds spin() const noexcept {
        return std::chrono::nanoseconds(spin_ns_.load());
    }
    // Is the live endpoint of `role` (of any process) alive?
    [[nodiscard]] bool endpoint_alive(ChannelRole role) const;

    // --- waiting elsewhere (the reactor, shmipc.wait, asyncio) ---------------------------------
    // The futex words a receiver (not_empty) and a sender (not_full) sleep on.
    [[nodiscard]] FutexWord &recv_word() noexcept { return ctl_->ring.not_empty; }
    [[nodiscard]] FutexWord &send_word() noexcept { return ctl_->ring.not_full; }
    // True if the endpoint of `role` was claimed and its process is gone (never blocks long:
    // one load and at most one fcntl). Safe from any thread while the handle is open.
    [[nodiscard]] bool peer_dead(ChannelRole role) const;
    // The end of a non-blocking attempt that found nothing: throws what a blocking call would
    // (PeerDied once drained with the sender gone, PeerDied when the receiver is gone for a
    // sender). A no-op without a role, or while another thread is inside this handle.
    void check_peer();

    // Every channel of the heap with its state (heap.channels()).
    static std::vector<ChannelInfo> list(Heap &heap);
    // Deletes the channel `name` once neither endpoint is alive, freeing the blocks still queued
    // (heap.remove()). False if absent; ChannelBusy if an endpoint lives; InvalidArgument if the
    // name is not a channel.
    static bool remove(Heap &heap, std::string_view name,
                       const Deadline &deadline = Deadline(10.0));

  private:
    using SinkFn = void (*)(void *ctx, const void *data, std::size_t n);
    std::size_t recv_many_impl(std::size_t max, const Deadline *deadline, SinkFn fn, void *ctx);
    template <class Sink>
    std::size_t recv_many_with(std::size_t max, const Deadline *deadline, Sink &&sink);
    void send_block_locked(std::uint64_t off, std::uint64_t len, RecordKind kind,
                           std::string_view meta, const Deadline &deadline);
    Channel(Heap &heap, std::string name, std::uint64_t offset, ChannelControl *ctl);
    void claim(ChannelRole role);
    void forget_role_after_fork() noexcept;
    void ensure_role(ChannelRole role);
    void check_open() const;
    [[noreturn]] void peer_died(ChannelRole peer);
    // Spins, then sleeps on `w` until ready(), the deadline, or the death of `peer` (then
    // peer_dead is set and it returns false). The one wait of every channel operation.
    template <class Ready>
    bool wait_on(FutexWord &w, Ready &&ready, ChannelRole peer, const Deadline &deadline,
                 bool &peer_dead);
    // Between-slices hook of a wait: interrupts, peer liveness, deadline.
    std::chrono::nanoseconds between_slices(ChannelRole peer, const Deadline &deadline, bool first);
    std::uint64_t stash_meta(std::string_view meta, const Deadline &deadline);
    void free_unsent(std::uint64_t off, const Deadline &deadline) noexcept;
    ChannelMessage take(const RingRecord &rec);
    bool push_record(const RingRecord &rec, const Deadline &deadline);
    [[nodiscard]] bool fits_inline(std::size_t n, std::string_view meta) const noexcept {
        return n <= inline_bytes_ && meta.empty();
    }
    // Writes one inline record (room was checked; only this handle pushes).
    void push_inline(const void *data, std::size_t n);
    [[nodiscard]] std::byte *inline_slot(std::uint64_t slot) const noexcept {
        return inline_ + slot * inline_bytes_;
    }
    // The front record is Inline: a new block of this client with its bytes; pops it.
    ChannelMessage take_inline();
    bool wait_for_room(const Deadline &deadline); // false on timeout
    void check_stream_open() const;
    void free_inflight();
    void wait_for_record(const Deadline &deadline);

    Heap &heap_;
    std::string name_;
    std::uint64_t offset_ = 0; // of the control block in the heap
    ChannelControl *ctl_ = nullptr;
    RingGeometry geometry_;          // validated at open, private
    std::byte *inline_ = nullptr;    // the inline buffers (validated at open)
    std::uint32_t inline_bytes_ = 0; // per slot; 0: none
    ChannelRole role_ = ChannelRole::None;
    std::uint64_t token_ = 0;
    ForkStamp role_stamp_; // of the claim: a forked child's copy has no role
    bool closed_ = false;
    SpscProducer producer_;
    SpscConsumer consumer_;
    std::atomic<std::int64_t> spin_ns_{50'000};
    std::atomic<bool> closing_{false}; // close() asks a waiting thread of this handle to leave
    std::mutex mu_;                    // serializes the calls of this handle (one ring side)
};

template <class Sink>
std::size_t Channel::recv_many_with(std::size_t max, const Deadline *deadline, Sink &&sink) {
    using S = std::remove_reference_t<Sink>;
    return recv_many_impl(
        max, deadline,
        [](void *ctx, const void *data, std::size_t n) { (*static_cast<S *>(ctx))(data, n); },
        static_cast<void *>(&sink));
}

} // namespace shmipc
