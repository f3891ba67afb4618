// Bounded multi-producer multi-consumer queue of variable-size messages (<= max_message_size)
// in a named shared-memory segment, surviving SIGKILL of any producer or consumer.
//
// Layout (offsets from the start of the segment; every part cache-line aligned):
//
//   [SegmentHeader 64 B][QueueControl: sizes | tail | head | not_empty | not_full]
//   [ClientTable: kQueueMaxClients slots (sync/client_table.hpp)]
//   [slot 0: state u64, length u32, pad | data ... max_message_size][slot 1] ... [slot cap-1]
//
// QueueControl (offsets from its start):
//   0 capacity u64 | 8 max_message_size u64 | 16 slot_stride u64 | 24 slots_offset u64 |
//   32 max_clients u32 | 36..63 reserved | 64 tail u64 | 128 head u64 | 192 not_empty FutexWord |
//   256 not_full FutexWord | 320 end_marker | 384 end
// The sizes are written once at creation, validated at attach and kept privately after that.
//
// Algorithm: Vyukov's bounded MPMC queue (positions are 64-bit counters, slot = pos % cap,
// lap = pos / cap), except that a slot is claimed by CAS on the slot's own state word rather
// than on the tail/head counter. The state word names the phase (EMPTY -> WRITING -> FULL ->
// READING -> EMPTY of the next lap), the lap, and for the two in-progress phases the index of
// the claiming client. Tail and head only ever move forward, and anybody who sees that the slot
// at `tail` (or `head`) is already claimed helps move the counter (so a process killed between
// its claim and its counter bump stalls nobody).
//
// Crash safety: every attached handle is a client of the queue's client table, holding an OFD
// lock on byte kClientLockBase + index of the segment's file. The kernel drops it when the process
// dies, so a claim whose client's byte is unlocked belongs to a dead process:
//   - WRITING(lap, dead): the producer died before publishing: the slot is discarded
//     (EMPTY of the next lap); the half-written message never becomes visible.
//   - READING(lap, dead): the consumer died before the message was returned to it: another
//     consumer takes the claim over and delivers the message (exactly once: the claim moves
//     by CAS, and a message is only ever returned by whoever completes READING -> EMPTY).
// A new client that takes over a dead client's index first repairs that index's claims, so a
// recycled index never makes a dead claim look alive.
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/client_table.hpp"
#include "ipc_core/sync/liveness.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <type_traits>

namespace shmipc {

inline constexpr std::uint32_t kMessageQueueLayoutVersion = 2; // 2: client table in the segment
inline constexpr std::uint32_t kQueueMaxClients = 4096;        // attached handles at a time
inline constexpr std::size_t kQueueMaxCapacity = std::size_t{1} << 24;
inline constexpr std::size_t kQueueMaxMessageSize = std::size_t{1} << 30;

// Shared control block, right after the SegmentHeader. Sizes are written once at creation and
// validated on attach; the counters and futex words live on their own cache lines.
struct QueueControl {
    std::uint64_t capacity;         // slots (maxsize)
    std::uint64_t max_message_size; // bytes
    std::uint64_t slot_stride;      // bytes, multiple of 64
    std::uint64_t slots_offset;     // bytes from the segment start
    std::uint32_t max_clients;      // kQueueMaxClients: slots of the client table
    std::uint32_t reserved0[7];
    alignas(64) std::atomic<std::uint64_t> tail; // next position to write (producers)
    alignas(64) std::atomic<std::uint64_t> head; // next position to read (consumers)
    alignas(64) FutexWord not_empty;             // consumers sleep here
    alignas(64) FutexWord not_full;              // producers sleep here
    alignas(64) std::uint64_t end_marker;
};
static_assert(std::is_standard_layout_v<QueueControl>);
static_assert(offsetof(QueueControl, max_clients) == 32 && offsetof(QueueControl, tail) == 64);
static_assert(offsetof(QueueControl, head) == 128 && offsetof(QueueControl, not_empty) == 192);
static_assert(offsetof(QueueControl, not_full) == 256 && sizeof(QueueControl) == 384);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct QueueSlot {
    std::atomic<std::uint64_t> state; // see the encoding in message_queue_impl.hpp
    std::uint32_t length;             // bytes of the message; valid in FULL/READING
    std::uint32_t reserved;
    // followed by max_message_size bytes of data
};
static_assert(std::is_standard_layout_v<QueueSlot>);
static_assert(sizeof(QueueSlot) == 16 && offsetof(QueueSlot, length) == 8);

class MessageQueue {
  public:
    // Receives a message while its slot is claimed. Returns false if it could not take it (the
    // message then goes back to the queue for another consumer).
    using Sink = bool (*)(void *ctx, const std::byte *data, std::size_t n);

    enum class WaitResult { Ready, Timeout };

    // Creates the named queue (API.md §0 owner semantics). capacity 1..2^24 slots,
    // max_message_size 1..2^30 bytes; memory is capacity * round_up(16 + max_message_size, 64).
    static MessageQueue create(std::string_view name, std::size_t capacity,
                               std::size_t max_message_size, mode_t mode, bool persistent);
    // Attaches to an existing queue; CorruptSegment if it is not a valid one, ENOENT if absent.
    static MessageQueue attach(std::string_view name, const TrustPolicy &trust = {});

    MessageQueue();
    MessageQueue(MessageQueue &&) noexcept;
    MessageQueue &operator=(MessageQueue &&) noexcept;
    ~MessageQueue();

    // Non-blocking. false: the queue is full. InvalidArgument if n > max_message_size.
    [[nodiscard]] bool try_put(const void *data, std::size_t n);
    // Non-blocking. false: the queue is empty (no committed message can be claimed now).
    // `sink` runs while the slot is claimed; it must not block.
    [[nodiscard]] bool try_get(Sink sink, void *ctx);

    // Block until a put (get) may succeed, the deadline passes, or check_interrupt() throws.
    // Ready is a hint: the caller retries try_put/try_get and waits again if it lost a race.
    // Waiting consumers also repair claims of dead clients (see above).
    WaitResult wait_put_ready(const Deadline &deadline);
    WaitResult wait_get_ready(const Deadline &deadline);

    // The futex words consumers (not_empty) and producers (not_full) sleep on, for waiting
    // elsewhere (the reactor). Closed if the queue is closed.
    [[nodiscard]] FutexWord &get_word();
    [[nodiscard]] FutexWord &put_word();

    // Blocking convenience: false on timeout.
    bool put(const void *data, std::size_t n, const Deadline &deadline);
    bool get(Sink sink, void *ctx, const Deadline &deadline);

    // Messages committed and not yet claimed (approximate while others run), 0..capacity.
    [[nodiscard]] std::size_t size() const noexcept;
    [[nodiscard]] std::size_t capacity() const noexcept;
    [[nodiscard]] std::size_t max_message_size() const noexcept;
    [[nodiscard]] const std::string &name() const noexcept;
    [[nodiscard]] bool owner() const noexcept;
    [[nodiscard]] std::uint32_t client_index() const noexcept;
    [[nodiscard]] bool is_open() const noexcept { return impl_ != nullptr; }

    // Repairs claims of dead clients now: discards half-written messages; if `sink` is given,
    // delivers (at most) one message whose consumer died. Returns the number of repairs.
    std::size_t recover(Sink sink = nullptr, void *ctx = nullptr);

    // Releases the client lock, unmaps; the owner of a non-persistent queue removes the name.
    void close() noexcept;
    // Asks threads waiting in this handle (put/get) to leave: they throw Closed. Call before
    // dropping the handle from another thread.
    void request_close() noexcept;

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
};

} // namespace shmipc
