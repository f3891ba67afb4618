// Topics (topic.hpp): TopicSubscriber, one of a topic's subscribers: subscribing (and
// re-subscribing in a fork child), waiting for a sample, receiving one (a reference held) or a
// copy, releasing references, end of stream and a dead publisher, closing.
#include "ipc_core/topic/topic_ref.hpp"

#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace shmipc {

using topic_detail::corrupt;
using topic_detail::kReleaseLockWait;
using topic_detail::spin_policy;
using topic_detail::TopicRef;

std::unique_ptr<TopicSubscriber> TopicSubscriber::open(Heap &heap, std::string_view name) {
    auto s =
        std::unique_ptr<TopicSubscriber>(new TopicSubscriber(TopicRef::open(heap, name, nullptr)));
    s->subscribe();
    return s;
}

TopicSubscriber::TopicSubscriber(std::unique_ptr<TopicRef> t) : t_(std::move(t)) {}

TopicSubscriber::~TopicSubscriber() {
    if (!subscribed_ || stamp_.inherited())
        return;
    try {
        // SYNC POINT: the topic lock (acquire/release): the slot is cleared under it.
        auto lk = t_->lock(Deadline(kReleaseLockWait));
        SubscriberSlot &s = t_->sub(index_);
        if (s.state.load(std::memory_order_relaxed) != kSubFree &&
            s.token.load(std::memory_order_relaxed) == token_)
            t_->clear_subscriber(index_);
    } catch (...) {
    }
    // SYNC POINT: futex wake of room after our slot is cleared: pairs with the publisher's wait in
    // wait_for_room (has_room() re-reads state, acquire).
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
    // SYNC POINT: the topic lock (acquire; released at the end of subscribe): the slot is filled
    // and published under it.
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
            // SYNC POINT: release, pairs with the acquire load of sub_limit in TopicRef::limit()
            // (scans without the lock: has_room, subscribers()).
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
    throw LimitReached(
        t.what() + " has " + std::to_string(t.g.max_subscribers) +
        " live subscribers already (max_subscribers=" + std::to_string(t.g.max_subscribers) + ")");
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
        throw LimitReached("subscriber of " + t.what() + " holds " + std::to_string(t.g.max_held) +
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
    // SYNC POINT: mu_ (process-local mutex): a try never waits.
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return std::nullopt;
    ensure_subscribed();
    TopicRef &t = *t_;
    SubscriberSlot &me = t.sub(index_);
    // SYNC POINT: acquire of head, pairs with the release store of head in publish_locked (the slot
    // is filled); acquire of pub_state, pairs with its release stores in close()/claim()/the
    // publisher's destructor.
    if (me.cursor.load(std::memory_order_acquire) == t.ctl->head.load(std::memory_order_acquire)) {
        const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_acquire);
        if (st == kPubClosed || st == kPubDeparted)
            end_of_stream(st);
        return std::nullopt;
    }
    t.heap.map_all_segments(); // EMFILE before anything changes
    std::optional<TopicSample> s;
    {
        // SYNC POINT: the topic lock (acquire/release): take_locked changes the cursor and held[].
        auto lk = t.try_lock();
        if (!lk)
            return std::nullopt;
        s = take_locked();
    }
    if (s && t.g.overflow == Overflow::Block)
        // SYNC POINT: futex wake of room after the cursor advanced (release store): pairs with the
        // publisher's wait in wait_for_room.
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
        // SYNC POINT: (the else branch) acquire of cursor and head, pairs with the release store of
        // head in publish_locked; acquire of pub_state, pairs with its release stores by the
        // publisher.
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
            // SYNC POINT: the topic lock (acquire; released when lk goes): locating, copying and
            // consuming the sample happen under it, so it cannot be freed meanwhile.
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
            // SYNC POINT: futex wake of room after the cursor advanced: pairs with the publisher's
            // wait in wait_for_room.
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
    // SYNC POINT: mu_ (process-local mutex): a try never waits.
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_subscribed();
    return copy_out(false, nullptr, fn, ctx);
}

void TopicSubscriber::recv_copy(const Deadline &deadline, SinkFn fn, void *ctx) {
    // SYNC POINT: mu_ (process-local mutex): one thread of this handle at a time.
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
    // SYNC POINT: acquire, pairs with the release store of pub_state in claim(): the pub_token
    // stored before it is seen.
    const std::uint32_t st = t_->ctl->pub_state.load(std::memory_order_acquire);
    return st == kPubLive && !t_->holder_alive(t_->ctl->pub_token.load());
}

bool TopicSubscriber::recv_ready() const {
    // SYNC POINT: acquire of subscribed_, pairs with its (seq_cst) store in subscribe() (index_ is
    // set); then acquire of pub_state, cursor and head as in wait_for_sample.
    if (!subscribed_.load(std::memory_order_acquire) || stamp_.inherited())
        return true; // the first recv subscribes (or re-subscribes in a fork child) at once
    TopicRef &t = *t_;
    // SYNC POINT: acquire, pairs with the release stores of pub_state in close() and the
    // publisher's destructor.
    const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_acquire);
    return t.sub(index_).cursor.load(std::memory_order_acquire) !=
               t.ctl->head.load(std::memory_order_acquire) ||
           st == kPubClosed || st == kPubDeparted || publisher_dead();
}

void TopicSubscriber::wait_for_sample(const Deadline &deadline) {
    TopicRef &t = *t_;
    SubscriberSlot &me = t.sub(index_);
    auto pending_now = [&] {
        // SYNC POINT: acquire of head, pairs with the release store of head in publish_locked: the
        // published slot is seen.
        return me.cursor.load(std::memory_order_acquire) !=
               t.ctl->head.load(std::memory_order_acquire);
    };
    auto ended = [&] {
        // SYNC POINT: acquire, pairs with the release store of pub_state in claim() (pub_token is
        // seen).
        const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_acquire);
        return st == kPubClosed || st == kPubDeparted;
    };
    bool first = true;
    bool dead = false;
    // SYNC POINT: futex wait on data (spin first): pairs with the publisher's wakes of data after
    // its release stores of head and pub_state; the predicate re-reads both (acquire).
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
        // SYNC POINT: acquire, as in ended().
        end_of_stream(t.ctl->pub_state.load(std::memory_order_acquire));
    if (dead)
        end_of_stream(kPubDeparted);
    throw Timeout("nothing was published on " + t.what() + " before the timeout");
}

TopicSample TopicSubscriber::recv(const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex): one thread of this handle at a time.
    std::lock_guard g(mu_);
    ensure_subscribed();
    TopicRef &t = *t_;
    for (;;) {
        wait_for_sample(deadline);
        t.heap.map_all_segments(); // EMFILE before anything changes
        std::optional<TopicSample> s;
        {
            // SYNC POINT: the topic lock (acquire/release): take_locked changes the cursor and
            // held[].
            auto lk = t.lock(deadline);
            s = take_locked();
        }
        if (s) {
            if (t.g.overflow == Overflow::Block)
                // SYNC POINT: futex wake of room after the cursor advanced: pairs with the
                // publisher's wait in wait_for_room.
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
        // SYNC POINT: the topic lock (acquire/release): held[] and refs change under it.
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
        // SYNC POINT: mu_ (process-local mutex): ensure_subscribed changes this handle.
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
    // SYNC POINT: acquire of cursor and head: head pairs with its release store in publish_locked,
    // cursor with the stores under the lock.
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
    // SYNC POINT: futex wake of data after closing_ is set: pairs with the wait in wait_for_sample,
    // which checks closing_ between slices.
    notify_all(t_->ctl->data); // a thread waiting inside this handle leaves
    // SYNC POINT: mu_ (process-local mutex): after the waiting thread left.
    std::lock_guard g(mu_);
    if (closed_)
        return;
    closed_ = true;
    if (!subscribed_ || stamp_.inherited())
        return;
    {
        // SYNC POINT: the topic lock (acquire/release): the slot's state changes under it.
        auto lk = t_->lock(Deadline(kReleaseLockWait));
        SubscriberSlot &me = t_->sub(index_);
        if (me.token.load(std::memory_order_relaxed) == token_ &&
            me.state.load(std::memory_order_relaxed) == kSubLive) {
            if (me.held_count.load(std::memory_order_relaxed) == 0) {
                t_->clear_subscriber(index_);
                subscribed_ = false; // nothing of ours is left in the topic
            } else
                // SYNC POINT: release (the topic lock held), pairs with the acquire loads of state
                // in has_room(): the publisher stops counting this cursor.
                me.state.store(kSubClosing, std::memory_order_release);
        }
    }
    // SYNC POINT: futex wake of room after the state change: pairs with the publisher's wait in
    // wait_for_room.
    notify_all(t_->ctl->room);
}

void TopicSubscriber::abandon() noexcept {
    closed_ = true;
    subscribed_ = false;
}

} // namespace shmipc
