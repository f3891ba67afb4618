#include "ipc_core/queue/message_queue.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/testing/crash_point.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <stdexcept>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace shmipc {

namespace {

// ---- slot state word: [lap: 48 bits][client: 14 bits][phase: 2 bits] -----------------------
// The lap makes every value unique over 2^48 laps, so a CAS can never succeed on a stale
// observation (no ABA); laps compare with wrap-around.
enum Phase : std::uint64_t { kEmpty = 0, kWriting = 1, kFull = 2, kReading = 3 };
constexpr unsigned kClientShift = 2;
constexpr unsigned kLapShift = 16;
constexpr std::uint32_t kClientMask = (1u << 14) - 1;
// Client index no live handle ever has: a claim with it is always treated as dead. Used for
// messages a consumer handed back (its sink failed) and for claims of a recycled index.
constexpr std::uint32_t kNoClient = kClientMask;
static_assert(kQueueMaxClients < kNoClient);

constexpr std::uint64_t make_state(std::uint64_t lap, Phase ph, std::uint32_t client) noexcept {
    return (lap << kLapShift) | (std::uint64_t{client} << kClientShift) | ph;
}
constexpr Phase phase_of(std::uint64_t st) noexcept {
    return static_cast<Phase>(st & 3u);
}
constexpr std::uint32_t client_of(std::uint64_t st) noexcept {
    return static_cast<std::uint32_t>(st >> kClientShift) & kClientMask;
}
constexpr std::uint64_t lap_of(std::uint64_t st) noexcept {
    return st >> kLapShift;
}
// Signed difference a - b of two 48-bit laps.
constexpr std::int64_t lap_diff(std::uint64_t a, std::uint64_t b) noexcept {
    return static_cast<std::int64_t>((a - b) << kLapShift) >> kLapShift;
}
static_assert(make_state(0, kEmpty, 0) == 0, "a zero-filled slot is EMPTY for lap 0");
static_assert(lap_diff(0, (std::uint64_t{1} << 48) - 1) == 1, "laps wrap");

constexpr std::size_t kControlOffset = sizeof(SegmentHeader);
constexpr std::size_t kClientsOffset = kControlOffset + ((sizeof(QueueControl) + 63) / 64) * 64;
constexpr std::size_t kSlotsOffset =
    kClientsOffset + ((ClientTable::bytes(kQueueMaxClients) + 63) / 64) * 64;
constexpr std::chrono::milliseconds kScanInterval{20}; // how often a waiting consumer repairs
// A non-blocking attempt gives up after this many rounds (CAS losses, counter help): it never
// spins unboundedly, whatever the shared counters say; the blocking caller then waits and retries.
constexpr unsigned kMaxRounds = 1u << 16;
// Before sleeping on the futex a waiter spins (cheap while the peer runs on the other core),
// then yields the CPU a few times (cheap when processes outnumber cores: the peer may be the
// one waiting for our core). Waking a sleeper costs the peer a syscall and us 20-60 us here.
constexpr SpinPolicy kQueueSpin{std::chrono::microseconds(20), std::chrono::microseconds(200)};

// The spin of a wait never runs past its deadline.
SpinPolicy spin_policy(const Deadline &dl) {
    auto left = dl.remaining();
    auto pure = std::min(kQueueSpin.pure, left);
    return SpinPolicy{pure, std::min(kQueueSpin.yielding, left - pure)};
}

std::size_t stride_for(std::size_t max_message_size) {
    return round_up(sizeof(QueueSlot) + max_message_size, 64);
}

} // namespace

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
    std::uint32_t me = kNoClient;
    ForkStamp stamp;                     // of our registration
    std::atomic<bool> registered{false}; // in this process (a fork child re-registers)
    std::mutex register_mu;

    // Shared by the threads that use this handle, hence atomics (relaxed: hints only).
    std::atomic<std::int64_t> next_scan_ns{0}; // steady clock
    std::atomic<bool> orphan_seen{false};      // a dead consumer's message waits for a taker
    std::atomic<bool> closing{false};          // request_close(): waits of this handle end

    ~Impl() {
        if (registered.load(std::memory_order_relaxed) && !stamp.inherited())
            clients.unregister_client();
        forget_in_fork_children(lock_fd.get());
        lock_fd.reset(); // drops the client lock
        seg.reset();
    }

    QueueSlot *slot(std::uint64_t i) const noexcept {
        return reinterpret_cast<QueueSlot *>(slots + i * stride);
    }
    static std::byte *data(QueueSlot *s) noexcept { return reinterpret_cast<std::byte *>(s + 1); }

    // ---- clients --------------------------------------------------------------------------
    void ensure_registered() {
        if (registered.load(std::memory_order_acquire) && !stamp.inherited()) [[likely]]
            return;
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
        registered.store(true, std::memory_order_release);
    }

    void register_client() {
        // A dead client's slot may be taken over: its claims are repaired first, so a recycled
        // index never makes a dead claim look alive.
        me = clients.register_client(true, [&](std::uint32_t slot) {
            me = slot;
            repair_recycled_index();
        });
    }

    // A previous holder of our index is dead (we got its lock) but its claims still name the
    // index, which now looks alive: repair them before we make claims of our own.
    void repair_recycled_index() noexcept {
        for (std::uint64_t i = 0; i < cap; ++i) {
            auto &state = slot(i)->state;
            std::uint64_t st = state.load(std::memory_order_acquire);
            if (client_of(st) != me)
                continue;
            if (phase_of(st) == kWriting) {
                if (state.compare_exchange_strong(st, make_state(lap_of(st) + 1, kEmpty, 0),
                                                  std::memory_order_acq_rel))
                    wake_all();
            } else if (phase_of(st) == kReading) {
                // Hand the message to whichever consumer scans next.
                state.compare_exchange_strong(st, make_state(lap_of(st), kReading, kNoClient),
                                              std::memory_order_acq_rel);
            }
        }
    }

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
                             std::to_string(lap_of(st)) + ", far ahead of position " +
                             std::to_string(pos) + " (scribbled shared memory)");
    }

    void wake_all() noexcept {
        wake_if_waiting(ctl->not_empty);
        wake_if_waiting(ctl->not_full);
    }

    static void help_advance(std::atomic<std::uint64_t> &counter, std::uint64_t pos) noexcept {
        counter.compare_exchange_strong(pos, pos + 1, std::memory_order_acq_rel,
                                        std::memory_order_relaxed);
    }

    // Discards a half-written message of a dead producer. true if we did.
    bool discard(QueueSlot *s, std::uint64_t st) noexcept {
        if (!s->state.compare_exchange_strong(st, make_state(lap_of(st) + 1, kEmpty, 0),
                                              std::memory_order_acq_rel))
            return false;
        wake_all(); // the slot is free and the head may move on
        return true;
    }

    // ---- producer -------------------------------------------------------------------------
    bool try_put(const void *src, std::size_t n) {
        if (n > max_msg)
            throw InvalidArgument("message of " + std::to_string(n) +
                                  " bytes exceeds max_message_size (" + std::to_string(max_msg) +
                                  " bytes)");
        ensure_registered();
        seg.check_intact("message queue");
        for (unsigned round = 0; round < kMaxRounds; ++round) {
            std::uint64_t pos = ctl->tail.load(std::memory_order_acquire);
            std::uint64_t lap = pos / cap;
            QueueSlot *s = slot(pos % cap);
            std::uint64_t st = s->state.load(std::memory_order_acquire);
            std::int64_t d = lap_diff(lap_of(st), lap);
            if (d > 1) {
                // We may have been preempted between the two loads while the queue went round
                // many times: only a counter that has not moved proves the slot scribbled.
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
                    std::memcpy(dst, src, half);
                crash_point("queue.put.half");
                if (n - half)
                    std::memcpy(dst + half, static_cast<const std::byte *>(src) + half, n - half);
                s->length = static_cast<std::uint32_t>(n);
                // SYNC POINT: release pairs with the consumer's acquire of FULL (publishes
                // data and length).
                s->state.store(make_state(lap, kFull, 0), std::memory_order_release);
                wake_if_waiting(ctl->not_empty);
                return true;
            }
            if (d >= 0) { // position already claimed: help the tail past it
                help_advance(ctl->tail, pos);
                continue;
            }
            // The slot still holds the previous lap's message: full, unless our tail was stale.
            if (ctl->tail.load(std::memory_order_acquire) == pos)
                return false;
        }
        return false; // too much contention (or scribbled counters): the caller waits and retries
    }

    bool put_ready() const noexcept {
        std::uint64_t pos = ctl->tail.load(std::memory_order_acquire);
        std::uint64_t st = slot(pos % cap)->state.load(std::memory_order_acquire);
        return lap_diff(lap_of(st), pos / cap) >= 0;
    }

    // ---- consumer -------------------------------------------------------------------------
    // Delivers the message of a slot we hold in READING(lap, me).
    bool deliver(QueueSlot *s, std::uint64_t lap, Sink sink, void *ctx) {
        std::uint32_t n = s->length;
        if (n > max_msg) {
            s->state.store(make_state(lap + 1, kEmpty, 0), std::memory_order_release);
            wake_if_waiting(ctl->not_full);
            throw CorruptSegment("message queue '" + seg.name() + "': a slot claims " +
                                 std::to_string(n) + " bytes, more than max_message_size");
        }
        crash_point("queue.get.claimed");
        bool taken = sink(ctx, data(s), n);
        crash_point("queue.get.copied");
        if (!taken) {
            // Back to the queue: the next scanning consumer takes it over.
            s->state.store(make_state(lap, kReading, kNoClient), std::memory_order_release);
            orphan_seen.store(true, std::memory_order_relaxed);
            return true;
        }
        // SYNC POINT: release pairs with the producer's acquire of EMPTY in try_put.
        s->state.store(make_state(lap + 1, kEmpty, 0), std::memory_order_release);
        wake_if_waiting(ctl->not_full);
        return true;
    }

    bool try_get(Sink sink, void *ctx) {
        ensure_registered();
        seg.check_intact("message queue");
        for (unsigned round = 0; round < kMaxRounds; ++round) {
            std::uint64_t pos = ctl->head.load(std::memory_order_acquire);
            std::uint64_t lap = pos / cap;
            QueueSlot *s = slot(pos % cap);
            std::uint64_t st = s->state.load(std::memory_order_acquire);
            std::int64_t d = lap_diff(lap_of(st), lap);
            if (d > 1) {
                // We may have been preempted between the two loads while the queue went round
                // many times: only a counter that has not moved proves the slot scribbled.
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

    bool get_ready() const noexcept {
        std::uint64_t pos = ctl->head.load(std::memory_order_acquire);
        std::uint64_t st = slot(pos % cap)->state.load(std::memory_order_acquire);
        std::int64_t d = lap_diff(lap_of(st), pos / cap);
        if (d > 0 || (d == 0 && (phase_of(st) == kFull || phase_of(st) == kReading)))
            return true;
        return d == 0 && phase_of(st) == kWriting && committed_ahead(pos) != kNone;
    }

    static constexpr std::uint64_t kNone = ~std::uint64_t{0};

    // The first position after `head` (up to the tail, at most one lap) whose message is
    // committed (FULL of its lap), or kNone.
    std::uint64_t committed_ahead(std::uint64_t head) const noexcept {
        std::uint64_t tail = ctl->tail.load(std::memory_order_acquire);
        std::uint64_t n = tail - head;
        if (n > cap)
            n = cap; // a scribbled tail: never look further than one lap
        return first_committed(head + 1, head + n);
    }

    // The first position in [from, to) whose message is committed (FULL of its lap), or kNone.
    std::uint64_t first_committed(std::uint64_t from, std::uint64_t to) const noexcept {
        for (std::uint64_t pos = from; pos < to; ++pos) {
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
    std::uint64_t lowest_committed_ahead(std::uint64_t head) const noexcept {
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
    bool take_ahead(std::uint64_t head, Sink sink, void *ctx) {
        for (int attempt = 0; attempt < 4; ++attempt) {
            std::uint64_t pos = lowest_committed_ahead(head);
            if (pos == kNone)
                return false;
            QueueSlot *s = slot(pos % cap);
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

    // ---- repair of dead clients' claims ---------------------------------------------------
    struct Repair {
        std::size_t discarded = 0;
        bool delivered = false;
    };

    bool scan_due() {
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
    Repair scan(Sink sink, void *ctx) {
        Repair r;
        orphan_seen.store(false, std::memory_order_relaxed);
        for (std::uint64_t i = 0; i < cap; ++i) {
            QueueSlot *s = slot(i);
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

    // ---- waiting --------------------------------------------------------------------------
    WaitResult wait_put_ready(const Deadline &dl) {
        ensure_registered();
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

    void check_closing() const {
        if (closing.load(std::memory_order_relaxed))
            throw Closed("message queue '" + seg.name() + "' was closed while waiting");
    }

    WaitResult wait_get_ready(const Deadline &dl) {
        ensure_registered();
        auto ready = [&] { return orphan_seen.load(std::memory_order_relaxed) || get_ready(); };
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
};

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
    notify_all(impl_->ctl->not_empty);
    notify_all(impl_->ctl->not_full);
}

} // namespace shmipc
