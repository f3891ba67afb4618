// Internal to topic/: TopicRef, the shared part of a publisher and a subscriber handle (the
// validated topic, its lock and the bookkeeping both roles do with the lock held), Held (a
// movable held topic lock) and the constants of the topic's waits. Not part of any API.
//
// Where the code is:
//   topic_ref.cpp        open/create and attach-time validation; sample headers and references
//   topic_recovery.cpp   dead subscribers reaped; a dead lock holder's half-done change repaired
//   topic_publisher.cpp  TopicPublisher
//   topic_subscriber.cpp TopicSubscriber
//   topic_admin.cpp      list_topics, remove_topic
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/sync/robust_mutex.hpp"
#include "ipc_core/sync/waiter.hpp"
#include "ipc_core/topic/topic.hpp"
#include "ipc_core/topic/topic_layout.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace shmipc {

namespace topic_detail {

// Dead subscribers are looked for this often while the publisher publishes.
inline constexpr std::chrono::milliseconds kReapEvery{250};
// Pure spinning before a wait starts yielding the core between checks.
inline constexpr std::chrono::microseconds kYieldAfter{1};
// Releases made from destructors (and the GC of a Block) wait this long for the topic lock.
inline constexpr double kReleaseLockWait = 5.0;

inline SpinPolicy spin_policy(std::chrono::nanoseconds spin, const Deadline &d) {
    spin = std::min(spin, d.remaining());
    const std::chrono::nanoseconds pure = std::min<std::chrono::nanoseconds>(spin, kYieldAfter);
    return SpinPolicy{pure, spin - pure};
}

// A held topic lock (movable, unlike RobustLock): released on destruction or reset().
class Held {
  public:
    Held() = default;
    explicit Held(RobustMutex &m) noexcept : m_(&m) {}
    Held(Held &&o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    Held &operator=(Held &&o) noexcept {
        reset();
        m_ = std::exchange(o.m_, nullptr);
        return *this;
    }
    Held(const Held &) = delete;
    Held &operator=(const Held &) = delete;
    ~Held() { reset(); }
    void reset() noexcept {
        if (m_)
            // SYNC POINT: release of the topic lock: pairs with the acquire of the next
            // lock()/try_lock(); publishes every change made while it was held.
            std::exchange(m_, nullptr)->unlock();
    }
    explicit operator bool() const noexcept { return m_ != nullptr; }

  private:
    RobustMutex *m_ = nullptr;
};

// The shared part of a publisher or subscriber handle: the validated topic and its lock.
class TopicRef {
  public:
    // The topic `name` of `heap`; created with *create if absent and create is not null
    // (topic_ref.cpp).
    static std::unique_ptr<TopicRef> open(Heap &heap, std::string_view name,
                                          const TopicOptions *create);

    Heap &heap;
    std::string name;
    std::uint64_t offset;
    TopicControl *ctl;
    TopicGeometry g;
    RobustMutex mu;

    [[nodiscard]] std::string what() const { return "topic '" + name + "'"; }
    [[nodiscard]] TopicSlot &slot(std::uint64_t seq) const noexcept {
        return reinterpret_cast<TopicSlot *>(ctl + 1)[seq % g.slots];
    }
    [[nodiscard]] SubscriberSlot &sub(std::uint32_t i) const noexcept {
        return *reinterpret_cast<SubscriberSlot *>(reinterpret_cast<std::byte *>(ctl) +
                                                   g.subs_offset + std::size_t{i} * g.sub_bytes);
    }
    // Slots worth scanning: [0, limit()). A scribbled one that hides a subscriber shows later as
    // its cursor outside the ring (CorruptSegment).
    [[nodiscard]] std::uint32_t limit() const noexcept {
        // SYNC POINT: acquire, pairs with the release store in subscribe().
        const std::uint32_t n = ctl->sub_limit.load(std::memory_order_acquire);
        return n < g.max_subscribers ? n : g.max_subscribers;
    }
    [[nodiscard]] bool holder_alive(std::uint32_t token) const {
        return token != 0 && heap.clients().holder(token) == HolderState::Alive;
    }

    // The topic lock; a dead holder's half-done change is repaired first (recover()).
    [[nodiscard]] Held lock(const Deadline &d) {
        // SYNC POINT: acquire of the topic lock (robust mutex): pairs with the release in
        // Held::reset() of the previous holder; taken over from a dead holder, recover() runs
        // first.
        mu.lock(heap.lock_token(), d, [this] { recover(); });
        return Held(mu);
    }
    // An empty Held if a live holder has it now.
    [[nodiscard]] Held try_lock() {
        // SYNC POINT: acquire of the topic lock, as in lock(), without waiting.
        if (!mu.try_lock(heap.lock_token(), [this] { recover(); }))
            return Held();
        return Held(mu);
    }

    // --- with the lock held (topic_ref.cpp) -------------------------------------------------

    // A sample header read from shared memory, checked (CorruptSegment otherwise).
    SampleHeader *header(std::uint64_t off);
    bool header_ok(std::uint64_t off) noexcept;
    // Drops one reference; the last frees the sample.
    void drop_ref(std::uint64_t off);
    void free_sample(std::uint64_t off, SampleHeader *h);
    // Frees what is left of a sample no list references any more (recovery).
    void finish_free(std::uint64_t off) noexcept;
    // Releases everything subscriber slot i holds and frees the slot.
    void clear_subscriber(std::uint32_t i);

    // --- with the lock held (topic_recovery.cpp) --------------------------------------------

    // Subscribers whose process is gone: their references are released and their slots freed.
    // `only_full`: look only at those that block the publisher (fewer liveness syscalls).
    std::uint32_t reap_dead_locked(bool only_full);
    // After taking the lock over from a dead holder: recount the references from the ring and
    // the held lists, and finish the operation the holder had announced.
    void recover();

  private:
    // Attach: validates the control block at `off` into private geometry (topic_ref.cpp).
    TopicRef(Heap &h, std::string n, std::uint64_t off);
};

[[noreturn]] inline void corrupt(const TopicRef &t, const char *why) {
    throw CorruptSegment(t.what() + ": " + why);
}

} // namespace topic_detail

} // namespace shmipc
