#include "ipc_core/topic/topic.hpp"

#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <unordered_map>

namespace shmipc {

namespace topic_detail {

namespace {

constexpr std::size_t round64(std::size_t n) {
    return (n + 63) / 64 * 64;
}

// Dead subscribers are looked for this often while the publisher publishes.
constexpr std::chrono::milliseconds kReapEvery{250};
// Pure spinning before a wait starts yielding the core between checks.
constexpr std::chrono::microseconds kYieldAfter{1};
// Releases made from destructors (and the GC of a Block) wait this long for the topic lock.
constexpr double kReleaseLockWait = 5.0;

SpinPolicy spin_policy(std::chrono::nanoseconds spin, const Deadline &d) {
    spin = std::min(spin, d.remaining());
    const std::chrono::nanoseconds pure = std::min<std::chrono::nanoseconds>(spin, kYieldAfter);
    return SpinPolicy{pure, spin - pure};
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
        throw InvalidArgument("max_subscribers must be 1.." +
                              std::to_string(kTopicMaxSubscribers) + ", got " +
                              std::to_string(o.max_subscribers));
    std::uint32_t held = o.max_held;
    if (held == 0)
        held = std::max<std::uint32_t>(64, std::min(kTopicMaxHeld, o.capacity + o.history));
    if (held > kTopicMaxHeld)
        throw InvalidArgument("max_held must be 1.." + std::to_string(kTopicMaxHeld));
    return geometry_for(o.capacity, o.history, o.overflow, o.max_subscribers, held);
}

} // namespace

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
            std::exchange(m_, nullptr)->unlock();
    }
    explicit operator bool() const noexcept { return m_ != nullptr; }

  private:
    RobustMutex *m_ = nullptr;
};

// The shared part of a publisher or subscriber handle: the validated topic and its lock.
class TopicRef {
  public:
    static std::unique_ptr<TopicRef> open(Heap &heap, std::string_view name,
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
        mu.lock(heap.lock_token(), d, [this] { recover(); });
        return Held(mu);
    }
    // An empty Held if a live holder has it now.
    [[nodiscard]] Held try_lock() {
        if (!mu.try_lock(heap.lock_token(), [this] { recover(); }))
            return Held();
        return Held(mu);
    }

    // --- with the lock held ------------------------------------------------------------------

    // A sample header read from shared memory, checked (CorruptSegment otherwise).
    SampleHeader *header(std::uint64_t off) {
        std::size_t cap = 0;
        try {
            cap = heap.block_capacity(off);
        } catch (const InvalidArgument &) {
            throw CorruptSegment(what() + " names a sample that is not a heap block");
        }
        auto *h = static_cast<SampleHeader *>(heap.to_ptr(off));
        if (cap < sizeof(SampleHeader) || h->magic != kSampleMagic ||
            h->meta_length > kTopicMaxMeta || sizeof(SampleHeader) + h->meta_length > cap)
            throw CorruptSegment(what() + " has a corrupt sample header");
        return h;
    }
    bool header_ok(std::uint64_t off) noexcept {
        try {
            (void)header(off);
            return true;
        } catch (...) {
            return false;
        }
    }

    // Drops one reference; the last frees the sample.
    void drop_ref(std::uint64_t off) {
        SampleHeader *h = header(off);
        const std::uint32_t r = h->refs.load(std::memory_order_relaxed);
        if (r == 0)
            throw CorruptSegment(what() + ": a sample's reference count is corrupt");
        h->refs.store(r - 1, std::memory_order_relaxed);
        if (r == 1)
            free_sample(off, h);
    }

    void free_sample(std::uint64_t off, SampleHeader *h) {
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
    void finish_free(std::uint64_t off) noexcept {
        try {
            if (heap.owner_of(off) != kOwnerHeld || !header_ok(off))
                return; // freed already, or still the (dead) publisher's: the heap reaps it
            auto *h = static_cast<SampleHeader *>(heap.to_ptr(off));
            const std::uint64_t data = h->data;
            try {
                if (data && heap.owner_of(data) == kOwnerHeld)
                    heap.deallocate(data);
            } catch (...) {
            }
            heap.deallocate(off);
        } catch (...) {
        }
    }

    // Releases everything subscriber slot i holds and frees the slot.
    void clear_subscriber(std::uint32_t i) {
        SubscriberSlot &s = sub(i);
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

    // Subscribers whose process is gone: their references are released and their slots freed.
    // `only_full`: look only at those that block the publisher (fewer liveness syscalls).
    std::uint32_t reap_dead_locked(bool only_full) {
        std::uint32_t n = 0;
        const std::uint64_t head = ctl->head.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < limit(); ++i) {
            SubscriberSlot &s = sub(i);
            const std::uint32_t st = s.state.load(std::memory_order_acquire);
            if (st == kSubFree)
                continue;
            if (only_full && (st != kSubLive ||
                              head - s.cursor.load(std::memory_order_relaxed) < g.capacity))
                continue;
            if (holder_alive(s.token.load(std::memory_order_relaxed)))
                continue;
            clear_subscriber(i);
            ++n;
        }
        if (n)
            notify_all(ctl->room);
        return n;
    }

    // After taking the lock over from a dead holder: recount the references from the ring and
    // the held lists, and finish the operation the holder had announced.
    void recover() {
        std::unordered_map<std::uint64_t, std::uint32_t> refs;
        const std::uint64_t head = ctl->head.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < g.slots; ++i) {
            TopicSlot &s = reinterpret_cast<TopicSlot *>(ctl + 1)[i];
            const std::uint64_t seq = s.seq.load(std::memory_order_relaxed);
            if (seq == kNoSeq)
                continue;
            const std::uint64_t off = s.sample.load(std::memory_order_relaxed);
            const bool in_window = seq < head && head - seq <= g.slots && seq % g.slots == i;
            if (!in_window || !header_ok(off)) {
                s.seq.store(kNoSeq, std::memory_order_relaxed); // half-written or stale
                continue;
            }
            ++refs[off];
        }
        for (std::uint32_t i = 0; i < g.max_subscribers; ++i) {
            SubscriberSlot &s = sub(i);
            if (s.state.load(std::memory_order_relaxed) == kSubFree)
                continue;
            std::uint32_t count = 0;
            for (std::uint32_t k = 0; k < g.max_held; ++k) {
                const std::uint64_t off = s.held()[k].load(std::memory_order_relaxed);
                if (!off)
                    continue;
                if (!header_ok(off)) {
                    s.held()[k].store(0, std::memory_order_relaxed);
                    continue;
                }
                ++refs[off];
                ++count;
            }
            s.held_count.store(count, std::memory_order_relaxed);
        }
        for (auto &[off, n] : refs)
            static_cast<SampleHeader *>(heap.to_ptr(off))->refs.store(n, std::memory_order_relaxed);
        for (auto *w : {&ctl->inflight, &ctl->evicting, &ctl->freeing}) {
            const std::uint64_t off = w->exchange(0, std::memory_order_relaxed);
            if (off && !refs.count(off))
                finish_free(off);
        }
    }

  private:
    TopicRef(Heap &h, std::string n, std::uint64_t off)
        : heap(h), name(std::move(n)), offset(off),
          ctl(static_cast<TopicControl *>(h.to_ptr(off))), mu() {
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
        } const c{ctl->capacity,        ctl->history,        ctl->slots,
                  ctl->overflow,        ctl->max_subscribers, ctl->max_held};
        if (c.capacity < 1 || c.capacity > kTopicMaxCapacity || c.history > kTopicMaxCapacity ||
            c.slots != std::max(c.capacity, c.history))
            bad("capacity, history or slots");
        if (c.overflow != static_cast<std::uint32_t>(Overflow::Block) &&
            c.overflow != static_cast<std::uint32_t>(Overflow::DropOldest))
            bad("overflow policy");
        if (c.max_subscribers < 1 || c.max_subscribers > kTopicMaxSubscribers || c.max_held < 1 ||
            c.max_held > kTopicMaxHeld)
            bad("subscriber geometry");
        g = geometry_for(c.capacity, c.history, static_cast<Overflow>(c.overflow),
                         c.max_subscribers, c.max_held);
        if (g.total > avail)
            bad("larger than its block");
        mu = RobustMutex(ctl->lock, heap.clients(), what());
        mu.validate();
    }
};

} // namespace topic_detail

using topic_detail::kReapEvery;
using topic_detail::kReleaseLockWait;
using topic_detail::spin_policy;
using topic_detail::TopicRef;

namespace {

[[noreturn]] void corrupt(const TopicRef &t, const char *why) {
    throw CorruptSegment(t.what() + ": " + why);
}

// The overflow step of a publish (lock held): under drop_oldest, every live subscriber whose
// queue is full loses its oldest pending samples. Under block, true if every live subscriber
// has room.
bool make_room_locked(TopicRef &t, std::uint64_t head) {
    bool room = true;
    for (std::uint32_t i = 0; i < t.limit(); ++i) {
        SubscriberSlot &s = t.sub(i);
        if (s.state.load(std::memory_order_relaxed) != kSubLive)
            continue;
        const std::uint64_t c = s.cursor.load(std::memory_order_relaxed);
        if (c > head || head - c > t.g.slots)
            corrupt(t, "a subscriber's cursor is outside the ring");
        if (head - c < t.g.capacity)
            continue;
        if (t.g.overflow == Overflow::Block) {
            room = false;
            continue;
        }
        const std::uint64_t drop = head - c - t.g.capacity + 1;
        std::uint64_t expected = c;
        // SYNC POINT: a CAS (not a store): the subscriber advances its own cursor only with the
        // lock too, but poll()/len read it without.
        if (s.cursor.compare_exchange_strong(expected, c + drop, std::memory_order_acq_rel))
            s.missed.fetch_add(drop, std::memory_order_relaxed);
    }
    return room;
}

} // namespace

// --- publisher ---------------------------------------------------------------------------------

std::unique_ptr<TopicPublisher> TopicPublisher::open(Heap &heap, std::string_view name,
                                                     const TopicOptions &opt) {
    auto p = std::unique_ptr<TopicPublisher>(new TopicPublisher(TopicRef::open(heap, name, &opt)));
    p->claim();
    return p;
}

TopicPublisher::TopicPublisher(std::unique_ptr<TopicRef> t) : t_(std::move(t)) {}

TopicPublisher::~TopicPublisher() {
    if (!claimed_ || closed_ || stamp_.inherited())
        return;
    // Gone without close(): subscribers drain, then PeerDied.
    try {
        auto lk = t_->lock(Deadline(kReleaseLockWait));
        if (t_->ctl->pub_token.load(std::memory_order_relaxed) == token_ &&
            t_->ctl->pub_state.load(std::memory_order_relaxed) == kPubLive)
            t_->ctl->pub_state.store(kPubDeparted, std::memory_order_release);
    } catch (...) {
    }
    notify_all(t_->ctl->data);
}

const std::string &TopicPublisher::name() const noexcept {
    return t_->name;
}
const TopicGeometry &TopicPublisher::geometry() const noexcept {
    return t_->g;
}

void TopicPublisher::claim() {
    TopicRef &t = *t_;
    t.heap.flush_thread_caches(); // a forked heap handle becomes this process's own client
    const std::uint32_t token = t.heap.lock_token();
    {
        auto lk = t.lock(Deadline(10.0));
        const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_relaxed);
        const std::uint32_t tok = t.ctl->pub_token.load(std::memory_order_relaxed);
        if (st == kPubClosed)
            throw OsError(EPIPE, t.what() + " was closed by its publisher (remove it to reuse "
                                            "the name)");
        if (st == kPubLive && t.holder_alive(tok))
            throw ChannelBusy(t.what() + " already has a live publisher");
        t.ctl->pub_token.store(token, std::memory_order_relaxed);
        t.ctl->pub_state.store(kPubLive, std::memory_order_release);
        (void)t.reap_dead_locked(false);
    }
    token_ = token;
    claimed_ = true;
    stamp_.renew();
    next_reap_ = Clock::now() + kReapEvery;
}

void TopicPublisher::ensure_role() {
    if (closed_)
        throw Closed("publisher of " + t_->what() + " is closed");
    if (stamp_.inherited()) {
        claimed_ = false; // the parent's role: never ours
        claim();
    }
}

bool TopicPublisher::has_room() {
    TopicRef &t = *t_;
    if (t.g.overflow == Overflow::DropOldest)
        return true;
    const std::uint64_t head = t.ctl->head.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < t.limit(); ++i) {
        SubscriberSlot &s = t.sub(i);
        // SYNC POINT: acquire, pairs with the release of state in subscribe(): its cursor is set.
        if (s.state.load(std::memory_order_acquire) != kSubLive)
            continue;
        const std::uint64_t c = s.cursor.load(std::memory_order_acquire);
        // A cursor outside the ring is garbage: say "room", the locked path reports it.
        if (c <= head && head - c >= t.g.capacity && head - c <= t.g.slots)
            return false;
    }
    return true;
}

bool TopicPublisher::ready() {
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role();
    return has_room();
}

void TopicPublisher::wait_ready(const Deadline &deadline) {
    std::lock_guard g(mu_);
    ensure_role();
    if (!has_room())
        wait_for_room(deadline);
}

void TopicPublisher::wait_for_room(const Deadline &deadline) {
    TopicRef &t = *t_;
    bool first = true;
    const bool ok = spin_then_wait(
        t.ctl->room, [&] { return has_room(); },
        [&]() -> std::chrono::nanoseconds {
            if (deadline.expired())
                return std::chrono::nanoseconds{0};
            // Before the first sleep only the deadline matters: a wake-up usually ends the wait,
            // and the lock and liveness syscalls would cost every blocked hand-off.
            if (first) {
                first = false;
                return deadline.slice();
            }
            check_interrupt();
            {
                auto lk = t.lock(deadline);
                (void)t.reap_dead_locked(true); // a dead subscriber blocks us at most a slice
            }
            return deadline.slice();
        },
        spin_policy(std::chrono::nanoseconds(spin_ns_.load()), deadline));
    if (!ok)
        throw Timeout(t.what() + ": a subscriber's queue stayed full until the timeout");
}

std::uint64_t TopicPublisher::make_header(std::uint64_t off, std::uint64_t len,
                                          std::string_view meta,
                                          const Deadline &deadline) {
    if (meta.size() > kTopicMaxMeta)
        throw InvalidArgument("sample metadata of " + std::to_string(meta.size()) +
                              " bytes exceeds " + std::to_string(kTopicMaxMeta));
    Heap &h = t_->heap;
    const std::uint64_t hoff = h.allocate(sizeof(SampleHeader) + meta.size(), deadline);
    auto *hd = static_cast<SampleHeader *>(h.to_ptr(hoff));
    hd->magic = kSampleMagic;
    hd->refs.store(1, std::memory_order_relaxed); // the ring's
    hd->state.store(kSampleLive, std::memory_order_relaxed);
    hd->data = off;
    hd->length = len;
    hd->seq = 0;
    hd->meta_length = meta.size();
    hd->reserved[0] = hd->reserved[1] = 0;
    if (!meta.empty())
        std::memcpy(reinterpret_cast<std::byte *>(hd) + sizeof(SampleHeader), meta.data(),
                    meta.size());
    return hoff;
}

bool TopicPublisher::publish_locked(std::uint64_t off, std::uint64_t len, std::string_view meta,
                                    const Deadline *deadline) {
    TopicRef &t = *t_;
    Heap &heap = t.heap;
    ensure_role();
    if (heap.owner_of(off) != heap.client_id())
        throw InvalidArgument("the block at offset " + std::to_string(off) +
                              " is not owned by this process (already published or freed?)");
    if (len > heap.block_capacity(off))
        throw InvalidArgument("length " + std::to_string(len) + " exceeds the block");
    if (!has_room()) {
        if (!deadline)
            return false;
        wait_for_room(*deadline);
    }
    // A try never waits, not even for the heap lock: held for a moment by another process it
    // is "not now" (false), and the caller waits with its own deadline.
    std::uint64_t hoff = 0;
    if (deadline) {
        hoff = make_header(off, len, meta, *deadline);
    } else {
        try {
            hoff = make_header(off, len, meta, Deadline(0.0));
        } catch (const Timeout &) {
            return false;
        }
    }
    bool moved = false;
    try {
        for (;;) {
            topic_detail::Held lk = deadline ? t.lock(*deadline) : t.try_lock();
            if (!lk) {
                heap.deallocate(hoff);
                return false;
            }
            TopicControl *c = t.ctl;
            const std::uint64_t head = c->head.load(std::memory_order_relaxed);
            if (c->pub_token.load(std::memory_order_relaxed) != token_ ||
                c->pub_state.load(std::memory_order_relaxed) != kPubLive)
                throw ChannelBusy(t.what() + ": this publisher was taken over");
            if (!make_room_locked(t, head)) {
                // A subscriber joined with a full history meanwhile: wait again.
                lk.reset();
                if (!deadline) {
                    heap.deallocate(hoff);
                    return false;
                }
                wait_for_room(*deadline);
                continue;
            }
            TopicSlot &s = t.slot(head);
            const std::uint64_t old_seq = s.seq.load(std::memory_order_relaxed);
            const std::uint64_t old = s.sample.load(std::memory_order_relaxed);
            const bool evict = head >= t.g.slots && old_seq == head - t.g.slots;
            if (evict)
                (void)t.header(old); // validated before anything changes
            static_cast<SampleHeader *>(heap.to_ptr(hoff))->seq = head;
            c->inflight.store(hoff, std::memory_order_relaxed);
            heap.transfer(off, kOwnerHeld);
            heap.transfer(hoff, kOwnerHeld);
            moved = true;
            if (evict) {
                c->evicting.store(old, std::memory_order_relaxed);
                s.seq.store(kNoSeq, std::memory_order_relaxed);
                t.drop_ref(old);
                c->evicting.store(0, std::memory_order_relaxed);
            }
            s.sample.store(hoff, std::memory_order_relaxed);
            s.seq.store(head, std::memory_order_release);
            // SYNC POINT: release, pairs with the acquire loads of head by subscribers (waits,
            // poll); the lock orders everything else.
            c->head.store(head + 1, std::memory_order_release);
            c->inflight.store(0, std::memory_order_relaxed);
            break;
        }
    } catch (...) {
        if (!moved) {
            try {
                heap.deallocate(hoff);
            } catch (...) {
            }
        }
        throw;
    }
    wake_if_waiting(t.ctl->data);
    if (Clock::now() >= next_reap_) {
        next_reap_ = Clock::now() + kReapEvery;
        if (auto lk = t.try_lock())
            (void)t.reap_dead_locked(false);
    }
    return true;
}

void TopicPublisher::publish_block(std::uint64_t off, std::uint64_t len, std::string_view meta,
                                   const Deadline &deadline) {
    std::lock_guard g(mu_);
    (void)publish_locked(off, len, meta, &deadline);
}

bool TopicPublisher::try_publish_block(std::uint64_t off, std::uint64_t len,
                                       std::string_view meta) {
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    return publish_locked(off, len, meta, nullptr);
}

void TopicPublisher::publish_bytes(const void *data, std::size_t n, std::string_view meta,
                                   const Deadline &deadline) {
    std::lock_guard g(mu_);
    ensure_role();
    if (!has_room())
        wait_for_room(deadline); // before the copy
    Heap &heap = t_->heap;
    // The publish's deadline bounds the heap lock wait too (a stopped holder is Timeout).
    const std::uint64_t off = heap.allocate(std::max<std::size_t>(n, 1), deadline);
    try {
        if (n)
            std::memcpy(heap.to_ptr(off), data, n);
        (void)publish_locked(off, n, meta, &deadline);
    } catch (...) {
        heap.deallocate(off);
        throw;
    }
}

bool TopicPublisher::try_publish_bytes(const void *data, std::size_t n, std::string_view meta) {
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role();
    if (!has_room())
        return false;
    Heap &heap = t_->heap;
    std::uint64_t off = 0;
    try {
        off = heap.allocate(std::max<std::size_t>(n, 1), Deadline(0.0));
    } catch (const Timeout &) {
        return false; // the heap lock is busy: not now
    }
    bool ok = false;
    try {
        if (n)
            std::memcpy(heap.to_ptr(off), data, n);
        ok = publish_locked(off, n, meta, nullptr);
    } catch (...) {
        heap.deallocate(off);
        throw;
    }
    if (!ok)
        heap.deallocate(off);
    return ok;
}

void TopicPublisher::close() {
    std::lock_guard g(mu_);
    if (closed_)
        return;
    closed_ = true;
    if (!claimed_ || stamp_.inherited())
        return;
    {
        auto lk = t_->lock(Deadline(kReleaseLockWait));
        if (t_->ctl->pub_token.load(std::memory_order_relaxed) == token_)
            t_->ctl->pub_state.store(kPubClosed, std::memory_order_release);
    }
    notify_all(t_->ctl->data);
}

void TopicPublisher::abandon() noexcept {
    closed_ = true;
}

std::uint32_t TopicPublisher::subscribers() const {
    std::uint32_t n = 0;
    for (std::uint32_t i = 0; i < t_->limit(); ++i)
        n += t_->sub(i).state.load(std::memory_order_relaxed) == kSubLive;
    return n;
}

std::uint64_t TopicPublisher::published() const {
    return t_->ctl->head.load(std::memory_order_relaxed);
}

// --- subscriber --------------------------------------------------------------------------------

std::unique_ptr<TopicSubscriber> TopicSubscriber::open(Heap &heap, std::string_view name) {
    auto s = std::unique_ptr<TopicSubscriber>(new TopicSubscriber(TopicRef::open(heap, name, nullptr)));
    s->subscribe();
    return s;
}

TopicSubscriber::TopicSubscriber(std::unique_ptr<TopicRef> t) : t_(std::move(t)) {}

TopicSubscriber::~TopicSubscriber() {
    if (!subscribed_ || stamp_.inherited())
        return;
    try {
        auto lk = t_->lock(Deadline(kReleaseLockWait));
        SubscriberSlot &s = t_->sub(index_);
        if (s.state.load(std::memory_order_relaxed) != kSubFree &&
            s.token.load(std::memory_order_relaxed) == token_)
            t_->clear_subscriber(index_);
    } catch (...) {
    }
    notify_all(t_->ctl->room);
}

const std::string &TopicSubscriber::name() const noexcept {
    return t_->name;
}
const TopicGeometry &TopicSubscriber::geometry() const noexcept {
    return t_->g;
}

void TopicSubscriber::subscribe() {
    TopicRef &t = *t_;
    t.heap.flush_thread_caches(); // a forked heap handle becomes this process's own client
    const std::uint32_t token = t.heap.lock_token();
    auto lk = t.lock(Deadline(10.0));
    (void)t.reap_dead_locked(false);
    for (std::uint32_t i = 0; i < t.g.max_subscribers; ++i) {
        SubscriberSlot &s = t.sub(i);
        if (s.state.load(std::memory_order_relaxed) != kSubFree)
            continue;
        for (std::uint32_t k = 0; k < t.g.max_held; ++k)
            s.held()[k].store(0, std::memory_order_relaxed);
        s.held_count.store(0, std::memory_order_relaxed);
        s.missed.store(0, std::memory_order_relaxed);
        s.token.store(token, std::memory_order_relaxed);
        const std::uint64_t head = t.ctl->head.load(std::memory_order_relaxed);
        s.cursor.store(head - std::min<std::uint64_t>(t.g.history, head),
                       std::memory_order_relaxed);
        if (t.ctl->sub_limit.load(std::memory_order_relaxed) < i + 1)
            t.ctl->sub_limit.store(i + 1, std::memory_order_release);
        // SYNC POINT: release, pairs with the acquire load of state in has_room().
        s.state.store(kSubLive, std::memory_order_release);
        index_ = i;
        token_ = token;
        subscribed_ = true;
        stamp_.renew();
        missed_seen_ = 0;
        return;
    }
    throw LimitReached(t.what() + " has " + std::to_string(t.g.max_subscribers) +
                       " live subscribers already (max_subscribers=" +
                       std::to_string(t.g.max_subscribers) + ")");
}

void TopicSubscriber::ensure_subscribed() {
    if (closed_)
        throw Closed("subscriber of " + t_->what() + " is closed");
    if (stamp_.inherited()) {
        subscribed_ = false; // the parent's slot: never ours
        subscribe();
    }
}

const void *TopicSubscriber::sample_ptr(const TopicSample &s) const {
    return t_->heap.to_ptr(s.data);
}

std::optional<TopicSubscriber::Located> TopicSubscriber::locate_locked() {
    TopicRef &t = *t_;
    SubscriberSlot &me = t.sub(index_);
    if (me.state.load(std::memory_order_relaxed) != kSubLive ||
        me.token.load(std::memory_order_relaxed) != token_)
        corrupt(t, "this subscriber's slot was taken by another");
    const std::uint64_t c = me.cursor.load(std::memory_order_relaxed);
    const std::uint64_t head = t.ctl->head.load(std::memory_order_relaxed);
    if (c == head)
        return std::nullopt;
    if (c > head || head - c > t.g.slots)
        corrupt(t, "a subscriber's cursor is outside the ring");
    TopicSlot &s = t.slot(c);
    if (s.seq.load(std::memory_order_relaxed) != c)
        corrupt(t, "a ring slot does not hold the sample it should");
    const std::uint64_t hoff = s.sample.load(std::memory_order_relaxed);
    SampleHeader *h = t.header(hoff);
    const std::uint64_t data = h->data;
    const std::uint64_t len = h->length;
    try {
        if (len > t.heap.block_capacity(data))
            corrupt(t, "a sample is longer than its block");
    } catch (const InvalidArgument &) {
        corrupt(t, "a sample names a block that is not a heap block");
    }
    return Located{c, hoff, data, len, h};
}

std::optional<TopicSample> TopicSubscriber::take_locked() {
    TopicRef &t = *t_;
    SubscriberSlot &me = t.sub(index_);
    const auto loc = locate_locked();
    if (!loc)
        return std::nullopt;
    const std::uint64_t c = loc->cursor, hoff = loc->header, data = loc->data, len = loc->length;
    SampleHeader *h = loc->h;
    if (me.held_count.load(std::memory_order_relaxed) >= t.g.max_held)
        throw LimitReached("subscriber of " + t.what() + " holds " +
                           std::to_string(t.g.max_held) +
                           " samples (max_held): release some before receiving more");
    auto *held = me.held();
    std::uint32_t k = 0;
    for (; k < t.g.max_held; ++k)
        if (held[k].load(std::memory_order_relaxed) == 0)
            break;
    if (k == t.g.max_held)
        corrupt(t, "a subscriber's held count is wrong");
    held[k].store(hoff, std::memory_order_relaxed);
    me.held_count.fetch_add(1, std::memory_order_relaxed);
    h->refs.fetch_add(1, std::memory_order_relaxed);
    // SYNC POINT: release, pairs with the acquire load of cursors in has_room().
    me.cursor.store(c + 1, std::memory_order_release);
    TopicSample out;
    out.header = hoff;
    out.held_index = k;
    out.data = data;
    out.length = len;
    out.seq = c;
    if (h->meta_length)
        out.meta.assign(reinterpret_cast<const char *>(h + 1), h->meta_length);
    return out;
}

std::optional<TopicSample> TopicSubscriber::try_recv() {
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return std::nullopt;
    ensure_subscribed();
    TopicRef &t = *t_;
    SubscriberSlot &me = t.sub(index_);
    if (me.cursor.load(std::memory_order_acquire) == t.ctl->head.load(std::memory_order_acquire)) {
        const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_acquire);
        if (st == kPubClosed || st == kPubDeparted)
            end_of_stream(st);
        return std::nullopt;
    }
    t.heap.map_all_segments(); // EMFILE before anything changes
    std::optional<TopicSample> s;
    {
        auto lk = t.try_lock();
        if (!lk)
            return std::nullopt;
        s = take_locked();
    }
    if (s && t.g.overflow == Overflow::Block)
        wake_if_waiting(t.ctl->room);
    return s;
}

namespace {
// Samples up to this size are copied out with the topic lock held (no reference taken).
constexpr std::uint64_t kCopyUnderLock = 64 * 1024;
} // namespace

bool TopicSubscriber::copy_out(bool wait, const Deadline *deadline, SinkFn fn, void *ctx) {
    TopicRef &t = *t_;
    SubscriberSlot &me = t.sub(index_);
    for (;;) {
        if (wait) {
            wait_for_sample(*deadline);
        } else if (me.cursor.load(std::memory_order_acquire) ==
                   t.ctl->head.load(std::memory_order_acquire)) {
            const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_acquire);
            if (st == kPubClosed || st == kPubDeparted)
                end_of_stream(st);
            return false;
        }
        t.heap.map_all_segments(); // EMFILE before anything changes
        std::optional<TopicSample> taken;
        {
            topic_detail::Held lk = wait ? t.lock(*deadline) : t.try_lock();
            if (!lk)
                return false;
            const auto loc = locate_locked();
            if (!loc) {
                if (!wait)
                    return false;
                continue;
            }
            if (loc->length <= kCopyUnderLock) {
                // The sample cannot be freed while we hold the lock: copy, then consume.
                fn(ctx, t.heap.to_ptr(loc->data), static_cast<std::size_t>(loc->length));
                // SYNC POINT: release, pairs with the acquire load of cursors in has_room().
                me.cursor.store(loc->cursor + 1, std::memory_order_release);
            } else {
                taken = take_locked();
            }
        }
        if (t.g.overflow == Overflow::Block)
            wake_if_waiting(t.ctl->room);
        if (taken) {
            struct Guard {
                TopicSubscriber *self;
                TopicSample *s;
                ~Guard() { self->release_noexcept(*s); }
            } g{this, &*taken};
            fn(ctx, t.heap.to_ptr(taken->data), static_cast<std::size_t>(taken->length));
        }
        return true;
    }
}

bool TopicSubscriber::try_recv_copy(SinkFn fn, void *ctx) {
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_subscribed();
    return copy_out(false, nullptr, fn, ctx);
}

void TopicSubscriber::recv_copy(const Deadline &deadline, SinkFn fn, void *ctx) {
    std::lock_guard g(mu_);
    ensure_subscribed();
    (void)copy_out(true, &deadline, fn, ctx);
}

void TopicSubscriber::end_of_stream(std::uint32_t st) {
    if (st == kPubClosed)
        throw EndOfStream(t_->what() + " was closed by its publisher");
    throw PeerDied("the publisher of " + t_->what() +
                   " is gone (it died or left without closing the topic)");
}

FutexWord &TopicSubscriber::data_word() const noexcept {
    return t_->ctl->data;
}

bool TopicSubscriber::publisher_dead() const {
    const std::uint32_t st = t_->ctl->pub_state.load(std::memory_order_acquire);
    return st == kPubLive && !t_->holder_alive(t_->ctl->pub_token.load());
}

bool TopicSubscriber::recv_ready() const {
    if (!subscribed_.load(std::memory_order_acquire) || stamp_.inherited())
        return true; // the first recv subscribes (or re-subscribes in a fork child) at once
    TopicRef &t = *t_;
    const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_acquire);
    return t.sub(index_).cursor.load(std::memory_order_acquire) !=
               t.ctl->head.load(std::memory_order_acquire) ||
           st == kPubClosed || st == kPubDeparted || publisher_dead();
}

void TopicSubscriber::wait_for_sample(const Deadline &deadline) {
    TopicRef &t = *t_;
    SubscriberSlot &me = t.sub(index_);
    auto pending_now = [&] {
        return me.cursor.load(std::memory_order_acquire) !=
               t.ctl->head.load(std::memory_order_acquire);
    };
    auto ended = [&] {
        const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_acquire);
        return st == kPubClosed || st == kPubDeparted;
    };
    bool first = true;
    bool dead = false;
    const bool ok = spin_then_wait(
        t.ctl->data, [&] { return pending_now() || ended(); },
        [&]() -> std::chrono::nanoseconds {
            if (deadline.expired())
                return std::chrono::nanoseconds{0};
            if (first) {
                first = false;
                return deadline.slice();
            }
            check_interrupt();
            if (closing_.load(std::memory_order_relaxed))
                throw Closed("subscriber of " + t.what() + " was closed while waiting");
            const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_acquire);
            if (st == kPubLive && !t.holder_alive(t.ctl->pub_token.load())) {
                dead = true;
                return std::chrono::nanoseconds{0};
            }
            return deadline.slice();
        },
        spin_policy(std::chrono::nanoseconds(spin_ns_.load()), deadline));
    if (ok && pending_now())
        return;
    if (ended())
        end_of_stream(t.ctl->pub_state.load(std::memory_order_acquire));
    if (dead)
        end_of_stream(kPubDeparted);
    throw Timeout("nothing was published on " + t.what() + " before the timeout");
}

TopicSample TopicSubscriber::recv(const Deadline &deadline) {
    std::lock_guard g(mu_);
    ensure_subscribed();
    TopicRef &t = *t_;
    for (;;) {
        wait_for_sample(deadline);
        t.heap.map_all_segments(); // EMFILE before anything changes
        std::optional<TopicSample> s;
        {
            auto lk = t.lock(deadline);
            s = take_locked();
        }
        if (s) {
            if (t.g.overflow == Overflow::Block)
                wake_if_waiting(t.ctl->room);
            return std::move(*s);
        }
    }
}

void TopicSubscriber::release(const TopicSample &s) {
    ForkStamp now;
    release(s.header, s.held_index, now);
}

void TopicSubscriber::release_noexcept(const TopicSample &s) noexcept {
    try {
        release(s);
    } catch (...) {
    }
}

void TopicSubscriber::release(std::uint64_t header, std::uint32_t held_index,
                              const ForkStamp &taken_in) {
    if (taken_in.inherited() || stamp_.inherited() || !subscribed_)
        return; // the parent's reference
    TopicRef &t = *t_;
    {
        auto lk = t.lock(Deadline(kReleaseLockWait));
        SubscriberSlot &me = t.sub(index_);
        if (me.state.load(std::memory_order_relaxed) == kSubFree ||
            me.token.load(std::memory_order_relaxed) != token_)
            return; // reaped or removed: the reference went with the slot
        auto *held = me.held();
        std::uint32_t k = held_index;
        if (k >= t.g.max_held || held[k].load(std::memory_order_relaxed) != header) {
            for (k = 0; k < t.g.max_held; ++k)
                if (held[k].load(std::memory_order_relaxed) == header)
                    break;
            if (k == t.g.max_held)
                return; // not held (released already)
        }
        held[k].store(0, std::memory_order_relaxed);
        const std::uint32_t n = me.held_count.load(std::memory_order_relaxed);
        me.held_count.store(n ? n - 1 : 0, std::memory_order_relaxed);
        t.drop_ref(header);
        if (me.state.load(std::memory_order_relaxed) == kSubClosing && n <= 1) {
            t.clear_subscriber(index_);
            subscribed_ = false; // nothing of ours is left in the topic
        }
    }
}

bool TopicSubscriber::poll(const Deadline &deadline) {
    {
        std::lock_guard g(mu_);
        ensure_subscribed();
    }
    try {
        wait_for_sample(deadline);
        return true;
    } catch (const Timeout &) {
        return false;
    } catch (const EndOfStream &) {
        return true;
    } catch (const PeerDied &) {
        return true;
    }
}

std::uint64_t TopicSubscriber::pending() const {
    if (!subscribed_ || closed_)
        return 0;
    const std::uint64_t c = t_->sub(index_).cursor.load(std::memory_order_acquire);
    const std::uint64_t h = t_->ctl->head.load(std::memory_order_acquire);
    return h > c ? std::min<std::uint64_t>(h - c, t_->g.slots) : 0;
}

std::uint64_t TopicSubscriber::missed() const {
    if (!subscribed_ || stamp_.inherited())
        return 0;
    return t_->sub(index_).missed.load(std::memory_order_relaxed);
}

void TopicSubscriber::close() {
    closing_.store(true, std::memory_order_relaxed);
    notify_all(t_->ctl->data); // a thread waiting inside this handle leaves
    std::lock_guard g(mu_);
    if (closed_)
        return;
    closed_ = true;
    if (!subscribed_ || stamp_.inherited())
        return;
    {
        auto lk = t_->lock(Deadline(kReleaseLockWait));
        SubscriberSlot &me = t_->sub(index_);
        if (me.token.load(std::memory_order_relaxed) == token_ &&
            me.state.load(std::memory_order_relaxed) == kSubLive) {
            if (me.held_count.load(std::memory_order_relaxed) == 0) {
                t_->clear_subscriber(index_);
                subscribed_ = false; // nothing of ours is left in the topic
            } else
                me.state.store(kSubClosing, std::memory_order_release);
        }
    }
    notify_all(t_->ctl->room);
}

void TopicSubscriber::abandon() noexcept {
    closed_ = true;
    subscribed_ = false;
}

// --- the heap's topics ---------------------------------------------------------------------------

std::vector<TopicInfo> list_topics(Heap &heap) {
    std::vector<TopicInfo> out;
    for (const NamedInfo &n : heap.list_named(kNamedTopic)) {
        std::unique_ptr<TopicRef> t;
        try {
            t = TopicRef::open(heap, n.name, nullptr);
        } catch (const std::exception &) {
            continue; // gone meanwhile, or corrupt: an error for whoever opens it
        }
        TopicInfo info;
        info.name = n.name;
        info.capacity = t->g.capacity;
        info.history = t->g.history;
        info.overflow = t->g.overflow;
        info.max_subscribers = t->g.max_subscribers;
        try {
            auto lk = t->lock(Deadline(1.0));
            (void)t->reap_dead_locked(false);
        } catch (const Timeout &) {
        }
        for (std::uint32_t i = 0; i < t->g.max_subscribers; ++i)
            info.subscribers += t->sub(i).state.load(std::memory_order_relaxed) == kSubLive;
        const std::uint32_t st = t->ctl->pub_state.load(std::memory_order_acquire);
        info.publisher_alive = st == kPubLive && t->holder_alive(t->ctl->pub_token.load());
        info.closed = st == kPubClosed;
        info.published = t->ctl->head.load(std::memory_order_relaxed);
        out.push_back(std::move(info));
    }
    return out;
}

bool remove_topic(Heap &heap, std::string_view name, const Deadline &deadline) {
    auto info = heap.find_named(name);
    if (!info)
        return false;
    if (info->kind != kNamedTopic)
        throw InvalidArgument("'" + std::string(name) + "' is not a topic");
    auto t = TopicRef::open(heap, name, nullptr);
    {
        auto lk = t->lock(deadline);
        (void)t->reap_dead_locked(false);
        for (std::uint32_t i = 0; i < t->g.max_subscribers; ++i)
            if (t->sub(i).state.load(std::memory_order_relaxed) != kSubFree)
                throw ChannelBusy(t->what() + " still has a subscriber (close it first)");
        const std::uint32_t st = t->ctl->pub_state.load(std::memory_order_relaxed);
        if (st == kPubLive && t->holder_alive(t->ctl->pub_token.load()))
            throw ChannelBusy(t->what() + " still has a live publisher (close it first)");
        const std::uint64_t head = t->ctl->head.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < t->g.slots; ++i) {
            TopicSlot &s = reinterpret_cast<TopicSlot *>(t->ctl + 1)[i];
            const std::uint64_t seq = s.seq.exchange(kNoSeq, std::memory_order_relaxed);
            if (seq == kNoSeq || seq >= head || head - seq > t->g.slots)
                continue;
            try {
                t->drop_ref(s.sample.load(std::memory_order_relaxed));
            } catch (const CorruptSegment &) {
            }
        }
        t->ctl->magic = 0; // a handle still open on it fails instead of using freed memory
    }
    return heap.remove_named(name, deadline);
}

} // namespace shmipc
