#include "ipc_core/channel/spsc_ring.hpp"

#include "ipc_core/base/errors.hpp"

#include <bit>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

namespace shmipc {

std::uint64_t SpscRingControl::size_approx() const noexcept {
    // Read tail first: head only grows, so head - tail can overestimate but never underflow.
    // SYNC POINT: acquire (both), pairs with the release stores of tail (consumer) and head
    // (producer).
    const std::uint64_t t = tail.load(std::memory_order_acquire);
    const std::uint64_t h = head.load(std::memory_order_acquire);
    return h >= t ? h - t : 0;
}

std::size_t spsc_ring_bytes(std::uint64_t capacity) {
    if (capacity < 1 || capacity > kRingMaxCapacity)
        throw InvalidArgument("channel capacity must be in 1.." + std::to_string(kRingMaxCapacity) +
                              ", got " + std::to_string(capacity));
    return sizeof(SpscRingControl) + std::bit_ceil(capacity) * sizeof(RingRecord);
}

SpscRingControl *spsc_ring_init(void *mem, std::uint64_t capacity) {
    const std::size_t bytes = spsc_ring_bytes(capacity);
    std::memset(mem, 0, bytes);
    auto *r = new (mem) SpscRingControl{};
    r->magic = kRingMagic;
    r->layout_version = kRingLayoutVersion;
    r->capacity = static_cast<std::uint32_t>(capacity);
    r->mask = std::bit_ceil(capacity) - 1;
    return r;
}

RingGeometry spsc_ring_geometry(const SpscRingControl *r) {
    const std::uint64_t cap = r->capacity, mask = r->mask;
    if (cap < 1 || cap > kRingMaxCapacity || mask + 1 != std::bit_ceil(cap))
        throw CorruptSegment("channel ring has an impossible capacity/mask");
    return RingGeometry{cap, mask};
}

SpscRingControl *spsc_ring_validate(void *mem, std::size_t avail) {
    if (avail < sizeof(SpscRingControl))
        throw CorruptSegment("channel ring is truncated");
    auto *r = static_cast<SpscRingControl *>(mem);
    if (r->magic != kRingMagic)
        throw CorruptSegment("channel ring has a wrong magic number");
    if (r->layout_version != kRingLayoutVersion)
        throw CorruptSegment("channel ring layout version " + std::to_string(r->layout_version) +
                             " is not the supported " + std::to_string(kRingLayoutVersion));
    const std::uint64_t slots = r->mask + 1;
    if (r->capacity < 1 || r->capacity > kRingMaxCapacity || !std::has_single_bit(slots) ||
        slots != std::bit_ceil(std::uint64_t{r->capacity}))
        throw CorruptSegment("channel ring has an impossible capacity/mask");
    if (spsc_ring_bytes(r->capacity) > avail)
        throw CorruptSegment("channel ring does not fit in its block");
    // SYNC POINT: acquire (both), pairs with the release stores of tail and head by the
    // endpoints; validated once here, then each side tracks its own index privately.
    const std::uint64_t t = r->tail.load(std::memory_order_acquire);
    const std::uint64_t h = r->head.load(std::memory_order_acquire);
    if (h < t || h - t > r->capacity)
        throw CorruptSegment("channel ring indices are corrupt");
    return r;
}

std::size_t SpscProducer::try_push_many(const RingRecord *recs, std::size_t n) noexcept {
    const std::uint64_t head = ring_->head.load(std::memory_order_relaxed);
    std::uint64_t room = cap_ - (head - cached_tail_);
    if (room < n) {
        (void)refresh_tail_has_room(head);
        room = cap_ - (head - cached_tail_);
    }
    const std::size_t k = n < room ? n : static_cast<std::size_t>(room);
    if (k == 0)
        return 0;
    RingRecord *slots = ring_->slots();
    for (std::size_t i = 0; i < k; ++i)
        slots[(head + i) & mask_] = recs[i];
    // SYNC POINT: pairs with the head.load(acquire) in SpscConsumer::front / try_pop_many.
    ring_->head.store(head + k, std::memory_order_release);
    // SYNC POINT: futex wake of not_empty after the release store of head: pairs with the
    // consumer's wait (Channel::wait_on), whose predicate reloads head (acquire).
    wake_if_waiting(ring_->not_empty);
    return k;
}

std::uint64_t SpscProducer::free_slots() noexcept {
    const std::uint64_t head = ring_->head.load(std::memory_order_relaxed);
    (void)refresh_tail_has_room(head);
    return cap_ - (head - cached_tail_);
}

bool SpscProducer::writable() noexcept {
    const std::uint64_t head = ring_->head.load(std::memory_order_relaxed);
    return head - cached_tail_ < cap_ || refresh_tail_has_room(head);
}

void SpscProducer::close() noexcept {
    // SYNC POINT: pairs with the closed.load(acquire) in SpscConsumer::closed_and_empty: every
    // head store before the close is visible to a consumer that sees closed == 1.
    ring_->closed.store(1, std::memory_order_release);
    // SYNC POINT: futex wake of not_empty after the release store of closed: pairs with the
    // consumer's wait, whose predicate reloads closed (acquire).
    wake_if_waiting(ring_->not_empty);
}

std::size_t SpscConsumer::try_pop_many(RingRecord *out, std::size_t max) noexcept {
    const std::uint64_t tail = ring_->tail.load(std::memory_order_relaxed);
    if (cached_head_ - tail < max) {
        // SYNC POINT: pairs with the head.store(release) in SpscProducer.
        cached_head_ = ring_->head.load(std::memory_order_acquire);
    }
    const std::uint64_t avail = cached_head_ - tail;
    const std::size_t k = avail < max ? static_cast<std::size_t>(avail) : max;
    if (k == 0)
        return 0;
    const RingRecord *slots = ring_->slots();
    for (std::size_t i = 0; i < k; ++i)
        out[i] = slots[(tail + i) & mask_];
    // SYNC POINT: pairs with the tail.load(acquire) in SpscProducer::refresh_tail_has_room.
    ring_->tail.store(tail + k, std::memory_order_release);
    // SYNC POINT: futex wake of not_full after the release store of tail: pairs with the producer's
    // wait, whose predicate reloads tail (acquire).
    wake_if_waiting(ring_->not_full);
    return k;
}

bool SpscConsumer::readable() noexcept {
    return front() != nullptr;
}

bool SpscConsumer::closed_and_empty() noexcept {
    // SYNC POINT: acquire, pairs with the release store of closed in SpscProducer::close.
    if (ring_->closed.load(std::memory_order_acquire) == 0)
        return false;
    // closed was stored after the last head, so this reload sees every record ever pushed.
    return front() == nullptr;
}

} // namespace shmipc
