// A single-producer/single-consumer ring of small fixed-size records in shared memory.
//
// Layout (every line 64 bytes; the records follow the control block):
//
//   +--------------------+  line 0: magic, layout, capacity, mask   (written once by init)
//   | SpscRingControl    |  line 1: head   (producer writes, consumer reads)  + closed flag
//   |                    |  line 2: tail   (consumer writes, producer reads)
//   |                    |  line 3: not_empty FutexWord (consumer sleeps on it)
//   |                    |  line 4: not_full  FutexWord (producer sleeps on it)
//   +--------------------+
//   | RingRecord[mask+1] |  32 bytes each: two per cache line
//   +--------------------+
//
// head and tail are 64-bit monotonic counters (never wrap in practice: 2^64 records); a record
// index i lives in slot i & mask. Records [tail, head) are queued. Each side keeps a private,
// process-local copy of the other side's index (SpscProducer::cached_tail_,
// SpscConsumer::cached_head_) and reloads it only when its copy says full/empty, so in steady
// state a push touches only the producer's line and the slot.
//
// Waking: a side that finds the ring full/empty spins for a while (cheap while the peer is awake
// on the other core), then announces itself on a FutexWord and sleeps in slices. The other side
// makes the FUTEX_WAKE syscall only if a sleeper announced itself: the fast path is one fence and
// one load of a line that is read-mostly.
//
// Everything here is offsets-free: the ring addresses only itself, so it can live anywhere in a
// shared mapping (the channel places it inside a heap block).
#pragma once

#include "ipc_core/sync/waiter.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <sched.h>
#include <type_traits>

namespace shmipc {

inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::uint64_t kRingMagic = 0x31474e4952435053ULL; // "SPSCRNG1" little endian
inline constexpr std::uint32_t kRingLayoutVersion = 1;
// Upper bound on capacity: keeps the slot array (32 B each) under 512 MiB and any corrupt
// capacity from making us index far outside the mapping.
inline constexpr std::uint32_t kRingMaxCapacity = 1u << 24;

// One queued item. The ring does not interpret the fields; the channel stores a heap offset, a
// length in bytes, a kind tag and a kind-specific extra word (e.g. the offset of array metadata).
struct RingRecord {
    std::uint64_t offset;
    std::uint64_t length;
    std::uint64_t tag;
    std::uint64_t aux;
};
static_assert(sizeof(RingRecord) == 32);
static_assert(std::is_trivially_copyable_v<RingRecord>);

struct alignas(kCacheLine) SpscRingControl {
    // --- line 0: constant after init -------------------------------------------------------
    std::uint64_t magic;          // kRingMagic
    std::uint32_t layout_version; // kRingLayoutVersion
    std::uint32_t capacity;       // records, 1..kRingMaxCapacity (need not be a power of two)
    std::uint64_t mask;           // slots - 1; slots is the power of two >= capacity
    std::uint64_t reserved0[5];
    // --- line 1: producer side --------------------------------------------------------------
    alignas(kCacheLine) std::atomic<std::uint64_t> head; // next index to write; producer only
    std::atomic<std::uint32_t> closed;                   // 1 = no record after head; producer only
    // --- line 2: consumer side --------------------------------------------------------------
    alignas(kCacheLine) std::atomic<std::uint64_t> tail; // next index to read; consumer only
    // --- lines 3 and 4: sleepers ------------------------------------------------------------
    alignas(kCacheLine) FutexWord not_empty; // consumer sleeps here, producer wakes
    alignas(kCacheLine) FutexWord not_full;  // producer sleeps here, consumer wakes

    [[nodiscard]] RingRecord *slots() noexcept { return reinterpret_cast<RingRecord *>(this + 1); }
    [[nodiscard]] std::uint64_t size_approx() const noexcept;
};
static_assert(std::is_standard_layout_v<SpscRingControl>);
static_assert(sizeof(SpscRingControl) == 5 * kCacheLine);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

// Bytes needed for a ring of `capacity` records (control + slots). Throws InvalidArgument
// for a capacity outside 1..kRingMaxCapacity.
[[nodiscard]] std::size_t spsc_ring_bytes(std::uint64_t capacity);
// Builds an empty ring in `mem` (kCacheLine aligned, spsc_ring_bytes(capacity) bytes).
SpscRingControl *spsc_ring_init(void *mem, std::uint64_t capacity);
// Geometry of a validated ring, kept privately by each side: the shared copies of capacity and
// mask are never re-read for indexing (a peer could scribble over them).
struct RingGeometry {
    std::uint64_t capacity = 0; // records
    std::uint64_t mask = 0;     // slots - 1
};
// Checks a ring someone else built before trusting it: magic, version, capacity, mask, and that
// it fits in `avail` bytes; also that head - tail is sane. Throws CorruptSegment.
SpscRingControl *spsc_ring_validate(void *mem, std::size_t avail);
// The geometry of a ring (re-checks capacity against mask). Throws CorruptSegment.
[[nodiscard]] RingGeometry spsc_ring_geometry(const SpscRingControl *ring);

// The producer's process-local view of a ring. One live SpscProducer per ring at a time (the
// channel enforces it); it is cheap to construct, so a new producer can take over after the old
// one went away.
class SpscProducer {
  public:
    SpscProducer() = default;
    SpscProducer(SpscRingControl *ring, RingGeometry g) noexcept
        : ring_(ring), cap_(g.capacity), mask_(g.mask),
          // SYNC POINT: acquire, pairs with the consumer's release stores of tail: slots below it
          // are free to reuse.
          cached_tail_(ring->tail.load(std::memory_order_acquire)) {}
    explicit SpscProducer(SpscRingControl *ring) : SpscProducer(ring, spsc_ring_geometry(ring)) {}

    // Appends one record; false if the ring is full. Wakes a sleeping consumer.
    [[nodiscard]] bool try_push(const RingRecord &rec) noexcept {
        if (!try_push_quiet(rec))
            return false;
        // SYNC POINT: futex wake of not_empty after the release store of head in try_push_quiet:
        // pairs with the consumer's wait (Channel::wait_on).
        wake_if_waiting(ring_->not_empty);
        return true;
    }
    // Appends up to n records in order (one wake-up for all); returns how many fit.
    [[nodiscard]] std::size_t try_push_many(const RingRecord *recs, std::size_t n) noexcept;
    // Records that can be pushed without waiting (refreshes the cached tail).
    [[nodiscard]] std::uint64_t free_slots() noexcept;
    // True if a push would not block right now (refreshing the cached tail if needed).
    [[nodiscard]] bool writable() noexcept;
    // End of stream: the consumer drains what is queued, then sees closed_and_empty().
    void close() noexcept;

    [[nodiscard]] SpscRingControl *ring() const noexcept { return ring_; }

  private:
    bool try_push_quiet(const RingRecord &rec) noexcept;
    bool refresh_tail_has_room(std::uint64_t head) noexcept;

    SpscRingControl *ring_ = nullptr;
    std::uint64_t cap_ = 0;         // private, validated
    std::uint64_t mask_ = 0;        // private, validated
    std::uint64_t cached_tail_ = 0; // producer's copy of ring_->tail; never ahead of it
};

// The consumer's process-local view of a ring.
class SpscConsumer {
  public:
    SpscConsumer() = default;
    SpscConsumer(SpscRingControl *ring, RingGeometry g) noexcept
        // SYNC POINT: acquire, pairs with the producer's release stores of head: the records below
        // it are written.
        : ring_(ring), mask_(g.mask), cached_head_(ring->head.load(std::memory_order_acquire)) {}
    explicit SpscConsumer(SpscRingControl *ring) : SpscConsumer(ring, spsc_ring_geometry(ring)) {}

    // Removes the oldest record into `out`; false if the ring is empty. Wakes a sleeping producer.
    [[nodiscard]] bool try_pop(RingRecord &out) noexcept;
    // Removes up to `max` records in order (one wake-up for all); returns how many.
    [[nodiscard]] std::size_t try_pop_many(RingRecord *out, std::size_t max) noexcept;
    // The oldest record without removing it, or nullptr if empty (pop() removes it).
    [[nodiscard]] const RingRecord *front() noexcept;
    void pop() noexcept;
    // Batches that read each slot in place before letting the producer reuse it: how many
    // records are queued (at most `max` and the ring's size), the i-th of them, then pop_n.
    [[nodiscard]] std::size_t peek_count(std::size_t max) noexcept;
    [[nodiscard]] const RingRecord &peek(std::size_t i) const noexcept {
        return ring_->slots()[(ring_->tail.load(std::memory_order_relaxed) + i) & mask_];
    }
    // Slot index (for per-slot side arrays) of the i-th queued record.
    [[nodiscard]] std::uint64_t peek_slot(std::size_t i) const noexcept {
        return (ring_->tail.load(std::memory_order_relaxed) + i) & mask_;
    }
    void pop_n(std::size_t n) noexcept;
    // True if a pop would not block right now.
    [[nodiscard]] bool readable() noexcept;
    // The producer closed and every record before the close was consumed.
    [[nodiscard]] bool closed_and_empty() noexcept;

    [[nodiscard]] SpscRingControl *ring() const noexcept { return ring_; }

  private:
    SpscRingControl *ring_ = nullptr;
    std::uint64_t mask_ = 0;        // private, validated
    std::uint64_t cached_head_ = 0; // consumer's copy of ring_->head; never ahead of it
};

// --- hot paths, inline --------------------------------------------------------------------

inline bool SpscProducer::refresh_tail_has_room(std::uint64_t head) noexcept {
    // SYNC POINT: pairs with the tail.store(release) in SpscConsumer::try_pop / pop: the consumer
    // is done reading every slot below tail, so we may overwrite them.
    cached_tail_ = ring_->tail.load(std::memory_order_acquire);
    return head - cached_tail_ < cap_;
}

inline bool SpscProducer::try_push_quiet(const RingRecord &rec) noexcept {
    // Relaxed: only this producer writes head.
    const std::uint64_t head = ring_->head.load(std::memory_order_relaxed);
    if (head - cached_tail_ >= cap_ && !refresh_tail_has_room(head))
        return false;
    ring_->slots()[head & mask_] = rec;
    // SYNC POINT: pairs with the head.load(acquire) in SpscConsumer: the slot is written first.
    ring_->head.store(head + 1, std::memory_order_release);
    return true;
}

inline bool SpscConsumer::try_pop(RingRecord &out) noexcept {
    const RingRecord *rec = front();
    if (rec == nullptr)
        return false;
    out = *rec;
    pop();
    return true;
}

inline const RingRecord *SpscConsumer::front() noexcept {
    // Relaxed: only this consumer writes tail.
    const std::uint64_t tail = ring_->tail.load(std::memory_order_relaxed);
    if (tail == cached_head_) {
        // SYNC POINT: pairs with the head.store(release) in SpscProducer::try_push_quiet.
        cached_head_ = ring_->head.load(std::memory_order_acquire);
        if (tail == cached_head_)
            return nullptr;
    }
    return &ring_->slots()[tail & mask_];
}

inline std::size_t SpscConsumer::peek_count(std::size_t max) noexcept {
    const std::uint64_t tail = ring_->tail.load(std::memory_order_relaxed);
    if (cached_head_ - tail < max) {
        // SYNC POINT: pairs with the head.store(release) in SpscProducer::try_push_quiet.
        cached_head_ = ring_->head.load(std::memory_order_acquire);
    }
    std::uint64_t avail = cached_head_ - tail;
    if (avail > mask_ + 1)
        avail = mask_ + 1; // a scribbled head: never more than the ring holds
    return avail < max ? static_cast<std::size_t>(avail) : max;
}

inline void SpscConsumer::pop_n(std::size_t n) noexcept {
    if (n == 0)
        return;
    const std::uint64_t tail = ring_->tail.load(std::memory_order_relaxed);
    // SYNC POINT: as in pop(): our reads of the n slots happen before the producer reuses them.
    ring_->tail.store(tail + n, std::memory_order_release);
    // SYNC POINT: futex wake of not_full after the release store of tail: pairs with the producer's
    // wait (Channel::wait_on).
    wake_if_waiting(ring_->not_full);
}

inline void SpscConsumer::pop() noexcept {
    const std::uint64_t tail = ring_->tail.load(std::memory_order_relaxed);
    // SYNC POINT: pairs with the tail.load(acquire) in SpscProducer::refresh_tail_has_room: our
    // read of the slot happens before the producer may reuse it.
    ring_->tail.store(tail + 1, std::memory_order_release);
    // SYNC POINT: futex wake of not_full after the release store of tail, as in pop_n.
    wake_if_waiting(ring_->not_full);
}

} // namespace shmipc
