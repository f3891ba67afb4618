// Internal to queue/: MessageQueue::Impl, the process-local state of a queue handle, and what
// its files share: the encoding of a slot's state word, the segment's layout offsets, the spin
// and repair intervals. Layout of the segment and the algorithm: message_queue.hpp. Not part of
// any API.
//
// Where the code is:
//   message_queue.cpp          create/attach (sizes validated), the MessageQueue API
//   message_queue_clients.cpp  client registration (and re-registration in a fork child), repair
//                              of dead clients' claims
//   message_queue_put_get.cpp  producer (try_put), consumer (try_get, taking ahead), waiting
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/queue/message_queue.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/client_table.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

namespace shmipc {

namespace queue_detail {

// ---- slot state word: [lap: 48 bits][client: 14 bits][phase: 2 bits] -----------------------
// The lap makes every value unique over 2^48 laps, so a CAS can never succeed on a stale
// observation (no ABA); laps compare with wrap-around.
enum Phase : std::uint64_t { kEmpty = 0, kWriting = 1, kFull = 2, kReading = 3 };
inline constexpr unsigned kClientShift = 2;
inline constexpr unsigned kLapShift = 16;
inline constexpr std::uint32_t kClientMask = (1u << 14) - 1;
// Client index no live handle ever has: a claim with it is always treated as dead. Used for
// messages a consumer handed back (its sink failed) and for claims of a recycled index.
inline constexpr std::uint32_t kNoClient = kClientMask;
static_assert(kQueueMaxClients < kNoClient);

inline constexpr std::uint64_t make_state(std::uint64_t lap, Phase ph,
                                          std::uint32_t client) noexcept {
    return (lap << kLapShift) | (std::uint64_t{client} << kClientShift) | ph;
}
inline constexpr Phase phase_of(std::uint64_t st) noexcept {
    return static_cast<Phase>(st & 3u);
}
inline constexpr std::uint32_t client_of(std::uint64_t st) noexcept {
    return static_cast<std::uint32_t>(st >> kClientShift) & kClientMask;
}
inline constexpr std::uint64_t lap_of(std::uint64_t st) noexcept {
    return st >> kLapShift;
}
// Signed difference a - b of two 48-bit laps.
inline constexpr std::int64_t lap_diff(std::uint64_t a, std::uint64_t b) noexcept {
    return static_cast<std::int64_t>((a - b) << kLapShift) >> kLapShift;
}
static_assert(make_state(0, kEmpty, 0) == 0, "a zero-filled slot is EMPTY for lap 0");
static_assert(lap_diff(0, (std::uint64_t{1} << 48) - 1) == 1, "laps wrap");

inline constexpr std::size_t kControlOffset = sizeof(SegmentHeader);
inline constexpr std::size_t kClientsOffset =
    kControlOffset + ((sizeof(QueueControl) + 63) / 64) * 64;
inline constexpr std::size_t kSlotsOffset =
    kClientsOffset + ((ClientTable::bytes(kQueueMaxClients) + 63) / 64) * 64;
// How often a waiting consumer repairs.
inline constexpr std::chrono::milliseconds kScanInterval{20};
// A non-blocking attempt gives up after this many rounds (CAS losses, counter help): it never
// spins unboundedly, whatever the shared counters say; the blocking caller then waits and retries.
inline constexpr unsigned kMaxRounds = 1u << 16;
// Before sleeping on the futex a waiter spins (cheap while the peer runs on the other core),
// then yields the CPU a few times (cheap when processes outnumber cores: the peer may be the
// one waiting for our core). Waking a sleeper costs the peer a syscall and us 20-60 us here.
// The yielding phase is long enough for a 4 MiB message's copy (~400 us here): with 200 us a
// consumer slept through each one and paid the wake-up every time (benchmarks/bench_sweep.py).
inline constexpr SpinPolicy kQueueSpin{std::chrono::microseconds(20),
                                       std::chrono::microseconds(500)};

// The spin of a wait never runs past its deadline.
inline SpinPolicy spin_policy(const Deadline &dl) {
    auto left = dl.remaining();
    auto pure = std::min(kQueueSpin.pure, left);
    return SpinPolicy{pure, std::min(kQueueSpin.yielding, left - pure)};
}

inline std::size_t stride_for(std::size_t max_message_size) {
    return round_up(sizeof(QueueSlot) + max_message_size, 64);
}

} // namespace queue_detail

struct MessageQueue::Impl {
    MemorySegment seg;
    QueueControl *ctl = nullptr;
    std::byte *slots = nullptr;
    std::uint64_t cap = 0;
    std::uint64_t max_msg = 0;
    std::uint64_t stride = 0;

    // Our own open file description of the segment: it holds our client lock byte, apart from
    // seg.fd() (which holds the owner lock). Renewed in forked children (sync/liveness.hpp).
    UniqueFd lock_fd;
    ClientTable clients;
    std::uint32_t me = queue_detail::kNoClient;
    ForkStamp stamp;                     // of our registration
    std::atomic<bool> registered{false}; // in this process (a fork child re-registers)
    std::mutex register_mu;

    // Shared by the threads that use this handle, hence atomics (relaxed: hints only).
    std::atomic<std::int64_t> next_scan_ns{0}; // steady clock
    std::atomic<bool> orphan_seen{false};      // a dead consumer's message waits for a taker
    std::atomic<bool> closing{false};          // request_close(): waits of this handle end

    ~Impl(); // message_queue_clients.cpp

    QueueSlot *slot(std::uint64_t i) const noexcept {
        return reinterpret_cast<QueueSlot *>(slots + i * stride);
    }
    static std::byte *data(QueueSlot *s) noexcept { return reinterpret_cast<std::byte *>(s + 1); }

    // ---- clients (message_queue_clients.cpp) -------------------------------------------
    void ensure_registered() {
        // SYNC POINT: acquire, pairs with the release store of registered in register_slow(): me is
        // set.
        if (registered.load(std::memory_order_acquire) && !stamp.inherited()) [[likely]]
            return;
        register_slow();
    }
    void register_slow(); // the first use, or the first use in a fork child
    void register_client();
    // A previous holder of our index is dead (we got its lock) but its claims still name the
    // index, which now looks alive: repair them before we make claims of our own.
    void repair_recycled_index() noexcept;

    bool alive(std::uint32_t client) const {
        if (client == me)
            return true; // another thread of this handle
        return clients.alive(client);
    }

    // A slot can be at most one lap ahead of the counter it is read against (the tail stops a
    // lap ahead of the head's slot); more, with the counter re-read unchanged, means someone
    // scribbled over the queue.
    [[noreturn]] void corrupt_lap(std::uint64_t pos, std::uint64_t st) const {
        throw CorruptSegment("message queue '" + seg.name() + "': slot " +
                             std::to_string(pos % cap) + " is at lap " +
                             std::to_string(queue_detail::lap_of(st)) + ", far ahead of position " +
                             std::to_string(pos) + " (scribbled shared memory)");
    }

    void wake_all() noexcept {
        // SYNC POINT: futex wakes after a slot's state changed (discard, repair): pair with the
        // waits in wait_put_ready/wait_get_ready, whose predicates reload the states (acquire).
        wake_if_waiting(ctl->not_empty);
        wake_if_waiting(ctl->not_full);
    }

    static void help_advance(std::atomic<std::uint64_t> &counter, std::uint64_t pos) noexcept {
        // SYNC POINT: acq_rel CAS of head/tail: pairs with the acquire loads of the counter in
        // try_put/try_get/size; only one helper advances it.
        counter.compare_exchange_strong(pos, pos + 1, std::memory_order_acq_rel,
                                        std::memory_order_relaxed);
    }

    // Discards a half-written message of a dead producer. true if we did.
    bool discard(QueueSlot *s, std::uint64_t st) noexcept;

    // ---- producer (message_queue_put_get.cpp) ------------------------------------------
    bool try_put(const void *src, std::size_t n);
    bool put_ready() const noexcept;

    // ---- consumer (message_queue_put_get.cpp) ------------------------------------------
    // Delivers the message of a slot we hold in READING(lap, me).
    bool deliver(QueueSlot *s, std::uint64_t lap, Sink sink, void *ctx);
    bool try_get(Sink sink, void *ctx);
    bool get_ready() const noexcept;

    static constexpr std::uint64_t kNone = ~std::uint64_t{0};

    // The first position after `head` (up to the tail, at most one lap) whose message is
    // committed (FULL of its lap), or kNone.
    std::uint64_t committed_ahead(std::uint64_t head) const noexcept;
    // The first position in [from, to) whose message is committed (FULL of its lap), or kNone.
    std::uint64_t first_committed(std::uint64_t from, std::uint64_t to) const noexcept;
    // The committed position to take ahead of `head`, lowest first, or kNone (see the
    // definition).
    std::uint64_t lowest_committed_ahead(std::uint64_t head) const noexcept;
    // Claims and delivers a committed message behind a head still being written. The head
    // counter stays where it is; it skips the taken slot later (EMPTY of the next lap).
    bool take_ahead(std::uint64_t head, Sink sink, void *ctx);

    // ---- repair of dead clients' claims (message_queue_clients.cpp) --------------------
    struct Repair {
        std::size_t discarded = 0;
        bool delivered = false;
    };
    bool scan_due();
    // Discards every half-written message of a dead producer; with a sink, takes over (at
    // most) one message whose consumer died and delivers it. Without one, notes that there is.
    Repair scan(Sink sink, void *ctx);

    // ---- waiting (message_queue_put_get.cpp) -------------------------------------------
    WaitResult wait_put_ready(const Deadline &dl);
    void check_closing() const {
        if (closing.load(std::memory_order_relaxed))
            throw Closed("message queue '" + seg.name() + "' was closed while waiting");
    }
    WaitResult wait_get_ready(const Deadline &dl);
};

} // namespace shmipc
