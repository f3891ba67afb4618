// Topics (topic.hpp): opening or creating a topic and validating its control block at attach
// (TopicRef::open and the constructor), and the sample bookkeeping both roles share with the topic
// lock held: header checks, references dropped, samples freed, a subscriber slot cleared. Layout:
// topic_layout.hpp; the class: topic_ref.hpp.
#include "ipc_core/topic/topic_ref.hpp"

#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <cerrno>
#include <optional>
#include <string>
#include <utility>

namespace shmipc {

namespace topic_detail {

namespace {

constexpr std::size_t round64(std::size_t n) {
    return (n + 63) / 64 * 64;
}

TopicGeometry geometry_for(std::uint32_t capacity, std::uint32_t history, Overflow overflow,
                           std::uint32_t max_subscribers, std::uint32_t max_held) {
    TopicGeometry g;
    g.capacity = capacity;
    g.history = history;
    g.slots = std::max(capacity, history);
    g.overflow = overflow;
    g.max_subscribers = max_subscribers;
    g.max_held = max_held;
    g.sub_bytes = round64(sizeof(SubscriberSlot) + std::size_t{max_held} * sizeof(std::uint64_t));
    g.subs_offset = sizeof(TopicControl) + round64(std::size_t{g.slots} * sizeof(TopicSlot));
    g.total = g.subs_offset + std::size_t{max_subscribers} * g.sub_bytes;
    return g;
}

TopicGeometry checked_options(const TopicOptions &o) {
    if (o.capacity < 1 || o.capacity > kTopicMaxCapacity)
        throw InvalidArgument("topic capacity must be 1.." + std::to_string(kTopicMaxCapacity) +
                              ", got " + std::to_string(o.capacity));
    if (o.history > kTopicMaxCapacity)
        throw InvalidArgument("topic history must be 0.." + std::to_string(kTopicMaxCapacity) +
                              ", got " + std::to_string(o.history));
    if (o.overflow != Overflow::Block && o.overflow != Overflow::DropOldest)
        throw InvalidArgument("topic overflow must be block or drop_oldest");
    if (o.max_subscribers < 1 || o.max_subscribers > kTopicMaxSubscribers)
        throw InvalidArgument("max_subscribers must be 1.." + std::to_string(kTopicMaxSubscribers) +
                              ", got " + std::to_string(o.max_subscribers));
    std::uint32_t held = o.max_held;
    if (held == 0)
        held = std::max<std::uint32_t>(64, std::min(kTopicMaxHeld, o.capacity + o.history));
    if (held > kTopicMaxHeld)
        throw InvalidArgument("max_held must be 1.." + std::to_string(kTopicMaxHeld));
    return geometry_for(o.capacity, o.history, o.overflow, o.max_subscribers, held);
}

} // namespace

std::unique_ptr<TopicRef> TopicRef::open(Heap &heap, std::string_view name,
                                         const TopicOptions *create) {
    if (name.empty() || name.size() > kMaxNamedLength)
        throw InvalidArgument("a topic name is 1.." + std::to_string(kMaxNamedLength) +
                              " bytes, got " + std::to_string(name.size()));
    auto existing = [&]() -> std::optional<NamedInfo> {
        auto info = heap.find_named(name);
        if (info && info->kind != kNamedTopic)
            throw InvalidArgument("'" + std::string(name) +
                                  "' names another kind of object in this heap, not a topic");
        return info;
    };
    std::uint64_t off = 0;
    if (auto info = existing()) {
        off = info->offset;
    } else if (!create) {
        throw OsError(ENOENT, "topic '" + std::string(name) + "' does not exist");
    } else {
        const TopicGeometry g = checked_options(*create);
        try {
            off = heap.find_or_create_named(
                          name, g.total,
                          [&](void *p) {
                              auto *c = static_cast<TopicControl *>(p); // zero-filled
                              c->magic = kTopicMagic;
                              c->layout_version = kTopicLayoutVersion;
                              c->capacity = g.capacity;
                              c->history = g.history;
                              c->slots = g.slots;
                              c->overflow = static_cast<std::uint32_t>(g.overflow);
                              c->max_subscribers = g.max_subscribers;
                              c->max_held = g.max_held;
                              auto *ring = reinterpret_cast<TopicSlot *>(c + 1);
                              for (std::uint32_t i = 0; i < g.slots; ++i)
                                  ring[i].seq.store(kNoSeq, std::memory_order_relaxed);
                          },
                          kNamedTopic)
                      .first;
        } catch (const InvalidArgument &) {
            // Another process created it first, smaller: use theirs.
            auto theirs = existing();
            if (!theirs)
                throw;
            off = theirs->offset;
        }
    }
    return std::unique_ptr<TopicRef>(new TopicRef(heap, std::string(name), off));
}

TopicRef::TopicRef(Heap &h, std::string n, std::uint64_t off)
    : heap(h), name(std::move(n)), offset(off), ctl(static_cast<TopicControl *>(h.to_ptr(off))),
      mu() {
    const std::size_t avail = heap.block_capacity(off);
    auto bad = [&](const char *why) {
        throw CorruptSegment(what() + " has a corrupt control block (" + why + ")");
    };
    if (avail < sizeof(TopicControl))
        bad("too small");
    if (ctl->magic != kTopicMagic || ctl->layout_version != kTopicLayoutVersion)
        bad("magic or layout version");
    struct {
        std::uint32_t capacity, history, slots, overflow, max_subscribers, max_held;
    } const c{ctl->capacity, ctl->history,         ctl->slots,
              ctl->overflow, ctl->max_subscribers, ctl->max_held};
    if (c.capacity < 1 || c.capacity > kTopicMaxCapacity || c.history > kTopicMaxCapacity ||
        c.slots != std::max(c.capacity, c.history))
        bad("capacity, history or slots");
    if (c.overflow != static_cast<std::uint32_t>(Overflow::Block) &&
        c.overflow != static_cast<std::uint32_t>(Overflow::DropOldest))
        bad("overflow policy");
    if (c.max_subscribers < 1 || c.max_subscribers > kTopicMaxSubscribers || c.max_held < 1 ||
        c.max_held > kTopicMaxHeld)
        bad("subscriber geometry");
    g = geometry_for(c.capacity, c.history, static_cast<Overflow>(c.overflow), c.max_subscribers,
                     c.max_held);
    if (g.total > avail)
        bad("larger than its block");
    mu = RobustMutex(ctl->lock, heap.clients(), what());
    mu.validate();
}

// A sample header read from shared memory, checked (CorruptSegment otherwise).
SampleHeader *TopicRef::header(std::uint64_t off) {
    std::size_t cap = 0;
    try {
        cap = heap.block_capacity(off);
    } catch (const InvalidArgument &) {
        throw CorruptSegment(what() + " names a sample that is not a heap block");
    }
    auto *h = static_cast<SampleHeader *>(heap.to_ptr(off));
    if (cap < sizeof(SampleHeader) || h->magic != kSampleMagic || h->meta_length > kTopicMaxMeta ||
        sizeof(SampleHeader) + h->meta_length > cap)
        throw CorruptSegment(what() + " has a corrupt sample header");
    return h;
}
bool TopicRef::header_ok(std::uint64_t off) noexcept {
    try {
        (void)header(off);
        return true;
    } catch (...) {
        return false;
    }
}

// Drops one reference; the last frees the sample.
void TopicRef::drop_ref(std::uint64_t off) {
    SampleHeader *h = header(off);
    const std::uint32_t r = h->refs.load(std::memory_order_relaxed);
    if (r == 0)
        throw CorruptSegment(what() + ": a sample's reference count is corrupt");
    h->refs.store(r - 1, std::memory_order_relaxed);
    if (r == 1)
        free_sample(off, h);
}

void TopicRef::free_sample(std::uint64_t off, SampleHeader *h) {
    ctl->freeing.store(off, std::memory_order_relaxed);
    h->state.store(kSampleFreeing, std::memory_order_relaxed);
    try {
        heap.deallocate(h->data);
    } catch (const InvalidArgument &) {
        // Scribbled data offset: nothing of ours to free there.
    }
    heap.deallocate(off);
    ctl->freeing.store(0, std::memory_order_relaxed);
}

// Frees what is left of a sample no list references any more (recovery).
void TopicRef::finish_free(std::uint64_t off) noexcept {
    try {
        if (heap.owner_of(off) != kOwnerHeld || !header_ok(off))
            return; // freed already, or still the (dead) publisher's: the heap reaps it
        auto *h = static_cast<SampleHeader *>(heap.to_ptr(off));
        const std::uint64_t data = h->data;
        try {
            // Not held: the publisher died before moving the data (topic_publisher.cpp,
            // publish_locked); the heap reaps it with the dead client's blocks.
            if (data && heap.owner_of(data) == kOwnerHeld)
                heap.deallocate(data);
        } catch (...) {
        }
        heap.deallocate(off);
    } catch (...) {
    }
}

// Releases everything subscriber slot i holds and frees the slot.
void TopicRef::clear_subscriber(std::uint32_t i) {
    SubscriberSlot &s = sub(i);
    // SYNC POINT: release (the topic lock held), pairs with the acquire loads of state in
    // has_room() and reap_dead_locked(): the slot no longer counts for the overflow policy.
    s.state.store(kSubFree, std::memory_order_release);
    auto *held = s.held();
    for (std::uint32_t k = 0; k < g.max_held; ++k) {
        const std::uint64_t h = held[k].exchange(0, std::memory_order_relaxed);
        if (h) {
            try {
                drop_ref(h);
            } catch (const CorruptSegment &) {
                // A scribbled entry: nothing we can release there.
            }
        }
    }
    s.held_count.store(0, std::memory_order_relaxed);
    s.token.store(0, std::memory_order_relaxed);
}

} // namespace topic_detail

} // namespace shmipc
